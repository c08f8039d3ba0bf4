"""ComfyUI's own web UI and the farm dashboard in a real browser (headless Chromium from
Debian, driven by Playwright) against a real server over the session's Ray farm.

Skipped, saying why, where Chromium, Playwright or the frontend package is missing
(.ci/run installs all three). Screenshots go to tests/artifacts/ (ignored by git, kept by CI).
"""
from __future__ import annotations

import copy
import json
import shutil
import time
import uuid
from importlib.resources import files
from pathlib import Path

import httpx
import pytest

from farm.server.routes.frontend import find_frontend
from farm.server.security import TOKEN_COOKIE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                                                   "(pip install playwright; .ci/run does)")
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no Chromium (apt-get install -y chromium)"),
    pytest.mark.skipif(find_frontend(None) is None,
                       reason="comfyui-frontend-package is not installed (pip install 'renderfarm[ui]')"),
]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 900}
DEADLINE_MS = 300_000  # CPU workers on a busy 2-core CI box
WORKFLOW = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())
# What the UI asks for that ComfyUI itself answers 404 for, in a fresh user folder: a user
# stylesheet nobody wrote, saved templates, the workflows/subgraphs folders before the first
# save, and the workflows folder's index file (the UI reads each 404 as "none yet").
EXPECTED_404 = ("/user.css", "/api/userdata/user.css", "/api/userdata/comfy.templates.json",
                "/api/userdata?dir=workflows&", "/api/userdata?dir=subgraphs&",
                "/api/userdata/workflows%2F.index.json")


def small_workflow(prefix: str) -> dict:
    prompt = copy.deepcopy(WORKFLOW)
    prompt["3"]["inputs"].update(seed=int(time.time() * 1000) % 2**31, steps=2)
    prompt["5"]["inputs"].update(width=64, height=64, batch_size=1)
    prompt["9"]["inputs"]["filename_prefix"] = prefix
    return prompt


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module; Playwright gives it a fresh profile folder of its own
    and each test a fresh context (no cookies or storage carried between tests)."""
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


class PageLog:
    """What the page asked of the farm and what its websocket got."""

    def __init__(self, page, origin: str):
        self.failed: list[tuple[int, str]] = []
        self.frames: list[dict] = []
        page.on("response", lambda r: self._response(r, origin))
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _response(self, response, origin: str) -> None:
        if response.url.startswith(origin) and response.status >= 400:
            self.failed.append((response.status, response.url[len(origin):]))

    def _frame(self, payload) -> None:
        if isinstance(payload, str):
            self.frames.append(json.loads(payload))

    def events(self, prompt_id: str) -> list[dict]:
        return [f for f in self.frames if f.get("data", {}).get("prompt_id") == prompt_id]

    def unexpected_failures(self) -> list[tuple[int, str]]:
        return [(s, u) for s, u in self.failed if not (s == 404 and u.startswith(EXPECTED_404))]


def open_ui(browser, url: str):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    origin = url.split("/?")[0].rstrip("/")
    log = PageLog(page, origin)
    page.goto(url)
    page.wait_for_function("() => window.app && window.app.graph && window.app.api", timeout=DEADLINE_MS)
    page.wait_for_function("() => document.querySelector('[data-testid=queue-button]')", timeout=DEADLINE_MS)
    return context, page, log


def skip_first_run_dialog(base: str) -> None:
    """The templates browser opens on a user's first visit; this user has seen it."""
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.post("/api/settings", json={"Comfy.TutorialCompleted": True}).status_code == 200


def a_failed_job(base: str, models: Path) -> str:
    """A prompt that fails on the worker (its checkpoint is no safetensors file inside), so
    the UI's jobs list holds a failure, as any farm's does after a while."""
    broken = models / "checkpoints" / f"broken-{uuid.uuid4().hex[:8]}.safetensors"
    broken.write_bytes(b"not a safetensors file")
    prompt = small_workflow("browser/broken")
    prompt["4"]["inputs"]["ckpt_name"] = broken.name
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            prompt_id = http.post("/prompt", json={"prompt": prompt}).json()["prompt_id"]
            deadline = time.monotonic() + 120
            while not http.get(f"/history/{prompt_id}").json() and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        broken.unlink()
    return prompt_id


