"""A small search run directory for the report tests, written the way a search writes it.

The Optuna study is a real SQLite study filled through Optuna's own ask/tell (COMPLETE, PRUNED and FAIL
trials, user attributes as the search's bridge sets them); trials.csv and pareto.json come from the
search's own writers (search.results); each trial's Ray results are result.json lines and params.json in
Tune's trial-directory layout, and its checkpoint holds a real TrainConfig's train_config.json. Values are
chosen so the front, the hypervolume and the savings can be worked out by hand (see the test files).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import optuna
import yaml

OBJECTIVES = [{"metric": "val/pass@1", "mode": "max"}, {"metric": "val/pass@10(10)", "mode": "max"}]
RUNG_STEPS, NUM_RUNGS = 10, 3
MAX_STEPS = RUNG_STEPS * NUM_RUNGS
SPACE = {
    "name": "fixture",
    "model": {"name_or_path": "tiny-random-llama", "tiny_overrides": {"num_hidden_layers": 4}},
    "data": {"source": "builtin:python-functions", "max_examples": 32, "max_length": 128},
    "validation": {"benchmark": "python-functions", "tasks": 4, "n": 10, "k": [1, 10], "m": [10]},
    "test": {"benchmark": "python-functions", "tasks": 4, "n": 10, "k": [1, 10], "m": [10]},
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "training": {"max_steps": MAX_STEPS, "rung_steps": RUNG_STEPS, "lr": 1.0e-3, "warmup_steps": 0, "batch_size": 2},
    "params": {
        "alpha": {"log_uniform": [0.01, 1.0]},
        "beta": {"log_uniform": [0.001, 0.1]},
        "tap_layer": {"choices": [1, 2, 3]},
        "prior": {"choices": ["standard_normal", "mog"]},
    },
    "ib": {"bottleneck_dim": 16},
    "num_samples": 8,
    "objectives": OBJECTIVES,
    "asha": {"metric": "val/pass@10(10)", "grace_period": 1, "reduction_factor": 2},
    "resources": {"workers": 1, "cpus_per_worker": 1},
    "deepspeed": {"enabled": False, "precision": "fp32"},
    "wandb": {"mode": "disabled"},
    "memorization": {"enabled": True, "max_examples": 32, "tap_layer": 2},
}

# number, role, params, outcome, final val (pass@1, pass@10(10)), test, rungs reached
TRIALS: list[dict[str, Any]] = [
    dict(role="baseline", params=dict(alpha=0.0, beta=0.0, tap_layer=2, prior="standard_normal"),
         outcome="COMPLETE", val=(0.30, 0.10), test=(0.28, 0.08), rungs=3),
    dict(role="paper", params=dict(alpha=0.1, beta=0.02, tap_layer=2, prior="standard_normal"),
         outcome="COMPLETE", val=(0.34, 0.12), test=(0.30, 0.13), rungs=3),
    dict(role="search", params=dict(alpha=0.05, beta=0.01, tap_layer=1, prior="mog"),
         outcome="COMPLETE", val=(0.38, 0.08), test=(0.33, 0.07), rungs=3),
    dict(role="search", params=dict(alpha=0.5, beta=0.005, tap_layer=3, prior="standard_normal"),
         outcome="COMPLETE", val=(0.25, 0.14), test=(0.27, 0.15), rungs=3),
    dict(role="search", params=dict(alpha=0.02, beta=0.05, tap_layer=1, prior="standard_normal"),
         outcome="COMPLETE", val=(0.28, 0.09), test=(0.26, 0.09), rungs=3),
    dict(role="search", params=dict(alpha=0.9, beta=0.09, tap_layer=3, prior="mog"),
         outcome="PRUNED", val=(0.10, 0.0), test=None, rungs=1),
    dict(role="search", params=dict(alpha=0.3, beta=0.002, tap_layer=2, prior="mog"),
         outcome="FAIL", val=None, test=None, rungs=0),
]
ERROR_LINE = "trainables.train.loop.NonFiniteLossError: loss became nan at step 4"
MEMORIZATION_GAPS = {0: 12.5, 1: 9.75, 2: 10.25}
"""memorization_gap per Optuna trial number, appended to trials.csv like a memorization analysis would."""
MEMORIZATION_BASE_GAP = 14.0
"""memorization/gap_base every completed trial reports (one measurement depth: memorization.tap_layer 2)."""
REPORTED_GAPS = {0: 12.0, 1: 8.5, 2: 10.0, 3: 9.0, 4: 13.0}
"""memorization/gap each completed trial reports at its last rung, as the space's memorization section asks."""
MEMORIZATION_OBJECTIVE = {"metric": "memorization/gap", "mode": "min"}
"""The third objective of write_run(memorization_objective=True)."""
T0 = 1_800_000_000
SECONDS_PER_STEP = 2.0
STARTUP_SECONDS = 30.0


