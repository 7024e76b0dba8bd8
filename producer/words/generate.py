"""Model-generated term lists (``producer words generate``).

The seed guide prompts the model with "The following is a list of 1000 physics terms ..." and
notes "mixed results": small models number their lists, add definitions, switch to prose,
repeat themselves and drift off topic. So we

* ask in short rounds (a few dozen tokens each, a new seed every round): a chat question for a
  numbered list to start with (instruct models answer that well), then the seed's list prompt
  opened with a few of the terms found so far, so the model continues a list instead of starting
  an essay; back to the question whenever continuing stalls;
* parse whatever comes back (:func:`parse_terms`: numbered lists, bullets, quotes, commas,
  "term: definition" lines, markdown) and drop junk (:func:`junk_reason`);
* stop when we have ``count`` terms or a few rounds in a row brought nothing new.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from producer.words.clean import dedupe, drop_qualifiers, normalise

Mode = Literal["auto", "completion", "chat"]

MAX_WORDS = 4
MAX_CHARS = 40
# what models write instead of a term: fillers, list furniture, their own commentary
FILLER = frozenset({
    "etc", "and so on", "and more", "more", "others", "other", "and others", "misc", "miscellaneous",
    "n/a", "none", "various", "term", "terms", "word", "words", "list", "example", "examples", "keyword",
    "keywords", "glossary", "definition", "definitions", "concept", "concepts", "answer", "note", "notes",
    "terminology", "text", "reference", "references",
})
# words of a sentence or of the model talking to us, never of a glossary term ("The answer is not")
_CHATTER = frozenset({
    "is", "are", "was", "were", "am", "be", "i", "i'm", "i'll", "i've", "you", "you're", "your", "we", "they",
    "it's", "that's", "here's", "there's", "not", "because", "thanks", "thank", "please", "sorry", "what",
    "why", "how", "this", "these", "those", "my", "me", "our", "so", "here", "sure", "okay", "let's", "below", "following",
})
# a term does not end in these: the model was cut off ("Newton's law of")
_DANGLING = frozenset({"of", "and", "or", "the", "a", "an", "to", "in", "with", "for", "on", "by", "as", "at"})
_BULLET = re.compile(r"^\s*(?:[-*•·+>]+|\(?\d{1,4}[.):]|\(?[a-zA-Z][.)](?=\s))\s*")
# "1. speed 2. distance 3. time" on one line
_INLINE_NUMBER = re.compile(r"\s+\d{1,3}[.)]\s+")
_PAREN = re.compile(r"\([^()]*\)")
# "term: definition", "term - definition", "term — definition"
_DEFINITION = re.compile(r"\s*(?::|\s[-–—]\s)\s*")
_ALLOWED = re.compile(r"^[\w .'’&/+-]+$")
_STRAY_APOSTROPHE = re.compile(r"(?<![A-Za-z])['’]|['’](?![A-Za-z\s]|$)")
_QUOTES = "\"'“”‘’`«»"


def _strip_markup(text: str) -> str:
    # markdown emphasis and code marks carry no meaning in a term; snake_case is a model artefact
    return text.replace("**", "").replace("__", " ").replace("*", "").replace("`", "").replace("_", " ")


def _split_list(text: str) -> list[str]:
    # Commas and semicolons separate items, inside quotes too: small models write "a, b", "c" as
    # often as "a", "b", and a glossary term with a comma in it is rare enough to give up.
    return [part for chunk in re.split(r"[,;]", text) for part in _INLINE_NUMBER.split(chunk)]


def _clean_item(item: str) -> str:
    item = normalise(_strip_markup(item))
    item = _BULLET.sub("", item.strip(_QUOTES + " ")).strip(_QUOTES + " ")
    item = re.sub(r"^(?:and|or|the|a|an)\s+", "", item, flags=re.IGNORECASE)
    item = re.sub(r"[\s,;:]*(?:etc\.?|and so on|\.\.\.|…)$", "", item, flags=re.IGNORECASE)
    item = drop_qualifiers(item)
    # "Mass 9", "Momentum 103": list numbers that slipped in after the term
    item = re.sub(r"(?:\s+\d+)+$", "", item)
    return item.strip(_QUOTES + " .,;:!?").removesuffix(" -").strip()


def junk_reason(term: str, topic: str = "") -> str | None:
    """Why ``term`` is not a usable glossary term, or ``None`` if it is."""
    words = term.split()
    lowered = [w.casefold() for w in words]
    whole = term.casefold()
    if len(term) < 2:
        return "too short"
    if len(words) > MAX_WORDS or len(term) > MAX_CHARS or len(re.split(r"[\s-]+", term)) > MAX_WORDS + 1:
        return "too long"
    if not any(ch.isalpha() for ch in term):
        return "no letters"
    if not _ALLOWED.match(term) or _STRAY_APOSTROPHE.search(term):
        return "odd characters"
    if any(w.startswith("-") or w.endswith("-") for w in words):
        return "broken word"
    if whole in FILLER or whole.removeprefix("and ") in FILLER:
        return "filler"
    topic_key = topic.casefold().strip()
    if topic_key and whole in {topic_key, f"{topic_key} term", f"{topic_key} terms", f"{topic_key} words"}:
        return "the topic itself"
    if any(w in _CHATTER for w in lowered):
        return "chatter"
    if lowered[-1] in _DANGLING:
        return "cut off"
    stems = [w.rstrip("s") for w in lowered if w not in _DANGLING]
    if len(stems) != len(set(stems)):
        return "repetition"  # "Laser Laser Science", "Cake and Cakes": a model looping, not a term
    if any(len(w) > 25 and "-" not in w for w in words) or any(
            re.fullmatch(r"\d+[A-Za-z]{2,}\S*|\S*[A-Za-z]{3,}\d{2,}\S*", w) for w in words):
        return "gibberish"
    if term.count(".") > 1 and not re.fullmatch(r"(?:\w\.)+\w?\.?", term):
        return "sentence"
    return None


def candidate_items(text: str) -> list[str]:
    """Raw items of a model's list output, before the junk filter (a line may give several)."""
    items: list[str] = []
    for raw_line in text.splitlines():
        line = _PAREN.sub("", _strip_markup(raw_line)).strip()
        bulleted = bool(_BULLET.match(line))
        line = _BULLET.sub("", line).strip()
        parts = _DEFINITION.split(line, maxsplit=1)
        if len(parts) == 2:
            head, tail = parts
            term = _clean_item(head)
            if "," not in head and term and junk_reason(term) is None:
                items.append(term)  # "1. Vector: a quantity with direction" -> the defined term
                continue
            # an item of a list keeps its head; "These are the basic ideas: atom; ion" is a list after the colon
            line = head if bulleted else tail
        items.extend(_clean_item(part) for part in _split_list(line))
    return [item for item in items if item]


