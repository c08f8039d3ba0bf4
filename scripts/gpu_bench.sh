#!/usr/bin/env bash
# The whole GPU bench in one call on a GPU machine. Where Ray and diffusers are missing (a
# machine that cannot download), it installs the wheels in .whl/ (pip download'ed
# beforehand for that machine's Python) into /tmp/site. Then it runs `farm bench` for SD1.5 512 px and
# SDXL 1024 px, each under its own time limit, so that one architecture that runs long
# still leaves the other's JSON, PNG and log in $OUT.
#
#   OUT=/some/folder scripts/gpu_bench.sh [SD15_LIMIT_S [SDXL_LIMIT_S]] [-- extra farm bench flags]
#   (a limit of 0 skips that architecture)
set -uo pipefail
out=${OUT:?set OUT to the folder the results go to}
sd15_limit=${1:-290}
sdxl_limit=${2:-270}
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift
if ! python3 -c 'import ray, diffusers' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
root=/tmp/farm-bench  # full-size checkpoints (GBs) stay on the machine, never in $OUT
start=$(date +%s)
[ "$sd15_limit" -gt 0 ] && timeout -k 30 "$sd15_limit" python3 -m farm bench --arch sd15 --jobs 192 --buckets 1,8,16,32 --root "$root" --out "$out" "$@" \
  2>&1 | tee "$out/bench-sd15.log"
echo "sd15 took $(( $(date +%s) - start )) s" | tee -a "$out/bench-sd15.log"
start=$(date +%s)
[ "$sdxl_limit" -gt 0 ] && timeout -k 30 "$sdxl_limit" python3 -m farm bench --arch sdxl --jobs 48 --checkpoints 2 --naive-jobs 6 --raw-jobs 16 \
  --buckets 1,4,8 --root "$root" --out "$out" "$@" 2>&1 | tee "$out/bench-sdxl.log"
echo "sdxl took $(( $(date +%s) - start )) s" | tee -a "$out/bench-sdxl.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
