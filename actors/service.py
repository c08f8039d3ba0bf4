"""The HTTP server's FarmService, backed by the farm on Ray (through actors.cluster).

    cluster = FarmCluster.start(FarmConfig(paths, db))      # or FarmCluster.find()
    app = create_app(RayFarmService(cluster, paths), ServerConfig(...))

Every method awaits the dispatcher's answer on the server's event loop (Ray object refs
are awaitable), so no request handler blocks the loop.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

from actors.cluster import FarmCluster
from farm.models.store import ModelFolders
from farm.records.events import FarmEvent
from farm.records.history import HistoryItem
from farm.records.metrics import FarmMetrics
from farm.records.paths import FarmPaths
from farm.records.queue import QueueSnapshot, SubmitResult
from farm.records.workers import DeviceInfo, WorkerStatus
from farm.scheduler.jobs import Job
from farm.service import SubmitRequest

log = logging.getLogger(__name__)
EVENT_POLL_S = 10.0


class RayFarmService:
    """farm.service.FarmService over the farm's Ray actors."""

    def __init__(self, cluster: FarmCluster, paths: FarmPaths):
        self.cluster = cluster
        self.paths = paths

    async def submit(self, req: SubmitRequest) -> SubmitResult:
        job = Job.from_prepared(req.prepared, ModelFolders.for_paths(self.paths), extra_data=req.extra_data,
                                client_id=req.client_id, number=req.number, front=req.front,
                                outputs_to_execute=req.outputs_to_execute)
        (result,) = await self.cluster.call_async("submit", [job])
        return result

    async def queue_remaining(self) -> int:
        return await self.cluster.call_async("queue_remaining")

    async def queue(self) -> QueueSnapshot:
        return await self.cluster.call_async("queue")

    async def delete_queued(self, prompt_ids: list[str]) -> None:
        await self.cluster.call_async("delete_queued", list(prompt_ids))

    async def clear_queue(self) -> None:
        await self.cluster.call_async("clear_queue")

    async def history(self, max_items: int | None, offset: int) -> list[HistoryItem]:
        return await self.cluster.call_async("history", max_items, offset)

    async def history_item(self, prompt_id: str) -> HistoryItem | None:
        return await self.cluster.call_async("history_item", prompt_id)

    async def delete_history(self, prompt_ids: list[str]) -> None:
        await self.cluster.call_async("delete_history", list(prompt_ids))

    async def clear_history(self) -> None:
        await self.cluster.call_async("clear_history")

    async def interrupt(self, prompt_id: str | None) -> None:
        await self.cluster.call_async("interrupt", prompt_id)

    async def free(self, unload_models: bool, free_memory: bool) -> None:
        await self.cluster.call_async("free", unload_models, free_memory)

    async def cancel(self, prompt_id: str) -> bool:
        return await self.cluster.call_async("cancel", prompt_id)

    async def workers(self) -> list[WorkerStatus]:
        return await self.cluster.call_async("workers")

    async def devices(self) -> list[DeviceInfo]:
        return await self.cluster.call_async("devices")

    async def metrics(self) -> FarmMetrics:
        return await self.cluster.call_async("metrics")

    async def events(self) -> AsyncIterator[FarmEvent]:
        """Every event from now on. A reader that fell behind the hub's ring loses the
        oldest (logged); Broadcaster.pump reopens the stream if the hub restarts."""
        cursor = -1  # from now on
        while True:
            page = await self.cluster.poll_events_async(cursor, EVENT_POLL_S)
            if page.missed:
                log.warning("the event stream fell %d events behind the hub", page.missed)
            cursor = page.cursor
            for event in page.events:
                yield event
            await asyncio.sleep(0)
