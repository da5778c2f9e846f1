"""cluster.yaml validates against the schema inside the ray wheel (what `ray up` itself checks)."""
import copy
import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def schema():
    import ray.autoscaler

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_ray_schema(schema, cluster):
    jsonschema.validate(cluster, schema)


def test_cluster_yaml_passes_rays_own_prepare_and_validate(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_cluster_has_cpu_head_and_gpu_workers(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "trials must never be scheduled on the head"
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert workers and all(t["max_workers"] >= 1 for t in workers)
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in workers)


def test_cluster_installs_the_project_without_the_cpu_torch_pin(cluster):
    setup = "\n".join(cluster["setup_commands"])
    assert "constraints.txt" in setup and "grep -v '^torch=='" in setup
    assert "/home/ray/ibft-search" in cluster["file_mounts"]


def test_a_broken_cluster_yaml_is_rejected(schema, cluster):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = copy.deepcopy(cluster)
    broken["no_such_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
