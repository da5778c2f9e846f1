"""Sandboxed checking of generated code (Python and Verilog) and its summaries.

Public names are loaded on first use, so the sandbox server process, which imports
`trainables.execution.forkserver`, starts without the checking front end.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "check_samples": "trainables.execution.checker",
    "Checker": "trainables.execution.checker",
    "summarize": "trainables.execution.results",
    "OUTCOMES": "trainables.execution.results",
    "SandboxLimits": "trainables.execution.sandbox",
    "load_problems": "trainables.execution.problems",
    "load_samples": "trainables.execution.problems",
    "load_verilogeval_folder": "trainables.execution.problems",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainables.execution' has no attribute {name!r}")
