"""`farm bench` on the CPU with a tiny checkpoint: every mode (raw engine per batch size,
naive through the farm, the farm with pipelined workers over two checkpoints) runs, and the
JSON and PNG say what was measured. A subprocess: the bench starts its own Ray."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from farm.models.attention import xformers_problem

ROOT = Path(__file__).resolve().parents[2]  # the repository


def test_bench_runs_every_mode_on_the_cpu(tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The compiled path as on a GPU (the compile processes, raw mode and the farm's worker
    # compile the UNet and the VAE decoder), with aot_eager: dynamo traces, no code is
    # generated (inductor takes minutes on two cores; tests/models/test_compiled.py holds
    # inductor's images to eager's). Two architectures in one call, as on a GPU: one compile
    # process each, then one farm per mode for both.
    proc = subprocess.run(
        [sys.executable, "-m", "farm", "bench", "--arch", "tiny-sd15", "--arch", "tiny-sdxl", "--jobs", "16",
         "--naive-jobs", "2", "--raw-jobs", "2", "--buckets", "1,2", "--checkpoints", "2", "--steps", "2",
         "--compile-backend", "aot_eager", "--root", str(tmp_path / "bench"), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    [report_path] = list(out.glob("bench-*.json"))
    report = json.loads(report_path.read_text())
    assert [r["arch"] for r in report["results"]] == ["tiny-sd15", "tiny-sdxl"]
    # raw mode ran in the compile processes: no raw phase of its own
    assert list(report["phases_s"]) == ["compile_and_start", "naive", "farm"]
    assert 0 < sum(report["phases_s"].values()) <= report["seconds"]
    workers = []
    for result in report["results"]:
        family = result["arch"].removeprefix("tiny-")
        # raw first (the compile process measured it after its first batch, the largest
        # batch first: the graph compiled for it serves the smaller ones), then naive (its
        # farm started during the compiles), then the farm
        assert [m["mode"] for m in result["modes"]] == ["raw_b2", "raw_b1", "naive", "farm"]
        assert result["raw"]["measured_in"] == "compile process" and "raw" not in result["precompile"]
        assert result["best_batch"] in (1, 2)
        # the farm's batch sizer allows 2 (its cap for a 64 px image, under the largest bucket)
        assert result["farm_batch"] == 2
        raw_same = next(m for m in result["modes"] if m["mode"] == "raw_b2")
        assert result["farm_vs_raw_same_batch"] == farm_mode(result)["images_per_s"] / raw_same["images_per_s"]
        for mode in result["modes"]:
            assert mode["images_per_s"] > 0 and mode["jobs"] >= 2
        # the compile process compiled the UNet on random weights at the largest batch (as
        # `--warm` does), then ran that batch on the first checkpoint on the same stage
        pre = result["precompile"]
        assert pre["batch"] == 2 and pre["compile"][f"unet:{family}"]["fallback"] is None, pre
        assert list(pre["warmed"]) == [f"{result['arch']} 2x8x8"], pre
        assert pre["compile"][f"unet:{family}"]["checkpoints"] == [result["checkpoints"][0]], pre
        assert pre["compile"][f"unet:{family}"]["weight_copies"] == 1, pre
        assert pre["compile"][f"unet:{family}"]["fused_qkv_layers"] > 0, pre  # the default lever
        # and another process compiled the VAE decoder alone, for the batch's decode call and
        # for a single image (a dimension of size 1 is a graph of its own)
        vae = result["precompile_vae"]
        assert vae["rows"] == 2 and vae["compile"][f"vae:{family}"]["fallback"] is None, vae
        assert sorted(vae["seconds_by_rows"]) == ["1", "2"] and vae["compile"][f"vae:{family}"]["calls"] == 2, vae
        assert result["raw"]["first_batch"] == 2
        farm = farm_mode(result)
        assert farm["jobs"] == 16 and farm["latency_p50_s"] <= farm["latency_p99_s"]
        assert farm["batch"] == result["farm_batch"]
        # the steady state: from the first job finished to the last one started, within the
        # run (16 jobs: at least 8 batches, so the last is handed out well after the first
        # one's files are written)
        start, end = farm["steady_window_s"]
        assert 0 <= start < end <= farm["seconds"]
        [worker] = result["farm"]["farm_workers"]
        assert worker["pipeline_depth"] == 2
        # what may idle the GPU, listed for the run: 16 jobs in batches of 2 are 8 sampler loops
        [idle] = result["farm"]["idle_causes"].values()
        assert idle["sampler_loops"] >= 8 and isinstance(idle["gc_pauses"], list), idle
        assert all(gap >= 0.05 for _, gap in idle["sampling_gaps"]), idle
        # compiled, not fallen back to eager: every UNet and VAE decoder, raw and farm
        for compiled in (result["raw"]["compile"], worker["compile"]):
            assert all(entry["fallback"] is None for entry in compiled.values()), compiled
            assert compiled[f"unet:{family}"]["fused_qkv_layers"] > 0, compiled
        # one compiled UNet and one compiled VAE decoder (stages) for both checkpoints of the
        # architecture, fed each one's weights
        for stage in (worker["compile"][f"unet:{family}"], worker["compile"][f"vae:{family}"]):
            assert stage["checkpoints"] == sorted(result["checkpoints"]) and stage["weight_copies"] >= 1
        assert {load["checkpoint"] for load in worker["loads"]} >= set(result["checkpoints"])
        assert len(result["checkpoints"]) == 2
        # a budget of one checkpoint: each switch evicts the other to host RAM, and back
        switch = result["switch"]
        assert switch["store"]["loads"] == 2 and switch["pinned"]["loads"] == 6, switch
        workers.append(worker["worker_id"])
    # both architectures' farm modes ran on one farm (one worker: a farm per mode, not per arch)
    assert len(set(workers)) == 1
    # which compiled, when it started, the very shape each compile process warmed (so that
    # inductor's disk cache serves it), not the shape of whichever job came first
    warm_up = report["results"][-1]["farm"]["farm_workers"][0]["warm_up"]
    assert sorted(warm_up["shapes"]) == ["tiny-sd15 2x8x8", "tiny-sdxl 2x8x8"], warm_up
    # and each VAE decoder, as the VAE compile process did: the batch's rows first, then one
    assert sorted(warm_up["decoders"]) == ["tiny-sd15 2x8x8", "tiny-sdxl 2x8x8"], warm_up
    assert report["fused_qkv"] is True
    assert "fell back to eager" not in proc.stdout
    # the PNG of utilisation over time (matplotlib is a test dependency: the plot runs here)
    assert report["plot"] == report_path.with_suffix(".png").name and (out / report["plot"]).stat().st_size > 0
    assert "best batch" in proc.stdout and "farm:" in proc.stdout
    # whether xformers could run here (not a dependency: usually why not), as the probe says
    assert report["attention"] == {"backend": "sdpa",
                                   "xformers": xformers_problem(torch.device("cpu"), torch.float16) or "usable"}


def farm_mode(result: dict) -> dict:
    return next(m for m in result["modes"] if m["mode"] == "farm")


def test_raw_mode_without_compiling_runs_in_the_bench_process(tmp_path):
    """--no-compile starts no compile process: raw mode, and the switch timings, run in the
    bench's own process, in a phase of their own."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "farm", "bench", "--arch", "tiny-sd15", "--modes", "raw", "--no-compile",
         "--raw-jobs", "2", "--buckets", "1,2", "--checkpoints", "2", "--steps", "2",
         "--root", str(tmp_path / "bench"), "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "compiling" not in proc.stdout
    [report_path] = list(out.glob("bench-*.json"))
    report = json.loads(report_path.read_text())
    assert list(report["phases_s"]) == ["compile_and_start", "raw"]
    [result] = report["results"]
    assert [m["mode"] for m in result["modes"]] == ["raw_b2", "raw_b1"]
    assert result["raw"]["measured_in"] == "bench process" and result["raw"]["compile"] == {}
    assert result["best_batch"] in (1, 2) and result["switch"]["store"]["loads"] == 2


