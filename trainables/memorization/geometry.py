"""Most- vs least-memorized groups and the geometry between their tap-layer representations.

An example's representation is hidden_states[tap] mean-pooled over the positions that predict its
response tokens: the positions Min-K% scores and the IB bottleneck compresses, so prompt-template
tokens shared by every example do not dilute the comparison.

Numbers reported for two groups A (most memorized) and B (least memorized):
- centroid_l2_distance: ||mean(A) - mean(B)||, in the model's hidden-state units;
- relative_centroid_distance: that distance divided by the mean representation norm (scale-free,
  comparable across layers and training runs that change activation scale);
- angular_disparity_deg: the mean, over all |A|·|B| cross-group pairs, of the angle between the two
  representations, in degrees (the paper's angular disparity);
- within_most_angle_deg / within_least_angle_deg: the same mean angle over distinct pairs inside a group;
- angular_gap_deg: the part of the cross-group angle not explained by each group's own spread,
  angular_disparity_deg - (W_most + W_least) / 2, where W is a group's mean angle over all its
  ordered pairs *including* each member with itself (W = within * (n - 1) / n). That is half the
  energy distance between the groups under the angle metric (the V-statistic): never negative (angles
  on the sphere are a metric of negative type), exactly 0 for identical groups however spread out they
  are, and larger the further apart the groups sit. It is the `memorization_gap` of a summary;
- centroid_angle_deg: the angle between the two group centroids.
Pairwise angles are computed a block of rows at a time, so memory stays O(block x group size).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from trainables.errors import ConfigError
from trainables.ib.config import IBConfig
from trainables.memorization.model_parts import model_parts
from trainables.memorization.scoring import score_features

DEFAULT_QUANTILE = 0.2
"""Fraction of the scored examples in each group (top 20% most memorized vs bottom 20%)."""
PAIR_BLOCK_ROWS = 1024
"""Rows of one group compared with the whole other group at a time."""


def check_quantile(quantile: float, where: str = "quantile") -> float:
    """`quantile` if it lies in (0, 0.5] (so the two groups never overlap); ConfigError naming `where` otherwise."""
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 < quantile <= 0.5:
        raise ConfigError(f"{where} must lie in (0, 0.5] (0.2 = top and bottom 20%), got {quantile!r}")
    return float(quantile)


def group_size(n_scored: int, quantile: float) -> int:
    """Examples per group: floor(quantile * n_scored), which must be at least 2 (within-group angles need a pair)."""
    size = math.floor(quantile * n_scored + 1e-9)
    if size < 2:
        need = math.ceil(2 / quantile - 1e-9)
        raise ConfigError(
            f"quantile {quantile} of {n_scored} scored examples gives groups of {size}; each group needs at "
            f"least 2, so use at least {need} examples (--max-examples) or a larger quantile"
        )
    return size


def split_groups(scores: Sequence[float], quantile: float) -> tuple[list[int], list[int]]:
    """(most, least): positions in `scores` of the top and bottom `quantile` fraction by Min-K% score.

    Ties are broken by position, so the split is deterministic; `most` runs from the highest score down.
    """
    check_quantile(quantile)
    size = group_size(len(scores), quantile)
    ascending = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return ascending[::-1][:size], ascending[:size]


def mean_pairwise_angle_deg(a: torch.Tensor, b: torch.Tensor | None = None, block_rows: int = PAIR_BLOCK_ROWS) -> float:
    """Mean angle in degrees between rows of `a` and rows of `b`, over all pairs.

    With b None: over the distinct pairs of rows of `a` (i != j). Computed in float64 a block of rows at a
    time; acos is ill-conditioned near 0 degrees: float32 cosines would put ~0.03 degree noise there,
    float64 about 1e-6 degrees.
    """
    within = b is None
    ua = _unit_rows(a)
    ub = ua if within else _unit_rows(b)
    if within and len(ua) < 2:
        raise ValueError("a within-group mean angle needs at least 2 rows")
    if len(ua) == 0 or len(ub) == 0:
        raise ValueError("mean pairwise angle of an empty set")
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(ua), block_rows):
        cos = (ua[start : start + block_rows] @ ub.T).clamp_(-1.0, 1.0)
        angles = torch.arccos(cos)
        if within:
            rows = torch.arange(angles.shape[0])
            angles[rows, rows + start] = 0.0
        total += angles.sum()
    pairs = len(ua) * (len(ua) - 1) if within else len(ua) * len(ub)
    return math.degrees(float(total) / pairs)


def group_geometry(representations: torch.Tensor, most: Sequence[int], least: Sequence[int]) -> dict[str, float]:
    """The numbers in this module's docstring for the rows `most` and `least` of representations [N, hidden]."""
    reps = representations.to(torch.float64)
    a, b = reps[list(most)], reps[list(least)]
    centroid_a, centroid_b = a.mean(dim=0), b.mean(dim=0)
    distance = float(torch.linalg.vector_norm(centroid_a - centroid_b))
    mean_norm = float(torch.linalg.vector_norm(torch.cat([a, b]), dim=1).mean())
    cross = mean_pairwise_angle_deg(a, b)
    within_most = mean_pairwise_angle_deg(a)
    within_least = mean_pairwise_angle_deg(b)
    # Self-pairs (angle 0) back in: the V-statistic form is what makes the gap a non-negative distance.
    spread = (within_most * (len(a) - 1) / len(a) + within_least * (len(b) - 1) / len(b)) / 2
    return {
        "centroid_l2_distance": distance,
        "mean_norm": mean_norm,
        "relative_centroid_distance": distance / mean_norm if mean_norm > 0 else float("nan"),
        "angular_disparity_deg": cross,
        "within_most_angle_deg": within_most,
        "within_least_angle_deg": within_least,
        "angular_gap_deg": cross - spread,
        "centroid_angle_deg": mean_pairwise_angle_deg(centroid_a[None], centroid_b[None]),
    }


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float64)
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-300)


def resolve_tap_index(num_layers: int, tap_layer: int | float, where: str = "tap_layer") -> int:
    """The hidden_states index `tap_layer` names (IBConfig's convention: int, negative int or fraction of depth)."""
    try:
        # alpha 0: only the tap-layer parsing and range checks of IBConfig are wanted here.
        return IBConfig(alpha=0.0, tap_layer=tap_layer).resolve_tap_layer(num_layers)
    except ConfigError as e:
        raise ConfigError(str(e).replace("ib.tap_layer", where)) from None


def tap_representations(
    model: object,
    features: Sequence[dict[str, list[int]]],
    *,
    pad_token_id: int,
    tap_layer: int | float = 0.5,
    batch_size: int = 8,
    progress: str | None = None,
) -> torch.Tensor:
    """float64 [N, hidden]: each feature's hidden_states[tap_layer] mean-pooled over its response-predicting positions.

    Read with one forward hook at the tap layer (no output_hidden_states); independent of batch_size.
    """
    parts = model_parts(model)
    index = resolve_tap_index(parts.num_layers, tap_layer)
    scored = score_features(
        parts, features, pad_token_id=pad_token_id, tap_index=index, batch_size=batch_size, progress=progress
    )
    return torch.stack([s.tap_mean for s in scored])
