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
