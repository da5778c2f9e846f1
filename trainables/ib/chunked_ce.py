"""Cross-entropy of N hidden vectors through an LM head without ever holding [N, vocab] logits.

The IB branch scores its decoded vectors with the base model's own (frozen) LM head. Doing that in
one go would materialise a second full-vocabulary logits tensor (the paper's code does, for the
whole padded batch). Here the N target tokens are cut into chunks; each chunk's logits live only
inside a checkpointed function, so the forward keeps nothing of size vocab and the backward
recomputes one chunk's logits at a time. Peak extra memory: about two chunk x vocab fp32 buffers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def _chunk_cross_entropy_sum(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    # Upcast like transformers' own loss does: log-softmax over 49k bf16 logits is too coarse.
    logits = lm_head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_lm_head_cross_entropy(
    hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module, chunk_size: int
) -> torch.Tensor:
    """Sum over the N rows of CE(lm_head(hidden[i]), targets[i]) in fp32, `chunk_size` rows at a time.

    hidden: [N, hidden_size]; targets: [N] token ids. Returns a 0-dim fp32 tensor.
    """
    total = hidden.new_zeros((), dtype=torch.float32)
    needs_grad = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, hidden.shape[0], chunk_size):
        h = hidden[start:start + chunk_size]
        t = targets[start:start + chunk_size]
        if needs_grad:
            total = total + checkpoint(_chunk_cross_entropy_sum, h, t, lm_head, use_reentrant=False)
        else:
            total = total + _chunk_cross_entropy_sum(h, t, lm_head)
    return total
