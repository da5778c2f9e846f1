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
from typing import Any

from ray.tune import Callback

ENGINE_STATE = ("trainer_state.pt", "deepspeed")
"""What a step checkpoint holds only to continue training (trainables.train.checkpoint.TRAINER_STATE_FILE,
trainables.train.engine.DEEPSPEED_SUBDIR)."""
LOCAL_STEP_CHECKPOINTS = ("work", "checkpoints")
"""The train loop's own step checkpoints under the trial directory (written before Ray copies each rung's)."""


def _rung_of(checkpoint: Path) -> int:
    import json

    try:
        return int(json.loads((checkpoint / "rung_metrics.json").read_text()).get("rung", -1))
    except (OSError, ValueError, TypeError, AttributeError):
        return -1


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def slim_stopped_trial(trial_root: Path) -> int:
    """Keep the newest rung checkpoint of a stopped trial without its engine state; remove the older rung
    checkpoints and the loop's own step checkpoints. Returns the bytes freed."""
    checkpoints = sorted(
        (p for p in trial_root.glob("checkpoint_*") if p.is_dir()), key=lambda p: (_rung_of(p), p.name)
    )
    doomed: list[Path] = []
    if checkpoints:
        doomed += checkpoints[:-1]
        doomed += [checkpoints[-1] / name for name in ENGINE_STATE]
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


class SlimStoppedTrials(Callback):
    """Tune callback: once the study holds a trial as PRUNED (ASHA stopped it; the searcher tells the study
    before Tune's callbacks hear of the trial's end), slim its checkpoints (slim_stopped_trial)."""

    def __init__(self, run_dir: Path, study_name: str) -> None:
        self._run_dir = Path(run_dir)
        self._study_name = study_name

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        import optuna

        from search.optuna_bridge import OPTUNA_NUMBER_KEY
        from search.tuner import OPTUNA_DB, TRIALS_DIR, open_study_storage

        number = (trial.config or {}).get(OPTUNA_NUMBER_KEY)
        if not isinstance(number, int):
            return
        try:
            study = optuna.load_study(study_name=self._study_name, storage=open_study_storage(self._run_dir / OPTUNA_DB))
            state = study.get_trials(deepcopy=False)[number].state
        except Exception:  # never let book-keeping stop the search; the files just stay
            return
        if state == optuna.trial.TrialState.PRUNED:
            slim_stopped_trial(self._run_dir / TRIALS_DIR / trial.trial_id)
