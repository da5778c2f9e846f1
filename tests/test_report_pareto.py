"""Pareto maths of the report on hand-worked cases: hypervolume, reference point, front split, progress, savings."""
from __future__ import annotations

import math

import pytest

from search.pareto import hypervolume, non_dominated
from search.report.analysis import (
    early_stopping_savings,
    hypervolume_progress,
    reference_point,
    seconds_per_step,
    split_front,
)
from search.report.load import COMPLETE, PRUNED, RunData, TrialRecord

MAXMAX = ["max", "max"]


def test_hypervolume_of_one_point_is_its_rectangle():
    assert hypervolume([(0.5, 0.5)], MAXMAX, (0.0, 0.0)) == pytest.approx(0.25)
    assert hypervolume([(0.5, 0.4)], MAXMAX, (0.1, 0.1)) == pytest.approx(0.4 * 0.3)


def test_hypervolume_of_a_staircase_adds_the_steps():
    # Sorted by x descending: (0.38,0.08), (0.34,0.12), (0.25,0.14) from (0,0):
    # 0.38*0.08 + 0.34*(0.12-0.08) + 0.25*(0.14-0.12) = 0.0304 + 0.0136 + 0.005 = 0.049
    front = [(0.34, 0.12), (0.38, 0.08), (0.25, 0.14)]
    assert hypervolume(front, MAXMAX, (0.0, 0.0)) == pytest.approx(0.049)


def test_dominated_points_add_nothing():
    # (0.3, 0.3) lies inside the union of [0,0.2]x[0,0.6] and [0,0.4]x[0,0.4]: 0.12 + 0.16 - 0.08 = 0.20
    assert hypervolume([(0.2, 0.6), (0.4, 0.4), (0.3, 0.3)], MAXMAX, (0.0, 0.0)) == pytest.approx(0.20)
    assert hypervolume([(0.2, 0.6), (0.4, 0.4)], MAXMAX, (0.0, 0.0)) == pytest.approx(0.20)


def test_hypervolume_with_a_minimised_objective():
    # (pass@1 max, loss min), reference (0, 3): [0,0.5]x[2,3] = 0.5, [0,0.3]x[1,3] = 0.6, overlap [0,0.3]x[2,3] = 0.3
    assert hypervolume([(0.5, 2.0), (0.3, 1.0)], ["max", "min"], (0.0, 3.0)) == pytest.approx(0.8)


def test_hypervolume_in_three_dimensions():
    # Two boxes from the origin: 1x1x1 (point (1,1,1)) and 2x0.5x0.5 (point (2,0.5,0.5)); overlap 1x0.5x0.5.
    # 1 + 0.5 - 0.25 = 1.25
    assert hypervolume([(1, 1, 1), (2, 0.5, 0.5)], ["max"] * 3, (0, 0, 0)) == pytest.approx(1.25)


def test_points_at_or_beyond_the_reference_and_missing_values_are_ignored():
    assert hypervolume([], MAXMAX, (0.0, 0.0)) == 0.0
    assert hypervolume([(0.0, 0.0), (0.5, 0.0)], MAXMAX, (0.0, 0.0)) == 0.0  # zero-area points
    assert hypervolume([(-0.1, 0.5)], MAXMAX, (0.0, 0.0)) == 0.0  # worse than the reference on x
    assert hypervolume([(math.nan, 0.5), (0.5, 0.5)], MAXMAX, (0.0, 0.0)) == pytest.approx(0.25)


def test_hypervolume_rejects_a_bad_reference():
    with pytest.raises(ValueError):
        hypervolume([(0.5, 0.5)], MAXMAX, (0.0,))
    with pytest.raises(ValueError):
        hypervolume([(0.5, 0.5)], MAXMAX, (0.0, math.inf))
    with pytest.raises(ValueError):
        hypervolume([(0.5, 0.5)], ["max", "up"], (0.0, 0.0))


def test_hypervolume_matches_the_front_it_is_computed_from():
    points = [(0.1, 0.9), (0.5, 0.5), (0.9, 0.1), (0.4, 0.4), (0.2, 0.2)]
    front = [points[i] for i in non_dominated(points, MAXMAX)]
    assert hypervolume(points, MAXMAX, (0, 0)) == pytest.approx(hypervolume(front, MAXMAX, (0, 0)))
    # 0.9*0.1 + 0.5*(0.5-0.1) + 0.1*(0.9-0.5) = 0.09 + 0.2 + 0.04
    assert hypervolume(front, MAXMAX, (0, 0)) == pytest.approx(0.33)


