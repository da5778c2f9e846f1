"""PNG figures of a memorization analysis, drawn with plotly and rendered by kaleido (headless Chromium).

scores.png: the distribution of Min-K% scores under each model and, when fine-tuned models are
compared with their base, each example's base score against its fine-tuned score (points above the
diagonal became more memorized), one colour per model, one marker shape per memorization group.
geometry.png: the group-geometry numbers side by side for each model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

GEOMETRY_PANELS = (
    ("centroid_l2_distance", "centroid L2 distance"),
    ("relative_centroid_distance", "distance / mean norm"),
    ("angular_disparity_deg", "angular disparity (°)"),
    ("angular_gap_deg", "angular gap (°)"),
)
"""(geometry key, panel title) of each panel of geometry.png."""
GROUP_SYMBOLS = {"most": "triangle-up", "least": "triangle-down", None: "circle"}
MODEL_COLOURS = ("#7f7f7f", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
HISTOGRAM_BINS = 30
WIDTH, HEIGHT = 1200, 480


class PlotError(RuntimeError):
    """The figures could not be rendered (kaleido or its Chromium is missing or failed)."""


def scores_figure(rows: Sequence[dict[str, Any]], labels: Sequence[str], summary: dict[str, Any]) -> Any:
    """Histogram of Min-K% per model (+ base vs fine-tuned scatter when fine-tuned models are compared)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    scored = [r for r in rows if not r["dropped"]]
    reference, tuned = labels[0], list(labels[1:])
    titles = ["Min-K% Prob distribution"]
    if tuned:
        titles.append(f"per example: {reference} vs fine-tuned (▲ most, ▼ least memorized, ● middle)")
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    values = [r[f"min_k_{label}"] for r in scored for label in labels]
    low, high = min(values), max(values)
    # Shared bins, so the models' histograms line up bar for bar.
    bins = dict(start=low, end=high + 1e-9, size=max((high - low) / HISTOGRAM_BINS, 1e-9))
    for i, label in enumerate(labels):
        fig.add_trace(
            go.Histogram(
                x=[r[f"min_k_{label}"] for r in scored], name=label, opacity=0.55, marker_color=_colour(i), xbins=bins
            ),
            row=1,
            col=1,
        )
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text=f"Min-K% Prob (K={summary['k']:g}; higher = more memorized)", row=1, col=1)
    fig.update_yaxes(title_text="examples", row=1, col=1)
    for i, label in enumerate(tuned, start=1):
        fig.add_trace(
            go.Scatter(
                x=[r[f"min_k_{reference}"] for r in scored],
                y=[r[f"min_k_{label}"] for r in scored],
                mode="markers",
                marker=dict(color=_colour(i), size=7, opacity=0.8, symbol=[GROUP_SYMBOLS[r["group"]] for r in scored]),
                name=f"{label} vs {reference}",
            ),
            row=1,
            col=2,
        )
    if tuned:
        fig.add_trace(
            go.Scatter(x=[low, high], y=[low, high], mode="lines", line=dict(color="black", dash="dot"), name="no change"),
            row=1,
            col=2,
        )
        fig.update_xaxes(title_text=f"Min-K% under {reference}", row=1, col=2)
        fig.update_yaxes(title_text="Min-K% under the fine-tuned model", row=1, col=2)
    fig.update_layout(title_text=_title(summary), width=WIDTH, height=HEIGHT, template="plotly_white")
    return fig


def geometry_figure(summary: dict[str, Any]) -> Any:
    """One bar panel per geometry number, one bar per model."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    labels = list(summary["models"])
    fig = make_subplots(rows=1, cols=len(GEOMETRY_PANELS), subplot_titles=[t for _, t in GEOMETRY_PANELS])
    for col, (key, _) in enumerate(GEOMETRY_PANELS, start=1):
        values = [summary["models"][label]["geometry"][key] for label in labels]
        fig.add_trace(
            go.Bar(
                x=labels,
                y=values,
                marker_color=[_colour(i) for i in range(len(labels))],
                text=[f"{v:.4g}" for v in values],
                textposition="outside",
                showlegend=False,
            ),
            row=1,
            col=col,
        )
    fig.update_layout(
        title_text=f"most vs least memorized ({summary['group_size']} examples each), {_title(summary)}",
        width=WIDTH,
        height=HEIGHT,
        template="plotly_white",
    )
    return fig


def write_plots(rows: Sequence[dict[str, Any]], summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write scores.png and geometry.png into out_dir; PlotError when they cannot be rendered."""
    import plotly.io as pio

    labels = list(summary["models"])
    paths = [out_dir / "scores.png", out_dir / "geometry.png"]
    figures = [scores_figure(rows, labels, summary), geometry_figure(summary)]
    try:
        # One call renders both figures in one headless browser session (starting Chromium costs seconds).
        pio.write_images(figures, paths, format="png", width=WIDTH, height=HEIGHT)
    except Exception as e:  # kaleido reports a missing or broken Chromium with assorted exception types
        raise PlotError(f"could not render PNG plots with kaleido: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    return paths


def _colour(model_position: int) -> str:
    return MODEL_COLOURS[model_position % len(MODEL_COLOURS)]


def _title(summary: dict[str, Any]) -> str:
    return f"tap hidden_states[{summary['tap_index']}] of {summary['num_layers']} layers, {summary['n_scored']} examples"
