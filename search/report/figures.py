"""The report's plotly figures, one function per question the report answers. Each returns a Figure, or None
when the run holds nothing to draw for it (the page then says why)."""
from __future__ import annotations

import math
from typing import Any, Optional

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from search.pareto import is_pass_rate
from search.report.analysis import MEMORIZATION_GAP, Facts, memorization_gap, objective_values, test_metric
from search.report.load import COMPLETE, PRUNED, TrialRecord

BASELINE_COLOR, PAPER_COLOR, FRONT_COLOR, OTHER_COLOR, STOPPED_COLOR = "#222222", "#d62728", "#1f77b4", "#6baed6", "#8c8c8c"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
LOSS_COMPONENTS = (("loss", "total loss"), ("ce_loss", "CE_ft"), ("kl_loss", "KL"), ("ib_ce_loss", "CE_ib"))
TEMPLATE = "plotly_white"
PRESET_COLORS = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
"""Marker colors of the space's own presets (squares), in trial order."""


def trial_color(trial: TrialRecord, index: int) -> str:
    """One color per trial across figures: black baseline, red paper, a palette for the rest."""
    if trial.role == "baseline":
        return BASELINE_COLOR
    if trial.role == "paper":
        return PAPER_COLOR
    return PALETTE[index % len(PALETTE)]


def trial_name(trial: TrialRecord) -> str:
    """Legend name: the trial label plus its role when it has a special one (baseline, paper, a preset's name)."""
    return f"{trial.label} {trial.role}" if trial.role != "search" else trial.label


def marks(facts: Facts) -> list[tuple[TrialRecord, str, str, str]]:
    """(trial, marker symbol, color, text position) of the preset trials that ran: the baseline (star, its label right
    above it: to its right it reads as the label of a front point close by), the
    paper trial (diamond), the space's own presets (squares)."""
    out = [(t, "star", BASELINE_COLOR, "top center") for t in [facts.baseline] if t is not None]
    out += [(t, "diamond", PAPER_COLOR, "bottom right") for t in [facts.paper] if t is not None]
    out += [(t, "square", PRESET_COLORS[i % len(PRESET_COLORS)], "middle right") for i, t in enumerate(facts.presets)]
    return out


def describe(trial: TrialRecord) -> str:
    """Hover text: the trial's parameters and state."""
    p = trial.params
    options = p.get("prior_options") or {}
    parts = [
        f"<b>{trial_name(trial)}</b> ({trial.state}{', rung ' + str(trial.last_rung) if trial.last_rung else ''})",
        f"alpha={_fmt(p.get('alpha'))} beta={_fmt(p.get('beta'))}",
        f"tap layer={p.get('tap_layer')} prior={p.get('prior')}" + (f" {options}" if options else ""),
        f"KL={p.get('kl_reduction')} encoder input={p.get('encoder_input')}",
    ]
    return "<br>".join(parts)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def pareto_figure(facts: Facts) -> go.Figure:
    """The front on the first two objectives (or the one objective against the trial number): completed trials,
    dominated ones faded, stopped ones at their last rung, baseline, paper and the space's presets marked."""
    objectives = facts.run.objectives
    metrics = [o["metric"] for o in objectives]
    two = len(metrics) >= 2

    def xy(trials: list[TrialRecord]) -> tuple[list, list]:
        if two:
            values = [objective_values(t, objectives)[:2] for t in trials]
            return [v[0] for v in values], [v[1] for v in values]
        return [t.number if t.number is not None else i for i, t in enumerate(trials)], [
            objective_values(t, objectives)[0] for t in trials
        ]

    fig = go.Figure()
    stopped = [t for t in facts.run.trials if t.state == PRUNED and _has_objectives(t, metrics)]
    groups = [
        ("dominated (completed)", facts.dominated, dict(color=FRONT_COLOR, size=10, opacity=0.3)),
        ("stopped by ASHA (value at its last rung)", stopped, dict(color=STOPPED_COLOR, size=10, symbol="x-thin-open",
                                                                   line=dict(width=2, color=STOPPED_COLOR))),
    ]
    for name, trials, marker in groups:
        if trials:
            x, y = xy(trials)
            fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name=name, marker=marker,
                                     text=[describe(t) for t in trials], hoverinfo="text+x+y"))
    if facts.front:
        front = sorted(facts.front, key=lambda t: xy([t])[0][0])
        x, y = xy(front)
        staircase = two and [o["mode"] for o in objectives[:2]] == ["max", "max"]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers" if staircase else "markers", name="Pareto front",
            line=dict(shape="vh", color=FRONT_COLOR, width=1.5, dash="dot"),
            marker=dict(color=FRONT_COLOR, size=12, line=dict(width=1, color="white")),
            text=[describe(t) for t in front], hoverinfo="text+x+y",
        ))
    for trial, symbol, color, position in marks(facts):
        if _has_objectives(trial, metrics):
            x, y = xy([trial])
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="markers+text", name=f"{trial.role} ({trial.label}, {trial.state.lower()})",
                marker=dict(symbol=symbol, size=18, color=color, line=dict(width=1, color="white")),
                text=[trial.role], textposition=position, hovertext=[describe(trial)], hoverinfo="text+x+y",
            ))
    title = "Pareto front of " + (" × ".join(metrics[:2]) if two else f"{metrics[0]} by trial")
    if len(metrics) > 2:
        title += f" (first two of {len(metrics)} objectives)"
    fig.update_layout(
        title=title, template=TEMPLATE, height=520, legend=dict(orientation="h", y=-0.18),
        xaxis_title=_axis_title(objectives[0]) if two else "Optuna trial",
        yaxis_title=_axis_title(objectives[1] if two else objectives[0]),
    )
    if not fig.data:
        _empty(fig, "no trial has reported validation values yet")
        return fig
    plotted = [t for t in [*facts.front, *facts.dominated, *stopped] if _has_objectives(t, metrics)]
    _mark_shared_points(fig, plotted, xy)
    for axis, index in (("xaxis", 0), ("yaxis", 1)):
        if two and is_pass_rate(metrics[index]):
            values = [v for t in plotted for v in [objective_values(t, objectives)[index]] if math.isfinite(v)]
            high = max([0.05, *values])
            fig.update_layout({axis: dict(range=[-0.03 * high, 1.08 * high])})
    return fig


