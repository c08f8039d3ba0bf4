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


# -- a server in front of the real farm (tests/conftest.py's session `ray_farm`) --------------

@pytest.fixture
def farm_server_config(ray_farm) -> ServerConfig:
    paths = ray_farm.paths
    return ServerConfig(models_dir=paths.models, input_dir=paths.input, output_dir=paths.output,
                        temp_dir=paths.temp)


@pytest.fixture
def farm_server(ray_farm, farm_server_config) -> Iterator[str]:
    """Base URL of create_app(RayFarmService) on loopback, over the session's farm."""
    from actors.service import RayFarmService

    with serve(create_app(RayFarmService(ray_farm.cluster, ray_farm.paths), farm_server_config)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def restart_farm(ray_farm, farm_server_config) -> Iterator[Callable[[], str]]:
    """Kill the dispatcher (Ray restarts its process, which resumes the queue from SQLite) and
    serve a fresh app on a new port: every bit of queue state the HTTP side sees must come
    back from the database. The session's workers keep running, as GPU nodes would."""
    from actors.service import RayFarmService

    with contextlib.ExitStack() as stack:
        def restart() -> str:
            ray_farm.cluster.kill_dispatcher(restart=True)
            app = create_app(RayFarmService(ray_farm.cluster, ray_farm.paths), farm_server_config)
            return f"http://127.0.0.1:{stack.enter_context(serve(app))}"

        yield restart


@pytest.fixture
def start_farm_server(ray_farm, farm_server_config) -> Iterator[Callable[..., str]]:
    """start_farm_server(**ServerConfig options) -> base URL of a server over the session's farm."""
    from dataclasses import replace

    from actors.service import RayFarmService

    with contextlib.ExitStack() as stack:
        def start(**options) -> str:
            app = create_app(RayFarmService(ray_farm.cluster, ray_farm.paths), replace(farm_server_config, **options))
            return f"http://127.0.0.1:{stack.enter_context(serve(app))}"

        yield start
