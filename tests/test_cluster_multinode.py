"""A real two-node Ray cluster on this machine: `ibft tune --address` spreads trials over both nodes, and a
worker node lost mid-search costs nothing but time.

The cluster is started with Ray's own CLI, as a user's would be: `ray start --head` plus a second
`ray start --address` node, each with 1 CPU and a resource of its own, on ports chosen here so it never
meets another Ray instance on the machine (no `ray stop` anywhere: that would stop every Ray on the host).
Each `ray start --block` runs in a session of its own; every process a node starts (raylet, agents, the
workers it forks) keeps that session id, which is how the test kills exactly one node's processes (the
node loss: SIGKILL, no goodbye to the GCS) and, at the end, everything it started.

The smoke search runs 4 trials, 2 at a time, one worker (1 CPU) each, trained in the trial's own process
(resources.worker_in_trial), so with one CPU per node one trial trains on each node. Each rung report carries
the Ray node id of the process that trained it. Once a trial on the worker node has committed its rung-1
checkpoint, the worker node is killed; the search must still finish every trial exactly once (Tune retries the
trial: failure.max_failures 1) and the retried trial must continue from its rung-1 checkpoint on the head node
rather than from step 0.

What Ray does (Ray 2.60): the trial's actor dies with its node, so the Tune trial errors; Tune retries it once
the head has a free CPU, and the new run of the trial finds its newest complete checkpoint in
RUN_DIR/trials/<id>/ (trainables.rung_checkpoints) and resumes from it. A multi-worker trial goes the same way
through Ray Train (its run, named after the trial, finds its snapshot in the same folder). Storage is a local
path, which both "nodes" share here as a cluster's nodes share their storage_path.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from smoke_search import ROOT, kill_group, smoke_space_file, start_tune

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

RAY = str(Path(sys.executable).with_name("ray"))
NUM_SAMPLES = 4
START_ATTEMPTS = 8
"""`ray start` gives a node 30 s (hard-coded in Ray) to register; on a busy machine (2 cores shared with other
work) its agents can take longer to come up, so a node that failed to start is killed and started again. An
idle machine starts a node in 5-10 s; under a load average of 30, several attempts in a row failed."""
NODE_ENV = {
    # Explicit: with RAY_AUTH_MODE unset, a head started where ~/.ray/auth_token exists turns token auth on
    # and a node started without it is refused; the test must not depend on what the home directory holds.
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    # The raylet waits this long for its dashboard/runtime-env agents' port files (Python processes that
    # take tens of seconds to import on a loaded machine; the default kills the raylet first).
    "RAY_agent_register_timeout_ms": "300000",
}


def _log(message: str) -> None:
    print(f"[multinode {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- processes by session ----------------------------------------------------------------------------


def _pids_in_session(sid: int) -> list[int]:
    """Live processes of the session (zombies are dead already: nothing left to kill)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid and not _zombie(int(entry)):
                    pids.append(int(entry))
            except OSError:  # gone meanwhile
                pass
    return pids


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _kill_session(sid: int) -> None:
    """SIGKILL every process of the session (rounds: a dying raylet may still have forked a worker)."""
    for _ in range(20):
        pids = _pids_in_session(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.3)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids_mentioning(text: str) -> list[int]:
    return [
        int(e)
        for e in os.listdir("/proc")
        if e.isdigit() and int(e) != os.getpid() and text in _cmdline(int(e)) and not _zombie(int(e))
    ]


# ---- the cluster ---------------------------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_port_range(size: int, avoid: set[int]) -> tuple[int, int]:
    """A block of ports below the ephemeral range, none of them listening now, for a node's worker processes."""
    import random

    rng = random.Random()
    for _ in range(200):
        low = rng.randrange(22000, 32000 - size)
        block = range(low, low + size)
        if avoid.intersection(block):
            continue
        if all(_port_free(p) for p in block[::10]):
            return low, low + size - 1
    raise RuntimeError("no free worker port range")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
            return True
        except OSError:
            return False


