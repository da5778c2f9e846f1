"""The report's statements in words and its tables as text cells, shared by the page and summary.md."""
from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Optional

from search.report.analysis import MEMORIZATION_GAP, Facts, memorization_gap, test_metric
from search.report.load import COMPLETE, ERROR, PRUNED, UNFINISHED, TrialRecord
from search.report.reproduce import Reproduction
from search.report.uncertainty import (
    LEVEL,
    RESAMPLES,
    SEED,
    Estimate,
    Interval,
    difference_estimate,
    metric_estimate,
    parse_pass_metric,
)

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
    for trial in facts.presets:  # the space's own presets, by name
        out.append((f"Preset {trial.role}", f"{trial.label}, {_standing(facts, trial)}: {_values(trial, metrics)}."))
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
    parts, intervals = [], 0
    for o in facts.run.objectives:
        m = o["metric"]
        best = _best(facts.front, m, o["mode"])
        if best is None:
            continue
        delta = best.metrics[m] - base.metrics.get(m, math.nan)
        gain = baseline_difference(best, base, m)
        if gain.interval is None:
            delta_text = f"({delta:+.4g}; no interval: {gain.missing or 'no per-task data'})"
        else:
            delta_text = f"({signed(delta)} {interval_text(gain.interval)}, {_verdict(gain.interval, o['mode'])})"
            intervals += 1
        parts.append(f"{m}: best {fmt(best.metrics[m])} ({best.label}) vs baseline {fmt(base.metrics.get(m))} "
                     f"{delta_text}")
    if not parts:
        return "no front values."
    method = f" ({LEVEL:.0%} intervals: paired bootstrap over tasks)" if intervals else ""
    return "; ".join(parts) + method + "."


def _verdict(interval: Interval, mode: str) -> str:
    if not interval.excludes_zero:
        return "interval includes 0: not a significant gain"
    better = interval.low > 0 if mode == "max" else interval.high < 0
    return "interval excludes 0: " + ("a significant gain" if better else "significantly worse than the baseline")


def signed(value: float) -> str:
    """A difference of pass rates: sign, three decimals, a true minus sign."""
    return f"{value:+.3f}".replace("-", "−")


def interval_text(interval: Interval, *, sign: bool = True) -> str:
    """"[−0.050, +0.250]" (sign=False: "[0.200, 0.400]")."""
    show = signed if sign else (lambda v: f"{v:.3f}")
    return f"[{show(interval.low)}, {show(interval.high)}]"


def trial_estimate(trial: TrialRecord, metric: str) -> Estimate:
    """The trial's reported pass rate with its bootstrap interval over the split's tasks (or why none)."""
    split = (parse_pass_metric(metric) or (None,))[0]
    return metric_estimate(trial.task_counts.get(split or ""), metric, trial.metrics.get(metric))


def baseline_difference(trial: TrialRecord, base: TrialRecord, metric: str) -> Estimate:
    """trial − baseline on the metric, with the paired bootstrap interval over the tasks (or why none)."""
    split = (parse_pass_metric(metric) or (None,))[0] or ""
    return difference_estimate(trial.task_counts.get(split), trial.metrics.get(metric), base.task_counts.get(split),
                               base.metrics.get(metric), metric)


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
    for trial, name in ((base, "baseline"), (facts.paper, "paper"), *((t, t.role) for t in facts.presets)):
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


PARAM_HEADERS = ["alpha", "beta", "tap layer", "prior", "KL / encoder input"]
"""Headers of param_cells."""


def param_cells(trial: TrialRecord) -> list[str]:
    """alpha, beta, tap layer, prior (with options), KL reduction / encoder input (e.g. "mean / raw") as cells."""
    p = trial.params
    options = p.get("prior_options") or {}
    prior = str(p.get("prior", "–")) + (f" {options}" if options else "")
    semantics = f"{p.get('kl_reduction') or '–'} / {p.get('encoder_input') or '–'}"
    return [fmt(p.get("alpha")), fmt(p.get("beta")), fmt(p.get("tap_layer")), prior, semantics]


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
    """The front, then the baseline, paper and the space's preset trials when they are not on it."""
    return list(facts.front) + [t for t in facts.marked if not any(t is f for f in facts.front)]


