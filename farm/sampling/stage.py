"""The sampling stage: one thread per device runs every sampler loop, in arrival order.

A farm worker runs two batches at once so that the GPU never waits on the host: while one
batch's sampler loop runs here, the other encodes its prompts and draws its noise (before)
or decodes, copies to the host and hands its images off (after). One thread for all loops
keeps the UNet's activations to one batch at a time, keeps the order of batches, and lets
CUDA graphs (recorded per thread by torch.compile's reduce-overhead mode) be recorded once."""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

_stages: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()
# per device, the last sampler loops' (unix start s, unix end s): the gaps between them are
# moments the GPU had no sampling to do (the bench lists them beside its NVML timeline)
_windows: dict[str, deque] = {}


def _executor(device: torch.device) -> ThreadPoolExecutor:
    key = str(device)
    with _lock:
        found = _stages.get(key)
        if found is None:
            found = _stages[key] = ThreadPoolExecutor(1, thread_name_prefix=f"sampling-{key}")
        return found


def run_sampling(device: torch.device, fn: Callable[[], T]) -> T:
    """fn() on the device's sampling thread, under inference mode; its exception (an
    interrupt from the progress callback) is raised here."""
    def call() -> T:
        started = time.time()
        try:
            with torch.inference_mode():
                return fn()
        finally:
            with _lock:
                _windows.setdefault(str(device), deque(maxlen=1024)).append((started, time.time()))
    if threading.current_thread().name.startswith("sampling-"):
        with torch.inference_mode():  # already on a sampling thread (a node sampling inside a sampler)
            return fn()
    return _executor(device).submit(call).result()


def sampling_windows(device: torch.device) -> list[tuple[float, float]]:
    """The device's last sampler loops (up to 1024) as (unix start s, unix end s), oldest first."""
    with _lock:
        return list(_windows.get(str(device), ()))
