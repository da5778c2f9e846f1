"""The DeepSpeed engine path of the loop, single process on CPU (a 1-rank gloo group, as Ray Train would set up)."""
from __future__ import annotations

import socket

import pytest
import torch.distributed as dist

from test_train_loop import tiny_config
from trainables.train import checkpoint as ckpt
from trainables.train.loop import TrainHooks, train


@pytest.fixture
def one_rank_gloo_group(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


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
