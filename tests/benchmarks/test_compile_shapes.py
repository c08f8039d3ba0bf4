"""benchmarks/compile_shapes.py on the CPU: a tiny UNet compiled (aot_eager) and called at
each batch size in the order given, one timing per call, in the JSON it writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_compile_shapes_times_each_size_in_order(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/compile_shapes.py", "--arch", "tiny-sd15", "--jobs", "1,3",
                           "--backend", "aot_eager", "--out", str(tmp_path)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "compile-shapes-tiny-sd15.json").read_text())
    assert [(c["jobs"], c["rows"]) for c in report["calls"]] == [(1, 2), (3, 6)]
    assert all(c["first_call_s"] > 0 for c in report["calls"]) and report["fallback"] is None
    assert "tiny-sd15 3 job(s), 6 rows: first call" in proc.stdout
