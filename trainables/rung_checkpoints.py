"""The rung checkpoints of a trial that trains in its own Tune process, laid out as Ray Train lays out its runs'.

A one-worker trial need not start Ray Train's controller and worker group (trainables.tune_trainable runs its loop
in the trial's process instead), but everything downstream reads a trial's checkpoints where Ray Train puts
them: RUN_DIR/trials/<id>/checkpoint_<time>/, the last two kept (CheckpointConfig(num_to_keep=2)). The report,
the slimming of stopped trials (search/checkpoints.py), `ibft eval --adapter` and a retried or resumed trial all
find them there, whichever path wrote them. This module is that store: persist a rung's step checkpoint, prune,
and find the newest complete one. No ray import; a RUN_DIR may be a local path or an object-store URI.

A checkpoint is complete once its COMMIT_FILE is there. On a local RUN_DIR the step checkpoint directory is
renamed into place (the loop's work dir is under the same trial directory, so this is one atomic rename, not a
copy); to an object store its files are uploaded with the commit file last, so a crash mid-upload leaves a
checkpoint that resume skips.
"""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Optional

from trainables import storage

PREFIX = "checkpoint_"
"""Ray Train's checkpoint folder prefix; the rest of the name is the time it was written."""
KEEP = 2
"""Newest checkpoints kept per trial, as the Ray Train path's CheckpointConfig(num_to_keep=2)."""


def new_name(now: Optional[datetime] = None) -> str:
    """checkpoint_<local time to the microsecond>: Ray Train's format, so names sort in the order written."""
    return PREFIX + (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S.%f")


def persist(step_dir: str | Path, trial_root: str, commit_file: str) -> str:
    """Move the loop's step checkpoint `step_dir` into `trial_root` as a new checkpoint; returns its path (or URI).

    `commit_file` (a file of `step_dir`, e.g. the rung's metrics) marks the checkpoint complete. The local
    `step_dir` is gone afterwards, as after the Ray Train path's upload.
    """
    step_dir = Path(step_dir)
    if not (step_dir / commit_file).is_file():
        raise FileNotFoundError(f"{step_dir} has no {commit_file}: not a rung checkpoint")
    target = storage.join(trial_root, new_name())
    if storage.is_uri(trial_root):
        storage.upload_tree(step_dir, target, skip=lambda rel: rel == commit_file)
        storage.upload_file(step_dir / commit_file, storage.join(target, commit_file))
        shutil.rmtree(step_dir, ignore_errors=True)
        return target
    Path(trial_root).mkdir(parents=True, exist_ok=True)
    try:
        os.rename(step_dir, target)
    except OSError:  # another filesystem (a trial directory mounted elsewhere): copy whole, then rename
        partial = Path(trial_root, f".tmp-{Path(target).name}")
        shutil.copytree(step_dir, partial)
        os.rename(partial, target)
        shutil.rmtree(step_dir, ignore_errors=True)
    return target


def listing(trial_root: str, commit_file: str) -> list[tuple[int, str, str, bool]]:
    """(rung, name, path, committed) of every checkpoint folder of the trial, by rung then name: `committed` when
    its commit file is there; `rung` as that file says, -1 when it is missing or unreadable. Whichever path wrote
    them (Ray Train's or this module's), so the slimming of stopped trials (search/checkpoints.py) reads them here too."""
    found = []
    for name in _checkpoint_names(trial_root):
        path = storage.join(trial_root, name)
        text = storage.read_text(storage.join(path, commit_file))
        try:
            rung = int(json.loads(text).get("rung", -1)) if text is not None else -1
        except (ValueError, TypeError, AttributeError):
            rung = -1
        found.append((rung, name, path, text is not None))
    return sorted(found)


def complete(trial_root: str, commit_file: str) -> list[tuple[int, str, str]]:
    """(rung, name, path) of the trial's complete checkpoints, oldest first (by rung, then by name)."""
    return [(rung, name, path) for rung, name, path, committed in listing(trial_root, commit_file) if committed]


def latest(trial_root: str, commit_file: str) -> Optional[str]:
    """The newest complete checkpoint of the trial, or None."""
    found = complete(trial_root, commit_file)
    return found[-1][2] if found else None


def prune(trial_root: str, commit_file: str, keep: int = KEEP) -> None:
    """Delete the trial's complete checkpoints but the newest `keep` (an incomplete one is left: it may be the
    upload of a checkpoint still being written)."""
    for _, _, path in complete(trial_root, commit_file)[:-keep]:
        if storage.is_uri(path):
            storage.delete_tree(path)
        else:
            shutil.rmtree(path, ignore_errors=True)


def local_copy(checkpoint: str, scratch: str | Path) -> Path:
    """A local directory holding `checkpoint`: the folder itself on a local RUN_DIR, else a download into `scratch`."""
    if not storage.is_uri(checkpoint):
        return Path(checkpoint)
    target = Path(scratch)
    shutil.rmtree(target, ignore_errors=True)
    storage.download_tree(checkpoint, target)
    return target


def _checkpoint_names(trial_root: str) -> list[str]:
    if not storage.is_uri(trial_root):
        root = Path(trial_root)
        return sorted(p.name for p in root.glob(PREFIX + "*") if p.is_dir()) if root.is_dir() else []
    import pyarrow.fs

    fs, inner = storage.filesystem(trial_root)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(inner.rstrip("/"), allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(PREFIX))
