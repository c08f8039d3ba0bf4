"""How a farm worker's images and events leave it without holding up the GPU thread."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from farm.records.events import FarmEvent
from farm.records.images import ImageBatch, ImageRef


@dataclass(frozen=True)
class PendingWrite:
    """Images handed to the writer, and its handle for them: a future that is done when
    they are on disk (a Ray ObjectRef on a farm), opaque here."""

    refs: tuple[ImageRef, ...]
    handle: object


class RemoteImageSink:
    """The engine's image sink on a farm worker. `save` reserves names (a small round trip,
    so the `executed` event can carry them at once), hands the pixels off without waiting
    for them to be encoded, and keeps the writer's handle. `flush` does not wait: the
    dispatcher awaits a batch's handles before it reports the jobs done, so the thread
    that feeds the GPU is free for the next batch meanwhile."""

    def __init__(self, reserve: Callable[[str, str, int], list[ImageRef]],
                 write: Callable[[list[ImageRef], ImageBatch], object]):
        self._reserve = reserve  # (prefix, kind, count) -> names
        self._write = write  # (names, batch) -> handle; must not block on the encoding
        self._pending: list[PendingWrite] = []
        self._lock = threading.Lock()

    def save(self, batch: ImageBatch) -> list[ImageRef]:
        refs = list(self._reserve(batch.prefix, batch.kind, len(batch.pixels)))
        handle = self._write(refs, batch)
        with self._lock:
            self._pending.append(PendingWrite(tuple(refs), handle))
        return refs

    def flush(self) -> None:
        pass

    def take(self, refs: set[ImageRef] | None = None) -> list[PendingWrite]:
        """The writes handed off that name any of `refs` (None: all). Two batches may run on
        a worker at once: each takes only its own, leaving the other's in place. (A write
        that no batch claims, from a run that was redone, stays here: one small handle.)"""
        with self._lock:
            if refs is None:
                mine, self._pending = self._pending, []
            else:
                mine = [w for w in self._pending if refs.intersection(w.refs)]
                self._pending = [w for w in self._pending if not refs.intersection(w.refs)]
        return mine


class EventForwarder:
    """Collects a worker's events and sends them in small batches from its own thread, so
    a sampler step never waits for the network."""

    def __init__(self, send: Callable[[list[FarmEvent]], None], interval_s: float = 0.05):
        self._send = send
        self.interval_s = interval_s
        self._buffer: list[FarmEvent] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="events", daemon=True)
        self._thread.start()

    def emit(self, event: FarmEvent) -> None:
        with self._cond:
            self._buffer.append(event)
            self._cond.notify()

    def flush(self) -> None:
        """Send what is buffered now (from the calling thread), so that a job's events
        precede the report that it finished."""
        with self._cond:
            events, self._buffer = self._buffer, []
        if events:
            self._send(events)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            time.sleep(self.interval_s)  # gather a step's worth of progress from every job
            try:
                self.flush()
            except Exception:  # the hub restarting must not kill the worker; events are best effort
                pass

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self.flush()