def parse_terms(text: str, topic: str = "") -> list[str]:
    """Clean, de-duplicated terms from a model's messy list output."""
    return dedupe((item for item in candidate_items(text) if junk_reason(item, topic) is None), key=term_key)


def term_key(term: str) -> str:
    # "Vector" and "vectors", "black-body" and "black body": the same entry to a reader
    key = term.casefold().replace("-", " ")
    return key[:-1] if len(key) > 3 and key.endswith("s") and not key.endswith("ss") else key


# --- asking the model ----------------------------------------------------------------------------

# the seed guide's prompt; it ends inside an opening quote so the first token is part of a term
COMPLETION_PROMPT = ('The following is a list of {size} {topic} terms. There will be NOTHING except {topic} terms next:\n'
                     '{examples}"')
# instruct models answer a question with a numbered list far more reliably than they continue one
CHAT_PROMPT = "What are the key terms of {topic}? Give a numbered list of 10 terms, with no explanations.{avoid}"


def completion_prompt(topic: str, examples: list[str], size: int = 100) -> str:
    return COMPLETION_PROMPT.format(size=size, topic=topic, examples="".join(f'"{t}", ' for t in examples))


def chat_prompt(topic: str, known: list[str]) -> str:
    return CHAT_PROMPT.format(topic=topic, avoid=f" Not these: {', '.join(known)}." if known else "")


