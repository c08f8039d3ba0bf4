"""`farm bench`'s naive and farm modes: jobs through a real farm (Farm.local: Ray, the SQLite
queue, a GpuWorker per GPU, the OutputWriter), timed from submission to files on disk. One
farm serves every architecture's naive mode, another every farm mode: a farm's start
(Ray's worker processes importing torch and diffusers) is paid once per mode."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from farm.models.arch import ARCH_FAMILY
from farm.scheduler.batch_size import LATENT_FACTOR, BatchSizer
from farm.worker.nvml import NvmlSampler, percentile
from jobs.bench_report import ArchRun, BenchArgs, BenchStopped, say, stop_on_sigterm, summarize, workflow


def _start_farm(root: Path, tag: str, a: BenchArgs, compile_on: bool, depth: int, max_batch: int,
                sizer: BatchSizer | None = None, warm_shapes: tuple = ()):
    from actors import cluster as ray_cluster
    from farm.client import Farm

    db = root / f"queue-{tag}.sqlite"
    if db.exists():
        db.unlink()
    t = time.perf_counter()
    if not ray_cluster.is_initialized():
        ray_cluster.init_local(num_gpus=a.gpus)
        say(f"{tag}: Ray is up in {time.perf_counter() - t:.1f} s")
    farm = Farm.local(root / "models", root / "output", num_gpus=a.gpus, db=db, root=root, max_batch=max_batch,
                      compile=a.compile_config(enabled=compile_on, warm_shapes=warm_shapes), pipeline_depth=depth,
                      worker_gpus=a.worker_gpus, batch_sizer=sizer)
    stop_on_sigterm()  # ray.init replaced it: a time limit must still keep what was measured
    say(f"{tag}: the farm's actors are placed ({time.perf_counter() - t:.1f} s)")
    farm.wait_for_workers(timeout=900)  # a worker compiles its warm shapes before it reports in
    say(f"{tag}: the farm is up ({len(farm.status().workers)} worker(s), {time.perf_counter() - t:.1f} s)")
    return farm


@contextlib.contextmanager
def _measuring_on(farm) -> Iterator[None]:
    """The farm is stopped after its mode, but not when the bench itself is stopped: a time
    limit's grace (30 s in scripts/gpu_bench.sh) is shorter than a worker busy compiling
    takes to answer a stop, and ray.shutdown() in main ends the farm with Ray."""
    try:
        yield
    except BenchStopped:
        farm.close(stop=False)  # its results thread ends quietly when main shuts Ray down
        raise
    except BaseException:
        _stop_farm(farm)
        raise
    _stop_farm(farm)


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


SAMPLING_GAP_S = 0.05  # a pause between two sampler loops this long is listed


def _say_idle_causes(arch: str, workers: list[dict], start_s: float, end_s: float) -> dict:
    """What may have left the GPU idle during the measurement (unix seconds start_s..end_s):
    each worker's long garbage collections and the gaps between its sampler loops, as
    [seconds since the NVML timeline's start, seconds]; a dip in utilisation at the same
    moment is one of them. Printed, and returned for the report."""
    found = {}
    for worker in workers:
        long_pauses = (worker.get("gc") or {}).get("long_pauses", [])
        pauses = [[round(t - start_s, 2), s] for t, s, _ in long_pauses if start_s <= t <= end_s]
        loops = [w for w in worker.get("sampling_windows", []) if start_s <= w[1] and w[0] <= end_s]
        gaps = [[round(a[1] - start_s, 2), round(b[0] - a[1], 3)] for a, b in zip(loops, loops[1:])
                if b[0] - a[1] >= SAMPLING_GAP_S]
        found[worker.get("worker_id")] = {"gc_pauses": pauses, "sampling_gaps": gaps, "sampler_loops": len(loops)}
        for what, listed in (("long GC pause(s)", pauses), (f"gap(s) of {SAMPLING_GAP_S * 1000:.0f} ms or more "
                                                             f"between its {len(loops)} sampler loops", gaps)):
            text = ", ".join(f"{s * 1000:.0f} ms at {t:.2f} s" for t, s in listed[:20])
            say(f"{arch} farm {worker.get('worker_id')}: {len(listed)} {what}" + (f": {text}" if text else ""))
    return found


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


def _through_farm(farm, prepared: list, nvml: NvmlSampler, one_at_a_time: bool,
                  progress: str | None = None) -> tuple[float, list[float], list]:
    """Seconds for all, each job's latency (submit to files written), and the results.
    `progress` names a line said as each job ends (a warm-up that a time limit cuts short
    then still shows how far it got)."""
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
            def ended(fut) -> None:
                done.setdefault(fut.prompt_id, time.perf_counter())
                if progress:
                    say(f"{progress}: {len(done)}/{len(futures)} jobs done")

            for f in futures:
                f.add_done_callback(ended)
            for f in futures:
                result = f.outcome(900)
                if not result.ok:
                    raise RuntimeError(f"farm job failed: {result.error}")
                results.append(result)
            latencies = [done.get(f.prompt_id, time.perf_counter()) - t for f in futures]
    return time.perf_counter() - started, latencies, results


def start_naive_farm(root: Path, a: BenchArgs):
    """The farm of the naive mode: eager, one job per call, no second call in flight."""
    return _start_farm(root, "naive", a, compile_on=False, depth=1, max_batch=1)


def bench_naive(runs: list[ArchRun], farm) -> None:
    """Naive mode of every architecture on the naive farm, which is stopped after."""
    with _measuring_on(farm):
        for run in runs:
            x = run.args
            warm = [farm.prepare(workflow(run.names[0], 200_000, run.size, x.steps, x.sampler))]
            _through_farm(farm, warm, NvmlSampler(), one_at_a_time=True)  # loads the checkpoint
            prepared = [farm.prepare(workflow(run.names[0], 210_000 + i, run.size, x.steps, x.sampler))
                        for i in range(x.naive_jobs)]
            nvml = NvmlSampler(period_s=0.05)
            seconds, lat, _ = _through_farm(farm, prepared, nvml, one_at_a_time=True)
            run.record(summarize("naive", len(prepared), seconds, 1, nvml, latency_p50_s=percentile(lat, 50),
                                 latency_p99_s=percentile(lat, 99)))
            run.result["farm"]["naive_workers"] = _worker_stats(farm)


def bench_farm(runs: list[ArchRun], a: BenchArgs, root: Path) -> None:
    """Farm mode of every architecture on one compiled farm, one architecture's queue after
    the other. Batches are what the farm's own batch sizer allows, as deployed (its default
    caps per architecture and size: nothing here tunes them), up to the largest raw bucket;
    raw mode measures that batch size too, for the farm-against-raw figure."""
    sizer = BatchSizer(max_batch=max(max(run.args.buckets) for run in runs))
    for run in runs:
        latent = run.size // LATENT_FACTOR
        run.result["farm_batch"] = sizer.limit(ARCH_FAMILY[run.arch].value, latent, latent)
    batch = max(run.result["farm_batch"] for run in runs)
    # The worker compiles at start the shape each compile process warmed (its largest bucket),
    # by the same call, and the VAE decoder as its process did: inductor's disk cache then
    # serves them. Compiled inside the first job instead, the graph is traced at that batch's
    # rows, and a one-job batch first (another checkpoint's, ready sooner) missed the cache:
    # a cold SD1.5 compile of 104 s on an H100 (call 9).
    shapes = tuple((run.arch, max(run.args.buckets), run.size // LATENT_FACTOR, run.size // LATENT_FACTOR)
                   for run in runs) if a.compile else ()
    farm = _start_farm(root, "farm", a, compile_on=a.compile, depth=2, max_batch=batch, sizer=sizer,
                       warm_shapes=shapes)
    with _measuring_on(farm):
        for run in runs:
            x, info = run.args, run.result["farm"]
            t = time.perf_counter()
            # warm-up, outside the measurement: every checkpoint loaded once and each batch
            # size's CUDA graph recorded, as a farm does once per worker: a full batch of the
            # first checkpoint, one job of each other
            warm = [farm.prepare(workflow(n, 300_000 + 100 * k + i, run.size, x.steps, x.sampler))
                    for k, n in enumerate(run.names) for i in range(run.result["farm_batch"] if k == 0 else 1)]
            _through_farm(farm, warm, NvmlSampler(), one_at_a_time=False, progress=f"{run.arch} farm warm-up")
            info["farm_warmup_s"] = round(time.perf_counter() - t, 2)
            say(f"{run.arch} farm warm-up ({len(warm)} jobs: every checkpoint loaded, graphs recorded) took "
                f"{info['farm_warmup_s']:.1f} s")
            prepared = [farm.prepare(workflow(run.names[i % len(run.names)], 310_000 + i, run.size, x.steps,
                                              x.sampler)) for i in range(x.jobs)]
            nvml = NvmlSampler(period_s=0.05)
            seconds, lat, done = _through_farm(farm, prepared, nvml, one_at_a_time=False)
            run.record(summarize("farm", len(prepared), seconds, run.result["farm_batch"], nvml,
                                 latency_p50_s=percentile(lat, 50), latency_p99_s=percentile(lat, 99),
                                 **_steady(nvml, done)))
            info["farm_workers"] = _worker_stats(farm)
            info["idle_causes"] = _say_idle_causes(run.arch, info["farm_workers"], nvml.started_wall_s,
                                                   nvml.started_wall_s + seconds)
