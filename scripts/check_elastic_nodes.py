"""Manual check of the elastic pool on a real multi-node Ray cluster (ray.cluster_utils.Cluster,
one process): a node with a GPU joins -> the farm starts a worker on it; the node leaves ->
its worker is gone and a replacement waits in Ray for a GPU. About a minute on a laptop;
not in the test suite (two Ray nodes are too heavy for CI's two cores).

    .venv/bin/python scripts/check_elastic_nodes.py
"""
import sys
import tempfile
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from actors import ACTOR_NAMESPACE
from actors.cluster import FarmCluster, FarmConfig
from farm.records.paths import FarmPaths

root = Path(tempfile.mkdtemp())
(root / "models" / "checkpoints").mkdir(parents=True)
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "num_gpus": 1})
ray.init(address=c.address, namespace=ACTOR_NAMESPACE, log_to_driver=False)
farm = FarmCluster.start(FarmConfig(FarmPaths.under(root, root / "models", None), root / "q.sqlite", max_workers=3))
def alive():
    return sorted(w.worker_id for w in farm.call("workers") if w.alive)
def wait(pred, what, t=180):
    end = time.monotonic() + t
    while time.monotonic() < end:
        a = alive()
        if pred(a):
            print(f"{time.monotonic()-t0:6.1f}s {what}: {a}", flush=True); return
        time.sleep(1)
    print("TIMEOUT", what, alive(), farm.call("worker_ids")); sys.exit(1)
t0 = time.monotonic()
wait(lambda a: len(a) == 1, "one GPU")
node = c.add_node(num_cpus=2, num_gpus=1)
wait(lambda a: len(a) == 2, "a node with a GPU joined")
c.remove_node(node)
wait(lambda a: len(a) == 1, "the node left")
print("slots", farm.call("worker_ids"))
farm.stop(); ray.shutdown(); c.shutdown()
