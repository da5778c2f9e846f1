"""Bootstrap confidence intervals over benchmark tasks for pass@k(m), and paired differences between trials.

A pass rate over T tasks is the mean of T per-task values, each the unbiased pass@k(m) estimate from that
task's n samples with c correct (trainables.metrics.pass_at_k). With 10 validation tasks the mean moves in
steps of 0.1 at pass@10(10), so one task can decide a front: the report gives every rate a percentile
interval from resampling the tasks with replacement, and every difference from the baseline a PAIRED
interval (one set of resampled task indices applied to both trials), which removes the spread of task
difficulty that both trials share. Pure numpy (no torch), seeded: the same run gives the same intervals.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from trainables.errors import ConfigError
from trainables.metrics import pass_at_k

RESAMPLES = 2000
"""Bootstrap resamples per interval."""
LEVEL = 0.95
"""Confidence level of the percentile intervals."""
SEED = 0
"""Seed of the resampling (every interval of a report uses it, so rebuilding a report changes nothing)."""
_DECIMALS = 12
"""Interval bounds are rounded to this many decimals (far below any pass-rate step, far above float noise)."""
_CHUNK_CELLS = 1 << 21
"""Resampled task indices drawn at once (bounds memory for benchmarks with many tasks)."""
_PASS_METRIC = re.compile(r"^(?:(?P<split>[A-Za-z_]+)/)?pass@(?P<k>\d+)(?:\((?P<m>\d+)\))?$")


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval."""

    estimate: float
    """Mean over the tasks (of the values, or of the per-task differences)."""
    low: float
    """Lower end of the interval."""
    high: float
    """Upper end of the interval."""
    n_tasks: int
    """Tasks the estimate is a mean over."""
    level: float = LEVEL
    """Confidence level."""

    @property
    def excludes_zero(self) -> bool:
        """Whether 0 lies outside the interval (a difference distinguishable from none at this level)."""
        return self.low > 0 or self.high < 0


def parse_pass_metric(name: str) -> Optional[tuple[Optional[str], int, int]]:
    """("val", 10, 10) for "val/pass@10(10)", ("test", 1, 1) for "test/pass@1"; None for other metrics."""
    match = _PASS_METRIC.match(name)
    if match is None:
        return None
    k, m = int(match["k"]), int(match["m"] or 1)
    return match["split"], k, m


def task_values(counts: Mapping[str, Sequence[int]], k: int, m: int = 1) -> tuple[list[str], np.ndarray]:
    """(task ids sorted, their pass@k(m) values) from task_id -> (n, c); ConfigError when a task has n < k."""
    tasks = sorted(counts)
    values = np.array([pass_at_k(int(counts[t][0]), int(counts[t][1]), k, m) for t in tasks], dtype=float)
    return tasks, values


def resampled_means(columns: Sequence[np.ndarray], *, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, len(columns)]: the mean of each column over the same task indices drawn with replacement.

    Every column is one trial's per-task values over the same tasks in the same order; drawing the indices
    once for all columns is what makes a difference of two columns a paired bootstrap.
    """
    data = np.stack([np.asarray(c, dtype=float) for c in columns], axis=1)  # [tasks, columns]
    tasks = data.shape[0]
    if tasks == 0:
        raise ConfigError("a bootstrap over tasks needs at least one task")
    if resamples < 1:
        raise ConfigError(f"bootstrap resamples must be >= 1, got {resamples}")
    # Resampled deviations from each column's exact mean: equal tasks give exactly that mean in every resample.
    centre = np.array([_mean(data[:, j]) for j in range(data.shape[1])])
    deviations = data - centre
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, data.shape[1]))
    step = max(1, _CHUNK_CELLS // tasks)
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        index = rng.integers(0, tasks, size=(rows, tasks))
        out[start : start + rows] = centre + deviations[index].mean(axis=1)
    return out


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The (1 - level)/2 and (1 + level)/2 quantiles of the bootstrap distribution."""
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must lie in (0, 1), got {level}")
    tail = (1 - level) / 2
    low, high = np.quantile(np.asarray(samples, dtype=float), [tail, 1 - tail])
    # Rounded to 12 decimals (+ 0.0 turns -0.0 into 0.0): a bound that is exactly 0 in exact arithmetic must not
    # come out as ±1e-17, which would flip whether the interval excludes 0.
    return float(np.round(low, _DECIMALS)) + 0.0, float(np.round(high, _DECIMALS)) + 0.0


