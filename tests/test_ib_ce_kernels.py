"""The IB branch's CE through the LM head: fused (gradient in the forward) == checkpointed, and which one runs where."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.errors import ConfigError
from trainables.ib import IBConfig
from trainables.ib.ce_kernels import lm_head_cross_entropy, resolve_kernel
from trainables.ib.chunked_ce import chunked_lm_head_cross_entropy
from trainables.ib.fused_ce import fused_lm_head_cross_entropy

HIDDEN, VOCAB, ROWS = 24, 97, 23


def frozen_head(bias: bool = False, dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    head = nn.Linear(HIDDEN, VOCAB, bias=bias).to(dtype)
    head.requires_grad_(False)
    return head


def inputs(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    hidden = (torch.randn(ROWS, HIDDEN) * 2).to(dtype).requires_grad_(True)
    targets = torch.randint(0, VOCAB, (ROWS,))
    return hidden, targets


def loss_and_grad(fn, hidden, targets, head, chunk, **kwargs):
    h = hidden.detach().clone().requires_grad_(True)
    loss = fn(h, targets, head, chunk, **kwargs)
    (loss * 0.37).backward()  # a non-unit upstream gradient: the fused backward must scale by it
    return loss.detach(), h.grad


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [5, 1000])
def test_fused_matches_checkpointed_and_plain_cross_entropy_in_fp32(bias, chunk):
    head = frozen_head(bias)
    hidden, targets = inputs()
    ref_loss = nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    ref_grad = torch.autograd.grad(ref_loss * 0.37, hidden)[0]
    for fn in (chunked_lm_head_cross_entropy, fused_lm_head_cross_entropy):
        loss, grad = loss_and_grad(fn, hidden, targets, head, chunk)
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_fused_matches_checkpointed_in_bf16():
    head = frozen_head(dtype=torch.bfloat16)
    hidden, targets = inputs(torch.bfloat16)
    loss_c, grad_c = loss_and_grad(chunked_lm_head_cross_entropy, hidden, targets, head, 7)
    loss_f, grad_f = loss_and_grad(fused_lm_head_cross_entropy, hidden, targets, head, 7)
    assert loss_f.dtype == torch.float32 and grad_f.dtype == torch.bfloat16
    torch.testing.assert_close(loss_f, loss_c, rtol=1e-5, atol=1e-4)
    # Both round (softmax - onehot) to bf16 before the product with W, in a different order of operations.
    torch.testing.assert_close(grad_f.float(), grad_c.float(), rtol=2e-2, atol=2e-3)


def test_fused_never_calls_the_head_module_and_skips_the_gradient_product_without_grad(monkeypatch):
    from trainables.ib import fused_ce

    head = frozen_head()
    calls = []
    head.register_forward_pre_hook(lambda m, args: calls.append(1))
    hidden, targets = inputs()
    asked_for_grad = []
    math = fused_ce.chunk_loss_and_logit_grad
    monkeypatch.setattr(fused_ce, "chunk_loss_and_logit_grad", lambda l, t, g: asked_for_grad.append(g) or math(l, t, g))
    with torch.no_grad():  # evaluation: hidden still requires grad, but nothing will be differentiated
        no_grad_loss = fused_lm_head_cross_entropy(hidden, targets, head, 4)
    assert asked_for_grad and not any(asked_for_grad)
    loss, _ = loss_and_grad(fused_lm_head_cross_entropy, hidden, targets, head, 4)
    assert calls == []
    torch.testing.assert_close(no_grad_loss, loss)
    assert not no_grad_loss.requires_grad


def test_fused_refuses_a_trainable_head():
    head = frozen_head()
    head.weight.requires_grad_(True)
    hidden, targets = inputs()
    with pytest.raises(ValueError, match="frozen LM head"):
        fused_lm_head_cross_entropy(hidden, targets, head, 4)


def test_compiled_chunk_math_matches_eager():
    """torch.compile's fused kernel (C++ here, Triton on CUDA) computes what the eager chunk math does."""
    head = frozen_head(bias=True)
    hidden, targets = inputs()
    loss_e, grad_e = loss_and_grad(fused_lm_head_cross_entropy, hidden, targets, head, 6)
    loss_c, grad_c = loss_and_grad(fused_lm_head_cross_entropy, hidden, targets, head, 6, compiled=True)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-5, atol=1e-6)


def test_resolve_kernel_falls_back_where_fusing_is_impossible():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    head = frozen_head()
    assert resolve_kernel("auto", head, cpu) == "fused"
    assert resolve_kernel("auto", head, cuda) == "fused_compiled"
    assert resolve_kernel("fused_compiled", head, cpu) == "fused_compiled"
    assert resolve_kernel("checkpointed", head, cuda) == "checkpointed"

    trainable = frozen_head()
    trainable.weight.requires_grad_(True)
    assert resolve_kernel("fused", trainable, cpu) == "checkpointed"

    zero3 = frozen_head()
    zero3.weight.ds_id = 7  # what DeepSpeed ZeRO-3 sets on the parameters it partitions
    assert resolve_kernel("auto", zero3, cuda) == "checkpointed"

    assert resolve_kernel("auto", nn.Sequential(frozen_head()), cpu) == "checkpointed"


def test_dispatcher_gives_the_same_result_for_every_kernel():
    head = frozen_head()
    hidden, targets = inputs()
    results = [loss_and_grad(lm_head_cross_entropy, hidden, targets, head, 5, kernel=k) for k in ("checkpointed", "fused", "auto")]
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-5, atol=1e-6)


def test_config_rejects_an_unknown_kernel_quoting_it():
    with pytest.raises(ConfigError, match="'triton'"):
        IBConfig(ce_kernel="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the fused Triton kernel path)")
def test_fused_compiled_on_cuda_bf16_matches_checkpointed_with_no_more_memory():
    device = torch.device("cuda")
    torch.manual_seed(0)
    head = nn.Linear(576, 49152, bias=False).to(device, torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(2048, 576, device=device, dtype=torch.bfloat16)
    targets = torch.randint(0, 49152, (2048,), device=device)
    peaks, results = {}, {}
    for kernel in ("checkpointed", "fused_compiled", "checkpointed"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        results[kernel] = loss_and_grad(lm_head_cross_entropy, hidden, targets, head, 512, kernel=kernel)
        torch.cuda.synchronize()
        peaks[kernel] = torch.cuda.max_memory_allocated() - base
    torch.testing.assert_close(results["fused_compiled"][0], results["checkpointed"][0], rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(
        results["fused_compiled"][1].float(), results["checkpointed"][1].float(), rtol=2e-2, atol=2e-3
    )
    assert peaks["fused_compiled"] <= peaks["checkpointed"] * 1.05
