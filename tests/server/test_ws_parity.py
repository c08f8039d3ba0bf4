"""The websocket conversation of a prompt, message by message, as ComfyUI holds it, against
the real server over the session's farm (tests/server/conftest.py `farm_server`).

Where each expectation comes from (ComfyUI's own server code, comfyanonymous/ComfyUI):

- server.py, the /ws handler: a new socket first gets `status` {status: {exec_info:
  {queue_remaining}}, sid}; if its first message is {"type": "feature_flags", data}, the
  data is kept per socket and answered with the server's feature flags.
- server.py, PromptServer.send_json / send_bytes: a message names a socket (the prompt's
  client_id) or none, and none means every socket. queue_updated() sends `status` to
  every socket; the prompt queue calls it when a prompt is queued, when the worker takes
  it and when it is done (execution.py, PromptQueue.put / get / task_done).
- execution.py, PromptExecutor.execute_async: `execution_start` {prompt_id}, then
  `execution_cached` {nodes, prompt_id}, the nodes whose outputs are in the cache in the
  prompt's own order; both through add_message, which stamps them (and the closing
  success / error / interrupted message) with `timestamp` in milliseconds. When the run
  gets through, `execution_success` {prompt_id}.
- execution.py, execute(): for a node that runs, the progress registry marks it running
  (a `progress_state`) before `executing` {node, display_node, prompt_id}; a node with ui
  output then sends `executed` {node, display_node, output, prompt_id}; finishing marks
  it finished (another `progress_state`). A node whose outputs are cached is visited only
  when it is an output node (comfy_execution/graph.py ExecutionList adds a cached input
  to no list): it sends `executed` with the ui it cached, no `executing` before it, then
  is marked finished.
- comfy_execution/progress.py, WebUIProgressHandler: `progress_state` {prompt_id, nodes:
  {id: {value, max, state, node_id, prompt_id, display_node_id, parent_node_id,
  real_node_id}}} holds every node that is not pending, on each start, update and finish.
- main.py, hijack_progress: each sampler step sends the registry's update (a
  `progress_state`) and then `progress` {value, max, prompt_id, node}, after checking the
  interrupt flag. main.py, prompt_worker: after the executor returns, task_done (history
  written, `status`), then `executing` {node: null, prompt_id}, the end of the prompt.
- execution.py, handle_execution_error: a node that raised gives `execution_error`
  {prompt_id, node_id, node_type, executed, exception_message, exception_type,
  traceback, current_inputs, current_outputs} (node id and class type are strings;
  exception_type is module.QualifiedName, a builtin's name bare; current_inputs the node's
  inputs as one-item lists; current_outputs the ids cached at the start); an interrupt
  gives `execution_interrupted` {prompt_id, node_id, node_type, executed}, sent to every
  socket when the prompt has no client.
- server.py, POST /interrupt: an empty body interrupts whatever runs; {"prompt_id": X}
  only when X is running.

What the farm does differently, on purpose: `progress_state` goes to the prompt's client
(ComfyUI sends it to every socket; on a shared farm that would show everyone's progress
to everyone); `traceback` stays empty and `current_inputs` shows a model or tensor by its
type name (a stack or a tensor dump from inside torch helps no user); previews are not
generated (ComfyUI's default --preview-method is none too), the framing is tested in
test_broadcast.py.
"""
from __future__ import annotations

import copy
import json
import time
import uuid
from importlib.resources import files

import httpx
from websockets.sync.client import connect

WORKFLOW = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())
DEADLINE_S = 300  # the end of a prompt; generous for CPU workers on CI
PROMPT_ORDER = list(WORKFLOW)  # "3", "4", "5", "6", "7", "8", "9"
OUTPUT_NODE = "9"
LONG_TEXT = "a red lighthouse on a cliff at dusk, waves, " * 400  # ~18,000 characters, ~50 CLIP chunks

KEYS = {
    "execution_start": {"prompt_id", "timestamp"},
    "execution_cached": {"nodes", "prompt_id", "timestamp"},
    "executing": {"node", "display_node", "prompt_id"},
    "progress": {"value", "max", "prompt_id", "node"},
    "progress_state": {"prompt_id", "nodes"},
    "executed": {"node", "display_node", "output", "prompt_id"},
    "execution_success": {"prompt_id", "timestamp"},
    "execution_error": {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                        "traceback", "current_inputs", "current_outputs", "timestamp"},
    "execution_interrupted": {"prompt_id", "node_id", "node_type", "executed", "timestamp"},
}
BOARD_KEYS = {"value", "max", "state", "node_id", "prompt_id", "display_node_id", "parent_node_id", "real_node_id"}


