"""search.storage_sync.RunSync's per-event work (issue 19): no study upload per result, and at a trial's end only the
W&B files that changed since its last upload. The store is faked (upload_file recorded); tests/test_storage_s3.py
runs the real one."""
from __future__ import annotations

import os
import pickle

from search import storage
from search.storage_sync import RunSync
from trainables import storage as fs

URI = "s3://bucket/runs/x"


def _run_sync(tmp_path, monkeypatch) -> tuple[RunSync, list]:
    uploads: list = []
    monkeypatch.setattr(storage, "remote_of", lambda run_dir: URI)
    monkeypatch.setattr(fs, "upload_file", lambda path, dest: uploads.append(dest[len(URI) + 1:]))
    return RunSync(tmp_path), uploads


def test_a_trial_end_uploads_only_the_w_and_b_files_that_changed(tmp_path, monkeypatch):
    sync, uploads = _run_sync(tmp_path, monkeypatch)
    first = tmp_path / "wandb" / "wandb" / "offline-run-1" / "run-1.wandb"
    first.parent.mkdir(parents=True)
    first.write_bytes(b"a")
    (tmp_path / "wandb" / "wandb" / "offline-run-1" / "x.lock").write_text("")
    sync.on_trial_complete(0, [], None)
    assert uploads == ["wandb/wandb/offline-run-1/run-1.wandb"]
    second = tmp_path / "wandb" / "wandb" / "offline-run-2" / "run-2.wandb"
    second.parent.mkdir(parents=True)
    second.write_bytes(b"b")
    uploads.clear()
    sync.on_trial_error(0, [], None)
    assert uploads == ["wandb/wandb/offline-run-2/run-2.wandb"]  # the first run's file is as uploaded
    first.write_bytes(b"aa")  # its actor finished the run after the trial ended
    uploads.clear()
    sync.on_experiment_end([])
    assert uploads == ["wandb/wandb/offline-run-1/run-1.wandb"]


def test_a_failed_upload_is_retried_and_a_resumed_search_uploads_everything_once(tmp_path, monkeypatch):
    sync, uploads = _run_sync(tmp_path, monkeypatch)
    run = tmp_path / "wandb" / "offline-run-1" / "run-1.wandb"
    run.parent.mkdir(parents=True)
    run.write_bytes(b"a")

    def failing(path, dest):
        raise OSError("store down")

    monkeypatch.setattr(fs, "upload_file", failing)
    sync.on_trial_complete(0, [], None)
    monkeypatch.setattr(fs, "upload_file", lambda path, dest: uploads.append(dest[len(URI) + 1:]))
    sync.on_trial_complete(0, [], None)
    assert uploads == ["wandb/offline-run-1/run-1.wandb"]
    resumed = pickle.loads(pickle.dumps(sync))  # Tune's tuner.pkl
    uploads.clear()
    resumed.on_trial_complete(0, [], None)
    assert uploads == ["wandb/offline-run-1/run-1.wandb"]


def test_results_upload_nothing_the_step_end_does(tmp_path, monkeypatch):
    sync, _ = _run_sync(tmp_path, monkeypatch)
    studies: list = []
    monkeypatch.setattr(storage, "upload_study", lambda run_dir: studies.append(run_dir))
    (tmp_path / "optuna.db").write_bytes(b"x")
    os.utime(tmp_path / "optuna.db", (1, 1))
    sync.on_trial_result(0, [], None, {"rung": 1})
    assert studies == []
    sync.on_step_end(0, [])
    sync.on_step_end(1, [])
    assert studies == [tmp_path]  # once per change
