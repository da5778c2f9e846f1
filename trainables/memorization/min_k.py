"""Min-K% Prob (Shi et al., 2023, "Detecting Pretraining Data from Large Language Models").

The score of one example is the mean of the lowest K% of its response tokens' log-probabilities
under a model. A text the model has memorized has few surprising tokens, so its lowest log-probs
are still high: a higher (less negative) score means more memorized. The paper uses K = 20%.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from trainables.errors import ConfigError
from trainables.memorization.model_parts import model_parts
from trainables.memorization.scoring import score_features

DEFAULT_K = 0.2
"""Fraction of the lowest-probability tokens averaged (the paper's K = 20%)."""


def check_k(k: float, where: str = "k") -> float:
    """`k` if it is a fraction in (0, 1]; ConfigError naming `where` otherwise."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0.0 < k <= 1.0:
        raise ConfigError(f"{where} must be a fraction in (0, 1] (0.2 = the lowest 20% of tokens), got {k!r}")
    return float(k)


def min_k_count(n_tokens: int, k: float) -> int:
    """How many of n_tokens the score averages: floor(k * n) as in the reference code, but at least 1.

    The reference implementation takes int(len * k) tokens and so has no score for responses shorter
    than 1/k tokens; keeping the single lowest token instead scores every response.
    """
    if n_tokens < 1:
        raise ValueError("Min-K% Prob needs at least one token")
    # The epsilon keeps k * n that should be an integer (0.3 * 10 = 3.0000000000000004, 0.29 * 100 =
    # 28.999999999999996) on the intended side of the floor.
    return max(1, math.floor(k * n_tokens + 1e-9))


def min_k_prob(token_logprobs: torch.Tensor, k: float = DEFAULT_K) -> float:
    """Mean of the lowest min_k_count(n, k) entries of a 1-D tensor of token log-probabilities."""
    if token_logprobs.ndim != 1:
        raise ValueError(f"token_logprobs must be 1-D, got shape {tuple(token_logprobs.shape)}")
    count = min_k_count(token_logprobs.numel(), k)
    lowest = torch.topk(token_logprobs.double(), count, largest=False).values
    return float(lowest.mean())


def min_k_scores(
    model: Any,
    features: Sequence[dict[str, list[int]]],
    *,
    pad_token_id: int,
    k: float = DEFAULT_K,
    batch_size: int = 8,
    progress: str | None = None,
) -> list[float]:
    """Min-K% Prob of each tokenized example {"input_ids", "labels"} under `model`, over its response tokens.

    `model` may be a plain Hugging Face causal LM, a peft model, an IBModel or an engine wrapping one;
    scores do not depend on batch_size (right padding under a causal mask).
    """
    check_k(k)
    scored = score_features(
        model_parts(model), features, pad_token_id=pad_token_id, batch_size=batch_size, progress=progress
    )
    return [min_k_prob(s.token_logprobs, k) for s in scored]