def test_comfyui_ui_queues_a_workflow_and_shows_its_image(farm_server, ray_farm, browser):
    skip_first_run_dialog(farm_server)
    failed_id = a_failed_job(farm_server, ray_farm.paths.models)
    with httpx.Client(base_url=farm_server, timeout=30) as http:
        (failed,) = [j for j in http.get("/api/jobs?status=failed").json()["jobs"] if j["id"] == failed_id]
    # the loader that raised is named, as ComfyUI's frontend requires of every listed error
    assert failed["execution_error"]["node_id"] == "4"
    assert failed["execution_error"]["node_type"] == "CheckpointLoaderSimple"
    context, page, log = open_ui(browser, farm_server + "/")
    tag = uuid.uuid4().hex[:8]  # SaveImage writes browser/<tag>_00001_.png
    # Load through the frontend's own API, as dropping an API-format JSON file on it does.
    page.evaluate("(wf) => window.app.loadApiJson(wf, 'txt2img.json')", small_workflow(f"browser/{tag}"))
    page.get_by_label("Fit View (.)").click()
    page.get_by_test_id("queue-button").click()

    # The output appears on the Save Image node: the UI fetched it from /view and it decoded
    # (64 px wide). The canvas draws the node's own image objects, which are not in the DOM
    # (a DOM <img> shows up only in some side panels, depending on what history holds).
    shown = page.wait_for_function(
        """(tag) => (window.app.graph.getNodeById(9).imgs || []).find(i => i.src.includes('/view?')
               && i.src.includes('filename=' + tag + '_') && i.complete && i.naturalWidth === 64)?.src""",
        arg=tag, timeout=DEADLINE_MS).json_value()
    started = [f for f in log.frames if f["type"] == "execution_start"]
    assert started, "the UI's websocket never saw the prompt start"
    prompt_id = started[-1]["data"]["prompt_id"]
    with httpx.Client(base_url=farm_server, timeout=30) as http:
        item = http.get(f"/history/{prompt_id}").json()[prompt_id]
    (saved,) = item["outputs"]["9"]["images"]
    assert f"filename={saved['filename']}" in shown
    assert item["farm"]["worker_id"]  # it ran on a farm worker, not in the server
    # The SaveImage node holds that output, as ComfyUI's UI keeps it after `executed`.
    outputs = page.evaluate("() => window.app.nodeOutputs['9']")
    assert outputs["images"][0]["filename"] == saved["filename"]

    kinds = [f["type"] for f in log.events(prompt_id)]
    assert kinds[0] == "execution_start" and "execution_success" in kinds
    progress = [f["data"] for f in log.events(prompt_id) if f["type"] == "progress"]
    assert [p["value"] for p in progress] == [1, 2] and all(p["max"] == 2 and p["node"] == "3" for p in progress)
    assert any(f["type"] == "executed" and f["data"]["node"] == "9" for f in log.events(prompt_id))
    assert log.unexpected_failures() == []

    page.wait_for_timeout(500)  # the canvas draws the node's image on its next frame
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "webui.png")
    context.close()