def _mark_shared_points(fig: go.Figure, trials: list[TrialRecord], xy) -> None:
    """Name the trials that sit on the same point (common with few validation tasks), which markers hide."""
    groups: dict[tuple[float, float], list[str]] = {}
    for trial in trials:
        x, y = xy([trial])
        groups.setdefault((round(x[0], 9), round(y[0], 9)), []).append(trial.label)
    for (x, y), labels in groups.items():
        if len(labels) > 1:
            fig.add_annotation(x=x, y=y, text=f"{len(labels)} trials here: {', '.join(labels)}", showarrow=True,
                               arrowhead=0, ax=60, ay=-40, font=dict(size=11), bgcolor="rgba(255,255,255,0.8)")


def _has_objectives(trial: TrialRecord, metrics: list[str]) -> bool:
    return all(math.isfinite(trial.metrics.get(m, math.nan)) for m in metrics)


def _axis_title(objective: dict[str, str]) -> str:
    return f"{objective['metric']} ({'higher' if objective['mode'] == 'max' else 'lower'} is better)"


def _empty(fig: go.Figure, message: str) -> None:
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font=dict(size=16))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)


def generalisation_figure(facts: Facts) -> Optional[go.Figure]:
    """Validation against test values of the front trials, baseline, paper and the space's presets: do
    validation gains hold?"""
    objectives = facts.run.objectives
    shown = _unique([*facts.front, *facts.marked])
    pairs = [(o, test_metric(o["metric"])) for o in objectives if test_metric(o["metric"]) != o["metric"]]
    if not any(p[1] in t.metrics for p in pairs for t in shown):
        return None
    fig = make_subplots(rows=1, cols=len(pairs), subplot_titles=[o["metric"] + " → " + tm for o, tm in pairs])
    for col, (objective, test_name) in enumerate(pairs, start=1):
        lo, hi = math.inf, -math.inf
        for index, trial in enumerate(shown):
            val, test = trial.metrics.get(objective["metric"]), trial.metrics.get(test_name)
            if val is None or test is None:
                continue
            lo, hi = min(lo, val, test), max(hi, val, test)
            fig.add_trace(go.Scatter(
                x=[val], y=[test], mode="markers+text", text=[trial.label], textposition="top center",
                marker=dict(size=13, color=trial_color(trial, index),
                            symbol={"baseline": "star", "paper": "diamond", "search": "circle"}.get(trial.role, "square")),
                name=trial_name(trial), legendgroup=trial.label, showlegend=col == 1,
                hovertext=[describe(trial) + f"<br>val {val:.4f} → test {test:.4f} (gap {test - val:+.4f})"],
                hoverinfo="text",
            ), row=1, col=col)
        if lo <= hi:
            pad = max(0.02, 0.05 * (hi - lo))
            fig.add_trace(go.Scatter(x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines", name="test = val",
                                     line=dict(color="#999", dash="dash"), showlegend=col == 1, hoverinfo="skip"),
                          row=1, col=col)
        fig.update_xaxes(title_text="validation", row=1, col=col)
        fig.update_yaxes(title_text="test", row=1, col=col)
    fig.update_layout(title="Generalisation: validation vs test of the front (points below the diagonal lost on test)",
                      template=TEMPLATE, height=460)
    return fig


