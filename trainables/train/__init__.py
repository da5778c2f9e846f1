"""IB-FT training: config dataclasses (torch-free) and the loop (trainables.train.loop.train, imported lazily).

`from trainables.train import train, TrainHooks, NonFiniteLossError` works but pulls in torch; config
code imports trainables.train.config directly and stays light.
"""
from __future__ import annotations

from typing import Any

from trainables.train.config import (
    DataConfig,
    DebugSettings,
    DeepSpeedSettings,
    LoraSettings,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)

_LOOP_NAMES = ("train", "TrainHooks", "NonFiniteLossError")

__all__ = [
    "DataConfig",
    "DebugSettings",
    "DeepSpeedSettings",
    "LoraSettings",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "TrainConfig",
    "TrainHooks",
    "train",
]


def __getattr__(name: str) -> Any:
    # The loop imports torch; `ibft --help` and head-node config checks import this package without it.
    if name in _LOOP_NAMES:
        from trainables.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
