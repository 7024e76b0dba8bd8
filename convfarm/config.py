"""The run config: a JSON file describing what to generate (docs/design.md, "Config").

The seed's config (``name``, ``model``, ``prompt_lines``, ``words``, ``exclude``) loads
unchanged; every other field is optional with a default. Errors are turned into one line
that names the field (:class:`ConfigError`), so the CLI can print it and exit 2.

Duplicate and blank words are *dropped with a warning* (glossary-derived lists often
repeat a term in another case); everything else that is wrong is an error.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from convfarm.exclude import ExcludeError, ExcludePattern, check_exclude, compile_exclude


class ConfigError(ValueError):
    """A config problem, phrased as one line that names the field."""


# the judge methods a config may name (convfarm.judge.methods.NAMED_METHODS has one per name)
JudgeMethodName = Literal["subject-choice", "yes-no-few-shot", "yes-no-few-shot+likelihood"]


class JudgeSettings(BaseModel):
    """The relevance judge of a run (convfarm/judge/): which model scores, and the bar a record must clear."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: the generating model scores its own conversations, in the worker that made them
    model: str | None = Field(default=None, min_length=1, description="a judge model other than the generator")
    # None: every record is scored, none is rejected for its score
    min_relevance: float | None = Field(default=None, ge=0.0, le=1.0,
                                        description="records scoring below are rejected as off_topic")
    # None: the default method (convfarm/judge/methods.py, NAMED_METHODS; docs/judge.md compares them)
    method: JudgeMethodName | None = Field(default=None, description="how the judge scores")


