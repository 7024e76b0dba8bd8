"""The run-state Lua scripts (``<name>.lua`` beside this module) and the keys each one takes.

Each script's keys are ONE tuple here (:data:`SCRIPT_KEYS`); the script's text is prefixed
with ``local <name>_key = KEYS[i]`` for each, so the Lua reads ``meta_key``, never
``KEYS[9]``, and a caller passes its keys by name (:meth:`Script.__call__`): the order is
spelled in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis

_HERE = Path(__file__).resolve().parent

SCRIPT_KEYS: dict[str, tuple[str, ...]] = {
    "advance_round": ("meta", "done", "short"),
    "add_dead_letter": ("dlq", "dlq_words", "meta"),
    "claim_records": ("committed", "fences"),
    "confirm_records": ("committed", "fences", "meta", "counts"),
    "create_run": ("meta", "runs_index"),
    "count_delivery": ("deliveries", "floor"),
    "cover": ("covered_records", "covered", "accepted", "meta", "done", "short"),
    "issue_extra": ("issued", "done", "short", "leases"),
    "issue_shortfall": ("accepted", "issued", "reported", "dropped", "covered", "meta", "done", "short", "leases"),
    "settle_records": ("committed", "fences"),
    "lease_expire": ("leases", "outcomes", "running", "deliveries", "meta", "floor"),
    "lease_extend": ("outcomes", "leases", "running", "floor"),
    "task_start": ("meta", "done", "outcomes", "deliveries", "floor", "leases", "running"),
    "record_outcome": ("outcomes", "retries", "reported", "accepted", "issued", "done", "short", "counts", "meta",
                       "dropped", "running", "covered", "leases", "floor", "deliveries", "committed",
                       "covered_records"),
}


def lua_source(name: str, directory: Path = _HERE) -> str:
    return (directory / f"{name}.lua").read_text(encoding="utf-8")


def keys_prelude(names: tuple[str, ...]) -> str:
    """``local a_key, b_key = KEYS[1], KEYS[2]``: the script's keys as named locals."""
    return (f"local {', '.join(f'{n}_key' for n in names)} = "
            f"{', '.join(f'KEYS[{i}]' for i in range(1, len(names) + 1))}\n")


# the helpers every script may call (Redis scripts cannot load one another)
_PRELUDE = lua_source("_floor")

# A per-item script run for a whole batch in one script call: its text becomes the body of a
# Lua function called once per item, in order, with the item's ARGV. One EVALSHA per batch
# instead of one per item (Redis's fixed cost per script call and redis-py's packing were most
# of the bookkeeping's time); each item is decided by the same code as alone, and the batch is
# atomic as a whole. ARGV: how many values an item has, then the items' values; the reply is
# the items' replies, concatenated.
_BATCH = """
%s
local function one(ARGV)
%s
end
local per = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, per do
  local item = {}
  for j = i, i + per - 1 do item[#item + 1] = ARGV[j] end
  for _, value in ipairs(one(item)) do out[#out + 1] = value end
end
flush_deferred()
return out
"""

# A script alone: its body is a function, so the writes it deferred (_floor.lua, defer) are sent
# whichever ``return`` it leaves by.
_SINGLE = """
%s
local function body()
%s
end
local reply = body()
flush_deferred()
return reply
"""


class ScriptError(RuntimeError):
    """A script raised on the values it was given: an error of the caller's data, not of Redis
    (the collector parks the record instead of waiting for Redis to come back)."""


def _is_script_error(exc: redis.ResponseError) -> bool:
    text = str(exc)
    return "user_script" in text or "Error running script" in text


class Script:
    """One registered script; called with its keys by name."""

    def __init__(self, client: redis.Redis, name: str, *, batch: bool = False) -> None:
        self.name = name
        self.key_names = SCRIPT_KEYS[name]
        head = _PRELUDE + keys_prelude(self.key_names)
        self._script = client.register_script((_BATCH if batch else _SINGLE) % (head, lua_source(name)))

    def __call__(self, keys: Mapping[str, str], args: list[Any]) -> Any:
        try:
            return self._script(keys=[keys[name] for name in self.key_names], args=args)
        except redis.ResponseError as exc:
            if _is_script_error(exc):
                raise ScriptError(f"{self.name}: {exc}") from exc
            raise


def keys_of(source: Any, names: tuple[str, ...], **extra: str) -> dict[str, str]:
    """Pick the named keys from ``source`` (a :class:`~convfarm.runstate.keys.RunKeys`), ``extra`` first."""
    return {name: extra[name] if name in extra else getattr(source, name) for name in names}


def batch_args(items: list[list[Any]]) -> list[Any]:
    args: list[Any] = [len(items[0])]
    for item in items:
        args += item
    return args
