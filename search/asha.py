"""ASHA on the validation proxy, printing one line per decision and breaking ties by training loss.

With a few validation tasks and samples many trials tie on pass@10(10) (all 0 early on), and Ray's ASHA
stops a trial only when it is strictly below the rung's cutoff, so ties would never be pruned. With
tie_break "train_loss" the ranking value is metric + 1e-6 / (1 + mean CE_ft over the rung): a lower loss
wins a tie and no real difference in pass rate (>= 1/(tasks * n) apart) can be overturned.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.tune.schedulers.trial_scheduler import TrialScheduler

from search.optuna_bridge import RUNG_KEY

TIE_BREAK_KEY = "train/ce_loss_rung"
"""Mean fine-tuning cross-entropy over the rung's optimizer steps, reported with every rung."""
TIE_BREAK_SCALE = 1e-6


def ranking_value(result: dict, metric: str, mode: str, tie_break: str) -> Optional[float]:
    """The value ASHA compares (higher is better), or None when the result has no usable metric."""
    value = result.get(metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    score = float(value) if mode == "max" else -float(value)
    loss = result.get(TIE_BREAK_KEY)
    if tie_break == "train_loss" and isinstance(loss, (int, float)) and math.isfinite(loss) and loss >= 0:
        score += TIE_BREAK_SCALE / (1.0 + loss)
    return score


def recorded_results(tune_dir: Path) -> dict[str, list[dict]]:
    """Every result each Tune trial of a search reported, in its order: the trials' result.json under
    RUN_DIR/tune/ (Ray's JSON logger writes one line per result, a restarted trial appending to it)."""
    import json

    out: dict[str, list[dict]] = {}
    for path in sorted(Path(tune_dir).glob("*/result.json")):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                result = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(result, dict) and isinstance(result.get("trial_id"), str):
                out.setdefault(result["trial_id"], []).append(result)
    return out


class _Recorded:
    """What Ray's bracket reads of a trial: its id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


class LoggedASHA(AsyncHyperBandScheduler):
    """ASHA over rungs (time_attr = "rung") that prints every decision it takes at a rung."""

    def __init__(
        self,
        *,
        metric: str,
        mode: str,
        num_rungs: int,
        grace_period: int,
        reduction_factor: float,
        tie_break: str,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(
            time_attr=RUNG_KEY,
            metric=metric,
            mode=mode,
            max_t=num_rungs,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            stop_last_trials=True,
        )
        self._tie_break = tie_break
        self._echo = echo

    def _print(self, line: str) -> None:
        (self._echo or (lambda s: print(s, file=sys.stderr, flush=True)))(line)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        rung = result.get(RUNG_KEY)
        stop = self._stopped_before(trial, rung)
        if stop is not None:
            return stop
        score = ranking_value(result, self._metric, self._mode, self._tie_break)
        if rung is None or score is None:
            return TrialScheduler.CONTINUE
        if rung >= self._max_t:
            self._print(
                f"ASHA {trial.trial_id} rung {rung}/{self._max_t}: {self._metric}={result[self._metric]:.4f} -> FINISHED"
            )
            # CONTINUE: the trainable returns by itself after its last rung, with its test scores and final
            # checkpoint written; stopping it here could kill it while it finishes that.
            return TrialScheduler.CONTINUE
        # A trial restored after the driver was killed may predate the scheduler's last saved state.
        bracket = self._trial_info.setdefault(trial.trial_id, self._brackets[0])
        cutoff = _cutoff_at(bracket, rung, trial.trial_id)
        action = bracket.on_result(trial, rung, score)
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
        cut = "none yet" if cutoff is None else f"{cutoff:.6g}"
        self._print(
            f"ASHA {trial.trial_id} rung {rung}/{self._max_t}: {self._metric}={result[self._metric]:.4f} "
            f"(rank value {score:.6g}, cutoff {cut}) -> {'STOP' if action == TrialScheduler.STOP else 'CONTINUE'}"
        )
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._trial_info.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._trial_info.pop(trial.trial_id, None)

    def _stopped_before(self, trial: Any, rung: Any) -> Optional[str]:
        """STOP for a trial ASHA stopped before the resume (restore_rungs' `stopped`): Tune may restart it from
        its last snapshot, and its trainable then only reports its last result again."""
        if trial.trial_id not in getattr(self, "_stopped_before_resume", ()):
            return None
        self._print(f"ASHA {trial.trial_id} rung {rung}/{self._max_t}: stopped before the resume -> STOP")
        return TrialScheduler.STOP

    def restore_rungs(self, results: dict[str, list[dict]], stopped: Optional[set[str]] = None) -> int:
        """Rebuild the rung records from the recorded results of a search (recorded_results), as a scheduler
        that never stopped would hold them: Ray keeps no scheduler state across a resume (Tuner.restore takes the
        scheduler pickled when the search was built, with empty rungs). Each trial's value at a milestone is its
        first result at or past it, so the records do not depend on the order trials arrived in. Returns the
        number of rung records restored. `stopped`: ids of the trials ASHA stopped (PRUNED in the study); each is
        answered STOP if Tune runs it again."""
        self._stopped_before_resume = set(stopped or ())
        before = self._recorded_count()
        for trial_id, trial_results in results.items():
            for result in trial_results:
                self._record(trial_id, result)
        return self._recorded_count() - before

    def _record(self, trial_id: str, result: dict) -> None:
        rung = result.get(RUNG_KEY)
        score = ranking_value(result, self._metric, self._mode, self._tie_break)
        if rung is None or score is None or rung >= self._max_t:
            return  # what on_trial_result never records either
        self._brackets[0].on_result(_Recorded(trial_id), rung, score)  # Ray's own recording; the action is moot

    def _recorded_count(self) -> int:
        return sum(len(recorded) for _, recorded in self._brackets[0]._rungs)


class ParetoRungs:
    """The rung book-keeping of multi-objective successive halving: at each of Ray's ASHA milestones, the
    objective values of every trial that reached it, and the decision for a newcomer (search.pareto.keeps_at_rung).
    Milestones and when a trial is judged are exactly Ray's bracket's; only the comparison differs."""

    def __init__(self, *, num_rungs: int, grace_period: int, reduction_factor: float, modes: list[str]) -> None:
        from ray.tune.schedulers.async_hyperband import _Bracket

        bracket = _Bracket(min_t=grace_period, max_t=num_rungs, reduction_factor=reduction_factor, s=0, stop_last_trials=True)
        self.milestones = [milestone for milestone, _ in bracket._rungs]  # highest first, as Ray checks them
        self.recorded: dict[int, dict[str, tuple[float, ...]]] = {m: {} for m in self.milestones}
        self.modes = list(modes)
        self.reduction_factor = reduction_factor

    def decide(self, trial_id: str, rung: int, values: tuple[float, ...]) -> tuple[str, Optional[tuple[int, int]]]:
        """(CONTINUE or STOP, (trials ranked at this milestone, how many of them go on)); None when no
        milestone judges this result (before the first one, or already judged at it)."""
        from search.pareto import keeps_at_rung

        for milestone in self.milestones:
            recorded = self.recorded[milestone]
            if rung < milestone or trial_id in recorded:
                continue
            keep = keeps_at_rung(values, list(recorded.values()), self.modes, self.reduction_factor)
            recorded[trial_id] = tuple(values)
            quota = math.ceil(len(recorded) / self.reduction_factor)
            return (TrialScheduler.CONTINUE if keep else TrialScheduler.STOP), (len(recorded), quota)
        return TrialScheduler.CONTINUE, None


def objective_values(result: dict, objectives: list[tuple[str, str]], tie_break: str) -> Optional[tuple[float, ...]]:
    """A rung's objective values, each as ranking_value makes it (higher is better, ties by train CE); None
    when one is missing or not finite."""
    values = [ranking_value(result, metric, mode, tie_break) for metric, mode in objectives]
    return None if any(v is None for v in values) else tuple(values)  # type: ignore[misc]


class ParetoASHA(LoggedASHA):
    """ASHA whose rung decisions rank trials on all objectives (asha.promotion "pareto"), printing each one."""

    def __init__(self, *, objectives: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._objectives = list(objectives)
        self._pareto = ParetoRungs(
            num_rungs=kwargs["num_rungs"],
            grace_period=kwargs["grace_period"],
            reduction_factor=kwargs["reduction_factor"],
            modes=["max"] * len(objectives),  # objective_values already turned every objective into max
        )

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        rung = result.get(RUNG_KEY)
        stop = self._stopped_before(trial, rung)
        if stop is not None:
            return stop
        values = objective_values(result, self._objectives, self._tie_break)
        if rung is None or values is None:
            return TrialScheduler.CONTINUE
        shown = ", ".join(f"{metric}={result[metric]:.4f}" for metric, _ in self._objectives)
        if rung >= self._max_t:
            self._print(f"ASHA {trial.trial_id} rung {rung}/{self._max_t}: {shown} -> FINISHED")
            return TrialScheduler.CONTINUE  # the trainable returns by itself after its last rung (see LoggedASHA)
        action, standing = self._pareto.decide(trial.trial_id, rung, values)
        if standing is None:
            return action
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
        ranked, quota = standing
        self._print(
            f"ASHA {trial.trial_id} rung {rung}/{self._max_t}: {shown} (Pareto rank among {ranked} at this rung, "
            f"best {quota} go on) -> {'STOP' if action == TrialScheduler.STOP else 'CONTINUE'}"
        )
        return action

    def _record(self, trial_id: str, result: dict) -> None:
        rung = result.get(RUNG_KEY)
        values = objective_values(result, self._objectives, self._tie_break)
        if rung is None or values is None or rung >= self._max_t:
            return
        self._pareto.decide(trial_id, rung, values)  # records the values at the milestone; the decision is moot

    def _recorded_count(self) -> int:
        return sum(len(recorded) for recorded in self._pareto.recorded.values())


def _cutoff_at(bracket: Any, rung: int, trial_id: str) -> Optional[float]:
    """The cutoff the bracket will apply to this trial at this rung (None: nothing recorded, or no decision)."""
    for milestone, recorded in bracket._rungs:
        if rung < milestone or trial_id in recorded:
            continue
        return bracket.cutoff(recorded)
    return None


def make_scheduler(space: Any) -> TrialScheduler:
    """The search's trial scheduler: LoggedASHA on the space's asha section (ParetoASHA with promotion
    "pareto"), or Ray's FIFOScheduler (no early stopping, every trial runs all its rungs) when asha.enabled
    is false."""
    if not space.asha.enabled:
        return FIFOScheduler()
    settings = dict(
        metric=space.asha.metric,
        mode=space.asha.mode,
        num_rungs=space.num_rungs,
        grace_period=space.asha.grace_period,
        reduction_factor=space.asha.reduction_factor,
        tie_break=space.asha.tie_break,
    )
    if space.asha.promotion == "pareto":
        return ParetoASHA(objectives=[(o.metric, o.mode) for o in space.objectives], **settings)
    return LoggedASHA(**settings)
