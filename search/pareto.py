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
