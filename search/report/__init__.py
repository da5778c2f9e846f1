"""`ibft report`: the Pareto report of a search run directory (finished, running or crashed).

load.py reads the run (space copy, trials.csv, Ray's per-trial results, the Optuna study) into plain
records; analysis.py derives the front, hypervolume progress, early-stopping savings and importances;
uncertainty.py bootstraps intervals over tasks for the pass rates and paired differences from the baseline;
figures.py, html.py, png.py and summary.py render them; reproduce.py writes each front trial's exact
`ibft train` config. Nothing here imports torch or ray, so a report builds on a head node in seconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def write_report(run_dir: Path | str, out_dir: Optional[Path | str] = None, *, png: bool = True) -> dict[str, Any]:
    """Write index.html, summary.md, configs/ and (unless png=False) pareto.png; return what was written.

    out_dir defaults to RUN_DIR/report. A failing PNG renderer (no Chromium) does not lose the rest: the
    HTML and Markdown are written first and the PNG error is returned under "png_error".
    """
    from search.report.analysis import analyse
    from search.report.html import write_page
    from search.report.load import load_run
    from search.report.reproduce import write_reproductions
    from search.report.summary import write_summary

    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    facts = analyse(run)
    shown = [*facts.front, *facts.marked]
    reproductions = write_reproductions(run, shown, out)
    write_page(facts, reproductions, out / "index.html")
    write_summary(facts, reproductions, out / "summary.md")
    result: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "html": str(out / "index.html"),
        "summary": str(out / "summary.md"),
        "configs": {label: str(r.config_path) for label, r in reproductions.items()},
        "finished": run.finished,
        "states": facts.counts,
        "front": [t.label for t in facts.front],
        "hypervolume": facts.hypervolume,
        "notes": run.notes,
    }
    if png:
        from search.report.png import write_pareto_png

        try:
            write_pareto_png(facts, out / "pareto.png")
            result["png"] = str(out / "pareto.png")
        except Exception as e:  # kaleido raises its own types when Chromium is missing or crashes
            result["png_error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return result