def workflow(seed: int, text: str, prefix: str = "parity/run", steps: int = 2, size: int = 64) -> dict:
    prompt = copy.deepcopy(WORKFLOW)
    prompt["3"]["inputs"].update(seed=seed, steps=steps)
    prompt["5"]["inputs"].update(width=size, height=size, batch_size=1)
    prompt["6"]["inputs"]["text"] = text
    prompt["9"]["inputs"]["filename_prefix"] = prefix
    return prompt


class Session:
    """One client: a socket and an HTTP client, both under one client_id."""

    def __init__(self, base: str):
        self.client_id = uuid.uuid4().hex
        self.http = httpx.Client(base_url=base, timeout=30)
        self.ws = connect(base.replace("http://", "ws://", 1) + f"/ws?clientId={self.client_id}")
        greeting = json.loads(self.ws.recv(timeout=10))
        assert greeting["type"] == "status" and greeting["data"]["sid"] == self.client_id
        assert set(greeting["data"]["status"]["exec_info"]) == {"queue_remaining"}

    def close(self) -> None:
        self.ws.close()
        self.http.close()

    def queue(self, prompt: dict) -> str:
        answer = self.http.post("/prompt", json={"prompt": prompt, "client_id": self.client_id})
        assert answer.status_code == 200, answer.text
        return answer.json()["prompt_id"]

    def until_done(self, prompt_id: str, on_message=None) -> list[dict]:
        """Every message up to and including our prompt's end marker (ComfyUI's example loop)."""
        seen = []
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            frame = self.ws.recv(timeout=DEADLINE_S)
            assert isinstance(frame, str), "no previews are generated"
            message = json.loads(frame)
            seen.append(message)
            if on_message is not None:
                on_message(message)
            data = message["data"]
            if message["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
                return seen
        raise AssertionError(f"prompt {prompt_id} never ended")

    def run(self, prompt: dict, on_message=None) -> tuple[str, list[dict]]:
        prompt_id = self.queue(prompt)
        return prompt_id, self.until_done(prompt_id, on_message)


def check_shapes(prompt_id: str, messages: list[dict]) -> list[dict]:
    """Every message has ComfyUI's keys; returns our prompt's (status aside)."""
    ours = []
    for m in messages:
        kind, data = m["type"], m["data"]
        if kind == "status":
            assert set(data) == {"status"} and set(data["status"]["exec_info"]) == {"queue_remaining"}
            continue
        assert data["prompt_id"] == prompt_id, m  # this client ran nothing else meanwhile
        if kind == "executing" and data["node"] is None:
            assert data == {"node": None, "prompt_id": prompt_id}
        else:
            assert set(data) == KEYS[kind], m
        if kind == "progress_state":
            for node_id, entry in data["nodes"].items():
                assert set(entry) == BOARD_KEYS and entry["node_id"] == entry["display_node_id"] == node_id
                assert entry["state"] in ("running", "finished") and entry["prompt_id"] == prompt_id
        if "timestamp" in KEYS.get(kind, ()):
            assert isinstance(data["timestamp"], int) and data["timestamp"] > 1_600_000_000_000
        ours.append(m)
    # ComfyUI's prompt worker: the queue status (task_done) comes right before the end marker
    assert [m["type"] for m in messages[-2:]] == ["status", "executing"]
    return ours


def expected(prompt: dict, cached: list[str], order: list[str], steps: int) -> list[tuple]:
    """The messages of a prompt that ran to success, as (type, node) pairs, in ComfyUI's
    order for the nodes in `order` (the order the farm ran them; checked topological)."""
    out = [("execution_start", None), ("execution_cached", None)]
    for node in order:
        if node in cached:  # only an output node is visited when cached
            out += [("executed", node), ("progress_state", node)]
            continue
        out += [("progress_state", node), ("executing", node)]
        if prompt[node]["class_type"] == "KSampler":
            out += [("progress_state", node), ("progress", node)] * steps
        if node == OUTPUT_NODE:
            out.append(("executed", node))
        out.append(("progress_state", node))
    return out + [("execution_success", None), ("executing", None)]


def as_pairs(ours: list[dict]) -> list[tuple]:
    pairs = []
    for m in ours:
        data = m["data"]
        node = data.get("node")
        if m["type"] == "progress_state":  # the node whose change it announces
            node = list(data["nodes"])[-1]  # the board keeps the order nodes started in
        pairs.append((m["type"], node))
    return pairs


def check_run(prompt: dict, prompt_id: str, messages: list[dict], steps: int = 2) -> list[dict]:
    """A successful run: the exact sequence ComfyUI would send, given what was cached."""
    ours = check_shapes(prompt_id, messages)
    cached = ours[1]["data"]["nodes"]
    assert cached == [n for n in PROMPT_ORDER if n in cached]  # the prompt's order
    order = []
    for m in ours:
        node = m["data"].get("node")
        if m["type"] in ("executing", "executed") and node is not None and node not in order:
            order.append(node)
    ran = [n for n in order if n not in cached]
    assert set(cached) | set(ran) == set(PROMPT_ORDER) and OUTPUT_NODE in order
    for i, node in enumerate(ran):  # each after the nodes it reads
        links = [v[0] for v in prompt[node]["inputs"].values() if isinstance(v, list)]
        assert all(src in cached or src in ran[:i] for src in links), (node, ran)
    assert as_pairs(ours) == expected(prompt, cached, order, steps)
    # the board grows by each node and ends with every visited node finished
    boards = [m["data"]["nodes"] for m in ours if m["type"] == "progress_state"]
    assert set(boards[-1]) == set(order) and all(e["state"] == "finished" for e in boards[-1].values())
    return ours


def executed_output(ours: list[dict]) -> dict:
    [data] = [m["data"] for m in ours if m["type"] == "executed"]
    assert data["node"] == data["display_node"] == OUTPUT_NODE
    return data["output"]


def run_until(session: Session, make_prompt, want_cached: set[str], tries: int = 4):
    """Run prompts until one finds `want_cached` in the cache (two workers keep a cache
    each, and the farm places a prompt on either): each try that misses warms the worker
    that ran it. Every run is checked in full. Returns the hit and the outputs of the
    misses before it."""
    missed = []
    for attempt in range(tries):
        prompt = make_prompt(attempt)
        prompt_id, messages = session.run(prompt)
        ours = check_run(prompt, prompt_id, messages)
        if set(ours[1]["data"]["nodes"]) == want_cached:
            return ours, missed
        missed.append(executed_output(ours))
    raise AssertionError(f"no run found {sorted(want_cached)} cached in {tries} tries")


def test_first_run_then_cached_repeats_match_comfyui(farm_server):
    session = Session(farm_server)
    try:
        text = f"parity {uuid.uuid4().hex}"  # new to every cache: the text's branch runs
        base = workflow(seed=101, text=text)
        prompt_id, messages = session.run(base)
        ours = check_run(base, prompt_id, messages)
        assert {"6", "3", "8", "9"}.isdisjoint(ours[1]["data"]["nodes"])
        first_images = executed_output(ours)
        assert first_images["images"][0]["subfolder"] == "parity"

        # the same prompt again: every node cached; the output node's ui is sent again
        repeat, missed = run_until(session, lambda _: copy.deepcopy(base), set(PROMPT_ORDER))
        assert [m["type"] for m in repeat] == ["execution_start", "execution_cached", "executed", "progress_state",
                                               "execution_success", "executing"]
        assert repeat[1]["data"]["nodes"] == PROMPT_ORDER
        assert executed_output(repeat) in [first_images, *missed]  # the images that worker saved for it

        # only the seed changes: the loader, the latent and both prompts come from the cache
        reseeded, _ = run_until(session, lambda i: workflow(seed=200 + i, text=text), {"4", "5", "6", "7"})
        assert [m["data"]["node"] for m in reseeded if m["type"] == "executing" and m["data"]["node"]] == \
            ["3", "8", "9"]

        # only the SaveImage prefix changes: everything but the output node is cached
        renamed, _ = run_until(session, lambda i: workflow(seed=101, text=text, prefix=f"parity/other{i}"),
                               set(PROMPT_ORDER) - {OUTPUT_NODE})
        assert executed_output(renamed)["images"][0]["filename"].startswith("other")
    finally:
        session.close()


def test_a_node_error_matches_comfyui(farm_server, ray_farm):
    (ray_farm.paths.input / "parity-broken.png").write_bytes(b"this is not an image")
    prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
              "1": {"class_type": "LoadImage", "inputs": {"image": "parity-broken.png"}},
              "2": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["4", 2]}},
              "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["4", 2]}},
              "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "parity/err"}}}
    session = Session(farm_server)
    try:
        prompt_id, messages = session.run(prompt)
        ours = check_shapes(prompt_id, messages)
        cached = ours[1]["data"]["nodes"]
        loader = [] if "4" in cached else [("progress_state", "4"), ("executing", "4"), ("progress_state", "4")]
        failing = [("progress_state", "1"), ("executing", "1")]
        tail = [("execution_error", None), ("executing", None)]
        assert as_pairs(ours) in ([("execution_start", None), ("execution_cached", None), *loader, *failing, *tail],
                                  [("execution_start", None), ("execution_cached", None), *failing, *tail])
        error = ours[-2]["data"]
        assert error["node_id"] == "1" and error["node_type"] == "LoadImage"
        assert error["executed"] == [n for n, _ in loader[:1]]  # what ran before it, cached nodes not
        assert error["current_outputs"] == cached
        assert error["exception_type"] == "PIL.UnidentifiedImageError"
        assert "parity-broken.png" in error["exception_message"]
        assert error["current_inputs"] == {"image": ["parity-broken.png"]}
        assert isinstance(error["traceback"], list)
        history = session.http.get(f"/history/{prompt_id}").json()[prompt_id]
        assert history["status"]["status_str"] == "error"
        assert [m[0] for m in history["status"]["messages"]] == ["execution_start", "execution_cached",
                                                                   "execution_error"]
    finally:
        session.close()


