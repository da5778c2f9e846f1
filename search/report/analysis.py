"""What the report states about a run: the front, hypervolume over trial-steps, early-stopping savings,
the generalisation gap and parameter importances. Plain data in, plain data out (figures draw it)."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

from search.pareto import hypervolume, non_dominated
from search.pareto import reference_point as pareto_reference_point
from search.report.load import COMPLETE, ERROR, PRUNED, UNFINISHED, RunData, TrialRecord

MIN_TRIALS_FOR_IMPORTANCE = 3
"""Completed searched trials needed before Optuna's importances say anything."""


@dataclass
class HypervolumePoint:
    """The front's hypervolume after some trial-steps were spent."""

    steps: int
    """Optimizer steps spent by all trials so far."""
    hypervolume: float
    """Hypervolume of the completed trials' front at that point."""
    trial: str
    """Label of the trial whose report this point follows."""
    completed: bool
    """Whether that report completed the trial (the front could change)."""


@dataclass
class Savings:
    """What ASHA's early stopping saved, in optimizer steps and (estimated) seconds."""

    trials_run: int
    """Trials that reported at least one rung."""
    trials_stopped: int
    """Trials ASHA stopped before their last rung."""
    steps_spent: int
    """Optimizer steps the trials reported."""
    steps_without_stopping: Optional[int]
    """Steps had every trial that ran gone to max_steps (None when max_steps is unknown)."""
    seconds_saved_estimate: Optional[float]
    """Stopped trials' remaining steps at the search's median seconds per step between rungs (None: unknown)."""
    repeats_answered: int = 0
    """Sampler proposals of an already-run configuration, answered from that run instead of training."""

    @property
    def steps_saved(self) -> Optional[int]:
        """Steps not spent thanks to early stopping."""
        return None if self.steps_without_stopping is None else self.steps_without_stopping - self.steps_spent

    @property
    def fraction_saved(self) -> Optional[float]:
        """Share of the no-stopping budget that early stopping saved."""
        if not self.steps_without_stopping:
            return None
        return (self.steps_saved or 0) / self.steps_without_stopping


@dataclass
class Facts:
    """Everything the page, the PNG and summary.md state about a run."""

    run: RunData
    """The run as read."""
    front: list[TrialRecord]
    """Completed trials no other completed trial dominates."""
    dominated: list[TrialRecord]
    """Completed trials some other completed trial dominates."""
    reference: list[float]
    """Hypervolume reference point (worst corner) per objective."""
    hypervolume: float
    """Hypervolume of the front now."""
    progress: list[HypervolumePoint]
    """Hypervolume as trial-steps were spent."""
    savings: Savings
    """Early-stopping savings."""
    importances: dict[str, dict[str, float]]
    """Objective metric -> {parameter: importance}; empty when not computable."""
    importance_note: Optional[str]
    """Why importances are missing, when they are."""
    counts: dict[str, int] = field(default_factory=dict)
    """Trials per state."""

    @property
    def baseline(self) -> Optional[TrialRecord]:
        """The plain-LoRA baseline trial (alpha = 0), if it was run."""
        return next((t for t in self.run.trials if t.role == "baseline"), None)

    @property
    def paper(self) -> Optional[TrialRecord]:
        """The trial with the paper's setting, if it was run."""
        return next((t for t in self.run.trials if t.role == "paper"), None)

    @property
    def presets(self) -> list[TrialRecord]:
        """The trials of the space's own presets (role = the preset's name), in trial order."""
        return [t for t in self.run.trials if is_named_preset(t)]

    @property
    def marked(self) -> list[TrialRecord]:
        """The preset trials that ran: baseline, paper, then the space's presets."""
        return [t for t in (self.baseline, self.paper, *self.presets) if t is not None]


def is_named_preset(trial: TrialRecord) -> bool:
    """A trial of one of the space's own presets (its role is the preset's name)."""
    return trial.role not in ("baseline", "paper", "search")


