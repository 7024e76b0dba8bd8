"""``producer show``: sample conversations of a run directory, wrapped, with their verdicts.

How a user judges a prompt (the guide's loop): read a few accepted conversations, and the
rejected ones with the rule that dropped them, without opening JSONL by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from convfarm.messages import Turn
from convfarm.rules import training_messages
from convfarm.rundir.reader import read_run


def sample(run_dir: Path, *, count: int, rejected: bool = False, word: str | None = None) -> list[dict[str, Any]]:
    """The first ``count`` records of one kind (shard order), of ``word`` only when given."""
    records: Iterator[dict[str, Any]] = read_run(run_dir, "rejected" if rejected else "conversations")
    if word is not None:
        records = (r for r in records if str(r.get("word", "")).casefold() == word.casefold())
    return list(islice(records, count))


def verdict(record: dict[str, Any]) -> Text:
    if record.get("status", "accepted") == "accepted":
        return Text("accepted", style="bold green")
    shown = Text(f"rejected: {record.get('reason') or '?'}", style="bold red")
    if record.get("detail"):
        shown.append(f" ({record['detail']})", style="red")
    if record.get("duplicate_of"):
        shown.append(f" duplicate of {record['duplicate_of']}", style="red")
    return shown


def render(records: list[dict[str, Any]], console: Console) -> None:
    for record in records:
        turns = record.get("turns") or []
        # the rule every record and export follows: messages end on the assistant (docs/design.md)
        answered = len(training_messages([Turn(**t) for t in turns]))
        body = Text()
        for i, turn in enumerate(turns):
            body.append(f"{turn.get('speaker', '?')}: ", style="bold cyan" if i % 2 == 0 else "bold magenta")
            body.append(str(turn.get("text", "")))
            if answered and i >= answered:
                body.append("  (unanswered: not in messages)", style="dim")
            body.append("\n")
        body.rstrip()
        head = Text(f"{record.get('word', '?')}  ", style="bold")
        head.append_text(verdict(record))
        tokens = (record.get("tokens") or {}).get("completion")
        head.append(f"  {len(turns)} turns, {tokens} tokens, ended by {record.get('ended_by') or '?'}, "
                    f"id {record.get('id', '?')}, attempt {record.get('attempt', 0)}", style="dim")
        # soft_wrap=False: the CLI's console does not wrap, and a Panel's text would be cropped
        console.print(head, soft_wrap=False)
        console.print(Panel(body if turns else Text("(no turns)", style="dim")), soft_wrap=False)
