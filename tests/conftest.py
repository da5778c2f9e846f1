"""Shared test settings: everything offline and quiet, whatever the caller's environment says."""
from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["WANDB_MODE"] = "offline"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["HF_HUB_OFFLINE"] = "1"


import pytest


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One real smoke search for the whole session (minutes on 2 cores): the search and report tests read it."""
    from smoke_search import run_smoke_search

    return run_smoke_search(tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny-model tests: on a shared 2-core machine two threads mostly
    wait for each other (measured 25 s vs 0.9 s for the same tiny-model run, up to 30x); restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ce_kernels_used(monkeypatch):
    """The IB CE kernel each IB forward resolved to, in call order (trainables.ib.ce_kernels.resolve_kernel spied)."""
    from trainables.ib import ce_kernels

    used: list[str] = []
    resolve = ce_kernels.resolve_kernel
    monkeypatch.setattr(ce_kernels, "resolve_kernel", lambda *a: used.append(resolve(*a)) or used[-1])
    return used
