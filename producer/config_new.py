"""``producer config new``: a run config for a topic, from a template and a word list.

What the seed guide does by hand ("transfer them into the words array ... adjust our prompt to
say '...between a student and a **physics** teacher...'"):

* the template (default: ``examples/example.json``) gives the prompt, the exclude list, the
  model and any other settings;
* the topic goes into the prompt: at a ``{topic}`` placeholder if the template has one, else in
  front of the first "teacher" ("a teacher" -> "a physics teacher", "an astronomy teacher");
* the topic is also the config's ``topic``, which the relevance judge asks about;
* the words replace the template's words.

The result is validated with :func:`convfarm.config.parse_config` before anything is written,
and an existing file is only replaced with ``force=True``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convfarm.config import ConfigError, RunConfig, parse_config, word_problem
from convfarm.rundir.files import atomic_write
from producer.words.clean import normalise

# The project's example config (examples/example.json, the seed's example with a prompt that
# opens with the word, which small models follow far better); a test keeps the two in step.
DEFAULT_TEMPLATE: dict[str, Any] = {
    "name": "example",
    "model": "smollm2-135m",
    "prompt_lines": [
        'We end this document with a conversation between a student and a teacher, where the teacher conveys the '
        'meaning of "{word}"',
        'STUDENT: What does "{word}" mean?',
        "TEACHER:",
    ],
    "words": ["bridge"],
    "exclude": ["relig", r"\bsex", "gender", "politic", r"\bkill"],  # word starts: "skills" is not "kill"
}

# "a teacher" / "the teacher": the first mention is where "a physics teacher" reads naturally
_TEACHER = re.compile(r"\b(?P<article>an?|the)\s+(?P<role>teacher|tutor|professor|instructor|expert)\b", re.IGNORECASE)
_FIELD_ORDER = ("name", "model", "topic", "prompt_lines", "words", "exclude")


@dataclass(frozen=True)
class NewConfig:
    config: RunConfig
    data: dict[str, Any]  # what is written: the template's fields, not every default
    warnings: list[str]


def load_template(path: Path | None) -> dict[str, Any]:
    if path is None:
        return json.loads(json.dumps(DEFAULT_TEMPLATE))  # a copy the caller may change
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such template") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the template ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # json's parser recurses once per nesting level
        raise ConfigError(f"{path}: invalid JSON in the template: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the template must be a JSON object (a config)")
    if not isinstance(data.get("prompt_lines"), list) or not all(isinstance(x, str) for x in data["prompt_lines"]):
        raise ConfigError(f"{path}: field 'prompt_lines' must be a list of strings")
    return data


def with_topic(prompt_lines: list[str], topic: str) -> list[str]:
    """The prompt with ``topic`` put in; raises :class:`ConfigError` if there is nowhere to put it."""
    if any("{topic}" in line for line in prompt_lines):
        return [line.replace("{topic}", topic) for line in prompt_lines]
    lines = list(prompt_lines)
    for i, line in enumerate(lines):
        match = _TEACHER.search(line)
        if match:
            article = match["article"]
            if article.lower() != "the":
                # "a teacher" -> "an astronomy teacher": the article follows the topic's sound
                article = ("an" if topic[:1].lower() in "aeiou" else "a")
                article = article.capitalize() if match["article"][0].isupper() else article
            lines[i] = f"{line[:match.start()]}{article} {topic} {match['role']}{line[match.end():]}"
            return lines
    raise ConfigError("template: the prompt has no '{topic}' placeholder and no 'a teacher' to put the topic in front of; "
                      "add {topic} to a prompt line")


def build_config(name: str, topic: str, words: list[str], template: dict[str, Any] | None = None, *,
                 model: str | None = None, source: str = "config") -> NewConfig:
    """The validated config; raises :class:`ConfigError` (one line) if it would not load."""
    topic = normalise(topic)
    if not topic:
        raise ConfigError("--topic is blank")
    if "{" in topic or "}" in topic:
        raise ConfigError(f"--topic {topic!r} contains a brace")
    data = dict(template if template is not None else load_template(None))
    data["name"] = name
    if model:
        data["model"] = model
    data["prompt_lines"] = with_topic(list(data.get("prompt_lines") or []), topic)
    data["topic"] = topic  # what the relevance judge asks about (docs/design.md "Relevance judge")
    # a brace would break str.format in the prompt: such a term cannot be used, but it should not
    # cost the user the rest of a 300-term glossary either
    unusable = [w for w in words if w.strip() and word_problem(w)]
    data["words"] = [w for w in words if w not in unusable]
    warnings = [f"words: dropped {len(unusable)} unusable ({', '.join(f'{w!r} {word_problem(w)}' for w in unusable[:5])})"
                ] if unusable else []
    if not data["words"]:
        raise ConfigError(f"{source}: no usable words (all {len(unusable)} are unusable: braces or line breaks)"
                          if unusable else f"{source}: no words")
    config, more = parse_config(data, source=source)
    data["words"] = list(config.words)  # duplicates and blanks dropped, as parse_config reported
    ordered = {key: data[key] for key in _FIELD_ORDER if key in data}
    ordered.update({key: value for key, value in data.items() if key not in ordered})
    return NewConfig(config, ordered, warnings + more)


def write_config(new: NewConfig, out: Path, *, force: bool = False) -> None:
    """Write atomically; an existing file is replaced only with ``force``."""
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a directory; give a file name with --out")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; use --force to replace it")
    atomic_write(out, json.dumps(new.data, indent="\t", ensure_ascii=False) + "\n")  # a reader never sees half a config
