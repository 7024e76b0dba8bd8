"""The ``producer`` Typer apps; every command module registers itself here with ``@app.command``.

Exit status: 0 success, 1 a failure of the environment (Redis unreachable, a worker
died), 2 bad input (config, arguments) — with one line naming the problem and nothing
enqueued.
"""

from __future__ import annotations

import typer

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
