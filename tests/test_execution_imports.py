"""Samples import what they need although they run as an unprivileged uid.

The interpreter, venv or checkout may live below a directory that uid may not enter (pyenv under a
0700 /root, a CI clone anywhere): the sandbox server exposes exactly the import paths, read-only,
in its own mount namespace, and nothing else of that directory. The host is never changed.
"""
import json
import os
import stat
import sys

import pytest

from trainables.execution import sandbox
from trainables.execution.checker import Checker
from trainables.execution.sandbox import Isolation, SandboxLimits

PROBLEM = {
    "task_id": "t/inc",
    "prompt": "def inc(x):\n",
    "test": "def check(candidate):\n    assert candidate(2) == 3\n",
    "entry_point": "inc",
}
PROBLEMS = {PROBLEM["task_id"]: PROBLEM}
STDLIB = [
    "cmath", "fractions", "decimal", "statistics", "heapq", "bisect", "itertools", "collections", "re", "json",
    "string", "math", "functools", "typing", "dataclasses", "datetime", "random", "hashlib", "zlib",
    # more that no server preloads, from lib/python3.x and lib-dynload alike
    "array", "unicodedata", "csv", "textwrap", "difflib", "ast", "calendar", "numbers", "pprint", "struct",
]
IS_ROOT = os.geteuid() == 0


def check(completions: list[str], workers: int = 2) -> tuple[list[dict], dict]:
    with Checker(workers=workers, limits=SandboxLimits(timeout=5.0)) as checker:
        results = checker.check(PROBLEMS, [{"task_id": "t/inc", "completion": c} for c in completions])
        return results, checker.isolation


def importing(module: str) -> str:
    # Uses the module, so a half-initialised import cannot pass.
    return f"    import {module}\n    assert {module}.__name__ == {module!r} and dir({module})\n    return x + 1\n"


def blocked_ancestor(path: str) -> str | None:
    return sandbox._first_blocked_ancestor(os.path.realpath(path))


def test_stdlib_imports_the_server_did_not_preload_pass():
    fresh = indent_lines(
        f"""
import sys
fresh = [m for m in {STDLIB!r} if m not in sys.modules]
for name in fresh:
    __import__(name)
assert len(fresh) >= 5, fresh  # else this test would not test fresh imports at all
return x + 1
"""
    )
    results, iso = check([importing(m) for m in STDLIB] + [fresh])
    failed = {m: r["result"] for m, r in zip(STDLIB + ["<fresh>"], results) if not r["passed"]}
    assert not failed, (failed, iso)
    if IS_ROOT:
        assert iso["user"].startswith("unprivileged uid"), iso  # the case this is all about
        # (a machine without writable cgroups reports that too; it is not what this test is about)
        assert [w for w in iso["weaknesses"] if "cgroup" not in w] == [], iso["weaknesses"]
        blocked = blocked_ancestor(sys.base_prefix)
        if blocked is not None:
            assert f"import paths below {blocked} exposed read-only" in iso["filesystem"], iso


def indent_lines(code: str) -> str:
    return "".join("    " + line + "\n" for line in code.strip("\n").splitlines())


