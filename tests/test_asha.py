"""search/asha.py: multi-objective promotion (asha.promotion "pareto") on hand-worked rungs, next to the
single-metric ASHA it replaces there."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from search.asha import LoggedASHA, ParetoASHA, ParetoRungs, make_scheduler
from search.space import parse_space
from trainables.memorization import search_metrics

ROOT = Path(__file__).resolve().parents[1]
M1, P = "val/pass@1", "val/pass@10(10)"


def test_pareto_rungs_judge_at_rays_milestones():
    rungs = ParetoRungs(num_rungs=3, grace_period=1, reduction_factor=2, modes=["max", "max"])
    assert rungs.milestones == [2, 1]  # Ray's bracket for max_t 3, grace 1, rf 2, highest first
    assert rungs.decide("a", 1, (0.2, 0.2)) == ("CONTINUE", (1, 1))  # the first always goes on
    assert rungs.decide("b", 1, (0.1, 0.1)) == ("STOP", (2, 1))  # dominated by a
    assert rungs.decide("c", 1, (0.3, 0.05)) == ("CONTINUE", (3, 2))  # shares a's front
    assert rungs.decide("a", 2, (0.3, 0.3)) == ("CONTINUE", (1, 1))
    assert rungs.decide("a", 3, (0.3, 0.3)) == ("CONTINUE", None)  # judged at every milestone already


def _schedulers(lines):
    common = dict(metric=P, mode="max", num_rungs=3, grace_period=1, reduction_factor=2, tie_break="none", echo=lines.append)
    return LoggedASHA(**common), ParetoASHA(objectives=[(M1, "max"), (P, "max")], **common)


def test_pareto_asha_keeps_the_best_pass_at_1_that_metric_asha_stops():
    lines: list[str] = []
    metric_asha, pareto_asha = _schedulers(lines)
    results = {"t1": (0.5, 0.3), "t2": (0.55, 0.1), "t3": (0.4, 0.2)}
    decided = {}
    for name, scheduler in (("metric", metric_asha), ("pareto", pareto_asha)):
        decided[name] = [
            scheduler.on_trial_result(None, SimpleNamespace(trial_id=t), {"rung": 1, M1: p1, P: p10})
            for t, (p1, p10) in results.items()
        ]
    # t2 is the best on pass@1 but the worst on pass@10(10): ASHA on pass@10(10) stops it (0.1 < 0.3) and lets
    # t3 go on (0.2, the median of 0.3 and 0.1). On both objectives t2 shares the first front with t1, while
    # t3 is dominated by t1 and ranks third of three, where 2 go on.
    assert decided["metric"] == ["CONTINUE", "STOP", "CONTINUE"]
    assert decided["pareto"] == ["CONTINUE", "CONTINUE", "STOP"]
    assert lines[-1] == (
        f"ASHA t3 rung 1/3: {M1}=0.4000, {P}=0.2000 (Pareto rank among 3 at this rung, best 2 go on) -> STOP"
    )
    last = pareto_asha.on_trial_result(None, SimpleNamespace(trial_id="t1"), {"rung": 3, M1: 0.6, P: 0.4})
    assert last == "CONTINUE" and lines[-1].endswith("-> FINISHED")
    assert pareto_asha.on_trial_result(None, SimpleNamespace(trial_id="t4"), {"rung": 1, M1: 0.2}) == "CONTINUE"


def _space(**asha):
    data = yaml.safe_load((ROOT / "spaces" / "smollm2-python.yaml").read_text())
    data["asha"] = {**data.get("asha", {}), **asha}
    return data


def test_make_scheduler_follows_asha_promotion():
    assert type(make_scheduler(parse_space(_space()))) is LoggedASHA
    scheduler = make_scheduler(parse_space(_space(promotion="pareto")))
    assert isinstance(scheduler, ParetoASHA)
    assert scheduler._objectives == [(M1, "max"), (P, "max")]


def test_pareto_promotion_refuses_objectives_reported_only_at_the_end():
    data = _space(promotion="pareto")
    data["memorization"] = {**data.get("memorization", {}), "enabled": True}
    data["objectives"] = [{"metric": M1, "mode": "max"}, {"metric": search_metrics.OBJECTIVE_METRICS[0], "mode": "min"}]
    with pytest.raises(Exception, match="promotion 'pareto'.*reported only at the last rung"):
        parse_space(data)
    data["asha"]["promotion"] = "metric"
    parse_space(data)  # single-metric ASHA ranks on a validation metric: fine


def test_pareto_asha_runs_under_ray_tune(tmp_path):
    """A real Tune run (local Ray, a trivial trainable reporting three rungs): Tune accepts the scheduler and
    it stops exactly the trials the Pareto rule says, in a fixed order (one trial at a time)."""
    import ray
    from ray import tune

    points = [(0.5, 0.3), (0.55, 0.1), (0.4, 0.2), (0.6, 0.35)]

    def trainable(config):  # nested, so Ray ships it by value (the tests folder is not on the workers' path)
        p1, p10 = points[config["i"]]
        for rung in (1, 2, 3):
            tune.report({"rung": rung, M1: p1 * rung / 3, P: p10 * rung / 3})

    lines: list[str] = []
    _, scheduler = _schedulers(lines)
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        results = tune.Tuner(
            trainable,
            param_space={"i": tune.grid_search(list(range(len(points))))},
            tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    rungs = sorted((r.config["i"], r.metrics["rung"]) for r in results)
    # #0 first, on; #1 shares #0's front (pass@10(10)-only ASHA would stop it); #2 is dominated by #0 and
    # ranks 3rd of 3 -> stopped at rung 1; #3 dominates everything -> on.
    assert rungs == [(0, 3), (1, 3), (2, 1), (3, 3)], lines
