"""The actors that never render (the dispatcher, the output writer, the event hub) and the
cluster handle load without torch or diffusers: each farm start, and each restart of the
dispatcher, would otherwise pay seconds of imports. A fresh interpreter tells what a module
really pulls in."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers")


def test_the_non_rendering_actors_import_no_torch():
    code = ("import sys; import actors.dispatcher, actors.output_writer, actors.event_hub, actors.cluster, "
            "farm.scheduler.jobs, farm.workflow.prepare; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"imported: {proc.stdout.strip()}"


def test_a_gpu_worker_module_loads_torch_only_in_its_actor():
    proc = subprocess.run([sys.executable, "-c", "import sys, actors.gpu_worker; print('torch' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