def analyse(run: RunData) -> Facts:
    """Derive every stated number of the report from the run."""
    objectives = run.objectives
    complete = [t for t in run.trials if t.state == COMPLETE]
    front, dominated = split_front(complete, objectives)
    reference = reference_point(objectives, [t for t in run.trials if t.rungs or t.metrics])
    modes = [o["mode"] for o in objectives]
    hv_now = hypervolume([objective_values(t, objectives) for t in front], modes, reference)
    importances, note = parameter_importances(run)
    counts = {state: sum(t.state == state for t in run.trials) for state in (COMPLETE, PRUNED, ERROR, UNFINISHED)}
    return Facts(
        run=run,
        front=front,
        dominated=dominated,
        reference=reference,
        hypervolume=hv_now,
        progress=hypervolume_progress(run, reference),
        savings=early_stopping_savings(run),
        importances=importances,
        importance_note=note,
        counts=counts,
    )


def objective_values(trial: TrialRecord, objectives: list[dict[str, str]]) -> list[float]:
    """The trial's value per objective (NaN where it has none)."""
    return [float(trial.metrics.get(o["metric"], math.nan)) for o in objectives]


def split_front(
    trials: list[TrialRecord], objectives: list[dict[str, str]]
) -> tuple[list[TrialRecord], list[TrialRecord]]:
    """(front, dominated) among the given trials."""
    points = [objective_values(t, objectives) for t in trials]
    on_front = set(non_dominated(points, [o["mode"] for o in objectives]))
    return [t for i, t in enumerate(trials) if i in on_front], [t for i, t in enumerate(trials) if i not in on_front]


def reference_point(objectives: list[dict[str, str]], trials: list[TrialRecord]) -> list[float]:
    """Worst corner for the hypervolume (search.pareto.reference_point) over the trials' objective values."""
    points = [[t.metrics.get(o["metric"], math.nan) for o in objectives] for t in trials]
    return pareto_reference_point([(o["metric"], o["mode"]) for o in objectives], points)


def hypervolume_progress(run: RunData, reference: list[float]) -> list[HypervolumePoint]:
    """Hypervolume of the completed trials' front after each rung report, against the trial-steps spent.

    Reports are replayed in time order; a trial joins the front's candidates at the report that completed it.
    """
    events: list[tuple[float, int, TrialRecord, dict[str, Any]]] = []
    for order, trial in enumerate(run.trials):
        for rung in trial.rungs:
            events.append((float(rung.get("timestamp") or 0.0), order, trial, rung))
    events.sort(key=lambda e: (e[0], e[1], e[3].get("rung") or 0))
    modes = [o["mode"] for o in run.objectives]
    last_step: dict[int, int] = {}
    spent = 0
    candidates: list[list[float]] = []
    out: list[HypervolumePoint] = []
    for _, order, trial, rung in events:
        step = int(rung.get("step") or 0)
        spent += max(0, step - last_step.get(order, 0))
        last_step[order] = max(step, last_step.get(order, 0))
        completes = trial.state == COMPLETE and rung is trial.rungs[-1]
        if completes:
            candidates.append(objective_values(trial, run.objectives))
        hv = hypervolume(candidates, modes, reference) if candidates else 0.0
        out.append(HypervolumePoint(steps=spent, hypervolume=hv, trial=trial.label, completed=completes))
    return out


def early_stopping_savings(run: RunData) -> Savings:
    """Steps spent against steps had no trial been stopped; seconds saved at the search's training pace."""
    ran = [t for t in run.trials if t.steps > 0]
    stopped = [t for t in ran if t.state == PRUNED]
    spent = sum(t.steps for t in ran)
    full = run.max_steps * len(ran) if run.max_steps else None
    pace = seconds_per_step(run.trials)
    seconds = None
    if run.max_steps and pace is not None:
        seconds = sum(pace * (run.max_steps - t.steps) for t in stopped)
    repeats = 0
    if run.study is not None:
        # Proposals answered from an earlier run: the study's `repeats` user attribute ({trial number: count},
        # search.optuna_bridge.REPEATS_ATTR), plus the `duplicate_of` trials older runs recorded them as.
        counts = run.study.user_attrs.get("repeats") or {}
        repeats = sum(int(v) for v in counts.values() if isinstance(v, (int, float)))
        repeats += sum("duplicate_of" in t.user_attrs for t in run.study.get_trials(deepcopy=False))
    return Savings(
        trials_run=len(ran),
        trials_stopped=len(stopped),
        steps_spent=spent,
        steps_without_stopping=full,
        seconds_saved_estimate=seconds,
        repeats_answered=repeats,
    )


