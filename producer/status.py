"""What ``producer status`` and ``producer runs`` show: a run's state read from Redis.

:func:`run_status` gathers one plain dict (also the ``--json`` output); :func:`render`
turns it into rich tables. Reading is O(words) for a few hashes — fine for the word lists
this tool is used with (thousands to a few hundred thousand).
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from convfarm.depth import depth_and_cost, describe
from convfarm.judge.distribution import describe_scores, run_scores
from convfarm.runstate import RunInfo, RunStore
from convfarm.runstate.presence import DROP_AFTER, Presence

RATE_WINDOW = 60.0


class UnknownRun(LookupError):
    pass


def resolve_run(store: RunStore, ref: str | None) -> str:
    """A run id, a unique prefix of one (``example`` for ``example-75b25f70``), or the newest run."""
    runs = store.list_runs()
    if not runs:
        raise UnknownRun("no runs yet (start one with `producer enqueue CONFIG`)")
    if ref is None:
        return runs[-1]
    if not ref.strip():  # a blank id is a prefix of every run: never let it pick one to cancel or purge
        raise UnknownRun("the run id is blank; name a run (see `producer runs`)")
    if ref in runs:
        return ref
    matches = [r for r in runs if r.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UnknownRun(f"run '{ref}' is ambiguous: {', '.join(matches[-5:])}")
    raise UnknownRun(f"no run '{ref}' (see `producer runs`)")


def _words(store: RunStore, info: RunInfo) -> dict[str, int]:
    # running: a worker started an attempt that has not come back yet
    done, short, running_words = store.word_sets(info.run)
    return {
        "total": info.total_words,
        "complete": len(done - short),
        "short": len(short),
        "in_progress": len(running_words),
        "pending": info.total_words - len(done) - len(running_words),
        "dead_lettered": store.dead_letters.words(info.run),
    }


def _eta(store: RunStore, info: RunInfo, target: int, accepted_per_s: float) -> float | None:
    """Seconds until every word has its quota at the last minute's rate (the current round, for forever runs)."""
    if accepted_per_s <= 0:
        return None
    return round(store.still_needed(info, target) / accepted_per_s, 1)


def workers(store: RunStore, now: float | None = None) -> list[dict[str, Any]]:
    """One row per farm process: generation workers (with the figures their tasks keep: every
    run, a worker serves whatever its queue holds) and collectors. ``state`` is ``alive`` or
    ``gone`` (no beat for GONE_AFTER s); a gone row is dropped after DROP_AFTER s."""
    now = now or time.time()
    present = {m.name: m for m in Presence(store.redis).members()}
    rows = []
    for name, data in store.workers.all().items():
        seconds = float(data.get("generation_seconds", 0) or 0)  # machine time (docs/design.md)
        tokens = int(data.get("completion_tokens", 0) or 0)
        member = present.pop(name, None)
        last_seen = max(float(data.get("last_seen", 0) or 0), member.last_seen if member else 0.0)
        if member is None and now - last_seen > DROP_AFTER:
            continue  # gone long ago: dropped (its figures stay for enqueue --dry-run's estimate)
        rows.append({
            "worker": name, "kind": "worker", "queues": list(member.queues) if member else [],
            "model": data.get("model_file") or data.get("model", ""),
            "tasks": int(data.get("tasks", 0) or 0),
            "completion_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0,
            "last_seen_s_ago": round(now - last_seen, 1) if last_seen else None,
            "state": "alive" if member is not None and member.alive(now) else "gone",
        })
    for member in present.values():  # alive (or recently gone) but no task finished yet, and collectors
        rows.append({"worker": member.name, "kind": member.kind, "queues": list(member.queues), "model": "",
                     "tasks": 0, "completion_tokens": 0, "tokens_per_s": 0.0,
                     "last_seen_s_ago": round(member.age(now), 1),
                     "state": "alive" if member.alive(now) else "gone"})
    return sorted(rows, key=lambda r: (r["kind"] != "collector", r["state"] != "alive", r["worker"]))


def farm_problems(store: RunStore, queue: str, now: float | None = None) -> list[str]:
    """What stops a run on ``queue`` from progressing: no live worker consumes the queue, no
    collector is alive. Empty when both are there."""
    now = now or time.time()
    presence = Presence(store.redis)
    problems = []
    if not presence.serving(queue, now):
        last = presence.last_served(queue)
        problems.append(f"no worker on queue {queue} for {now - last:.0f} s" if last is not None
                        else f"no worker on queue {queue}")
    if not presence.collectors_alive(now):
        seen = store.collectors.last_seen()
        problems.append("no collector alive" + (f" (last seen {now - seen:.0f} s ago)" if seen else ""))
    return problems


