"""Bootstrap intervals over tasks: the statistics on hand-worked cases, the per-task counts a trial writes, and
the report's intervals and paired differences from the baseline (with and without per-task data)."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import report_run_fixture as fixture

from search.report import write_report
from search.report.load import TASK_COUNTS_FILE, load_run
from search.report.uncertainty import (
    bootstrap_interval,
    difference_estimate,
    metric_estimate,
    paired_difference_interval,
    parse_pass_metric,
    percentile_interval,
    resampled_means,
    task_values,
    unpaired_difference_interval,
)

REPO = Path(__file__).resolve().parent.parent


# ---- the statistics -----------------------------------------------------------------------------------------


def _exact_bootstrap(values: list[float]) -> dict[float, float]:
    """mean -> probability over all len(values)**len(values) equally likely resamples (enumerated)."""
    t = len(values)
    means = Counter(round(sum(values[i] for i in idx) / t, 12) for idx in itertools.product(range(t), repeat=t))
    return {m: count / t**t for m, count in sorted(means.items())}


def _exact_quantile(dist: dict[float, float], q: float) -> float:
    total = 0.0
    for mean, p in dist.items():
        total += p
        if total >= q:
            return mean
    return max(dist)


def test_equal_tasks_give_a_zero_width_interval():
    interval = bootstrap_interval([0.3] * 10)
    assert interval.estimate == interval.low == interval.high == pytest.approx(0.3, abs=1e-15)
    assert interval.n_tasks == 10 and interval.excludes_zero  # 0.3 on every resample


def test_identical_trials_differ_by_exactly_zero():
    values = np.random.default_rng(1).random(12)
    interval = paired_difference_interval(values, values.copy())
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert not interval.excludes_zero


def test_resampled_means_follow_the_exact_bootstrap_distribution():
    values = [0.0, 0.25, 1.0, 1.0]
    exact = _exact_bootstrap(values)  # 256 resamples enumerated
    drawn = resampled_means([np.array(values)], resamples=50_000, seed=3)[:, 0]
    grid = np.array(list(exact))
    exact_cdf = np.cumsum(list(exact.values()))
    drawn_cdf = np.searchsorted(np.sort(drawn), grid + 1e-9, side="right") / drawn.size
    # Dvoretzky–Kiefer–Wolfowitz: a deviation of 0.01 has probability < 2·exp(-2·50000·0.01²) ≈ 1e-4.
    assert np.max(np.abs(drawn_cdf - exact_cdf)) < 0.01


@pytest.mark.parametrize("values", [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
def test_percentile_interval_is_the_exact_bootstraps_quantiles(values):
    """On pass@k(m)-like 0/1 task values the 2.5% and 97.5% quantiles sit on wide steps of the exact
    distribution: 2000 resamples land on the same steps ([0, 1], [0, 0.6], [0, 5/7])."""
    exact = _exact_bootstrap(values)
    interval = bootstrap_interval(values)
    assert interval.low == pytest.approx(_exact_quantile(exact, 0.025))
    assert interval.high == pytest.approx(_exact_quantile(exact, 0.975))
    assert interval.estimate == pytest.approx(sum(values) / len(values))


def test_a_bound_that_is_exactly_zero_does_not_exclude_zero():
    """One more solved task of 10: 35% of the resamples miss it, so the lower bound is 0 exactly, never ±1e-17."""
    interval = paired_difference_interval([1.0, 1.0] + [0.0] * 8, [1.0] + [0.0] * 9)
    assert (interval.low, interval.high) == (0.0, pytest.approx(0.3)) and not interval.excludes_zero
    assert str(interval.low) == "0.0"


def test_pairing_narrows_the_interval_on_correlated_trials():
    rng = np.random.default_rng(0)
    difficulty = rng.random(30)  # the tasks' difficulty dominates both trials' values
    a = np.clip(difficulty + 0.05 + 0.02 * rng.standard_normal(30), 0, 1)
    b = difficulty
    paired, unpaired = paired_difference_interval(a, b), unpaired_difference_interval(a, b)
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert (paired.high - paired.low) < 0.25 * (unpaired.high - unpaired.low)
    assert paired.excludes_zero and not unpaired.excludes_zero


def test_intervals_are_seeded():
    values = np.random.default_rng(2).random(8)
    assert bootstrap_interval(values) == bootstrap_interval(values)
    assert bootstrap_interval(values, seed=1) != bootstrap_interval(values, seed=2)
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))


def test_metric_names_and_per_task_values():
    assert parse_pass_metric("val/pass@10(10)") == ("val", 10, 10)
    assert parse_pass_metric("test/pass@1") == ("test", 1, 1)
    assert parse_pass_metric("memorization/gap") is None and parse_pass_metric("val/eval_seconds") is None
    counts = {"b": [10, 3], "a": [10, 10]}
    assert task_values(counts, 10, 10) == (["a", "b"], pytest.approx([1.0, 0.0]))
    assert task_values(counts, 1)[1] == pytest.approx([1.0, 0.3])
    assert task_values({"a": [4, 2]}, 2)[1] == pytest.approx([5 / 6])  # the unbiased estimator, not c/n


def test_estimates_say_why_there_is_no_interval():
    counts = {"a": [10, 10], "b": [10, 3]}
    assert metric_estimate(counts, "val/pass@1", 0.65).interval.estimate == pytest.approx(0.65)
    assert metric_estimate(None, "val/pass@1", 0.65).missing == "no per-task data"
    assert metric_estimate(counts, "val/pass@1", 0.5).missing == "per-task data does not match the reported value"
    assert metric_estimate(counts, "val/pass@20", 0.5).missing.startswith("per-task data unusable")
    assert metric_estimate(counts, "memorization/gap", 3.0).missing == "not a pass rate over tasks"
    other = {"a": [10, 10], "c": [10, 3]}
    diff = difference_estimate(counts, 0.65, other, 0.65, "val/pass@1")
    assert diff.value == 0.0 and diff.missing == "scored on different tasks than the baseline"
    same = difference_estimate(counts, 0.65, {"a": [10, 9], "b": [10, 3]}, 0.6, "val/pass@1")
    assert same.interval.estimate == pytest.approx(0.05) and same.interval.low >= 0


def test_the_statistics_import_no_torch():
    code = "import sys, search.report.uncertainty; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---- the report ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def counted_report(tmp_path_factory) -> tuple[Path, Path]:
    run_dir = fixture.write_run(tmp_path_factory.mktemp("counted"), task_counts=True)
    out = tmp_path_factory.mktemp("counted-report")
    write_report(run_dir, out, png=False)
    return run_dir, out


def test_loader_reads_the_last_rungs_task_counts(counted_report):
    run = load_run(counted_report[0])
    assert run.trials[1].task_counts["val"]["task/1"] == (10, 10)
    assert set(run.trials[0].task_counts) == {"val", "test"}
    assert set(run.trials[5].task_counts) == {"val"}  # stopped at rung 1: no test split
    assert run.trials[6].task_counts == {}  # errored before its first checkpoint


def test_counts_of_another_rung_are_not_used(tmp_path):
    run_dir = fixture.write_run(tmp_path, task_counts=True, only=[0, 1])
    path = next((run_dir / "trials" / "0001abcd").glob(f"checkpoint_*/{TASK_COUNTS_FILE}"))
    path.write_text(json.dumps({**json.loads(path.read_text()), "step": 20}))  # not the rung it last reported
    run = load_run(run_dir)
    assert run.trials[0].task_counts and run.trials[1].task_counts == {}


def test_summary_gives_intervals_and_paired_gains(counted_report):
    _, out = counted_report
    summary = (out / "summary.md").read_text()
    # #2 is better than the baseline on 9 of 10 tasks: every resample of the paired differences is above 0.
    assert "val/pass@1: best 0.43 (#2) vs baseline 0.3 (+0.130 [+0.0" in summary
    assert "interval excludes 0: a significant gain); val/pass@10(10)" in summary
    # #1 solves one more task fully: the paired difference is 0.1 × Binomial(10, 0.1) over resamples, whose
    # 2.5% and 97.5% quantiles are 0 (P = 0.9¹⁰ = 0.35) and 0.3 (P(≥3) = 0.07, P(≥4) = 0.013).
    assert ("val/pass@10(10): best 0.2 (#1) vs baseline 0.1 (+0.100 [+0.000, +0.300], interval includes 0: "
            "not a significant gain)") in summary
    assert "## Pass rates with 95% intervals (bootstrap over tasks)" in summary
    assert "| #1 | paper | val/pass@10(10) | 0.200 | [0.000, 0.500] | +0.100 | [+0.000, +0.300] | no |" in summary
    # The baseline's own pass@10(10) is 0.1 × Binomial(10, 0.1) over resamples too.
    assert "| #0 | baseline | val/pass@10(10) | 0.100 | [0.000, 0.300] | – | (the baseline) | – |" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| #2 | search | val/pass@1 |"))
    assert row.endswith("| yes |")
    assert "no per-task data" not in summary


def test_page_shows_the_same_intervals(counted_report):
    _, out = counted_report
    page = (out / "index.html").read_text()
    assert 'id="uncertainty"' in page
    assert ("<td>#1</td><td>paper</td><td>val/pass@10(10)</td><td>0.200</td><td>[0.000, 0.500]</td>"
            "<td>+0.100</td><td>[+0.000, +0.300]</td><td>no</td>") in page
    assert "interval includes 0: not a significant gain" in page


def test_a_run_without_per_task_files_shows_values_only(tmp_path):
    run_dir = fixture.write_run(tmp_path)
    assert all(t.task_counts == {} for t in load_run(run_dir).trials)
    result = write_report(run_dir, tmp_path / "report", png=False)
    summary = Path(result["summary"]).read_text()
    assert "val/pass@1: best 0.38 (#2) vs baseline 0.3 (+0.08; no interval: no per-task data)" in summary
    assert "| #2 | search | val/pass@1 | 0.380 | no per-task data | +0.080 | no per-task data | – |" in summary
    assert "No per-task data for #1, #2, #3, #0" in summary
    assert "no per-task data" in Path(result["html"]).read_text()


# ---- the trainable writes the counts --------------------------------------------------------------------------


def test_each_rung_checkpoint_gets_the_per_task_counts(tmp_path, monkeypatch):
    import trainables.evaluation as evaluation
    import trainables.tune_trainable as tt
    from trainables.execution.results import summarize

    correct = {"val/0": 3, "val/1": 0, "val/2": 4, "test/0": 4, "test/1": 1}
    calls = []

    def fake_run_evaluation(model, tokenizer, problems, *, n, ks, ms, **kwargs):  # generation is tested elsewhere
        calls.append(kwargs["prompt_format"])
        results = [{"task_id": p["task_id"], "passed": j < correct[p["task_id"]]} for p in problems for j in range(n)]
        return evaluation.EvaluationRun(samples=[], results=results, summary=summarize(results, ks, ms))

    reports = []
    monkeypatch.setattr(evaluation, "run_evaluation", fake_run_evaluation)

    class Side:  # where a rung's report goes (tt.TrainWorkerSide, tt.InTrialSide), recorded here
        rank, world, local_rank, trial_root = 0, 1, 0, str(tmp_path)

        def publish(self, report, checkpoint_dir):
            reports.append(report)

    bench = {"n": 4, "k": [1, 2], "m": [2], "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 8, "timeout": 5}
    setup = {"training": {"rung_steps": 2}, "num_rungs": 2, "validation": bench, "test": bench, "seed": 0,
             "resources": {"cpus_per_worker": 1}}
    reporter = object.__new__(tt._RungReporter)
    reporter.setup, reporter.tap_layer, reporter.prompt_format, reporter.logs = setup, 0.5, "auto", []
    reporter.side, reporter.clock, reporter.rank, reporter.world = Side(), None, 0, 1
    reporter.val_problems = [{"task_id": t} for t in ("val/0", "val/1", "val/2")]
    reporter.test_problems = [{"task_id": t} for t in ("test/0", "test/1")]
    for rung in (1, 2):
        (tmp_path / f"rung{rung}").mkdir()
        reporter.on_rung(2 * rung, None, None, str(tmp_path / f"rung{rung}"))

    assert tt.TASK_COUNTS_FILE == TASK_COUNTS_FILE  # what the report looks for
    first = json.loads((tmp_path / "rung1" / TASK_COUNTS_FILE).read_text())
    assert first == {"rung": 1, "step": 2, "val": {"val/0": [4, 3], "val/1": [4, 0], "val/2": [4, 4]}}
    last = json.loads((tmp_path / "rung2" / TASK_COUNTS_FILE).read_text())
    assert last["step"] == 4 and last["test"] == {"test/0": [4, 4], "test/1": [4, 1]}
    assert calls == ["auto"] * 3
    # Tune (and so trials.csv) gets only the pass rates, never one key per task ...
    assert not [k for k in reports[-1] if k.startswith(("val/", "test/")) and "pass@" not in k and "seconds" not in k]
    # ... and the counts reproduce every reported rate, so the report can bootstrap them.
    for key, value in reports[-1].items():
        if "pass@" in key:
            estimate = metric_estimate(last[key.split("/")[0]], key, value)
            assert estimate.interval is not None, (key, estimate.missing)


def test_counts_of_every_rank_are_merged(monkeypatch):
    """Ranks evaluate disjoint task shares; each rank's file holds all of them (the collective faked here)."""
    import torch.distributed as dist

    import trainables.tune_trainable as tt

    other_rank = {"t/1": [4, 2], "t/3": [4, 0]}

    def all_gather_object(out, obj):
        out[:] = [obj, other_rank]

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    merged = tt._gather_task_counts({"t/0": (4, 1), "t/2": (4, 4)})
    assert merged == {"t/0": [4, 1], "t/2": [4, 4], "t/1": [4, 2], "t/3": [4, 0]}
