"""llama.cpp's backends: a build that links them in is left alone; the images' module builds are
loaded from llama_cpp's lib directory (convfarm/engine/backends.py, docs/design.md "Models")."""

from __future__ import annotations

from pathlib import Path

import pytest

from convfarm.engine import backends

pytestmark = pytest.mark.fast


def registered() -> int:
    import ctypes

    import llama_cpp  # noqa: F401  (loads libllama.so and, through it, libggml)

    ggml = ctypes.CDLL(str(backends._mapped_libggml()))
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    return int(ggml.ggml_backend_reg_count())


def test_a_build_that_links_its_backends_in_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_loaded", [])
    before = registered()
    assert before >= 1  # the CPU backend, registered by libggml itself (the tests' pip-built wheel)
    # a module of a directory it must not load from: a linked-in build never looks there
    (tmp_path / "libggml-cpu-haswell.so").write_bytes(b"not a shared library")
    assert backends.load_backend_modules(tmp_path) == before == registered()


def test_it_finds_the_libggml_that_libllama_loaded() -> None:
    """A wheel holds copies (libggml.so, libggml.so.0, ...): the one mapped by soname is the registry."""
    import llama_cpp  # noqa: F401  (loads libllama.so and, through it, libggml)

    mapped = backends._mapped_libggml()
    assert mapped is not None and mapped.name.startswith("libggml.so")
    assert mapped.parent == backends.llama_lib_dir()
