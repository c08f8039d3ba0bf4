"""Run by test_elastic_nodes.py in its own process (the test session's Ray is already
initialised in-process): a two-node ray.cluster_utils.Cluster, a farm on its head, and a
sweep through jobs.render_sweep with a local --output-dir. Mid-sweep a node with a GPU
joins (the farm starts a worker there, which takes jobs), then leaves while that worker
runs (its batch goes back to the queue): every render succeeds and the manifest is
complete. Also: a destination opened from the other node is still written on the head.
Prints one line per step; exit 0 when all held.

    python tests/actors/elastic_nodes_run.py MODELS_DIR WORK_DIR
"""
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from actors import ACTOR_NAMESPACE  # noqa: E402
from actors.cluster import FarmCluster, FarmConfig  # noqa: E402
from farm.client import Farm  # noqa: E402
from farm.records.paths import FarmPaths  # noqa: E402
from jobs import render_sweep  # noqa: E402
from jobs.head_destination import HeadDestination, head_node_id  # noqa: E402
from jobs.render_sweep import run  # noqa: E402
from jobs.sweep import SweepRow  # noqa: E402

TINY = {"5.width": 64, "5.height": 64, "5.batch_size": 1}
JOBS = 32  # one at a time (max_batch=1), 24 steps each: ~27 s on one CPU worker, which outlasts the new
# node's worker start (10-13 s here, up to 22 s on a busy machine) and its first render reaching the manifest
MANIFEST_EVERY_S = 0.5  # the sweep's manifest rewrites (5 s by default): the checks below read it
t0 = time.monotonic()


def say(what: str) -> None:
    print(f"{time.monotonic() - t0:6.1f}s {what}", flush=True)


def fail(what: str) -> None:
    say(f"FAILED: {what}")
    sys.exit(1)


def wait(predicate, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            say(what)
            return value
        time.sleep(0.3)
    fail(f"timed out waiting for: {what}")


def main(models: Path, work: Path) -> None:
    render_sweep.MANIFEST_EVERY_S = MANIFEST_EVERY_S
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "num_gpus": 1})
    ray.init(address=cluster.address, namespace=ACTOR_NAMESPACE, log_to_driver=False)
    paths = FarmPaths.under(work, models).create()
    farm = Farm(FarmCluster.start(FarmConfig(paths, work / "q.sqlite", max_workers=2, max_batch=1)), paths)

    def alive():
        return {w.worker_id: w for w in farm.status().workers if w.alive}

    workflow = json.loads((ROOT / "farm" / "workflows" / "txt2img.json").read_text())
    rows = [SweepRow({**TINY, "3.seed": 500 + i, "3.steps": 24}, i + 1) for i in range(JOBS)]
    # the first validation imports the nodes (and torch): here, while the head's worker starts,
    # so that the sweep below renders at once and the node joins mid-sweep
    farm.prepare(workflow, rows[0].overrides)
    wait(lambda: len(alive()) == 1, "one worker on the head's GPU")
    destination = HeadDestination(str(work / "renders"))
    outcome: dict = {}
    sweep = threading.Thread(target=lambda: outcome.update(report=run(farm, workflow, rows, destination,
                                                                      progress="none")))
    sweep.start()
    node = cluster.add_node(num_cpus=2, num_gpus=1)
    new = wait(lambda: [w for w in alive().values() if node.node_id[:8] in w.node], "a node joined: a worker on it",
               90)[0].worker_id
    def rendered_by_new() -> bool:
        manifest = work / "renders" / "manifest.jsonl"
        lines = manifest.read_text().splitlines() if manifest.is_file() else []
        return any(json.loads(line).get("worker") == new for line in lines if line.strip())

    # the manifest is read before the sweep's end is: a sweep that ended just after the new
    # worker's render (its final manifest written) has passed, not failed
    def took_work():
        mine = alive().get(new)
        if (mine is not None and (mine.running or mine.backlog)) or rendered_by_new():
            return True
        if outcome:
            fail(f"the sweep ended before {new} on the new node took a job (too short a sweep for this machine?)")
        return False
    wait(took_work, f"{new} on the new node has taken jobs", 90)

    @ray.remote(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False))
    def open_from_the_new_node(target: str):
        d = HeadDestination(target)
        d.put(ROOT / "README.md", "from-the-new-node.txt")
        return ray.get_runtime_context().get_node_id(), d.writer_node

    # its worker process starts on the new node while the next check waits
    opened = open_from_the_new_node.remote(str(work / "elsewhere"))

    def finished_one():
        if rendered_by_new():
            return True
        if outcome:
            fail(f"the sweep ended before a render by {new} reached the manifest")
        return False
    wait(finished_one, f"a render by {new} is in the manifest", 60)

    here, writer = ray.get(opened, timeout=60)
    if here == head_node_id() or writer != head_node_id():
        fail(f"a destination opened on node {here[:8]} was written on {writer[:8]}, not the head")
    if not (work / "elsewhere" / "from-the-new-node.txt").is_file():
        fail("the file written through the head's destination actor is missing")
    say("a destination opened on the new node is written on the head")
    cluster.remove_node(node)
    say("the node left while its worker ran a batch")
    sweep.join(120)
    say("the sweep finished")
    if sweep.is_alive() or "report" not in outcome:
        fail("the sweep did not finish after the node left")
    report = outcome["report"]
    manifest = [json.loads(line) for line in (work / "renders" / "manifest.jsonl").read_text().splitlines()]
    bad = [m for m in manifest if m["status"] != "success"]
    if report.failed or bad or len(manifest) != JOBS:
        fail(f"{len(manifest)} manifest lines, not {JOBS}; not successful: {bad or report.failed}")
    by_new = [m for m in manifest if m["worker"] == new]
    if not by_new:
        fail(f"no render is recorded as done by {new} on the new node")
    requeued = [m for m in manifest if m["attempts"] > 1]
    say(f"the manifest is complete: {JOBS} renders, {len(by_new)} by the new node's worker, "
        f"{len(requeued)} run again after the node left")
    farm.close(stop=True)
    ray.shutdown()
    cluster.shutdown()
    say("OK")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