def run_status(store: RunStore, run: str, now: float | None = None) -> dict[str, Any]:
    info = store.get(run)
    if info is None:
        raise UnknownRun(f"no run '{run}' (see `producer runs`)")
    now = now or time.time()
    counts = store.counts(run)
    span, sums = store.rates.window(run, RATE_WINDOW, now)
    span = max(1.0, min(span, now - info.created_at))
    rate = {
        "window_s": round(span, 1),
        "tokens_per_s": round(sums["tokens"] / span, 2),
        "conversations_per_s": round(sums["accepted"] / span, 3),
        "results_per_s": round(sums["results"] / span, 3),
    }
    target = info.target or info.config.per_word
    problems = farm_problems(store, info.queue, now) if info.status == "active" else []
    return {
        "run": run,
        "name": info.config.name,
        "status": info.status,
        "error": store.meta(run, "error")["error"] if info.status == "failed" else None,
        "paused": store.meta(run, "paused")["paused"],  # a collector cannot write it now (a full disk)
        "model": info.config.model,
        "structure": info.config.structure,
        "queue": info.queue,
        "out_dir": info.out_dir,
        "forever": info.forever,
        "round": info.round,
        "per_word": target,
        "skip_covered": info.config.skip_covered,
        "words": _words(store, info),
        "conversations": {
            "accepted": counts.accepted,
            "rejected": counts.rejected,
            "by_reason": counts.by_reason,
            "dropped": counts.dropped,
            "completion_tokens": counts.completion_tokens,
        },
        "depth_and_cost": depth_and_cost(counts),
        "relevance": run_scores(counts, info.config),  # the judge's scores and the on-topic yield
        "dead_letters": store.dead_letters.count(run),
        "dead_letters_dropped": store.dead_letters.dropped(run),  # the oldest, beyond the cap
        "rate": rate,
        "eta_s": None if info.status != "active" or problems else _eta(store, info, target,
                                                                        rate["conversations_per_s"]),
        "farm": problems,
        # active, but nothing can make progress: e.g. `producer run` was interrupted (Ctrl-C)
        "interrupted": info.status == "active" and any(p.startswith("no worker") for p in problems),
        "workers": workers(store, now),
        "created_at": info.created_at,
    }


def runs_overview(store: RunStore) -> list[dict[str, Any]]:
    rows = []
    for run in reversed(store.list_runs()):
        info = store.get(run)
        if info is None:
            continue
        counts = store.counts(run)
        rows.append({"run": run, "status": info.status, "forever": info.forever, "round": info.round,
                     "words_done": store.words_done(run), "words": info.total_words,
                     "accepted": counts.accepted, "rejected": counts.rejected,
                     "created_at": info.created_at})
    return rows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def render(status: dict[str, Any]) -> Group:
    words, conv, rate = status["words"], status["conversations"], status["rate"]
    mode = f"forever, round {status['round']}" if status["forever"] else "one pass"
    head = Table.grid(padding=(0, 2))
    # every value that comes from a config, a worker or Redis is escaped: "[/b]" is a word, not markup
    shown_status = "active — interrupted: no worker alive" if status.get("interrupted") else status["status"]
    head.add_row("[bold]run[/]", f"{escape(status['run'])}  [bold]{escape(shown_status)}[/]  ({mode}, "
                 f"{status['per_word']} per word)")
    for problem in status.get("farm", []):
        head.add_row("[bold red]farm[/]", escape(problem))
    if status.get("error"):
        head.add_row("[bold red]error[/]", escape(status["error"]))
    if status.get("paused"):
        head.add_row("[bold yellow]paused[/]", escape(status["paused"]))
    head.add_row("[bold]model[/]", f"{escape(str(status['model']))}  queue {escape(str(status['queue']))}  "
                 f"structure {escape(str(status['structure']))}")
    head.add_row("[bold]rate[/]", f"{rate['tokens_per_s']:.1f} tok/s  {rate['conversations_per_s']:.2f} conversations/s "
                                  f"over the last {rate['window_s']:.0f}s   ETA {_duration(status['eta_s'])}")
    head.add_row("[bold]depth/cost[/]", describe(status["depth_and_cost"]))
    head.add_row("[bold]relevance[/]", describe_scores(status["relevance"]))

    word_table = Table(title="words", title_justify="left")
    for column in ("total", "complete", "in progress", "pending", "short", "dead-lettered"):
        word_table.add_column(column, justify="right")
    word_table.add_row(*(str(words[k]) for k in ("total", "complete", "in_progress", "pending", "short",
                                                  "dead_lettered")))

    outcome = Table(title="conversations", title_justify="left")
    outcome.add_column("outcome")
    outcome.add_column("count", justify="right")
    outcome.add_row("[green]accepted[/]", str(conv["accepted"]))
    for reason, value in conv["by_reason"].items():
        outcome.add_row(f"[yellow]rejected: {escape(reason)}[/]", str(value))
    if conv["dropped"]:
        outcome.add_row("dropped (cancelled / covered)", str(conv["dropped"]))
    if status["dead_letters"]:
        dropped = status.get("dead_letters_dropped", 0)
        outcome.add_row("[red]dead letters[/] (producer dlq)",
                        str(status["dead_letters"]) + (f" (+{dropped} oldest dropped)" if dropped else ""))

    parts: list[Any] = [head, word_table, outcome]
    if status["workers"]:
        table = Table(title="farm processes", title_justify="left")
        for column in ("process", "kind", "state", "model / queue", "tasks", "tok/s", "last seen"):
            table.add_column(column, justify="left" if column in ("process", "kind", "state", "model / queue") else "right")
        for w in status["workers"]:
            seen = "-" if w["last_seen_s_ago"] is None else f"{_duration(w['last_seen_s_ago'])} ago"
            state = Text(w.get("state", "alive"), style="green" if w.get("state") == "alive" else "red")
            what = w["model"] or ", ".join(w.get("queues", []))
            table.add_row(Text(w["worker"]), w.get("kind", "worker"), state, Text(what), str(w["tasks"]),
                          f"{w['tokens_per_s']:.1f}", seen)
        parts.append(table)
    return Group(*parts)


def render_runs(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="runs (newest first)", title_justify="left")
    for column in ("run", "status", "words done", "accepted", "rejected", "created"):
        table.add_column(column, justify="right" if column in ("words done", "accepted", "rejected") else "left",
                         no_wrap=True)
    for row in rows:
        status = row["status"] + (f" (forever, round {row['round']})" if row["forever"] else "")
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["created_at"]))
        table.add_row(Text(row["run"]), Text(status), f"{row['words_done']}/{row['words']}", str(row["accepted"]),
                      str(row["rejected"]), created)
    return table


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)
