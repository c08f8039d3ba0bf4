"""Generated request bodies and query strings against the real HTTP server: POST /prompt
and /api/prompt, /upload/image and /view on a server of its own in a subprocess (so its
memory can be read), and /queue, /interrupt, /history (and valid prompts) on a server over
the session's Ray farm. Never a 500, never a hang (every request has a timeout), the
server's RSS stays bounded, and every 400 is ComfyUI's shape: POST /prompt's
{"error": {type, message, details, extra_info}, "node_errors": {...}}, elsewhere ComfyUI's
bare 400 or the farm's {"error": message}."""
from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from workflow_strategies import JUNK, NASTY_TEXT, SCALARS, mutated, workflows

TIMEOUT_S = 20  # a request that takes longer is a hang
LIMITS = dict(max_width=64, max_height=64, max_batch_size=2, max_steps=2, max_prompt_chars=2000,
              max_prompt_bytes=200_000, max_json_depth=32)
MAX_BODY = 1024 * 1024

SERVER = """
import socket, sys
from pathlib import Path
from urllib.parse import quote
import uvicorn
from farm.server.app import create_app
from farm.server.config import ServerConfig
from farm.settings import Limits
root = Path(sys.argv[1])
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
config = ServerConfig.under(root, limits=Limits(**{limits!r}), max_body_bytes={max_body}, web_ui=False)
app = create_app(None, config)
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on")).run(sockets=[sock])
"""


def png(size: int = 8, mode: str = "RGBA") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, len(mode)), 99, dtype=np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Subprocess:
    proc: subprocess.Popen
    url: str
    root: Path

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


FILE_SIZE_CAP = 256 * 1024  # the lone server's "disk": no file it writes may grow past this