@pytest.mark.skipif(not IS_ROOT, reason="samples switch to an unprivileged uid only when the checker runs as root")
def test_the_rest_of_a_blocked_directory_stays_hidden_and_import_paths_read_only():
    home = os.path.expanduser("~root")
    mode = stat.S_IMODE(os.stat(home).st_mode)
    if mode & 0o005:
        pytest.skip(f"{home} is mode {mode:o}: the sample uid may read it anyway, nothing to hide")
    secret = next((e.name for e in os.scandir(home) if e.is_file(follow_symlinks=False)), None)
    lists = f"    import os\n    os.listdir({home!r})\n    return x + 1\n"
    probes = [lists]
    if secret is not None:
        probes.append(f"    open({os.path.join(home, secret)!r}).read()\n    return x + 1\n")
    for name in (".ssh", ".cache", ".config"):
        if os.path.isdir(os.path.join(home, name)):
            probes.append(f"    import os\n    os.listdir({os.path.join(home, name)!r})\n    return x + 1\n")
    stdlib_dir = os.path.dirname(os.__file__)
    writes = indent_lines(
        f"""
import posix
try:
    posix.mkdir({os.path.join(stdlib_dir, "ibft-hostile-7f3a")!r})
except OSError:
    return None
return x + 1
"""
    )
    results, _ = check(probes + [writes, importing("cmath")])
    assert [r["passed"] for r in results] == [False] * (len(probes) + 1) + [True], results
    assert not os.path.exists(os.path.join(stdlib_dir, "ibft-hostile-7f3a"))
    # The host's view is untouched: same mode, same entries.
    assert stat.S_IMODE(os.stat(home).st_mode) == mode
    if secret is not None:
        assert os.path.isfile(os.path.join(home, secret))


# ---------------------------------------------------------------------------------------------
# The mechanism itself, on a tree built for it: run in a forked child that has its own mount
# namespace, so whatever it mounts dies with it.


