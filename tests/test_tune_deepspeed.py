"""The product's trial path end to end: each trial a Ray Train run of 2 workers under DeepSpeed ZeRO-2 or ZeRO-3
(CPU, gloo).

The smoke space with 2 workers per trial and one trial at a time (2 CPUs), the baseline and paper presets
only. Each rung checkpoint must hold the DeepSpeed engine's per-rank shards, and the memorization metrics,
measured on rank 0 and broadcast, must reach trials.csv. The ZeRO-3 trial evaluates uneven task shares per rank.
"""
from __future__ import annotations

import json
import math

import pytest
import yaml

from search.results import read_trials_csv
from smoke_search import ROOT, finish_tune, smoke_space_file, start_tune

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _zero2_search(tmp_path, name: str, workers: int) -> tuple:
    """Two trials, one at a time, of `workers` DeepSpeed ZeRO-2 workers each: (run dir, trials.csv rows)."""
    space = smoke_space_file(
        tmp_path,
        num_samples=2,
        max_concurrent=1,
        resources={"workers": workers, "cpus_per_worker": 1},
        deepspeed={"enabled": True, "zero_stage": 2, "precision": "fp32"},
    )
    proc = start_tune([str(space), "--name", name, "--storage-path", str(tmp_path / "runs")])
    code, out, err = finish_tune(proc, timeout=1200)
    assert code == 0, err[-4000:]
    run_dir = tmp_path / "runs" / name
    return run_dir, read_trials_csv(run_dir / "trials.csv")


def test_two_worker_deepspeed_trials_run_to_the_end(tmp_path):
    run_dir, rows = _zero2_search(tmp_path, "ds", workers=2)
    assert sorted(r["role"] for r in rows) == ["baseline", "paper"]
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}, [(r["role"], r["error"]) for r in rows]
    for row in rows:
        shards = list((run_dir / "trials" / row["trial_id"]).rglob("deepspeed/**/*optim_states*"))
        assert len(shards) >= 2, f"trial {row['trial_id']}: expected ZeRO-2 optimizer shards of both ranks"
        if row["state"] == "COMPLETE":
            assert math.isfinite(row["memorization/gap"])


def test_two_worker_zero3_trial_evaluates_out_of_step_without_hanging(tmp_path):
    """ZeRO-3 with 2 workers: at every rung the ranks sample their own task shares (rank 0 two tasks in two
    batches, rank 1 one task in one), and at the last the test split too and memorization on rank 0 alone.
    ZeRO-3's all-gathers in those forwards fell out of step across ranks (a hang on NCCL, a gloo size mismatch
    on CPU) until DeepSpeedEngine.inference_context gathered the whole model for the rung."""
    smoke = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    uneven = {**smoke["validation"], "tasks": 3, "batch_size": 2}  # n=2: one task per batch
    space = smoke_space_file(
        tmp_path,
        num_samples=1,
        max_concurrent=1,
        resources={"workers": 2, "cpus_per_worker": 1},
        deepspeed={"enabled": True, "zero_stage": 3, "precision": "fp32"},
        validation=uneven,
        test={**uneven, "tasks": 3},
    )
    proc = start_tune([str(space), "--name", "z3", "--storage-path", str(tmp_path / "runs")])
    code, out, err = finish_tune(proc, timeout=900)  # a hang ends here as TimeoutExpired, not a blocked suite
    assert code == 0, err[-4000:]
    run_dir = tmp_path / "runs" / "z3"
    rows = read_trials_csv(run_dir / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE"], [(r["role"], r["error"]) for r in rows]
    row = rows[0]
    assert math.isfinite(row["memorization/gap"]) and math.isfinite(row["test/pass@1"])
    shards = list((run_dir / "trials" / row["trial_id"]).rglob("deepspeed/**/*optim_states*"))
    assert len(shards) >= 2, "expected the ZeRO-3 optimizer shards of both ranks"


def test_one_worker_deepspeed_trial_trains_in_its_own_process(tmp_path):
    """One-worker DeepSpeed trials (spaces/smollm2-gpu.yaml's shape) train in the Tune trial's process, with no Ray
    Train run: DeepSpeed sets up its own one-rank group there, the second trial reuses it in the same process, and
    the ZeRO checkpoints land where Ray Train puts them."""
    run_dir, rows = _zero2_search(tmp_path, "ds1", workers=1)
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"} and len(rows) == 2, [(r["role"], r["error"]) for r in rows]
    pids = set()
    for row in rows:
        trial_root = run_dir / "trials" / row["trial_id"]
        assert not (trial_root / "checkpoint_manager_snapshot.json").exists()  # no Ray Train run behind it
        assert list(trial_root.glob("checkpoint_*/deepspeed/**/*optim_states*"))
        log = [json.loads(line) for line in (trial_root / "work" / "metrics.jsonl").read_text().splitlines()]
        pids |= {r["pid"] for r in log if "start" in r}
    assert len(pids) == 1, pids  # the second trial ran in the first one's process
