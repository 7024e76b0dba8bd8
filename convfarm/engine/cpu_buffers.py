"""Whether llama.cpp may keep CPU weights in its "extra" buffer types (AMX tiles, repacked layouts).

On a CPU with AMX (Intel Sapphire Rapids and later) llama.cpp repacks quantised weights into
an AMX buffer, and its AMX matrix product then crashes the process (SIGSEGV in
``ggml_backend_amx_mul_mat``) at the first decode — seen on this project's CI machines with
the bundled model, in the plain ``Llama`` path and the batched engine alike; upstream report:
ggml-org/llama.cpp#20824, closed without a fix. A worker that dies at its first token loses
nothing (acks late) but never produces anything, so on such CPUs the model is loaded with
``use_extra_bufts = false`` (llama.cpp's ``--no-repack``): plain CPU buffers, the same
numerics as any other x86 CPU. Elsewhere the extra buffers stay on (the repacked Q4_0 layouts
are faster on AVX2). ``CONVFARM_CPU_EXTRA_BUFFERS=on|off`` overrides the detection.

llama-cpp-python's ``Llama`` has no argument for the flag; it builds its model parameters
from ``llama_model_default_params()`` inside its constructor, so :func:`model_defaults`
swaps that function for the duration of one construction, under a lock (a process loads its
model once; the lock only keeps two loads from racing on the swap).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_swap_lock = threading.Lock()
_AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False  # not Linux: no AMX detection (macOS/ARM have no AMX buffer type in ggml)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in _AMX_FLAGS)


def use_extra_buffers(setting: str, *, has_amx: bool | None = None) -> bool:
    """The ``use_extra_bufts`` a model is loaded with, for ``CONVFARM_CPU_EXTRA_BUFFERS``."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    return not (cpu_has_amx() if has_amx is None else has_amx)


@contextmanager
def model_defaults(*, use_extra_bufts: bool) -> Iterator[None]:
    """Within the block, ``Llama(...)`` loads its model with ``use_extra_bufts`` as given."""
    import llama_cpp.llama_cpp as bindings

    if use_extra_bufts:  # llama.cpp's default: nothing to swap
        yield
        return
    with _swap_lock:
        original = bindings.llama_model_default_params

        def defaults() -> object:
            params = original()
            params.use_extra_bufts = False
            return params

        bindings.llama_model_default_params = defaults
        try:
            yield
        finally:
            bindings.llama_model_default_params = original
