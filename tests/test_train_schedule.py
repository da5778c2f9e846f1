"""Fast tests of the loop's pure parts: lr schedule, data order, checkpoint directory handling, RNG capture."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from trainables.errors import ConfigError
from trainables.train import checkpoint as ckpt
from trainables.train.batch_order import BatchOrder, epoch_permutation
from trainables.train.config import OptimConfig
from trainables.train.schedule import build_scheduler, lr_factor


def test_warmup_is_linear_and_reaches_the_peak_on_its_last_step():
    factors = [lr_factor(s, warmup_steps=4, max_steps=20, min_lr_ratio=0.1) for s in range(4)]
    assert factors == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_cosine_runs_from_peak_to_min_ratio_at_max_steps():
    kw = dict(warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    assert lr_factor(4, **kw) == pytest.approx(1.0)
    assert lr_factor(12, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert lr_factor(20, **kw) == pytest.approx(0.1)
    assert lr_factor(25, **kw) == pytest.approx(0.1)  # never below the floor
    decay = [lr_factor(s, **kw) for s in range(4, 21)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_no_warmup_starts_at_the_peak():
    assert lr_factor(0, warmup_steps=0, max_steps=10, min_lr_ratio=0.0) == pytest.approx(1.0)
    assert lr_factor(5, warmup_steps=0, max_steps=10, min_lr_ratio=0.0) == pytest.approx(0.5)


def test_scheduler_sets_the_optimizer_lr_step_by_step():
    optim = OptimConfig(lr=1e-3, warmup_steps=2, max_steps=6, min_lr_ratio=0.5)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=optim.lr)
    sched = build_scheduler(opt, optim)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1e-3 * lr_factor(s, warmup_steps=2, max_steps=6, min_lr_ratio=0.5) for s in range(6)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(5e-4) and seen[1] == pytest.approx(1e-3)


def test_data_order_is_a_pure_function_of_seed_and_epoch():
    assert epoch_permutation(10, 3, 0) == epoch_permutation(10, 3, 0)
    assert epoch_permutation(10, 3, 0) != epoch_permutation(10, 3, 1)
    assert epoch_permutation(10, 3, 0) != epoch_permutation(10, 4, 0)
    random.seed(123)  # the global RNG has no say
    a = epoch_permutation(10, 3, 0)
    random.seed(456)
    assert epoch_permutation(10, 3, 0) == a
    assert sorted(a) == list(range(10))


def test_batches_cross_epochs_and_ranks_get_disjoint_slices():
    n, bs, world = 7, 2, 2
    orders = [BatchOrder(n, batch_size=bs, seed=1, rank=r, world_size=world) for r in range(world)]
    stream = epoch_permutation(n, 1, 0) + epoch_permutation(n, 1, 1) + epoch_permutation(n, 1, 2)
    for b in range(5):
        got = [o.next_indices() for o in orders]
        assert got[0] + got[1] == stream[b * 4 : (b + 1) * 4]
    assert orders[0].state_dict() == {"epoch": 2, "offset": 6, "num_examples": 7}


def test_batch_order_resumes_exactly_from_its_state():
    straight = BatchOrder(5, batch_size=3, seed=0)
    expected = [straight.next_indices() for _ in range(6)]
    first = BatchOrder(5, batch_size=3, seed=0)
    got = [first.next_indices() for _ in range(3)]
    second = BatchOrder(5, batch_size=3, seed=0)
    second.load_state_dict(first.state_dict())
    got += [second.next_indices() for _ in range(3)]
    assert got == expected
    with pytest.raises(ConfigError, match="written for 5 training examples but the data now has 6"):
        BatchOrder(6, batch_size=3, seed=0).load_state_dict(first.state_dict())


def _fake_checkpoint(output_dir, step):
    path = ckpt.step_checkpoint_dir(output_dir, step)
    path.mkdir(parents=True)
    (path / ckpt.TRAINER_STATE_FILE).write_bytes(b"x")
    return path


def test_checkpoints_are_listed_in_step_order_and_pruned_to_the_newest(tmp_path):
    for step in (10, 2, 30, 4):
        _fake_checkpoint(tmp_path, step)
    (tmp_path / "checkpoints" / ".tmp-step-000040").mkdir()  # a crash mid-write is not a checkpoint
    (tmp_path / "checkpoints" / "step-000050").mkdir()  # nor a directory without trainer state
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 4, 10, 30]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000030"
    deleted = ckpt.prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in deleted) == ["step-000002", "step-000004"]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [10, 30]
    ckpt.prune_checkpoints(tmp_path, keep=0)  # the newest always survives as the resume point
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [30]


def test_atomic_write_leaves_nothing_behind_on_failure_and_replaces_on_success(tmp_path):
    target = tmp_path / "final"

    def broken(tmp):
        (tmp / "half").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt.write_dir_atomically(target, broken)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    ckpt.write_dir_atomically(target, lambda tmp: (tmp / "a").write_text("1"))
    ckpt.write_dir_atomically(target, lambda tmp: (tmp / "b").write_text("2"))
    assert sorted(p.name for p in target.iterdir()) == ["b"]


def test_rng_state_round_trips_for_python_numpy_and_torch():
    state = ckpt.capture_rng_state()
    first = (random.random(), float(np.random.rand()), torch.rand(3).tolist())
    ckpt.restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), torch.rand(3).tolist()) == first
    with ckpt.preserved_rng():
        torch.rand(100)
    after = torch.rand(1).item()
    ckpt.restore_rng_state(state)
    torch.rand(3)
    random.random()
    assert torch.rand(1).item() == after
    assert not math.isnan(after)
