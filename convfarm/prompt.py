"""How a prompt sets up the conversation: preamble, opening turns, the open line, the speakers.

A prompt such as ::

    We end this document with a conversation between a student and a teacher, ...
    STUDENT: What does "bridge" mean?
    TEACHER:

has a preamble, complete turns that open the conversation, and an open last line that the
model's first generated line continues. The expected speakers come from the config, else
from these lines, else from the preamble ("between a student and a teacher"): a run once
took "TASK:" for the teacher because any second speaker was accepted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from convfarm.messages import Turn
from convfarm.rules import normalise_text, parse_speaker_line, speaker_key

# "between a student and a teacher": how a prompt usually names its second speaker
_BETWEEN = re.compile(r"\bbetween\s+(?:an?\s+|the\s+)?([A-Za-z][\w-]*)\s+and\s+(?:an?\s+|the\s+)?([A-Za-z][\w-]*)",
                      re.IGNORECASE)


def styled_like(name: str, model: str) -> str:
    """``teacher`` styled like ``STUDENT`` -> ``TEACHER``."""
    if model.isupper():
        return name.upper()
    if model[:1].isupper():
        return name[:1].upper() + name[1:].lower()
    return name.lower()


@dataclass(frozen=True)
class PromptSetup:
    """How a prompt sets up the conversation.

    ``turns`` are complete speaker lines at the end of the prompt (they open the
    conversation); ``opening`` is the open last line the model continues (``TEACHER:``);
    ``preamble`` is the rest (for chat mode's instruction); ``speakers`` the expected pair.
    """

    preamble: str
    turns: tuple[Turn, ...] = ()
    opening: Turn | None = None
    speakers: tuple[str, ...] | None = None

    @property
    def transcript_lines(self) -> list[str]:
        """The prompt's conversation lines, as a chat-mode answer starts."""
        lines = [f"{t.speaker}: {t.text}" for t in self.turns]
        if self.opening is not None:
            lines.append(f"{self.opening.speaker}:{' ' + self.opening.text if self.opening.text else ''}")
        return lines


def read_prompt(prompt: str, configured: Sequence[str] | None = None) -> PromptSetup:
    """Split a prompt into preamble, the conversation's opening turns and the open line.

    Expected speakers: the configured pair; else the speakers of the prompt's lines; else
    the opener plus the other party of "between a student and a teacher" in the preamble;
    else only the opener (the first new speaker then introduces themselves).
    """
    lines = prompt.split("\n")
    wanted = {speaker_key(s) for s in configured} if configured else None

    def as_turn(line: str) -> Turn | None:
        turn = parse_speaker_line(line)
        if turn is None or (wanted is not None and speaker_key(turn.speaker) not in wanted):
            return None
        return turn

    opening = as_turn(lines[-1]) if lines else None
    body = lines[:-1] if opening is not None else lines
    turns: list[Turn] = []
    names: list[str] = [opening.speaker] if opening else []
    while body:
        turn = as_turn(body[-1])
        if turn is None or not turn.text.strip():
            break
        if speaker_key(turn.speaker) not in {speaker_key(n) for n in names}:
            if len(names) >= 2:
                break  # a third name: that line is preamble ("Topic: ..."), not conversation
            names.append(turn.speaker)
        turns.insert(0, Turn(speaker=turn.speaker, text=normalise_text(turn.text)))
        body.pop()
    if opening is not None:
        opening = Turn(speaker=opening.speaker, text=opening.text.strip())
    preamble = "\n".join(body).strip()
    if configured:
        speakers: tuple[str, ...] | None = tuple(configured)
    else:
        ordered = list(dict.fromkeys(t.speaker for t in turns)) + ([opening.speaker] if opening else [])
        speakers = tuple(dict.fromkeys(ordered)) or None
        if speakers and len(speakers) == 1:
            speakers = _second_from_preamble(preamble, speakers[0]) or speakers
    return PromptSetup(preamble=preamble, turns=tuple(turns), opening=opening, speakers=speakers)


def _second_from_preamble(preamble: str, first: str) -> tuple[str, str] | None:
    for match in _BETWEEN.finditer(preamble):
        a, b = match.group(1), match.group(2)
        if speaker_key(a) == speaker_key(first) and speaker_key(b) != speaker_key(first):
            return first, styled_like(b, first)
        if speaker_key(b) == speaker_key(first) and speaker_key(a) != speaker_key(first):
            return styled_like(a, first), first
    return None