def memorization_figure(facts: Facts) -> Optional[go.Figure]:
    """Memorization gap against the validation proxy (ASHA's metric) of every trial that measured it: do the
    trials that represent most- and least-memorized examples more alike also solve more? Front, baseline and
    paper marked; a dashed line at the base model's gap when every trial measured it at the same depth."""
    run = facts.run
    proxy = run.asha_metric or run.objectives[0]["metric"]
    measured = [
        t for t in run.trials if memorization_gap(t) is not None and math.isfinite(t.metrics.get(proxy, math.nan))
    ]
    if not measured:
        return None
    mode = next((o["mode"] for o in run.objectives if o["metric"] == proxy), "max")

    def hover(trial: TrialRecord) -> str:
        lines = [describe(trial),
                 f"{MEMORIZATION_GAP} = {_fmt(memorization_gap(trial))}, {proxy} = {_fmt(trial.metrics[proxy])}"]
        base_gap, change = trial.metrics.get("memorization/gap_base"), trial.metrics.get("memorization/gap_change")
        if base_gap is not None:
            lines.append(f"base model's gap {_fmt(base_gap)} (change {change:+.4g})" if change is not None
                         else f"base model's gap {_fmt(base_gap)}")
        return "<br>".join(lines)

    def points(trials: list[TrialRecord]) -> dict[str, Any]:
        return dict(x=[memorization_gap(t) for t in trials], y=[t.metrics[proxy] for t in trials],
                    hovertext=[hover(t) for t in trials], hoverinfo="text")

    special = facts.marked
    on_front = [t for t in measured if any(t is f for f in facts.front) and not any(t is s for s in special)]
    others = [t for t in measured if not any(t is f for f in facts.front) and not any(t is s for s in special)]
    fig = go.Figure()
    for name, trials, marker in (
        ("other trials", others, dict(color=OTHER_COLOR, size=10, opacity=0.6)),
        ("Pareto front", on_front, dict(color=FRONT_COLOR, size=12, line=dict(width=1, color="white"))),
    ):
        if trials:
            fig.add_trace(go.Scatter(mode="markers+text", name=name, marker=marker, text=[t.label for t in trials],
                                     textposition="top center", **points(trials)))
    for trial, symbol, color, position in marks(facts):
        if any(trial is t for t in measured):
            fig.add_trace(go.Scatter(
                mode="markers+text", name=f"{trial.role} ({trial.label})", text=[trial.role],
                textposition=position,
                marker=dict(symbol=symbol, size=18, color=color, line=dict(width=1, color="white")), **points([trial]),
            ))
    base_gaps = {round(t.metrics["memorization/gap_base"], 6) for t in measured if "memorization/gap_base" in t.metrics}
    if len(base_gaps) == 1:
        fig.add_vline(x=next(iter(base_gaps)), line=dict(color=STOPPED_COLOR, dash="dash"),
                      annotation_text="base model's gap", annotation_position="top left")
    fig.update_layout(
        title="Memorization gap vs the validation proxy (left: most- and least-memorized examples represented "
              "more alike)",
        template=TEMPLATE, height=460, legend=dict(orientation="h", y=-0.2),
        xaxis_title=f"{MEMORIZATION_GAP} (degrees, lower is better)",
        yaxis_title=_axis_title({"metric": proxy, "mode": mode}),
    )
    return fig