def in_forked_child(body) -> dict:
    """Run `body()` (returning a JSON-able dict) in a forked child; its dict, or {"error": ...}, comes back.

    Whatever the child changes (mounts, uid, namespaces) dies with it.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.write(write_fd, json.dumps(body()).encode())
        except BaseException as e:
            os.write(write_fd, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"error": "child died"}')


def in_private_mount_namespace(body) -> dict:
    """Run `body()` in a forked child with its own mount namespace; skips where the OS refuses one."""

    def isolated() -> dict:
        if not sandbox._unshare(sandbox.CLONE_NEWNS):
            return {"skip": "unshare(CLONE_NEWNS) refused"}
        if sandbox._libc.mount(b"none", b"/", None, sandbox.MS_REC | sandbox.MS_PRIVATE, None) != 0:
            return {"skip": "cannot make mounts private"}
        return body()

    result = in_forked_child(isolated)
    assert "error" not in result, result["error"]
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


def as_uid(uid: int, body) -> dict:
    """Run `body()` in a forked child switched to `uid` (what a sample does); its dict comes back."""

    def switched() -> dict:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        return body()

    return in_forked_child(switched)


def outcome(action) -> str:
    try:
        action()
        return "ok"
    except OSError as e:
        return type(e).__name__


def build_tree(root) -> dict:
    """A 0700 "home" with a venv-like tree, a symlink to it, a secret, and a 0700 dir inside the tree."""
    home = root / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_key").write_text("secret")
    lib = home / "opt" / "py" / "lib"
    lib.mkdir(parents=True)
    (lib / "ibft_probe_mod.py").write_text("VALUE = 42\n")
    (lib / "inner_private").mkdir()
    (lib / "inner_private" / "hidden.txt").write_text("hidden")
    site = lib / "inner_private" / "site"
    site.mkdir()
    (site / "ibft_probe_site.py").write_text("VALUE = 7\n")
    (home / "current").symlink_to("opt/py")
    # A checkout that is itself 0700 (a clone made with umask 077 at its top), with private parts.
    checkout = home / "checkout"
    (checkout / "ibft_probe_pkg").mkdir(parents=True)
    (checkout / "ibft_probe_pkg" / "__init__.py").write_text("VALUE = 5\n")
    (checkout / ".secrets").mkdir()
    (checkout / ".secrets" / "token").write_text("secret")
    (checkout / "private.txt").write_text("secret")
    (checkout / "README").symlink_to("ibft_probe_pkg/__init__.py")
    for path in (home, lib / "inner_private", checkout, checkout / ".secrets"):
        os.chmod(path, 0o700)
    os.chmod(checkout / "private.txt", 0o600)
    for path in (home / "opt", home / "opt" / "py", lib, site, checkout / "ibft_probe_pkg"):
        os.chmod(path, 0o755)
    return {"home": str(home), "lib": str(lib), "site": str(site), "via_link": str(home / "current" / "lib"),
            "checkout": str(checkout)}


@pytest.mark.skipif(not IS_ROOT, reason="mount namespaces and uid switching need root")
def test_import_paths_below_blocked_directories_are_exposed_and_nothing_else(tmp_path):
    tree = build_tree(tmp_path)
    uid = sandbox.SAMPLE_UID_BASE + os.getpid()

    def body():
        iso = Isolation()
        imports = sandbox.ImportPaths.of(
            [tree["via_link"], tree["site"], tree["checkout"], "__editable__.finder__path_hook__", ""]
        )
        covered = sandbox.expose_import_paths(iso, imports)

        def sample_view():
            sys.path[:0] = [tree["via_link"], tree["site"], tree["checkout"]]
            import ibft_probe_mod
            import ibft_probe_pkg
            import ibft_probe_site

            checkout = tree["checkout"]
            return {
                "values": [ibft_probe_mod.VALUE, ibft_probe_site.VALUE, ibft_probe_pkg.VALUE],
                "list_checkout": sorted(os.listdir(checkout)),
                "via_symlink": open(os.path.join(checkout, "README")).read(),
                "list_checkout_secrets": outcome(lambda: os.listdir(os.path.join(checkout, ".secrets"))),
                "read_checkout_private": outcome(lambda: open(os.path.join(checkout, "private.txt")).read()),
                "list_home": outcome(lambda: os.listdir(tree["home"])),
                "read_key": outcome(lambda: open(os.path.join(tree["home"], ".ssh", "id_key")).read()),
                "read_hidden": outcome(lambda: open(os.path.join(tree["lib"], "inner_private", "hidden.txt")).read()),
                "list_lib": sorted(os.listdir(tree["lib"])),
            }

        def root_writes():
            return outcome(lambda: open(os.path.join(tree["lib"], "new.py"), "w").close())

        return {"covered": covered, "weaknesses": iso.weaknesses, "sample": as_uid(uid, sample_view),
                "root_writes": root_writes()}

    result = in_private_mount_namespace(body)
    assert result["weaknesses"] == []
    blocked = blocked_ancestor(tree["home"])  # pytest's tmp dirs are 0700 themselves
    assert blocked is not None
    # the outermost blocked directory, then the 0700 one inside an exposed tree, then the 0700 checkout
    assert result["covered"] == [blocked, os.path.join(tree["lib"], "inner_private"), tree["checkout"]], result
    sample = result["sample"]
    assert "error" not in sample, sample
    assert sample["values"] == [42, 7, 5]
    # the checkout is listable, but what it keeps private stays private
    assert sample["list_checkout"] == [".secrets", "README", "ibft_probe_pkg", "private.txt"]
    assert sample["via_symlink"] == "VALUE = 5\n"
    assert sample["list_checkout_secrets"] == sample["read_checkout_private"] == "PermissionError"
    assert sample["list_home"] == "PermissionError"  # passable, not listable
    assert sample["read_key"] == "FileNotFoundError"  # not there at all
    assert sample["read_hidden"] == "FileNotFoundError"
    assert "ibft_probe_mod.py" in sample["list_lib"]
    assert result["root_writes"] == "OSError"  # EROFS even for root: the exposed trees are read-only
    # The host's tree is untouched.
    assert stat.S_IMODE(os.stat(tree["home"]).st_mode) == stat.S_IMODE(os.stat(tree["checkout"]).st_mode) == 0o700
    assert open(os.path.join(tree["home"], ".ssh", "id_key")).read() == "secret"
    assert not os.path.exists(os.path.join(tree["lib"], "new.py"))


@pytest.mark.skipif(not IS_ROOT, reason="mount namespaces and uid switching need root")
def test_import_paths_inside_a_world_writable_directory_survive_its_private_tmpfs(tmp_path):
    # A CI clone or venv in /tmp: the server's private /tmp must not hide it (before, the server
    # could not even import its own modules and failed to start).
    tree = build_tree(tmp_path)
    (tmp_path / "sibling.txt").write_text("host file")
    uid = sandbox.SAMPLE_UID_BASE + os.getpid()

    def body():
        iso = Isolation()
        text = sandbox._private_filesystem(iso, sandbox.ImportPaths.of([tree["lib"]]), expose_to_other_uid=True)

        def sample_view():
            sys.path[:0] = [tree["lib"]]
            import ibft_probe_mod

            return {"value": ibft_probe_mod.VALUE, "home": outcome(lambda: os.listdir(tree["home"]))}

        return {
            "text": text,
            "weaknesses": iso.weaknesses,
            "sample": as_uid(uid, sample_view),
            "sibling": outcome(lambda: open(tmp_path / "sibling.txt").read()),
            "write_tmp": outcome(lambda: open("/tmp/ibft-probe-7f3a", "w").close()),
            "write_lib": outcome(lambda: open(os.path.join(tree["lib"], "new.py"), "w").close()),
        }

    result = in_private_mount_namespace(body)
    assert result["weaknesses"] == [], result
    assert result["text"].startswith("read-only root, private tmpfs over world-writable directories"), result
    assert result["sample"] == {"value": 42, "home": "PermissionError"}, result
    assert result["sibling"] == "FileNotFoundError"  # the rest of the host's /tmp is not there
    assert result["write_tmp"] == "ok" and result["write_lib"] == "OSError"  # private /tmp, read-only lib
    assert not os.path.exists("/tmp/ibft-probe-7f3a")
    assert (tmp_path / "sibling.txt").read_text() == "host file"


@pytest.mark.skipif(not IS_ROOT, reason="mount namespaces need root")
def test_nothing_blocked_is_a_no_op(tmp_path):
    open_dir = "/usr/lib"

    def body():
        before = open("/proc/self/mountinfo").read()
        iso = Isolation()
        covered = sandbox.expose_import_paths(iso, sandbox.ImportPaths.of([open_dir, "/", "relative/path"]))
        return {"covered": covered, "weaknesses": iso.weaknesses, "same": before == open("/proc/self/mountinfo").read()}

    assert in_private_mount_namespace(body) == {"covered": [], "weaknesses": [], "same": True}


def test_unreachable_import_paths_are_reported_when_they_cannot_be_exposed(tmp_path):
    home = tmp_path / "home"
    (home / "lib").mkdir(parents=True)
    os.chmod(home, 0o700)
    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    os.chmod(own, 0o700)
    iso = Isolation()
    sandbox._report_unreachable_imports(
        iso, sandbox.ImportPaths.of([str(home / "lib"), str(own)]), "there is no private mount namespace"
    )
    assert len(iso.weaknesses) == 1, iso.weaknesses
    text = iso.weaknesses[0]
    assert "cannot import" in text and "no private mount namespace" in text
    assert str(home / "lib") in text and str(own) in text and "mode 700" in text


@pytest.mark.skipif(not IS_ROOT, reason="only a root server switches uids (and so can be blocked)")
def test_server_without_mount_namespace_reports_blocked_import_paths():
    if blocked_ancestor(sys.base_prefix) is None:
        pytest.skip(f"{sys.base_prefix} is reachable for other uids here: nothing to report")

    def isolate() -> dict:
        iso = sandbox.isolate_server(use_namespaces=False, switch_uid=True)
        os.rmdir(iso.sample_root)
        return iso.as_dict()

    iso = in_forked_child(isolate)
    assert "error" not in iso, iso["error"]
    assert any("cannot import modules the server did not preload" in w and "no private mount namespace" in w
               for w in iso["weaknesses"]), iso["weaknesses"]