def _train_config(params: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    from trainables.train.config import TrainConfig

    return TrainConfig.from_dict({
        "model": {"name_or_path": "tiny-random-llama", "tiny_overrides": {"num_hidden_layers": 4}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "ib": {**params, "prior_options": {"components": 2} if params["prior"] == "mog" else {}, "bottleneck_dim": 16},
        "data": {"source": "builtin:python-functions", "max_examples": 32, "max_length": 128},
        "optim": {"lr": 1.0e-3, "max_steps": MAX_STEPS, "batch_size": 2, "warmup_steps": 0},
        "seed": 0,
        "output_dir": str(output_dir),
    }).to_dict()


def _rung_result(trial_id: str, number: int, spec: dict, rung: int, start: float) -> dict[str, Any]:
    frac = rung / NUM_RUNGS
    val = spec["val"]
    step = rung * RUNG_STEPS
    alpha = spec["params"]["alpha"]
    result = {
        "rung": rung,
        "step": step,
        "train/loss": 2.0 - 0.5 * frac + alpha * 0.3,
        "train/ce_loss": 2.0 - 0.5 * frac,
        "train/kl_loss": 0.3 * (1 - frac) if alpha else 0.0,
        "train/ib_ce_loss": 2.2 - 0.4 * frac if alpha else 0.0,
        "train/ce_loss_rung": 2.0 - 0.5 * frac,
        "val/pass@1": val[0] * frac if rung < NUM_RUNGS else val[0],
        "val/pass@10": min(1.0, val[0] * 2),
        "val/pass@10(10)": val[1] * frac if rung < NUM_RUNGS else val[1],
        "trial_id": trial_id,
        "training_iteration": rung,
        "time_this_iter_s": (STARTUP_SECONDS if rung == 1 else 0.0) + RUNG_STEPS * SECONDS_PER_STEP,
        "time_total_s": STARTUP_SECONDS + step * SECONDS_PER_STEP,
        "timestamp": start + STARTUP_SECONDS + step * SECONDS_PER_STEP,
        "config": {"optuna_trial": number},  # Tune repeats the config on every line; the report drops it
    }
    if rung == NUM_RUNGS and spec["test"]:
        result["test/pass@1"], result["test/pass@10(10)"] = spec["test"]
    if rung == NUM_RUNGS and number in REPORTED_GAPS:
        result.update(memorization_results(number))
    return result


def memorization_results(number: int) -> dict[str, float]:
    """The memorization/... values trial `number` reports at its last rung."""
    gap = REPORTED_GAPS[number]
    return {
        "memorization/gap": gap,
        "memorization/gap_base": MEMORIZATION_BASE_GAP,
        "memorization/gap_change": gap - MEMORIZATION_BASE_GAP,
        "memorization/l2_distance": gap / 10,
        "memorization/relative_distance": gap / 100,
        "memorization/angular_disparity": gap + 30.0,
        "memorization/min_k_mean": -2.0 - gap / 10,
        "memorization/min_k_mean_base": -3.5,
        "memorization/tap_index": 2.0,
        "memorization/n_scored": 32.0,
        "memorization/seconds": 1.5,
    }


TASK_SAMPLES = 10
"""Samples per task in the per-task counts of write_run(task_counts=True)."""
TASK_CORRECT = {
    0: [10, 3, 2, 4, 0, 1, 5, 2, 3, 0],   # val pass@1 0.30, pass@10(10) 0.1 (the baseline)
    1: [10, 10, 2, 4, 0, 1, 5, 2, 3, 0],  # 0.37, 0.2: one more fully solved task than the baseline, nothing else
    2: [10, 5, 4, 6, 1, 2, 7, 3, 4, 1],   # 0.43, 0.1: 1-2 more correct samples than the baseline on 9 of 10 tasks
    3: [9, 10, 1, 3, 0, 0, 4, 1, 2, 0],   # 0.30, 0.1
    4: [10, 2, 2, 3, 0, 1, 4, 2, 2, 0],   # 0.26, 0.1
    5: [5, 1, 0, 0, 0, 0, 1, 0, 0, 0],    # stopped at rung 1
}
"""Correct samples per validation task (10 tasks) per trial number, for write_run(task_counts=True); each test
task has one correct sample fewer. The front is then #1 and #2 (#0 and #3 are dominated by #1)."""


def task_counts_of(number: int, *, test: bool = True) -> dict[str, dict[str, list[int]]]:
    """split -> task_id -> [n, c] of trial `number` (test only at its last rung)."""
    val = TASK_CORRECT[number]
    splits = [("val", val)] + ([("test", [max(0, c - 1) for c in val])] if test else [])
    return {split: {f"task/{i}": [TASK_SAMPLES, c] for i, c in enumerate(cs)} for split, cs in splits}


def _record_task_counts(result: dict[str, Any], number: int, checkpoint: Path) -> None:
    """Write the rung's task_counts.json as the trainable does and set the result's pass rates to match it."""
    import re

    from trainables.metrics import mean_pass_at_k

    counts = task_counts_of(number, test=result["rung"] == NUM_RUNGS)
    for key in list(result):
        match = re.fullmatch(r"(val|test)/pass@(\d+)(?:\((\d+)\))?", key)
        if match and match[1] in counts:
            pairs = list(counts[match[1]].values())
            result[key] = mean_pass_at_k([n for n, _ in pairs], [c for _, c in pairs], int(match[2]), int(match[3] or 1))
    (checkpoint / "task_counts.json").write_text(json.dumps({"rung": result["rung"], "step": result["step"], **counts}))


def write_run(
    root: Path, *, finished: bool = True, only: Optional[list[int]] = None, memorization_objective: bool = False,
    task_counts: bool = False, trial_id_format: str = "{number:04d}abcd",
) -> Path:
    """Write the run directory root/fixture; finished=False leaves out trials.csv/pareto.json and the last
    trial's final rung (a running or crashed search); `only` keeps those trial numbers; memorization_objective
    makes memorization/gap (min) a third objective of the space and the study; task_counts gives every trial
    that reported a rung a task_counts.json for its last rung (TASK_CORRECT) and pass rates computed from it;
    trial_id_format gives Tune's 8-hex trial ids (format fields: number)."""
    from search.results import trial_row, write_pareto_json, write_trials_csv

    objectives = OBJECTIVES + ([MEMORIZATION_OBJECTIVE] if memorization_objective else [])
    run_dir = root / "fixture"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "tune").mkdir(parents=True)
    (run_dir / "space.yaml").write_text(yaml.safe_dump({**SPACE, "objectives": objectives}, sort_keys=False))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{run_dir / 'optuna.db'}")
    directions = ["maximize" if o["mode"] == "max" else "minimize" for o in objectives]
    study = optuna.create_study(storage=storage, study_name="fixture", directions=directions)
    distributions = {
        "alpha": optuna.distributions.FloatDistribution(0.01, 1.0, log=True),
        "beta": optuna.distributions.FloatDistribution(0.001, 0.1, log=True),
        "tap_layer": optuna.distributions.CategoricalDistribution([1, 2, 3]),
        "prior": optuna.distributions.CategoricalDistribution(["standard_normal", "mog"]),
    }
    numbers = only if only is not None else list(range(len(TRIALS)))
    records, state_entries = [], []
    for number in numbers:
        spec = TRIALS[number]
        trial_id = trial_id_format.format(number=number)
        # The baseline's alpha = 0 lies outside the searched range: the bridge records no parameters for it.
        searched = {} if spec["role"] == "baseline" else {k: distributions[k] for k in distributions}
        if searched:
            study.enqueue_trial({k: spec["params"][k] for k in searched})  # as the bridge enqueues presets
        trial = study.ask(searched)
        trial.set_user_attr("role", spec["role"])
        trial.set_user_attr("ray_trial_id", trial_id)
        config = {**spec["params"], "prior_options": {"components": 2} if spec["params"]["prior"] == "mog" else {},
                  "optuna_trial": number, "role": spec["role"], "setup": {"num_rungs": NUM_RUNGS}}
        trial_dir = run_dir / "tune" / f"run_trial_{trial_id}_{number + 1}_alpha={spec['params']['alpha']:.4f}_2030-01-01"
        trial_dir.mkdir()
        (trial_dir / "params.json").write_text(json.dumps(config))
        start = T0 + 100 * number
        last_rung = spec["rungs"] if finished or number != numbers[-1] else max(0, spec["rungs"] - 1)
        results = [_rung_result(trial_id, number, spec, r, start) for r in range(1, last_rung + 1)]
        checkpoint = run_dir / "trials" / trial_id / f"checkpoint_{number}"
        if results:
            checkpoint.mkdir(parents=True)
            cfg = _train_config(spec["params"], run_dir / "trials" / trial_id / "work")
            (checkpoint / "train_config.json").write_text(json.dumps(cfg))
            for r in results:
                r["checkpoint_path"] = str(checkpoint)
            if task_counts:
                _record_task_counts(results[-1], number, checkpoint)
        with (trial_dir / "result.json").open("w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
        done = finished or number != numbers[-1]
        errored = spec["outcome"] == "FAIL" and done
        if errored:
            (trial_dir / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{ERROR_LINE}\n")
        last = results[-1] if results else {}
        if done:
            for key, value in last.items():
                if key.startswith(("val/", "test/")):
                    trial.set_user_attr(key, value)
            if spec["outcome"] == "COMPLETE":
                study.tell(trial, [last[o["metric"]] for o in objectives])
            else:
                study.tell(trial, None, state=getattr(optuna.trial.TrialState, spec["outcome"]))
        records.append({
            "trial_id": trial_id, "config": config, "last_result": {k: v for k, v in last.items() if k != "config"},
            "finished": done and not errored, "errored": done and errored, "error": ERROR_LINE if errored else None,
        })
        status = ("ERROR" if errored else "TERMINATED") if done else "RUNNING"
        state_entries.append([json.dumps({"trial_id": trial_id, "status": status, "relative_logdir": trial_dir.name}),
                              json.dumps({"error_filename": "error.txt" if errored else None})])
    (run_dir / "tune" / "experiment_state-2030-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": state_entries, "runner_data": {}, "stats": {}})
    )
    if finished:
        rows = [trial_row(r, num_rungs=NUM_RUNGS, objectives=[o["metric"] for o in objectives]) for r in records]
        write_trials_csv(rows, run_dir / "trials.csv")
        write_pareto_json(rows, objectives, run_dir / "pareto.json")
        _append_memorization(run_dir / "trials.csv")
    return run_dir


def _append_memorization(path: Path) -> None:
    """Add a memorization_gap column, as a memorization analysis of the trials would."""
    import csv

    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    columns = list(rows[0]) + ["memorization_gap"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            number = int(row["optuna_trial"])
            writer.writerow({**row, "memorization_gap": MEMORIZATION_GAPS.get(number, "")})
