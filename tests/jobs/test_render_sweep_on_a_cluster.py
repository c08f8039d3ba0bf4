"""The README's cluster commands on a real cluster: a head started with `ray start` (in its
own process group, its own ports and temp dir: `ray stop` would end every Ray of the user
on this machine), `farm start` against it, then the README's `ray job submit ... -- python
-m jobs.render_sweep ...` line as written, twice: the second run skips every render. About
a minute or two: the one test of its kind."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = {"5.width": 64, "5.height": 64, "5.batch_size": 1, "3.steps": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_command(prefix: str) -> str:
    """The README's command starting with `prefix`, its continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Run on a cluster"):]
    match = re.search(rf"^ +({re.escape(prefix)}.*?(?:\\\n.*?)*)$", section, re.M)
    assert match, f"the README's Run on a cluster section has no `{prefix}` command"
    return match.group(1).replace("\\\n", " ")


def shims(bin_dir: Path) -> None:
    """`python`, `ray` and `farm` on PATH as a user's active venv has them."""
    bin_dir.mkdir()
    for name, target in {"python": f'exec {sys.executable} "$@"',
                         "ray": f'exec {sys.executable} -m ray.scripts.scripts "$@"',
                         "farm": f'exec {sys.executable} -m farm "$@"'}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{target}\n")
        (bin_dir / name).chmod(0o755)


def run(command, env, cwd, timeout=240):
    return subprocess.run(command, shell=isinstance(command, str), env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture()
def ray_head(tmp_path):
    """A head with one logical GPU, token auth on through a token file (as ~/.ray/auth_token
    does after any local ray.init), RAY_AUTH_MODE unset."""
    shims(tmp_path / "bin")
    token = tmp_path / "auth_token"
    token.write_text(uuid.uuid4().hex)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0: on the teardown's SIGTERM, `ray start` would first
    # ask the GCS (SIGTERMed with it) to drain the node and wait up to 30 s for it (Ray's
    # default, for Kubernetes pods); the teardown then spent 15 s waiting and SIGKILLed anyway
    env.update(PATH=f"{tmp_path / 'bin'}:{env['PATH']}", RAY_AUTH_TOKEN_PATH=str(token),
               RAY_USAGE_STATS_ENABLED="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    ports = {name: free_port() for name in ("port", "dashboard-port", "ray-client-server-port",
                                            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                            "metrics-export-port", "runtime-env-agent-port", "node-manager-port",
                                            "object-manager-port")}
    temp = Path("/tmp") / f"rf-{uuid.uuid4().hex[:8]}"  # Ray's socket paths must stay short
    args = ["ray", "start", "--head", "--block", "--num-cpus=4", "--num-gpus=1", f"--temp-dir={temp}",
            "--node-ip-address=127.0.0.1", *(f"--{name}={port}" for name, port in ports.items())]
    log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield env, ports, tmp_path
    finally:
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(wait_s)
                time.sleep(1)  # the group's other processes end with the head
            except subprocess.TimeoutExpired:
                continue
        log.close()
        subprocess.run(["rm", "-rf", str(temp)])


def test_readme_sweep_job_on_a_ray_start_head_and_its_rerun(ray_head, tiny_models):
    env, ports, tmp = ray_head
    env = dict(env, RAY_ADDRESS=f"127.0.0.1:{ports['port']}")  # what `auto` finds on a head
    deadline = time.monotonic() + 60
    while True:  # the head takes ~10 s; farm start says "no Ray cluster answers" until then
        start = run(["farm", "start", "--address", "auto", "--models", str(tiny_models),
                     "--output", str(tmp / "farm-output"), "--db", str(tmp / "queue.sqlite"), "--workers", "1"],
                    env, tmp)
        if start.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert start.returncode == 0, start.stdout + start.stderr + (tmp / "head.log").read_text()[-3000:]
    assert start.stdout.startswith("started a farm on the Ray cluster at auto: 1 worker(s)")

    project = tmp / "project"  # the submitter's folder: --working-dir . uploads it
    project.mkdir()
    workflow = json.loads((ROOT / "farm" / "workflows" / "txt2img.json").read_text())
    for key, value in TINY.items():
        node, _, name = key.partition(".")
        workflow[node]["inputs"][name] = value
    (project / "workflow.json").write_text(json.dumps(workflow))
    (project / "sweep.csv").write_text('3.seed,6.text\n1,a red fox\n2,a blue bird\n3,"a fox, at night"\n')
    renders = tmp / "renders"
    command = readme_command("ray job submit").replace("HEAD:8265", f"127.0.0.1:{ports['dashboard-port']}")
    command = command.replace("/data/renders", str(renders))
    submit_env = dict(env, RAY_AUTH_MODE="token")  # the README's export

    def submit():
        for _ in range(10):  # the job agent starts a little after the head answers
            done = run(command, submit_env, project)
            if "No available agent" not in done.stdout + done.stderr:
                return done
            time.sleep(3)
        return done

    first = submit()
    logs = first.stdout + first.stderr
    assert first.returncode == 0, logs
    assert "render_sweep: 3/3 done (0 failed, 0 skipped)" in logs and "images/s, ETA" in logs
    assert "3 rendered now, 0 done before, 0 failed" in logs
    manifest = [json.loads(line) for line in (renders / "manifest.jsonl").read_text().splitlines()]
    assert [(m["row"], m["overrides"]["3.seed"], m["status"]) for m in manifest] == [
        (1, 1, "success"), (2, 2, "success"), (3, 3, "success")]
    assert manifest[2]["overrides"]["6.text"] == "a fox, at night"
    for entry in manifest:
        (png,) = map(Path, entry["outputs"])
        assert png.parent == renders and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert entry["worker"] == "worker-0" and entry["node"]
        assert Path(entry["farm_files"][0]).is_relative_to(tmp / "farm-output")

    again = submit()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 rendered now, 3 done before, 0 failed" in again.stdout + again.stderr
    assert [json.loads(line)["prompt_id"] for line in (renders / "manifest.jsonl").read_text().splitlines()] == [
        m["prompt_id"] for m in manifest]

    stop = run(["farm", "stop", "--address", "auto"], env, tmp)
    assert stop.returncode == 0 and stop.stdout.startswith("stopped the farm on the Ray cluster at auto (1 worker(s))"), \
        stop.stdout + stop.stderr