class RunConfig(BaseModel):
    """Everything a worker needs to turn one word into one conversation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- the seed's fields -------------------------------------------------------------
    # a file name on every collector: short, portable characters (docs/design.md, "Config")
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: str = Field(min_length=1, description="path to a .gguf, a bundled name or REPO:FILE")
    prompt_lines: list[str] = Field(min_length=1)
    words: list[str] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)

    # --- generation ----------------------------------------------------------------------
    mode: Literal["completion", "chat"] = "completion"
    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.8, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0)
    repeat_penalty: float = Field(default=1.1, ge=0.0)
    seed: int = Field(default=0, ge=0, description="base seed; each task derives its own from it")
    n_ctx: int = Field(default=2048, ge=64, le=131072)  # the largest context of the models llama.cpp runs
    n_gpu_layers: int = Field(default=0, ge=-1, description="the seed's -ngl; -1 = all layers")
    n_threads: int | None = Field(default=None, ge=1, le=256)

    # --- conversation rules --------------------------------------------------------------
    speakers: list[str] | None = Field(default=None, min_length=2, max_length=2)
    min_turns: int = Field(default=2, ge=1)
    max_turns: int = Field(default=16, ge=2)
    max_line_chars: int = Field(default=600, ge=20)
    # chat mode: the user turn's instruction ({first}/{second} = the speakers), and whether the
    # answer is started with the prompt's transcript lines (tiny models need it, see docs/rules-and-modes.md)
    chat_instruction: str | None = Field(default=None, min_length=1)
    chat_prefill: bool = True
    # --- grammar-constrained decoding ---
    # "grammar": every generated line is a well-formed turn by construction (convfarm/engine/grammar.py);
    # "free": the model writes what it likes and the rules sort it out (the only behaviour before grammar decoding)
    structure: Literal["grammar", "free"] = "grammar"

    # --- relevance judge (convfarm/judge/) -----------------------------------------------------
    topic: str | None = Field(default=None, min_length=1, max_length=200,
                              description="what the conversations teach (\"physics\"); the judge asks about it")
    judge: JudgeSettings | None = None

    # --- publishing ------------------------------------------------------------------------------
    license: str | None = Field(default=None, min_length=1, max_length=100,
                                description="the dataset's license id for its card (\"cc-by-4.0\"); null = unknown")

    # --- run lifecycle ---------------------------------------------------------------------
    # bounded: every attempt in flight holds a lease and fields in Redis (docs/design.md, "Run state")
    per_word: int = Field(default=1, ge=1, le=10_000)
    max_attempts: int = Field(default=3, ge=1, le=100, description="tries per wanted conversation")
    skip_covered: bool = Field(default=False, description="seed behaviour: a word mentioned in accepted conversations "
                               "of other words counts as covered (docs/run-lifecycle.md)")

    # --- dedup at the collector (exact is always on) -----------------------------------------
    near_dup_threshold: float | None = Field(default=0.8, gt=0.0, le=1.0,
                                             description="estimated Jaccard similarity at which a conversation is a "
                                             "near duplicate; null = exact dedup only")
    # each permutation is a band row compared inside a Redis Lua script: 256 keeps one record's check
    # well under a millisecond; 1024 made one record cost millions of comparisons
    near_dup_num_perm: int = Field(default=128, ge=16, le=256, description="MinHash permutations")
    near_dup_shingle: int = Field(default=3, ge=1, le=16, description="words per shingle")

    # --- output ------------------------------------------------------------------------------
    shard_size: int = Field(default=1000, ge=1, le=1_000_000, description="records per shard file")
    compression: Literal["none", "zstd"] = "none"

    @field_validator("prompt_lines")
    @classmethod
    def _template_has_word(cls, lines: list[str]) -> list[str]:
        fields: list[str] = []
        for i, line in enumerate(lines):
            try:
                parsed = list(string.Formatter().parse(line))
            except ValueError as exc:
                raise ValueError(f"line {i} is not a valid template ({exc}); write literal braces as '{{{{' and '}}}}'") from None
            for _, field, spec, conversion in parsed:
                if field is None:
                    continue
                if field != "word" or spec or conversion:
                    raise ValueError(f"line {i} has placeholder '{{{field}}}'; only '{{word}}' is allowed "
                                     "(write literal braces as '{{' and '}}')")
                fields.append(field)
        if not fields:
            raise ValueError("no line contains the placeholder '{word}'")
        return lines

    @field_validator("model")
    @classmethod
    def _safe_model_reference(cls, model: str) -> str:
        # a Hugging Face reference whose file climbs out of the model cache is refused here, at
        # enqueue, not on a worker (convfarm/model_files.py)
        from convfarm.model_files import ModelNotFound, parse_hf_reference

        if not Path(model).exists():
            try:
                parse_hf_reference(model)
            except ModelNotFound as exc:
                raise ValueError(str(exc)) from None
        return model

    @field_validator("exclude")
    @classmethod
    def _patterns_compile(cls, patterns: list[str], info: ValidationInfo) -> list[str]:
        # validate the joined pattern the rules use and decide its safety (convfarm/exclude.py) — once,
        # where the config is read from a file: a run's stored config passed this when it was created
        try:
            if (info.context or {}).get(_STORED):
                compile_exclude(tuple(patterns))
            else:
                check_exclude(tuple(patterns))
        except ExcludeError as exc:
            raise ValueError(str(exc)) from None
        return patterns

    @field_validator("words")
    @classmethod
    def _usable_words(cls, words: list[str]) -> list[str]:
        for word in words:
            if problem := word_problem(word):
                raise ValueError(f"word {word!r} {problem}")
        return words

    @field_validator("speakers")
    @classmethod
    def _speaker_names(cls, speakers: list[str] | None) -> list[str] | None:
        if speakers is not None:
            speakers = [s.strip().rstrip(":").strip() for s in speakers]
            if any(not s for s in speakers) or speakers[0] == speakers[1]:
                raise ValueError("needs two different, non-blank names")
        return speakers

    @model_validator(mode="after")
    def _turn_limits(self) -> RunConfig:
        if self.min_turns > self.max_turns:
            raise ValueError("min_turns is larger than max_turns")
        return self

    # --- derived values --------------------------------------------------------------------
    def prompt_for(self, word: str) -> str:
        return "\n".join(line.format(word=word) for line in self.prompt_lines)

    @property
    def exclude_regex(self) -> ExcludePattern | None:
        return compile_exclude(tuple(self.exclude))

    def canonical_json(self) -> str:
        # fields added after runs existed are left out while unset, so an old config keeps its hash (and run id)
        exclude: dict[str, Any] = {name: True for name in _LATER_FIELDS if getattr(self, name) is None}
        if self.judge is not None and self.judge.method is None:  # judge.method came later than judge
            exclude["judge"] = {"method"}
        return json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


_LATER_FIELDS = ("topic", "judge", "license")
_STORED = "stored"


def stored_config(text: str | bytes) -> RunConfig:
    """A run's config as stored with the run (docs/design.md, "Config"): it passed every check when the
    run was created, including the exclude patterns' safety, which is not decided again here — a
    collector must not fail a run that enqueue accepted."""
    return RunConfig.model_validate_json(text, context={_STORED: True})


def word_problem(word: str) -> str | None:
    """Why ``word`` cannot be a run's word (the one test: config, ``config new`` and ``try``), or None."""
    if not word.strip():
        return "is blank"
    if "{" in word or "}" in word:
        return "contains a brace"  # it would break str.format in the prompt
    if "\n" in word or "\r" in word:
        return "contains a line break"  # a transcript is one turn per line
    return None


