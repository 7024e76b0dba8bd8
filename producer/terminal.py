"""Text for a terminal: what a user string may not bring to it."""

from __future__ import annotations

import re

# control characters (ESC starts a terminal escape sequence: a word, a generated line or a run's
# data could set the title, move the cursor or hide text) and the bidi overrides that reorder text
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """``text`` with every control character shown as its escape (``\\x1b``), never sent to the terminal raw.

    The one place this is decided: every string printed through ``producer.cli.console``'s consoles passes
    here, table cells included, and the data a command writes to a terminal; newlines and tabs stay.
    """
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
