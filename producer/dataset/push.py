"""``producer push``: a finished run's card, plots, manifest and shards uploaded to the Hub.

What is uploaded is decided here, without a network (:func:`upload_plan`): ``README.md``,
``manifest.json``, the card's ``plots/*.png`` and the sealed shards, each under the same
relative path as in the run directory, so the card's ``data_files`` patterns match on the Hub
as they do locally. Nothing else goes: no exports, no hidden files of a collector, no logs.
The upload itself is one commit with ``huggingface_hub`` (the ``hub`` extra); the token is
the library's business (``HF_TOKEN``, or the saved login of ``hf auth login``, which older
releases spell ``huggingface-cli login``) and never passes through convfarm's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convfarm.rundir.layout import KINDS, MANIFEST, OPEN, SEALING, shard_files
from convfarm.rundir.reader import read_manifest
from producer.dataset.card import CARD, card_is_current
from producer.dataset.plots import PLOTS, PLOTS_DIR

HUB_HINT = "pip install 'convfarm[hub]'"


class PushRefused(ValueError):
    """The run directory is not ready to publish (one line, for the CLI)."""


@dataclass(frozen=True)
class Upload:
    local: Path
    path_in_repo: str


def check_publishable(run_dir: Path) -> dict[str, Any]:
    """The manifest of a run that is over, whose shards are all sealed and listed; else :class:`PushRefused`."""
    manifest = read_manifest(run_dir)
    if not manifest:
        raise PushRefused(f"{run_dir}: no {MANIFEST}; only a run directory a collector or `producer filter` wrote "
                          "can be pushed")
    status = manifest.get("status")
    forever = (manifest.get("forever") or {}).get("enabled", False)
    # a forever run never completes: it ends when it is cancelled, and what it wrote is its data
    if status != "complete" and not (status == "cancelled" and forever):
        raise PushRefused(f"{run_dir}: the run is {status or 'of unknown status'}, not complete; wait for it "
                          "(`producer status`), or push a `producer filter` copy of what it wrote")
    unsealed = sorted(p.name for p in run_dir.iterdir() if OPEN.match(p.name) or SEALING.match(p.name))
    if unsealed:
        raise PushRefused(f"{run_dir}: a collector is still writing ({unsealed[0]}); wait until every shard is sealed")
    listed = {entry.get("file") for entry in manifest.get("shards") or []}
    on_disk = {p.name for kind in KINDS for p in shard_files(run_dir, kind)}
    if listed != on_disk:
        odd = sorted((listed - on_disk) | (on_disk - listed))
        raise PushRefused(f"{run_dir}: the shards on disk and those in {MANIFEST} differ ({', '.join(map(str, odd[:3]))}); "
                          "the directory was changed after the run")
    current = card_is_current(run_dir)
    if current is None:
        raise PushRefused(f"{run_dir}: no dataset card; write it first with `producer card {run_dir}`")
    if not current:
        raise PushRefused(f"{run_dir}: the card was written for an older {MANIFEST}; write it again with "
                          f"`producer card {run_dir}`")
    return manifest


def upload_plan(run_dir: Path) -> list[Upload]:
    """Every file to upload and where it goes in the dataset repository (the run directory's own layout)."""
    check_publishable(run_dir)
    files = [run_dir / CARD, run_dir / MANIFEST]
    files += [p for name, *_ in PLOTS if (p := run_dir / PLOTS_DIR / name).is_file()]
    files += [p for kind in KINDS for p in shard_files(run_dir, kind)]
    return [Upload(path, path.relative_to(run_dir).as_posix()) for path in files]


class HubError(RuntimeError):
    """The Hub refused or could not be reached (one line, for the CLI; never the token)."""


def hub_token() -> str | None:
    """The token ``huggingface_hub`` will use (``HF_TOKEN``, else its login), or :class:`PushRefused` without the library."""
    try:
        from huggingface_hub import get_token
    except ImportError:
        raise PushRefused(f"producer push needs huggingface_hub, which is not installed: {HUB_HINT}") from None
    return get_token()


def scrub(message: str, token: str | None) -> str:
    return message.replace(token, "***") if token else message


def push(run_dir: Path, repo: str, *, private: bool) -> str:
    """Upload the plan as one commit to the dataset repository ``repo``; returns its URL.

    Not exercised by the tests (no Hub is reachable from where they run): :func:`upload_plan`
    and every refusal before the first request are.
    """
    plan = upload_plan(run_dir)
    token = hub_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    from huggingface_hub import CommitOperationAdd, HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=u.path_in_repo, path_or_fileobj=str(u.local)) for u in plan]
        commit = api.create_commit(repo, operations=operations, repo_type="dataset",
                                   commit_message=f"convfarm: {run_dir.name} ({len(plan)} files)")
    except Exception as exc:  # noqa: BLE001 - the hub raises its HTTP client's errors, whose classes change by version
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HubError(scrub(f"upload to {repo} failed: {first}", token)) from None
    return str(getattr(commit, "repo_url", None) or f"https://huggingface.co/datasets/{repo}")
