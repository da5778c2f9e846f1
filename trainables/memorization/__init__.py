"""Memorization analysis: Min-K% Prob per training example and the geometry between the most- and
least-memorized examples' representations, for a base model and a fine-tuned checkpoint.

`measure_memorization` is what a search trial calls at its end; `ibft memorization` is the CLI.
Submodules import torch; this package's namespace loads them on first use so importing it is cheap.
"""
from typing import Any

__all__ = ["analyze_memorization", "measure_memorization", "min_k_prob", "min_k_scores", "MEMORIZATION_GAP_MODE"]

_HOMES = {
    "analyze_memorization": "trainables.memorization.analysis",
    "measure_memorization": "trainables.memorization.analysis",
    "MEMORIZATION_GAP_MODE": "trainables.memorization.analysis",
    "min_k_prob": "trainables.memorization.min_k",
    "min_k_scores": "trainables.memorization.min_k",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
