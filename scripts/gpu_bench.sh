#!/usr/bin/env bash
# The whole GPU bench in one call on a GPU machine: `farm bench` for SD1.5 512 px and SDXL
# 1024 px (its default on a GPU), every mode, under one time limit. Where Ray and diffusers
# are missing (a machine that cannot download), it installs the wheels in .whl/ (pip
# download'ed beforehand for that machine's Python) into /tmp/site.
#
#   OUT=/some/folder scripts/gpu_bench.sh [LIMIT_S] [-- extra farm bench flags]
#   e.g. scripts/gpu_bench.sh 560 -- --arch sd15      (one architecture)
set -uo pipefail
out=${OUT:?set OUT to the folder the results go to}
limit=${1:-570}
shift $(( $# < 1 ? $# : 1 ))
[ "${1:-}" = "--" ] && shift
if ! python3 -c 'import ray, diffusers' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
# TORCH_LOGS=recompiles: a shape that compiles again says which guard failed
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 TORCH_LOGS=${TORCH_LOGS:-recompiles}
root=/tmp/farm-bench  # full-size checkpoints (GBs) stay on the machine, never in $OUT
start=$(date +%s)
timeout -k 30 "$limit" python3 -m farm bench --root "$root" --out "$out" "$@" 2>&1 | tee "$out/bench.log"
echo "the bench took $(( $(date +%s) - start )) s" | tee -a "$out/bench.log"
# the farm's workers log to Ray's files, not to the bench's output: keep those that say what a
# worker compiled, loaded or failed (the last MB of each), for a run cut short by its limit
mkdir -p "$out/ray-logs"
for f in $(grep -l "farm\.\(models\|worker\|engine\)" /tmp/ray/session_*/logs/worker-*.err 2>/dev/null); do
  tail -c 1000000 "$f" > "$out/ray-logs/$(basename "$(dirname "$(dirname "$f")")")-$(basename "$f")"
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