def _trial(label: int, state: str, values: tuple[float, ...], **kw) -> TrialRecord:
    metrics = {"val/pass@1": values[0], "val/loss": values[1]} if values else {}
    return TrialRecord(trial_id=f"t{label}", number=label, state=state, metrics=metrics, **kw)


OBJ = [{"metric": "val/pass@1", "mode": "max"}, {"metric": "val/loss", "mode": "min"}]


def test_reference_point_uses_rate_bounds_and_the_worst_value_otherwise():
    trials = [_trial(0, COMPLETE, (0.2, 1.5)), _trial(1, PRUNED, (0.1, 2.5)), _trial(2, COMPLETE, (0.4, 0.9))]
    assert reference_point(OBJ, trials) == [0.0, 2.5]
    assert reference_point([{"metric": "val/pass@1", "mode": "min"}], trials) == [1.0]


def test_split_front_separates_dominated_trials():
    a, b, c = _trial(0, COMPLETE, (0.2, 1.0)), _trial(1, COMPLETE, (0.3, 2.0)), _trial(2, COMPLETE, (0.1, 1.5))
    front, dominated = split_front([a, b, c], OBJ)
    assert [t.label for t in front] == ["#0", "#1"] and [t.label for t in dominated] == ["#2"]


def _rung(step: int, t: float, took: float, **metrics) -> dict:
    return {"rung": step // 10, "step": step, "timestamp": t, "time_this_iter_s": took, **metrics}


def _run(trials: list[TrialRecord], max_steps: int = 30) -> RunData:
    return RunData(run_dir=None, name="x", objectives=[{"metric": "val/pass@1", "mode": "max"},  # type: ignore[arg-type]
                   {"metric": "val/pass@10(10)", "mode": "max"}], trials=trials, max_steps=max_steps, rung_steps=10)


def test_hypervolume_progress_and_savings_by_hand():
    # A completes (0.4, 0.2) after 30 steps; B is stopped at step 10; C completes (0.2, 0.5) after 30 more.
    a = TrialRecord("a", 0, state=COMPLETE, steps=30, metrics={"val/pass@1": 0.4, "val/pass@10(10)": 0.2},
                    rungs=[_rung(10, 10, 50), _rung(20, 20, 20), _rung(30, 30, 20)])
    b = TrialRecord("b", 1, state=PRUNED, steps=10, metrics={"val/pass@1": 0.0, "val/pass@10(10)": 0.0},
                    rungs=[_rung(10, 25, 50)])
    c = TrialRecord("c", 2, state=COMPLETE, steps=30, metrics={"val/pass@1": 0.2, "val/pass@10(10)": 0.5},
                    rungs=[_rung(10, 40, 50), _rung(20, 50, 30), _rung(30, 60, 30)])
    run = _run([a, b, c])
    progress = hypervolume_progress(run, [0.0, 0.0])
    assert [p.steps for p in progress] == [10, 20, 30, 40, 50, 60, 70]
    assert [p.trial for p in progress] == ["#0", "#0", "#1", "#0", "#2", "#2", "#2"]
    # After A: 0.4*0.2 = 0.08. After C: 0.08 + 0.2*(0.5-0.2) = 0.14.
    assert [round(p.hypervolume, 9) for p in progress] == [0, 0, 0, 0.08, 0.08, 0.08, 0.14]
    assert [p.completed for p in progress] == [False, False, False, True, False, False, True]
    # Paces between rungs (first rungs carry start-up): 20/10, 20/10, 30/10, 30/10 -> median 2.5 s/step.
    assert seconds_per_step(run.trials) == pytest.approx(2.5)
    savings = early_stopping_savings(run)
    assert (savings.trials_run, savings.trials_stopped, savings.steps_spent) == (3, 1, 70)
    assert savings.steps_without_stopping == 90 and savings.steps_saved == 20
    assert savings.fraction_saved == pytest.approx(20 / 90)
    assert savings.seconds_saved_estimate == pytest.approx(2.5 * 20)
