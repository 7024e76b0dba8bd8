"""``producer card`` and ``producer push``: a run directory as a Hugging Face dataset."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Annotated

import typer

from producer.cli.app import app
from producer.cli.console import console, fail, run_dir_or_fail
from producer.cli.options import RunDirArg

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
RepoOpt = Annotated[str | None, typer.Option("--repo", help="The dataset repository OWNER/NAME (card: used in the "
                                             "loading example).", show_default=False)]


def card_hint(run: str, out_dir: str | Path | None) -> str:
    """Where a finished run's dataset card goes and the command that writes it (the end of
    ``producer run`` and ``enqueue --wait``). A relative ``out_dir`` is under the collector's
    CONVFARM_OUT_DIR (docs/design.md, "Run directory"): shown as a path here when this machine
    has the run, else named on the collector's host."""
    from convfarm.rundir.layout import MANIFEST
    from convfarm.settings import get_settings

    root = Path(out_dir or "")
    run_dir = (root if root.is_absolute() else get_settings().out_dir.resolve() / root) / run
    if (run_dir / MANIFEST).is_file():
        where, command = str(run_dir / "README.md"), f"producer card {shlex.quote(str(run_dir))}"
    else:
        remote = root / run if root.is_absolute() else Path("$CONVFARM_OUT_DIR") / root / run
        where, command = f"{remote}/README.md on the collector's host", f"producer card {remote}"
    return f"dataset card: {where}; write it (and its plots) with: {command}"


def _check_repo(repo: str | None) -> None:
    if repo is not None and not REPO_ID.match(repo):
        fail(f"--repo: {repo!r} is not OWNER/NAME (letters, digits, '-', '_', '.')")


@app.command("card")
def card_command(
    run_dir: RunDirArg,
    repo: RepoOpt = None,
    language: Annotated[list[str] | None, typer.Option(
        "--language", help="The conversations' language code(s) for the card (repeatable).")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw the plots (needs matplotlib, the "
                                        "'card' extra).")] = True,
) -> None:
    """Write RUN_DIR/README.md, a Hugging Face dataset card, and its plots under RUN_DIR/plots/.

    The card's configs make `datasets.load_dataset(RUN_DIR)` load the accepted conversations
    and `load_dataset(RUN_DIR, "rejected")` the rejected ones. Run it again after the run
    changed: the card and plots are rewritten (atomically).
    """
    from producer.dataset.card import write_card
    from producer.dataset.plots import PlotsUnavailable, require_plots, write_plots
    from producer.dataset.summary import summarise

    _check_repo(repo)
    languages = language or ["en"]
    if bad := [code for code in languages if not LANGUAGE.match(code)]:
        fail(f"--language: {bad[0]!r} is not a language code such as 'en' or 'pt-BR'")
    source = run_dir_or_fail(run_dir)
    if not (source / "manifest.json").is_file():
        fail(f"{source}: no manifest.json; the card reports the manifest's counts")
    if plots:
        try:
            require_plots()
        except PlotsUnavailable as exc:
            fail(str(exc), code=1)
    from convfarm.rundir.shards import ShardCorrupt

    try:
        summary = summarise(source)
    except ShardCorrupt as exc:
        fail(str(exc))
    drawn = write_plots(summary) if plots else []
    card = write_card(summary, drawn, languages=languages, repo=repo)
    console.print(f"card: {card} ({summary.accepted} accepted, {summary.rejected} rejected); "
                  f"{len(drawn)} plot(s) in {source / 'plots'}", highlight=False, markup=False)
    console.print(f"load it: datasets.load_dataset({str(source)!r}); publish it: producer push {source} --repo OWNER/NAME",
                  highlight=False, markup=False)


@app.command("push")
def push_command(
    run_dir: RunDirArg,
    repo: Annotated[str, typer.Option("--repo", help="The dataset repository OWNER/NAME (created if missing).",
                                      show_default=False)],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files and where they go; upload nothing.")] = False,
) -> None:
    """Upload a complete run's card, plots, manifest and shards to a Hugging Face dataset repository.

    Run `producer card RUN_DIR` first. Refused (exit 2, nothing sent): a run that is not complete,
    shards still being written or not those of the manifest, a missing or stale card. The token
    comes from HF_TOKEN or `hf auth login` (never printed). Needs huggingface_hub:
    pip install 'convfarm[hub]'.
    """
    from producer.dataset.push import PushRefused, push, upload_plan

    _check_repo(repo)
    source = run_dir_or_fail(run_dir)
    try:
        plan = upload_plan(source)
    except PushRefused as exc:
        fail(str(exc))
    if dry_run:
        for upload in plan:
            console.print(f"{upload.local} -> {repo}/{upload.path_in_repo}", highlight=False, markup=False)
        console.print(f"{len(plan)} file(s); nothing uploaded (--dry-run)", highlight=False, markup=False)
        return
    from producer.dataset.push import HubError

    try:
        url = push(source, repo, private=private)
    except (PushRefused, HubError) as exc:
        fail(str(exc), code=1)
    console.print(f"pushed {len(plan)} file(s) to {url}", highlight=False, markup=False)

