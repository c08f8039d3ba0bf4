"""GpuWorker: one Ray actor per GPU, a thin shell around farm.worker.core.WorkerCore.

Ray gives the actor one GPU (num_gpus=1) and sets CUDA_VISIBLE_DEVICES to it; the worker
uses CUDA when that GPU is real, else the CPU. So on a CPU machine `ray.init(num_gpus=2)`
gives two logical GPUs and two CPU workers running the very same code.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

import ray
from ray.exceptions import RayTaskError

from farm.models.compile_config import CompileConfig
from farm.models.tier_config import TierConfig
from farm.records.paths import FarmPaths
from farm.scheduler.messages import BatchResult, WorkerState, WorkItem
from farm.worker.channels import EventForwarder, RemoteImageSink

if TYPE_CHECKING:  # torch and the engine load in the actor's own process (in __init__), not
    # with this module: the dispatcher imports it to start workers, and never renders
    import torch


def worker_device() -> torch.device:
    import torch

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)  # Ray made the assigned GPU the only visible one
    return torch.device("cpu")


def _log_farm_to_stderr() -> None:
    """The library's INFO lines (what the worker compiled, warmed and loaded, with seconds) in
    this actor's log file, Ray's worker-*.err: Ray is started with configure_logging=False,
    which leaves Python's logging unconfigured, and unconfigured logging drops INFO."""
    farm_log = logging.getLogger("farm")
    if not farm_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        farm_log.addHandler(handler)
        farm_log.setLevel(logging.INFO)


@ray.remote(num_gpus=1, max_concurrency=6)
class GpuWorker:
    """Threaded actor: `run_batch` runs on up to pipeline_depth threads (one batch samples
    while the next prepares and the last decodes) while `interrupt`, `state` and `free` are
    served on others."""

    def __init__(self, worker_id: str, paths: FarmPaths, writer, hub, tiers: TierConfig = TierConfig(),
                 workers_on_host: int = 1, dtype: str | None = None, compile: CompileConfig | None = None,
                 pipeline_depth: int = 1):
        import torch

        from farm.models.device import choose_dtype
        from farm.worker.core import WorkerCore

        _log_farm_to_stderr()
        device = worker_device()
        if device.type == "cpu":
            # logical GPUs share the host's cores; without this each worker starts one
            # thread per core and they trample each other
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, workers_on_host)))
        dtype_ = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype] if dtype \
            else choose_dtype(device)
        sink = RemoteImageSink(lambda prefix, kind, count: _unwrapped(writer.reserve.remote(prefix, kind, count)),
                               lambda refs, batch: writer.write.remote(refs, batch))  # not awaited here
        # the forwarder's one thread waits on each publish, so batches keep their order
        events = EventForwarder(lambda batch: ray.get(hub.publish.remote(batch), timeout=60),
                                lambda handles: ray.wait(handles, num_returns=len(handles), timeout=120))
        node = f"{socket.gethostname()} ({ray.get_runtime_context().get_node_id()[:8]})"
        self.core = WorkerCore(worker_id, paths, device, dtype_, sink, events, tiers, node=node,
                               workers_on_host=workers_on_host, compile=compile or CompileConfig(),
                               pipeline_depth=pipeline_depth)

    def state(self) -> WorkerState:
        return self.core.state()

    def run_batch(self, items: list[WorkItem]) -> BatchResult:
        return self.core.run_batch(items)

    def interrupt(self, prompt_ids: list[str] | None = None) -> bool:
        return self.core.interrupt(set(prompt_ids) if prompt_ids is not None else None)

    def free(self, unload_models: bool, free_memory: bool) -> None:
        self.core.free(unload_models, free_memory)

    def stats(self) -> dict:
        return self.core.stats()

    def pid(self) -> int:
        return os.getpid()


def _unwrapped(ref):
    """ray.get, raising the writer's own error (a bad filename prefix) rather than Ray's
    wrapper with the remote traceback, so the node's error reads plainly."""
    try:
        return ray.get(ref)
    except RayTaskError as exc:
        raise exc.cause from None
