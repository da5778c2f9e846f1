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
BASELINE = ([0.3, 0.3, 0.3], [0.6, 0.5, 0.4], 0.25)  # alpha = 0, outside the grid; ends dominated by c1


def _rungs(p10, ce, p1):
    return [
        {"rung": r + 1, "step": 8 * (r + 1), M1: p1 if r == 2 else p1 / 2, M10: min(1.0, p10[r] + 0.3), P: p10[r], CE: ce[r]}
        for r in range(3)
    ]


def _grid_params(i):
    return {"alpha": [0.03, 0.3][i % 2], "beta": 0.01, "tap_layer": [10, 20][i // 2], "prior": "standard_normal"}


def _fake_curves(path: Path) -> Path:
    # Grid c0..c3 = alpha {0.03, 0.3} x tap_layer {10, 20}; then the presets: the baseline (alpha 0) and the
    # paper trial, whose parameters are grid point c3's (the same curve: a rerun of a configuration).
    configs = [
        {"trial": i, "role": "search", "params": _grid_params(i), "state": "COMPLETE", "rungs": _rungs(*HAND[i])}
        for i in range(4)
    ]
    configs.append({"trial": 4, "role": "baseline", "params": {"alpha": 0.0, "beta": 0.0, "tap_layer": 20, "prior": "standard_normal"},
                    "state": "COMPLETE", "rungs": _rungs(*BASELINE)})
    configs.append({"trial": 5, "role": "paper", "params": _grid_params(3), "state": "COMPLETE", "rungs": _rungs(*HAND[3])})
    configs.append({"trial": 6, "role": "search", "params": {**_grid_params(0), "alpha": 0.5}, "state": "PRUNED",
                    "rungs": _rungs(*HAND[0])[:1]})
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


def test_curves_file_gives_the_grid_and_the_presets(tmp_path):
    curves = se.load_curves(_fake_curves(tmp_path / "c.json"))
    assert len(curves.configs) == 5 and curves.full_budget == 5 * 24
    assert curves.grid == [0, 1, 2, 3] and curves.presets == [("baseline", 4), ("paper", 3)]
    assert curves.names == ["alpha", "tap_layer"] and curves.domains == {"alpha": [0.03, 0.3], "tap_layer": [10, 20]}
    assert curves.configs[3].roles == ["search", "paper"]
    assert any("identical final values" in n for n in curves.notes)
    assert any("1 of 3 rungs" in n for n in curves.notes)  # the stopped trial is no configuration
    # Presets first, then the product of the choices (alpha outer), each configuration once.
    assert se.grid_order(curves) == [4, 3, 0, 2, 1]
    bare = se.load_curves(tmp_path / "c.json", presets=False)
    assert len(bare.configs) == 4 and bare.presets == [] and se.grid_order(bare) == [0, 2, 1, 3]


def test_tpe_runs_the_presets_first_as_the_product_enqueues_them(tmp_path):
    curves = se.load_curves(_fake_curves(tmp_path / "c.json"))
    tpe = se.OptunaTPE(curves, seed=0)
    (t0, i0), (t1, i1) = tpe.ask(), tpe.ask()
    assert (i0, i1) == (4, 3)
    assert t0.params == {} and t1.params == {"alpha": 0.3, "tap_layer": 20}
    _, i2 = tpe.ask()
    assert i2 in curves.grid


def test_a_space_preset_runs_after_baseline_and_paper_as_the_product_enqueues_it(tmp_path):
    path = _fake_curves(tmp_path / "c.json")
    doc = json.loads(path.read_text())
    # The space's own preset "official" (alpha 0.2: outside the grid's alpha choices, tap layer 20 inside).
    official = {"alpha": 0.2, "beta": 0.01, "tap_layer": 20, "prior": "standard_normal"}
    doc["configs"].insert(6, {"trial": 6, "role": "official", "params": official, "state": "COMPLETE",
                              "rungs": _rungs(*BASELINE)})
    path.write_text(json.dumps(doc))
    curves = se.load_curves(path)
    assert curves.presets == [("baseline", 4), ("paper", 3), ("official", 5)]
    assert curves.grid == [0, 1, 2, 3] and se.grid_order(curves)[:3] == [4, 3, 5]
    tpe = se.OptunaTPE(curves, seed=0)
    asked = [tpe.ask() for _ in range(3)]
    assert [i for _, i in asked] == [4, 3, 5]
    assert asked[2][0].params == {"tap_layer": 20} and asked[2][0].user_attrs["role"] == "official"
    rnd = se.UniformRandom(curves, seed=0)
    assert [rnd.ask()[1] for _ in range(3)] == [4, 3, 5]
    assert len(se.load_curves(path, presets=False).configs) == 4  # --no-presets leaves it out like the others


def test_tpe_replay_runs_every_grid_point_once_then_ends_as_the_product_does(tmp_path):
    curves = se.load_curves(_fake_curves(tmp_path / "c.json"))
    tpe = se.OptunaTPE(curves, seed=0, startup_trials=2)
    assert tpe.study.sampler._n_startup_trials == 2
    run = []
    while (asked := tpe.ask()) is not None:
        handle, idx = asked
        run.append(idx)
        tpe.tell(handle, se.COMPLETE, list(curves.configs[idx].point(curves.objectives)))
        assert len(run) <= 10
    # Baseline, paper (= grid point 3), then the other three grid points, none twice.
    assert run[:2] == [4, 3] and sorted(run[2:]) == [0, 1, 2]
    # A random search ends the same way.
    rnd = se.UniformRandom(curves, seed=0)
    drawn = [rnd.ask() for _ in range(6)]
    assert drawn[-1] is None and sorted(i for _, i in drawn[:-1]) == [0, 1, 2, 3, 4]


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
    # A stopped trial is told with its last rung's values (a proposer may learn from them: learn_from_stopped).
    last_rung = [[curves.configs[c].rungs[r - 1][m] for m in curves.objectives] for c, r in ((1, 1), (2, 2), (3, 1))]
    assert told == [("COMPLETE", [0.3, 0.4])] + [("PRUNED", v) for v in last_rung]
    assert replay.completions == [(24, (0.3, 0.4))]
    # Without the tie break c3 ties the cutoff 0.2 exactly and goes on (Ray stops only strictly below).
    curves.asha["tie_break"] = "none"
    replay = se.simulate(curves, se.FixedOrder([0, 1, 2, 3]), 72, asha=True, concurrency=1)
    assert [(t["state"], t["rungs"]) for t in replay.trials] == [("COMPLETE", 3), ("PRUNED", 1), ("PRUNED", 2), ("COMPLETE", 3)]


def test_oracle_asha_decides_on_the_final_values(tmp_path):
    curves = se.load_curves(_fake_curves(tmp_path / "c.json"))
    # Order c3, c2, c1, c0; the oracle ranks every rung by the final one: c3 0.6+, c2 0.5+, c1 0.4+, c0 0.4+.
    # c3 goes first and completes (24). c2 rung 1: cutoff c3's 0.6000008 > 0.5 -> STOP (8), where the real
    # rung-1 value (0.2, ahead of c3's 0.2 on CE) let it go on to rung 2. c1, c0 rung 1: medians 0.55, 0.5 -> STOP.
    replay = se.simulate(curves, se.FixedOrder([3, 2, 1, 0]), 48, asha=True, concurrency=1, oracle=True)
    assert [(t["config"], t["state"], t["rungs"]) for t in replay.trials] == [
        (3, "COMPLETE", 3), (2, "PRUNED", 1), (1, "PRUNED", 1), (0, "PRUNED", 1)
    ]
    assert replay.spent == 48
    real = se.simulate(curves, se.FixedOrder([3, 2, 1, 0]), 64, asha=True, concurrency=1)
    assert [(t["state"], t["rungs"]) for t in real.trials] == [("COMPLETE", 3), ("PRUNED", 2), ("PRUNED", 1), ("PRUNED", 2)]


def test_pareto_promotion_keeps_the_trial_that_leads_on_pass_at_1(tmp_path):
    curves = se.load_curves(_fake_curves(tmp_path / "c.json"))
    # Rung vectors (pass@1, pass@10(10)), +1e-6/(1+CE) each: pass@1 is half the final before the last rung.
    # c1 rung 1 (0.25, 0.1) vs c0 (0.15, 0.2): one front, c1 first by input order, 1 of 2 goes on -> on; at
    #   rung 2 (0.25, 0.4) dominates c0's (0.15, 0.3) -> on, completes. (Ranked on pass@10(10) alone it stopped.)
    # c2 rung 1 (0.05, 0.2+6.7e-7): c0, c1, c2 share one front, c2 an end (infinite crowding) -> on;
    #   rung 2 (0.05, 0.2) is dominated by c0 and c1 -> 3rd of 3, 2 go on -> STOP.
    # c3 rung 1 (0.1, 0.2+3.3e-7): dominated by c0's (0.15, 0.2+5e-7) -> 4th of 4 -> STOP.
    replay = se.simulate(curves, se.FixedOrder([0, 1, 2, 3]), 72, asha=True, concurrency=1, pareto=True)
    assert [(t["config"], t["state"], t["rungs"]) for t in replay.trials] == [
        (0, "COMPLETE", 3), (1, "COMPLETE", 3), (2, "PRUNED", 2), (3, "PRUNED", 1)
    ]
    assert replay.spent == 72 and [p for _, p in replay.completions] == [(0.3, 0.4), (0.5, 0.4)]


def test_grid_at_full_budget_has_the_hand_computed_hypervolume(tmp_path):
    curves = se.load_curves(_fake_curves(tmp_path / "c.json"))
    replay = se.simulate(curves, se.FixedOrder(se.grid_order(curves)), curves.full_budget, asha=False, concurrency=2)
    assert [t["config"] for t in replay.trials] == [4, 3, 0, 2, 1]
    assert all(t["state"] == "COMPLETE" and t["rungs"] == 3 for t in replay.trials)
    # Final (pass@1, pass@10(10)): c0 (0.3, 0.4) c1 (0.5, 0.4) c2 (0.1, 0.5) c3 (0.2, 0.6) baseline (0.25, 0.3).
    # Front by pass@1: (0.2, 0.6) -> 0.2*0.6 = 0.12; (0.5, 0.4) adds (0.5-0.2)*0.4 = 0.12; the rest inside.
    assert se.hv_at(replay, curves.full_budget, curves) == pytest.approx(0.24)
    # Two at a time in lockstep: the presets complete together at 48 trial-steps, the last trial runs alone.
    assert [s for s, _ in replay.completions] == [48, 48, 96, 96, 120]
    assert se.hv_at(replay, 47, curves) == 0.0
    # Baseline and c3 at 48: 0.2*0.6 + (0.25-0.2)*0.3.
    assert se.hv_at(replay, 48, curves) == pytest.approx(0.135)


def test_script_runs_end_to_end_on_the_fake_file(tmp_path):
    path = _fake_curves(tmp_path / "c.json")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "search_efficiency.py"), "--curves", str(path), "--seeds", "3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "ratio at 1/3 budget (40 of 120 trial-steps), mean HV / full HV over 3 seeds: asha+tpe" in out
    assert "without the presets (grid points only), ratio at 1/3 budget (32 of 96 trial-steps)" in out
    assert "asha+tpe" in out and "random" in out and "grid" in out
    assert f"seeds: 3; data: {path}" in out
    assert "full hypervolume (every configuration, reference 0): 0.24;" in out


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
    points = 1
    for domain in grid.params.domains().values():
        assert domain.choices is not None
        points *= len(domain.choices)
    assert grid.params.beta == 0.01 and points >= 4
    assert grid.num_samples == points + 2  # the grid and the two preset trials (baseline, paper)


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
    assert doc["space"] == "fixture" and doc["commands"]["search"] == ["ibft tune X.yaml"]
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
    # The replay reads it: the grid is the search trials with every rung (the pruned one is left out), the
    # baseline and paper trials are the presets.
    curves = se.load_curves(out)
    assert len(curves.grid) == sum(s["role"] == "search" and s["rungs"] == NUM_RUNGS for s in TRIALS)
    assert [role for role, _ in curves.presets] == ["baseline", "paper"]
    assert len(curves.configs) == len(curves.grid) + 2


def test_record_curves_merges_parts_of_a_grid_and_checks_the_reruns(tmp_path, capsys):
    import record_curves

    from report_run_fixture import TRIALS, write_run

    whole = write_run(tmp_path / "a")
    part = write_run(tmp_path / "b", only=[0, 1])  # the same seeds and parameters: a rerun of trials 0 and 1
    out = tmp_path / "curves.json"
    assert record_curves.main([str(whole), str(part), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["commands"]["search"]) == 2 and [r["trials"] for r in doc["runs"]] == [
        sum(s["rungs"] > 0 for s in TRIALS), 2]
    reruns = [r for r in doc["reruns"] if any(" trial 0" in x or " trial 1" in x for x in r["recordings"][1:])]
    assert len(reruns) == 2 and all(r["reproduced"] and r["max_abs_diff"] == 0 for r in reruns)
    assert "reproduced (largest difference 0)" in capsys.readouterr().out
    # A later recording that differs is reported with its largest difference, not silently merged.
    first = {"run": "a", "trial": 0, "params": {"alpha": 0.1}, "rungs": [{"rung": 1, "val/pass@1": 0.5, "val/eval_seconds": 90.0}]}
    second = {**first, "run": "b", "rungs": [{"rung": 1, "val/pass@1": 0.25, "val/eval_seconds": 180.0}]}
    (r,) = record_curves.reruns([first, second])
    assert not r["reproduced"] and r["max_abs_diff"] == 0.25 and r["recordings"] == ["a trial 0", "b trial 0"]
    second["rungs"][0]["val/pass@1"] = 0.5  # a different wall time alone is a reproduction, so is a loss's last digit
    first["rungs"][0]["train/loss"], second["rungs"][0]["train/loss"] = 0.501011, 0.50101
    assert record_curves.reruns([first, second])[0]["reproduced"]
    second["rungs"][0]["train/loss"] = 0.5011  # but not a loss that moved
    assert not record_curves.reruns([first, second])[0]["reproduced"]
    # Parts recorded with different settings are not one grid.
    docs = [json.loads(out.read_text()) for _ in range(2)]
    docs[1]["rung_steps"] += 1
    docs[0]["configs"] = docs[1]["configs"] = []
    with pytest.raises(ValueError, match="rung_steps differs"):
        record_curves.merge(docs, "cmd")
    # The replay reads the merged file: each configuration once, the presets from the first run.
    alone = tmp_path / "alone.json"
    assert record_curves.main([str(whole), "--out", str(alone)]) == 0
    curves = se.load_curves(out)
    assert [role for role, _ in curves.presets] == ["baseline", "paper"]
    assert len(curves.configs) == len(se.load_curves(alone).configs)
    assert any(n.startswith("fixture trial 0 (") and "identical" in n for n in curves.notes)


def test_the_grid_sampler_finishing_its_grid_outside_study_optimize_does_not_raise():
    # Optuna's GridSampler calls study.stop() after the last grid point, which raises unless the trial
    # runs inside study.optimize; Ray's OptunaSearch uses ask/tell, so the search must not use that hook.
    import optuna

    from search.space import load_space
    from search.tuner import _sampler

    space = load_space(str(ROOT / "spaces" / "smollm2-grid.yaml"))
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=_sampler(space))
    alphas, taps = space.params.alpha.choices, space.params.tap_layer.choices
    for _ in range(len(alphas) * len(taps)):
        trial = study.ask({"alpha": optuna.distributions.CategoricalDistribution(alphas),
                           "tap_layer": optuna.distributions.CategoricalDistribution(taps)})
        study.tell(trial, [0.5, 0.3])
    seen = {(t.params["alpha"], t.params["tap_layer"]) for t in study.trials}
    assert len(seen) == len(alphas) * len(taps)
