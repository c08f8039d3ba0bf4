"""The `farm` command as a user runs it: a real subprocess, real files, exit codes, and
messages instead of tracebacks."""
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from farm.workflow.graph import parse_workflow
from tests.processes import session_pids

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = json.loads((ROOT / "farm" / "workflows" / "txt2img.json").read_text())


def farm(*args, cwd):
    return subprocess.run([sys.executable, "-m", "farm", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


FARM_BIN = Path(sys.executable).parent / "farm"  # the installed command, as a user runs it


def small(workflow):
    workflow = json.loads(json.dumps(workflow))
    workflow["5"]["inputs"].update(width=64, height=64)
    workflow["3"]["inputs"]["steps"] = 2
    return workflow


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture()
def farm_here(monkeypatch, capsys):
    """`farm ARGS` run by farm.cli.main in this process (the installed command's own code
    path, less a Python start that imports torch: ~5 s per call), for the refusals that end
    before any farm starts. An exception main() does not turn into a message fails the test."""
    import os

    from farm.cli import main

    def run(*args, cwd, env=None) -> CliResult:
        for name in [k for k in os.environ if k.startswith("FARM_")]:
            monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)
    return run


@pytest.fixture()
def write(tmp_path):
    def _write(obj, name="wf.json"):
        path = tmp_path / name
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return path
    return _write


# The serve test SIGKILLs `farm serve`. Its embedded Ray's raylet, GCS and actors end within
# seconds; its two agents (dashboard, runtime env) see the raylet go at once too, but first
# report that death to the GCS, dead as well (ray._private.process_watcher, through
# publish_error_to_driver: a GCS call with a fixed 60 s timeout), so they end ~62 s after the
# kill. Rather than sit out that minute, the serve test hands the wait to the file's last
# test when that one is in the run (after it), and this file's other tests run meanwhile;
# run alone, it waits itself. The check is the same either way: no process of the server's
# session is left SIGKILL_GONE_S after the kill.
SIGKILL_GONE_S = 120
KILLED_SERVE: dict = {}  # the serve test's killed session, when it leaves the check: {"sid", "killed_at"}


def assert_session_ends(sid: int, killed_at: float) -> None:
    """Every process of the session ends by itself within SIGKILL_GONE_S of the kill; any
    left are SIGKILLed after the check (pass or fail)."""
    import os
    import signal
    import time

    try:
        deadline = killed_at + SIGKILL_GONE_S
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not session_pids(sid), f"Ray processes outlived farm serve: {session_pids(sid)}"
    finally:
        try:
            os.killpg(sid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module", autouse=True)
def _no_killed_serve_left():
    """A run that stops before the last test still leaves nothing of the killed server."""
    import os
    import signal

    yield
    if KILLED_SERVE:
        try:
            os.killpg(KILLED_SERVE["sid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_serve_from_a_fresh_folder_answers_and_a_sigkill_takes_ray_along(tiny_models, tmp_path, request):
    """The README's command from an empty folder, then SIGKILL: the embedded Ray's processes
    (raylet, agents, actors) must not outlive it for long (checked here, or by
    test_the_killed_serves_ray_processes_are_gone when it runs later in this session)."""
    import os
    import signal
    import socket
    import time
    import urllib.request

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    (tmp_path / "M").symlink_to(tiny_models)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["RAY_ADDRESS"] = "127.0.0.1:1"  # a stranger's cluster that must not be joined
    proc = subprocess.Popen([str(FARM_BIN), "serve", "--models", "M", "--output", "O", "--port", str(port)],
                            cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "serve.log", "w"))
    killed = False
    try:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=5).read())
                break
            except OSError:
                assert time.monotonic() < deadline, "farm serve did not answer"
                time.sleep(0.25)
        assert "system" in stats
        assert (tmp_path / ".farm" / "queue.sqlite").is_file()
        assert session_pids(proc.pid), "the embedded Ray runs in the server's session"
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=30)
        killed = True
    finally:
        if not killed:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    items = [item.name for item in request.session.items]
    if items.index(request.node.name) < max((i for i, name in enumerate(items)
                                             if name == "test_the_killed_serves_ray_processes_are_gone"), default=-1):
        KILLED_SERVE.update(sid=proc.pid, killed_at=killed_at)  # that test waits, after the ones between
    else:
        assert_session_ends(proc.pid, killed_at)