def bootstrap_interval(
    values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> Interval:
    """The mean of per-task values with its percentile interval over resampled tasks."""
    values = np.asarray(values, dtype=float)
    means = resampled_means([values], resamples=resamples, seed=seed)[:, 0]
    low, high = percentile_interval(means, level)
    return Interval(_mean(values), low, high, len(values), level)


def paired_difference_interval(
    a: Sequence[float], b: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> Interval:
    """mean(a) − mean(b) for two trials' values on the same tasks (same order), resampling task indices once
    and applying them to both."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ConfigError(f"a paired bootstrap needs the same tasks for both trials, got {a.size} and {b.size}")
    means = resampled_means([a, b], resamples=resamples, seed=seed)
    low, high = percentile_interval(means[:, 0] - means[:, 1], level)
    return Interval(_mean(a) - _mean(b), low, high, len(a), level)


def unpaired_difference_interval(
    a: Sequence[float], b: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> Interval:
    """mean(a) − mean(b) resampling each trial's tasks independently (what pairing improves on)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    mean_a = resampled_means([a], resamples=resamples, seed=seed)[:, 0]
    mean_b = resampled_means([b], resamples=resamples, seed=seed + 1)[:, 0]
    low, high = percentile_interval(mean_a - mean_b, level)
    return Interval(_mean(a) - _mean(b), low, high, min(len(a), len(b)), level)


# ---- what the report asks: one trial's metric, and its difference from the baseline -----------------------


@dataclass(frozen=True)
class Estimate:
    """A reported metric with its interval, or why there is none."""

    value: Optional[float]
    """The reported value (None: the trial did not report the metric)."""
    interval: Optional[Interval] = None
    """The bootstrap interval over tasks (None: see `missing`)."""
    missing: Optional[str] = None
    """Why there is no interval, in words."""


AGREEMENT = 1e-6
"""How far the mean of the per-task values may lie from the reported value before the counts are distrusted."""


def metric_estimate(
    counts: Optional[Mapping[str, Sequence[int]]], metric: str, value: Optional[float], **kwargs
) -> Estimate:
    """The reported `value` of `metric` (e.g. "val/pass@10(10)") with its interval from the split's per-task
    counts (task_id -> (n, c)); `kwargs` go to bootstrap_interval."""
    values, missing = _values(counts, metric, value)
    if values is None:
        return Estimate(value, None, missing)
    return Estimate(value, bootstrap_interval(values[1], **kwargs))


def difference_estimate(
    counts: Optional[Mapping[str, Sequence[int]]],
    value: Optional[float],
    base_counts: Optional[Mapping[str, Sequence[int]]],
    base_value: Optional[float],
    metric: str,
    **kwargs,
) -> Estimate:
    """value − base_value of `metric` with its paired bootstrap interval over the tasks both were scored on."""
    if value is None or base_value is None:
        return Estimate(None, None, "not reported by both trials")
    delta = value - base_value
    mine, missing = _values(counts, metric, value)
    if mine is None:
        return Estimate(delta, None, missing)
    theirs, missing = _values(base_counts, metric, base_value)
    if theirs is None:
        return Estimate(delta, None, f"baseline: {missing}")
    if mine[0] != theirs[0]:
        return Estimate(delta, None, "scored on different tasks than the baseline")
    return Estimate(delta, paired_difference_interval(mine[1], theirs[1], **kwargs))


def _values(
    counts: Optional[Mapping[str, Sequence[int]]], metric: str, value: Optional[float]
) -> tuple[Optional[tuple[list[str], np.ndarray]], Optional[str]]:
    parsed = parse_pass_metric(metric)
    if parsed is None:
        return None, "not a pass rate over tasks"
    if value is None:
        return None, "not reported"
    if not counts:
        return None, "no per-task data"
    _, k, m = parsed
    try:
        tasks, values = task_values(counts, k, m)
    except (ConfigError, TypeError, ValueError, IndexError):
        return None, f"per-task data unusable for pass@{k}" + (f"({m})" if m > 1 else "")
    if not math.isclose(_mean(values), value, rel_tol=0, abs_tol=AGREEMENT):
        return None, "per-task data does not match the reported value"
    return (tasks, values), None


def _mean(values: np.ndarray) -> float:
    return math.fsum(values.tolist()) / len(values) if len(values) else math.nan
