"""The GPU path: the train loop under DeepSpeed on CUDA in bf16 with ZeRO-2 and ZeRO-3 (one rank, NCCL).

The same loop and engine run on CPU in test_train_deepspeed.py; these check what only a GPU exercises:
DeepSpeed's CUDA accelerator and bf16 engine, NCCL, the fused (torch.compile'd, Triton) IB CE kernel under
ZeRO-2 and the checkpointed fallback under ZeRO-3. They skip where torch sees no CUDA device.
"""
from __future__ import annotations

import pytest
import torch

from process_groups import one_rank_process_group

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (DeepSpeed on CUDA, bf16, NCCL)")


@pytest.fixture
def one_rank_nccl_group(monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    torch.cuda.set_device(0)
    with one_rank_process_group("nccl"):
        yield


@pytest.mark.parametrize("stage,kernel", [(2, "fused_compiled"), (3, "checkpointed")])
def test_deepspeed_bf16_on_cuda_trains_like_plain_torch(tmp_path, one_rank_nccl_group, ce_kernels_used, stage, kernel):
    from test_train_loop import tiny_config
    from trainables.train.loop import train

    sections = {"optim": {"max_steps": 4}, "checkpoint_every": 0, "model": {"dtype": "bf16"}}
    plain = train(tiny_config(tmp_path / "plain", **sections))
    ds = train(tiny_config(tmp_path / f"zero{stage}", **sections, deepspeed={"zero_stage": stage}))

    assert ds["engine"] == "deepspeed" and ds["steps"] == 4
    assert ce_kernels_used[-1] == kernel
    # bf16 rounding and different reduction orders: the same run to within a few percent.
    assert ds["loss_history"] == pytest.approx(plain["loss_history"], rel=5e-2)
    assert (tmp_path / f"zero{stage}" / "final" / "adapter" / "adapter_model.safetensors").is_file()


def test_zero3_rung_on_cuda_evaluates_on_the_gathered_model(tmp_path, one_rank_nccl_group):
    """A ZeRO-3 rung on CUDA (the 2-rank CPU version is test_zero3_validation.py): generation, Min-K% memorization
    and the IB forward run inside DeepSpeedEngine.inference_context (the free-memory check on a real device, the
    gather on NCCL), and training goes on like a run without rungs."""
    from test_train_loop import tiny_config
    from test_zero3_validation import _uneven_rung
    from trainables.train import loop
    from trainables.train.loop import TrainHooks, train

    engines, record = [], {"generated": [], "memorization_gap": [], "ib_losses": []}
    build = loop.build_engine
    loop.build_engine = lambda *a: engines.append(build(*a)) or engines[-1]
    hooks = TrainHooks(on_rung=_uneven_rung(0, record, engines), rung_every=2)
    sections = {"optim": {"max_steps": 4}, "checkpoint_every": 0, "model": {"dtype": "bf16"}}
    sections["deepspeed"] = {"zero_stage": 3}
    try:
        rung = train(tiny_config(tmp_path / "rung", **sections), hooks=hooks)
        plain = train(tiny_config(tmp_path / "plain", **sections))
    finally:
        loop.build_engine = build
    assert len(record["generated"]) == 2 and all(g > 0 for g in record["generated"])
    assert all(v == v for losses in record["ib_losses"] for v in losses) and len(record["memorization_gap"]) == 2
    assert rung["loss_history"] == pytest.approx(plain["loss_history"], rel=1e-2)
