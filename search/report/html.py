"""report/index.html: one self-contained page (plotly.js inlined once), readable offline from a file:// URL."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

from search.report import figures
from search.report.analysis import Facts, is_named_preset
from search.report.findings import (
    front_table,
    front_trials,
    glance,
    no_completed_banner,
    reproduce_text,
    status_line,
    trials_table,
    uncertainty_note,
    uncertainty_table,
)
from search.report.reproduce import Reproduction

PLOT_IDS = ("pareto", "generalisation", "memorization", "hypervolume", "importance", "parallel", "losses", "rungs")
"""div ids of the figures, in page order (memorization only when the space measures it or a trial has it)."""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1360px;
       padding: 0 24px 48px; color: #222; }
h1 { margin: 24px 0 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.status { color: #555; margin: 0 0 16px; }
.banner { background: #fff3cd; border: 1px solid #e0c060; padding: 12px 16px; border-radius: 6px; }
.glance { display: grid; grid-template-columns: 16em 1fr; gap: 6px 12px; margin: 0; }
.glance dt { font-weight: 600; } .glance dd { margin: 0; }
.note { color: #666; font-style: italic; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } tr.baseline td { background: #f3f3f3; } tr.paper td { background: #fdeeee; }
tr.preset td { background: #eef6ee; }
code { font-size: 12px; background: #f6f6f6; padding: 1px 4px; }
.commands { padding-left: 1.2em; } .commands li { margin: 4px 0; } .commands code { word-break: break-all; }
.plot { margin: 8px 0 20px; }
"""


def render_page(facts: Facts, reproductions: dict[str, Reproduction]) -> str:
    """The whole page as one HTML string."""
    import plotly.io as pio

    run = facts.run
    built = {
        "pareto": figures.pareto_figure(facts),
        "generalisation": figures.generalisation_figure(facts),
        "memorization": figures.memorization_figure(facts),
        "hypervolume": figures.hypervolume_figure(facts),
        "importance": figures.importance_figure(facts),
        "parallel": figures.parallel_figure(facts),
        "losses": figures.loss_curves_figure(facts),
        "rungs": figures.rung_metrics_figure(facts),
    }
    first = [True]

    def plot(div_id: str, missing: str) -> str:
        fig = built[div_id]
        if fig is None:
            return f'<p class="note">{html.escape(missing)}</p>'
        # plotly.js goes into the page once, with the first figure; the others reuse it.
        snippet = pio.to_html(
            fig, full_html=False, include_plotlyjs=first[0], div_id=div_id, default_height=f"{fig.layout.height or 450}px",
            config={"displaylogo": False, "responsive": True},
        )
        first[0] = False
        return f'<div class="plot">{snippet}</div>'

    banner = no_completed_banner(facts)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ibft report: {html.escape(run.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>IB-FT search <code>{html.escape(run.name)}</code></h1>",
        f'<p class="status">{html.escape(status_line(facts))}</p>',
        f'<div class="banner" id="no-completed">{html.escape(banner)}</div>' if banner else "",
        "<h2>At a glance</h2>",
        '<dl class="glance">'
        + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in glance(facts))
        + "</dl>",
        "<h2>Pareto front</h2>",
        plot("pareto", ""),
        "<h2>Front configurations and how to reproduce them</h2>",
        '<p class="note">Each command retrains the trial with its exact checkpointed TrainConfig (only output_dir '
        "differs).</p>",
        _table(*front_table(facts, reproductions, commands=False), row_class=_role_classes(facts)),
        _commands(facts, reproductions),
        *(_uncertainty(facts) if facts.front else []),
        "<h2>Validation vs test</h2>",
        plot("generalisation", "No front trial has test scores: the space scores no test split, or no trial has "
                               "completed."),
        *(
            ["<h2>Memorization</h2>",
             plot("memorization", "No finished trial has a memorization gap and a validation value yet.")]
            if run.measures_memorization or built["memorization"] is not None
            else []
        ),
        "<h2>Search progress and early stopping</h2>",
        plot("hypervolume", "No trial has reported a rung yet."),
        "<h2>Parameters</h2>",
        plot("importance", f"Parameter importances unavailable: {facts.importance_note or 'no data'}."),
        _note(facts.importance_note if facts.importances else None),
        plot("parallel", "Fewer than two trials have validation values to compare."),
        "<h2>Learning curves</h2>",
        plot("losses", "No training metrics reported yet."),
        plot("rungs", "No validation rung reported yet."),
        "<h2>All trials</h2>",
        _table(*trials_table(facts), row_class=None),
        "<h2>Notes on the data</h2>" if run.notes else "",
        ("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in run.notes) + "</ul>") if run.notes else "",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _note(text: Optional[str]) -> str:
    return f'<p class="note">{html.escape(text)}</p>' if text else ""


def _role_classes(facts: Facts) -> list[str]:
    return [t.role if t.role in ("baseline", "paper") else "preset" if is_named_preset(t) else ""
            for t in front_trials(facts)]


def _uncertainty(facts: Facts) -> list[str]:
    """The front's pass rates with bootstrap intervals over tasks and paired differences from the baseline."""
    headers, rows = uncertainty_table(facts)
    classes = [row[1] if row[1] in ("baseline", "paper") else "" for row in rows]
    return [
        '<h2 id="uncertainty">Pass rates with 95% intervals</h2>',
        f'<p class="note">{html.escape(uncertainty_note(facts))}</p>',
        _table(headers, rows, row_class=classes),
    ]


def _commands(facts: Facts, reproductions: dict[str, Reproduction]) -> str:
    """One copy-paste line per table row: the exact `ibft train` run of that trial."""
    items = []
    for trial in front_trials(facts):
        text = reproduce_text(trial, reproductions)
        shown = f"<code>{html.escape(text)}</code>" if text.startswith("ibft ") else html.escape(text)
        items.append(f"<li><b>{html.escape(trial.label)}</b> {shown}</li>")
    return f'<ul class="commands" id="reproduce">{"".join(items)}</ul>' if items else ""


def _table(headers: list[str], rows: list[list[str]], *, row_class: Optional[list[str]] = None) -> str:
    if not rows:
        return '<p class="note">None.</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in row)
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def write_page(facts: Facts, reproductions: dict[str, Reproduction], path: Path) -> None:
    """Write the page atomically (a browser open on it never sees half a file)."""
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_page(facts, reproductions), encoding="utf-8")
    tmp.replace(path)
