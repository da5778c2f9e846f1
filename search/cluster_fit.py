"""Can the Ray cluster ever hold one trial? Checked before the search starts instead of waiting forever.

Ray queues a placement group that no node can hold and only logs a warning, so a GPU space started on a
CPU-only machine would sit idle with no error. A private local cluster (no --address) never grows, so a
shortfall there is an error; a cluster joined with --address may have an autoscaler that adds nodes of the
missing kind (cluster.yaml's GPU workers start at min_workers 0), so there it is a warning.
"""
from __future__ import annotations

from typing import Mapping


def trial_needs(workers: int, cpus_per_worker: float, gpus_per_worker: float) -> dict[str, float]:
    """Resources one trial's Ray Train worker group asks for (its driver asks for no CPU or GPU)."""
    needs = {"CPU": workers * cpus_per_worker}
    if gpus_per_worker:
        needs["GPU"] = workers * gpus_per_worker
    return needs


def shortfalls(needs: Mapping[str, float], cluster: Mapping[str, float]) -> list[str]:
    """One phrase per resource the whole cluster has less of than one trial needs (empty: it fits in total).

    A total that fits can still be split across nodes badly; Ray's own scheduler reports that case."""
    return [
        f"{need:g} {name} (the cluster has {cluster.get(name, 0):g})"
        for name, need in needs.items()
        if cluster.get(name, 0) + 1e-9 < need
    ]
