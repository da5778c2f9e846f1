"""report/pareto.png: the Pareto figure as a static image (kaleido renders it in Chromium, no display needed)."""
from __future__ import annotations

from pathlib import Path

from search.report import figures
from search.report.analysis import Facts

WIDTH, HEIGHT, SCALE = 1100, 700, 2
"""Pixel size of pareto.png (SCALE 2: sharp when pasted into slides)."""


def write_pareto_png(facts: Facts, path: Path) -> None:
    """Render the Pareto figure to PNG; kaleido errors (no Chromium found) surface as RuntimeError."""
    fig = figures.pareto_figure(facts)
    fig.update_layout(legend=dict(orientation="h", y=-0.2))
    tmp = path.with_suffix(".png.tmp")
    fig.write_image(str(tmp), format="png", width=WIDTH, height=HEIGHT, scale=SCALE)
    tmp.replace(path)
