"""The config's ``exclude`` patterns as they are used: one joined, case-insensitive pattern with
a bounded matching time, and the check that decides once, at enqueue, whether it is safe.

The patterns are joined (``(?:a)|(?:b)``) and compiled once; validation compiles exactly that
joined pattern, so a pattern that is valid alone but breaks the join (``(?i)kill`` in the middle)
is a config error, not a dead-lettered task.

Safety (docs/design.md, "Config") is decided by reading the pattern, not by timing it: a timed
probe gives a different answer on a busy collector than on the laptop that enqueued, and it cost
every process that loaded the config a second and a half. :func:`check_exclude` parses each
pattern (Python's own regular-expression parser) and refuses the shape that makes a
backtracking matcher explode: a *choice that the next character cannot decide, inside a
repetition* — the text one iteration could take is also what the next one could start with:
``(\\w+\\s?)+``, ``(a|aa){16}``, ``(a*)*``, ``(x?x)+``. A line that almost matches has
exponentially many ways to fail. (Such choices outside a repetition — ``\\w+\\w+:`` — are
polynomial at worst, and the ``regex`` engine's own checks make them fast: measured, none of
``\\w+\\w+\\w+\\w+:x`` or ``.*.*.*:x`` took a millisecond on a 600-character line.) Patterns
written in ``regex``-only syntax (``\\p{L}``) cannot be read by the check and are refused.

The analysis reads the pattern's text and never times anything, so it gives the same answer on
every machine. It runs where a config file is read (``enqueue``, ``run``, ``try``); a run's
config in Redis is stored only after it passed, so that is the decision stored with the run,
and a worker or collector loading it (:func:`convfarm.config.stored_config`) only compiles it. Matching uses the ``regex`` package
because it can stop a search after a time limit (Python's ``re`` cannot): a line that a pattern
the analysis let through still cannot be searched within the bound counts as a match, so a line
the farm could not check is never accepted.
"""

from __future__ import annotations

import re
import re._constants as sre  # the parser's opcodes: what check_exclude walks (stable since 3.11)
import re._parser as sre_parse
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import regex

# One search of one line. Ordinary patterns take microseconds on a 600-character line; the bound
# is wall-clock time, so it leaves room for a busy machine descheduling the process. A search
# that blows it counts as a match (TimedOut): the line is excluded, never kept unchecked.
SEARCH_TIMEOUT_S = 0.25

_FLAGS = regex.IGNORECASE | regex.VERSION0


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


@lru_cache(maxsize=64)  # compiled once per exclude list, not once per task or record
def compile_exclude(patterns: tuple[str, ...]) -> ExcludePattern | None:
    """The pattern the rules use (no safety analysis: that was decided when the run was created)."""
    if not patterns:
        return None
    try:
        return ExcludePattern(regex.compile(join(patterns), _FLAGS))
    except (regex.error, RecursionError) as exc:
        raise ExcludeError(f"the exclude patterns do not compile ({exc})") from None


@lru_cache(maxsize=64)
def check_exclude(patterns: tuple[str, ...]) -> None:
    """Raise :class:`ExcludeError` when the list cannot be used as joined, or a pattern can backtrack catastrophically."""
    for i, pattern in enumerate(patterns):
        if not pattern.strip():
            raise ExcludeError(f"entry {i} is blank (it would match every line)")
        try:
            regex.compile(pattern, _FLAGS)
        except regex.error as exc:
            raise ExcludeError(f"entry {i} {pattern!r} is not a valid regular expression ({exc})") from None
        except RecursionError:
            raise ExcludeError(f"entry {i} is nested too deeply to compile") from None
        if problem := backtracking_problem(pattern):
            raise ExcludeError(f"entry {i} {pattern!r} {problem}") from None
    if patterns:
        try:
            regex.compile(join(patterns), _FLAGS)
        except regex.error as exc:  # each is fine alone but not joined, e.g. an inline flag not at the start
            raise ExcludeError(f"the patterns joined as the rules use them ({join(patterns)!r}) are not a valid "
                               f"regular expression ({exc}); move inline flags such as '(?i)' out: matching is "
                               "already case-insensitive") from None