def _unique(trials: list[Optional[TrialRecord]]) -> list[TrialRecord]:
    seen: set[int] = set()
    out = []
    for t in trials:
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def hypervolume_figure(facts: Facts) -> Optional[go.Figure]:
    """Hypervolume of the front as trial-steps were spent, with the budget had nothing been stopped."""
    if not facts.progress:
        return None
    points = facts.progress
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[0] + [p.steps for p in points], y=[0.0] + [p.hypervolume for p in points], mode="lines",
        line=dict(shape="hv", color=FRONT_COLOR), name="hypervolume", hoverinfo="x+y",
    ))
    done = [p for p in points if p.completed]
    fig.add_trace(go.Scatter(
        x=[p.steps for p in done], y=[p.hypervolume for p in done], mode="markers", name="a trial completed",
        marker=dict(size=9, color=FRONT_COLOR), text=[p.trial for p in done], hoverinfo="text+x+y",
    ))
    full = facts.savings.steps_without_stopping
    if full and full > points[-1].steps:
        fig.add_vline(x=full, line=dict(color=STOPPED_COLOR, dash="dash"),
                      annotation_text="steps had no trial been stopped", annotation_position="top left")
    reference = ", ".join(f"{v:g}" for v in facts.reference)
    fig.update_layout(title=f"Hypervolume vs trial-steps spent (reference point ({reference}))", template=TEMPLATE,
                      height=420, xaxis_title="optimizer steps spent by all trials", yaxis_title="hypervolume")
    return fig


def importance_figure(facts: Facts) -> Optional[go.Figure]:
    """Optuna's parameter importances, one bar group per objective."""
    if not facts.importances:
        return None
    fig = go.Figure()
    for metric, scores in facts.importances.items():
        names = list(scores)[::-1]
        fig.add_trace(go.Bar(x=[scores[n] for n in names], y=names, orientation="h", name=metric))
    fig.update_layout(title="Parameter importances (Optuna, completed searched trials)", template=TEMPLATE,
                      height=360, barmode="group", xaxis_title="importance (sums to 1 per objective)")
    return fig


def parallel_figure(facts: Facts) -> Optional[go.Figure]:
    """Parallel coordinates of alpha, beta, tap layer and prior, coloured by the first objective.

    alpha and beta are drawn on log10 axes (alpha = 0, the baseline, gets its own tick below the range);
    tap layer and prior are categorical (1, -1 and 0.5 are different kinds of layer index, not numbers on
    one scale). Completed trials and stopped ones (at their last rung) are shown.
    """
    objectives = facts.run.objectives
    first = objectives[0]["metric"]
    trials = [t for t in facts.run.trials if t.state in (COMPLETE, PRUNED) and first in t.metrics and t.params]
    if len(trials) < 2:
        return None
    dimensions = [
        _log_dimension("alpha", [t.params.get("alpha") for t in trials]),
        _log_dimension("beta", [t.params.get("beta") for t in trials]),
        _categorical_dimension("tap layer", [t.params.get("tap_layer") for t in trials]),
        _categorical_dimension("prior", [_prior_label(t) for t in trials]),
        _categorical_dimension("state", [t.state for t in trials]),
    ]
    for objective in objectives:
        values = [t.metrics.get(objective["metric"], math.nan) for t in trials]
        dimensions.append(dict(label=objective["metric"], values=[v if math.isfinite(v) else 0.0 for v in values]))
    colors = [t.metrics[first] for t in trials]
    fig = go.Figure(go.Parcoords(
        dimensions=dimensions,
        line=dict(color=colors, colorscale="Viridis", showscale=True, colorbar=dict(title=first),
                  reversescale=objectives[0]["mode"] == "min"),
    ))
    fig.update_layout(title="Parameters of completed and stopped trials (drag along an axis to filter)",
                      template=TEMPLATE, height=460, margin=dict(l=80, r=80, t=90, b=40))
    return fig


def _prior_label(trial: TrialRecord) -> str:
    options = trial.params.get("prior_options") or {}
    suffix = ",".join(f"{k}={v}" for k, v in sorted(options.items())) if isinstance(options, dict) else str(options)
    return f"{trial.params.get('prior')}" + (f" ({suffix})" if suffix else "")


def _log_dimension(label: str, values: list[Any]) -> dict[str, Any]:
    positive = [float(v) for v in values if isinstance(v, (int, float)) and v > 0]
    if not positive:
        return _categorical_dimension(label, values)
    low, high = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
    zero_at = low - 1  # alpha = 0 (the baseline) has no logarithm: it sits one decade below the range
    mapped = [math.log10(v) if isinstance(v, (int, float)) and v > 0 else zero_at for v in values]
    ticks = list(range(low, high + 1))
    tickvals, ticktext = ticks, [f"{10 ** t:g}" for t in ticks]
    if any(m == zero_at for m in mapped):
        tickvals, ticktext = [zero_at] + tickvals, ["0"] + ticktext
    return dict(label=f"{label} (log)", values=mapped, tickvals=tickvals, ticktext=ticktext,
                range=[min(tickvals), max(tickvals)])


