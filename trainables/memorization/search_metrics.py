"""The memorization numbers a search trial reports, by name: one place for the trial that reports them and the
space file that may choose them as objectives.

Imports nothing heavy (no torch), so search.space can read the names while validating a space file.
Every name starts with METRIC_PREFIX; values come from a measure_memorization summary.
"""
from __future__ import annotations

from typing import Any, Mapping

METRIC_PREFIX = "memorization/"
"""Prefix of every memorization metric a trial reports (next to val/... and test/...)."""

GAP = "memorization/gap"
"""The fine-tuned model's angular gap (degrees) between the most- and least-memorized groups' tap-layer
representations (trainables.memorization.geometry: angular_gap_deg); the groups are the base model's top and
bottom quantile by Min-K% Prob. Lower: the two groups are represented more alike, the effect IB-FT aims at."""
GAP_BASE = "memorization/gap_base"
"""The same gap under the base model (adapter off), on the same groups and layer."""
GAP_CHANGE = "memorization/gap_change"
"""gap - gap_base: what fine-tuning did to the gap (negative: it narrowed)."""
L2_DISTANCE = "memorization/l2_distance"
"""L2 distance between the two groups' centroids under the fine-tuned model (hidden-state units)."""
RELATIVE_DISTANCE = "memorization/relative_distance"
"""l2_distance divided by the mean representation norm (scale-free)."""
ANGULAR_DISPARITY = "memorization/angular_disparity"
"""Mean angle (degrees) over all cross-group pairs of representations under the fine-tuned model (the paper's
angular disparity)."""
MIN_K_MEAN = "memorization/min_k_mean"
"""Mean Min-K% Prob of the scored training examples under the fine-tuned model (higher: more memorized)."""
MIN_K_MEAN_BASE = "memorization/min_k_mean_base"
"""The same under the base model."""
TAP_INDEX = "memorization/tap_index"
"""hidden_states index the representations were read at."""
N_SCORED = "memorization/n_scored"
"""Training examples scored."""
SECONDS = "memorization/seconds"
"""Wall-clock seconds the measurement took (rank 0)."""

OBJECTIVE_METRICS = (GAP, GAP_CHANGE, L2_DISTANCE, RELATIVE_DISTANCE, ANGULAR_DISPARITY, MIN_K_MEAN)
"""The memorization metrics a space may choose as objectives; each is lower-is-better (mode min)."""
REPORTED_METRICS = OBJECTIVE_METRICS + (GAP_BASE, MIN_K_MEAN_BASE, TAP_INDEX, N_SCORED, SECONDS)
"""Everything a trial with memorization enabled reports at its final rung (GAP_BASE and MIN_K_MEAN_BASE only
when the model carries a LoRA adapter, which every search trial does)."""
MODE = "min"
"""Direction of every memorization objective."""


def search_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The reported metrics of a measure_memorization summary (SECONDS excepted: the caller times it).

    Values that are None (no base model to compare with) are left out.
    """
    geometry = summary["models"][summary["gap_of"]]["geometry"]
    values = {
        GAP: summary["memorization_gap"],
        GAP_BASE: summary.get("memorization_gap_base"),
        GAP_CHANGE: summary.get("memorization_gap_change"),
        L2_DISTANCE: geometry["centroid_l2_distance"],
        RELATIVE_DISTANCE: geometry["relative_centroid_distance"],
        ANGULAR_DISPARITY: geometry["angular_disparity_deg"],
        MIN_K_MEAN: summary["min_k_mean"],
        MIN_K_MEAN_BASE: summary.get("min_k_mean_base"),
        TAP_INDEX: summary["tap_index"],
        N_SCORED: summary["n_scored"],
    }
    return {name: float(value) for name, value in values.items() if value is not None}

