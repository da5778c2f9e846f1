"""`ibft tune` refusing bad arguments and run directories: one line, exit code 2, and nothing written.

Each case runs the CLI's `main` in this process (no Ray is started: every check comes before the search) from a
scratch working directory, and compares a listing of that directory (paths and file contents) before and after.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from search.cli import main

from smoke_search import smoke_space_file


def _listing(root: Path) -> dict[str, str]:
    """Every path under root, with a digest of each file's bytes ("dir" for a directory)."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def _refused(argv: list[str], root: Path, capsys) -> str:
    """Run `ibft tune ARGV`; assert exit 2, one stderr line, empty stdout, root unchanged; return the line."""
    before = _listing(root)
    try:
        code = main(["tune", *argv])
    except SystemExit as e:  # argparse's own checks
        code = e.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert captured.out == ""
    assert _listing(root) == before, "a refused `ibft tune` wrote something"
    return lines[0]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A scratch working directory holding space.yaml (the smoke space) and an existing storage dir runs/; a check
    that stopped refusing fails the test instead of starting a search."""
    import search.tuner

    def no_search(*args, **kwargs):
        raise AssertionError("a refused `ibft tune` went on to start the search")

    monkeypatch.setattr(search.tuner, "run_search", no_search)
    monkeypatch.chdir(tmp_path)
    smoke_space_file(tmp_path)
    (tmp_path / "runs").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "ibft tune: error: give a SPACE.yaml to start a search, or --resume RUN_DIR to continue one"),
        (["space.yaml", "--name", "a/b"], "ibft tune: error: --name 'a/b': use letters, digits, '.', '_' or '-'"),
        (["space.yaml", "--name", ".hidden"], "ibft tune: error: --name '.hidden'"),
        (["space.yaml", "--num-samples", "0"], "ibft tune: error: --num-samples must be >= 1, got 0"),
        (["space.yaml", "--num-samples", "many"], "ibft tune: error: argument --num-samples: invalid int value"),
        # Object-store URIs are run directories now (tests/test_storage_s3.py); one no filesystem opens is refused.
        (
            ["space.yaml", "--storage-path", "nosuch://bucket/runs"],
            "ibft tune: error: --storage-path nosuch://bucket/runs/smoke: this machine (",
        ),
        (["missing.yaml"], "ibft tune: error: missing.yaml: space file not found"),
        (["space.yaml", "--resume", "runs/smoke"], "ibft tune: error: --resume RUN_DIR takes no SPACE"),
        (["--resume", "runs/smoke", "--name", "x"], "ibft tune: error: --resume RUN_DIR takes no SPACE"),
        (["--resume", "runs/smoke", "--num-samples", "3"], "ibft tune: error: --resume RUN_DIR takes no SPACE"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(work, capsys, argv, message):
    assert _refused(argv, work, capsys).startswith(message)  # the default --storage-path is runs/ in work


def test_a_space_file_with_a_bad_field_is_refused_naming_the_file_and_field(work, capsys):
    space = smoke_space_file(work, num_samples=-1)
    line = _refused([str(space)], work, capsys)
    assert line.startswith("ibft tune: error: ") and str(space) in line and "num_samples" in line


@pytest.mark.parametrize("marker", ["tune", "optuna.db"])
def test_an_existing_run_is_never_overwritten(work, capsys, marker):
    run_dir = work / "runs" / "smoke"
    run_dir.mkdir()
    (run_dir / "space.yaml").write_text("name: smoke  # the earlier search's space, which must survive\n")
    if marker == "tune":
        (run_dir / marker).mkdir()
    else:
        (run_dir / marker).write_bytes(b"study")
    line = _refused(["space.yaml", "--num-samples", "2"], work, capsys)
    assert line == (f"ibft tune: error: {run_dir} already holds a search; continue it with "
                    f"`ibft tune --resume {run_dir}` or choose another --name/--storage-path")


@pytest.mark.parametrize("layout", ["missing", "empty", "space_only", "tune_only", "space_is_a_dir"])
def test_resume_refuses_a_directory_that_is_not_a_run(work, capsys, layout):
    run_dir = work / "runs" / "smoke"
    if layout != "missing":
        run_dir.mkdir()
    if layout == "space_only":
        (run_dir / "space.yaml").write_text((work / "space.yaml").read_text())
    if layout == "tune_only":
        (run_dir / "tune").mkdir()
    if layout == "space_is_a_dir":
        (run_dir / "space.yaml").mkdir()
        (run_dir / "tune").mkdir()
    line = _refused(["--resume", str(run_dir)], work, capsys)
    assert line == f"ibft tune: error: --resume {run_dir}: not a search run directory (no space.yaml and tune/)"


def test_sigterm_runs_whatever_handles_ctrl_c():
    """After ray.init, SIGTERM (`ray job stop`, `kill`) calls the SIGINT handler of the moment (Tune's during a fit),
    or raises KeyboardInterrupt; tests/test_tune_e2e.py stops a real search this way."""
    import os
    import signal

    from search.tuner import _stop_on_sigterm_like_ctrl_c

    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    seen = []
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
        _stop_on_sigterm_like_ctrl_c()
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGINT]
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