def _small_disk() -> None:
    """RLIMIT_FSIZE in the server's process: a write past the cap fails as on a full disk
    (EFBIG where a full disk says ENOSPC; Python ignores SIGXFSZ, so it is an OSError),
    unprivileged and for that process only."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_CAP, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.fixture(scope="module")
def lone_server(tiny_models, tmp_path_factory):
    """A server without a farm, in its own process: what it answers alone, and its RSS."""
    root = tmp_path_factory.mktemp("fuzzserver")
    (root / "models").symlink_to(tiny_models)
    for name in ("input", "output", "temp"):
        (root / name).mkdir()
    (root / "input" / "in.png").write_bytes(png())
    (root / "output" / "out.png").write_bytes(png())
    code = SERVER.format(limits=LIMITS, max_body=MAX_BODY)
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE,
                            stderr=open(root / "server.log", "w"), text=True, preexec_fn=_small_disk)
    try:
        port = int(proc.stdout.readline() or 0)
        assert port, (root / "server.log").read_text()[-2000:]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/system_stats", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-2000:]
                time.sleep(0.2)
        yield Subprocess(proc, url, root)
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def http(lone_server):
    with httpx.Client(base_url=lone_server.url, timeout=TIMEOUT_S) as client:
        yield client


def check_answer(response: httpx.Response, prompt_route: bool = False) -> None:
    """The properties every answer keeps."""
    assert response.status_code < 500 or response.status_code == 503, (response.status_code, response.text[:500])
    assert response.status_code != 422  # FastAPI's own shape, not ComfyUI's
    if response.status_code == 503:
        assert "no farm is attached" in response.json()["error"]
    if response.status_code != 400:
        return
    if prompt_route:
        body = response.json()
        assert set(body) == {"error", "node_errors"}, body
        assert {"type", "message", "details", "extra_info"} <= set(body["error"]), body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert isinstance(body["node_errors"], dict)
        for entry in body["node_errors"].values():
            assert {"errors", "dependent_outputs", "class_type"} <= set(entry)
    elif response.content:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body


def as_json(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


RAW_BODIES = st.sampled_from([
    b"", b"   ", b"{", b'{"prompt": ', b"null", b"[]", b"1e999999", b"1" * 5000, b"NaN", b"\xff\xfe\x00",
    b"[" * 100_000, b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"prompt": {"1": {"class_type": "\xed\xa0\x80"}}}',
    b'{"prompt": "' + b"x" * 500_000 + b'"}', b"x" * (MAX_BODY + 1),
])


@st.composite
def prompt_bodies(draw, base: dict) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(RAW_BODIES)
    if kind == 1:
        return draw(st.binary(max_size=200))
    prompt = draw(mutated(base)) if kind <= 5 else draw(workflows(max_nodes=5))
    body: dict = {"prompt": prompt}
    for key, strategy in (("prompt_id", SCALARS | st.uuids().map(str)), ("client_id", SCALARS),
                          ("number", SCALARS), ("front", SCALARS), ("extra_data", JUNK),
                          ("partial_execution_targets", JUNK | st.lists(st.sampled_from(["9", "3", "x"])))):
        if draw(st.integers(0, 3)) == 0:
            body[key] = draw(strategy)
    if draw(st.integers(0, 9)) == 0:
        body = draw(JUNK)  # not even an object with a prompt
    return as_json(body)


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_post_prompt_never_500s(http, txt2img, data):
    route = data.draw(st.sampled_from(["/prompt", "/api/prompt"]))
    body = data.draw(prompt_bodies(txt2img))
    response = http.post(route, content=body, headers={"Content-Type": "application/json"})
    check_answer(response, prompt_route=True)


NAMES = st.one_of(NASTY_TEXT, st.text(max_size=30), st.sampled_from(["in.png", "out.png", "x.png", "a/b.png"]))
FIELDS = st.one_of(NASTY_TEXT, st.text(max_size=20), st.sampled_from(["input", "temp", "output", "true", "1", ""]))


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "fuzzboundary") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n").encode("utf-8", "surrogatepass")
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@st.composite
def upload_requests(draw) -> tuple[bytes, str]:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        content_type = draw(st.sampled_from(["multipart/form-data; boundary=fuzzboundary", "multipart/form-data",
                                             "application/json", "multipart/form-data; boundary=", "text/plain"]))
        return draw(st.binary(max_size=300) | RAW_BODIES), content_type
    image = draw(st.sampled_from([png(), png(4, "RGB"), b"", b"GIF89a", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40]))
    parts = [("image", draw(NAMES | st.none()), image)]
    for name in draw(st.lists(st.sampled_from(["type", "subfolder", "overwrite", "junk"]), max_size=4, unique=True)):
        parts.append((name, None, draw(FIELDS).encode("utf-8", "surrogatepass")))
    if draw(st.booleans()):
        parts = parts[::-1]
    return multipart(parts), "multipart/form-data; boundary=fuzzboundary"


@settings(max_examples=100, deadline=None)
@given(request=upload_requests())
def test_upload_image_never_500s(http, request):
    body, content_type = request
    response = http.post(data=None, url="/upload/image", content=body, headers={"Content-Type": content_type})
    check_answer(response)
    if response.status_code == 200:
        stored = response.json()
        assert stored["type"] in ("input", "temp", "output") and stored["name"]


VIEW_VALUES = st.sampled_from(["webp;90", "jpeg;80", "jpeg;", "webp;x", "png;5", "jpeg;\u00b2", "webp;-1",
                               "webp;99999999999999999999", "rgb", "a", "rgba", "in.png [input]", "out.png"])


def sendable(text: str) -> bool:
    """httpx cannot put a lone surrogate in a URL (raw bytes that do not decode are sent below)."""
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


RAW_QUERIES = st.sampled_from(["filename=%ED%A0%80", "filename=%00", "filename=%ff%fe", "filename=a&subfolder=%00",
                               "filename=out.png&subfolder=%2e%2e", "filename=out.png&preview=webp%3B%ff",
                               "filename=" + "y" * 5000, "filename=out.png&subfolder=" + "q/" * 3000])


@settings(max_examples=120, deadline=None)
@given(params=st.fixed_dictionaries(
    {"filename": st.sampled_from(["out.png", "in.png [input]", "in.png"]) | NAMES.filter(sendable)},
    optional={name: (VIEW_VALUES | FIELDS).filter(sendable)
              for name in ("type", "subfolder", "preview", "channel", "junk")}) | RAW_QUERIES)
def test_view_never_500s(http, params):
    response = http.get("/view?" + params) if isinstance(params, str) else http.get("/view", params=params)
    check_answer(response)


def test_an_upload_the_disk_cannot_hold_is_a_clear_error_and_leaves_nothing(lone_server, http):
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > FILE_SIZE_CAP
    headers = {"Content-Type": "multipart/form-data; boundary=fuzzboundary"}
    response = http.post("/upload/image", content=multipart([("image", "full.png", buffer.getvalue())]), headers=headers)
    assert response.status_code == 507, response.text
    assert response.json()["error"].startswith("the upload could not be stored in input/: File too large")
    assert not (lone_server.root / "input" / "full.png").exists()  # no truncated file is left to be served
    small = http.post("/upload/image", content=multipart([("image", "full.png", png())]), headers=headers)
    assert small.status_code == 200 and small.json()["name"] == "full.png"  # the name was not burnt either


def test_memory_stays_bounded_under_repeated_bad_requests(lone_server, http, txt2img):
    """The largest answers the fuzzers provoke, over and over: the server's RSS levels off
    (a per-request leak of a refused 1 MB body would add ~100 MB over these rounds)."""
    big_prompt = as_json({"prompt": {**txt2img, "6": {**txt2img["6"], "inputs": {
        **txt2img["6"]["inputs"], "text": "x" * 1999}}}, "extra_data": {"n": "y" * (MAX_BODY // 2)}})
    requests = [
        ("/prompt", b"x" * (MAX_BODY + 1), "application/json"),  # 413 before it is read
        ("/prompt", b"[" * 200_000, "application/json"),
        ("/prompt", big_prompt, "application/json"),
        ("/upload/image", multipart([("image", "big.png", b"\x89PNG" + b"\x00" * (MAX_BODY // 2))]),
         "multipart/form-data; boundary=fuzzboundary"),
    ]

    def round_() -> None:
        for route, body, content_type in requests:
            check_answer(http.post(route, content=body, headers={"Content-Type": content_type}),
                         prompt_route=route == "/prompt")

    for _ in range(10):
        round_()
    settled = lone_server.rss_mb()
    for _ in range(25):
        round_()
    grown = lone_server.rss_mb() - settled
    assert grown < 60, f"the server's RSS grew {grown:.0f} MB over 100 refused requests (from {settled:.0f} MB)"
    assert lone_server.proc.poll() is None


# -- the queue routes, on a server over the session's Ray farm ---------------------------------

ACTIONS = st.fixed_dictionaries({}, optional={
    "clear": SCALARS, "delete": JUNK | st.lists(st.text(max_size=36) | st.uuids().map(str), max_size=3),
    "prompt_id": SCALARS | st.uuids().map(str), "junk": JUNK})


@st.composite
def queue_requests(draw, base: dict) -> tuple[str, str, object]:
    """(method, path, body bytes or query dict). Valid prompts get through: the farm's caps
    (LIMITS) keep each to a 64x64, 2-step job."""
    route = draw(st.sampled_from(["/queue", "/interrupt", "/history", "/api/history", "/api/queue", "/prompt",
                                  "/history/x", "/api/interrupt"]))
    if route.startswith("/history/"):
        return "GET", "/history/" + quote(draw(st.text(min_size=1, max_size=40).filter(sendable)), safe=""), None
    if route in ("/history", "/api/history") and draw(st.booleans()):
        query = draw(st.dictionaries(st.sampled_from(["max_items", "offset", "x"]),
                                     st.integers(-(2**70), 2**70).map(str) | FIELDS, max_size=2))
        return "GET", route, query
    if route == "/prompt":
        return "POST", route, draw(prompt_bodies(base))
    if draw(st.integers(0, 4)) == 0:
        return "POST", route, draw(RAW_BODIES | st.binary(max_size=50))
    return "POST", route, as_json(draw(ACTIONS | JUNK))


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_queue_routes_on_the_farm_never_500(farm_fuzz_url, txt2img, data):
    method, path, payload = data.draw(queue_requests(txt2img))
    with httpx.Client(base_url=farm_fuzz_url, timeout=TIMEOUT_S) as client:
        if method == "GET":
            response = client.get(path, params=payload)
        else:
            response = client.post(path, content=payload, headers={"Content-Type": "application/json"})
    check_answer(response, prompt_route=path.endswith("/prompt"))
    assert response.status_code != 503, response.text
