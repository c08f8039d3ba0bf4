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

    def handles_naming(self, refs: set[ImageRef]) -> list[object]:
        """The handles of the writes (still held here) that write any of `refs`."""
        with self._lock:
            return [w.handle for w in self._pending if refs.intersection(w.refs)]

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
    """Sends a worker's events in order, in small batches, from its own thread, so a sampler
    step never waits for the network.

    One thread sends, and each send returns once the hub has the batch: two batches in
    flight at once (one per engine call) cannot overtake each other. An event that names
    images (`executed`) is held, with those after it, until the writer has them on disk:
    a client that fetches /view on `executed` finds the file. `flush` returns when every
    event emitted before it is at the hub, so a job's events precede the report that it
    finished, which the dispatcher follows with the prompt's end marker."""

    def __init__(self, send: Callable[[list[FarmEvent]], None],
                 wait_writes: Callable[[list[object]], None] = lambda handles: None,
                 interval_s: float = 0.05, flush_timeout_s: float = 300.0):
        self._send = send  # must return once the batch is published
        self._wait_writes = wait_writes  # returns once those writes are done (or failed)
        self.interval_s = interval_s
        self.flush_timeout_s = flush_timeout_s
        self._buffer: list[tuple[FarmEvent, tuple[object, ...]]] = []
        self._emitted = 0  # events handed to emit, ever
        self._sent = 0  # events the sender is done with (published, or dropped on a hub error)
        self._urgent = False
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="events", daemon=True)
        self._thread.start()

    def emit(self, event: FarmEvent, after: list[object] | tuple[object, ...] = ()) -> None:
        """Queue `event`; with `after` (writer handles), it waits until they are done."""
        with self._cond:
            self._buffer.append((event, tuple(after)))
            self._emitted += 1
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until the events emitted so far are at the hub (or the hub failed them)."""
        with self._cond:
            target = self._emitted
            self._urgent = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._sent >= target or self._closed, self.flush_timeout_s)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._buffer or self._closed)
                if not self._buffer and self._closed:
                    return
            if not self._urgent:
                time.sleep(self.interval_s)  # gather a step's worth of progress from every job
            with self._cond:
                entries, self._buffer, self._urgent = self._buffer, [], False
            self._deliver(entries)

    def _deliver(self, entries: list[tuple[FarmEvent, tuple[object, ...]]]) -> None:
        ready: list[FarmEvent] = []
        for event, handles in entries:
            if handles:
                self._publish(ready)
                ready = []
                try:
                    self._wait_writes(list(handles))
                except Exception:  # a failed write is the dispatcher's to report; the event still goes
                    pass
            ready.append(event)
        self._publish(ready)

    def _publish(self, events: list[FarmEvent]) -> None:
        if not events:
            return
        try:
            self._send(events)
        except Exception:  # the hub restarting must not kill the worker; events are best effort
            pass
        with self._cond:
            self._sent += len(events)
            self._cond.notify_all()

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