def seconds_per_step(trials: list[TrialRecord]) -> Optional[float]:
    """Median seconds per optimizer step between rungs, evaluation included.

    The first rung of a trial also pays for starting its workers and loading the model, which a stopped
    trial has already paid, so only later rungs measure what the remaining steps would have cost.
    """
    paces = []
    for trial in trials:
        previous = None
        for rung in trial.rungs:
            step, took = rung.get("step"), rung.get("time_this_iter_s")
            if previous is not None and isinstance(step, (int, float)) and step > previous and took:
                paces.append(float(took) / (step - previous))
            previous = step if isinstance(step, (int, float)) else previous
    if not paces:
        return None
    paces.sort()
    middle = len(paces) // 2
    return paces[middle] if len(paces) % 2 else (paces[middle - 1] + paces[middle]) / 2


MEMORIZATION_GAP = "memorization/gap"
"""The memorization gap a trial reports when its space measures memorization (lower is better)."""
ADDED_MEMORIZATION_GAP = "memorization_gap"
"""A trials.csv column of that name, added by a memorization analysis run after the search, is read as the gap
of trials that did not report one."""


def memorization_gap(trial: TrialRecord) -> Optional[float]:
    """The trial's memorization gap (reported, else an added trials.csv column), None when it has none."""
    value = trial.metrics.get(MEMORIZATION_GAP, trial.extra.get(ADDED_MEMORIZATION_GAP))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def test_metric(metric: str) -> str:
    """The test-split counterpart of a validation metric name."""
    return "test/" + metric.split("/", 1)[1] if metric.startswith("val/") else metric


def parameter_importances(run: RunData) -> tuple[dict[str, dict[str, float]], Optional[str]]:
    """Optuna's importances (its default evaluator) of the searched parameters, per objective.

    Only completed searched trials count: the baseline has no searched parameters (alpha = 0 lies outside
    any log-uniform range), and stopped trials carry no final values.
    """
    if run.study is None:
        return {}, "no readable optuna.db"
    import optuna
    from optuna.trial import TrialState

    trials = [
        t
        for t in run.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.params and t.values and "duplicate_of" not in t.user_attrs  # a repeat would count its twin twice
    ]
    if len(trials) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, (
            f"{len(trials)} completed trial(s) with searched parameters; importances need at least "
            f"{MIN_TRIALS_FOR_IMPORTANCE}"
        )
    study = optuna.create_study(directions=run.study.directions)
    study.add_trials(trials)
    out: dict[str, dict[str, float]] = {}
    flat: list[str] = []
    for i, objective in enumerate(run.objectives):
        values = {t.values[i] for t in trials}
        if len(values) < 2:
            flat.append(objective["metric"])
            continue
        sign = -1.0 if objective["mode"] == "max" else 1.0
        with warnings.catch_warnings():
            # The evaluator warns that it ranks for low targets: the sign above makes low mean better.
            warnings.simplefilter("ignore")
            try:
                scores = optuna.importance.get_param_importances(study, target=lambda t, i=i, s=sign: s * t.values[i])
            except (ValueError, RuntimeError) as e:
                return {}, f"Optuna could not compute importances ({e})"
        out[objective["metric"]] = dict(scores)
    note = None
    if flat:
        note = f"every completed trial scored the same on {', '.join(flat)}: no parameter explains a difference"
    return out, note
