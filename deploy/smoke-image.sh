#!/usr/bin/env bash
# Build deploy/Dockerfile.cpu without a Docker engine and run a farm from the image.
#
#   sudo deploy/smoke-image.sh              # stand-in base (once), build, farm, checks
#   sudo deploy/smoke-image.sh --rebuild-base     # make the stand-in base again first
#   sudo deploy/smoke-image.sh --no-build         # farm and checks on the image built last time
#
# Needs root and the Debian packages buildah, debootstrap and redis-server; no Docker daemon
# and no container registry. What it does (deploy/README.md, "Proving the CPU image"):
#
# 1. The stand-in for FROM python:3.11-slim-bookworm: `debootstrap --variant=minbase bookworm`
#    plus Debian's Python 3.11 with venv and `python` on PATH, committed with buildah under the
#    name the Dockerfile uses (docker.io/library/python:3.11-slim-bookworm), so the Dockerfile is
#    built unchanged and nothing is pulled (--pull-never).
# 2. `buildah bud` of deploy/Dockerfile.cpu (the llama-cpp-python compile takes most of it).
#    The host's CA bundle and a pip.conf naming it are mounted read-only into the RUN steps
#    (they are not in the image): this network's egress proxy re-signs TLS with a CA that a
#    bare Debian root lacks. Set SMOKE_BUILD_CA= to mount nothing.
# 3. A farm from the image: a private redis-server on the host (port SMOKE_REDIS_PORT), the
#    image's collector and generation worker with `buildah run` (the command lines of the
#    compose services collector and worker-cpu), `producer enqueue --wait` of the example config
#    from the image, output in a host directory mounted at /data/runs.
# 4. Checks: the run completes with accepted conversations in that directory; every farm process
#    runs as the image's user (uid 10001); the image has no compiler; it prints size and times.
# 5. Speed: the same farm again with the host's own llama-cpp-python (SMOKE_NATIVE_PYTHON, default
#    the repository's .venv, built for this CPU), same command lines and words, and the image's
#    completion tok/s against it ("image / native tok/s", target >= 0.9x: the image's CPU
#    variants, chosen at run time, are meant to match a native build).
#
# State (buildah storage, the debootstrap root, output, logs) lives under SMOKE_STATE
# (default /var/tmp/convfarm-image), never in the repository. tests/test_deploy.py keeps the
# names and command lines below in step with the Dockerfile, compose file and docs.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${SMOKE_STATE:-/var/tmp/convfarm-image}
DOCKERFILE=deploy/Dockerfile.cpu
# The Dockerfile's `ARG PYTHON_VERSION` default and `FROM python:${PYTHON_VERSION}-slim-bookworm`
PYTHON_VERSION=3.11
BASE_IMAGE=docker.io/library/python:${PYTHON_VERSION}-slim-bookworm
SUITE=bookworm
MIRROR=${SMOKE_MIRROR:-http://deb.debian.org/debian}
BASE_PACKAGES=python${PYTHON_VERSION},python${PYTHON_VERSION}-venv,python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata
IMAGE=${SMOKE_IMAGE:-localhost/convfarm/worker-cpu:smoke}
IMAGE_UID=10001  # useradd --uid in the Dockerfile's runtime stage
REDIS_PORT=${SMOKE_REDIS_PORT:-0}  # 0: a free port, picked at start
BUILD_CA=${SMOKE_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}
RUN_TIMEOUT=${SMOKE_RUN_TIMEOUT:-900}
# the host's own build, for image vs native tok/s on the same words (step 5); absent: not compared
NATIVE_PYTHON=${SMOKE_NATIVE_PYTHON:-$REPO/.venv/bin/python}

# The farm, as docker-compose.yml runs it (services collector, worker-cpu, producer)
COLLECTOR_CMD=(celery -A workers worker --collector -Q convfarm.collector -P solo -c 1 -n collector@%h --loglevel INFO)
WORKER_CMD=(celery -A workers worker -Q convfarm.gen.smollm2-135m -n cpu-smollm2-135m@%h --loglevel INFO)
ENQUEUE_CMD=(producer enqueue /app/examples/example.json --wait)

main() {
REBUILD_BASE=0
BUILD=1
for arg in "$@"; do
  case $arg in
    --rebuild-base) REBUILD_BASE=1 ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (buildah with chroot isolation, debootstrap)"
for tool in buildah debootstrap redis-server redis-cli; do
  command -v "$tool" >/dev/null || fail "$tool not found (apt-get install buildah debootstrap redis-server)"
done

mkdir -p "$STATE"
LOGS=$STATE/logs
OUT=$STATE/out
rm -rf "$LOGS" "$OUT" && mkdir -p "$LOGS" "$OUT"
bah() { buildah --root "$STATE/storage" --runroot "$STATE/run" --storage-driver vfs "$@"; }
export BUILDAH_ISOLATION=chroot

# --- 1. the stand-in base image --------------------------------------------------------------
base_seconds=0
if [ "$REBUILD_BASE" = 1 ] || ! bah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  say "stand-in for $BASE_IMAGE: debootstrap --variant=minbase $SUITE"
  started=$SECONDS
  root=$STATE/base-root
  rm -rf "$root"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$root" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1 \
    || { tail -20 "$LOGS/debootstrap.log"; fail "debootstrap"; }
  # the shape of the official image: no package lists or caches, the three Debian suites in
  # deb822 form, the resolver and hostname provided by the runtime
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/etc/apt/sources.list
  rm -f "$root"/etc/resolv.conf "$root"/etc/hostname
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  full_version=$(chroot "$root" python3 -c 'import platform; print(platform.python_version())')
  ctr=$(bah from scratch)
  mnt=$(bah mount "$ctr")
  tar -C "$root" -cf - . | tar -C "$mnt" -xpf -
  bah umount "$ctr" >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --env PYTHON_VERSION="$full_version" --cmd python3 \
    --label org.opencontainers.image.description="convfarm smoke test: debootstrap stand-in for python:$PYTHON_VERSION-slim-$SUITE" \
    "$ctr"
  bah commit --quiet --rm --format docker "$ctr" "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
  base_seconds=$((SECONDS - started))
  echo "stand-in base committed in ${base_seconds}s (Python $full_version)"
else
  echo "stand-in base $BASE_IMAGE already in $STATE/storage (--rebuild-base to make it again)"
fi

# --- 2. the image ----------------------------------------------------------------------------
build_seconds=-
cached=-
if [ "$BUILD" = 1 ]; then
say "buildah bud -f $DOCKERFILE -t $IMAGE"
mounts=()
if [ -n "$BUILD_CA" ]; then
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$STATE/build-pip.conf"
  mounts=(-v "$BUILD_CA:/etc/ssl/certs/ca-certificates.crt:ro" -v "$STATE/build-pip.conf:/etc/pip.conf:ro")
fi
started=$SECONDS
(cd "$REPO" && bah bud --isolation chroot --layers --pull-never --format docker "${mounts[@]}" \
  -f "$DOCKERFILE" -t "$IMAGE" .) >"$LOGS/build.log" 2>&1 || { tail -40 "$LOGS/build.log"; fail "buildah bud"; }
build_seconds=$((SECONDS - started))
cached=$(grep -c -- '--> Using cache' "$LOGS/build.log" || true)
echo "built in ${build_seconds}s ($cached steps from the layer cache; log: $LOGS/build.log)"
else
  bah inspect --type image "$IMAGE" >/dev/null 2>&1 || fail "--no-build: no image $IMAGE yet"
  echo "--no-build: using $IMAGE as built last time"
fi
size=$(bah images --format '{{.Size}}' "$IMAGE" | head -1)
base_size=$(bah images --format '{{.Size}}' "$BASE_IMAGE" | head -1)
echo "image size $size (stand-in base $base_size)"

# --- containers, the farm and its cleanup ----------------------------------------------------
# working containers by name: container() runs in $(...), a subshell, so a list it appended
# to would never reach cleanup; each is a full vfs copy of the image (~1 GB) left on disk
CONTAINER_NAMES=(check collector worker producer)
pids=()
redis_pid=
cleanup() {
  set +e
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || continue
    for child in $(descendants "$pid"); do kill -TERM "$child" 2>/dev/null; done
    kill -TERM "$pid" 2>/dev/null
  done
  sleep 1
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  for name in "${CONTAINER_NAMES[@]}"; do bah rm "convfarm-smoke-$name" >/dev/null 2>&1; done
}
trap cleanup EXIT
descendants() {  # every process below $1, deepest last
  local child
  for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done
}
container() {  # container NAME: a working container of the image (in_image adds the environment and mount)
  bah from --pull-never --name "convfarm-smoke-$1" "$IMAGE"
}
in_image() {  # in_image NAME CMD...: run CMD in a working container as the image's USER
  local ctr=$1; shift
  bah run --isolation chroot --network host -v "$OUT:/data/runs" \
    -e CONVFARM_BROKER_URL="redis://127.0.0.1:$REDIS_PORT/0" -e CONVFARM_SEAL_IDLE_SECONDS=5 "$ctr" -- "$@"
}
for name in "${CONTAINER_NAMES[@]}"; do bah rm "convfarm-smoke-$name" >/dev/null 2>&1 || true; done

say "image checks: user, compiler, llama_cpp"
check=$(container check)
user=$(in_image "$check" id -u)
[ "$user" = "$IMAGE_UID" ] || fail "the image runs as uid $user, not $IMAGE_UID"
echo "runs as uid $user ($(in_image "$check" id -un))"
compilers=$(in_image "$check" sh -c 'for c in cc gcc g++ c++ cpp clang cmake make ld as nvcc; do command -v "$c"; done; ls /usr/lib/gcc/*/*/cc1* 2>/dev/null; true')
[ -z "$compilers" ] || fail "compiler in the image: $compilers"
echo "no compiler (cc gcc g++ c++ cpp clang cmake make ld as nvcc, cc1)"
in_image "$check" python -c 'import llama_cpp, convfarm.model_files as m; print("llama_cpp", llama_cpp.__version__, "model", m.resolve_model("smollm2-135m"))'

if [ "$REDIS_PORT" = 0 ]; then
  REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
say "farm: redis-server :$REDIS_PORT, collector and worker from the image"
chown "$IMAGE_UID:$IMAGE_UID" "$OUT"
redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && fail "port $REDIS_PORT is taken (SMOKE_REDIS_PORT=...)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$LOGS/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.2; done
collector=$(container collector)
in_image "$collector" "${COLLECTOR_CMD[@]}" >"$LOGS/collector.log" 2>&1 &
pids+=($!)
worker=$(container worker)
in_image "$worker" "${WORKER_CMD[@]}" >"$LOGS/worker.log" 2>&1 &
pids+=($!)

say "${ENQUEUE_CMD[*]} (from the image)"
started=$SECONDS
producer=$(container producer)
in_image "$producer" timeout "$RUN_TIMEOUT" "${ENQUEUE_CMD[@]}" >"$LOGS/enqueue.log" 2>&1 \
  || { tail -30 "$LOGS/enqueue.log" "$LOGS/worker.log" "$LOGS/collector.log"; fail "the run did not complete in ${RUN_TIMEOUT}s"; }
tail -12 "$LOGS/enqueue.log"
run_seconds=$((SECONDS - started))

say "checks"
# the farm's processes, seen from the host: every one runs as the image's user
farm_procs=$(for pid in "${pids[@]}"; do descendants "$pid"; done)
[ -n "$farm_procs" ] || fail "no farm processes under buildah run"
# (the buildah processes that started them run as root on the host; they are not in the image)
ps -o pid=,uid=,user=,comm=,args= -p "$(echo "$farm_procs" | paste -sd,)" \
  | awk '$4 != "buildah" && $4 != "bash" && /celery/' | cut -c1-160 | tee "$LOGS/ps.txt"
awk -v uid="$IMAGE_UID" '$2 != uid {bad=1} END {exit bad}' "$LOGS/ps.txt" || fail "a farm process is not uid $IMAGE_UID"
# one line per farm command at least: the worker's pool follows CONVFARM_BATCH_SIZE (threads
# in its one process by default; a prefork child too with CONVFARM_BATCH_SIZE=1)
celery_procs=$(awk '$4 == "celery" || $4 ~ /^python/' "$LOGS/ps.txt")
queue_of() { while [ $# -gt 1 ] && [ "$1" != -Q ]; do shift; done; echo "$2"; }
grep -q -- "-Q $(queue_of "${COLLECTOR_CMD[@]}") " <<<"$celery_procs" || fail "no collector process from the image"
grep -q -- "-Q $(queue_of "${WORKER_CMD[@]}") " <<<"$celery_procs" || fail "no generation worker process from the image"
manifest=$(find "$OUT" -name manifest.json | head -1)
[ -n "$manifest" ] || fail "no manifest.json under $OUT"
run_dir=$(dirname "$manifest")
python3 - "$run_dir" "$IMAGE_UID" <<'EOF'
import json, pathlib, sys
run_dir, uid = pathlib.Path(sys.argv[1]), int(sys.argv[2])
manifest = json.loads((run_dir / "manifest.json").read_text())
records = [json.loads(line) for shard in sorted(run_dir.glob("conversations-*.jsonl"))
           for line in shard.read_text().splitlines() if line]
accepted = [r for r in records if r["status"] == "accepted"]
owners = {p.stat().st_uid for p in run_dir.iterdir()}
print(f"{run_dir}: {len(accepted)} accepted conversations, manifest words "
      f"{manifest.get('words')}, files owned by uid {sorted(owners)}")
print("e.g.", json.dumps(accepted[0]["turns"])[:200] if accepted else "-")
assert accepted, "no accepted conversation"
assert owners == {uid}, f"output files owned by {owners}"
EOF
grep -q "accepted" "$LOGS/enqueue.log" || fail "enqueue --wait printed no summary"

say "stop the farm (celery control shutdown)"
in_image "$producer" celery -A workers control shutdown >"$LOGS/shutdown.log" 2>&1 || true
for pid in "${pids[@]}"; do
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
done

# --- 5. the same farm, native: the image's speed against the host's own build -----------------
# The same command lines, config and words, with the host's llama-cpp-python (built for this CPU)
# in place of the image's, after the image's farm has stopped (one farm at a time on the cores),
# on a fresh Redis database (the run id is the config's: database 0 holds it as complete).
ratio=-
if [ -x "$NATIVE_PYTHON" ]; then
  say "native farm: $NATIVE_PYTHON, the same command lines and words"
  native_out=$STATE/native-out
  rm -rf "$native_out" && mkdir -p "$native_out"
  native_env=(env -u REDIS_URL CONVFARM_BROKER_URL="redis://127.0.0.1:$REDIS_PORT/1" CONVFARM_OUT_DIR="$native_out"
              CONVFARM_SEAL_IDLE_SECONDS=5)
  native_bin=$(dirname "$NATIVE_PYTHON")
  (cd "$REPO" && "${native_env[@]}" "$native_bin/${COLLECTOR_CMD[0]}" "${COLLECTOR_CMD[@]:1}") >"$LOGS/native-collector.log" 2>&1 &
  pids+=($!)
  (cd "$REPO" && "${native_env[@]}" "$native_bin/${WORKER_CMD[0]}" "${WORKER_CMD[@]:1}") >"$LOGS/native-worker.log" 2>&1 &
  pids+=($!)
  (cd "$REPO" && "${native_env[@]}" timeout "$RUN_TIMEOUT" "$native_bin/${ENQUEUE_CMD[0]}" "${ENQUEUE_CMD[1]}" \
     "examples/$(basename "${ENQUEUE_CMD[2]}")" "${ENQUEUE_CMD[@]:3}") >"$LOGS/native-enqueue.log" 2>&1 \
    || { tail -30 "$LOGS/native-enqueue.log" "$LOGS/native-worker.log"; fail "the native run did not complete"; }
  (cd "$REPO" && "${native_env[@]}" "$native_bin/celery" -A workers control shutdown) >>"$LOGS/shutdown.log" 2>&1 || true
  say "image vs native on the same words (target: image >= 0.9x native tok/s)"
  ratio=$(python3 - "$run_dir" "$(dirname "$(find "$native_out" -name manifest.json | head -1)")" <<'EOF2'
import json, pathlib, sys
from datetime import datetime

def figures(run_dir):
    records = [json.loads(line) for pattern in ("conversations-*.jsonl", "rejected-*.jsonl")
               for shard in sorted(pathlib.Path(run_dir).glob(pattern)) for line in shard.read_text().splitlines() if line]
    ends = [datetime.fromisoformat(r["created_at"]).timestamp() for r in records]
    span = max(ends) - min(e - r["generation_seconds"] for e, r in zip(ends, records))
    tokens = sum(r["tokens"]["completion"] for r in records)
    accepted = sum(r["status"] == "accepted" for r in records)
    seconds = sum(r["generation_seconds"] for r in records)
    return tokens / span, seconds / max(accepted, 1), accepted, len(records), tokens, span

image, native = figures(sys.argv[1]), figures(sys.argv[2])
for name, (tok_s, per_accepted, accepted, records, tokens, span) in (("image", image), ("native", native)):
    print(f"{name:6s}: {tok_s:6.1f} tok/s ({tokens} completion tokens in {span:.1f}s), "
          f"{per_accepted:.2f} generation s per accepted conversation, {accepted}/{records} accepted", file=sys.stderr)
print(f"{image[0] / native[0]:.2f}")
EOF2
)
  echo "image / native tok/s: ${ratio}x (target >= 0.9x)"
else
  echo "no native build to compare with (SMOKE_NATIVE_PYTHON=$NATIVE_PYTHON is not there): image vs native not measured"
fi

say "PASS"
printf 'image %s: %s; stand-in base %s\n' "$IMAGE" "$size" "$base_size"
printf 'build %ss (%s cached steps)%s; run of %s: %ss; image / native tok/s: %sx\n' "$build_seconds" "$cached" \
  "$([ "$base_seconds" = 0 ] || echo ", stand-in base ${base_seconds}s")" "${ENQUEUE_CMD[2]}" "$run_seconds" "$ratio"
}

main "$@"
