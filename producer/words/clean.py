"""Text clean-up shared by every word source, and the error they raise."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path


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


def read_word_file(path: Path) -> list[str]:
    """Words from a file: a JSON array, or one word per line (blank lines and ``#`` comments
    skipped; the seed guide's ``"term",`` lines work too)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WordSourceError(f"{path}: no such word file") from None
    except IsADirectoryError:
        raise WordSourceError(f"{path}: is a directory, not a word file") from None
    except UnicodeDecodeError:
        raise WordSourceError(f"{path}: cannot read the word file (not UTF-8 text)") from None
    except OSError as exc:
        raise WordSourceError(f"{path}: cannot read the word file ({exc.strerror or exc})") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WordSourceError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        except RecursionError:  # json's parser recurses once per nesting level
            raise WordSourceError(f"{path}: invalid JSON in the word file: nested too deeply") from None
        if not all(isinstance(w, str) for w in data):
            raise WordSourceError(f"{path}: the JSON array must hold strings only")
        words = [normalise(w) for w in data]
    else:
        words = []
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("#"):
                continue
            # the seed guide's sed output: "term",
            words.append(normalise(line.removesuffix(",").strip().removeprefix('"').removesuffix('"')))
    words = [w for w in words if w]
    if not words:
        raise WordSourceError(f"{path}: the word file has no words")
    return words
