"""Two plain-torch ranks (gloo, DDP) train exactly like one process on the whole global batch."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from test_train_loop import final_weights, tiny_config

# No dropout and an IB posterior narrow enough (sigma ~ 1e-6) that per-rank noise streams do not matter.
DETERMINISTIC = {
    "lora": {"dropout": 0.0},
    "ib": {"logvar_min": -30.0, "logvar_max": -28.0},
    "optim": {"max_steps": 3, "max_grad_norm": 0.0},
}


def _rank_main(rank: int, world: int, port: int, output_dir: str) -> None:
    import torch.distributed as dist

    from trainables.train.loop import train

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = tiny_config(Path(output_dir), **{**DETERMINISTIC, "optim": {**DETERMINISTIC["optim"], "batch_size": 1}})
        summary = train(cfg)
        Path(output_dir, f"rank{rank}.json").write_text(json.dumps(summary))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_global_batch(tmp_path):
    from trainables.train.loop import train

    single = train(tiny_config(tmp_path / "single", **{**DETERMINISTIC, "optim": {**DETERMINISTIC["optim"], "batch_size": 2}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank_main, args=(2, port, str(tmp_path / "ddp")), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world_size"] == 2
    # logged metrics are reduced across ranks, so both report the global batch's loss
    assert ranks[0]["loss_history"] == ranks[1]["loss_history"]
    assert ranks[0]["loss_history"] == pytest.approx(single["loss_history"], rel=1e-5)
    assert ranks[0]["tokens"] == single["tokens"]
    a, b = final_weights(tmp_path / "single"), final_weights(tmp_path / "ddp")
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key
