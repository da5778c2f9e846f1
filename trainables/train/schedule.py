"""Learning-rate schedule: linear warm-up to the peak, then cosine decay to lr * min_lr_ratio at max_steps."""
from __future__ import annotations

import math

from trainables.train.config import OptimConfig


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr used by optimizer step `step` (0-based: the first update is step 0).

    Warm-up reaches the full lr on its last step (step warmup_steps - 1) rather than starting the run
    with a wasted lr=0 update; the cosine then runs from 1 at step warmup_steps to min_lr_ratio at max_steps.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max_steps - warmup_steps
    if decay_steps <= 0:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """The schedule as a picklable callable for torch.optim.lr_scheduler.LambdaLR."""

    def __init__(self, optim: OptimConfig) -> None:
        self.warmup_steps = optim.warmup_steps
        self.max_steps = optim.max_steps
        self.min_lr_ratio = optim.min_lr_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(
            step, warmup_steps=self.warmup_steps, max_steps=self.max_steps, min_lr_ratio=self.min_lr_ratio
        )


def build_scheduler(optimizer, optim: OptimConfig):
    """A LambdaLR over `optimizer` following WarmupCosine; call .step() once per optimizer step."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, WarmupCosine(optim))
