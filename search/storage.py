"""A search whose RUN_DIR is an object-store URI (`ibft tune --storage-path s3://bucket/prefix`): the driver's staging
directory and what it keeps in step with the URI.

Design. The URI is the run's only durable home; the driver (on the head) works in a local staging directory that
mirrors the run's small files and can be lost at any time:
- Ray Tune's experiment (`URI/tune/`) and every trial's Ray Train run (`URI/trials/<id>/checkpoint_*`) are written
  by Ray itself through pyarrow.fs (RunConfig.storage_path is the URI); nothing of theirs goes through staging.
- The Optuna study stays a SQLite file (optuna.db), in staging: SQLite needs a local disk (its locks do not work on
  an object store), and the search's code, `ibft report` and optuna-dashboard all read it as SQLite. After every
  change of the study (each ask and tell: search.storage_sync.RunSync) a consistent snapshot is taken with SQLite's
  online backup API (never a copy of a file in mid-transaction) and uploaded as `URI/optuna.db`; an S3 PUT replaces
  the object whole, so a reader sees the old or the new study, never half. Rebuilding the study from Tune's searcher
  checkpoint was rejected: that snapshot is only as fresh as Tune's experiment sync, lags the study, and would lose
  the user attributes (repeats, Ray trial ids) the resume logic relies on. Optuna's JournalStorage was rejected
  too: a journal file on an object store cannot be appended to, so it would be uploaded whole like the SQLite
  copy, with no gain and a second study format for the report and the dashboard.
- space.yaml and ib_semantics.json are uploaded once when the search starts; trials.csv, pareto.json and the
  offline W&B runs each time they are written and when the search ends; `ibft report` uploads its report/.
- `ibft tune --resume URI` rebuilds the staging directory from the URI alone (space.yaml, ib_semantics.json,
  optuna.db, tune/'s JSON files, trials.csv), so a head whose disk was wiped resumes like one that kept it.

The staging directory is IBFT_STAGING_DIR (default ~/.cache/ibft-search/runs) / <hash of the URI> / NAME, so the
run's name stays the last path component, as the rest of the search expects.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Optional

from trainables import storage as fs
from trainables.errors import ConfigError

URI_FILE = ".ibft_storage_uri"
"""In a staging directory: the URI it mirrors (search code finds a run's URI from its local directory)."""
STAGING_ENV = "IBFT_STAGING_DIR"
STATE_FILES = ("space.yaml", "ib_semantics.json", "optuna.db", "trials.csv", "pareto.json")
"""Top-level files a resume downloads (tune/*.json comes too; checkpoints stay in the bucket)."""
REPORT_KEEP_IN_CHECKPOINTS = ("rung_metrics.json", "task_counts.json", "train_config.json")
"""What `ibft report` reads of a rung checkpoint (search.report.load); the weights stay in the bucket."""


def staging_root() -> Path:
    return Path(os.environ.get(STAGING_ENV) or Path.home() / ".cache" / "ibft-search" / "runs")


def staging_dir(uri: str, purpose: str = "") -> Path:
    """The local directory mirroring the run at `uri` (its last component is the run's name). `purpose` "reports"
    gives `ibft report` a folder of its own: on the head, the driver's staging directory holds the live study."""
    uri = uri.rstrip("/")
    root = staging_root() / purpose if purpose else staging_root()
    return root / hashlib.sha1(uri.encode()).hexdigest()[:12] / fs.basename(uri)


def remote_of(run_dir: Path) -> Optional[str]:
    """The URI a staging directory mirrors, or None for a run directory that is itself the run (a local path)."""
    marker = Path(run_dir) / URI_FILE
    return marker.read_text().strip() if marker.is_file() else None


def location(run_dir: Path) -> str:
    """What the user calls the run: its URI, or its directory."""
    return remote_of(run_dir) or str(run_dir)


def new_staging(uri: str) -> Path:
    """A fresh, empty staging directory for the run at `uri` (what an earlier search left there goes)."""
    local = staging_dir(uri)
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    (local / URI_FILE).write_text(uri.rstrip("/") + "\n")
    return local


def check_writable(uri: str, what: str = "--storage-path") -> None:
    """Write, read back and delete a probe object under `uri` from this process, or raise a one-line ConfigError
    naming the path and this machine."""
    import socket

    probe = fs.join(uri, ".ibft-probe", f"driver-{socket.gethostname()}-{os.getpid()}")
    try:
        fs.write_text(probe, "ok")
        if fs.read_text(probe) != "ok":
            raise OSError("the probe object written there reads back differently")
        fs.remove(probe)
    except Exception as e:
        raise ConfigError(
            f"{what} {uri}: this machine ({socket.gethostname()}, the driver) cannot write there: {one_line(e)}"
        ) from None


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:300]}"


