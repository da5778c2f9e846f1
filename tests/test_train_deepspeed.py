"""The DeepSpeed engine path of the loop, single process on CPU (a 1-rank gloo group, as Ray Train would set up)."""
from __future__ import annotations

import pytest
import torch

from process_groups import one_rank_process_group
from test_train_loop import final_weights, tiny_config
from trainables.train import checkpoint as ckpt
from trainables.train.loop import TrainHooks, train


@pytest.fixture
def one_rank_gloo_group(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with one_rank_process_group("gloo"):
        yield


@pytest.mark.slow
def test_deepspeed_zero2_matches_plain_torch_and_resumes(tmp_path, one_rank_gloo_group):
    sections = {"optim": {"max_steps": 4}, "checkpoint_every": 0}
    plain = train(tiny_config(tmp_path / "plain", **sections))

    ds_sections = {**sections, "deepspeed": {"zero_stage": 2}}
    stop_at_2 = TrainHooks(on_rung=lambda step, *_: step == 2, rung_every=2)
    first = train(tiny_config(tmp_path / "ds", **ds_sections), hooks=stop_at_2)
    assert first["engine"] == "deepspeed" and first["steps"] == 2
    assert (ckpt.latest_checkpoint(tmp_path / "ds") / "deepspeed").is_dir()
    resumed = train(tiny_config(tmp_path / "ds", **ds_sections))

    assert resumed["resumed_from"].endswith("step-000002") and resumed["steps"] == 4
    # Same AdamW, same schedule, same token-weighted accumulation: the same run, up to fp reduction order.
    assert resumed["loss_history"] == pytest.approx(plain["loss_history"], rel=1e-5)
    assert (tmp_path / "ds" / "final" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "ds" / "final" / "ib_head.safetensors").is_file()


@pytest.mark.slow
def test_deepspeed_zero3_trains_the_ib_model_like_plain_torch_and_saves_whole_weights(
    tmp_path, one_rank_gloo_group, ce_kernels_used
):
    """ZeRO-3 partitions every parameter, the frozen (tied) LM head included: the IB branch must then score
    through the head module (ib.ce_kernel auto falls back to "checkpointed"), and saving must gather."""
    sections = {"optim": {"max_steps": 3}, "checkpoint_every": 0}
    plain = train(tiny_config(tmp_path / "plain", **sections))
    plain_kernels = set(ce_kernels_used)
    ce_kernels_used.clear()
    zero3 = train(tiny_config(tmp_path / "z3", **sections, deepspeed={"zero_stage": 3}))

    assert plain_kernels == {"fused"} and set(ce_kernels_used) == {"checkpointed"}

    assert zero3["engine"] == "deepspeed" and zero3["steps"] == 3
    assert zero3["loss_history"] == pytest.approx(plain["loss_history"], rel=1e-5)
    plain_weights, zero3_weights = final_weights(tmp_path / "plain"), final_weights(tmp_path / "z3")
    assert plain_weights.keys() == zero3_weights.keys()
    for name, tensor in plain_weights.items():
        assert zero3_weights[name].shape == tensor.shape, name  # whole tensors, not a rank's shard
        torch.testing.assert_close(zero3_weights[name], tensor, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_bf16_engine_trains_like_plain_torch_bf16(tmp_path, one_rank_gloo_group, stage):
    """DeepSpeed's bf16 engine (what the GPU spaces use), here on CPU; test_gpu_path.py repeats it on CUDA."""
    sections = {"optim": {"max_steps": 3}, "checkpoint_every": 0, "model": {"dtype": "bf16"}}
    plain = train(tiny_config(tmp_path / "plain", **sections))
    ds = train(tiny_config(tmp_path / "ds", **sections, deepspeed={"zero_stage": stage}))
    assert ds["engine"] == "deepspeed" and ds["steps"] == 3
    assert ds["loss_history"] == pytest.approx(plain["loss_history"], rel=1e-2)
