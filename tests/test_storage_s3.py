"""Object-store run directories (`ibft tune --storage-path s3://...`) against a real S3-compatible server: moto's
server mode, started by the test on the loopback address (no cloud account, no network beyond 127.0.0.1).

The endpoint and credentials reach every process the standard way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY), as pyarrow's S3 filesystem reads them in Ray's storage and in trainables.storage.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smoke_search import finish_tune, kill_group, smoke_space_file, start_tune

BUCKET = "ibft-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1, with the bucket BUCKET; yields the environment that points clients at it."""
    pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("moto's S3 server did not start")
                time.sleep(0.2)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
        yield env
    finally:
        for k, v in locals().get("saved", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _keys(prefix: str) -> list[str]:
    from trainables import storage

    return storage.list_files(f"s3://{BUCKET}/{prefix}")


def _env(s3_server, tmp_path: Path) -> dict:
    """The subprocess environment: the S3 endpoint, a staging directory the test can wipe, and the node-local work
    dirs of the trials (a local Ray cluster's workers inherit the driver's environment) under the test's folder."""
    return {**os.environ, **s3_server, "IBFT_STAGING_DIR": str(tmp_path / "staging"),
            "IBFT_NODE_WORK_DIR": str(tmp_path / "node-work")}


def test_storage_helpers_round_trip_through_the_server(s3_server, tmp_path):
    from trainables import storage

    base = f"s3://{BUCKET}/helpers"
    assert storage.read_text(storage.join(base, "missing.txt")) is None
    storage.write_text(storage.join(base, "a", "b.txt"), "hello")
    assert storage.exists(storage.join(base, "a", "b.txt"))
    assert storage.read_text(storage.join(base, "a", "b.txt")) == "hello"
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "c.json").write_text("{}")
    (tmp_path / "tree" / "d.lock").write_text("")
    assert storage.upload_tree(tmp_path / "tree", storage.join(base, "tree"), skip=lambda r: r.endswith(".lock")) == 1
    assert storage.list_files(base) == ["a/b.txt", "tree/sub/c.json"]
    assert storage.download_tree(base, tmp_path / "back", keep=lambda r: r.startswith("tree/")) == 1
    assert (tmp_path / "back" / "tree" / "sub" / "c.json").read_text() == "{}"
    storage.remove(storage.join(base, "a", "b.txt"))
    assert not storage.exists(storage.join(base, "a", "b.txt"))
    # A trial's work dir is node-local for a URI run, and the run's own for a shared directory.
    assert storage.trial_work_dir(base, "t1").startswith(os.environ.get("TMPDIR", "/tmp"))
    assert storage.trial_work_dir(str(tmp_path), "t1") == str(tmp_path / "trials" / "t1" / "work")


