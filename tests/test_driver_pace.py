"""bench/driver_pace.py's machinery on a handful of synthetic results, so the bench cannot rot. Correctness only:
no timing is asserted (performance is printed by the bench, as a ratio against its same-run reference). W&B is
disabled here (its logging actors need a Ray cluster; tests/test_wandb_logging.py covers the callback)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import driver_pace  # noqa: E402


def test_the_bench_times_every_component_for_every_result(tmp_path):
    driver = driver_pace.build_driver(
        driver_pace.space_file(tmp_path, trials=3, wandb_mode="disabled", rungs=2), tmp_path / "runs" / "pace"
    )
    names = {type(c).__name__ for c in driver.callbacks}
    assert {"PlacementGroupReaper", "SlimStoppedTrials", "CSVLoggerCallback", "JsonLoggerCallback"} <= names
    mirror = driver_pace.Mirror(driver_pace.default_callbacks(), tmp_path / "reference")
    timings, stream = driver_pace.drive(driver, trials=3, seed=0, reference=mirror)
    reference = mirror.end()

    starts = [e for e in stream if e[0] == "start"]
    results = [e for e in stream if e[0] == "result"]
    completes = [e for e in stream if e[0] == "complete"]
    assert timings.trials == len(starts) == 3 and {e[1] for e in completes} == {e[1] for e in starts}
    assert 3 <= timings.results == len(results) <= 3 * 2
    per_result = timings.per_result_ms()
    scheduler = type(driver.scheduler).__name__
    searcher = type(driver.searcher.searcher).__name__
    # A number for the scheduler, the searcher and every callback, per result.
    assert {scheduler, searcher} | names <= set(per_result)
    for name in names:
        assert len(timings.calls[(name, "on_trial_result")]) == timings.results
        assert len(timings.calls[(name, "on_trial_complete")]) == 3
    assert all(ms >= 0 for ms in per_result.values())
    assert timings.total_per_result_ms() > 0 and len(timings.result_totals) == timings.results
    assert timings.steps == len([e for e in stream if e[0] == "step"]) > 0 and timings.per_step_ms() >= 0
    # The reference heard the same results through Tune's default callbacks alone.
    assert reference.results == timings.results and reference.trials == 3
    assert {"CSVLoggerCallback", "JsonLoggerCallback"} <= set(reference.per_result_ms())
    assert "SlimStoppedTrials" not in reference.per_result_ms()
    # The study heard every trial's end, as in a search.
    from optuna.trial import TrialState

    states = [t.state for t in driver.searcher.searcher.study.get_trials(deepcopy=False)]
    assert len(states) == 3 and TrialState.RUNNING not in states

    replayed = driver_pace.replay(stream, driver_pace.default_callbacks(), tmp_path / "replay", max_trials=1)
    assert replayed.trials == 1 and 1 <= replayed.results <= 2
    driver_pace.report(timings, "driver")  # prints without error