# --- the structural analysis ---------------------------------------------------------------------
# A first-character set is a frozenset over a finite universe: the printable ASCII and Latin
# characters, whitespace, plus every character the pattern itself names. Two sets overlap when
# one character can start both ways; characters outside the universe that the pattern does
# not name cannot tell two ways apart any better than the ones inside.
_BASE_UNIVERSE = frozenset(map(chr, [*range(0x00, 0x250), 0x2028, 0x2029, 0x3000, 0x4E2D, 0x0416, 0x03B1]))
_CATEGORY = {
    sre.CATEGORY_DIGIT: re.compile(r"\d"), sre.CATEGORY_NOT_DIGIT: re.compile(r"\D"),
    sre.CATEGORY_SPACE: re.compile(r"\s"), sre.CATEGORY_NOT_SPACE: re.compile(r"\S"),
    sre.CATEGORY_WORD: re.compile(r"\w"), sre.CATEGORY_NOT_WORD: re.compile(r"\W"),
}
_NAMED = (sre.LITERAL, sre.NOT_LITERAL)


def backtracking_problem(pattern: str) -> str | None:
    """Why ``pattern`` can backtrack catastrophically, or None (a pure function of the text)."""
    try:
        tree = sre_parse.parse(pattern, re.IGNORECASE)
    except re.error as exc:
        return (f"uses syntax the backtracking check cannot read ({exc}); write it in Python `re` syntax, "
                "which the farm can check")
    except RecursionError:
        return "is nested too deeply to check"
    analysis = _Analysis(_BASE_UNIVERSE | _named_chars(tree))
    try:
        analysis.sequence(list(tree), frozenset(), in_repeat=False)
    except RecursionError:
        return "is nested too deeply to check"
    if analysis.exponential:
        return (f"can backtrack catastrophically: inside a repetition, {analysis.exponential} can take the "
                "same text more than one way (e.g. '(\\w+\\s?)+' or '(a|aa)+'); make each repetition's parts "
                "start with different characters, e.g. '\\w+(\\s\\w+)*'")
    return None


def _named_chars(tree: Any) -> frozenset[str]:
    named: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, (list, tuple, sre_parse.SubPattern)):
            items = list(node)
            if len(items) == 2 and items[0] in _NAMED and isinstance(items[1], int):
                named.update(_variants(items[1]))
            elif len(items) == 2 and items[0] is sre.RANGE and isinstance(items[1], tuple):
                lo, hi = items[1]
                named.update(chr(c) for c in (lo, hi))
            for item in items:
                walk(item)

    walk(tree)
    return frozenset(named)


def _variants(code: int) -> set[str]:
    ch = chr(code)  # the forms a case-insensitive match treats as the same (single characters only)
    return {form for form in (ch, ch.lower(), ch.upper(), ch.casefold()) if len(form) == 1}


