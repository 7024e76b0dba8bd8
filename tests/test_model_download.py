"""Hugging Face model references against a local HTTP server standing in for
the hub: it answers like the hub (a redirect carrying X-Linked-Size / X-Linked-Etag, then the
body from a "CDN" path), and can tear the body (short, or a chunked body that stops)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from convfarm import model_files
from convfarm.model_files import ModelNotFound, parse_hf_reference, resolve_model
from convfarm.settings import get_settings
from tests.conftest import start_worker, wait_for

BODY = b"GGUF" + bytes(range(256)) * 4000  # ~1 MB
SHA = hashlib.sha256(BODY).hexdigest()


class Hub:
    def __init__(self) -> None:
        self.mode = "ok"
        self.paths: list[str] = []
        self.downloads = 0


def make_handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _redirect(self) -> None:
            self.send_response(302)
            self.send_header("Location", "/cdn/blob")
            self.send_header("X-Linked-Size", str(len(BODY)))
            self.send_header("X-Linked-Etag", f'"{SHA}"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _bare(self, body: bytes | None) -> None:  # a plain mirror: no size, no hash, body until close
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if body is not None:
                hub.downloads += 1
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            hub.paths.append(self.path)
            if hub.mode == "bare":
                self._bare(None)
                return
            self._redirect()

        def do_GET(self) -> None:
            if hub.mode == "bare":
                self._bare(BODY)
                return
            if not self.path.startswith("/cdn/"):
                hub.paths.append(self.path)
                self._redirect()
                return
            hub.downloads += 1
            body = BODY if hub.mode != "wrong-sha" else BODY[:-1] + b"X"
            if hub.mode == "chunked-torn":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                part = body[: len(body) // 3]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.flush()
                self.close_connection = True  # no terminating chunk: IncompleteRead
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if hub.mode == "short":
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    state = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("CONVFARM_HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("CONVFARM_MODEL_CACHE", str(tmp_path / "cache"))
    get_settings.cache_clear()
    try:
        yield state
    finally:
        server.shutdown()
        get_settings.cache_clear()


def leftovers(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


@pytest.mark.fast
def test_download_is_verified_cached_and_pinned(hub: Hub, tmp_path: Path) -> None:
    path = resolve_model("owner/repo@v1.2:sub/model.gguf")
    assert path.read_bytes() == BODY
    assert path == (tmp_path / "cache" / "owner--repo" / "v1.2" / "sub" / "model.gguf").resolve()
    assert "/owner/repo/resolve/v1.2/sub/model.gguf" in hub.paths  # the pinned revision, not main
    assert resolve_model("owner/repo@v1.2:sub/model.gguf") == path and hub.downloads == 1  # cached
    resolve_model("owner/repo:model.gguf")
    assert "/owner/repo/resolve/main/model.gguf" in hub.paths


@pytest.mark.fast
@pytest.mark.parametrize("mode", ["short", "chunked-torn", "wrong-sha"])
def test_a_bad_download_is_an_error_and_leaves_nothing(hub: Hub, tmp_path: Path, mode: str) -> None:
    hub.mode = mode
    with pytest.raises(ModelNotFound) as info:
        resolve_model("owner/repo:model.gguf")
    assert "\n" not in str(info.value)
    assert leftovers(tmp_path) == [], "a partial or wrong file was kept"
    hub.mode = "ok"  # the next try downloads it whole
    assert resolve_model("owner/repo:model.gguf").read_bytes() == BODY


def test_a_download_that_cannot_be_checked_is_refused_unless_allowed(hub: Hub, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    hub.mode = "bare"  # a mirror that states neither size nor sha256
    with pytest.raises(ModelNotFound, match=r"neither the file's size nor its sha256.*CONVFARM_ALLOW_UNVERIFIED_DOWNLOADS"):
        resolve_model("owner/repo:model.gguf")
    assert hub.downloads == 0 and leftovers(tmp_path) == []
    monkeypatch.setenv("CONVFARM_ALLOW_UNVERIFIED_DOWNLOADS", "1")  # the user's opt-in
    get_settings.cache_clear()
    with caplog.at_level("WARNING", logger="convfarm"):
        assert resolve_model("owner/repo:model.gguf").read_bytes() == BODY
    assert "unchecked" in caplog.text  # kept, but not silently


@pytest.mark.parametrize("ref", ["owner/repo:../../etc/evil.gguf", "owner/repo:sub/../../x.gguf",
                                 "owner/..:x.gguf", "owner/repo:/abs/x.gguf", "owner/repo:a//b.gguf"])
@pytest.mark.fast
def test_a_reference_that_leaves_the_cache_is_refused(hub: Hub, ref: str) -> None:
    with pytest.raises(ModelNotFound):
        parse_hf_reference(ref) or resolve_model(ref)
    assert hub.downloads == 0


@pytest.mark.fast
def test_concurrent_resolves_download_once(hub: Hub) -> None:
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model("owner/repo:model.gguf"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4 and len(set(results)) == 1 and hub.downloads == 1


def test_a_worker_never_downloads_inside_a_task(hub: Hub) -> None:
    model_files.forbid_downloads()
    try:
        with pytest.raises(ModelNotFound, match="CONVFARM_MODELS"):
            resolve_model("owner/repo:model.gguf")
        assert hub.downloads == 0
    finally:
        model_files._downloads["allowed"] = True


def test_a_worker_downloads_its_models_before_taking_tasks(hub: Hub, tmp_path: Path, redis_url: str) -> None:
    import os

    from tests.conftest import farm_env

    env = farm_env(redis_url, tmp_path / "out", CONVFARM_MODELS="owner/repo:model.gguf",
                   CONVFARM_HF_ENDPOINT=os.environ["CONVFARM_HF_ENDPOINT"], CONVFARM_MODEL_CACHE=str(tmp_path / "cache"))
    worker = start_worker(env, tmp_path / "logs", "prefetch", queue="convfarm.gen.prefetch-test")
    try:
        wait_for(lambda: "model ready" in worker.text() and " ready." in worker.text(), 120,
                 "the worker's model download at start-up, then the worker")
        assert (tmp_path / "cache" / "owner--repo" / "main" / "model.gguf").read_bytes() == BODY
        assert worker.text().index("model ready") < worker.text().index(" ready.")  # before it consumes
    finally:
        worker.stop()