def test_bench_refuses_a_bad_mode(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "farm", "bench", "--modes", "raw,fast", "--root", str(tmp_path)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "'fast' is not one of raw, naive, farm" in proc.stderr


def test_bench_stopped_by_sigterm_keeps_what_it_measured(tmp_path):
    """A device call's time limit ends the bench with SIGTERM (`timeout` in
    scripts/gpu_bench.sh), often while a farm mode runs on Ray, whose ray.init installs a
    handler of its own: the modes measured before must be in the JSON, not lost."""
    out = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm", "bench", "--arch", "tiny-sd15", "--modes", "naive,farm", "--naive-jobs", "2",
         "--jobs", "2000", "--steps", "8", "--no-compile", "--root", str(tmp_path / "bench"), "--out", str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "farm: the farm is up" in line:  # Ray runs; the farm mode's jobs are being measured
                proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                break
        rest, _ = proc.communicate(timeout=120)
        ended_s = time.monotonic() - signalled
    finally:
        proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped by signal" in output and "Traceback" not in output
    # the results thread, mid-call when main shuts Ray down, ends quietly (no error line)
    assert "waiting for results failed" not in output
    # inside scripts/gpu_bench.sh's grace (timeout -k 30): the busy farm is not stopped
    # politely, Ray's shutdown ends it
    assert ended_s < 30, f"{ended_s:.0f} s from SIGTERM to exit"
    [report_path] = list(out.glob("bench-*.json"))
    report = json.loads(report_path.read_text())
    assert report["stopped"] == f"signal {int(signal.SIGTERM)}"
    [result] = report["results"]
    assert [m["mode"] for m in result["modes"]] == ["naive"]  # the farm mode never finished
    assert result["modes"][0]["jobs"] == 2 and result["modes"][0]["images_per_s"] > 0
    assert list(report["phases_s"]) == ["compile_and_start", "naive"]
    # every line says when it was printed: where a stopped run's time went
    assert all(line.startswith("[") for line in output.splitlines() if " naive: " in line or "farm is up" in line)
