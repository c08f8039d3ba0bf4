"""benchmarks/warm_capture.py on the CPU (aot_eager): a warmed tiny UNet, then three
batches on a made checkpoint, compiled throughout; its report counts the warm-up's two calls
per shape (the second records the CUDA graph on a GPU) and the batches' steps."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_warm_capture_runs_compiled_after_the_warm_up(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.warm_capture", "--root", str(tmp_path), "--arch",
                           "tiny-sd15", "--backend", "aot_eager", "--after-warm", "sync-gc"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    unet = json.loads(line.removeprefix("RESULT "))["unet"]
    assert unet["fallback"] is None and unet["checkpoints"] == ["tiny-sd15.safetensors"]
    # 2 warm-up calls, then 3 batches of 2 jobs x 4 steps, one UNet call (4 rows) a step
    assert unet["shapes"] == {"4x4x8x8 ctx77": {"first_call_s": unet["compile_s"], "calls": 2 + 3 * 4}}
