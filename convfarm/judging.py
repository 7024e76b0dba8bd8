"""A run's config as the rules see it: the prompt's setup and the rules' context.

Used by the engine (the streaming judge), the collector (its re-check), ``producer try`` and
``producer filter``: one place that turns a config and a word into what the rules need.
"""

from __future__ import annotations

import regex

from convfarm.config import RunConfig
from convfarm.messages import Turn
from convfarm.prompt import PromptSetup, read_prompt
from convfarm.rules import EXCLUDED, REASONS, RULES_VERSION, RuleContext, rule_verdicts


def prompt_setup(config: RunConfig, word: str) -> PromptSetup:
    """The prompt's opening turns, open line and expected speakers (config ``speakers`` win)."""
    return read_prompt(config.prompt_for(word), config.speakers)


def rule_context(config: RunConfig, word: str, setup: PromptSetup | None = None) -> RuleContext:
    """The rules' view of a run; pass ``setup`` when the caller has read the prompt already."""
    return RuleContext(
        word=word,
        exclude=config.exclude_regex,
        speakers=(setup or prompt_setup(config, word)).speakers,
        min_turns=config.min_turns,
        max_turns=config.max_turns,
        max_line_chars=config.max_line_chars,
    )


def rules_stamp(config: RunConfig) -> str:
    """Which rules judged a record: the rules' version and the config they read (its hash).

    Equal stamps mean the same checks with the same context, so the verdict would be the same:
    the collector re-checks a record only when its stamp is not the collector's own.
    """
    return f"{RULES_VERSION}:{config.config_hash()[:16]}"


def explain_rejection(config: RunConfig, word: str, turns: list[Turn], reason: str) -> str:
    """Which rule dropped a conversation, where, and for ``excluded`` which pattern matched what
    (docs/rules-and-modes.md, "producer filter"): the detail of a rejection made on re-checking."""
    failed = next((v for v in rule_verdicts(rule_context(config, word), turns) if v.reason == reason), None)
    where = f" in turn {failed.turn + 1}" if failed is not None and failed.turn is not None else ""
    if reason == EXCLUDED and failed is not None and failed.turn is not None:
        line = turns[failed.turn]
        for pattern in config.exclude:  # each pattern alone: the joined one cannot say which matched
            compiled = regex.compile(pattern, regex.IGNORECASE | regex.VERSION0)
            try:
                match = compiled.search(line.text, timeout=0.25) or compiled.search(line.speaker, timeout=0.25)
            except TimeoutError:
                return f"rule {reason}{where}: pattern {pattern!r} took too long on the line"
            if match:
                return f"rule {reason}{where}: pattern {pattern!r} matches {match.group(0)!r}"
    return f"rule {reason}{where}: {REASONS.get(reason, reason)}"
