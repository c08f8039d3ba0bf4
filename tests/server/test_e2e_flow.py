"""End-to-end flows against a server backed by the real farm on a local Ray cluster
(fixtures in tests/server/conftest.py: `farm_server`, `restart_farm`).

Only ComfyUI's public protocol is used, the way ComfyUI's websocket example script and the
PyPI clients use it, so a pass means such clients work unchanged.
"""
from __future__ import annotations

import copy
import io
import json
import time
import uuid
from importlib.resources import files

import httpx
from PIL import Image
from websockets.sync.client import connect

WORKFLOW = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())
DEADLINE_S = 600  # generous: CPU workers on CI


def small_workflow(seed: int, steps: int = 2, prefix: str = "e2e/run") -> dict:
    prompt = copy.deepcopy(WORKFLOW)
    prompt["3"]["inputs"].update(seed=seed, steps=steps)
    prompt["5"]["inputs"].update(width=64, height=64, batch_size=1)
    prompt["9"]["inputs"]["filename_prefix"] = prefix
    return prompt


def ws_url(base: str, client_id: str) -> str:
    return base.replace("http://", "ws://", 1) + f"/ws?clientId={client_id}"


def queue_prompt(http: httpx.Client, prompt: dict, client_id: str | None = None, **extra) -> dict:
    body = {"prompt": prompt, **extra}
    if client_id is not None:
        body["client_id"] = client_id
    answer = http.post("/prompt", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_for_history(http: httpx.Client, prompt_ids: list[str], deadline_s: float = DEADLINE_S) -> dict:
    deadline = time.monotonic() + deadline_s
    while True:
        history = http.get("/history").json()
        if all(pid in history for pid in prompt_ids):
            return history
        assert time.monotonic() < deadline, f"{len(set(prompt_ids) - set(history))} prompts never finished"
        time.sleep(0.2)


def messages_until_done(ws, prompt_id: str) -> list[dict]:
    """ComfyUI's example loop: read until `executing` with node null for our prompt."""
    seen = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        frame = ws.recv(timeout=DEADLINE_S)
        if isinstance(frame, bytes):  # a preview: uint32 type 1, uint32 format, image
            assert frame[:4] == b"\0\0\0\1" and frame[4:8] in (b"\0\0\0\1", b"\0\0\0\2")
            continue
        message = json.loads(frame)
        seen.append(message)
        data = message["data"]
        if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return seen
    raise AssertionError("the prompt never finished")


def test_comfyui_websocket_example_flow(farm_server):
    client_id = uuid.uuid4().hex
    prompt = small_workflow(seed=1234)
    with httpx.Client(base_url=farm_server, timeout=30) as http, connect(ws_url(farm_server, client_id)) as ws:
        greeting = json.loads(ws.recv(timeout=10))
        assert greeting["type"] == "status" and greeting["data"]["sid"] == client_id
        queued = queue_prompt(http, prompt, client_id)
        assert queued["node_errors"] == {}
        prompt_id = queued["prompt_id"]
        seen = messages_until_done(ws, prompt_id)

        ours = [m for m in seen if m["data"].get("prompt_id") == prompt_id]
        kinds = [m["type"] for m in ours]
        assert kinds[0] == "execution_start"
        assert "execution_success" in kinds and "execution_error" not in kinds
        assert kinds.index("execution_success") < len(kinds) - 1  # executing/null comes last
        executed_nodes = [m["data"]["node"] for m in ours if m["type"] == "executing" and m["data"]["node"]]
        assert set(executed_nodes) <= set(prompt) and "3" in executed_nodes and "9" in executed_nodes
        steps = [m["data"] for m in ours if m["type"] == "progress"]
        assert steps and steps[-1]["value"] == steps[-1]["max"] == 2 and steps[-1]["node"] == "3"
        executed = [m["data"] for m in ours if m["type"] == "executed"]
        assert [e["node"] for e in executed] == ["9"]
        images = executed[0]["output"]["images"]
        assert len(images) == 1 and images[0]["type"] == "output" and images[0]["subfolder"] == "e2e"

        history = http.get(f"/history/{prompt_id}").json()[prompt_id]
        assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
        assert history["outputs"]["9"]["images"] == images
        assert history["prompt"][1] == prompt_id and history["prompt"][2] == prompt
        assert history["prompt"][3]["client_id"] == client_id
        assert history["prompt"][4] == ["9"]

        png = http.get("/view", params=images[0])
        assert png.status_code == 200
        with Image.open(io.BytesIO(png.content)) as img:
            assert img.size == (64, 64)
            assert json.loads(img.text["prompt"]) == prompt  # ComfyUI's metadata chunk

        job = http.get(f"/api/jobs/{prompt_id}").json()
        assert job["status"] == "completed" and job["outputs_count"] == 1
        assert job["execution_start_time"] <= job["execution_end_time"]


def test_fifty_prompts_queue_and_history_agree(farm_server):
    count = 50
    with httpx.Client(base_url=farm_server, timeout=30) as http:
        prompts = [small_workflow(seed=i, steps=1, prefix=f"e2e/fifty_{i}") for i in range(count)]
        queued = [queue_prompt(http, p) for p in prompts]
        ids = [q["prompt_id"] for q in queued]
        sent = dict(zip(ids, prompts))
        assert len(set(ids)) == count
        numbers = [q["number"] for q in queued]
        assert numbers == sorted(numbers) and len(set(numbers)) == count  # the counter only grows

        deadline = time.monotonic() + DEADLINE_S
        while True:
            # The queue first, then history: a prompt that finishes in between shows up in
            # both, but a prompt can never be missing from both.
            queue = http.get("/queue").json()
            history = http.get("/history").json()
            in_queue = [item[1] for item in queue["queue_running"] + queue["queue_pending"]]
            assert len(in_queue) == len(set(in_queue)), "a prompt is queued twice"
            for number, pid, prompt, extra_data, outputs in queue["queue_running"] + queue["queue_pending"]:
                if pid in sent:
                    assert prompt == sent[pid] and outputs == ["9"]
            missing = [pid for pid in ids if pid not in in_queue and pid not in history]
            assert missing == [], f"{len(missing)} prompts are neither queued nor finished"
            if all(pid in history for pid in ids):
                break
            assert time.monotonic() < deadline, "the farm did not finish 50 tiny prompts in time"
            time.sleep(0.2)

        assert http.get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}
        for pid in ids:
            assert history[pid]["status"]["status_str"] == "success"
        filenames = [history[pid]["outputs"]["9"]["images"][0]["filename"] for pid in ids]
        assert len(set(filenames)) == count  # no two prompts wrote the same file
        jobs = http.get("/api/jobs", params={"status": "completed", "limit": 1000}).json()
        assert set(ids) <= {j["id"] for j in jobs["jobs"]}
        page = http.get("/api/jobs", params={"status": "completed", "limit": 10, "offset": 5}).json()
        assert len(page["jobs"]) == 10 and page["pagination"]["offset"] == 5
        assert page["pagination"]["total"] == jobs["pagination"]["total"]
        assert page["pagination"]["has_more"] is (15 < jobs["pagination"]["total"])
        newest_first = [j["create_time"] for j in jobs["jobs"]]
        assert newest_first == sorted(newest_first, reverse=True)
        assert http.get("/history", params={"max_items": 3}).json().keys() <= history.keys()
        assert len(http.get("/history", params={"max_items": 3}).json()) == 3


