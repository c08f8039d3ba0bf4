"""Hypothesis for the fuzz tests: one profile, derandomized and without an example
database, so CI runs the same examples every time and writes nothing to the tree; the
per-test example counts keep the folder to seconds."""
from hypothesis import HealthCheck, settings

settings.register_profile(
    "farm-fuzz", derandomize=True, database=None, print_blob=True,
    # the validator walks a models folder and HTTP goes through a real server: slower than
    # hypothesis' defaults expect, and bounded by max_examples instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.load_profile("farm-fuzz")


import contextlib  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402


@contextlib.contextmanager
def serve_in_thread(app, startup_timeout_s: float = 10.0):
    """uvicorn on a loopback port bound before it starts (as tests/server/conftest.py's
    serve, which the fuzz folder cannot import); yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", ws_ping_interval=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def farm_fuzz_url(ray_farm):
    """A server over the session's farm with caps that make any prompt it accepts a tiny
    job (64x64, 2 steps); the farm is left with an empty queue afterwards."""
    from actors.service import RayFarmService
    from farm.server.app import create_app
    from farm.server.config import ServerConfig
    from farm.settings import Limits

    paths = ray_farm.paths
    config = ServerConfig(models_dir=paths.models, input_dir=paths.input, output_dir=paths.output,
                          temp_dir=paths.temp, web_ui=False,
                          limits=Limits(max_width=64, max_height=64, max_batch_size=2, max_steps=2,
                                        max_prompt_chars=2000, max_prompt_bytes=200_000, max_json_depth=32))
    with serve_in_thread(create_app(RayFarmService(ray_farm.cluster, paths), config)) as url:
        yield url
    ray_farm.cluster.call("clear_queue")
    deadline = time.monotonic() + 120
    while ray_farm.status().queue.remaining and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_farm.status().queue.remaining == 0, "jobs the fuzzer queued did not finish"
