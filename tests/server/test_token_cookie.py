"""A token given once as ?token= is kept in an HttpOnly, SameSite=Strict cookie that
authorises the web UI's later requests and its websocket (real server, real sockets)."""
from __future__ import annotations

import json

import httpx
from websockets.sync.client import connect

from farm.server.security import TOKEN_COOKIE

TOKEN = "s3cret; token=x"  # a cookie-syntax character: the cookie must still carry it exactly


def test_query_token_sets_a_strict_http_only_cookie(start_server):
    srv = start_server(token=TOKEN)
    with srv.client() as http:
        first = http.get("/features", params={"token": TOKEN})
        assert first.status_code == 200
        cookie = first.headers["set-cookie"]
        assert cookie.startswith(f"{TOKEN_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Path=/" in cookie
        # The client now holds the cookie: no token in the URL or header needed any more.
        later = http.get("/object_info/KSampler")
        assert later.status_code == 200 and "set-cookie" not in later.headers  # not set again


def test_a_wrong_token_sets_no_cookie_and_a_wrong_cookie_is_refused(start_server):
    srv = start_server(token=TOKEN)
    with srv.client() as http:
        refused = http.get("/features", params={"token": "wrong"})
        assert refused.status_code == 401 and "set-cookie" not in refused.headers
    with httpx.Client(base_url=srv.url, cookies={TOKEN_COOKIE: "wrong"}) as http:
        assert http.get("/features").status_code == 401
    with httpx.Client(base_url=srv.url, headers={"Cookie": "farm_token=\"unterminated"}) as http:
        assert http.get("/features").status_code == 401


def test_the_cookie_authorises_the_websocket(start_server):
    srv = start_server(token=TOKEN)
    with srv.client() as http:
        http.get("/features", params={"token": TOKEN})
        cookie = http.cookies[TOKEN_COOKIE]
    with connect(f"{srv.ws_url}/ws?clientId=c", additional_headers={"Cookie": f"{TOKEN_COOKIE}={cookie}"}) as ws:
        assert json.loads(ws.recv(timeout=5))["data"]["sid"] == "c"
