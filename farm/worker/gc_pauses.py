"""Python's garbage collector, timed: how often it ran in this process and how long each run
held the GIL. A worker's sampling thread feeds a CUDA graph one UNet step at a time, so a
collection that stops every thread for 100 ms or more leaves the GPU idle for as long: the
bench lists the long ones (with wall-clock times) beside its utilisation timeline."""
from __future__ import annotations

import gc
import threading
import time
from collections import deque
from dataclasses import dataclass, field

LONG_PAUSE_S = 0.02  # a pause this long is listed with its time, not only counted


@dataclass
class GenerationPauses:
    """Collections of one generation: how many, seconds in all, the longest."""

    count: int = 0
    seconds: float = 0.0
    longest_s: float = 0.0


@dataclass
class GcPauses:
    """Timings of collections while installed in gc.callbacks. Collections run on whichever
    thread allocates, one at a time."""

    by_generation: dict[int, GenerationPauses] = field(default_factory=dict)
    long_pauses: deque = field(default_factory=lambda: deque(maxlen=256))  # (wall start s, seconds, generation)
    _started: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:  # installed mid-collection
            return
        seconds = time.perf_counter() - self._started
        self._started = None
        generation = int(info.get("generation", -1))
        with self._lock:
            g = self.by_generation.setdefault(generation, GenerationPauses())
            g.count += 1
            g.seconds += seconds
            g.longest_s = max(g.longest_s, seconds)
            if seconds >= LONG_PAUSE_S:
                self.long_pauses.append((time.time() - seconds, seconds, generation))

    def install(self) -> "GcPauses":
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def report(self) -> dict:
        """JSON for the bench: per generation (count, seconds, longest) and the long pauses
        as [unix start s, seconds, generation], oldest first."""
        with self._lock:
            return {"generations": {str(k): {"count": g.count, "seconds": round(g.seconds, 4),
                                             "longest_s": round(g.longest_s, 4)}
                                    for k, g in sorted(self.by_generation.items())},
                    "long_pauses": [[round(t, 3), round(s, 4), gen] for t, s, gen in self.long_pauses],
                    "frozen_objects": gc.get_freeze_count()}


_PROCESS: GcPauses | None = None
_PROCESS_LOCK = threading.Lock()


def process_gc_pauses() -> GcPauses:
    """The process's one installed GcPauses (workers made one after another in a test
    process share it: collections are the process's, not a worker's)."""
    global _PROCESS
    with _PROCESS_LOCK:
        if _PROCESS is None:
            _PROCESS = GcPauses().install()
        return _PROCESS