def _categorical_dimension(label: str, values: list[Any]) -> dict[str, Any]:
    names = sorted({str(v) for v in values})
    codes = {name: i for i, name in enumerate(names)}
    return dict(label=label, values=[codes[str(v)] for v in values], tickvals=list(range(len(names))),
                ticktext=names, range=[-0.5, len(names) - 0.5] if len(names) > 1 else [-1, 1])


def loss_curves_figure(facts: Facts) -> Optional[go.Figure]:
    """Training loss components per trial (every logged step when the trial's log is readable, else per rung);
    a cross marks where ASHA stopped a trial."""
    trials = [t for t in facts.run.trials if t.step_log or t.rungs]
    if not trials:
        return None
    fig = make_subplots(rows=2, cols=2, subplot_titles=[title for _, title in LOSS_COMPONENTS],
                        horizontal_spacing=0.08, vertical_spacing=0.14)
    for index, trial in enumerate(trials):
        color = trial_color(trial, index)
        for slot, (key, _) in enumerate(LOSS_COMPONENTS):
            steps, values = _series(trial, key)
            if not steps:
                continue
            row, col = slot // 2 + 1, slot % 2 + 1
            fig.add_trace(go.Scatter(
                x=steps, y=values, mode="lines", name=trial_name(trial), legendgroup=trial.label,
                showlegend=slot == 0, line=dict(color=color, width=2 if trial.role != "search" else 1.2),
                hovertext=describe(trial), hoverinfo="text+x+y",
            ), row=row, col=col)
            if trial.state == PRUNED:
                stop = max((i for i, s in enumerate(steps) if s <= trial.steps), default=len(steps) - 1)
                fig.add_trace(go.Scatter(
                    x=[steps[stop]], y=[values[stop]], mode="markers", legendgroup=trial.label, showlegend=False,
                    marker=dict(symbol="x", size=11, color=color), hovertext=f"{trial.label}: stopped by ASHA at "
                    f"rung {trial.last_rung} (step {trial.steps})", hoverinfo="text",
                ), row=row, col=col)
    for slot in range(len(LOSS_COMPONENTS)):
        fig.update_xaxes(title_text="step", row=slot // 2 + 1, col=slot % 2 + 1)
    fig.update_layout(title="Training loss components per trial (× = stopped by ASHA; click a legend entry to hide a trial)",
                      template=TEMPLATE, height=720)
    return fig


def _series(trial: TrialRecord, key: str) -> tuple[list[float], list[float]]:
    if trial.step_log:
        rows = [r for r in trial.step_log if key in r]
        return [r["step"] for r in rows], [r[key] for r in rows]
    rows = [r for r in trial.rungs if isinstance(r.get(f"train/{key}"), (int, float))]
    return [r.get("step") for r in rows], [r[f"train/{key}"] for r in rows]


def rung_metrics_figure(facts: Facts) -> Optional[go.Figure]:
    """Validation metrics at every rung per trial (the objectives, and ASHA's metric), stops marked."""
    run = facts.run
    metrics = list(dict.fromkeys([o["metric"] for o in run.objectives] + ([run.asha_metric] if run.asha_metric else [])))
    trials = [t for t in run.trials if any(m in r for r in t.rungs for m in metrics)]
    if not trials:
        return None
    ranked = [o["metric"] for o in run.objectives] if run.asha_promotion == "pareto" else [run.asha_metric]
    titles = [m + (" (ASHA ranks on this)" if m in ranked else "") for m in metrics]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=titles)
    for index, trial in enumerate(trials):
        color = trial_color(trial, index)
        for col, metric in enumerate(metrics, start=1):
            rows = [r for r in trial.rungs if isinstance(r.get(metric), (int, float))]
            if not rows:
                continue
            symbols = ["circle"] * len(rows)
            if trial.state == PRUNED:
                symbols[-1] = "x"
            fig.add_trace(go.Scatter(
                x=[r.get("rung") for r in rows], y=[r[metric] for r in rows], mode="lines+markers",
                name=trial_name(trial), legendgroup=trial.label, showlegend=col == 1,
                line=dict(color=color), marker=dict(symbol=symbols, size=9),
                hovertext=describe(trial), hoverinfo="text+x+y",
            ), row=1, col=col)
            fig.update_xaxes(title_text="rung", dtick=1, row=1, col=col)
    fig.update_layout(title="Validation metrics per rung (× = where ASHA stopped the trial)", template=TEMPLATE, height=440)
    return fig