def test_a_workflow_saved_in_the_ui_is_a_file_in_the_user_folder(farm_server, farm_server_config, browser):
    skip_first_run_dialog(farm_server)
    context, page, log = open_ui(browser, farm_server + "/")
    name = f"saved-{uuid.uuid4().hex[:8]}"
    page.evaluate("(wf) => window.app.loadApiJson(wf, 'txt2img.json')", small_workflow("browser/saved"))
    # The UI's own Save command (what Ctrl+S runs); not awaited: it resolves when the dialog closes.
    page.evaluate("() => { window.app.extensionManager.command.execute('Comfy.SaveWorkflow') }")
    dialog_input = page.get_by_role("dialog").locator("input")
    dialog_input.fill(name)
    dialog_input.press("Enter")

    saved = farm_server_config.user_folder() / "default" / "workflows" / f"{name}.json"
    deadline = time.monotonic() + 30
    while not saved.is_file():
        assert time.monotonic() < deadline, f"the UI never wrote {saved}"
        time.sleep(0.1)
    graph = json.loads(saved.read_text())
    assert {n["type"] for n in graph["nodes"]} >= {"KSampler", "SaveImage", "CheckpointLoaderSimple"}
    with httpx.Client(base_url=farm_server, timeout=30) as http:
        listed = http.get("/api/userdata?dir=workflows&recurse=true&full_info=true").json()
    assert f"{name}.json" in {f["path"] for f in listed}
    # A new page lists it in the workflows sidebar, read back through /userdata.
    context.close()
    context, page, log = open_ui(browser, farm_server + "/")
    page.get_by_test_id("workflows-tab-button").click()
    page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    assert log.unexpected_failures() == []
    context.close()


def test_with_a_token_the_url_token_becomes_a_cookie_the_ui_uses(start_farm_server, browser):
    token = uuid.uuid4().hex
    base = start_farm_server(token=token)
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        http.post("/api/settings", json={"Comfy.TutorialCompleted": True})
    context, page, log = open_ui(browser, f"{base}/?token={token}")
    deadline = time.monotonic() + 30
    while not any(f["type"] == "status" for f in log.frames):
        assert time.monotonic() < deadline, "the UI's websocket was not let in"
        page.wait_for_timeout(100)
    assert not [f for f in log.failed if f[0] == 401], "a request of the UI's went without the token"
    (cookie,) = [c for c in context.cookies() if c["name"] == TOKEN_COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("() => document.cookie").find(TOKEN_COOKIE) == -1  # page scripts cannot read it
    context.close()
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.get("/api/settings").status_code == 401  # and without it, nothing


def test_dashboard_shows_workers_queue_and_recent_jobs(farm_server, browser):
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=farm_server, timeout=30) as http:
        prompt_id = http.post("/prompt", json={"prompt": small_workflow(f"dashboard/{tag}")}).json()["prompt_id"]
        deadline = time.monotonic() + DEADLINE_MS / 1000
        while prompt_id not in http.get(f"/history/{prompt_id}").json():
            assert time.monotonic() < deadline, "the job never finished"
            time.sleep(0.2)
        workers = http.get("/workers").json()
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    log = PageLog(page, farm_server)
    page.goto(farm_server + "/farm")
    page.wait_for_selector("body[data-ready=true]", timeout=60_000)

    rows = page.locator("#workers tbody tr[data-worker]")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.worker)")) == sorted(w["worker_id"] for w in workers)
    nodes = page.locator("#workers tr.node").all_inner_texts()
    assert len(nodes) == len({w["node"] for w in workers})
    # What a worker holds: the tiny checkpoint it just used is in one of its tiers.
    assert "tiny-sd15.safetensors" in page.locator("#workers").inner_text()

    job = page.locator(f"#jobs tr[data-job='{prompt_id}']")
    job.wait_for(timeout=30_000)
    assert "success" in job.inner_text() and "tiny-sd15.safetensors" in job.inner_text()
    link = job.locator("a").first
    href = link.get_attribute("href")
    assert href.startswith("view?") and f"filename={tag}_00001_.png" in href and "subfolder=dashboard" in href
    page.wait_for_function(f"() => [...document.querySelectorAll(\"#jobs tr[data-job='{prompt_id}'] img\")]"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)

    assert page.locator("#by-checkpoint").inner_text().endswith("the queue is empty")
    page.wait_for_function("() => document.querySelectorAll('#plot polyline').length > 0", timeout=30_000)
    plotted = page.locator("#plot polyline").evaluate_all("ps => ps.map(p => p.dataset.worker)")
    assert sorted(plotted) == sorted(w["worker_id"] for w in workers)
    assert page.locator("#sum-workers").inner_text() == f"{len(workers)}/{len(workers)} workers alive"
    assert log.failed == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)
    context.close()