class _Analysis:
    """First sets and the choices a backtracking matcher faces, walked once over the parse tree."""

    def __init__(self, universe: frozenset[str]) -> None:
        self.universe = universe
        self.exponential: str | None = None  # the first ambiguous choice found inside a repetition

    # first(set), nullable; ``follow``: what may come right after; flags choices that cannot be
    # told apart by the next character
    def sequence(self, items: list[Any], follow: frozenset[str], *, in_repeat: bool) -> tuple[frozenset[str], bool]:
        follows = [follow] * len(items)
        after = follow
        for i in range(len(items) - 1, -1, -1):
            follows[i] = after
            first, can_skip = self.first(items[i])
            after = first | after if can_skip else first
        for item, item_follow in zip(items, follows, strict=True):
            self.item(item, item_follow, in_repeat=in_repeat)
        return self._first_of_sequence(items)

    def _first_of_sequence(self, items: list[Any]) -> tuple[frozenset[str], bool]:
        first: frozenset[str] = frozenset()
        for item in items:
            f, can_skip = self.first(item)
            first |= f
            if not can_skip:
                return first, False
        return first, True

    def first(self, item: Any) -> tuple[frozenset[str], bool]:
        op, av = item
        if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
            return self.chars(op, av), False
        if op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            return frozenset(), True
        if op is sre.SUBPATTERN:
            return self._first_of_sequence(list(av[-1]))
        if op is sre.ATOMIC_GROUP:
            return self._first_of_sequence(list(av))
        if op is sre.BRANCH:
            parts = [self._first_of_sequence(list(alt)) for alt in av[1]]
            return frozenset().union(*(f for f, _ in parts)), any(n for _, n in parts)
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, _high, body = av
            first, nullable = self._first_of_sequence(list(body))
            return first, nullable or low == 0
        if op is sre.GROUPREF_EXISTS:
            _group, yes, no = av
            parts = [self._first_of_sequence(list(yes)), self._first_of_sequence(list(no) if no else [])]
            return parts[0][0] | parts[1][0], parts[0][1] or parts[1][1]
        return self.universe, True  # a back reference: anything, possibly nothing

    def chars(self, op: Any, av: Any) -> frozenset[str]:
        if op is sre.LITERAL:
            return frozenset(_variants(av))
        if op is sre.NOT_LITERAL:
            return self.universe - _variants(av)
        if op is sre.ANY:
            return self.universe - {"\n"}
        negate = bool(av) and av[0][0] is sre.NEGATE
        members: set[str] = set()
        for kind, value in av[1:] if negate else av:
            if kind is sre.LITERAL:
                members |= _variants(value)
            elif kind is sre.RANGE:
                lo, hi = value
                members |= {c for c in self.universe if any(lo <= ord(v) <= hi for v in _variants(ord(c)))}
            elif kind is sre.CATEGORY:
                test = _CATEGORY.get(value)
                members |= {c for c in self.universe if test is None or test.match(c)}
            else:
                members |= self.universe
        return frozenset(self.universe - members if negate else members)

    def item(self, item: Any, follow: frozenset[str], *, in_repeat: bool) -> None:
        op, av = item
        if op is sre.SUBPATTERN:
            self.sequence(list(av[-1]), follow, in_repeat=in_repeat)
        elif op is sre.ATOMIC_GROUP:  # nothing outside backtracks into it
            self.sequence(list(av), follow, in_repeat=False)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            self.sequence(list(av[1]), frozenset(), in_repeat=in_repeat)
        elif op is sre.BRANCH:
            self.branch([list(alt) for alt in av[1]], follow, in_repeat=in_repeat)
        elif op is sre.GROUPREF_EXISTS:
            self.branch([list(av[1]), list(av[2]) if av[2] else []], follow, in_repeat=in_repeat)
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            self.repeat(op, av, follow, in_repeat=in_repeat)

    def branch(self, alternatives: list[list[Any]], follow: frozenset[str], *, in_repeat: bool) -> None:
        starts = []
        for alt in alternatives:
            first, nullable = self._first_of_sequence(alt)
            starts.append(first | follow if nullable else first)
        if in_repeat and self.exponential is None and any(
                starts[i] & starts[j] for i in range(len(starts)) for j in range(i + 1, len(starts))):
            self.exponential = "an alternation"
        for alt in alternatives:
            self.sequence(alt, follow, in_repeat=in_repeat)

    def repeat(self, op: Any, av: Any, follow: frozenset[str], *, in_repeat: bool) -> None:
        _low, high, body = av
        body_first, _ = self._first_of_sequence(list(body))
        repeats = high is sre.MAXREPEAT or high > 1
        body_follow = body_first | follow if repeats else follow
        if self._ambiguous(op, av, follow) and in_repeat and self.exponential is None:
            self.exponential = "a repetition"
        self.sequence(list(body), body_follow, in_repeat=(in_repeat or repeats) and op is not sre.POSSESSIVE_REPEAT)

    def _ambiguous(self, op: Any, av: Any, follow: frozenset[str]) -> bool:
        """Can the next character not tell "one more iteration" from "go on after the repetition"?"""
        low, high, body = av
        return op is not sre.POSSESSIVE_REPEAT and low != high and bool(self._first_of_sequence(list(body))[0] & follow)

