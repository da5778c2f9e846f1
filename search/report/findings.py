"""The report's statements in words and its tables as text cells, shared by the page and summary.md."""
from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Optional

from search.report.analysis import MEMORIZATION_GAP, Facts, memorization_gap, test_metric
from search.report.load import COMPLETE, ERROR, PRUNED, UNFINISHED, TrialRecord
from search.report.reproduce import Reproduction

MEMORIZATION_MARK = "memoriz"
"""trials.csv columns whose name holds this are memorization-analysis results (lower gap = less memorization)."""
MEMORIZATION_SHOWN = (
    MEMORIZATION_GAP,
    "memorization/gap_change",
    "memorization/l2_distance",
    "memorization/angular_disparity",
    "memorization/min_k_mean",
)
"""The memorization metrics a trial reports that the tables show (every one is in trials.csv)."""


def fmt(value: Any, digits: int = 4) -> str:
    """A number to `digits` significant digits; anything else as text; missing as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}"
    return str(value)


def status_line(facts: Facts) -> str:
    """Whether the search finished, and when its files were last written."""
    run = facts.run
    when = (
        _dt.datetime.fromtimestamp(run.updated_at).strftime("%Y-%m-%d %H:%M:%S")
        if run.updated_at is not None
        else "unknown"
    )
    unfinished = facts.counts.get(UNFINISHED, 0)
    if run.finished:
        state = "finished"
    elif unfinished:
        state = (
            f"not finished: {unfinished} trial(s) running or left by an interrupted search "
            f"(`ibft tune --resume {run.run_dir}` continues it)"
        )
    else:
        state = "not finished: `ibft tune` has not written trials.csv yet (running, or interrupted)"
    return f"Search {run.name}: {state}. Files last written {when}."


def no_completed_banner(facts: Facts) -> Optional[str]:
    """The warning shown when no trial completed, saying what the trials did instead."""
    if facts.counts.get(COMPLETE, 0):
        return None
    c = facts.counts
    return (
        f"No trial has completed: {c.get(PRUNED, 0)} stopped by ASHA, {c.get(ERROR, 0)} errored, "
        f"{c.get(UNFINISHED, 0)} unfinished. There is no Pareto front yet; stopped trials are shown at their last "
        f"rung and errors are listed under All trials."
    )


def _values(trial: TrialRecord, metrics: list[str]) -> str:
    return ", ".join(f"{m} = {fmt(trial.metrics.get(m))}" for m in metrics)


def _standing(facts: Facts, trial: TrialRecord) -> str:
    if trial.state != COMPLETE:
        rung = f" at rung {trial.last_rung}" if trial.last_rung else ""
        return {PRUNED: f"stopped by ASHA{rung}", ERROR: f"errored ({trial.error or 'no message'})"}.get(
            trial.state, "not finished"
        )
    if any(t is trial for t in facts.front):
        return "on the front"
    from search.pareto import dominates

    objectives = facts.run.objectives
    modes = [o["mode"] for o in objectives]
    mine = [trial.metrics.get(o["metric"], math.nan) for o in objectives]
    by = [t.label for t in facts.front if dominates([t.metrics.get(o["metric"], math.nan) for o in objectives], mine, modes)]
    return "dominated" + (f" by {', '.join(by)}" if by else "")


def glance(facts: Facts) -> list[tuple[str, str]]:
    """(topic, statement) pairs answering: the front, baseline and paper, test, early stopping, progress."""
    run = facts.run
    metrics = [o["metric"] for o in run.objectives]
    c = facts.counts
    asked = f" of {run.num_samples} asked" if run.num_samples else ""
    out = [
        ("Trials", f"{sum(c.values())}{asked}: {c.get(COMPLETE, 0)} completed, {c.get(PRUNED, 0)} stopped by ASHA, "
                   f"{c.get(ERROR, 0)} errored, {c.get(UNFINISHED, 0)} unfinished."),
    ]
    if facts.front:
        out.append(("Pareto front", f"{len(facts.front)} trial(s) on {' × '.join(metrics)}: "
                                    + "; ".join(f"{t.label} ({t.role}: {_values(t, metrics)})" for t in facts.front)))
    else:
        out.append(("Pareto front", "empty: no trial has completed."))
    for trial, name in ((facts.baseline, "Baseline (plain LoRA, alpha = 0)"), (facts.paper, "Paper setting")):
        if trial is None:
            out.append((name, "not run (yet)."))
        else:
            out.append((name, f"{trial.label}, {_standing(facts, trial)}: {_values(trial, metrics)}."))
    out.append(("Gain over the baseline", _gain_statement(facts)))
    out.append(("Validation → test", _test_statement(facts)))
    memorization = _memorization_statement(facts)
    if memorization:
        out.append(("Memorization gap", memorization))
    out.append(("Early stopping", _savings_statement(facts)))
    out.append(("Hypervolume", f"{fmt(facts.hypervolume)} now (reference point "
                               f"({', '.join(fmt(v) for v in facts.reference)})), after "
                               f"{facts.savings.steps_spent} trial-steps."))
    return out


def _gain_statement(facts: Facts) -> str:
    base = facts.baseline
    if base is None or base.state != COMPLETE:
        return "no completed baseline to compare with."
    parts = []
    for o in facts.run.objectives:
        m = o["metric"]
        best = _best(facts.front, m, o["mode"])
        if best is None:
            continue
        delta = best.metrics[m] - base.metrics.get(m, math.nan)
        parts.append(f"{m}: best {fmt(best.metrics[m])} ({best.label}) vs baseline {fmt(base.metrics.get(m))} "
                     f"({delta:+.4g})")
    return "; ".join(parts) + "." if parts else "no front values."


def _best(trials: list[TrialRecord], metric: str, mode: str) -> Optional[TrialRecord]:
    scored = [t for t in trials if math.isfinite(t.metrics.get(metric, math.nan))]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda t: t.metrics[metric])


def _memorization_statement(facts: Facts) -> Optional[str]:
    """Where the baseline, the paper trial and the front stand on the memorization gap (None: not measured)."""
    measured = [t for t in facts.run.trials if memorization_gap(t) is not None]
    if not measured:
        if facts.run.measures_memorization:
            return "measured at the end of every finished trial; no trial has finished yet."
        return None
    parts = []
    base = facts.baseline
    base_gap = memorization_gap(base) if base is not None else None
    for trial, name in ((base, "baseline"), (facts.paper, "paper")):
        gap = memorization_gap(trial) if trial is not None else None
        if gap is not None:
            change = f" ({gap - base_gap:+.4g} vs baseline)" if base_gap is not None and trial is not base else ""
            parts.append(f"{name} {fmt(gap)}{change}")
    for name, trials in (("lowest on the front", facts.front), ("lowest of all", measured)):
        gaps = [(gap, t.label) for t in trials for gap in [memorization_gap(t)] if gap is not None]
        if gaps:
            gap, label = min(gaps)
            parts.append(f"{name} {fmt(gap)} ({label})")
    return (
        "angular gap in degrees between the most- and least-memorized training examples' representations, "
        "lower is better: " + "; ".join(parts) + "."
    )


def _test_statement(facts: Facts) -> str:
    base = facts.baseline
    pairs = [(o["metric"], test_metric(o["metric"]), o["mode"]) for o in facts.run.objectives
             if test_metric(o["metric"]) != o["metric"]]
    scored = [t for t in facts.front if any(tm in t.metrics for _, tm, _ in pairs)]
    if not scored:
        if not facts.run.has_test:
            return "the space scores no test split (add a `test:` section), so generalisation is not measured."
        return "no front trial has test scores yet (the test split is scored when a trial completes)."
    gaps = [t.metrics[tm] - t.metrics[vm] for t in scored for vm, tm, _ in pairs if tm in t.metrics and vm in t.metrics]
    text = f"mean test − val gap on the front {sum(gaps) / len(gaps):+.4g} over {len(gaps)} value(s)"
    if base is not None and all(tm in base.metrics for _, tm, _ in pairs):
        held, gained = 0, 0
        for t in scored:
            if t is base:
                continue
            for vm, tm, mode in pairs:
                sign = 1 if mode == "max" else -1
                if tm in t.metrics and sign * (t.metrics[vm] - base.metrics[vm]) > 0:
                    gained += 1
                    held += sign * (t.metrics[tm] - base.metrics[tm]) > 0
        text += (f"; of {gained} validation gain(s) over the baseline, {held} hold on test" if gained
                 else "; no front trial beats the baseline on validation")
    return text + "."


def _savings_statement(facts: Facts) -> str:
    s = facts.savings
    if not s.trials_run:
        return "no trial has reported a rung yet."
    text = f"ASHA stopped {s.trials_stopped} of {s.trials_run} trial(s); {s.steps_spent} trial-steps spent"
    if s.steps_without_stopping:
        text += (f" of {s.steps_without_stopping} had every trial run to the end: {s.steps_saved} saved "
                 f"({100 * (s.fraction_saved or 0):.0f}%)")
    if s.seconds_saved_estimate:
        text += f", about {s.seconds_saved_estimate / 60:.1f} min at the search's own pace"
    if s.repeats_answered:
        text += (f"; {s.repeats_answered} proposal(s) of an already-run configuration were answered from that run "
                 "instead of training again")
    return text + "."


def param_cells(trial: TrialRecord) -> list[str]:
    """alpha, beta, tap layer, prior (with options) as cells."""
    p = trial.params
    options = p.get("prior_options") or {}
    prior = str(p.get("prior", "–")) + (f" {options}" if options else "")
    return [fmt(p.get("alpha")), fmt(p.get("beta")), fmt(p.get("tap_layer")), prior]


def memorization_columns(trials: list[TrialRecord], exclude: tuple[str, ...] = ()) -> list[str]:
    """Memorization results present on any of the trials, `exclude` (the objectives' columns) left out: the
    reported memorization/... metrics the tables show, then trials.csv columns a later analysis added."""
    reported = [k for k in MEMORIZATION_SHOWN if k not in exclude and any(k in t.metrics for t in trials)]
    added = sorted({k for t in trials for k in t.extra if MEMORIZATION_MARK in k.lower()} - set(exclude))
    return reported + added


def memorization_cell(trial: TrialRecord, column: str) -> str:
    """A memorization column's value for the trial, as a cell."""
    return fmt(trial.metrics.get(column, trial.extra.get(column)))


def front_trials(facts: Facts) -> list[TrialRecord]:
    """The front, then the baseline and paper trials when they are not on it."""
    return list(facts.front) + [
        t for t in (facts.baseline, facts.paper) if t is not None and not any(t is f for f in facts.front)
    ]


def reproduce_text(trial: TrialRecord, reproductions: dict[str, Reproduction]) -> str:
    """The command that trains the trial again, with what differs from the search's run, if anything."""
    rep = reproductions.get(trial.label)
    if rep is None:
        return "no checkpointed config (the trial wrote no checkpoint)"
    return rep.command + (f"  ({rep.note})" if rep.note else "")


def front_table(facts: Facts, reproductions: dict[str, Reproduction], *, commands: bool = True
                ) -> tuple[list[str], list[list[str]]]:
    """Front trials (then baseline and paper when not on it): parameters, val and test values, gain over the
    baseline, memorization columns and (with commands) the command that reproduces each."""
    objectives = facts.run.objectives
    rows_trials = front_trials(facts)
    base = facts.baseline
    memo = memorization_columns(rows_trials, exclude=tuple(o["metric"] for o in objectives))
    headers = ["trial", "role", "standing", "alpha", "beta", "tap layer", "prior"]
    for o in objectives:
        tested = test_metric(o["metric"]) != o["metric"]  # memorization objectives have no test counterpart
        headers += [o["metric"], *([test_metric(o["metric"])] if tested else []), f"Δ{o['metric']} vs baseline"]
    headers += memo + (["reproduce"] if commands else [])
    rows = []
    for t in rows_trials:
        row = [t.label, t.role, _standing(facts, t), *param_cells(t)]
        for o in objectives:
            m = o["metric"]
            delta = None
            if base is not None and m in t.metrics and m in base.metrics:
                delta = t.metrics[m] - base.metrics[m]
            tested = [fmt(t.metrics.get(test_metric(m)))] if test_metric(m) != m else []
            row += [fmt(t.metrics.get(m)), *tested, "–" if delta is None else f"{delta:+.4g}"]
        row += [memorization_cell(t, k) for k in memo]
        if commands:
            row.append(reproduce_text(t, reproductions))
        rows.append(row)
    return headers, rows


def trials_table(facts: Facts) -> tuple[list[str], list[list[str]]]:
    """Every trial: state, rung, steps, parameters, objective values, memorization columns, error."""
    objectives = [o["metric"] for o in facts.run.objectives]
    memo = memorization_columns(facts.run.trials, exclude=tuple(objectives))
    headers = ["trial", "tune id", "role", "state", "last rung", "steps", "alpha", "beta", "tap layer", "prior",
               *objectives, *memo, "error"]
    rows = []
    for t in facts.run.trials:
        rows.append([t.label, str(t.trial_id or "–"), t.role, t.state, fmt(t.last_rung), str(t.steps), *param_cells(t),
                     *[fmt(t.metrics.get(m)) for m in objectives], *[memorization_cell(t, k) for k in memo],
                     t.error or ""])
    return headers, rows
