"""A search's tables: trials.csv (one row per trial) and pareto.json (the non-dominated finished trials).

Rows are built from plain per-trial records (what Tune reported plus how the trial ended), so this module
needs no Ray and `ibft report` can read the files without starting anything.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional

from search.optuna_bridge import COMPLETE, FAIL, OPTUNA_NUMBER_KEY, PRUNED, ROLE_KEY, RUNG_KEY, trial_outcome
from search.pareto import non_dominated
from search.space import TRIAL_PARAMS
from trainables.ib.config import LEGACY_SEMANTICS
from search.table_cells import read_table

TRIALS_CSV = "trials.csv"
PARETO_JSON = "pareto.json"
PARAM_COLUMNS = (*TRIAL_PARAMS, "prior_options")
"""alpha, beta, tap_layer, prior, kl_reduction, encoder_input, prior_options."""
STATES = {COMPLETE: "COMPLETE", PRUNED: "PRUNED", FAIL: "ERROR"}
UNFINISHED = "UNFINISHED"
"""State of a trial an interrupted search left running or pending (a resume continues it)."""
METRIC_PREFIXES = ("val/", "test/", "memorization/")
"""Reported results that become trials.csv columns and pareto.json metrics (memorization/...: the
memorization analysis of a finished trial, when the space enables it)."""


def trial_row(record: dict[str, Any], *, num_rungs: int, objectives: list[str]) -> dict[str, Any]:
    """One trials.csv row from a record {trial_id, config, last_result, finished, errored, error}."""
    config = record.get("config") or {}
    result = record.get("last_result") or {}
    if record.get("finished") or record.get("errored"):
        state = STATES[trial_outcome(result, bool(record.get("errored")), num_rungs, objectives)]
    else:
        state = UNFINISHED
    row: dict[str, Any] = {
        "trial_id": record["trial_id"],
        "optuna_trial": config.get(OPTUNA_NUMBER_KEY),
        "role": config.get(ROLE_KEY),
    }
    for name in PARAM_COLUMNS:
        value = config.get(name)
        if value is None and name in LEGACY_SEMANTICS and "alpha" in config:
            value = LEGACY_SEMANTICS[name]  # proposed before the key existed: it trained with the legacy semantics
        row[name] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
    row["state"] = state
    row["last_rung"] = result.get(RUNG_KEY)
    for key in sorted(k for k in result if k.startswith(METRIC_PREFIXES)):
        row[key] = result[key]
    row["wall_time_s"] = result.get("time_total_s")
    row["checkpoint_path"] = result.get("checkpoint_path")
    row["error"] = _one_line(record.get("error"))
    return row


def _one_line(error: Any) -> Optional[str]:
    if not error:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # Ray wraps the worker's exception; its last line is the reason a person can act on.
    return lines[-1][:500] if lines else None


def write_trials_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write rows with the union of their columns (fixed columns first, then test/ and val/ metrics in sorted
    order, then memorization/ ones)."""
    fixed = ["trial_id", "optuna_trial", "role", *PARAM_COLUMNS, "state", "last_rung"]
    metrics = sorted(
        {k for r in rows for k in r if k.startswith(METRIC_PREFIXES)}, key=lambda k: (k.startswith("memorization/"), k)
    )
    columns = fixed + metrics + ["wall_time_s", "checkpoint_path", "error"]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (r["optuna_trial"] is None, r["optuna_trial"] or 0, r["trial_id"])):
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    tmp.replace(path)


def read_trials_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a trials.csv with numbers parsed back (empty cells become None)."""
    return read_table(path)


def pareto_front(rows: Iterable[dict[str, Any]], objectives: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The COMPLETE rows no other COMPLETE row dominates on the objectives ({metric, mode} each).

    Stopped trials are left out: their values are low-fidelity and not comparable with finished ones.
    """
    complete = [r for r in rows if r.get("state") == "COMPLETE"]
    metrics = [o["metric"] for o in objectives]
    modes = [o["mode"] for o in objectives]
    points = [[_number(r.get(m)) for m in metrics] for r in complete]
    return [complete[i] for i in non_dominated(points, modes)]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def write_pareto_json(rows: list[dict[str, Any]], objectives: list[dict[str, str]], path: Path) -> list[dict]:
    """Write pareto.json ({objectives, trials: [{trial_id, optuna_trial, role, params, metrics, ...}]})."""
    front = []
    for row in pareto_front(rows, objectives):
        front.append(
            {
                "trial_id": row["trial_id"],
                "optuna_trial": row.get("optuna_trial"),
                "role": row.get("role"),
                "params": {name: _params_value(name, row.get(name)) for name in PARAM_COLUMNS},
                "metrics": {k: v for k, v in row.items() if k.startswith(METRIC_PREFIXES) and v is not None},
                "last_rung": row.get("last_rung"),
                "checkpoint_path": row.get("checkpoint_path"),
            }
        )
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"objectives": objectives, "trials": front}, indent=2) + "\n")
    tmp.replace(path)
    return front


def _params_value(name: str, value: Any) -> Any:
    if name == "prior_options" and isinstance(value, str):
        return json.loads(value)
    return value