def _raylet_complaint(temp_dir: Path) -> list[str]:
    """The raylet's last fatal line of a node that did not start (e.g. an agent's port file it gave up on)."""
    lines = []
    for path in temp_dir.glob("session_*/logs/raylet.*"):
        lines += [ln for ln in path.read_text(errors="replace").splitlines() if " C " in ln or "Check failed" in ln]
    return lines[-1:]


class RayNode:
    """One `ray start --block` node in a session of its own."""

    def __init__(self, name: str, proc: subprocess.Popen, temp_dir: Path, log: Path) -> None:
        self.name, self.proc, self.temp_dir, self.log = name, proc, temp_dir, log
        self.sid = proc.pid  # start_new_session: the ray start process leads the session
        self.node_id = self._raylet_node_id()

    def _raylet_node_id(self) -> str:
        for pid in _pids_in_session(self.sid):
            found = re.search(r"raylet/raylet .*--node_id=([0-9a-f]+)", _cmdline(pid))
            if found:
                return found.group(1)
        raise RuntimeError(f"{self.name}: no raylet in session {self.sid}")

    def kill(self) -> None:
        _kill_session(self.sid)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


class TwoNodeCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen] = []  # every `ray start`, failed ones included, for the clean-up
        self.worker_ports: set[int] = set()
        self.head: Optional[RayNode] = None
        self.worker: Optional[RayNode] = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.head = self._start_node("head", head=True)
        self.worker = self._start_node("worker", head=False)

    def _start_node(self, name: str, *, head: bool) -> RayNode:
        errors = []
        for attempt in range(START_ATTEMPTS):
            ports = _free_ports(8)
            low, high = _free_port_range(200, self.worker_ports)
            self.worker_ports.update(range(low, high + 1))
            temp_dir = self.root / f"{name}{attempt}"
            temp_dir.mkdir()
            args = [RAY, "start", "--block", "--num-cpus", "1", "--resources", json.dumps({f"mn_{name}": 1})]
            if head:
                self.port = ports[0]
                args += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                         "--dashboard-port", str(ports[1])]
            else:
                args += ["--address", self.address, "--include-log-monitor", "false"]
            args += [
                "--temp-dir", str(temp_dir),
                "--node-manager-port", str(ports[2]),
                "--object-manager-port", str(ports[3]),
                "--min-worker-port", str(low),
                "--max-worker-port", str(high),
                "--dashboard-agent-listen-port", str(ports[4]),
                "--dashboard-agent-grpc-port", str(ports[5]),
                "--runtime-env-agent-port", str(ports[6]),
                "--metrics-export-port", str(ports[7]),
                "--object-store-memory", str(200 * 1024**2),
                "--disable-usage-stats",
            ]
            log = self.root / f"{name}{attempt}.log"
            with log.open("w") as out:
                proc = subprocess.Popen(
                    args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **NODE_ENV}, start_new_session=True
                )
            self.procs.append(proc)
            started = time.time()
            while time.time() - started < 150 and proc.poll() is None:
                if "Ray runtime started" in log.read_text(errors="replace"):
                    node = RayNode(name, proc, temp_dir, log)
                    _log(f"{name} node {node.node_id[:8]} up in {time.time() - started:.0f}s (attempt {attempt + 1})")
                    return node
                time.sleep(0.5)
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] + _raylet_complaint(temp_dir)
            errors.append(f"attempt {attempt + 1}: {tail}")
            _log(f"{name} node failed to start after {time.time() - started:.0f}s: {tail}")
            _kill_session(proc.pid)
            proc.wait(timeout=30)
        raise RuntimeError(f"{name} node did not start: {errors}")

    def alive_node_ids(self) -> set[str]:
        """Node ids the GCS counts alive (asked in a subprocess: this process never connects to Ray)."""
        code = (
            "import json, ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))" % self.address
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env={**os.environ, **NODE_ENV}
        )
        return set(json.loads(out.stdout.strip().splitlines()[-1])) if out.returncode == 0 else set()

    @property
    def sessions(self) -> list[int]:
        return [proc.pid for proc in self.procs]  # start_new_session: each `ray start` leads its session

    def shutdown(self) -> None:
        for proc in reversed(self.procs):
            _kill_session(proc.pid)
            try:
                proc.wait(timeout=30)  # reaped, not left a zombie
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def cluster():
    root = Path(tempfile.mkdtemp(prefix="ibftmn", dir="/tmp"))  # short: Ray's socket paths live under it
    cluster = TwoNodeCluster(root)
    try:
        yield cluster
    finally:
        cluster.shutdown()
        left = {pid for sid in cluster.sessions for pid in _pids_in_session(sid)} | set(_pids_mentioning(str(root)))
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes of the test cluster outlived its clean-up: {sorted(left)}"


