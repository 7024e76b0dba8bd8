"""Load llama.cpp's backends when they are loadable modules (a ``GGML_BACKEND_DL`` build).

The worker images build llama-cpp-python the way portable llama.cpp is built
(``GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=ON``, docs/design.md, "Models"): the CPU
backend is one module per instruction set (``libggml-cpu-haswell.so``, ``-skylakex``,
``-sapphirerapids``, ...) and the best one for the CPU it runs on is chosen at run time, so
one image runs at native speed on every x86-64 host instead of at the speed of the oldest.

llama.cpp finds such modules only beside the *executable* and in the working directory
(``ggml_backend_load_all``), which for Python is ``/usr/bin``, not the package. The images
install the modules beside ``libllama.so`` in llama_cpp's ``lib`` directory; here we load them
from there, once, before the first model. A build that links its backends in (the usual
``pip install llama-cpp-python``) has them registered already and is left alone.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

log = logging.getLogger(__name__)
_loaded: list[int] = []  # the backends registered by load_backend_modules (once per process)


def llama_lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).resolve().parent / "lib"


def load_backend_modules(lib_dir: Path | None = None) -> int:
    """Register the backend modules of ``lib_dir`` (llama_cpp's by default) when none is registered.

    Returns how many backends are registered afterwards; 0 means llama.cpp has no backend
    and will refuse to load a model (its own error then names the problem).
    """
    if _loaded:
        return _loaded[0]
    lib_dir = lib_dir or llama_lib_dir()
    libggml = _mapped_libggml() or next((p for p in (lib_dir / "libggml.so",) if p.exists()), None)
    if libggml is None:  # not a shared-library build of this layout: nothing to do
        return 0
    ggml = ctypes.CDLL(str(libggml))
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    count = int(ggml.ggml_backend_reg_count())
    if count == 0:  # GGML_BACKEND_DL: nothing is linked in
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path(str(lib_dir).encode())
        count = int(ggml.ggml_backend_reg_count())
        log.info("convfarm: loaded %d llama.cpp backend module(s) from %s", count, lib_dir)
    _loaded.append(count)
    return count


def _mapped_libggml() -> Path | None:
    """The libggml that libllama.so loaded (by its soname, ``libggml.so.0``). A wheel holds
    copies, not links (libggml.so, libggml.so.0, ...): opening another copy would make a
    second, empty backend registry."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    mapped = {Path(fields[5]) for fields in (line.split(maxsplit=5) for line in maps.splitlines()) if len(fields) == 6}
    by_soname = sorted(p for p in mapped if p.name.startswith("libggml.so."))
    plain = sorted(p for p in mapped if p.name == "libggml.so")
    return (by_soname or plain or [None])[0]