def test_restart_mid_queue_loses_nothing(farm_server, restart_farm):
    count = 12
    with httpx.Client(base_url=farm_server, timeout=30) as http:
        ids = [queue_prompt(http, small_workflow(seed=100 + i, steps=3, prefix="e2e/restart"))["prompt_id"]
               for i in range(count)]
        deadline = time.monotonic() + DEADLINE_S
        while not http.get("/history").json():  # restart once at least one is done and others wait
            assert time.monotonic() < deadline
            time.sleep(0.1)
    base = restart_farm()
    with httpx.Client(base_url=base, timeout=30) as http:
        queue = http.get("/queue").json()
        history = http.get("/history").json()
        survivors = {item[1] for item in queue["queue_running"] + queue["queue_pending"]} | set(history)
        assert set(ids) <= survivors, "a prompt acknowledged before the restart is gone"
        history = wait_for_history(http, ids)
        for pid in ids:
            assert history[pid]["status"]["status_str"] == "success"
        assert http.get("/prompt").json()["exec_info"]["queue_remaining"] == 0


def test_front_cancel_and_delete(farm_server):
    with httpx.Client(base_url=farm_server, timeout=30) as http:
        # More than the farm holds at once (2 workers, each with two batches of 8 in flight and
        # one in reserve: 48), queued in one request (a tiny 64 px batch takes well under a
        # second on a CPU: prompts queued one by one drain nearly as fast as they come), so
        # that the last ones still wait, behind several batches, while they are cancelled
        answer = http.post("/batch", json={"prompt": small_workflow(seed=7000, steps=20),
                                           "overrides": [{"3.seed": 7000 + i} for i in range(96)]})
        assert answer.status_code == 200, answer.text
        blockers = answer.json()["prompt_ids"]
        front = queue_prompt(http, small_workflow(seed=99, steps=1), front=True)["prompt_id"]
        pending = [item[1] for item in http.get("/queue").json()["queue_pending"]]
        if front in pending:
            assert pending[0] == front  # ahead of everything that waits
        waiting = [pid for pid in pending if pid in blockers]
        assert len(waiting) >= 17, "the blockers started too soon: queue more of them for this farm"
        victim, deleted = waiting[-1], waiting[-2]  # the last to start: still waiting a moment later

        assert http.post(f"/api/jobs/{victim}/cancel").json() == {"cancelled": True}
        assert http.post(f"/api/jobs/{victim}/cancel").json() == {"cancelled": False}  # idempotent
        assert http.post("/queue", json={"delete": [deleted]}).status_code == 200

        rest = [pid for pid in blockers if pid not in (victim, deleted)] + [front]
        history = wait_for_history(http, rest)
        assert victim not in history and deleted not in history  # dequeued prompts never run
        assert http.get(f"/api/jobs/{victim}").status_code == 404

        assert http.post("/history", json={"delete": [rest[0]]}).status_code == 200
        assert http.get(f"/history/{rest[0]}").json() == {}


def test_batch_route_queues_one_prompt_per_override(farm_server):
    with httpx.Client(base_url=farm_server, timeout=30) as http:
        answer = http.post("/batch", json={"prompt": small_workflow(seed=0, steps=1),
                                           "overrides": [{"3.seed": s} for s in (11, 12, 13)]})
        assert answer.status_code == 200, answer.text
        ids = answer.json()["prompt_ids"]
        assert len(ids) == 3
        history = wait_for_history(http, ids)
        assert [history[pid]["prompt"][2]["3"]["inputs"]["seed"] for pid in ids] == [11, 12, 13]
        workers = http.get("/workers").json()
        assert workers and all("tiers" in w and "backlog" in w for w in workers)
        assert http.get("/system_stats").json()["devices"]
