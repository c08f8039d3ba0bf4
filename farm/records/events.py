"""The farm's events: what the engine, the workers and the dispatcher report about a
prompt, typed. The websocket framing and fan-out live in farm.server.broadcast.

Routing follows ComfyUI: an event that names a client goes to the socket with that
clientId; one that names none (a prompt submitted without client_id, queue status) goes
to every socket.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum


class EventType(str, Enum):
    STATUS = "status"
    EXECUTION_START = "execution_start"
    EXECUTION_CACHED = "execution_cached"
    EXECUTING = "executing"  # node None marks the end of a prompt
    PROGRESS = "progress"
    PROGRESS_STATE = "progress_state"  # every started node's value/max/state, on each change
    EXECUTED = "executed"
    EXECUTION_SUCCESS = "execution_success"
    EXECUTION_ERROR = "execution_error"
    EXECUTION_INTERRUPTED = "execution_interrupted"
    PREVIEW_IMAGE = "preview_image"  # a binary frame, not JSON


# Under pressure a client may miss these without losing track of a prompt: the next
# progress (or progress_state, which carries every node) supersedes the last, and a
# preview is only a picture of it.
LOSSY_EVENTS = frozenset({EventType.PROGRESS, EventType.PROGRESS_STATE, EventType.PREVIEW_IMAGE})

BINARY_PREVIEW_IMAGE = 1  # ComfyUI's binary event type for an encoded preview
BINARY_PREVIEW_IMAGE_WITH_METADATA = 4  # ... with a JSON header naming its node and prompt


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
