"""Websocket fan-out: how each farm event is framed for ComfyUI clients, and the
broadcaster that hands every socket its own bounded queue.

Who gets what follows ComfyUI's server.py and execution.py: an event of a prompt that
names a client goes to that client's socket only. A prompt submitted without client_id
has no listener for its lifecycle (ComfyUI sends execution_start, execution_cached,
executing, executed, execution_success and execution_error only when a client_id is
set); what ComfyUI sends with no target goes to every socket: queue status, progress,
previews and execution_interrupted.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from farm.records.events import (
    BINARY_PREVIEW_IMAGE,
    BINARY_PREVIEW_IMAGE_WITH_METADATA,
    LOSSY_EVENTS,
    EventType,
    FarmEvent,
    ImageFormat,
    PreviewImage,
)

log = logging.getLogger(__name__)

# Sent to every socket when the prompt names no client (ComfyUI: sid None is a broadcast);
# the rest of a client-less prompt's events reach nobody, as in ComfyUI.
UNADDRESSED_BROADCAST = frozenset({EventType.STATUS, EventType.PROGRESS, EventType.PROGRESS_STATE,
                                   EventType.PREVIEW_IMAGE, EventType.EXECUTION_INTERRUPTED})

PREVIEW_METADATA_FLAG = "supports_preview_metadata"  # the client's feature flag for frame type 4


def encode_preview(preview: PreviewImage) -> bytes:
    """Big-endian uint32 event type 1, uint32 image format (1 JPEG, 2 PNG), then the image file."""
    return struct.pack(">II", BINARY_PREVIEW_IMAGE, int(preview.format)) + preview.image


def encode_preview_with_metadata(preview: PreviewImage) -> bytes:
    """For a client that announced supports_preview_metadata: big-endian uint32 event type 4,
    uint32 length of a JSON object naming the node, the prompt and the image's MIME type,
    that JSON, then the image file (ComfyUI's send_image_with_metadata)."""
    node = preview.node
    metadata = {"node_id": node, "prompt_id": preview.prompt_id, "display_node_id": node,
                "parent_node_id": None, "real_node_id": node,
                "image_type": "image/png" if preview.format is ImageFormat.PNG else "image/jpeg"}
    meta = json.dumps(metadata).encode("utf-8")
    return struct.pack(">II", BINARY_PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + preview.image


def encode(event: FarmEvent) -> str | bytes:
    if isinstance(event.data, PreviewImage):
        return encode_preview(event.data)
    return json.dumps({"type": event.type.value, "data": event.data})


Frame = str | bytes


class Subscriber:
    """One open websocket's outbox. Bounded so that a client that reads slowly costs a
    fixed amount of memory and never holds up the others:
    - progress and previews are skipped once the outbox is half full;
    - an event that must arrive and does not fit closes the socket (the client reconnects
      and reads /history), because a silently missing `executing` would hang it forever.
    """

    def __init__(self, client_id: str, capacity: int):
        self.client_id = client_id
        self.feature_flags: dict = {}  # what the client announced in its first message
        self.capacity = max(2, capacity)
        self._frames: asyncio.Queue[Frame | None] = asyncio.Queue()  # None: close the socket
        self.skipped = 0  # lossy frames not sent to this client
        self.overflowed = False

    @property
    def wants_preview_metadata(self) -> bool:
        return self.feature_flags.get(PREVIEW_METADATA_FLAG) is True

    def offer(self, frame: Frame, lossy: bool) -> None:
        if self.overflowed:
            return
        size = self._frames.qsize()
        if lossy and size >= self.capacity // 2:
            self.skipped += 1
            return
        if size >= self.capacity:
            self.overflowed = True
            while not self._frames.empty():  # free the memory now; the socket is closing
                self._frames.get_nowait()
            self._frames.put_nowait(None)
            log.warning("websocket client %s fell %d events behind; closing it", self.client_id, size)
            return
        self._frames.put_nowait(frame)

    async def next_frame(self) -> Frame | None:
        """The next frame to send, or None when the socket must be closed."""
        return await self._frames.get()

    def close(self) -> None:
        self._frames.put_nowait(None)


@dataclass
class _Executing:
    node: str
    prompt_id: str | None


class Broadcaster:
    """Fans farm events out to sockets. Lives on the server's event loop; `publish` never
    awaits, so the farm's event stream is read as fast as it arrives."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self._subscribers: set[Subscriber] = set()
        self._by_client: dict[str, Subscriber] = {}  # client_id -> newest socket with that id
        self._executing: dict[str, _Executing] = {}  # client_id -> node running now for that client

    def subscribe(self, client_id: str) -> Subscriber:
        """A newer socket with the same clientId takes over its events (ComfyUI does the
        same on reconnect); the older one stays open but gets only broadcasts."""
        sub = Subscriber(client_id, self.capacity)
        self._subscribers.add(sub)
        self._by_client[client_id] = sub
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
        if self._by_client.get(sub.client_id) is sub:
            del self._by_client[sub.client_id]

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def executing_for(self, client_id: str) -> FarmEvent | None:
        """What a reconnecting client missed: the node its prompt is running now."""
        current = self._executing.get(client_id)
        if current is None:
            return None
        data = {"node": current.node, "display_node": current.node, "prompt_id": current.prompt_id}
        return FarmEvent(EventType.EXECUTING, data, client_id)

    def publish(self, event: FarmEvent) -> None:
        self._remember_executing(event)
        lossy = event.type in LOSSY_EVENTS
        if event.client_id is None:
            targets = list(self._subscribers) if event.type in UNADDRESSED_BROADCAST else []
        else:
            target = self._by_client.get(event.client_id)
            targets = [target] if target is not None else []
        frames: dict[bool, Frame] = {}  # a preview is framed two ways, each once
        for sub in targets:
            rich = isinstance(event.data, PreviewImage) and sub.wants_preview_metadata
            if rich not in frames:
                frames[rich] = encode_preview_with_metadata(event.data) if rich else encode(event)
            sub.offer(frames[rich], lossy)

    def _remember_executing(self, event: FarmEvent) -> None:
        if event.type is not EventType.EXECUTING or event.client_id is None:
            return
        node = event.data.get("node")
        if node is None:
            self._executing.pop(event.client_id, None)
        else:
            self._executing[event.client_id] = _Executing(str(node), event.data.get("prompt_id"))

    async def pump(self, source: Callable[[], AsyncIterator[FarmEvent]], retry_delay_s: float = 1.0) -> None:
        """Publish every event of `source()` until cancelled; if the stream breaks (the
        farm restarted), open it again rather than leave every socket silent."""
        while True:
            try:
                async for event in source():
                    self.publish(event)
                log.warning("farm event stream ended; reopening it")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("farm event stream failed; reopening it in %.1f s", retry_delay_s)
            await asyncio.sleep(retry_delay_s)

    def close_all(self) -> None:
        for sub in list(self._subscribers):
            sub.close()