def interrupted_run(session: Session, prompt: dict, stop_on, stop) -> tuple[str, list[dict]]:
    """Run `prompt`, calling stop(prompt_id) once a message satisfies stop_on."""
    prompt_id = session.queue(prompt)
    sent = []

    def watch(message):
        if not sent and message["data"].get("prompt_id") == prompt_id and stop_on(message):
            sent.append(True)
            stop(prompt_id)

    return prompt_id, session.until_done(prompt_id, watch)


def check_interrupted(prompt_id: str, messages: list[dict]) -> dict:
    ours = check_shapes(prompt_id, messages)
    kinds = [m["type"] for m in ours]
    assert kinds[-2:] == ["execution_interrupted", "executing"]
    assert "execution_success" not in kinds and "executed" not in kinds
    stop = ours[-2]["data"]
    executing = [m["data"]["node"] for m in ours if m["type"] == "executing" and m["data"]["node"]]
    assert stop["node_id"] == executing[-1]  # the node that was running
    assert stop["node_type"] == WORKFLOW[stop["node_id"]]["class_type"]
    assert stop["node_id"] not in stop["executed"] and set(stop["executed"]) <= set(executing)
    return stop


# 200 steps at 512x512: about a minute on a CPU worker, so a run that ends early was stopped
LONG_STEPS, LONG_SIZE = 200, 512