# ---- the search ----------------------------------------------------------------------------------------


class Search:
    """`ibft tune` in its own session, its output read as it comes (so the pipes never fill)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = start_tune(args, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _drain(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            for t in self._threads:
                t.join(timeout=10)

    def stderr_tail(self, n: int = 4000) -> str:
        return "".join(self.err)[-n:]

    def kill(self) -> None:
        # The driver's session: itself and anything it forked (it connects to the cluster; starts no nodes).
        kill_group(self.proc)
        _kill_session(self.proc.pid)


def _trial_results(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """trial_id -> its rung reports so far, from Ray's per-trial result.json files (as `ibft report` reads them)."""
    results: dict[str, list[dict[str, Any]]] = {}
    for path in (run_dir / "tune").glob("*/result.json"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # half-written last line
            if isinstance(row, dict) and row.get("trial_id") and row.get("rung") is not None:
                row.pop("config", None)
                results.setdefault(row["trial_id"], []).append(row)
    return results


def _committed_rungs(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """trial_id -> the rung reports whose checkpoint is committed (what a restarted trial resumes from), oldest
    first: every complete checkpoint in RUN_DIR/trials/<id>/ (trainables.rung_checkpoints, which reads the rung's
    report in each; a one-worker trial renames its checkpoint into place whole, before it reports to Tune)."""
    from trainables import rung_checkpoints
    from trainables.tune_trainable import RUNG_METRICS_FILE

    committed = {}
    for trial_root in (run_dir / "trials").glob("*"):
        rows = []
        for _, name, path in rung_checkpoints.complete(str(trial_root), RUNG_METRICS_FILE):
            try:
                rows.append(dict(json.loads(Path(path, RUNG_METRICS_FILE).read_text()), checkpoint_dir_name=name))
            except (OSError, ValueError):
                continue  # removed (pruned) while being read
        if rows:
            committed[trial_root.name] = rows
    return committed


def _num_failures(run_dir: Path) -> dict[str, int]:
    """trial_id -> how often Tune counted the trial failed (its experiment state's run metadata)."""
    states = sorted((run_dir / "tune").glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return {}
    failures = {}
    for item in json.loads(states[-1].read_text()).get("trial_data", []):
        trial, meta = json.loads(item[0]), json.loads(item[1])
        failures[trial["trial_id"]] = int(meta.get("num_failures", 0))
    return failures


def _steps_logged(run_dir: Path, trial_id: str) -> list[int]:
    path = run_dir / "trials" / trial_id / "work" / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            pass
    return steps


def test_search_spreads_over_two_nodes_and_survives_losing_one(cluster, tmp_path):
    started = time.time()
    cluster.start()
    alive = cluster.alive_node_ids()
    assert alive == {cluster.head.node_id, cluster.worker.node_id}, alive

    smoke = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    # Longer rungs than the smoke space's 2 steps (a step takes a fraction of a second), so the test has
    # seconds, not one, to see the rung-1 checkpoint and kill the node before rung 2; and early stopping off
    # (grace period = every rung), so the trial on the worker node is sure to go on after rung 1. ASHA's own
    # pruning is tested by test_tune_e2e.
    rung_steps, max_steps = 12, 24
    training = {**smoke["training"], "rung_steps": rung_steps, "max_steps": max_steps}
    asha = {**smoke["asha"], "max_rungs": 2, "grace_period": 2}
    space = smoke_space_file(tmp_path, num_samples=NUM_SAMPLES, max_concurrent=2, training=training, asha=asha)
    run_dir = tmp_path / "runs" / "multinode"
    search = Search(
        [str(space), "--address", cluster.address, "--storage-path", str(tmp_path / "runs"), "--name", "multinode"],
        env={**os.environ, **NODE_ENV},
    )
    cluster.procs.append(search.proc)  # its session too is killed and checked by the clean-up
    try:
        # ---- once a trial on the worker node has committed its rung-1 checkpoint, kill the node
        victim: Optional[str] = None
        deadline = time.time() + 900
        while victim is None and time.time() < deadline and search.proc.poll() is None:
            time.sleep(0.2)
            for trial_id, rungs in _committed_rungs(run_dir).items():
                if [r["rung"] for r in rungs] == [1] and rungs[0].get("node_id") == cluster.worker.node_id:
                    victim, checkpoint = trial_id, rungs[0]["checkpoint_dir_name"]
                    break
        assert victim is not None, f"no trial committed rung 1 on the worker node:\n{search.stderr_tail()}"
        cluster.worker.kill()
        killed_at = time.time()
        _log(f"killed the worker node {cluster.worker.node_id[:8]}: trial {victim} had committed {checkpoint}")
        assert [r["rung"] for r in _committed_rungs(run_dir)[victim]] == [1]  # killed before rung 2 was reached
        code = search.wait(timeout=max(60.0, 1150 - (time.time() - started)))
    finally:
        search.kill()
        (tmp_path / "ibft-tune.stderr").write_text("".join(search.err))  # kept with the run for a post-mortem
    _log(f"search ended with exit code {code} {time.time() - killed_at:.0f}s after the node loss")
    assert code == 0, search.stderr_tail()

    # ---- trials ran on both nodes (each rung report names its rank-0 worker's node)
    results = _trial_results(run_dir)
    nodes_used = {r.get("node_id") for rows in results.values() for r in rows}
    assert {cluster.head.node_id, cluster.worker.node_id} <= nodes_used, (nodes_used, cluster.head.node_id)
    assert cluster.worker.node_id not in cluster.alive_node_ids()

    # ---- nothing lost or duplicated: every Optuna trial told once, none failed
    study = optuna.load_study(study_name="multinode", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == NUM_SAMPLES, [(t.number, t.state) for t in trials]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]
    ray_ids = [t.user_attrs["ray_trial_id"] for t in trials]
    assert len(set(ray_ids)) == NUM_SAMPLES and set(ray_ids) == set(results), (ray_ids, sorted(results))
    summary = json.loads("".join(search.out).strip().splitlines()[-1])
    assert summary["interrupted"] is False and sum(summary["states"].values()) == NUM_SAMPLES, summary

    # ---- the trial on the lost node was retried, and continued from its rung-1 checkpoint on the head node
    assert _num_failures(run_dir).get(victim) == 1, _num_failures(run_dir)
    victim_trial = next(t for t in trials if t.user_attrs["ray_trial_id"] == victim)
    assert victim_trial.state == TrialState.COMPLETE
    rows = results[victim]
    assert [r["rung"] for r in rows].count(1) <= 1, rows  # rung 1 never reported twice: the retry did not redo it
    assert rows[-1]["rung"] == 2 and rows[-1]["step"] == max_steps, rows[-1]
    assert rows[-1]["node_id"] == cluster.head.node_id, rows[-1]
    steps = _steps_logged(run_dir, victim)
    assert all(steps.count(s) == 1 for s in range(1, rung_steps + 1)), steps  # no step up to the checkpoint redone
    assert max(steps) == max_steps and set(steps) == set(range(1, max_steps + 1)), steps
    committed = _committed_rungs(run_dir)[victim]
    assert [r["rung"] for r in committed] == [1, 2] and committed[0]["checkpoint_dir_name"] == checkpoint, committed

    # ---- the report still reads the run (node_id is a text value in every rung report)
    from search.report import write_report

    written = write_report(run_dir, tmp_path / "report", png=False)
    assert (tmp_path / "report" / "index.html").is_file(), written
    _log(f"test wall time {time.time() - started:.0f}s")