@pytest.mark.parametrize("where", ["--local", "farm"])
def test_run_writes_pngs_and_prints_them(tiny_models, tmp_path, write, where):
    """--local renders in the process; without it the job goes through a farm on an embedded Ray."""
    out = tmp_path / "out"
    result = farm("run", write(small(SAMPLE)), "--models", tiny_models, "--output", out, "--set", "3.seed=9",
                  "--set", "9.filename_prefix=cli/x", *(["--local"] if where == "--local" else []), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = [line for line in result.stdout.splitlines() if line.endswith(".png")]
    assert printed == [str(out / "cli" / "x_00001_.png")]
    assert Path(printed[0]).is_file()


def test_ui_format_runs_like_api_format(tiny_models, tmp_path, write):
    ui = json.loads((ROOT / "tests" / "workflow" / "data" / "txt2img_ui.json").read_text())
    for node in ui["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"] = ["tiny-sd15.safetensors"]
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"] = [64, 64, 1]
        if node["type"] == "KSampler":
            node["widgets_values"][2] = 2  # steps
    result = farm("run", write(ui), "--models", tiny_models, "--output", tmp_path / "out", "--local", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert any(line.endswith(".png") for line in result.stdout.splitlines())


@pytest.mark.parametrize("case, expected", [
    ("not json", "is not valid JSON"),
    ("unknown node", "UnknownNode"),
    ("missing checkpoint", "nope.safetensors"),
    ("out of range", "steps"),
    ("bad link", "7"),
    ("bad override", "NODE_ID.INPUT"),
    ("pickle", "pickle"),
])
def test_bad_input_is_a_message_and_exit_2(tiny_models, tmp_path, write, farm_here, case, expected):
    workflow = small(SAMPLE)
    args = []
    models = tiny_models
    if case == "unknown node":
        workflow["10"] = {"class_type": "UnknownNode", "inputs": {}}
    elif case == "missing checkpoint":
        workflow["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    elif case == "out of range":
        workflow["3"]["inputs"]["steps"] = 0
    elif case == "bad link":
        workflow["3"]["inputs"]["positive"] = ["7", 5]
    elif case == "bad override":
        args = ["--set", "seed=3"]
    elif case == "pickle":
        models = tmp_path / "models"
        shutil.copytree(tiny_models, models)
        (models / "checkpoints" / "old.ckpt").write_bytes(b"\x80\x04not really a pickle")
        workflow["4"]["inputs"]["ckpt_name"] = "old.ckpt"
    path = write("{ not json" if case == "not json" else workflow)
    result = farm_here("run", path, "--models", models, "--output", tmp_path / "out", *args, cwd=tmp_path)  # no --local:
    # validation answers before a farm starts
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing rendered


def test_make_checkpoint_single_file_and_folder(tmp_path):
    result = farm("make-checkpoint", "tiny-sd15", tmp_path / "a.safetensors", "--seed", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.safetensors").stat().st_size > 1_000_000
    result = farm("make-checkpoint", "tiny-sd15", tmp_path / "folder", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "folder" / "model_index.json").is_file()


def test_sample_workflow_is_valid_api_format():
    assert set(parse_workflow(SAMPLE).nodes) == {"3", "4", "5", "6", "7", "8", "9"}



def farm_command(*args, cwd, env=None, timeout=300):
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    full_env.update(env or {})
    return subprocess.run([str(FARM_BIN), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.mark.parametrize("args, env, expected", [
    (["--set", "3.cfg=NaN"], {}, "overrides.3.cfg is NaN"),  # the override is JSON: NaN parses
    (["--set", "6.text=" + "x" * 20_001], {}, "20,001 characters"),
    (["--set", "9.filename_prefix=../../x"], {}, "points outside the output folder"),
    (["--set", "3.steps=6", "--max-steps", "5"], {"FARM_MAX_STEPS": "50"}, "bigger than max of 5"),
    (["--set", "3.steps=201"], {}, "bigger than max of 200"),  # the one default of API, CLI and server
    ([], {"FARM_MAX_STEPS": "many"}, "max_steps"),
])
def test_caps_on_the_cli_are_one_line_and_exit_2(tiny_models, tmp_path, write, farm_here, args, env, expected):
    result = farm_here("run", write(small(SAMPLE)), "--models", tiny_models, "--output", tmp_path / "out",
                          *args, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_caps_from_a_settings_file_and_the_environment(tiny_models, tmp_path, write):
    (tmp_path / "farm.toml").write_text("max_steps = 3\nmax_width = 32\n")
    result = farm_command("run", write(small(SAMPLE)), "--models", tiny_models, "--output", tmp_path / "out",
                          "--set", "3.steps=4", cwd=tmp_path,
                          env={"FARM_CONFIG": str(tmp_path / "farm.toml"), "FARM_MAX_WIDTH": "64"})
    assert result.returncode == 2 and "Value 4 bigger than max of 3" in result.stderr  # the file's
    assert "width" not in result.stderr  # 64 wide: the environment's 64 beats the file's 32


def test_the_killed_serves_ray_processes_are_gone():
    """The end of test_serve_from_a_fresh_folder_answers_and_a_sigkill_takes_ray_along, when it
    ran earlier in this session (its wait overlapped the tests between): nothing of the
    killed server's session outlives the kill by SIGKILL_GONE_S."""
    if not KILLED_SERVE:
        pytest.skip("the serve test did not run before this one (or checked its processes itself)")
    assert_session_ends(KILLED_SERVE["sid"], KILLED_SERVE["killed_at"])
