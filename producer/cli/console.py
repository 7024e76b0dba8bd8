"""Output and errors shared by every ``producer`` command.

One red ``error:`` line and an exit status (2 bad input, 1 environment) — never a traceback.
``soft_wrap``: text is not wrapped at 80 columns when stdout is a pipe, so run ids and
paths stay whole for scripts that read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from convfarm.config import ConfigError, RunConfig, load_config
from convfarm.settings import mask_credentials
from producer.terminal import visible


class _UserTextConsole(Console):
    """A Console whose every string is passed through :func:`visible` before markup is read."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(visible(text), **kwargs)


# emoji=False: ":bear:" in a word or a log line is user data, not an emoji code
console = _UserTextConsole(soft_wrap=True, emoji=False)
err = _UserTextConsole(stderr=True, soft_wrap=True, emoji=False)


def fail(message: str, code: int = 2) -> NoReturn:
    # every error line passes here: a broker URL in it never shows its password
    err.print(f"[bold red]error:[/] {escape(mask_credentials(message))}", highlight=False)
    raise typer.Exit(code)


def read_config(path: Path, **overrides: object) -> RunConfig:
    """Load a config or fail with its one-line error; warnings (dropped words) go to stderr."""
    try:
        config, warnings = load_config(path, **overrides)
    except ConfigError as exc:
        fail(str(exc))
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {escape(mask_credentials(warning))}", highlight=False)
    return config


def connect() -> redis.Redis:
    """A Redis client that answers, or exit 1 naming the URL."""
    from convfarm.broker import redis_client
    from convfarm.settings import get_settings

    client = redis_client()
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        settings = get_settings()
        fail(f"cannot reach Redis at {settings.run_state_url} ({exc}); {broker_advice()}", code=1)
    return client


def broker_advice() -> str:
    """What to do about an unreachable Redis: set the URL, or (already set) check it and the server."""
    import os

    for name in ("CONVFARM_BROKER_URL", "REDIS_URL"):
        if os.environ.get(name):
            return f"{name} is set to that URL: is the server up and the URL (host, port, password) right?"
    return "start Redis, or set CONVFARM_BROKER_URL to the farm's"


def run_dir_or_fail(path: Path) -> Path:
    """``path`` if it is a run directory, else exit 2 saying why."""
    from convfarm.rundir.reader import NotARun, check_run_dir

    try:
        return check_run_dir(path)
    except NotARun as exc:
        fail(str(exc))


def print_whole(table: Table) -> None:
    """Print ``table`` at its natural width, even past the terminal's: its cells (run ids) are
    meant to be copied, so none is cut with an ellipsis (a wide line wraps in the terminal)."""
    width = Measurement.get(console, console.options.update_width(100_000), table).maximum
    previous = console.width
    console.width = max(previous, width)
    try:
        console.print(table)
    finally:
        console.width = previous
