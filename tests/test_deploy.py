"""cluster.yaml against the schema Ray's cluster launcher validates with (shipped in ray),
and deploy/kuberay.yaml's RayCluster fields."""
import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def launcher():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    return schema, yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid_for_rays_launcher(launcher):
    schema, config = launcher
    jsonschema.validate(config, schema)
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu-a10g"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_cluster_yaml_has_a_cpu_head_and_spot_gpu_nodes_that_sync_models(launcher):
    _, config = launcher
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["GPU"] == 0
    instances = {t["node_config"]["InstanceType"]: t for name, t in types.items() if name != config["head_node_type"]}
    assert set(instances) == {"g5.xlarge", "g6e.xlarge", "p5.48xlarge"}
    assert instances["p5.48xlarge"]["resources"]["GPU"] == 8
    for node_type in instances.values():
        assert node_type["max_workers"] >= node_type["min_workers"] >= 0
    assert instances["g5.xlarge"]["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert config["idle_timeout_minutes"] > 0
    assert any("s3 sync" in c and "/home/ubuntu/models" in c for c in config["setup_commands"])
    assert any("pip install" in c and "/home/ubuntu/renderfarm" in c for c in config["setup_commands"])
    (start,) = [c for c in config["head_start_ray_commands"] if c.startswith("farm start")]
    assert "--models /home/ubuntu/models" in start and "--address auto" in start


def test_kuberay_manifest_is_a_raycluster_with_gpu_groups_and_farm_start():
    manifest = yaml.safe_load((ROOT / "deploy" / "kuberay.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert manifest["metadata"]["name"]
    head = manifest["spec"]["headGroupSpec"]
    assert "rayStartParams" in head
    (container,) = head["template"]["spec"]["containers"]
    assert container["image"]
    assert "farm start --address auto" in " ".join(container["lifecycle"]["postStart"]["exec"]["command"])
    for group in manifest["spec"]["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (worker,) = group["template"]["spec"]["containers"]
        assert worker["image"] and worker["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert any(m["mountPath"] == "/models" for m in worker["volumeMounts"])
