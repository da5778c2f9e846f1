"""The efficiency replay (bench/search_efficiency.py) on a hand-made curves file, and `asha: {enabled: false}`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import search_efficiency as se  # noqa: E402

M1, M10, P = "val/pass@1", "val/pass@10", "val/pass@10(10)"
CE = "train/ce_loss_rung"

# 4 configurations x 3 rungs of 8 steps; ASHA on pass@10(10), grace 1, reduction factor 2, ties by train CE.
# (pass@10(10) per rung, train CE per rung, final pass@1)
HAND = [
    ([0.2, 0.3, 0.4], [1.0, 0.9, 0.8], 0.3),  # c0
    ([0.1, 0.4, 0.4], [0.5, 0.4, 0.3], 0.5),  # c1: below the rung-1 cutoff 0.2 -> stopped at rung 1
    ([0.2, 0.2, 0.5], [0.5, 0.4, 0.3], 0.1),  # c2: ties c0 at rung 1 with lower CE -> goes on; 0.2 < 0.3 at rung 2 -> stopped
    ([0.2, 0.5, 0.6], [2.0, 0.4, 0.3], 0.2),  # c3: ties the rung-1 median 0.2 with higher CE -> stopped at rung 1
]


def _fake_curves(path: Path) -> Path:
    configs = []
    for i, (p10, ce, p1) in enumerate(HAND):
        rungs = [
            {"rung": r + 1, "step": 8 * (r + 1), M1: p1 if r == 2 else p1 / 2, M10: min(1.0, p10[r] + 0.3), P: p10[r], CE: ce[r]}
            for r in range(3)
        ]
        configs.append(
            {
                "trial": i,
                "role": "search",
                "params": {"alpha": [0.0, 0.1][i % 2], "beta": 0.01, "tap_layer": [10, 20][i // 2], "prior": "standard_normal"},
                "state": "COMPLETE",
                "rungs": rungs,
            }
        )
    # A preset trial, recorded but not part of the grid.
    configs.append({"trial": 9, "role": "paper", "params": {"alpha": 0.5, "beta": 0.02, "tap_layer": 20, "prior": "standard_normal"},
                    "state": "COMPLETE", "rungs": configs[0]["rungs"]})
    doc = {
        "format": "ibft-search learning curves v1",
        "space": "fake",
        "commands": {"search": "hand-made", "record": "hand-made"},
        "date": "2025-01-01T00:00:00+00:00",
        "rung_steps": 8,
        "max_steps": 24,
        "num_rungs": 3,
        "max_concurrent": 1,
        "objectives": [{"metric": M1, "mode": "max"}, {"metric": P, "mode": "max"}],
        "asha": {"metric": P, "mode": "max", "grace_period": 1, "reduction_factor": 2.0, "tie_break": "train_loss"},
        "configs": configs,
    }
    path.write_text(json.dumps(doc))
    return path


def test_curves_file_gives_the_grid(tmp_path):
    curves = se.load_curves(_fake_curves(tmp_path / "c.json"))
    assert len(curves.configs) == 4 and curves.full_budget == 4 * 24
    assert curves.names == ["alpha", "tap_layer"] and curves.domains == {"alpha": [0.0, 0.1], "tap_layer": [10, 20]}
    assert any("preset" in s for s in curves.skipped)
    assert [curves.configs[i].params["alpha"] for i in se.grid_order(curves)] == [0.0, 0.0, 0.1, 0.1]


def test_asha_replay_stops_the_trials_a_hand_computation_says(tmp_path):
    curves = se.load_curves(_fake_curves(tmp_path / "c.json"))
    # Ray's milestones for max_t 3, grace 1, rf 2: rungs 1 and 2. Rank value = p + 1e-6 / (1 + CE).
    # c0: first at every rung -> completes (24 steps).
    # c1 rung 1: cutoff = median{0.2+} = 0.2000005 > 0.1 -> STOP (8).
    # c2 rung 1: cutoff = median{c0 0.2000005, c1 0.1000007} = 0.1500006 < 0.2000007 -> on;
    #    rung 2: cutoff = c0's 0.3000005 > 0.2 -> STOP (16).
    # c3 rung 1: cutoff = median{0.2000005, 0.1000007, 0.2000007} = 0.2000005 > 0.2 + 1e-6/3 -> STOP (8).
    told = []

    class Recorder(se.FixedOrder):
        def tell(self, handle, state, values):
            told.append((state, values))

    replay = se.simulate(curves, Recorder([0, 1, 2, 3]), 56, asha=True, concurrency=1)
    assert [(t["config"], t["state"], t["rungs"]) for t in replay.trials] == [
        (0, "COMPLETE", 3), (1, "PRUNED", 1), (2, "PRUNED", 2), (3, "PRUNED", 1)
    ]
    assert replay.spent == 56
    assert told == [("COMPLETE", [0.3, 0.4]), ("PRUNED", None), ("PRUNED", None), ("PRUNED", None)]
    assert replay.completions == [(24, (0.3, 0.4))]
    # Without the tie break c3 ties the cutoff 0.2 exactly and goes on (Ray stops only strictly below).
    curves.asha["tie_break"] = "none"
    replay = se.simulate(curves, se.FixedOrder([0, 1, 2, 3]), 72, asha=True, concurrency=1)
    assert [(t["state"], t["rungs"]) for t in replay.trials] == [("COMPLETE", 3), ("PRUNED", 1), ("PRUNED", 2), ("COMPLETE", 3)]


def test_grid_at_full_budget_has_the_hand_computed_hypervolume(tmp_path):
    curves = se.load_curves(_fake_curves(tmp_path / "c.json"))
    replay = se.simulate(curves, se.FixedOrder(se.grid_order(curves)), curves.full_budget, asha=False, concurrency=2)
    assert all(t["state"] == "COMPLETE" and t["rungs"] == 3 for t in replay.trials) and len(replay.trials) == 4
    # Final (pass@1, pass@10(10)): (0.3, 0.4) (0.5, 0.4) (0.1, 0.5) (0.2, 0.6); c0 is dominated by c1.
    # Front by pass@1: (0.2, 0.6) -> 0.2*0.6 = 0.12; (0.5, 0.4) adds (0.5-0.2)*0.4 = 0.12; (0.1, 0.5) inside.
    assert se.hv_at(replay, curves.full_budget, curves) == pytest.approx(0.24)
    # Two at a time in lockstep: the first two complete together at 48 trial-steps.
    assert [s for s, _ in replay.completions] == [48, 48, 96, 96]
    assert se.hv_at(replay, 47, curves) == 0.0


def test_script_runs_end_to_end_on_the_fake_file(tmp_path):
    path = _fake_curves(tmp_path / "c.json")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "search_efficiency.py"), "--curves", str(path), "--seeds", "3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "ratio at 1/3 budget (32 of 96 trial-steps)" in out
    assert "asha+tpe" in out and "random" in out and "grid" in out
    assert f"seeds: 3; data: {path}" in out
    assert "full-grid hypervolume (reference 0): 0.24" in out


def test_asha_can_be_disabled_in_a_space_file(tmp_path):
    from search.space import load_space
    from trainables.errors import ConfigError

    data = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    assert load_space(ROOT / "spaces" / "smoke.yaml").asha.enabled is True
    data.setdefault("asha", {})["enabled"] = False
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    assert load_space(tmp_path / "s.yaml").asha.enabled is False
    data["asha"]["enabled"] = "sometimes"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="asha.enabled"):
        load_space(tmp_path / "s.yaml")
    grid = load_space(ROOT / "spaces" / "smollm2-grid.yaml")
    assert grid.asha.enabled is False and grid.sampler == "grid" and grid.test is None
    sizes = [len(d.choices) for d in grid.params.domains().values()]
    assert sorted(sizes) == [2, 2, 3] and grid.params.beta == 0.01
    assert grid.num_samples == 12 + 2  # the grid and the two preset trials (baseline, paper)


def test_disabled_asha_gives_ray_fifo_scheduler():
    from ray.tune.schedulers import FIFOScheduler

    from search.asha import LoggedASHA, make_scheduler
    from search.space import load_space

    assert type(make_scheduler(load_space(ROOT / "spaces" / "smollm2-grid.yaml"))) is FIFOScheduler
    assert isinstance(make_scheduler(load_space(ROOT / "spaces" / "smollm2-python.yaml")), LoggedASHA)


def test_record_curves_writes_the_runs_per_rung_results(tmp_path):
    import record_curves

    from report_run_fixture import NUM_RUNGS, RUNG_STEPS, TRIALS, write_run

    run_dir = write_run(tmp_path)
    out = tmp_path / "data" / "curves.json"
    assert record_curves.main([str(run_dir), "--out", str(out), "--search-command", "ibft tune X.yaml"]) == 0
    doc = json.loads(out.read_text())
    assert doc["space"] == "fixture" and doc["commands"]["search"] == "ibft tune X.yaml"
    assert doc["commands"]["record"].startswith("python bench/record_curves.py ") and doc["date"]
    assert doc["num_rungs"] == NUM_RUNGS and doc["rung_steps"] == RUNG_STEPS and doc["asha"]["grace_period"] == 1
    by_number = {c["trial"]: c for c in doc["configs"]}
    for number, spec in enumerate(TRIALS):
        if spec["rungs"] == 0:
            assert number not in by_number  # nothing to replay
            continue
        rec = by_number[number]
        assert rec["role"] == spec["role"] and rec["params"]["alpha"] == spec["params"]["alpha"]
        assert [r["rung"] for r in rec["rungs"]] == list(range(1, spec["rungs"] + 1))
        assert [r["step"] for r in rec["rungs"]] == [RUNG_STEPS * r for r in range(1, spec["rungs"] + 1)]
        last = rec["rungs"][-1]
        assert "val/pass@10" in last and "train/ce_loss_rung" in last
        if spec["rungs"] == NUM_RUNGS:
            assert (last["val/pass@1"], last["val/pass@10(10)"]) == pytest.approx(spec["val"])
    # The replay reads it: the grid is the search trials with every rung (the pruned one is left out).
    curves = se.load_curves(out)
    assert len(curves.configs) == sum(s["role"] == "search" and s["rungs"] == NUM_RUNGS for s in TRIALS)
