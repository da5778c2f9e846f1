"""report/summary.md: the report's statements and tables as Markdown (for a PR, a chat or a terminal)."""
from __future__ import annotations

from pathlib import Path

from search.report.analysis import Facts
from search.report.findings import (
    front_table,
    glance,
    no_completed_banner,
    status_line,
    trials_table,
    uncertainty_note,
    uncertainty_table,
)
from search.report.reproduce import Reproduction


def render_summary(facts: Facts, reproductions: dict[str, Reproduction]) -> str:
    """The Markdown text."""
    lines = [f"# IB-FT search `{facts.run.name}`", "", status_line(facts), ""]
    banner = no_completed_banner(facts)
    if banner:
        lines += [f"> **{banner}**", ""]
    lines += ["## At a glance", ""] + [f"- **{k}**: {v}" for k, v in glance(facts)] + [""]
    lines += ["## Front configurations", "", _markdown_table(*front_table(facts, reproductions), code_last=True), ""]
    if facts.front:
        lines += ["## Pass rates with 95% intervals (bootstrap over tasks)", "", uncertainty_note(facts), "",
                  _markdown_table(*uncertainty_table(facts)), ""]
    if facts.importances:
        lines += ["## Parameter importances (Optuna)", ""]
        for metric, scores in facts.importances.items():
            lines.append(f"- {metric}: " + ", ".join(f"{name} {value:.2f}" for name, value in scores.items()))
        lines.append("")
    elif facts.importance_note:
        lines += ["## Parameter importances (Optuna)", "", f"Unavailable: {facts.importance_note}.", ""]
    lines += ["## All trials", "", _markdown_table(*trials_table(facts)), ""]
    if facts.run.notes:
        lines += ["## Notes on the data", ""] + [f"- {n}" for n in facts.run.notes] + [""]
    lines += ["Plots: `index.html` (interactive, opens offline) and `pareto.png`.", ""]
    return "\n".join(lines)


def _markdown_table(headers: list[str], rows: list[list[str]], code_last: bool = False) -> str:
    if not rows:
        return "None."

    def cell(text: str, code: bool) -> str:
        text = text.replace("|", "\\|").replace("\n", " ")
        return f"`{text}`" if code and text.startswith("ibft ") else text

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        out.append("| " + " | ".join(cell(c, code_last and i == len(row) - 1) for i, c in enumerate(row)) + " |")
    return "\n".join(out)


def write_summary(facts: Facts, reproductions: dict[str, Reproduction], path: Path) -> None:
    """Write summary.md."""
    path.write_text(render_summary(facts, reproductions), encoding="utf-8")
