"""A run's config as the rules see it: the prompt's setup and the rules' context.

Used by the engine (the streaming judge), the collector (its re-check), ``producer try`` and
``producer filter``: one place that turns a config and a word into what the rules need.
"""

from __future__ import annotations

from convfarm.config import RunConfig
from convfarm.prompt import PromptSetup, read_prompt
from convfarm.rules import RuleContext


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
