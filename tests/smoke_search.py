"""Running `ibft tune` on spaces/smoke.yaml from tests: a space-file copy with changes, a subprocess in its own
process group, and a clean-up that kills whatever Ray processes it started."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NAN_TRIAL = 4
"""The smoke search's trial forced to a NaN loss at step 1 (it must end errored, the search go on)."""


def smoke_space_file(tmp: Path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    data.update(changes)
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_tune(args: list[str], **kw) -> subprocess.Popen:
    options = {
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "text": True,
        "start_new_session": True,  # its own process group: the test can clean up the Ray processes it starts
    }
    return subprocess.Popen([sys.executable, "-m", "search", "tune", *args], **{**options, **kw})


def finish_tune(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return proc.returncode, out, err


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_smoke_search(tmp: Path) -> dict:
    """The shared smoke search of the suite: 5 trials, one forced to NaN, W&B offline (as `make demo` and the GPU
    spaces log); what it printed and where it wrote."""
    space = smoke_space_file(
        tmp, num_samples=5, faults={"nan_at_step": 1, "trials": [NAN_TRIAL]}, wandb={"mode": "offline"}
    )
    proc = start_tune([str(space), "--name", "smoke", "--storage-path", str(tmp / "runs")])
    code, out, err = finish_tune(proc, timeout=1500)
    return {"code": code, "out": out, "err": err, "run_dir": tmp / "runs" / "smoke"}
