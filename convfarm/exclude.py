"""The config's ``exclude`` patterns as they are used: one joined, case-insensitive pattern with
a bounded matching time.

The patterns are joined (``(?:a)|(?:b)``) and compiled once; validation compiles exactly that
joined pattern, so a pattern that is valid alone but breaks the join (``(?i)kill`` in the middle)
is a config error, not a dead-lettered task. Matching uses the ``regex`` package because it can
stop a search after a time limit: Python's ``re`` cannot, and a pattern with catastrophic
backtracking (``(\\w+\\s?)+:``) would take seconds per line inside every task. At validation the
pattern is tried on a few lines built to make such patterns backtrack; one that blows the bound
there is rejected (exit 2 at enqueue). At run time a search that still blows the bound counts
as a match, so a line the farm could not check is never accepted (docs/design.md, "Config").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import regex

# One search of one line. Ordinary patterns take microseconds on a 600-character line; the bound
# is wall-clock time, so it leaves room for a busy machine descheduling the process.
SEARCH_TIMEOUT_S = 0.25
# The probes at validation: a catastrophic pattern takes practically forever on them, so a
# generous bound still catches it, and a stall of the machine does not fail a good config.
PROBE_TIMEOUT_S = 1.0
# Lines on which a backtracking-prone pattern explodes: runs of words, letters and digits that
# almost match but end in a character that makes the overall match fail.
_PROBES = tuple(
    body + tail
    for body in (" ".join(["word"] * 40), "a" * 200, "1" * 200, "ab" * 100, "a " * 100, "a-" * 100, "a." * 100)
    for tail in ("!", "\n", "")
)


class ExcludeError(ValueError):
    """The exclude list cannot be used (one line naming the problem)."""


@dataclass(frozen=True)
class TimedOut:
    """What a search that blew its time bound returns: treated as a match (the line is excluded)."""

    text: str = "(the exclude patterns took too long on this line)"

    def group(self, _index: int = 0) -> str:
        return self.text


@dataclass(frozen=True)
class ExcludePattern:
    """The joined exclude patterns, searched with a time bound (``search`` mirrors ``re``'s)."""

    pattern: regex.Pattern[str]
    timeout: float = SEARCH_TIMEOUT_S

    def search(self, text: str) -> regex.Match[str] | TimedOut | None:
        try:
            return self.pattern.search(text, timeout=self.timeout)
        except TimeoutError:
            return TimedOut()


def join(patterns: tuple[str, ...]) -> str:
    return "|".join(f"(?:{p})" for p in patterns)


@lru_cache(maxsize=64)  # compiled and probed once per exclude list, not once per task or record
def compile_exclude(patterns: tuple[str, ...]) -> ExcludePattern | None:
    """The pattern the rules use, or :class:`ExcludeError` when it cannot be used as joined or is too slow."""
    if not patterns:
        return None
    for i, pattern in enumerate(patterns):
        if not pattern.strip():
            raise ExcludeError(f"entry {i} is blank (it would match every line)")
        try:
            regex.compile(pattern, regex.IGNORECASE | regex.VERSION0)
        except regex.error as exc:
            raise ExcludeError(f"entry {i} {pattern!r} is not a valid regular expression ({exc})") from None
    try:
        compiled = regex.compile(join(patterns), regex.IGNORECASE | regex.VERSION0)
    except regex.error as exc:  # each is fine alone but not joined, e.g. an inline flag not at the start
        raise ExcludeError(f"the patterns joined as the rules use them ({join(patterns)!r}) are not a valid "
                           f"regular expression ({exc}); move inline flags such as '(?i)' out: matching is "
                           "already case-insensitive") from None
    for probe in _PROBES:
        try:
            compiled.search(probe, timeout=PROBE_TIMEOUT_S)
        except TimeoutError:
            slow = next((p for p in patterns if _is_slow(p, probe)), join(patterns))
            raise ExcludeError(f"pattern {slow!r} backtracks catastrophically (a search of a {len(probe)}-character "
                               f"line took over {PROBE_TIMEOUT_S:g} s); rewrite it, e.g. without nested "
                               "repetition such as '(\\w+\\s?)+'") from None
    return ExcludePattern(compiled)


def _is_slow(pattern: str, probe: str) -> bool:
    try:
        regex.compile(pattern, regex.IGNORECASE | regex.VERSION0).search(probe, timeout=PROBE_TIMEOUT_S)
    except TimeoutError:
        return True
    return False