def reproduce_text(trial: TrialRecord, reproductions: dict[str, Reproduction]) -> str:
    """The command that trains the trial again, with what differs from the search's run, if anything."""
    rep = reproductions.get(trial.label)
    if rep is None:
        return "no checkpointed config (the trial wrote no checkpoint)"
    return rep.command + (f"  ({rep.note})" if rep.note else "")


def front_table(facts: Facts, reproductions: dict[str, Reproduction], *, commands: bool = True
                ) -> tuple[list[str], list[list[str]]]:
    """Front trials (then baseline, paper and presets when not on it): parameters, val and test values, gain over the
    baseline, memorization columns and (with commands) the command that reproduces each."""
    objectives = facts.run.objectives
    rows_trials = front_trials(facts)
    base = facts.baseline
    memo = memorization_columns(rows_trials, exclude=tuple(o["metric"] for o in objectives))
    headers = ["trial", "role", "standing", *PARAM_HEADERS]
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
    headers = ["trial", "tune id", "role", "state", "last rung", "steps", *PARAM_HEADERS,
               *objectives, *memo, "error"]
    rows = []
    for t in facts.run.trials:
        rows.append([t.label, str(t.trial_id or "–"), t.role, t.state, fmt(t.last_rung), str(t.steps), *param_cells(t),
                     *[fmt(t.metrics.get(m)) for m in objectives], *[memorization_cell(t, k) for k in memo],
                     t.error or ""])
    return headers, rows


UNCERTAINTY_HEADERS = ["trial", "role", "metric", "value", f"{LEVEL:.0%} CI", "Δ vs baseline",
                       f"{LEVEL:.0%} CI of Δ (paired)", "Δ excludes 0"]


def pass_metrics(trials: list[TrialRecord]) -> list[str]:
    """Every val/ and test/ pass@k and pass@k(m) the trials report: validation first, then by k and m."""
    found = {m: parse_pass_metric(m) for t in trials for m in t.metrics}
    named = {m: p for m, p in found.items() if p is not None and p[0] in ("val", "test")}
    return sorted(named, key=lambda m: (named[m][0] != "val", named[m][0], named[m][1], named[m][2]))


def uncertainty_table(facts: Facts) -> tuple[list[str], list[list[str]]]:
    """Front trials (then baseline, paper and presets when not on it), one row per reported pass rate: the
    value with its bootstrap interval over tasks, and the difference from the baseline with its paired
    interval and whether that interval excludes 0. Trials without per-task counts get the value and why not."""
    trials = front_trials(facts)
    base = facts.baseline
    rows = []
    for trial in trials:
        for metric in pass_metrics([trial]):
            own = trial_estimate(trial, metric)
            ci = interval_text(own.interval, sign=False) if own.interval else (own.missing or "–")
            if base is None:
                delta = ["–", "no baseline trial", "–"]
            elif trial is base:
                delta = ["–", "(the baseline)", "–"]
            else:
                diff = baseline_difference(trial, base, metric)
                if diff.value is None:
                    delta = ["–", diff.missing or "–", "–"]
                elif diff.interval is None:
                    delta = [signed(diff.value), diff.missing or "–", "–"]
                else:
                    delta = [signed(diff.value), interval_text(diff.interval),
                             "yes" if diff.interval.excludes_zero else "no"]
            rows.append([trial.label, trial.role, metric, f"{own.value:.3f}", ci, *delta])
    return list(UNCERTAINTY_HEADERS), rows


def uncertainty_note(facts: Facts) -> str:
    """How the intervals were computed, and what is missing when trials recorded no per-task counts."""
    trials = front_trials(facts)
    tasks = sorted({len(counts) for t in trials for counts in t.task_counts.values()})
    text = (
        f"Each pass rate is a mean over tasks of the unbiased pass@k(m) of that task's samples. {LEVEL:.0%} "
        f"percentile intervals from {RESAMPLES} bootstrap resamples of the tasks (seed {SEED}); Δ vs baseline "
        "resamples the same tasks for both trials (paired): an interval that includes 0 means the gain could be "
        "down to which tasks happened to be drawn."
    )
    if tasks:
        text += f" Tasks per split: {', '.join(map(str, tasks))} (one task moves a rate by up to 1/tasks)."
    missing = [t.label for t in trials if not t.task_counts]
    if missing:
        text += (f" No per-task data for {', '.join(missing)} (task_counts.json missing from the checkpoint: a run "
                 "made before trials recorded it): values only.")
    return text
