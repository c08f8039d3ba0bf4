"""Token, origin check, body cap: on a real server, over real sockets."""
from __future__ import annotations

import asyncio
import json
import socket

import pytest
from starlette.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from farm.server.security import is_loopback, refuses_cross_origin

TOKEN = "s3cret-token"


# --- token ------------------------------------------------------------------------------


def test_token_is_required_on_routes_when_set(start_server):
    srv = start_server(token=TOKEN)
    with srv.client() as http:
        for path in ("/object_info", "/api/object_info", "/system_stats", "/view?filename=x.png", "/openapi.json"):
            refused = http.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == "Bearer"
        assert http.get("/object_info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/object_info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert http.get(f"/object_info?token={TOKEN}").status_code == 200  # (and sets the cookie: a fresh client next)
    with srv.client() as http:
        assert http.post("/prompt", json={"prompt": {}}).status_code == 401  # refused before validation


def test_token_from_environment(start_server, monkeypatch):
    monkeypatch.setenv("FARM_TOKEN", TOKEN)
    srv = start_server()
    with srv.client() as http:
        assert http.get("/features").status_code == 401
        assert http.get("/features", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_no_token_configured_means_open(server):
    with server.client() as http:
        assert http.get("/features").status_code == 200


def test_websocket_needs_the_token(start_server):
    srv = start_server(token=TOKEN)
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{srv.ws_url}/ws?clientId=a")
    assert refused.value.response.status_code == 403
    with connect(f"{srv.ws_url}/ws?clientId=a&token={TOKEN}") as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "status"
    with connect(f"{srv.ws_url}/ws?clientId=b", additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        assert json.loads(ws.recv(timeout=5))["data"]["sid"] == "b"


# --- origin -----------------------------------------------------------------------------


@pytest.mark.parametrize("host, origin, refused", [
    ("127.0.0.1:8188", "http://127.0.0.1:8188", False),  # the page the server itself serves
    ("127.0.0.1:8188", "http://evil.example", True),  # a foreign page posting to loopback
    ("127.0.0.1:8188", "http://evil.example:8188", True),
    ("localhost:8188", "http://localhost:8188", False),
    ("localhost:8188", "http://127.0.0.1:8188", True),  # same machine, but a different name
    ("127.0.0.1:8188", "http://127.0.0.1:9999", True),  # another port on loopback is another origin
    ("127.0.0.1:8188", "http://127.0.0.1", False),  # origin without a port: hosts compared without ports
    ("127.0.0.1", "http://127.0.0.1:8188", False),  # host without a port: likewise
    ("[::1]:8188", "http://[::1]:8188", False),
    ("[::1]:8188", "http://evil.example", True),
    ("10.1.2.3:8188", "http://evil.example", False),  # not loopback: ComfyUI leaves it to the token
])
def test_origin_rule(host, origin, refused):
    headers = Headers({"host": host, "origin": origin})
    assert asyncio.run(refuses_cross_origin(headers)) is refused


def test_origin_rule_needs_both_headers():
    assert asyncio.run(refuses_cross_origin(Headers({"host": "127.0.0.1:8188"}))) is False
    assert asyncio.run(refuses_cross_origin(Headers({"origin": "http://evil.example"}))) is False


def test_sec_fetch_site_cross_site_is_refused_anywhere():
    headers = Headers({"host": "10.1.2.3:8188", "sec-fetch-site": "cross-site"})
    assert asyncio.run(refuses_cross_origin(headers)) is True
    assert asyncio.run(refuses_cross_origin(Headers({"sec-fetch-site": "same-origin"}))) is False


def test_is_loopback():
    assert asyncio.run(is_loopback("127.0.0.1"))
    assert asyncio.run(is_loopback("::1"))
    assert asyncio.run(is_loopback("localhost"))
    assert not asyncio.run(is_loopback("10.1.2.3"))
    assert not asyncio.run(is_loopback(None))


def test_server_refuses_cross_origin_requests(server):
    own = f"127.0.0.1:{server.port}"
    with server.client() as http:
        assert http.post("/prompt", json={}, headers={"Origin": "http://evil.example"}).status_code == 403
        assert http.get("/features", headers={"Origin": "http://evil.example"}).status_code == 403
        assert http.get("/features", headers={"Origin": f"http://{own}"}).status_code == 200
        assert http.get("/features", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        preflight = http.options("/prompt")
        assert preflight.status_code == 200
        assert "access-control-allow-origin" not in preflight.headers  # so the browser still refuses


def test_websocket_refuses_cross_origin(server):
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{server.ws_url}/ws", origin="http://evil.example")
    assert refused.value.response.status_code == 403


def test_cors_mode_allows_the_configured_origin(start_server):
    srv = start_server(cors_origin="http://studio.example")
    with srv.client() as http:
        preflight = http.options("/prompt", headers={"Origin": "http://studio.example"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://studio.example"
        answer = http.get("/features", headers={"Origin": "http://studio.example"})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "http://studio.example"


# --- body cap ---------------------------------------------------------------------------


def test_declared_body_over_the_cap_is_413(start_server):
    srv = start_server(max_body_bytes=1000)
    with srv.client() as http:
        big = http.post("/prompt", content=b"x" * 1001, headers={"Content-Type": "application/json"})
        assert big.status_code == 413
        assert "1000" in big.json()["error"]
        small = http.post("/prompt", content=b"{}" + b" " * 900, headers={"Content-Type": "application/json"})
        assert small.status_code == 400  # under the cap: it reaches validation (no prompt)


def test_chunked_body_over_the_cap_is_413(start_server):
    """A body without Content-Length is counted as it arrives."""
    srv = start_server(max_body_bytes=1000)

    def chunks():
        for _ in range(5):
            yield b"y" * 400

    with srv.client() as http:
        answer = http.post("/prompt", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413


def test_raw_chunked_request_over_the_cap(start_server):
    """The same over a bare socket, to be sure no Content-Length was added on the way."""
    srv = start_server(max_body_bytes=100)
    chunk = b"z" * 80
    request = (b"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: application/json\r\nConnection: close\r\n\r\n"
               + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(request)
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
