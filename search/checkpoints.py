"""What a search keeps of a stopped trial's checkpoints (space field keep_checkpoints).

A trial's Ray Train run keeps its last two rung checkpoints in RUN_DIR/trials/<id>/checkpoint_*/, each with the
optimizer / DeepSpeed engine state needed to continue training. A trial ASHA stopped never trains again, so with
keep_checkpoints "last_adapter" (the default) the driver keeps only its last rung's checkpoint, and of that only
what is read later: the LoRA adapter and IB head (`ibft eval --adapter`), the rung's metrics, per-task counts and
train config (`ibft report`). Finished trials keep their checkpoints; a trial cut off by Ctrl-C or a kill is
not stopped (the study still holds it RUNNING) and keeps everything it resumes from.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

ENGINE_STATE = ("trainer_state.pt", "deepspeed")
"""What a step checkpoint holds only to continue training (trainables.train.checkpoint.TRAINER_STATE_FILE,
trainables.train.engine.DEEPSPEED_SUBDIR)."""
LOCAL_STEP_CHECKPOINTS = ("work", "checkpoints")
"""The train loop's own step checkpoints under the trial directory (written before Ray copies each rung's)."""


RUNG_METRICS = "rung_metrics.json"
"""What each rung checkpoint holds of its rung's report (trainables.tune_trainable.RUNG_METRICS_FILE)."""


def _rung_checkpoints(trial_root: str) -> list[tuple[int, str, str]]:
    """(rung, name, path) of every checkpoint folder of the trial (local path or URI), by rung then name; rung -1
    where the rung's metrics are missing (a half-written copy)."""
    from trainables import rung_checkpoints

    return [(rung, name, path) for rung, name, path, _ in rung_checkpoints.listing(trial_root, RUNG_METRICS)]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _choose(checkpoints: list[tuple[int, str, Any]], reported_rung: Optional[int]) -> Optional[tuple[list[Any], Any]]:
    """(the checkpoints to remove, the one to keep) among (rung, name, path) sorted by rung then name, or None to
    keep everything. The kept one is the checkpoint of the last rung the trial reported: a trial goes on training
    while the driver decides to stop it, so a newer rung's checkpoint may be on disk, complete or half-copied, that
    no result (and no report's task counts) refers to. Without a reported rung, the newest is kept."""
    if not checkpoints:
        return None
    if reported_rung is None:
        return [c[2] for c in checkpoints[:-1]], checkpoints[-1][2]
    matches = [c for c in checkpoints if c[0] == reported_rung]
    if not matches:
        return None  # the reported rung's checkpoint is not there: remove nothing rather than the wrong one
    keep = matches[-1]
    return [c[2] for c in checkpoints if c is not keep], keep[2]


def slim_stopped_trial(trial_root: Path, reported_rung: Optional[int] = None) -> int:
    """Keep the rung checkpoint of a stopped trial's last reported rung (the newest when None) without its engine
    state; remove its other rung checkpoints and the loop's own step checkpoints. Returns the bytes freed."""
    checkpoints = [(rung, name, Path(path)) for rung, name, path in _rung_checkpoints(str(trial_root))]
    doomed: list[Path] = []
    chosen = _choose(checkpoints, reported_rung)
    if chosen is not None:
        others, keep = chosen
        doomed += others
        doomed += [keep / name for name in ENGINE_STATE]
    doomed.append(trial_root.joinpath(*LOCAL_STEP_CHECKPOINTS))
    freed = 0
    for path in doomed:
        if not path.exists():
            continue
        freed += _size(path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return freed


def slim_stopped_trial_uri(trial_uri: str, reported_rung: Optional[int] = None) -> int:
    """slim_stopped_trial for a trial of an object-store run (search.storage): the same choice of what goes, made
    through pyarrow.fs (there is no loop step checkpoint in the bucket: the work dir is node-local). Returns the
    bytes freed."""
    import pyarrow.fs

    from trainables import storage

    fs, root = storage.filesystem(trial_uri)
    root = root.rstrip("/")
    checkpoints = [(rung, name, f"{root}/{name}") for rung, name, _ in _rung_checkpoints(trial_uri)]
    doomed: list[str] = []
    chosen = _choose(checkpoints, reported_rung)
    if chosen is not None:
        others, keep = chosen
        doomed += others
        doomed += [f"{keep}/{name}" for name in ENGINE_STATE]
    freed = 0
    for path in doomed:
        info = fs.get_file_info(path)
        if info.type == pyarrow.fs.FileType.File:
            freed += info.size or 0
            fs.delete_file(path)
        elif info.type == pyarrow.fs.FileType.Directory:
            files = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
            freed += sum(f.size or 0 for f in files if f.type == pyarrow.fs.FileType.File)
            fs.delete_dir(path)
    return freed


class SlimStoppedTrials(Callback):
    """Tune callback: once the study holds a trial as PRUNED (ASHA stopped it; the searcher tells the study
    before Tune's callbacks hear of the trial's end), slim its checkpoints (slim_stopped_trial)."""

    def __init__(self, run_dir: Path, study_name: str) -> None:
        self._run_dir = Path(run_dir)
        self._study_name = study_name
        self._storage: Any = None

    def __getstate__(self) -> dict:  # pickled into Tune's tuner.pkl: without the open SQLite engine
        return {**self.__dict__, "_storage": None}

    def _state_of(self, number: int) -> Any:
        """The study's state of trial `number`.

        Runs in Tune's loop at every trial end. It used to open a new SQLite storage (engine, schema check) and
        load the whole study (every trial with its params and attributes, O(trials)) for one state, so the
        driver's work per trial grew with the search; now the storage is opened once and one row is read."""
        from search.tuner import OPTUNA_DB, open_study_storage

        if getattr(self, "_storage", None) is None:  # (getattr: a callback unpickled from an older tuner.pkl)
            self._storage = open_study_storage(self._run_dir / OPTUNA_DB)
        storage = self._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(self._study_name), number
        )
        return storage.get_trial(trial_id).state

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        import optuna

        from search.optuna_bridge import OPTUNA_NUMBER_KEY
        from search.tuner import TRIALS_DIR

        number = (trial.config or {}).get(OPTUNA_NUMBER_KEY)
        if not isinstance(number, int):
            return
        try:
            state = self._state_of(number)
        except Exception:  # never let book-keeping stop the search; the files just stay
            return
        if state == optuna.trial.TrialState.PRUNED:
            from search.storage import remote_of

            from search.optuna_bridge import RUNG_KEY

            rung = (getattr(trial, "last_result", None) or {}).get(RUNG_KEY)
            rung = rung if isinstance(rung, int) else None
            uri = remote_of(self._run_dir)
            if uri is None:
                slim_stopped_trial(self._run_dir / TRIALS_DIR / trial.trial_id, rung)
                return
            try:  # an object-store run: the checkpoints are in the bucket
                slim_stopped_trial_uri(f"{uri.rstrip('/')}/{TRIALS_DIR}/{trial.trial_id}", rung)
            except Exception:  # never let book-keeping stop the search
                return
