"""SIGKILL of `farm serve` (a subprocess with its embedded Ray) while prompts it accepted
over HTTP are queued, then `farm serve` again on the same --db: the restarted farm finishes
every accepted prompt, each exactly once in /history, nothing lost."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import session_pids

FARM_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "farm"
START_S = 400  # an embedded Ray and a worker importing torch, on a busy 2-core machine
PROMPTS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Serve:
    """One `farm serve` in a session of its own (so all it starts can be found and ended)."""

    def __init__(self, root: Path, log_name: str):
        self.port = free_port()
        self.log = root / log_name
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "RAY_ADDRESS"))}
        self.proc = subprocess.Popen(
            [str(FARM_BIN), "serve", "--models", "M", "--output", "O", "--db", "state/queue.sqlite",
             "--port", str(self.port), "--no-web-ui"],
            cwd=root, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_answering(self) -> None:
        """Until the HTTP side answers: the dispatcher is up (its worker may still be starting,
        which is fine: accepted prompts wait in the queue)."""
        deadline = time.monotonic() + START_S
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(self.url + "/queue", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "farm serve did not come up: " + self.log.read_text()[-3000:]
            time.sleep(0.25)

    def end(self) -> None:
        """SIGKILL the whole session: what is left of this farm after the test."""
        for pid in [self.proc.pid, *session_pids(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)


@pytest.fixture
def serve_root(tiny_models, tmp_path):
    (tmp_path / "M").symlink_to(tiny_models)
    started: list[Serve] = []
    yield tmp_path, started
    for serve in started:
        serve.end()


def test_sigkill_of_farm_serve_mid_queue_then_a_restart_finishes_the_queue(serve_root, txt2img):
    root, started = serve_root
    t0 = time.monotonic()
    first = Serve(root, "first.log")
    started.append(first)
    first.wait_answering()
    print(f"first answering after {time.monotonic() - t0:.1f} s")
    accepted = []
    with httpx.Client(base_url=first.url, timeout=30) as client:
        for i in range(PROMPTS):
            prompt = json.loads(json.dumps(txt2img))
            # distinct steps with lms (one step count per call): one job per batch
            prompt["3"]["inputs"].update(seed=1200 + i, steps=2 + i, sampler_name="lms")
            answer = client.post("/prompt", json={"prompt": prompt})
            assert answer.status_code == 200, answer.text
            accepted.append(answer.json()["prompt_id"])
        queue = client.get("/queue").json()
    assert queue["queue_pending"], "everything already ran: the kill would prove nothing"
    os.kill(first.proc.pid, signal.SIGKILL)  # acknowledged means in SQLite: each must survive this
    print(f"killed after {time.monotonic() - t0:.1f} s")
    # and its embedded Ray with it, at once, as a crash of the machine would: that Ray goes by
    # itself too, but only after a while (tests/test_cli.py checks that it does), and two
    # dispatchers must never share the file
    first.end()

    second = Serve(root, "second.log")
    started.append(second)
    second.wait_answering()
    print(f"second answering after {time.monotonic() - t0:.1f} s")
    deadline = time.monotonic() + 300
    with httpx.Client(base_url=second.url, timeout=30) as client:
        while True:
            history = client.get("/history").json()
            if all(pid in history for pid in accepted):
                break
            assert time.monotonic() < deadline, f"not finished after the restart: {set(accepted) - set(history)}"
            time.sleep(0.5)
        print(f"all done after {time.monotonic() - t0:.1f} s")
        assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    for prompt_id in accepted:
        status = history[prompt_id]["status"]
        assert status["completed"] and status["status_str"] == "success", status
        (image,) = history[prompt_id]["outputs"]["9"]["images"]
        assert (root / "O" / image["subfolder"] / image["filename"]).is_file()
    ran_again = [history[p]["farm"]["attempts"] for p in accepted]
    assert max(ran_again) <= 2  # a job that was running at the kill counted one attempt, no more