def test_interrupt_during_sampling_ends_the_prompt_then_the_next_one_runs(farm_server):
    session = Session(farm_server)
    try:
        prompt = workflow(seed=301, text=f"parity {uuid.uuid4().hex}", steps=LONG_STEPS, size=LONG_SIZE)
        prompt_id, messages = interrupted_run(session, prompt, lambda m: m["type"] == "progress",
                                              lambda _: session.http.post("/interrupt"))  # ComfyUI's empty body
        stop = check_interrupted(prompt_id, messages)
        assert (stop["node_id"], stop["node_type"]) == ("3", "KSampler")
        steps = [m["data"]["value"] for m in messages if m["type"] == "progress"]
        assert steps and max(steps) < LONG_STEPS
        history = session.http.get(f"/history/{prompt_id}").json()[prompt_id]
        assert history["status"]["messages"][-1][0] == "execution_interrupted"

        after = workflow(seed=302, text=f"parity {uuid.uuid4().hex}")
        after_id, after_messages = session.run(after)
        check_run(after, after_id, after_messages)  # the worker goes on as if nothing happened
    finally:
        session.close()


def test_interrupt_during_text_encoding_of_a_long_prompt(farm_server):
    session = Session(farm_server)
    try:
        prompt = workflow(seed=401, text=LONG_TEXT + uuid.uuid4().hex, steps=LONG_STEPS, size=LONG_SIZE)
        prompt_id, messages = interrupted_run(
            session, prompt, lambda m: m["type"] == "executing" and m["data"]["node"] == "6",
            lambda pid: session.http.post("/interrupt", json={"prompt_id": pid}))  # only this prompt
        stop = check_interrupted(prompt_id, messages)
        assert "3" not in stop["executed"]  # it never got through sampling
        after = workflow(seed=402, text=f"parity {uuid.uuid4().hex}")
        after_id, after_messages = session.run(after)
        check_run(after, after_id, after_messages)
    finally:
        session.close()


def test_cancel_of_a_running_prompt_reaches_the_sampler(farm_server):
    session = Session(farm_server)
    try:
        prompt = workflow(seed=501, text=f"parity {uuid.uuid4().hex}", steps=LONG_STEPS, size=LONG_SIZE)
        prompt_id, messages = interrupted_run(
            session, prompt, lambda m: m["type"] == "progress",
            lambda pid: session.http.post(f"/api/jobs/{pid}/cancel"))
        stop = check_interrupted(prompt_id, messages)
        assert stop["node_id"] == "3"
        assert session.http.get(f"/api/jobs/{prompt_id}").json()["status"] == "cancelled"
    finally:
        session.close()
