"""Event framing and the fan-out, on real Broadcaster/Subscriber objects."""
from __future__ import annotations

import asyncio
import json
import struct

import pytest

from farm.records.events import (
    EventType,
    FarmEvent,
    ImageFormat,
    PreviewImage,
    status_event,
)
from farm.server.broadcast import Broadcaster, encode, encode_preview


def drain(sub) -> list:
    frames = []
    while not sub._frames.empty():
        frames.append(sub._frames.get_nowait())
    return frames


def executing(node, client_id="c1", prompt_id="p1") -> FarmEvent:
    return FarmEvent(EventType.EXECUTING, {"node": node, "display_node": node, "prompt_id": prompt_id}, client_id)


def progress(value, client_id="c1") -> FarmEvent:
    return FarmEvent(EventType.PROGRESS, {"value": value, "max": 20, "prompt_id": "p1", "node": "3"}, client_id)


def test_json_frame_is_comfyui_shape():
    frame = encode(executing("3"))
    assert json.loads(frame) == {"type": "executing", "data": {"node": "3", "display_node": "3", "prompt_id": "p1"}}


def test_status_frame():
    assert json.loads(encode(status_event(7, sid="abc"))) == {
        "type": "status", "data": {"status": {"exec_info": {"queue_remaining": 7}}, "sid": "abc"}}


def test_binary_preview_frame():
    jpeg = b"\xff\xd8\xff\xe0fake-jpeg"
    frame = encode(FarmEvent(EventType.PREVIEW_IMAGE, PreviewImage(ImageFormat.JPEG, jpeg), "c1"))
    assert frame[:8] == bytes([0, 0, 0, 1, 0, 0, 0, 1])  # event 1 (preview), format 1 (JPEG), big-endian
    assert frame[8:] == jpeg
    png = encode_preview(PreviewImage(ImageFormat.PNG, b"\x89PNG"))
    assert struct.unpack(">II", png[:8]) == (1, 2)


def test_preview_with_metadata_goes_to_clients_that_announced_it():
    """ComfyUI (comfy_execution/progress.py, server.py send_image_with_metadata): a client
    whose feature_flags say supports_preview_metadata gets type 4 frames, uint32 length
    of a JSON header, the header, the image; the others keep the type 1 frame."""
    jpeg = b"\xff\xd8\xff\xe0fake-jpeg"
    hub = Broadcaster(capacity=16)
    plain, rich = hub.subscribe("plain"), hub.subscribe("rich")
    rich.feature_flags = {"supports_preview_metadata": True}
    for client in ("plain", "rich"):
        hub.publish(FarmEvent(EventType.PREVIEW_IMAGE, PreviewImage(ImageFormat.JPEG, jpeg, "p1", "3"), client))
    [old] = drain(plain)
    assert struct.unpack(">II", old[:8]) == (1, 1) and old[8:] == jpeg
    [frame] = drain(rich)
    kind, length = struct.unpack(">II", frame[:8])
    assert kind == 4
    header = json.loads(frame[8:8 + length])
    assert header == {"node_id": "3", "prompt_id": "p1", "display_node_id": "3", "parent_node_id": None,
                      "real_node_id": "3", "image_type": "image/jpeg"}
    assert frame[8 + length:] == jpeg


def test_a_prompt_without_client_reaches_sockets_only_where_comfyui_broadcasts():
    """ComfyUI sends a client-less prompt's lifecycle to nobody (execution.py checks
    client_id), but progress, progress_state and execution_interrupted go to every socket."""
    hub = Broadcaster(capacity=16)
    a = hub.subscribe("a")
    for kind in (EventType.EXECUTION_START, EventType.EXECUTION_CACHED, EventType.EXECUTED,
                 EventType.EXECUTION_SUCCESS, EventType.EXECUTION_ERROR):
        hub.publish(FarmEvent(kind, {"prompt_id": "p1"}, None))
    hub.publish(executing("3", client_id=None))
    hub.publish(progress(1, client_id=None))
    hub.publish(FarmEvent(EventType.PROGRESS_STATE, {"prompt_id": "p1", "nodes": {}}, None))
    hub.publish(FarmEvent(EventType.EXECUTION_INTERRUPTED, {"prompt_id": "p1"}, None))
    hub.publish(status_event(0))
    assert [json.loads(f)["type"] for f in drain(a)] == ["progress", "progress_state", "execution_interrupted",
                                                         "status"]


def test_event_data_must_match_its_type():
    with pytest.raises(TypeError):
        FarmEvent(EventType.PREVIEW_IMAGE, {"node": "3"})
    with pytest.raises(TypeError):
        FarmEvent(EventType.EXECUTING, PreviewImage(ImageFormat.PNG, b""))
    with pytest.raises(ValueError):
        FarmEvent.from_engine("no_such_event", {}, None)


def test_routing_by_client_and_broadcast():
    hub = Broadcaster(capacity=16)
    a, b = hub.subscribe("a"), hub.subscribe("b")
    hub.publish(executing("3", client_id="a"))
    hub.publish(status_event(2))  # no client: everyone
    hub.publish(executing("4", client_id="nobody"))  # a client with no socket: dropped
    assert [json.loads(f)["type"] for f in drain(a)] == ["executing", "status"]
    assert [json.loads(f)["type"] for f in drain(b)] == ["status"]


def test_reconnect_with_same_client_id_takes_over():
    hub = Broadcaster(capacity=16)
    old = hub.subscribe("a")
    new = hub.subscribe("a")
    hub.publish(executing("3", client_id="a"))
    assert drain(old) == [] and len(drain(new)) == 1
    hub.unsubscribe(old)  # the old socket closing must not unhook the new one
    hub.publish(executing("4", client_id="a"))
    assert len(drain(new)) == 1


def test_slow_client_loses_progress_first_and_never_blocks_others():
    hub = Broadcaster(capacity=8)
    slow, fast = hub.subscribe("slow"), hub.subscribe("fast")
    for i in range(20):  # nobody reads `slow`
        hub.publish(progress(i, client_id="slow"))
    assert slow._frames.qsize() == 4  # half the outbox, then progress is skipped
    assert slow.skipped == 16
    for i in range(4):  # events that must arrive still fit, up to the bound
        hub.publish(executing(str(i), client_id="slow"))
    assert not slow.overflowed and slow._frames.qsize() == 8
    hub.publish(executing("done", client_id="slow"))  # one more does not fit
    assert slow.overflowed
    assert drain(slow) == [None]  # its backlog is freed and the socket told to close
    hub.publish(status_event(1))
    assert drain(slow) == []  # nothing more is queued for it
    assert len(drain(fast)) == 1  # the other client got the broadcast


def test_executing_is_remembered_for_reconnects():
    hub = Broadcaster()
    hub.publish(executing("5", client_id="a", prompt_id="p9"))
    assert hub.executing_for("a").data == {"node": "5", "display_node": "5", "prompt_id": "p9"}
    hub.publish(executing(None, client_id="a", prompt_id="p9"))  # end of the prompt
    assert hub.executing_for("a") is None
    assert hub.executing_for("someone") is None


def test_pump_reopens_a_broken_stream():
    hub = Broadcaster()
    sub = hub.subscribe("a")
    opened = []

    async def flaky():
        opened.append(1)
        yield executing(str(len(opened)), client_id="a")
        if len(opened) == 1:
            raise ConnectionError("farm restarted")

    async def run():
        task = asyncio.create_task(hub.pump(flaky, retry_delay_s=0))
        while len(opened) < 3:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    nodes = [json.loads(f)["data"]["node"] for f in drain(sub)]
    assert nodes[:3] == ["1", "2", "3"]
