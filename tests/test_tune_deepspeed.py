"""The product's trial path end to end: each trial a Ray Train run of 2 workers under DeepSpeed ZeRO-2 (CPU, gloo).

The smoke space with 2 workers per trial and one trial at a time (2 CPUs), the baseline and paper presets
only. Each rung checkpoint must hold the DeepSpeed engine's per-rank shards, and the memorization metrics,
measured on rank 0 and broadcast, must reach trials.csv.
"""
from __future__ import annotations

import math

import pytest

from search.results import read_trials_csv
from smoke_search import finish_tune, smoke_space_file, start_tune

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def test_two_worker_deepspeed_trials_run_to_the_end(tmp_path):
    space = smoke_space_file(
        tmp_path,
        num_samples=2,
        max_concurrent=1,
        resources={"workers": 2, "cpus_per_worker": 1},
        deepspeed={"enabled": True, "zero_stage": 2, "precision": "fp32"},
    )
    proc = start_tune([str(space), "--name", "ds", "--storage-path", str(tmp_path / "runs")])
    code, out, err = finish_tune(proc, timeout=1200)
    assert code == 0, err[-4000:]
    run_dir = tmp_path / "runs" / "ds"
    rows = read_trials_csv(run_dir / "trials.csv")
    assert sorted(r["role"] for r in rows) == ["baseline", "paper"]
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}, [(r["role"], r["error"]) for r in rows]
    for row in rows:
        shards = list((run_dir / "trials" / row["trial_id"]).rglob("deepspeed/**/*optim_states*"))
        assert len(shards) >= 2, f"trial {row['trial_id']}: expected ZeRO-2 optimizer shards of both ranks"
        if row["state"] == "COMPLETE":
            assert math.isfinite(row["memorization/gap"])
