"""`farm bench`'s naive and farm modes: jobs through a real farm (Farm.local: Ray, the SQLite
queue, a GpuWorker per GPU, the OutputWriter), timed from submission to files on disk."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from farm.models.compiled import CompileConfig
from farm.worker.nvml import NvmlSampler, percentile
from jobs.bench_report import BenchArgs, ModeResult, say, stop_on_sigterm, summarize, workflow


def _start_farm(root: Path, tag: str, a: BenchArgs, compile_on: bool, depth: int, max_batch: int):
    from farm.client import Farm

    db = root / f"queue-{tag}.sqlite"
    if db.exists():
        db.unlink()
    farm = Farm.local(root / "models", root / "output", num_gpus=a.gpus, db=db, root=root, max_batch=max_batch,
                      compile=CompileConfig(enabled=compile_on, backend=a.compile_backend), pipeline_depth=depth,
                      worker_gpus=a.worker_gpus)
    stop_on_sigterm()  # ray.init replaced it: a time limit must still keep what was measured
    farm.wait_for_workers()
    say(f"{tag}: the farm is up ({len(farm.status().workers)} worker(s))")
    return farm


def _stop_farm(farm) -> None:
    import ray

    from actors import ACTOR_NAMESPACE, DISPATCHER_NAME

    farm.close(stop=False)
    farm.cluster.stop()
    deadline = time.time() + 30
    while time.time() < deadline:  # the next farm must not find the dying actors by name
        try:
            ray.get_actor(DISPATCHER_NAME, namespace=ACTOR_NAMESPACE)
            time.sleep(0.2)
        except ValueError:
            break
    time.sleep(1.0)


def _worker_stats(farm) -> list[dict]:
    import ray

    from actors import ACTOR_NAMESPACE

    out = []
    for status in farm.status().workers:
        try:
            stats = ray.get(ray.get_actor(status.worker_id, namespace=ACTOR_NAMESPACE).stats.remote(), timeout=30)
        except Exception as exc:  # noqa: BLE001 - a report, never a failed bench
            stats = {"error": str(exc)}
        out.append({"worker_id": status.worker_id, "gpu_name": status.gpu_name, "gpu_uuid": status.gpu_uuid,
                    "gpu_index": status.gpu_index, "node": status.node, **stats})
    return out


def _steady(nvml: NvmlSampler, results: list) -> dict:
    """ModeResult's steady_* fields from the jobs' own timings (unix seconds)."""
    finished = [r.timings.finished_at_s for r in results if r.timings.finished_at_s is not None]
    started = [r.timings.started_at_s for r in results if r.timings.started_at_s is not None]
    if not finished or not started:
        return {}
    window = (min(finished) - nvml.started_wall_s, max(started) - nvml.started_wall_s)
    if window[1] <= window[0]:
        return {}  # one batch, or too few jobs: no moment with a batch finished and another waiting
    util = nvml.summary(window)  # None without NVML (a CPU run): the window alone is reported
    return {"steady_window_s": (round(window[0], 2), round(window[1], 2)),
            "steady_util_mean": util.mean_util if util else None, "steady_util_p5": util.p5_util if util else None}


def _through_farm(farm, prepared: list, nvml: NvmlSampler, one_at_a_time: bool) -> tuple[float, list[float], list]:
    """Seconds for all, each job's latency (submit to files written), and the results."""
    latencies: list[float] = []
    results = []
    started = time.perf_counter()
    with nvml:
        if one_at_a_time:
            for p in prepared:
                t = time.perf_counter()
                result = farm.submit_prepared([p])[0].outcome(600)
                if not result.ok:
                    raise RuntimeError(f"naive job failed: {result.error}")
                latencies.append(time.perf_counter() - t)
                results.append(result)
        else:
            t = time.perf_counter()
            futures = farm.submit_prepared(prepared)
            done: dict[str, float] = {}
            for f in futures:
                f.add_done_callback(lambda fut: done.setdefault(fut.prompt_id, time.perf_counter()))
            for f in futures:
                result = f.outcome(900)
                if not result.ok:
                    raise RuntimeError(f"farm job failed: {result.error}")
                results.append(result)
            latencies = [done.get(f.prompt_id, time.perf_counter()) - t for f in futures]
    return time.perf_counter() - started, latencies, results


def bench_farm_modes(names: list[str], size: int, batch: int, a: BenchArgs, root: Path, tag: str,
                     record: Callable[[ModeResult], None], info: dict) -> None:
    """Naive and farm modes, each handed to `record` when measured; `info` gets the workers'
    stats and the farm's warm-up time as they come."""
    if "naive" in a.modes:
        farm = _start_farm(root, f"{tag}-naive", a, compile_on=False, depth=1, max_batch=1)
        try:
            warm = [farm.prepare(workflow(names[0], 200_000, size, a.steps, a.sampler))]
            _through_farm(farm, warm, NvmlSampler(), one_at_a_time=True)  # loads the checkpoint
            prepared = [farm.prepare(workflow(names[0], 210_000 + i, size, a.steps, a.sampler))
                        for i in range(a.naive_jobs)]
            nvml = NvmlSampler(period_s=0.05)
            seconds, lat, _ = _through_farm(farm, prepared, nvml, one_at_a_time=True)
            record(summarize("naive", len(prepared), seconds, 1, nvml, latency_p50_s=percentile(lat, 50),
                             latency_p99_s=percentile(lat, 99)))
            info["naive_workers"] = _worker_stats(farm)
        finally:
            _stop_farm(farm)
    if "farm" in a.modes:
        farm = _start_farm(root, f"{tag}-farm", a, compile_on=a.compile, depth=2, max_batch=batch)
        try:
            t = time.perf_counter()
            # warm-up, outside the measurement: every checkpoint loaded once, every bucket's
            # graph compiled and recorded (a farm does this once per worker)
            warm = [farm.prepare(workflow(n, 300_000 + 100 * k + i, size, a.steps, a.sampler))
                    for k, n in enumerate(names) for i in range(batch)]
            _through_farm(farm, warm, NvmlSampler(), one_at_a_time=False)
            info["farm_warmup_s"] = round(time.perf_counter() - t, 2)
            say(f"farm warm-up ({len(warm)} jobs: every checkpoint loaded, every bucket compiled) took "
                f"{info['farm_warmup_s']:.1f} s")
            prepared = [farm.prepare(workflow(names[i % len(names)], 310_000 + i, size, a.steps, a.sampler))
                        for i in range(a.jobs)]
            nvml = NvmlSampler(period_s=0.05)
            seconds, lat, done = _through_farm(farm, prepared, nvml, one_at_a_time=False)
            record(summarize("farm", len(prepared), seconds, batch, nvml, latency_p50_s=percentile(lat, 50),
                             latency_p99_s=percentile(lat, 99), **_steady(nvml, done)))
            info["farm_workers"] = _worker_stats(farm)
        finally:
            _stop_farm(farm)
