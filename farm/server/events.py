"""Websocket events: what the farm reports, how each is framed for ComfyUI clients, and the
fan-out that hands every socket its own bounded queue.

Routing follows ComfyUI: an event that names a client goes to the socket with that
clientId; one that names none (a prompt submitted without client_id, queue status) goes
to every socket.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import AsyncIterator, Callable

log = logging.getLogger(__name__)


class EventType(str, Enum):
    STATUS = "status"
    EXECUTION_START = "execution_start"
    EXECUTION_CACHED = "execution_cached"
    EXECUTING = "executing"  # node None marks the end of a prompt
    PROGRESS = "progress"
    EXECUTED = "executed"
    EXECUTION_SUCCESS = "execution_success"
    EXECUTION_ERROR = "execution_error"
    EXECUTION_INTERRUPTED = "execution_interrupted"
    PREVIEW_IMAGE = "preview_image"  # a binary frame, not JSON


# Under pressure a client may miss these without losing track of a prompt: the next
# progress supersedes the last, and a preview is only a picture of it.
LOSSY_EVENTS = frozenset({EventType.PROGRESS, EventType.PREVIEW_IMAGE})

BINARY_PREVIEW_IMAGE = 1  # ComfyUI's binary event type for an encoded preview


class ImageFormat(IntEnum):
    JPEG = 1
    PNG = 2


@dataclass(frozen=True)
class PreviewImage:
    """A sampler preview, already encoded (small: a few KB of JPEG)."""

    format: ImageFormat
    image: bytes  # the encoded JPEG or PNG file
    prompt_id: str | None = None  # which prompt it shows (not part of ComfyUI's frame)
    node: str | None = None  # the sampler node that produced it


@dataclass(frozen=True)
class FarmEvent:
    """One event from the farm. `data` is ComfyUI's JSON payload for that event type
    (e.g. {"node", "display_node", "prompt_id"} for executing), or a PreviewImage."""

    type: EventType
    data: dict | PreviewImage
    client_id: str | None = None  # the socket to send it to; None: every socket

    def __post_init__(self):
        binary = self.type is EventType.PREVIEW_IMAGE
        if binary != isinstance(self.data, PreviewImage):
            raise TypeError(f"{self.type.value} event needs {'a PreviewImage' if binary else 'a dict'} as data")

    @classmethod
    def from_engine(cls, event_type: str, data: dict, client_id: str | None) -> "FarmEvent":
        """From the engine's (type name, payload) pair; an unknown name is a bug upstream."""
        return cls(EventType(event_type), data, client_id)


def status_event(queue_remaining: int, client_id: str | None = None, sid: str | None = None) -> FarmEvent:
    """The status message ComfyUI broadcasts when the queue changes (and sends first on
    every new socket, with the socket's sid)."""
    data: dict = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid is not None:
        data["sid"] = sid
    return FarmEvent(EventType.STATUS, data, client_id)


def encode_preview(preview: PreviewImage) -> bytes:
    """Big-endian uint32 event type, uint32 image format, then the image file."""
    return struct.pack(">II", BINARY_PREVIEW_IMAGE, int(preview.format)) + preview.image


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
        self.capacity = max(2, capacity)
        self._frames: asyncio.Queue[Frame | None] = asyncio.Queue()  # None: close the socket
        self.skipped = 0  # lossy frames not sent to this client
        self.overflowed = False

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
        frame = encode(event)
        lossy = event.type in LOSSY_EVENTS
        if event.client_id is None:
            targets = list(self._subscribers)
        else:
            target = self._by_client.get(event.client_id)
            targets = [target] if target is not None else []
        for sub in targets:
            sub.offer(frame, lossy)

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
