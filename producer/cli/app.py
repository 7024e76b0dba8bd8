"""The ``producer`` Typer apps; every command module registers itself here with ``@app.command``.

Exit status: 0 success, 1 a failure of the environment (Redis unreachable, a worker
died), 2 bad input (config, arguments) — with one line naming the problem and nothing
enqueued.
"""

from __future__ import annotations

import typer
from typer.core import TyperOption


def _no_value_for_flags() -> None:
    """Help shows a flag as ``--force``, not ``--force <bool>``: a flag takes no value, and Typer
    (0.2x's help renderer) labels it with its Python type. Skipped where Typer lacks the hook."""
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:
        return

    def display_type_rich(self: TyperOption, ctx: object) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_no_value_for_flags()

app = typer.Typer(
    name="producer",
    help="Generate conversation training data with a farm of llama.cpp workers.\n\n"
    "Quick start on one machine:  producer run examples/example.json",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
words_app = typer.Typer(name="words", help="Word lists for a topic: from a glossary page or from the model.",
                        no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
config_app = typer.Typer(name="config", help="Write run configs.", no_args_is_help=True, add_completion=False,
                         pretty_exceptions_enable=False)
