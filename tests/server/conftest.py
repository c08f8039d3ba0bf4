"""A real uvicorn server on 127.0.0.1 (a free port) in a background thread.

No farm is attached (service=None): these tests cover what the server answers on its own
(validation, files, uploads, node info, security, the websocket greeting). Anything that
needs a queue answers 503 here and is exercised end to end in e2e_flow.py against the
real farm.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import uvicorn

from farm.server.app import create_app
from farm.server.config import ServerConfig


@dataclass(frozen=True)
class RunningServer:
    config: ServerConfig
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)


@contextlib.contextmanager
def serve(app, startup_timeout_s: float = 10.0) -> Iterator[int]:
    """Serve `app` until the block ends; yields the port. The socket is bound before the
    server starts, so no other process can take the port in between."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", ws_ping_interval=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def farm_root(tmp_path) -> Path:
    for name in ("models", "input", "output", "temp"):
        (tmp_path / name).mkdir()
    return tmp_path


@pytest.fixture
def start_server(farm_root) -> Iterator[Callable[..., RunningServer]]:
    """start_server(**ServerConfig options) -> a running server without a farm."""
    with contextlib.ExitStack() as stack:
        def start(**options) -> RunningServer:
            config = ServerConfig.under(farm_root, **options)
            port = stack.enter_context(serve(create_app(None, config)))
            return RunningServer(config, port)

        yield start


@pytest.fixture
def server(start_server) -> RunningServer:
    return start_server()