@dataclass
class RoundReport:
    number: int
    style: str  # "chat" or "completion"
    new_terms: list[str]
    total: int
    seconds: float


@dataclass
class GeneratedList:
    topic: str
    wanted: int
    terms: list[str] = field(default_factory=list)
    rounds: int = 0
    seconds: float = 0.0
    stopped: str = ""  # "enough", "no progress", "round limit"

    @property
    def complete(self) -> bool:
        return len(self.terms) >= self.wanted


def round_style(mode: Mode, known: int, last_round_new: int) -> str:
    """``auto``: a chat question to start (and whenever continuing a list stalls), else the seed's
    list continuation seeded with known terms, which is faster and stays on topic better."""
    if mode != "auto":
        return mode
    return "completion" if known and last_round_new else "chat"


def _ask(llama: Any, style: str, topic: str, shown: list[str], *, seed: int, max_tokens: int, temperature: float) -> str:
    sampling = {"max_tokens": max_tokens, "temperature": temperature, "top_p": 0.95, "top_k": 40,
                "repeat_penalty": 1.15, "seed": seed}
    if style == "chat":
        messages = [{"role": "user", "content": chat_prompt(topic, shown)}]
        response = llama.create_chat_completion(messages=messages, **sampling)
        return response["choices"][0]["message"]["content"] or ""
    # a blank line is where small models leave the list for prose: stop there, no tokens wasted
    response = llama.create_completion(completion_prompt(topic, shown), stop=["\n\n"], **sampling)
    return '"' + response["choices"][0]["text"]


def generate_terms(llama: Any, topic: str, count: int, *, mode: Mode = "auto", seed: int = 0,
                   examples: Iterable[str] = (), max_tokens: int = 96, temperature: float = 0.7,
                   patience: int = 3, max_rounds: int | None = None,
                   on_round: Callable[[RoundReport], None] | None = None) -> GeneratedList:
    """Ask ``llama`` (a ``llama_cpp.Llama``) for ``count`` terms on ``topic``.

    ``examples`` start the list (as in the seed's prompt) and are not counted. Stops at ``count``
    terms, after ``patience`` rounds in a row without a new term, or after ``max_rounds``
    (default: enough for ``count`` at a slow two new terms per round).
    """
    topic = normalise(topic)
    examples = [t for t in dedupe(normalise(e) for e in examples) if t]
    result = GeneratedList(topic=topic, wanted=count)
    keys = {term_key(t) for t in examples}
    rng = random.Random(seed)
    limit = max_rounds if max_rounds is not None else max(8, count // 2 + patience)
    idle = 0
    last_new = 0
    started = time.perf_counter()
    while len(result.terms) < count and result.rounds < limit and idle < patience:
        round_started = time.perf_counter()
        pool = examples + result.terms
        # a handful of known terms: enough to set the style, few enough that every round starts
        # somewhere else in the topic
        shown = rng.sample(pool, min(len(pool), 6))
        style = round_style(mode, len(pool), last_new)
        text = _ask(llama, style, topic, shown, seed=seed + result.rounds, max_tokens=max_tokens, temperature=temperature)
        result.rounds += 1
        new: list[str] = []
        for term in parse_terms(text, topic):
            if term_key(term) not in keys and len(result.terms) < count:
                keys.add(term_key(term))
                result.terms.append(term)
                new.append(term)
        last_new = len(new)
        idle = 0 if new else idle + 1
        if on_round:
            on_round(RoundReport(result.rounds, style, new, len(result.terms), time.perf_counter() - round_started))
    result.seconds = time.perf_counter() - started
    result.stopped = "enough" if result.complete else "no progress" if idle >= patience else "round limit"
    return result
