"""A node added and a node removed mid-sweep, on a real two-node Ray cluster
(ray.cluster_utils.Cluster) in its own process, bounded in time: see elastic_nodes_run.py."""
import os
import subprocess
import sys
from pathlib import Path


SCRIPT = Path(__file__).with_name("elastic_nodes_run.py")
TIMEOUT_S = 180  # about a minute on CI's two cores; a hang ends here, not in CI's own limit


def test_a_node_that_joins_takes_jobs_and_one_that_leaves_loses_none(tiny_models, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    done = subprocess.run([sys.executable, str(SCRIPT), str(tiny_models), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("OK"), done.stdout + done.stderr[-4000:]
    assert "a node joined: a worker on it" in done.stdout
    assert "the manifest is complete: 32 renders" in done.stdout
