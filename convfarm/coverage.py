"""``skip_covered`` (the seed's coverage heuristic): which run words a conversation mentions.

The seed split every kept line on non-alphanumeric characters and counted each config word
it found; a word with a count was skipped. We match whole words too, and multi-word terms
("speed of light") as runs of words, case-insensitively. The turns the prompt itself
supplies are left out (the seed ignored the echoed prompt too): they are the same in every
conversation and would cover their words at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from convfarm.config import RunConfig
from convfarm.judging import prompt_setup
from convfarm.messages import ConversationRecord

_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class WordIndex:
    terms: dict[tuple[str, ...], str]  # casefolded words of a term -> the term as configured
    longest: int


_indexes: dict[str, WordIndex] = {}


def word_index(config: RunConfig) -> WordIndex:
    key = config.config_hash()
    if key not in _indexes:
        terms = {tuple(_WORD.findall(w.casefold())): w for w in config.words}
        terms.pop((), None)
        _indexes[key] = WordIndex(terms, max((len(t) for t in terms), default=1))
    return _indexes[key]


def mentioned_words(config: RunConfig, record: ConversationRecord) -> list[str]:
    """The run's words (other than the record's own) that the conversation's turns mention."""
    index = word_index(config)
    found: set[str] = set()
    given = len(prompt_setup(config, record.word).turns)
    for turn in record.turns[given:]:
        tokens = _WORD.findall(turn.text.casefold())
        for start in range(len(tokens)):
            for size in range(1, min(index.longest, len(tokens) - start) + 1):
                if (term := index.terms.get(tuple(tokens[start:start + size]))) is not None:
                    found.add(term)
    found.discard(record.word)
    return sorted(found)
