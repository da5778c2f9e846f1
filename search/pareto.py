"""Pareto dominance on several objectives, each maximised or minimised. Pure functions, no I/O."""
from __future__ import annotations

import math
from typing import Sequence

Point = Sequence[float]


def _is_valid(point: Point) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in point)


def dominates(a: Point, b: Point, modes: Sequence[str]) -> bool:
    """True when `a` is at least as good as `b` on every objective and strictly better on one.

    modes[i] is "max" or "min" for objective i.
    """
    if not (len(a) == len(b) == len(modes)):
        raise ValueError(f"points and modes differ in length: {len(a)}, {len(b)}, {len(modes)}")
    strictly_better = False
    for x, y, mode in zip(a, b, modes):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        better, worse = (x > y, x < y) if mode == "max" else (x < y, x > y)
        if worse:
            return False
        strictly_better = strictly_better or better
    return strictly_better


def non_dominated(points: Sequence[Point], modes: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates, in input order.

    Points with a missing or non-finite value take no part (they are neither on the front nor dominate).
    Duplicated points are all kept: neither dominates the other.
    """
    valid = [i for i, p in enumerate(points) if _is_valid(p)]
    return [i for i in valid if not any(dominates(points[j], points[i], modes) for j in valid if j != i)]


def hypervolume(points: Sequence[Point], modes: Sequence[str], reference: Point) -> float:
    """Volume of objective space the points dominate, bounded by `reference` (Optuna's exact algorithm).

    `reference` is a worst-case point (below every maximised objective, above every minimised one); points
    not strictly better than it on every objective add nothing, and points with a non-finite value are
    skipped. Used to follow a search's progress: the volume can only grow as trials finish.
    """
    if len(reference) != len(modes) or any(m not in ("max", "min") for m in modes):
        raise ValueError(f"reference {list(reference)} and modes {list(modes)} must match, modes 'max'/'min'")
    if not _is_valid(reference):
        raise ValueError(f"reference point must be finite, got {list(reference)}")
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    # Optuna minimises: flip maximised objectives so "better" is "smaller" on every axis.
    sign = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    ref = sign * np.asarray(reference, dtype=float)
    losses = [sign * np.asarray(p, dtype=float) for p in points if len(p) == len(modes) and _is_valid(p)]
    losses = [p for p in losses if np.all(p < ref)]
    if not losses:
        return 0.0
    return float(compute_hypervolume(np.stack(losses), ref))


def promotion_order(points: Sequence[Point], modes: Sequence[str]) -> list[int]:
    """Indices best first, the way NSGA-II ranks a population: by non-dominated front (Optuna's fast
    non-dominated sort), then within a front by crowding distance, largest first (a front's extremes are
    infinitely far, so the best point on each objective leads its front). Ties keep input order.

    All points must be finite (a rung's results are, or ASHA makes no decision on them).
    """
    if not points:
        return []
    if not all(len(p) == len(modes) and _is_valid(p) for p in points):
        raise ValueError(f"points must be finite and have {len(modes)} values each")
    import numpy as np
    from optuna.study._multi_objective import _fast_non_domination_rank

    sign = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    losses = np.asarray(points, dtype=float) * sign
    fronts = _fast_non_domination_rank(losses)
    crowding = [0.0] * len(points)
    for front in set(fronts.tolist()):
        members = [i for i in range(len(points)) if fronts[i] == front]
        for i, distance in zip(members, crowding_distances(losses[members].tolist())):
            crowding[i] = distance
    return sorted(range(len(points)), key=lambda i: (fronts[i], -crowding[i], i))


def crowding_distances(losses: Sequence[Point]) -> list[float]:
    """NSGA-II crowding distance of each point of one front: per objective, the gap between its two
    neighbours in that objective's order over the front's range, summed; the ends of each order are inf."""
    n = len(losses)
    distance = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for k in range(len(losses[0])):
        order = sorted(range(n), key=lambda i: losses[i][k])
        low, high = losses[order[0]][k], losses[order[-1]][k]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for prev, mid, nxt in zip(order, order[1:], order[2:]):
            distance[mid] += (losses[nxt][k] - losses[prev][k]) / (high - low)
    return distance


def keeps_at_rung(current: Point, recorded: Sequence[Point], modes: Sequence[str], reduction_factor: float) -> bool:
    """Multi-objective successive halving: whether a trial with `current` objective values goes on past a rung
    where `recorded` are the earlier trials' values. It goes on when it ranks (promotion_order, placed before
    any identical point) among the best ceil((len(recorded) + 1) / reduction_factor) of them all, the
    multi-objective reading of ASHA's "not below the (1 - 1/rf) quantile"; the first trial always goes on.
    """
    if not recorded:
        return True
    points = [current, *recorded]  # index 0: the current trial wins ties by input order
    place = promotion_order(points, modes).index(0)
    return place < math.ceil(len(points) / reduction_factor)


def is_pass_rate(metric: str) -> bool:
    """Whether a result key is a pass rate (val/pass@1, test/pass@10(10), ...): bounded by 0 and 1."""
    return metric.rsplit("/", 1)[-1].startswith("pass@")


def reference_point(objectives: Sequence[tuple[str, str]], points: Sequence[Point]) -> list[float]:
    """Worst corner for the hypervolume of (metric, mode) objectives: a pass rate's own bound (0 when maximised,
    1 when minimised), else the worst finite value among `points` (0 when there is none), so every point counts
    from the same corner as a search goes. The report and the console's progress line both take it."""
    reference = []
    for i, (metric, mode) in enumerate(objectives):
        if is_pass_rate(metric):
            reference.append(0.0 if mode == "max" else 1.0)
            continue
        seen = [p[i] for p in points if math.isfinite(p[i])]
        reference.append((min(seen) if mode == "max" else max(seen)) if seen else 0.0)
    return reference