def test_the_study_uploaded_is_a_consistent_snapshot(s3_server, tmp_path, monkeypatch):
    import optuna

    from search import storage
    from trainables import storage as fs

    monkeypatch.setenv(storage.STAGING_ENV, str(tmp_path / "staging"))
    uri = f"s3://{BUCKET}/snap/run"
    run_dir = storage.new_staging(uri)
    assert run_dir.name == "run" and storage.remote_of(run_dir) == uri
    study = optuna.create_study(study_name="run", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    study.enqueue_trial({"x": 1.0})
    trial = study.ask()
    trial.suggest_float("x", 0, 2)
    study.tell(trial, 0.5)
    storage.upload_study(run_dir)
    local = tmp_path / "copy.db"
    fs.download_tree(uri, tmp_path / "down", keep=lambda r: r == "optuna.db")
    shutil.copy(tmp_path / "down" / "optuna.db", local)
    assert sqlite3.connect(local).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    copy = optuna.load_study(study_name="run", storage=f"sqlite:///{local}")
    assert [(t.params, t.values) for t in copy.trials] == [({"x": 1.0}, [0.5])]


def test_a_bucket_that_does_not_exist_is_refused_before_anything_starts(s3_server, tmp_path):
    space = smoke_space_file(tmp_path)
    uri = "s3://no-such-bucket-ibft/runs"
    proc = subprocess.run(
        [sys.executable, "-m", "search", "tune", str(space), "--storage-path", uri],
        env=_env(s3_server, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"ibft tune: error: --storage-path {uri}/smoke: this machine ({socket.gethostname()}")
    assert "cannot write there" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "staging").exists()  # refused before the run directory existed


def test_resume_of_a_uri_that_holds_no_run_is_refused(s3_server, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "search", "tune", "--resume", f"s3://{BUCKET}/nothing/here"],
        env=_env(s3_server, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"ibft tune: error: --resume s3://{BUCKET}/nothing/here: not a search run directory (no space.yaml)"


def _finished_in_bucket(tmp_path: Path, uri: str, name: str) -> dict[int, tuple]:
    """Finished study trials as the bucket's copy of the study holds them (what a new head would see)."""
    import optuna

    from trainables import storage

    down = tmp_path / "peek"
    shutil.rmtree(down, ignore_errors=True)
    try:
        if not storage.download_tree(uri, down, keep=lambda r: r == "optuna.db"):
            return {}
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{down / 'optuna.db'}")
        return {t.number: (t.state.name, t.values) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    except Exception:
        return {}


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_search_in_a_bucket_survives_a_killed_driver_and_a_wiped_head(s3_server, tmp_path):
    """The smoke search with --storage-path s3://...: SIGKILL the driver once a trial has ended, wipe every local
    file of the run, resume from the URI alone; nothing finished is lost or redone, everything ends in the bucket,
    and `ibft report s3://...` works."""
    import optuna

    from search.results import read_trials_csv
    from trainables import storage

    name = "s3smoke"
    space = smoke_space_file(tmp_path, num_samples=4, wandb={"mode": "offline"})
    uri = f"s3://{BUCKET}/runs/{name}"
    env = _env(s3_server, tmp_path)
    log = (tmp_path / "stderr.log").open("w")
    proc = start_tune([str(space), "--name", name, "--storage-path", f"s3://{BUCKET}/runs"], env=env, stderr=log)
    deadline = time.time() + 900
    try:
        while time.time() < deadline and proc.poll() is None and not _finished_in_bucket(tmp_path, uri, name):
            time.sleep(3)
        if proc.poll() is not None:
            pytest.fail(f"the search ended (exit {proc.returncode}) before it could be killed:\n"
                        f"{(tmp_path / 'stderr.log').read_text()[-3000:]}")
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, mid-search
        proc.wait(timeout=60)
    finally:
        kill_group(proc)
        log.close()
    first_log = (tmp_path / "stderr.log").read_text()
    assert "storage: all 1 node(s) can write" in first_log
    before = _finished_in_bucket(tmp_path, uri, name)
    assert before
    # The head is gone: no staging directory, no Ray session (the driver started it), no node-local work dirs.
    shutil.rmtree(tmp_path / "staging")
    shutil.rmtree(tmp_path / "node-work", ignore_errors=True)

    code, out, err = finish_tune(start_tune(["--resume", uri], env=env), timeout=1500)
    assert code == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["run_dir"] == uri
    assert "rung record(s) restored from the recorded results" in err

    keys = _keys(f"runs/{name}")
    for needed in ("space.yaml", "ib_semantics.json", "optuna.db", "trials.csv", "pareto.json"):
        assert needed in keys, keys
    assert any(k.startswith("tune/") and k.endswith("/result.json") for k in keys)  # Tune's experiment
    checkpoints = {k.split("/")[1] for k in keys if k.startswith("trials/") and "/checkpoint_" in k}
    assert checkpoints, keys  # Ray Train saved the rung checkpoints in the bucket
    assert any(k.startswith("trials/") and k.endswith("/work/metrics.jsonl") for k in keys)  # step logs too
    assert any(k.startswith("wandb/") for k in keys)  # offline W&B runs
    assert list((tmp_path / "node-work").glob("*/*/work/metrics.jsonl"))  # the loops worked on the node's own disk

    down = tmp_path / "final"
    storage.download_tree(uri, down, keep=lambda r: r in ("optuna.db", "trials.csv"))
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{down / 'optuna.db'}")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials.values())
    assert len({t.user_attrs["ray_trial_id"] for t in trials.values()}) == 4  # nothing asked twice
    for number, (state, values) in before.items():
        assert (trials[number].state.name, trials[number].values) == (state, values)  # nothing lost or redone
    rows = read_trials_csv(down / "trials.csv")
    assert sorted(r["optuna_trial"] for r in rows) == sorted(trials)

    # The report, from the URI alone (another wiped machine).
    shutil.rmtree(tmp_path / "staging", ignore_errors=True)
    report = subprocess.run(
        [sys.executable, "-m", "search", "report", uri, "--no-png"], env=env, capture_output=True, text=True, timeout=600
    )
    assert report.returncode == 0, report.stderr[-3000:]
    result = json.loads(report.stdout.strip().splitlines()[-1])
    assert result["run_dir"] == uri and Path(result["html"]).is_file()
    assert sum(result["states"].values()) == 4
    keys = _keys(f"runs/{name}/report")
    assert "index.html" in keys and "summary.md" in keys


# ---- a two-node Ray cluster (tests/test_cluster_multinode.py's) whose nodes share no run directory ----------------


def _start_two_nodes(root: Path, worker_env: dict[str, str], head_env: dict[str, str]):
    """A `ray start` head and worker on this machine, each with the environment given on top of the multinode
    test's NODE_ENV (so a node can be given its own work dir, or a broken S3 endpoint)."""
    import test_cluster_multinode as mn

    cluster = mn.TwoNodeCluster(root)
    base = dict(mn.NODE_ENV)
    try:
        mn.NODE_ENV = {**base, **head_env}
        cluster.head = cluster._start_node("head", head=True)
        mn.NODE_ENV = {**base, **worker_env}
        cluster.worker = cluster._start_node("worker", head=False)
    finally:
        mn.NODE_ENV = base
    return cluster


def _shut_down(cluster, root: Path) -> None:
    import test_cluster_multinode as mn

    cluster.shutdown()
    for pid in {pid for sid in cluster.sessions for pid in mn._pids_in_session(sid)} | set(mn._pids_mentioning(str(root))):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_worker_node_that_cannot_write_the_bucket_is_named_before_any_trial_starts(s3_server, tmp_path):
    import tempfile

    import test_cluster_multinode as mn

    root = Path(tempfile.mkdtemp(prefix="ibfts3", dir="/tmp"))  # short: Ray's socket paths live under it
    cluster = _start_two_nodes(root, worker_env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, head_env={})
    try:
        space = smoke_space_file(tmp_path)
        uri = f"s3://{BUCKET}/badnode"
        proc = subprocess.run(
            [sys.executable, "-m", "search", "tune", str(space), "--address", cluster.address, "--storage-path", uri],
            env={**_env(s3_server, tmp_path), **mn.NODE_ENV},
            capture_output=True,
            text=True,
            timeout=600,
            start_new_session=True,
        )
    finally:
        _shut_down(cluster, root)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ibft tune: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = errors[0]
    assert line.startswith(f"ibft tune: error: --storage-path {uri}/smoke: node ")
    assert f"({cluster.worker.node_id[:12]}) cannot write it" in line, line
    keys = _keys("badnode/smoke")
    assert not [k for k in keys if k.startswith(("tune/", "trials/"))], keys  # no trial started


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_two_nodes_that_share_no_run_directory_complete_a_search_in_the_bucket(s3_server, tmp_path):
    import tempfile

    import optuna

    import test_cluster_multinode as mn
    from trainables import storage

    root = Path(tempfile.mkdtemp(prefix="ibfts3", dir="/tmp"))
    head_work, worker_work = root / "head-disk", root / "worker-disk"
    cluster = _start_two_nodes(
        root, head_env={"IBFT_NODE_WORK_DIR": str(head_work)}, worker_env={"IBFT_NODE_WORK_DIR": str(worker_work)}
    )
    name, num_samples = "twonode", 4
    uri = f"s3://{BUCKET}/mn/{name}"
    try:
        space = smoke_space_file(tmp_path, num_samples=num_samples, max_concurrent=2, asha={
            "metric": "val/pass@2(2)", "grace_period": 2, "reduction_factor": 2, "max_rungs": 2})  # no early stops
        proc = subprocess.run(
            [sys.executable, "-m", "search", "tune", str(space), "--address", cluster.address,
             "--storage-path", f"s3://{BUCKET}/mn", "--name", name],
            env={**_env(s3_server, tmp_path), **mn.NODE_ENV},
            capture_output=True,
            text=True,
            timeout=1200,
            start_new_session=True,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "storage: all 2 node(s) can write" in proc.stderr
        down = tmp_path / "down"
        storage.download_tree(uri, down, keep=lambda r: r.endswith(("result.json", "optuna.db", "trials.csv")))
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{down / 'optuna.db'}")
        assert len(study.trials) == num_samples and all(t.state.is_finished() for t in study.trials)
        nodes_of: dict[str, set] = {}
        for path in (down / "tune").glob("*/result.json"):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if row.get("node_id"):
                    nodes_of.setdefault(row["trial_id"], set()).add(row["node_id"])
        used = set().union(*nodes_of.values())
        assert used == {cluster.head.node_id, cluster.worker.node_id}, nodes_of  # both nodes trained trials
        # Nothing shared: each node's work dir holds the trials that trained there, and the driver's staging
        # directory received no trial file; everything the trials keep is in the bucket.
        on_head = {p.parent.name for p in head_work.glob("*/*/work")}
        on_worker = {p.parent.name for p in worker_work.glob("*/*/work")}
        assert on_head and on_worker, (on_head, on_worker)
        assert {t for t, n in nodes_of.items() if cluster.worker.node_id in n} <= on_worker
        staging = tmp_path / "staging"
        assert not list(staging.glob("*/*/trials")), list(staging.rglob("*"))[:20]
        assert not (tmp_path / "node-work").exists()  # the driver's environment reached no trial
        keys = _keys(f"mn/{name}")
        for trial_id in nodes_of:
            assert any(k.startswith(f"trials/{trial_id}/checkpoint_") for k in keys), (trial_id, keys)
            assert f"trials/{trial_id}/work/metrics.jsonl" in keys
        assert "trials.csv" in keys and "pareto.json" in keys
    finally:
        _shut_down(cluster, root)


def test_a_stopped_trial_in_the_bucket_keeps_only_its_last_rungs_adapter(s3_server, tmp_path):
    """keep_checkpoints last_adapter for an object-store run: the same files go as on a shared mount."""
    from test_checkpoint_keeping import _rung_checkpoint

    from search.checkpoints import slim_stopped_trial_uri
    from trainables import storage

    local = tmp_path / "t1"
    _rung_checkpoint(local / "checkpoint_2026-12-01_00-00-09", 1)
    _rung_checkpoint(local / "checkpoint_2026-12-01_00-00-10", 2)
    (local / "work").mkdir()
    (local / "work" / "metrics.jsonl").write_text('{"step": 1}\n')
    uri = f"s3://{BUCKET}/slim/trials/t1"
    storage.upload_tree(local, uri)
    freed = slim_stopped_trial_uri(uri)
    last = "checkpoint_2026-12-01_00-00-10"
    assert storage.list_files(uri) == sorted(
        [f"{last}/{name}" for name in ("adapter/adapter_model.safetensors", "ib_config.json", "ib_head.safetensors",
                                       "rung_metrics.json", "task_counts.json", "train_config.json")]
        + ["work/metrics.jsonl"]
    )
    assert freed == 2 * (5000 + 7000) + 1000 + 100 + 4 * 0 + sum(
        len(p.read_bytes()) for p in (local / "checkpoint_2026-12-01_00-00-09").glob("*.json")
    )


def test_an_upload_that_fails_at_the_end_warns_instead_of_losing_the_summary(s3_server, tmp_path, monkeypatch, capsys):
    from search import storage

    monkeypatch.setenv(storage.STAGING_ENV, str(tmp_path / "staging"))
    run_dir = storage.new_staging("s3://no-such-bucket-ibft/runs/x")
    (run_dir / "trials.csv").write_text("trial_id\n")
    storage.upload_best_effort(storage.upload_tables, run_dir, "trials.csv and pareto.json")
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: trials.csv and pareto.json not uploaded to s3://no-such-bucket-ibft/runs/x (")
    assert str(run_dir) in err and len(err.splitlines()) == 1
