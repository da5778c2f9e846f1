"""Which implementation scores the IB branch's decoded vectors through the LM head (ib.ce_kernel).

- "checkpointed": chunked_ce.py; calls the LM head module, so it works with anything (a trainable head,
  ZeRO-3 partitioned weights gathered by DeepSpeed's module hooks); three head products per chunk.
- "fused": fused_ce.py; gradient formed in the forward, two head products per chunk; frozen, materialised
  heads only.
- "fused_compiled": "fused" with the per-chunk softmax math fused by torch.compile (one Triton kernel on
  CUDA); costs a compilation at the first step of each process.
- "auto": "fused_compiled" on CUDA, "fused" elsewhere, "checkpointed" where fusing is impossible.
"""
from __future__ import annotations

import torch
from torch import nn

from trainables.ib.chunked_ce import chunked_lm_head_cross_entropy
from trainables.ib.fused_ce import fused_lm_head_cross_entropy


def _fusable(lm_head: nn.Module) -> bool:
    if not isinstance(lm_head, nn.Linear):
        return False
    params = [lm_head.weight] + ([lm_head.bias] if lm_head.bias is not None else [])
    # DeepSpeed ZeRO-3 marks its partitioned parameters with ds_id; their .data is a shard until the
    # module's pre-forward hook gathers it, which only calling the module triggers.
    return not any(p.requires_grad or hasattr(p, "ds_id") for p in params)


def resolve_kernel(kernel: str, lm_head: nn.Module, device: torch.device) -> str:
    """The implementation `kernel` means for this head on this device (never "auto")."""
    if kernel == "checkpointed" or not _fusable(lm_head):
        return "checkpointed"
    if kernel == "auto":
        return "fused_compiled" if device.type == "cuda" else "fused"
    return kernel


def lm_head_cross_entropy(
    hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module, chunk_size: int, kernel: str = "auto"
) -> torch.Tensor:
    """Sum of CE(lm_head(hidden[i]), targets[i]) over the rows, in fp32, by the implementation `kernel` resolves to."""
    chosen = resolve_kernel(kernel, lm_head, hidden.device)
    if chosen == "checkpointed":
        return chunked_lm_head_cross_entropy(hidden, targets, lm_head, chunk_size)
    return fused_lm_head_cross_entropy(hidden, targets, lm_head, chunk_size, compiled=chosen == "fused_compiled")
