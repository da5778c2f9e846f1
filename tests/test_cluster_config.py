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


def _storage_path(cluster) -> str:
    """The run storage cluster.yaml sets up: IBFT_STORAGE_PATH in the container's environment."""
    found = [o.split("=", 1)[1] for o in cluster["docker"]["run_options"] if o.startswith("--env IBFT_STORAGE_PATH=")]
    assert len(found) == 1, cluster["docker"]["run_options"]
    return found[0]


def test_cluster_sets_up_s3_storage_with_instance_profiles(cluster):
    """A fresh `ray up` has no shared filesystem: runs go to the S3 bucket named in the container environment, and
    the GPU workers (which upload checkpoints) get an instance profile; both are lines the user must CHANGE."""
    uri = _storage_path(cluster)
    assert uri.startswith("s3://") and uri.count("/") >= 3, uri
    text = (ROOT / "cluster.yaml").read_text()
    assert any("CHANGE" in line and "IBFT_STORAGE_PATH" not in line and uri.split("/")[2] in line
               for line in text.splitlines()), "the bucket name is not marked CHANGE"
    worker = cluster["available_node_types"]["gpu_worker"]["node_config"]
    assert worker["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert not cluster["initialization_commands"], "S3 needs no mount; an EFS set-up is documented separately"


def test_docs_pass_the_storage_that_cluster_yaml_sets_up(cluster):
    """Every cluster command in the README and docs/cluster.md uses the bucket cluster.yaml names (a path that does
    not exist on a fresh cluster, such as /shared, appears only as the shared-mount alternative)."""
    import re

    uri = _storage_path(cluster)
    readme = (ROOT / "README.md").read_text()
    guide = (ROOT / "docs" / "cluster.md").read_text()
    quickstart = readme.split("**Search on a cluster**", 1)[1].split("\n**", 1)[0]
    submitted = re.findall(r"ibft tune \S+ --address auto --storage-path ([^\s`]+)", quickstart + guide)
    assert submitted and set(submitted) == {uri}, submitted
    assert "/shared" not in quickstart
    resumed = re.findall(r"ibft tune --resume ([^\s`]+) --address auto", guide)
    reported = re.findall(r"ibft report (s3://[^\s\"`]+)", readme + guide)
    assert resumed and reported
    assert all(u.startswith(uri + "/") for u in resumed + reported), (resumed, reported)
    bucket = uri.split("/")[2]
    assert f"aws s3 mb s3://{bucket}" in quickstart and f"aws s3 mb s3://{bucket}" in guide
    # The workers' instance profile: the head may only start workers with it once its role can pass that role.
    arn = cluster["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]["Arn"]
    role = arn.replace(":instance-profile/", ":role/")
    assert all("iam:PassRole" in text and role in text for text in (quickstart, guide))
