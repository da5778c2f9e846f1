"""A resumed search's bookkeeping, brought back in line with the trials Tune restored.

Tune restores a killed search from three files that it writes together but uploads to the run's storage one by
one, in the background, every few seconds (TuneController.save_to_dir, then a sync): the experiment state (the
trial list), the search generator's state (its count of suggestions and the concurrency limiter's live trials)
and the searcher's (which Tune trial runs which Optuna trial). A kill can leave them from different moments,
more so on cloud storage, where an upload takes seconds; and the Optuna study (SQLite, written at once) is newer
than all of them. Tune trusts the trial list, so everything else is made to agree with it:

- the generator's count of suggestions is the number of restored trials. A count that included a trial Tune
  lost would keep that trial's Optuna trial from being claimed again, so it would stay RUNNING for ever;
- the limiter's live trials are the restored unfinished ones. A ghost would hold a concurrency slot for the
  rest of the search; a missing one's result would never reach Optuna (the limiter drops results of trials it
  does not know);
- the searcher maps every restored trial to the Optuna trial named in its config, and every RUNNING Optuna
  trial that no restored unfinished trial runs is claimed by the next new suggestion
  (PrunedAwareOptunaSearch.reconcile).

Trials that ran and finished after the last upload are in the study but in no file; the searcher counts them
against num_samples (PrunedAwareOptunaSearch.suggest), so the resumed search does not run extra trials.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.search_generator import SearchGenerator

from search.optuna_bridge import OPTUNA_NUMBER_KEY

logger = logging.getLogger(__name__)

EXPERIMENT_STATE_GLOB = "experiment_state-*.json"
"""Tune's experiment state files (TuneController.CKPT_FILE_TMPL), one per driver session."""
FINISHED_STATUSES = ("TERMINATED", "ERROR")
"""Tune trial statuses a resumed search does not run again (tuner.build_tuner restores with
resume_errored=False and restart_errored=False); PENDING, RUNNING and PAUSED trials are continued."""


@dataclass(frozen=True)
class RestoredTrial:
    """One trial of the experiment state Tune restores a search from."""

    trial_id: str
    """Tune's id of the trial."""
    status: str
    """Its status when the state was saved (PENDING, RUNNING, PAUSED, TERMINATED, ERROR)."""
    optuna_number: Optional[int]
    """The Optuna trial it runs (its config's optuna_trial), or None for a trial without one."""

    @property
    def live(self) -> bool:
        """Whether the resumed search runs it (again)."""
        return self.status not in FINISHED_STATUSES


def newest_experiment_state(dirpath: Path) -> Optional[Path]:
    """The experiment state file Tune restores from: the newest session's, by name, as Tune picks it
    (_find_newest_experiment_checkpoint)."""
    files = sorted(Path(dirpath).glob(EXPERIMENT_STATE_GLOB), key=lambda p: p.name)
    return files[-1] if files else None


def read_restored_trials(dirpath: Path, number_key: str) -> Optional[list[RestoredTrial]]:
    """The trials of the newest experiment state in `dirpath`, or None where there is none or it cannot be read
    (then nothing is reconciled; the searcher's own state stands)."""
    path = newest_experiment_state(dirpath)
    if path is None:
        return None
    try:
        state = json.loads(path.read_text())
        trials = []
        for item in state["trial_data"]:
            trial = json.loads(item[0])  # (the trial's JSON state, its run metadata): both JSON text
            number = (trial.get("config") or {}).get(number_key)
            trials.append(
                RestoredTrial(
                    trial_id=str(trial["trial_id"]),
                    status=str(trial.get("status", "PENDING")),
                    optuna_number=number if isinstance(number, int) and not isinstance(number, bool) else None,
                )
            )
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        logger.warning("could not read Tune's trial list from %s (%s): the searcher's own state stands", path, exc)
        return None
    return trials


class ReconcilingSearchGenerator(SearchGenerator):
    """Tune's SearchGenerator, whose restore makes the generator's count, the concurrency limiter's live trials
    and the searcher's trial map agree with the trial list Tune restored (see the module's docstring)."""

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        restored = read_restored_trials(Path(dirpath), OPTUNA_NUMBER_KEY)
        if restored is None:
            return
        reconcile_generator(self, restored)


def reconcile_generator(generator: SearchGenerator, restored: list[RestoredTrial]) -> None:
    """Make `generator`, its limiters and its base searcher agree with `restored` (Tune's trial list)."""
    live = {t.trial_id for t in restored if t.live}
    before = generator._counter
    generator._counter = len(restored)
    generator._finished = False  # decided again by the searcher's next answer
    searcher = generator.searcher
    while hasattr(searcher, "searcher"):
        if isinstance(searcher, ConcurrencyLimiter):
            ghosts, missing = searcher.live_trials - live, live - searcher.live_trials
            if ghosts or missing:
                logger.info(
                    "resume: the concurrency limiter's live trials follow Tune's trial list (%d dropped, %d added)",
                    len(ghosts), len(missing),
                )
            searcher.live_trials = set(live)
            searcher.num_unfinished_live_trials = len(live)
            searcher.cached_results = {}
        searcher = searcher.searcher
    if before != generator._counter:
        logger.info("resume: %d suggestion(s) counted, as Tune restored %d trials (the saved count was %d)",
                    generator._counter, len(restored), before)
    if hasattr(searcher, "reconcile"):
        searcher.reconcile(restored)
