"""Events of every prompt, in order, readable from any process by cursor.

Workers publish in small batches; the dispatcher publishes queue status and the failures
it decides itself. Readers (a JobFuture's progress callback, the HTTP server's websocket
pump) long-poll with the cursor of the last event they saw. The log is a bounded ring:
a reader that falls too far behind is told how many it missed rather than stalling
publishers.
"""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import ray

from farm.records.events import FarmEvent


@dataclass(frozen=True)
class EventPage:
    events: list[FarmEvent]
    cursor: int  # pass back to read on from here
    missed: int = 0  # events dropped from the ring before this reader got them


class EventLog:
    """The ring buffer (plain Python; the actor below adds waiting)."""

    def __init__(self, capacity: int = 20_000):
        self._events: deque[FarmEvent] = deque(maxlen=capacity)
        self._next = 0  # sequence number of the next event published

    def publish(self, events: list[FarmEvent]) -> None:
        self._events.extend(events)
        self._next += len(events)

    @property
    def head(self) -> int:
        return self._next

    def read(self, cursor: int, limit: int, prompt_ids: frozenset[str] | None = None) -> EventPage:
        """Events with sequence >= cursor (cursor < 0: from the newest on), at most `limit`,
        optionally only those of some prompts."""
        if cursor < 0:
            return EventPage([], self._next)
        first = self._next - len(self._events)
        missed = max(0, first - cursor)
        start = max(cursor, first)
        out: list[FarmEvent] = []
        position = start
        for position in range(start, self._next):
            if len(out) >= limit:
                break
            event = self._events[position - first]
            if prompt_ids is None or _prompt_of(event) in prompt_ids:
                out.append(event)
        else:
            position = self._next
        return EventPage(out, position, missed)


def _prompt_of(event: FarmEvent) -> str | None:
    data = event.data
    return data.get("prompt_id") if isinstance(data, dict) else data.prompt_id


@ray.remote(num_cpus=0)
class EventHub:
    """Async actor: publish never waits for readers; readers wait up to timeout_s."""

    def __init__(self, capacity: int = 20_000):
        self.log = EventLog(capacity)
        self._changed = asyncio.Condition()

    async def publish(self, events: list[FarmEvent]) -> None:
        self.log.publish(events)
        async with self._changed:
            self._changed.notify_all()

    async def head(self) -> int:
        return self.log.head

    async def poll(self, cursor: int, timeout_s: float = 10.0, limit: int = 1000,
                   prompt_ids: list[str] | None = None) -> EventPage:
        wanted = frozenset(prompt_ids) if prompt_ids is not None else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            page = self.log.read(cursor, limit, wanted)
            if page.events or page.missed or cursor < 0:
                return page
            cursor = page.cursor  # skip what was filtered out
            remaining = deadline - loop.time()
            if remaining <= 0:
                return page
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
