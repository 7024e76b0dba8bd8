"""``producer``: the user's side of convfarm (one module per group of commands).

| module | commands |
|---|---|
| ``farm`` | ``enqueue``, ``run`` |
| ``runs`` | ``status``, ``runs``, ``cancel``, ``dlq`` |
| ``rules`` | ``try``, ``filter`` |
| ``show`` | ``show`` |
| ``export`` | ``export`` |
| ``dataset`` | ``card``, ``push`` |
| ``words`` | ``words glossary``, ``words generate``, ``config new`` |

Each registers its commands on the apps of :mod:`producer.cli.app` with ``@app.command``;
shared options live in :mod:`producer.cli.options`, output and errors in
:mod:`producer.cli.console`.
"""

from __future__ import annotations

import importlib
import os
import sys

from producer.cli.app import app, config_app, words_app

# imported for their @app.command registrations, in the order `producer --help` lists them
for _module in ("farm", "rules", "show", "export", "dataset", "runs", "words"):
    importlib.import_module(f"producer.cli.{_module}")

app.add_typer(words_app)
app.add_typer(config_app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # the reader of our stdout stopped (`producer export --out - | head -1`): that is its choice,
        # not an error; point stdout at /dev/null so the interpreter's final flush is quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


__all__ = ["app", "main"]
