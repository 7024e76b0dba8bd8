"""AMX CPUs: the model is loaded without llama.cpp's extra buffers (its AMX matrix product crashes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from convfarm.engine.cpu_buffers import cpu_has_amx, model_defaults, use_extra_buffers

pytestmark = pytest.mark.fast

SAPPHIRE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_int8 amx_tile\n"
ZEN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"


@pytest.mark.parametrize(("cpuinfo", "has_amx"), [(SAPPHIRE, True), (ZEN, False), ("", False)])
def test_amx_is_read_from_the_cpu_flags(tmp_path: Path, cpuinfo: str, has_amx: bool) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_amx(path) is has_amx


def test_no_cpuinfo_means_no_amx(tmp_path: Path) -> None:
    assert cpu_has_amx(tmp_path / "missing") is False


@pytest.mark.parametrize(("setting", "has_amx", "expected"), [
    ("auto", True, False),   # the crash: off
    ("auto", False, True),   # llama.cpp's default elsewhere
    ("on", True, True),
    ("off", False, False),
])
def test_the_setting_and_the_cpu_decide(setting: str, has_amx: bool, expected: bool) -> None:
    assert use_extra_buffers(setting, has_amx=has_amx) is expected


def test_the_swap_applies_inside_the_block_only() -> None:
    import llama_cpp.llama_cpp as bindings

    assert bindings.llama_model_default_params().use_extra_bufts is True
    with model_defaults(use_extra_bufts=False):
        assert bindings.llama_model_default_params().use_extra_bufts is False
    assert bindings.llama_model_default_params().use_extra_bufts is True