def holds_a_search(uri: str) -> bool:
    return fs.exists(fs.join(uri, "tune")) or fs.exists(fs.join(uri, "optuna.db"))


def _upload_files(run_dir: Path, names: tuple[str, ...]) -> None:
    uri = remote_of(run_dir)
    if uri is None:
        return
    for name in names:
        if (run_dir / name).is_file():
            fs.upload_file(run_dir / name, fs.join(uri, name))


def upload_start_files(run_dir: Path) -> None:
    """space.yaml and ib_semantics.json of a new (or --num-samples-changed) search."""
    _upload_files(run_dir, ("space.yaml", "ib_semantics.json"))


def upload_tables(run_dir: Path) -> None:
    """trials.csv and pareto.json, after each write."""
    _upload_files(run_dir, ("trials.csv", "pareto.json"))


def upload_wandb(run_dir: Path) -> None:
    uri = remote_of(run_dir)
    if uri is not None and (run_dir / "wandb").is_dir():
        fs.upload_tree(run_dir / "wandb", fs.join(uri, "wandb"), skip=lambda rel: rel.endswith(".lock"))


def upload_best_effort(upload, run_dir: Path, what: str) -> None:
    """Run `upload(run_dir)`; a failing store prints one warning naming what stayed local, instead of raising."""
    import sys

    try:
        upload(run_dir)
    except Exception as e:
        print(f"warning: {what} not uploaded to {location(run_dir)} ({one_line(e)}); the copy in {run_dir} is "
              "current", file=sys.stderr, flush=True)


def study_snapshot(db: Path, dest: Path) -> None:
    """A consistent copy of the SQLite study at `db` (SQLite's online backup: never a half-written transaction)."""
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
    try:
        out = sqlite3.connect(dest)
        try:
            src.backup(out)
        finally:
            out.close()
    finally:
        src.close()


def upload_study(run_dir: Path) -> None:
    """Upload a consistent snapshot of RUN_DIR/optuna.db to URI/optuna.db."""
    uri = remote_of(run_dir)
    db = run_dir / "optuna.db"
    if uri is None or not db.is_file():
        return
    with tempfile.TemporaryDirectory(prefix="ibft-study-") as tmp:
        copy = Path(tmp) / "optuna.db"
        study_snapshot(db, copy)
        fs.upload_file(copy, fs.join(uri, "optuna.db"))


def stage_for_resume(uri: str) -> Path:
    """A staging directory rebuilt from the URI alone, for `ibft tune --resume URI`."""
    uri = uri.rstrip("/")
    try:
        found = fs.exists(fs.join(uri, "space.yaml"))
    except Exception as e:
        raise ConfigError(f"--resume {uri}: cannot read it: {one_line(e)}") from None
    if not found:
        raise ConfigError(f"--resume {uri}: not a search run directory (no space.yaml)")
    local = new_staging(uri)

    def keep(rel: str) -> bool:
        return rel in STATE_FILES or (rel.startswith("tune/") and rel.endswith((".json", ".pkl")))

    fs.download_tree(uri, local, keep=keep)
    (local / "tune").mkdir(exist_ok=True)
    (local / "wandb").mkdir(exist_ok=True)  # the restored W&B callback writes its new runs here
    return local


def stage_for_report(uri: str) -> Path:
    """A local copy of what `ibft report` reads of the run at `uri` (everything but the report and the weights)."""
    uri = uri.rstrip("/")
    try:
        files = fs.list_files(uri)
    except Exception as e:
        raise ConfigError(f"ibft report {uri}: cannot read it: {one_line(e)}") from None
    if not files:
        raise ConfigError(f"ibft report {uri}: nothing there (not a search run directory)")
    local = staging_dir(uri, "reports")  # never the driver's staging directory: its optuna.db is the live study
    if not remote_of(local):
        local.mkdir(parents=True, exist_ok=True)
        (local / URI_FILE).write_text(uri + "\n")

    def keep(rel: str) -> bool:
        parts = rel.split("/")
        if parts[0] in ("report", "wandb", ".ibft-probe"):
            return False
        if parts[0] == "trials" and len(parts) > 3 and parts[2].startswith("checkpoint_"):
            return parts[-1] in REPORT_KEEP_IN_CHECKPOINTS and len(parts) == 4
        return True

    fs.download_tree(uri, local, keep=keep)
    return local


def upload_report(run_dir: Path, report_dir: Path) -> Optional[str]:
    uri = remote_of(run_dir)
    if uri is None:
        return None
    dest = fs.join(uri, "report")
    fs.upload_tree(report_dir, dest)
    return dest