def _clean_words(words: list[Any]) -> tuple[list[Any], list[str]]:
    """Drop blank and duplicate (case-insensitive) words, keeping the first spelling."""
    kept: list[Any] = []
    seen: set[str] = set()
    dropped_blank = 0
    dropped_dupes: list[str] = []
    for word in words:
        if not isinstance(word, str):
            kept.append(word)  # let pydantic name the type error
            continue
        clean = " ".join(word.split())
        if not clean:
            dropped_blank += 1
            continue
        key = clean.casefold()
        if key in seen:
            dropped_dupes.append(clean)
            continue
        seen.add(key)
        kept.append(clean)
    warnings = []
    if dropped_blank:
        warnings.append(f"words: dropped {dropped_blank} blank entr{'y' if dropped_blank == 1 else 'ies'}")
    if dropped_dupes:
        shown = ", ".join(repr(w) for w in dropped_dupes[:5]) + (" ..." if len(dropped_dupes) > 5 else "")
        warnings.append(f"words: dropped {len(dropped_dupes)} duplicate(s): {shown}")
    return kept, warnings


def _describe(error: ValidationError) -> str:
    """One line for the first problem pydantic found, naming the field."""
    errors = error.errors()
    # a typo in a field name explains the other errors more often than not: report it first
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    where = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        field = str(first["loc"][0])
        close = difflib.get_close_matches(field, RunConfig.model_fields.keys(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown field '{field}'{hint}"
    if first["type"] == "missing":
        return f"field '{where}' is required"
    message = first["msg"].removeprefix("Value error, ")
    return f"field '{where}': {message}"


def parse_config(data: Any, *, source: str = "config", default_name: str | None = None) -> tuple[RunConfig, list[str]]:
    """Validate already-decoded JSON. Returns the config and warnings to show the user."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a JSON object")
    data = dict(data)
    if "name" not in data and default_name:
        data["name"] = re.sub(r"[^A-Za-z0-9_.-]+", "-", default_name).strip("-.") or "run"
    warnings: list[str] = []
    if isinstance(data.get("words"), list):
        data["words"], warnings = _clean_words(data["words"])
    try:
        return RunConfig.model_validate(data), warnings
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def load_config(path: str | Path, **overrides: Any) -> tuple[RunConfig, list[str]]:
    """Read and validate a config file; ``overrides`` (CLI flags) replace fields."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # json's parser recurses once per nesting level
        raise ConfigError(f"{path}: invalid JSON: nested too deeply") from None
    if isinstance(data, dict):
        data.update({k: v for k, v in overrides.items() if v is not None})
    return parse_config(data, source=str(path), default_name=path.stem)
