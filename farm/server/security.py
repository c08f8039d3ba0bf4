"""The server's guards, as plain ASGI middleware so they cover HTTP and the websocket alike:

- OriginPolicy: ComfyUI's defence against web pages that POST to a server on loopback
  (browsers let any page send such requests): a request whose Origin names another host
  than its Host header, when that host is a loopback address, gets 403; so does any
  request a browser marks `Sec-Fetch-Site: cross-site`. With `cors_origin` set it adds
  CORS headers instead (ComfyUI's --enable-cors-header).
- TokenAuth: with a token configured, every route and the websocket need it, as
  `Authorization: Bearer <token>`, `?token=<token>` (browsers cannot set headers on a
  websocket) or the cookie it sets when a page is opened with `?token=`, so that the web
  UI's own requests and websocket carry it without the UI knowing about tokens. The
  cookie is HttpOnly (page scripts cannot read it) and SameSite=Strict (no other site's
  page can make the browser send it).
- BodyLimit: a request body over the cap gets 413, whether it announces its length or not.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, quote, unquote, urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farm.server.http_errors import error_response

log = logging.getLogger(__name__)

WS_POLICY_VIOLATION = 1008  # closing before accept makes uvicorn answer the handshake with 403


async def _reject(scope: Scope, receive: Receive, send: Send, response: Response) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})
    else:
        await response(scope, receive, send)


async def is_loopback(host: str | None) -> bool:
    """True for a loopback IP, or a name whose every address is loopback."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0].split("%", 1)[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


async def refuses_cross_origin(headers: Headers) -> bool:
    """ComfyUI's origin rule. Ports are compared only when both sides name one, because
    some browsers drop the default port from one header and not the other."""
    if headers.get("sec-fetch-site") == "cross-site":
        return True
    host, origin = headers.get("host"), headers.get("origin")
    if not host or not origin:
        return False
    try:
        origin_url = urlsplit(origin)
        host_url = urlsplit("//" + host.lower())
        origin_port, host_port = origin_url.port, host_url.port
    except ValueError:  # a malformed port: not a request a browser makes
        return True
    host_side = host.lower() if origin_port is not None else host_url.hostname
    origin_side = origin_url.netloc.lower() if host_port is not None else origin_url.hostname
    if not host_side or not origin_side or host_side == origin_side:
        return False
    return await is_loopback(host_url.hostname)


class OriginPolicy:
    def __init__(self, app: ASGIApp, cors_origin: str | None = None):
        self.app = app
        self.cors_origin = cors_origin

    def _cors_headers(self) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": self.cors_origin or "",
            "Access-Control-Allow-Methods": "POST, GET, DELETE, PUT, OPTIONS, PATCH",
            "Access-Control-Allow-Headers": "Content-Type, Authorization",
            "Access-Control-Allow-Credentials": "true",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        preflight = scope["type"] == "http" and scope["method"] == "OPTIONS"
        if self.cors_origin is not None:
            if preflight:
                return await Response(status_code=200, headers=self._cors_headers())(scope, receive, send)
            return await self.app(scope, receive, self._with_cors(send))
        headers = Headers(scope=scope)
        if await refuses_cross_origin(headers):
            log.warning("refused a request whose Origin %r does not match Host %r", headers.get("origin"),
                        headers.get("host"))
            return await _reject(scope, receive, send, Response(status_code=403))
        if preflight:  # answered without CORS headers, so a browser still refuses the real request
            return await Response(status_code=200)(scope, receive, send)
        await self.app(scope, receive, send)

    def _with_cors(self, send: Send) -> Send:
        extra = [(k.lower().encode(), v.encode()) for k, v in self._cors_headers().items()]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        return send_with_cors


TOKEN_COOKIE = "farm_token"


def query_token(scope: Scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


def cookie_token(headers: Headers) -> str | None:
    cookies = SimpleCookie()
    try:
        cookies.load(headers.get("cookie", ""))
    except CookieError:  # a malformed Cookie header: as if none were sent
        return None
    morsel = cookies.get(TOKEN_COOKIE)
    return unquote(morsel.value) if morsel is not None and morsel.value else None


def presented_token(scope: Scope) -> str | None:
    headers = Headers(scope=scope)
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return query_token(scope) or cookie_token(headers)


def token_cookie(token: str) -> bytes:
    """Set-Cookie value: the whole site, this browser session only. Percent-encoded, so a
    token with ';' or spaces survives the cookie syntax."""
    return f"{TOKEN_COOKIE}={quote(token, safe='')}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")


class TokenAuth:
    def __init__(self, app: ASGIApp, token: str | None):
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        given = presented_token(scope)
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            response = error_response(401, "this farm needs a token: send 'Authorization: Bearer <token>' or "
                                      "add ?token=<token>", {"WWW-Authenticate": "Bearer"})
            return await _reject(scope, receive, send, response)
        if scope["type"] == "http" and query_token(scope) is not None and cookie_token(Headers(scope=scope)) != given:
            send = self._setting_cookie(send)
        await self.app(scope, receive, send)

    def _setting_cookie(self, send: Send) -> Send:
        """A valid ?token= is remembered in a cookie, so a bookmark with the token opens the
        UI once and every request the UI makes after that is authorised."""
        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"set-cookie", token_cookie(self.token))]
                message = {**message, "headers": headers}
            await send(message)

        return send_with_cookie


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the server's limit of {limit} bytes")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # a chunked body that never said its length
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, f"request body is larger than the server's limit of {self.max_bytes} bytes")(
            scope, receive, send)
