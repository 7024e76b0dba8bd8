"""Text clean-up shared by every word source, and the error they raise."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable


class WordSourceError(ValueError):
    """A word source that cannot give words, phrased as one line naming it (exit 2 in the CLI)."""


# hyphen look-alikes Wikipedia uses inside terms (U+2010, U+2011 non-breaking hyphen); a plain '-'
# keeps the word identical to what a model writes and what the filters search for
_HYPHENS = str.maketrans({"\u2010": "-", "\u2011": "-"})
# invisible characters that survive entity decoding and would make two spellings of a term differ
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"))
# a trailing "(C)", "(physics)", "(also: x)": a qualifier, not part of the word a teacher explains
_QUALIFIER = re.compile(r"\s*\([^()]*\)\s*$")


def normalise(text: str) -> str:
    """NFC, no invisible characters, plain hyphens, single spaces."""
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE).translate(_HYPHENS)
    return " ".join(text.split())


def drop_qualifiers(term: str) -> str:
    """``"ampere (A)"`` -> ``"ampere"``; a term that is nothing but a parenthesis stays as it is."""
    while (stripped := _QUALIFIER.sub("", term)) != term and stripped:
        term = stripped
    return term


def dedupe(terms: Iterable[str], key: Callable[[str], str] = str.casefold) -> list[str]:
    """De-duplication (case-insensitive by default) keeping the first spelling and the original order."""
    seen: set[str] = set()
    kept: list[str] = []
    for term in terms:
        key_ = key(term)
        if term and key_ not in seen:
            seen.add(key_)
            kept.append(term)
    return kept
