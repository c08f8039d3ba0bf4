"""A sweep driver stopped by SIGTERM (what `ray job stop` sends) or SIGINT cancels its jobs
still queued in the farm and says so; the same command again resumes: what was done is not
rendered again. The driver runs as `python -m jobs.render_sweep` joining the session's
cluster, with a local --output-dir (written through the head's destination actor)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[2]
N = 10


def test_a_stopped_sweep_cancels_its_queued_jobs_and_a_rerun_resumes(ray_farm, txt2img, tmp_path):
    (tmp_path / "workflow.json").write_text(json.dumps(txt2img))
    # distinct step counts with lms (one step count per call): no batching, so most jobs
    # still wait in the queue at the signal
    (tmp_path / "sweep.json").write_text(json.dumps([{"3.seed": 900 + i, "3.steps": 3 + i, "3.sampler_name": "lms"}
                                                     for i in range(N)]))
    renders = tmp_path / "renders"
    argv = [sys.executable, "-m", "jobs.render_sweep", "workflow.json", "sweep.json", "--output-dir", str(renders),
            "--address", ray.get_runtime_context().gcs_address, "--progress-every", "0"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    driver = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        for line in driver.stderr:  # progress lines: one per finished render
            lines.append(line)
            if line.startswith(f"render_sweep: 2/{N} done") or time.monotonic() > deadline:
                break
        driver.send_signal(signal.SIGTERM)
        _, rest = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    out = "".join(lines) + rest
    assert driver.returncode == 130, out
    assert "SIGTERM: cancelled " in out and "Run the same command again to resume" in out, out
    cancelled = int(out.split("SIGTERM: cancelled ")[1].split()[0])
    assert cancelled >= 3, out  # two workers ran at most two or four of the other eight
    manifest = [json.loads(line) for line in (renders / "manifest.jsonl").read_text().splitlines()]
    done = {m["key"]: m["prompt_id"] for m in manifest if m["status"] == "success"}
    assert len(done) >= 2 and {m["status"] for m in manifest} <= {"success", "interrupted"}
    # the cancelled jobs left the farm's queue (none of this sweep is waiting there)
    interrupted = {m["prompt_id"] for m in manifest if m["status"] == "interrupted"}
    deadline = time.monotonic() + 60
    while (queued := ray_farm.cluster.call("queue_remaining")) and time.monotonic() < deadline:
        time.sleep(0.5)  # the renders that were running when the signal came finish
    assert queued == 0
    ran = {h.prompt_id for h in ray_farm.history()}
    assert len(interrupted - ran) >= cancelled  # the cancelled ones never ran

    again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    assert f"{N - len(done)} rendered now, {len(done)} done before, 0 failed" in again.stderr
    final = [json.loads(line) for line in (renders / "manifest.jsonl").read_text().splitlines()]
    assert [m["status"] for m in final] == ["success"] * N
    assert {m["key"]: m["prompt_id"] for m in final if m["key"] in done} == done  # not rendered again
    assert all(Path(m["outputs"][0]).parent == renders for m in final)
