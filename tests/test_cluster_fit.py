"""A space the cluster can never hold fails before the search instead of queueing forever."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.cluster_fit import shortfalls, trial_needs

ROOT = Path(__file__).resolve().parents[1]


def test_trial_needs_count_every_worker_and_no_gpu_key_for_cpu_training():
    assert trial_needs(2, 8, 1) == {"CPU": 16, "GPU": 2}
    assert trial_needs(1, 4, 0.5) == {"CPU": 4, "GPU": 0.5}
    assert trial_needs(3, 1, 0) == {"CPU": 3}


def test_shortfalls_name_each_missing_resource_with_both_amounts():
    assert shortfalls({"CPU": 2}, {"CPU": 2.0, "memory": 1e9}) == []
    assert shortfalls({"CPU": 4, "GPU": 0.5}, {"CPU": 2.0}) == [
        "4 CPU (the cluster has 2)",
        "0.5 GPU (the cluster has 0)",
    ]
    assert shortfalls({"CPU": 1, "GPU": 2}, {"CPU": 64, "GPU": 1}) == ["2 GPU (the cluster has 1)"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_space_on_a_cpu_machine_exits_2_naming_the_missing_gpu(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "search", "tune", str(ROOT / "spaces" / "smollm2-gpu.yaml"), "--storage-path", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "one trial needs " in done.stderr and "0.5 GPU (the cluster has 0)" in done.stderr
    assert "--address" in done.stderr
    assert done.stdout == ""
