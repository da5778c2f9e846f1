"""stdout carries each command's JSON result and nothing else.

Libraries log to stdout on their own (DeepSpeed's logger writes "Setting accelerator to ..." there while
it is imported), which breaks `ibft eval ... | jq`. While a verb runs, `results_only_on_stdout` points
sys.stdout at stderr, so whatever a library prints lands with the progress output, and `emit_result`
writes the one JSON document to the real stdout.
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional, TextIO

_result_stream: Optional[TextIO] = None


@contextmanager
def results_only_on_stdout() -> Iterator[None]:
    """For the duration of a command: prints go to stderr, emit_result to the stdout seen on entry."""
    global _result_stream
    saved_stream, saved_stdout = _result_stream, sys.stdout
    _result_stream, sys.stdout = sys.stdout, sys.stderr
    try:
        yield
    finally:
        _result_stream, sys.stdout = saved_stream, saved_stdout


def emit_result(result: Any, *, indent: Optional[int] = None) -> None:
    """Write the command's result as JSON on stdout (the real one, also inside results_only_on_stdout)."""
    stream = _result_stream if _result_stream is not None else sys.stdout
    stream.write(json.dumps(result, indent=indent, default=str) + "\n")
    stream.flush()
