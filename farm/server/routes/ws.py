"""GET /ws?clientId=X: ComfyUI's event stream.

First frame: status {"status": {"exec_info": {"queue_remaining"}}, "sid"}; then, if this
client's prompt is running, the node it is on (a reconnect mid-prompt picks up there);
then every event for this client and every broadcast, as events.Broadcaster routes them.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from farm.records.events import status_event
from farm.server.broadcast import Subscriber, encode
from farm.server.deps import ServerState, State
from farm.server.routes.info import server_features

log = logging.getLogger(__name__)
router = APIRouter()

CLOSE_GOING_AWAY = 1001  # the server stops
CLOSE_TRY_AGAIN_LATER = 1013  # the client read too slowly (see events.Subscriber)


async def _queue_remaining(state: ServerState) -> int:
    if state.service is None:
        return 0  # no farm, no queue
    try:
        return await state.service.queue_remaining()
    except Exception:  # the farm is unreachable: the socket still opens
        log.exception("queue_remaining failed; reporting 0 to a new websocket")
        return 0


async def _send_frames(ws: WebSocket, sub: Subscriber) -> None:
    while True:
        frame = await sub.next_frame()
        if frame is None:
            with contextlib.suppress(Exception):
                await ws.close(CLOSE_TRY_AGAIN_LATER if sub.overflowed else CLOSE_GOING_AWAY)
            return
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_text(frame)


async def _read_client(ws: WebSocket, sub: Subscriber, state: ServerState) -> None:
    """Until the client goes. Its only message that means anything is a first
    {"type": "feature_flags", "data": {...}}: kept on the subscriber (previews are framed
    by it) and answered with the server's flags (ComfyUI's handshake)."""
    first = True
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if first and text:
            with contextlib.suppress(ValueError, AttributeError):
                message = json.loads(text)
                if message.get("type") == "feature_flags":
                    flags = message.get("data")
                    sub.feature_flags = flags if isinstance(flags, dict) else {}
                    reply = {"type": "feature_flags", "data": server_features(state.config.max_body_bytes)}
                    sub.offer(json.dumps(reply), lossy=False)  # through the outbox: one writer per socket
        first = False


@router.websocket("/ws")
async def websocket(ws: WebSocket, state: State) -> None:
    sid = ws.query_params.get("clientId") or uuid.uuid4().hex
    await ws.accept()
    sub = state.broadcaster.subscribe(sid)  # before the status frame, so nothing falls in between
    tasks: list[asyncio.Task] = []
    try:
        await ws.send_text(encode(status_event(await _queue_remaining(state), client_id=sid, sid=sid)))
        current = state.broadcaster.executing_for(sid)
        if current is not None:
            await ws.send_text(encode(current))
        tasks = [asyncio.create_task(_send_frames(ws, sub)), asyncio.create_task(_read_client(ws, sub, state))]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is not None and not isinstance(task.exception(), (WebSocketDisconnect, RuntimeError)):
                log.error("websocket %s failed", sid, exc_info=task.exception())
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left while we were greeting it
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        state.broadcaster.unsubscribe(sub)

