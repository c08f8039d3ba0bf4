"""The websocket greeting on a real server (events of real prompts: e2e_flow.py)."""
from __future__ import annotations

import json
import re

from websockets.sync.client import connect


def test_first_message_is_status_with_the_client_id(server):
    with connect(f"{server.ws_url}/ws?clientId=my-client") as ws:
        first = json.loads(ws.recv(timeout=5))
    assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "my-client"}}


def test_without_client_id_the_server_picks_one(server):
    with connect(f"{server.ws_url}/ws") as a, connect(f"{server.ws_url}/api/ws") as b:
        sid_a = json.loads(a.recv(timeout=5))["data"]["sid"]
        sid_b = json.loads(b.recv(timeout=5))["data"]["sid"]
    assert re.fullmatch(r"[0-9a-f]{32}", sid_a) and re.fullmatch(r"[0-9a-f]{32}", sid_b)
    assert sid_a != sid_b


def test_feature_flags_handshake(start_server):
    srv = start_server(max_body_bytes=12345)
    with connect(f"{srv.ws_url}/ws?clientId=x") as ws:
        ws.recv(timeout=5)
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        reply = json.loads(ws.recv(timeout=5))
    assert reply["type"] == "feature_flags"
    assert reply["data"]["max_upload_size"] == 12345
    assert reply["data"]["supports_preview_metadata"] is True  # previews with node and prompt: type-4 frames


def test_other_messages_get_no_reply_and_the_socket_stays_open(server):
    with connect(f"{server.ws_url}/ws?clientId=x") as ws:
        ws.recv(timeout=5)
        ws.send("not json")
        ws.send(json.dumps({"type": "feature_flags", "data": {}}))  # only the first message negotiates
        ws.ping().wait(timeout=5)  # still served
