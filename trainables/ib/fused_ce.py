"""Cross-entropy through a frozen LM head with the gradient computed in the forward pass, chunk by chunk.

The checkpointed version (chunked_ce.py) multiplies each chunk by the LM head three times: forward,
recompute in the backward, and the gradient product. With the head frozen the only gradient needed is the
one for the hidden vectors, and it can be formed while the chunk's logits are still alive:
d CE / d h = (softmax(logits) - onehot(target)) @ W. So the forward does two products per chunk and keeps
only that [N, hidden] gradient (the size of the input); the backward scales it. Same peak memory as the
checkpointed version (about two chunk x vocab fp32 buffers), a third less LM-head work. This is what
Liger-Kernel's fused linear cross-entropy does on GPUs; here the per-chunk softmax/gather/scatter math is
one small function that torch.compile fuses into a single kernel on CUDA (`compile_chunk_math`).

Not for a trainable LM head (its weight gradient would be needed) or a ZeRO-3-partitioned one (its weight
is a shard outside the module's forward hooks): ce_kernels.resolve_kernel falls back to the checkpointed one.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

ChunkMath = Callable[[torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, Optional[torch.Tensor]]]


def chunk_loss_and_logit_grad(
    logits: torch.Tensor, targets: torch.Tensor, need_grad: bool
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(sum of CE over the rows, d sum / d logits in the logits' dtype or None) for one chunk.

    Computed in fp32 whatever the logits' dtype, like transformers' own loss: a log-softmax over ~50k
    bf16 logits is too coarse."""
    logits32 = logits.float()
    lse = torch.logsumexp(logits32, dim=-1)
    picked = logits32.gather(1, targets.unsqueeze(1)).squeeze(1)
    loss = (lse - picked).sum()
    if not need_grad:
        return loss, None
    grad = torch.exp(logits32 - lse.unsqueeze(1))
    grad.scatter_add_(1, targets.unsqueeze(1), torch.full_like(picked, -1.0).unsqueeze(1))
    return loss, grad.to(logits.dtype)


_compiled: dict[str, ChunkMath] = {}


def compile_chunk_math() -> ChunkMath:
    """chunk_loss_and_logit_grad through torch.compile (once per process): on CUDA Inductor emits one fused
    Triton kernel for upcast + logsumexp + gather + softmax - onehot + downcast instead of ~8 passes over
    the chunk's logits. Works on CPU too (C++ kernels), which is how the tests exercise it."""
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(chunk_loss_and_logit_grad, dynamic=True)
    return _compiled["fn"]


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, targets, weight, bias, chunk_size, chunk_math, need_grad):  # noqa: D401 - autograd API
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            loss, grad_logits = chunk_math(F.linear(h, weight, bias), targets[start:start + chunk_size], need_grad)
            total = total + loss
            if need_grad:
                torch.matmul(grad_logits, weight, out=grad_hidden[start:start + chunk_size])
        ctx.save_for_backward(grad_hidden)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        (grad_hidden,) = ctx.saved_tensors
        grad = grad_hidden * grad_total.to(grad_hidden.dtype) if grad_hidden is not None else None
        return grad, None, None, None, None, None, None


def fused_lm_head_cross_entropy(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    lm_head: torch.nn.Linear,
    chunk_size: int,
    compiled: bool = False,
) -> torch.Tensor:
    """Sum over the N rows of CE(lm_head(hidden[i]), targets[i]) in fp32; gradient for `hidden` only.

    hidden: [N, hidden_size]; targets: [N] token ids (no ignore index: callers pass target tokens only);
    lm_head: a frozen nn.Linear. Returns a 0-dim fp32 tensor."""
    if lm_head.weight.requires_grad or (lm_head.bias is not None and lm_head.bias.requires_grad):
        raise ValueError("fused_lm_head_cross_entropy needs a frozen LM head (it computes no weight gradient)")
    chunk_math = compile_chunk_math() if compiled else chunk_loss_and_logit_grad
    # Decided here, not from ctx.needs_input_grad: that says requires_grad even under torch.no_grad(), and
    # evaluation would then pay for a gradient product nobody uses.
    need_grad = torch.is_grad_enabled() and hidden.requires_grad
    return _FusedLinearCrossEntropy.apply(
        hidden, targets, lm_head.weight, lm_head.bias, chunk_size, chunk_math, need_grad
    )
