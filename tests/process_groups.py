"""A one-rank torch.distributed group for in-process engine tests, as Ray Train's worker would set up."""
from __future__ import annotations

import contextlib
import socket
from typing import Iterator

import torch.distributed as dist


@contextlib.contextmanager
def one_rank_process_group(backend: str) -> Iterator[None]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        _forget_deepspeed_groups()


def _forget_deepspeed_groups() -> None:
    # DeepSpeed caches a clone of the world group at module level; the next test's fresh group would
    # otherwise meet the destroyed one ("Group ... is not registered").
    import sys

    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None:
        groups._WORLD_GROUP = None
        groups._DATA_PARALLEL_GROUP = None
