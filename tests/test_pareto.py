"""Pareto dominance and fronts, on hand-worked examples."""
from __future__ import annotations

import json
import math

import pytest

from search.pareto import crowding_distances, dominates, keeps_at_rung, non_dominated, promotion_order
from search.results import pareto_front, read_trials_csv, write_pareto_json, write_trials_csv


def test_dominates_needs_one_strict_improvement():
    assert dominates([0.5, 0.3], [0.4, 0.3], ["max", "max"])
    assert not dominates([0.5, 0.3], [0.5, 0.3], ["max", "max"])  # equal: no
    assert not dominates([0.6, 0.2], [0.5, 0.3], ["max", "max"])  # trade-off: no
    assert dominates([0.1, 0.3], [0.2, 0.3], ["min", "max"])
    assert not dominates([0.3, 0.3], [0.2, 0.3], ["min", "max"])


def test_dominates_rejects_bad_input():
    with pytest.raises(ValueError):
        dominates([1.0], [1.0, 2.0], ["max", "max"])
    with pytest.raises(ValueError):
        dominates([1.0], [2.0], ["up"])


def test_front_worked_example_two_maximised_objectives():
    # a=(0.2,0.6) b=(0.4,0.4) c=(0.3,0.3) d=(0.4,0.4) e=(0.1,0.6)
    # c is dominated by b (and d); e by a; b and d tie, so both stay; a and b trade off.
    points = [(0.2, 0.6), (0.4, 0.4), (0.3, 0.3), (0.4, 0.4), (0.1, 0.6)]
    assert non_dominated(points, ["max", "max"]) == [0, 1, 3]


def test_front_with_a_minimised_objective_and_missing_values():
    # (pass@1 max, loss min): (0.5, 2.0) beats (0.4, 2.5); (0.3, 1.0) trades off; NaN rows take no part.
    points = [(0.5, 2.0), (0.4, 2.5), (0.3, 1.0), (math.nan, 0.1), (0.9, math.inf)]
    assert non_dominated(points, ["max", "min"]) == [0, 2]


def test_single_objective_front_is_the_best_values():
    assert non_dominated([(0.1,), (0.7,), (0.7,), (0.2,)], ["max"]) == [1, 2]


def test_front_of_rows_keeps_only_complete_trials(tmp_path):
    objectives = [{"metric": "val/pass@1", "mode": "max"}, {"metric": "val/pass@10(10)", "mode": "max"}]
    rows = [
        _row("10203040", 0, "COMPLETE", 0.2, 0.5),  # an all-digit Tune trial id stays text
        _row("t1", 1, "COMPLETE", 0.3, 0.4),
        _row("t2", 2, "PRUNED", 0.9, 0.9),  # would dominate everything, but is low-fidelity
        _row("t3", 3, "COMPLETE", 0.1, 0.1),
        _row("t4", 4, "ERROR", None, None),
    ]
    assert [r["trial_id"] for r in pareto_front(rows, objectives)] == ["10203040", "t1"]
    write_trials_csv(rows, tmp_path / "trials.csv")
    back = read_trials_csv(tmp_path / "trials.csv")
    assert [r["state"] for r in back] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "ERROR"]
    assert back[0]["val/pass@1"] == 0.2 and back[4]["val/pass@1"] is None
    front = write_pareto_json(back, objectives, tmp_path / "pareto.json")
    saved = json.loads((tmp_path / "pareto.json").read_text())
    assert saved["objectives"] == objectives
    assert [t["trial_id"] for t in saved["trials"]] == ["10203040", "t1"] == [t["trial_id"] for t in front]
    assert saved["trials"][0]["params"]["prior_options"] == {"components": 2}


def _row(trial_id, number, state, p1, p10):
    return {
        "trial_id": trial_id,
        "optuna_trial": number,
        "role": "search",
        "alpha": 0.1,
        "beta": 0.01,
        "tap_layer": 2,
        "prior": "mog",
        "prior_options": json.dumps({"components": 2}),
        "state": state,
        "last_rung": 2,
        "val/pass@1": p1,
        "val/pass@10(10)": p10,
        "wall_time_s": 1.0,
        "checkpoint_path": None,
        "error": None,
    }


def test_promotion_order_ranks_by_front_then_crowding():
    # (0.5, 0.36) dominates (0.5, 0.3); fronts: {1, 2}, {0}, {4}, {3}; a 2-point front's members are both ends.
    points = [(0.5, 0.3), (0.52, 0.27), (0.5, 0.36), (0.3, 0.1), (0.4, 0.2)]
    assert promotion_order(points, ["max", "max"]) == [1, 2, 0, 4, 3]
    # One front of four: the ends are infinitely far; P2's neighbours span 0.9 of each range, P1's 0.5.
    front = [(0, 10), (1, 9), (5, 5), (10, 0)]
    assert promotion_order(front, ["max", "max"]) == [0, 3, 2, 1]
    assert promotion_order([(1,), (3,), (2,)], ["min"]) == [0, 2, 1]
    assert promotion_order([], ["max"]) == []
    with pytest.raises(ValueError):
        promotion_order([(0.1, float("nan"))], ["max", "max"])


def test_crowding_distances_hand_worked():
    assert crowding_distances([(0, 3), (1, 1), (3, 0)]) == [math.inf, 2.0, math.inf]
    assert crowding_distances([(0, 1), (1, 0)]) == [math.inf, math.inf]


def test_keeps_at_rung_reads_like_asha_on_one_objective():
    # Ray's ASHA: go on unless below the (1 - 1/rf) quantile of the values recorded before.
    assert keeps_at_rung((0.3,), [], ["max"], 2) is True  # the first trial always goes on
    assert keeps_at_rung((0.1,), [(0.2,)], ["max"], 2) is False  # cutoff 0.2
    assert keeps_at_rung((0.15,), [(0.2,), (0.1,)], ["max"], 2) is True  # cutoff (median) 0.15: a tie goes on
    assert keeps_at_rung((0.45,), [(0.5,), (0.4,)], ["max"], 3) is False  # cutoff 0.467


def test_keeps_at_rung_keeps_a_trial_that_leads_on_another_objective():
    # Best on pass@1, worst on pass@10(10): ASHA on pass@10(10) would stop it (0.1 < median 0.25); on both
    # objectives it shares the first front with (0.5, 0.3), and the best 2 of 3 go on.
    assert keeps_at_rung((0.55, 0.1), [(0.5, 0.3), (0.4, 0.2)], ["max", "max"], 2) is True
    assert keeps_at_rung((0.4, 0.2), [(0.5, 0.3), (0.55, 0.1)], ["max", "max"], 2) is False  # dominated
