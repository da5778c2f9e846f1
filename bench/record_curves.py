"""Turn finished search runs into a small learning-curves file for the efficiency replay.

Reads each RUN_DIR with search.report.load (Ray's per-rung results, trials.csv, the study) and writes JSON:
the space names, the commands that produced the data, the date, the search settings the replay needs (rung
size, objectives, the asha section, max_concurrent) and, per trial, its run, role, params, state and per-rung
{rung, step, val metrics, train CE}. Meant for search runs without early stopping (spaces/smollm2-grid.yaml:
asha.enabled false), so every trial has a full curve; trials stopped early are written as they are.

Several RUN_DIRs are parts of one grid recorded separately (spaces/smollm2-grid.yaml and
smollm2-grid-learnable.yaml): every setting the replay reads must be equal across them, and a configuration
run in more than one of them (the preset trials every search starts with) must have reproduced its curve
exactly; both are checked, and the reruns are listed in the file ("reruns").

Usage: python bench/record_curves.py RUN_DIR [RUN_DIR ...] --out bench/data/smollm2_curves.json
       [--search-command "..." (one per RUN_DIR)]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FORMAT = "ibft-search learning curves v1"
RUNG_KEEP = ("train/ce_loss_rung", "train/ce_loss", "train/loss", "train/kl_loss", "train/ib_ce_loss")
"""Training metrics kept per rung besides every val/* metric (train/ce_loss_rung: ASHA's tie-break)."""


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _rung_entry(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"rung": int(row["rung"]), "step": int(row.get("step") or 0)}
    for key in sorted(row):
        if (key.startswith("val/") or key in RUNG_KEEP) and _finite(row[key]):
            out[key] = round(float(row[key]), 6)
    return out


def _params(params: dict[str, Any]) -> dict[str, Any]:
    out = {k: params.get(k) for k in ("alpha", "beta", "tap_layer", "prior")}
    if params.get("prior_options"):
        out["prior_options"] = params["prior_options"]
    return out


SHARED = ("model", "validation", "rung_steps", "max_steps", "num_rungs", "max_concurrent", "objectives", "asha")
"""Settings that must be equal in every part of a grid recorded in several runs."""


def record(run_dir: Path, search_command: str | None, record_command: str) -> dict[str, Any]:
    """The curves document of one RUN_DIR (search_command None: reconstructed from the run's space name)."""
    from search.report.load import load_run
    from search.space import load_space

    run = load_run(run_dir)
    space = load_space(run_dir / "space.yaml")
    search_command = search_command or (
        f"ibft tune spaces/{space.name}.yaml --storage-path {run_dir.parent} --name {run_dir.name}"
    )
    configs = []
    starts, ends = [], []
    for trial in run.trials:
        rungs = []
        seen: dict[int, dict[str, Any]] = {}
        for row in trial.rungs:
            if row.get("rung") is not None:
                seen[int(row["rung"])] = row  # a retried trial reports a rung again: the last report stands
        for rung in sorted(seen):
            rungs.append(_rung_entry(seen[rung]))
        if not rungs:
            continue
        last = seen[max(seen)]
        if _finite(last.get("timestamp")) and _finite(last.get("time_total_s")):
            ends.append(float(last["timestamp"]))
            starts.append(float(last["timestamp"]) - float(last["time_total_s"]))
        configs.append(
            {
                "trial": trial.number,
                "trial_id": trial.trial_id,
                "role": trial.role,
                "params": _params(trial.params),
                "state": trial.state,
                "wall_time_s": round(float(trial.wall_time_s), 1) if _finite(trial.wall_time_s) else None,
                "rungs": rungs,
            }
        )
    return {
        "format": FORMAT,
        "space": space.name,
        "commands": {"search": search_command, "record": record_command},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "search_started": dt.datetime.fromtimestamp(min(starts), dt.timezone.utc).isoformat(timespec="seconds")
        if starts
        else None,
        "search_wall_s": round(max(ends) - min(starts), 1) if starts else None,
        "model": space.model.name_or_path,
        "validation": {"benchmark": space.validation.benchmark, "tasks": space.validation.tasks, "n": space.validation.n},
        "rung_steps": space.training.rung_steps,
        "max_steps": space.training.max_steps,
        "num_rungs": space.num_rungs,
        "max_concurrent": space.max_concurrent,
        "sampler": space.sampler,
        "objectives": [o.model_dump() for o in space.objectives],
        "asha": space.asha.model_dump(),
        "configs": configs,
    }


def _is_outcome(key: str) -> bool:
    """A metric a rerun must reproduce: a pass rate or a loss, not a wall time (val/eval_seconds)."""
    return key.startswith(("val/", "train/")) and not key.endswith("seconds")


def _curve_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


LOSS_RTOL = 1e-5
"""Relative difference two runs' training losses may show and still be one result: the file keeps 6 decimals,
and a float sum's order differs between runs; pass rates must be equal."""


def _same(a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
    if key.startswith("val/"):
        return a[key] == b[key]
    return abs(a[key] - b[key]) <= LOSS_RTOL * max(1.0, abs(a[key]))


def reruns(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Configurations recorded more than once: whether each later recording reproduced the first (same
    rungs, equal pass rates, losses within LOSS_RTOL), and the largest difference of any metric."""
    first: dict[str, dict[str, Any]] = {}
    out = []
    for c in configs:
        key = _curve_key(c["params"])
        if key not in first:
            first[key] = c
            continue
        a, b = first[key]["rungs"], c["rungs"]
        shared = [(ra, rb, k) for ra, rb in zip(a, b) for k in ra.keys() & rb.keys() if _is_outcome(k)]
        out.append(
            {
                "params": c["params"],
                "recordings": [f"{x['run']} trial {x['trial']}" for x in (first[key], c)],
                "rungs": [len(a), len(b)],
                "reproduced": len(a) == len(b) and all(_same(ra, rb, k) for ra, rb, k in shared),
                "max_abs_diff": max((abs(ra[k] - rb[k]) for ra, rb, k in shared), default=0.0),
            }
        )
    return out


def merge(docs: list[dict[str, Any]], record_command: str) -> dict[str, Any]:
    """One curves document of several runs of parts of one grid. ValueError when a setting the replay reads
    differs between them."""
    head = docs[0]
    for doc in docs[1:]:
        for key in SHARED:
            if doc[key] != head[key]:
                raise ValueError(f"{key} differs between {head['space']} ({head[key]!r}) and {doc['space']} ({doc[key]!r})")
    configs = []
    for doc in docs:
        configs += [{"run": doc["space"], **c} for c in doc["configs"]]
    return {
        "format": FORMAT,
        "space": " + ".join(d["space"] for d in docs),
        "commands": {"search": [d["commands"]["search"] for d in docs], "record": record_command},
        "date": head["date"],
        "runs": [
            {k: d[k] for k in ("space", "sampler", "search_started", "search_wall_s")} | {"trials": len(d["configs"])}
            for d in docs
        ],
        **{k: head[k] for k in SHARED},
        "sampler": head["sampler"] if len({d["sampler"] for d in docs}) == 1 else "mixed",
        "reruns": reruns(configs),
        "configs": configs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="a finished search run directory (STORAGE_PATH/NAME)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--search-command",
        action="append",
        default=None,
        help="the `ibft tune` command that produced RUN_DIR, once per RUN_DIR in order (default: reconstructed "
        "from the directory)",
    )
    args = parser.parse_args(argv)
    commands = args.search_command or [None] * len(args.run_dirs)
    if len(commands) != len(args.run_dirs):
        parser.error(f"{len(commands)} --search-command for {len(args.run_dirs)} RUN_DIRs: give one per RUN_DIR or none")
    record_command = shlex.join(["python", "bench/record_curves.py", *(sys.argv[1:] if argv is None else argv)])
    docs = []
    for run_dir, command in zip(args.run_dirs, commands):
        try:
            docs.append(record(run_dir, command, record_command))
        except Exception as e:  # one line, like the CLI
            print(f"record_curves: {run_dir}: {e}", file=sys.stderr)
            return 2
    try:
        doc = merge(docs, record_command)
    except ValueError as e:
        print(f"record_curves: {e}", file=sys.stderr)
        return 2
    for r in doc["reruns"]:
        verdict = "reproduced" if r["reproduced"] else "DIFFERENT"
        verdict += f" (largest difference {r['max_abs_diff']:g})"
        print(f"rerun of {_curve_key(r['params'])}: {' and '.join(r['recordings'])}: {verdict}")
    if not all(r["reproduced"] for r in doc["reruns"]):
        print("record_curves: a configuration did not reproduce its curve; the replay uses the first recording", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    full = sum(1 for c in doc["configs"] if len(c["rungs"]) == doc["num_rungs"])
    print(f"wrote {args.out}: {len(doc['configs'])} trials ({full} with all {doc['num_rungs']} rungs) of {doc['space']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
