"""The few torch.distributed facts the loop needs, all of which degrade to single-process when it is not set up.

Ray Train (and the DeepSpeed test) initialise the process group before the loop runs; the loop never does.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group is initialised (even a 1-rank one)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Only rank 0 writes shared files (DeepSpeed's own shards excepted)."""
    return rank() == 0


def _all_reduce(values: list[float], op: "dist.ReduceOp") -> list[float]:
    if not is_distributed() or world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of `values` over all ranks (the values themselves when not distributed)."""
    return _all_reduce(values, dist.ReduceOp.SUM)


def all_reduce_min(values: list[float]) -> list[float]:
    """Element-wise minimum of `values` over all ranks (the values themselves when not distributed)."""
    return _all_reduce(values, dist.ReduceOp.MIN)


def barrier() -> None:
    if is_distributed() and world_size() > 1:
        if dist.get_backend() == "nccl":
            # Without device_ids NCCL guesses this rank's GPU from its global rank, which hangs where ranks and
            # GPUs are not numbered alike (uneven nodes); the loop has already chosen this rank's device.
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _reduce_device() -> torch.device:
    # NCCL only reduces CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
