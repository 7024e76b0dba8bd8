"""``producer try``: one conversation on the spot, with every rule's verdict.

The loop the seed guide recommends for tuning a prompt and the exclude list, without Redis
or a worker: load the model here, generate one conversation with exactly the code a worker
runs (streaming judge, early stop and the relevance judge's score included), and show what
each rule thinks of it.

Without ``--seed`` the seed is the one the farm would use for the word's first attempt in
this config's run, so ``try`` shows what ``producer run`` would make of that word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from convfarm.config import RunConfig
from convfarm.engine import GenerationOutcome, GenerationRequest, ResidentModel
from convfarm.engine.grammar import structure_for
from convfarm.judge.scoring import RELEVANCE
from convfarm.judging import prompt_setup, rule_context
from convfarm.messages import task_seed
from convfarm.rules import OFF_TOPIC, REASONS, Verdict, rule_verdicts
from convfarm.runstate import run_id_for


@dataclass
class TryResult:
    config: RunConfig
    word: str
    seed: int
    prompt_turns: int  # how many of the outcome's turns came from the prompt
    outcome: GenerationOutcome
    verdicts: list[Verdict]
    structure_why: str = ""  # what the grammar enforced, or why decoding was free

    @property
    def accepted(self) -> bool:
        return self.outcome.reason is None

    def to_json(self) -> dict[str, Any]:
        o = self.outcome
        return {
            "word": self.word, "seed": self.seed, "mode": self.config.mode,
            "structure": o.structure, "structure_why": self.structure_why,
            "decision": "accepted" if self.accepted else "rejected", "reason": o.reason, "detail": o.detail,
            "ended_by": o.ended_by, "turns": [t.model_dump() for t in o.turns], "prompt_turns": self.prompt_turns,
            "raw": o.raw, "tokens": {"prompt": o.prompt_tokens, "completion": o.completion_tokens},
            "seconds": round(o.seconds, 3),
            "scores": o.scores, "judge": o.judge.model_dump(mode="json") if o.judge else None,
            "judge_seconds": round(o.judge_seconds, 3),
            "rules": [{"rule": v.rule, "verdict": v.reason or "keep", "turn": v.turn} for v in self.verdicts],
        }


def try_word(config: RunConfig, word: str, seed: int | None = None, *, early_stop: bool = True) -> TryResult:
    if seed is None:
        seed = task_seed(config.seed, run_id_for(config), word, 0)
    model = ResidentModel(config.model, n_ctx=config.n_ctx, n_gpu_layers=config.n_gpu_layers, n_threads=config.n_threads)
    try:
        outcome = next(model.generate([GenerationRequest(config=config, word=word, seed=seed)], early_stop=early_stop))
        if outcome.reason is None and config.judge is None:  # a farm scores only when asked; try always shows it
            model.judge_outcome(outcome)
    finally:
        model.close()
    # judged with the turn that stopped it, so the table shows which rule objected and where
    judged = [*outcome.turns, outcome.stopped_at] if outcome.reason and outcome.stopped_at else outcome.turns
    verdicts = rule_verdicts(rule_context(config, word), judged)
    setup = prompt_setup(config, word)
    prompt_turns = 0 if config.mode == "chat" and not config.chat_prefill else len(setup.turns)
    why = structure_for(config, word, setup).why  # the same choice the engine made
    return TryResult(config, word, seed, prompt_turns, outcome, verdicts, why)


def render(result: TryResult, console: Console, *, show_raw: bool = True) -> None:
    o = result.outcome
    console.print(f"[bold]{result.word}[/]  mode {result.config.mode}  seed {result.seed}  "
                  f"{o.completion_tokens} tokens in {o.seconds:.1f}s  ended by {o.ended_by}", highlight=False)
    # which structure decoded it, and what the grammar enforced (or why there was none)
    console.print(f"structure [bold]{o.structure}[/]: {result.structure_why}", highlight=False)
    conversation = Text()
    for i, turn in enumerate(o.turns):
        conversation.append(f"{turn.speaker}: ", style="bold cyan" if i % 2 == 0 else "bold magenta")
        conversation.append(turn.text)
        if i < result.prompt_turns:
            conversation.append("  (from the prompt)", style="dim")
        conversation.append("\n")
    if o.stopped_at is not None:
        conversation.append(f"{o.stopped_at.speaker}: {o.stopped_at.text}", style="red" if o.reason else "dim")
        conversation.append("  (rejected here)" if o.reason else "  (transcript ended here, not kept)", style="dim")
    conversation.rstrip()
    shown = conversation if o.turns or o.stopped_at else Text("(no turns)", style="dim")
    # soft_wrap=False: the CLI's console does not wrap (ids stay whole in pipes), and a Panel's
    # text would then be cropped at the border; the user judges this text, so it wraps
    console.print(Panel(shown, title="conversation", title_align="left"), soft_wrap=False)
    if show_raw:
        console.print(Panel(Text(o.raw.rstrip() or "(nothing)", style="dim"), title="raw completion", title_align="left"),
                      soft_wrap=False)
    table = Table(title="rules", title_justify="left")
    table.add_column("rule")
    table.add_column("verdict")
    table.add_column("where")
    for verdict in result.verdicts:
        where = f"turn {verdict.turn + 1}" if verdict.turn is not None else ""
        shown = "[green]keep[/]" if verdict.reason is None else f"[red]{verdict.reason}[/]"
        table.add_row(verdict.rule, shown, where)
    console.print(table)
    if (score := o.scores.get(RELEVANCE)) is not None and o.judge is not None:
        bar = result.config.judge.min_relevance if result.config.judge else None
        console.print(f"relevance [bold]{score:.3f}[/] ({o.judge.method} v{o.judge.version} on {escape(o.judge.model.file)}, "
                      f"{o.judge_seconds:.1f}s; topic {escape(result.config.topic or '(none: the word alone)')}"
                      f"{f', min_relevance {bar:g}' if bar is not None else ''})", highlight=False)
    elif result.accepted or o.reason == OFF_TOPIC:
        console.print("relevance: not scored here (the config names another judge model)", highlight=False)
    if result.accepted:
        console.print(f"decision: [bold green]ACCEPTED[/] ({len(o.turns)} turns)", highlight=False)
    else:
        why = o.detail or REASONS.get(o.reason or "", "")
        console.print(f"decision: [bold red]REJECTED[/] {o.reason}: {why}", highlight=False, markup=True)
