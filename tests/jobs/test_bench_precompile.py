"""A bench compile process on its own (`python -m jobs.bench_precompile`, what `farm bench`
starts per architecture): the UNet compiled on random weights, a first batch on a made
checkpoint, and a lever it was given reaching the compiled stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from jobs.bench_precompile import RESULT_PREFIX

ROOT = Path(__file__).resolve().parents[2]


def test_no_fused_qkv_reaches_the_compile_processs_stage(tmp_path):
    """`farm bench --no-fused-qkv` passes it on to each compile process (the default, fused,
    is checked by tests/jobs/test_bench.py through the whole bench)."""
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.bench_precompile", "--arch", "tiny-sd15", "--batch", "1", "--steps", "2",
         "--backend", "aot_eager", "--root", str(tmp_path), "--no-fused-qkv"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    [line] = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    stage = json.loads(line[len(RESULT_PREFIX):])["compile"]["unet:sd15"]
    assert stage["fallback"] is None and stage["weight_copies"] == 1, stage
    assert stage["fused_qkv_layers"] == 0, stage
