"""Read a search run directory into plain trial records, whatever state the search is in.

Sources, joined on the Tune trial id and the Optuna trial number:
- RUN_DIR/space.yaml: objectives, rung size, budget (else pareto.json's objectives).
- RUN_DIR/tune/: Ray's experiment state (each trial's status, even for a running or crashed search) and each
  trial's params.json (its config) and result.json (one line per rung).
- RUN_DIR/trials.csv: the search's own verdict per trial, written when `ibft tune` ends, plus any extra
  columns (memorization analysis).
- RUN_DIR/optuna.db: the study, opened read-only so a search writing to it is never disturbed.
- RUN_DIR/trials/<id>/: each rung checkpoint's train_config.json and task_counts.json (per-task pass counts) and
  the loop's per-step metrics.jsonl.
Every source may be missing, empty or half-written; what could not be read is listed in RunData.notes.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from search.space import TRIAL_PARAMS
from search.table_cells import read_table
from trainables.errors import ConfigError
from trainables.ib.config import LEGACY_SEMANTICS

COMPLETE, PRUNED, ERROR, UNFINISHED = "COMPLETE", "PRUNED", "ERROR", "UNFINISHED"
"""Trial states as trials.csv writes them (UNFINISHED: running, pending, or left by an interrupted search)."""
PARAM_NAMES = (*TRIAL_PARAMS, "prior_options")
"""The IB parameters a search draws per trial (the columns trials.csv writes, search.results.PARAM_COLUMNS). A run made before
kl_reduction / encoder_input existed trained with trainables.ib.config.LEGACY_SEMANTICS; load_run fills them in."""
TRAIN_CONFIG_FILE = "train_config.json"
"""Written by the training loop into every checkpoint: the TrainConfig that produced it."""
STEP_METRICS_FILE = "metrics.jsonl"
"""Per-step training metrics the loop appends under its output_dir."""
TASK_COUNTS_FILE = "task_counts.json"
"""Written by the trainable into every rung checkpoint (trainables.tune_trainable.TASK_COUNTS_FILE): the rung's
{"rung", "step", "val": {task_id: [n, c]}, "test": {...}}, what the report's bootstrap intervals resample."""
METRIC_PREFIXES = ("val/", "test/", "memorization/")
"""Reported results the report reads as a trial's metrics (memorization/...: measured at a finished trial's
last rung when the space enables it), from Ray's results, trials.csv and the study alike."""
_TRIALS_CSV_FIXED = {
    "trial_id", "optuna_trial", "role", *PARAM_NAMES, "state", "last_rung", "wall_time_s", "checkpoint_path", "error",
}
_RAY_STATUS = {"TERMINATED": None, "ERROR": ERROR, "RUNNING": UNFINISHED, "PENDING": UNFINISHED, "PAUSED": UNFINISHED}


@dataclass
class TrialRecord:
    """One trial of the search as the report sees it."""

    trial_id: Optional[str]
    """Tune trial id (None for an Optuna trial Tune never ran)."""
    number: Optional[int]
    """Optuna trial number (None when the study could not be read and the config lacks it)."""
    role: str = "search"
    """"baseline" (alpha = 0), "paper" (the paper's setting), a space preset's name, or "search"."""
    params: dict[str, Any] = field(default_factory=dict)
    """alpha, beta, tap_layer, prior, kl_reduction, encoder_input, prior_options."""
    state: str = UNFINISHED
    """COMPLETE, PRUNED (stopped by ASHA), ERROR or UNFINISHED."""
    last_rung: Optional[int] = None
    """Last rung the trial reported."""
    steps: int = 0
    """Optimizer steps the trial reported (its cost)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Numeric results of its last report (val/..., test/..., memorization/..., train/...)."""
    rungs: list[dict[str, Any]] = field(default_factory=list)
    """Every rung report in order (rung, step, timestamp, metrics)."""
    step_log: list[dict[str, float]] = field(default_factory=list)
    """Per-step training metrics (loss components) when the trial's metrics.jsonl is readable."""
    wall_time_s: Optional[float] = None
    """Seconds the trial ran."""
    finished_at: Optional[float] = None
    """Unix time of its last report."""
    error: Optional[str] = None
    """Last line of the error of an errored trial."""
    train_config: Optional[dict[str, Any]] = None
    """The exact TrainConfig it trained with (from a checkpoint), when one was written."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other trials.csv columns (e.g. a memorization_gap column added after the search)."""
    task_counts: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    """Per-task sample counts behind the last reported rung's pass rates: split ("val", "test") -> task_id ->
    (n, c). Empty when the trial's checkpoint has no TASK_COUNTS_FILE (a run made before trials wrote it)."""

    @property
    def label(self) -> str:
        """Short name for plots and tables: the Optuna number, else the Tune id."""
        return f"#{self.number}" if self.number is not None else str(self.trial_id)


@dataclass
class RunData:
    """Everything read from one run directory."""

    run_dir: Path
    """The run directory."""
    name: str
    """Search name (the directory's name)."""
    objectives: list[dict[str, str]]
    """[{metric, mode}] of the study."""
    trials: list[TrialRecord]
    """Every trial, in Optuna order."""
    asha_metric: Optional[str] = None
    """The metric ASHA ranked on."""
    asha_promotion: str = "metric"
    """"pareto" when ASHA ranked each rung on all objectives instead of asha_metric alone."""
    rung_steps: Optional[int] = None
    """Optimizer steps per rung."""
    max_steps: Optional[int] = None
    """Optimizer steps of a trial that runs to the end."""
    num_samples: Optional[int] = None
    """Trials the search was asked for."""
    workers: int = 1
    """Ray Train workers per trial (data-parallel ranks)."""
    has_test: bool = False
    """Whether the space scores a test split on finished trials."""
    measures_memorization: bool = False
    """Whether the space measures memorization at the end of every finished trial (memorization.enabled)."""
    study: Any = None
    """The Optuna study (read-only), None when optuna.db is missing or unreadable."""
    finished: bool = False
    """Whether `ibft tune` finished (trials.csv written and no trial unfinished)."""
    updated_at: Optional[float] = None
    """Unix time of the newest file the search wrote."""
    notes: list[str] = field(default_factory=list)
    """What could not be read, in words."""


def load_run(run_dir: Path | str) -> RunData:
    """Read RUN_DIR; ConfigError when it is not a search run directory or its objectives cannot be told."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR {run_dir}: no such directory")
    markers = ("space.yaml", "optuna.db", "tune", "trials.csv")
    if not any((run_dir / m).exists() for m in markers):
        raise ConfigError(f"RUN_DIR {run_dir}: not a search run directory (none of {', '.join(markers)})")
    notes: list[str] = []
    space = _read_space(run_dir, notes)
    objectives = _objectives(run_dir, space, notes)
    ray_trials = _read_ray_trials(run_dir / "tune", notes)
    csv_rows = _read_trials_csv(run_dir / "trials.csv", notes)
    study = _open_study(run_dir, notes)
    trials = _join(ray_trials, csv_rows, study, objectives, space, notes)
    for trial in trials:
        _attach_trial_files(run_dir, trial)
    _fill_ib_semantics(trials, run_dir, space, notes)
    training = (space or {}).get("training") or {}
    resources = (space or {}).get("resources") or {}
    data = RunData(
        run_dir=run_dir,
        name=run_dir.resolve().name,
        objectives=objectives,
        trials=trials,
        asha_metric=((space or {}).get("asha") or {}).get("metric"),
        asha_promotion=((space or {}).get("asha") or {}).get("promotion") or "metric",
        rung_steps=training.get("rung_steps"),
        max_steps=training.get("max_steps"),
        num_samples=(space or {}).get("num_samples"),
        workers=int(resources.get("workers") or 1),
        has_test=bool((space or {}).get("test")),
        measures_memorization=bool(((space or {}).get("memorization") or {}).get("enabled")),
        study=study,
        notes=notes,
    )
    data.finished = bool(csv_rows) and all(t.state != UNFINISHED for t in trials)
    data.updated_at = _newest_mtime(run_dir)
    return data


# ---- space and objectives ------------------------------------------------------------------------------


def _read_space(run_dir: Path, notes: list[str]) -> Optional[dict[str, Any]]:
    """The run's space as validated data (defaults filled in), or None."""
    from search.space import load_space, with_run_ib_semantics

    path = run_dir / "space.yaml"
    if not path.is_file():
        notes.append("space.yaml is missing: budget and rung size unknown")
        return None
    try:
        space = load_space(path)
    except ConfigError as e:
        notes.append(f"space.yaml does not validate ({e}); budget and rung size unknown")
        return None
    try:  # the kl_reduction / encoder_input its trials trained with where the file leaves them out
        with_run_ib_semantics(space, run_dir)
    except ConfigError as e:
        notes.append(str(e))
    return space.model_dump(mode="json")


def _fill_ib_semantics(trials: list[TrialRecord], run_dir: Path, space: Optional[dict], notes: list[str]) -> None:
    """kl_reduction / encoder_input of trials whose sources lack them (a trials.csv, Ray config or study of a run
    made before they existed; a study-only trial whose space fixed them): the trial's checkpointed train config
    when there is one (a saved `ib` without a key predates it: LEGACY_SEMANTICS), else the run's value."""
    from search.space import run_ib_semantics

    params = (space or {}).get("params") or {}
    fixed = {k: v for k, v in params.items() if k in LEGACY_SEMANTICS and isinstance(v, str)}
    try:
        run_values = {**run_ib_semantics(run_dir), **fixed}
    except ConfigError as e:
        if str(e) not in notes:
            notes.append(str(e))
        run_values = {**LEGACY_SEMANTICS, **fixed}
    for trial in trials:
        if not trial.params:
            continue  # nothing known about the trial's parameters
        saved_ib = (trial.train_config or {}).get("ib")
        for name, legacy in LEGACY_SEMANTICS.items():
            if trial.params.get(name) is None:
                trial.params[name] = saved_ib.get(name, legacy) if isinstance(saved_ib, dict) else run_values[name]


def _objectives(run_dir: Path, space: Optional[dict], notes: list[str]) -> list[dict[str, str]]:
    if space is not None:
        return [{"metric": o["metric"], "mode": o["mode"]} for o in space["objectives"]]
    pareto = run_dir / "pareto.json"
    try:
        return [{"metric": o["metric"], "mode": o["mode"]} for o in json.loads(pareto.read_text())["objectives"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"RUN_DIR {run_dir}: cannot tell the search's objectives (space.yaml missing or invalid, no readable "
            f"pareto.json)"
        ) from None


# ---- Ray Tune's results ----------------------------------------------------------------------------------


def _read_ray_trials(tune_dir: Path, notes: list[str]) -> dict[str, dict[str, Any]]:
    """trial_id -> {status, config, rungs, error} from the experiment state and the trial directories."""
    trials: dict[str, dict[str, Any]] = {}
    if not tune_dir.is_dir():
        notes.append("tune/ is missing: no per-rung results")
        return trials
    for trial_id, status, logdir, error_file in _experiment_state(tune_dir, notes):
        entry = trials.setdefault(trial_id, {"trial_id": trial_id})
        entry["status"] = status
        if logdir:
            entry["dir"] = tune_dir / logdir
        if error_file:
            entry["error_file"] = tune_dir / logdir / error_file if logdir else None
    for trial_dir in sorted(p for p in tune_dir.iterdir() if p.is_dir()):
        params = _read_json(trial_dir / "params.json")
        rungs = _read_result_lines(trial_dir / "result.json")
        trial_id = next((r["trial_id"] for r in rungs if r.get("trial_id")), None) or _id_from_dirname(trial_dir.name)
        if trial_id is None or (params is None and not rungs):
            continue
        entry = trials.setdefault(trial_id, {"trial_id": trial_id})
        entry.setdefault("dir", trial_dir)
        entry["config"] = params if isinstance(params, dict) else {}
        entry["rungs"] = rungs
    for entry in trials.values():
        entry["error"] = _error_text(entry)
    return trials


def _experiment_state(tune_dir: Path, notes: list[str]) -> list[tuple[str, str, Optional[str], Optional[str]]]:
    """(trial_id, status, relative_logdir, error_filename) from the newest readable experiment state file."""
    for path in sorted(tune_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        state = _read_json(path)
        if not isinstance(state, dict):
            continue
        out = []
        for item in state.get("trial_data", []):
            try:
                trial = json.loads(item[0])
                runtime = json.loads(item[1]) if len(item) > 1 and isinstance(item[1], str) else {}
            except (ValueError, TypeError, IndexError):
                continue
            error_file = runtime.get("error_filename") if isinstance(runtime, dict) else None
            out.append((trial["trial_id"], trial.get("status", "PENDING"), trial.get("relative_logdir"), error_file))
        return out
    notes.append("no readable Ray experiment state: trial statuses come from trials.csv and the study")
    return []


def _id_from_dirname(name: str) -> Optional[str]:
    # Tune names trial directories <trainable>_<trial_id>_<index>_<params>_<date>; trial ids hold no "_".
    parts = name.split("_")
    return parts[2] if len(parts) > 3 and parts[0] == "run" and parts[1] == "trial" else None


def _read_result_lines(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of a result.json (a crash can leave the last one half-written)."""
    rows = []
    for row in _json_objects(path):
        row.pop("config", None)  # the whole trial config, repeated on every line
        rows.append(row)
    return rows


def _error_text(entry: dict[str, Any]) -> Optional[str]:
    candidates = [entry.get("error_file")]
    if entry.get("dir"):
        candidates.append(Path(entry["dir"]) / "error.txt")
    for path in candidates:
        if path is not None and Path(path).is_file():
            lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
            if lines:
                return lines[-1][:500]
    return None


# ---- trials.csv and the Optuna study ---------------------------------------------------------------------


def _read_trials_csv(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Rows of trials.csv with numbers parsed (same cell rules as search.results, without its Ray import)."""
    if not path.is_file():
        return []
    try:
        return read_table(path)
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        notes.append(f"trials.csv unreadable ({e})")
        return []


def _open_study(run_dir: Path, notes: list[str]) -> Any:
    """The study in optuna.db opened read-only (a running search keeps writing it), or None."""
    path = run_dir / "optuna.db"
    if not path.is_file():
        notes.append("optuna.db is missing: no study (importances need it)")
        return None
    import optuna
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
    try:
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs={"connect_args": {"timeout": 30}},
            skip_compatibility_check=True,
            skip_table_creation=True,
        )
        names = [s.study_name for s in storage.get_all_studies()]
        if not names:
            notes.append("optuna.db holds no study yet")
            return None
        name = run_dir.resolve().name if run_dir.resolve().name in names else names[0]
        return optuna.load_study(study_name=name, storage=storage)
    except (sqlalchemy.exc.SQLAlchemyError, KeyError, ValueError) as e:
        notes.append(f"optuna.db unreadable ({' '.join(str(e).split())[:200]})")
        return None


# ---- joining the sources ---------------------------------------------------------------------------------


def _join(
    ray_trials: dict[str, dict[str, Any]],
    csv_rows: list[dict[str, Any]],
    study: Any,
    objectives: list[dict[str, str]],
    space: Optional[dict],
    notes: list[str],
) -> list[TrialRecord]:
    num_rungs = _num_rungs(space)
    by_id: dict[str, TrialRecord] = {}
    for trial_id, entry in ray_trials.items():
        by_id[trial_id] = _from_ray(entry, num_rungs, [o["metric"] for o in objectives])
    for row in csv_rows:
        trial_id = str(row.get("trial_id"))
        trial = by_id.setdefault(trial_id, TrialRecord(trial_id=trial_id, number=None))
        _apply_csv_row(trial, row)
    if study is not None:
        _apply_study(by_id, study)
    trials = list(by_id.values())
    trials.sort(key=lambda t: (t.number is None, t.number if t.number is not None else 0, str(t.trial_id)))
    return trials


def _num_rungs(space: Optional[dict]) -> Optional[int]:
    training = (space or {}).get("training") or {}
    if training.get("max_steps") and training.get("rung_steps"):
        return int(training["max_steps"]) // int(training["rung_steps"])
    return None


def _from_ray(entry: dict[str, Any], num_rungs: Optional[int], objective_metrics: list[str]) -> TrialRecord:
    config = entry.get("config") or {}
    rungs = [r for r in entry.get("rungs", []) if r.get("rung") is not None]
    last = rungs[-1] if rungs else {}
    trial = TrialRecord(
        trial_id=entry["trial_id"],
        number=config.get("optuna_trial"),
        role=config.get("role") or "search",
        params={k: config[k] for k in PARAM_NAMES if k in config},
        last_rung=last.get("rung"),
        steps=int(last.get("step") or 0),
        metrics=_numbers(last),
        rungs=rungs,
        wall_time_s=last.get("time_total_s"),
        finished_at=last.get("timestamp"),
        error=entry.get("error"),
    )
    trial.extra["checkpoint_path"] = last.get("checkpoint_path")
    if num_rungs is None and config.get("setup"):
        num_rungs = config["setup"].get("num_rungs")
    status = entry.get("status")
    if status == "TERMINATED":
        finished = num_rungs is not None and (trial.last_rung or 0) >= num_rungs
        values_ok = all(_finite(trial.metrics.get(m)) for m in objective_metrics)
        trial.state = COMPLETE if finished and values_ok else (PRUNED if not finished else ERROR)
    elif status in _RAY_STATUS:
        trial.state = _RAY_STATUS[status] or UNFINISHED
    if trial.state == UNFINISHED and num_rungs is not None and (trial.last_rung or 0) >= num_rungs:
        # It reported its last rung (test scores included) before the driver stopped: complete by the
        # search's own rule, even if Optuna was never told.
        if all(_finite(trial.metrics.get(m)) for m in objective_metrics):
            trial.state = COMPLETE
    return trial


def _apply_csv_row(trial: TrialRecord, row: dict[str, Any]) -> None:
    """trials.csv is the search's own verdict on how a trial ended. A resumed search may have moved on since an
    interrupted run wrote it, so its UNFINISHED rows decide nothing and Ray's newer results keep their values."""
    if row.get("optuna_trial") is not None:
        trial.number = int(row["optuna_trial"])
    trial.role = row.get("role") or trial.role
    for name in PARAM_NAMES:
        value = row.get(name)
        if name == "prior_options" and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if value is not None or name not in trial.params:
            trial.params[name] = value if value is not None else ({} if name == "prior_options" else None)
    if row.get("state") and row["state"] != UNFINISHED:
        trial.state = str(row["state"])
    if row.get("last_rung") is not None:
        trial.last_rung = max(int(row["last_rung"]), trial.last_rung or 0)
    for key, value in row.items():
        if key.startswith(METRIC_PREFIXES) and _finite(value):
            trial.metrics.setdefault(key, float(value))
        elif key not in _TRIALS_CSV_FIXED and not key.startswith(METRIC_PREFIXES) and value is not None:
            trial.extra[key] = value
    if row.get("wall_time_s") is not None:
        trial.wall_time_s = float(row["wall_time_s"])
    if row.get("checkpoint_path"):
        trial.extra["checkpoint_path"] = row["checkpoint_path"]
    trial.error = row.get("error") or trial.error


def _apply_study(by_id: dict[str, TrialRecord], study: Any) -> None:
    """Fill the gaps from the study: states Tune never recorded, roles, and trials Tune has no results for."""
    from optuna.trial import TrialState

    by_number = {t.number: t for t in by_id.values() if t.number is not None}
    state_names = {TrialState.COMPLETE: COMPLETE, TrialState.PRUNED: PRUNED, TrialState.FAIL: ERROR}
    for frozen in study.get_trials(deepcopy=False):
        if "duplicate_of" in frozen.user_attrs:
            continue  # a proposal answered from an earlier trial's run, never run itself
        ray_id = frozen.user_attrs.get("ray_trial_id")
        trial = by_number.get(frozen.number) or (by_id.get(ray_id) if ray_id else None)
        told = state_names.get(frozen.state)
        if trial is None:
            if told is None:
                continue  # asked or enqueued but never run: nothing to show
            trial = TrialRecord(trial_id=ray_id, number=frozen.number)
            by_id[ray_id or f"optuna-{frozen.number}"] = trial
            trial.params = _params_from_attrs(frozen)
            trial.last_rung = frozen.user_attrs.get("rung")
        trial.number = frozen.number
        trial.role = frozen.user_attrs.get("role", trial.role)
        if told is not None and trial.state == UNFINISHED:
            trial.state = told
        for key, value in frozen.user_attrs.items():
            if key.startswith(METRIC_PREFIXES) and _finite(value) and key not in trial.metrics:
                trial.metrics[key] = float(value)
        if trial.finished_at is None and frozen.datetime_complete is not None:
            trial.finished_at = frozen.datetime_complete.timestamp()


def _params_from_attrs(frozen: Any) -> dict[str, Any]:
    params = dict(frozen.user_attrs.get("preset") or {})
    for name in TRIAL_PARAMS:
        if name in frozen.params:
            params[name] = frozen.params[name]
    options = {k.split(".", 1)[1]: v for k, v in frozen.params.items() if "." in k}
    params["prior_options"] = options or params.get("prior_options") or {}
    return params


# ---- per-trial files -------------------------------------------------------------------------------------


def _attach_trial_files(run_dir: Path, trial: TrialRecord) -> None:
    """The trial's exact train config (from its newest checkpoint) and its per-step training log."""
    if trial.trial_id is None:
        return
    trial_root = run_dir / "trials" / trial.trial_id
    candidates: list[Path] = []
    recorded = trial.extra.pop("checkpoint_path", None)
    if isinstance(recorded, str) and recorded:
        # The run directory may have moved since the search wrote absolute paths; look for the same name here.
        candidates += [Path(recorded) / TRAIN_CONFIG_FILE, trial_root / Path(recorded).name / TRAIN_CONFIG_FILE]
    candidates += sorted(trial_root.glob(f"checkpoint_*/{TRAIN_CONFIG_FILE}"), key=_mtime, reverse=True)
    candidates.append(trial_root / "work" / "final" / TRAIN_CONFIG_FILE)
    for path in candidates:
        config = _read_json(path)
        if isinstance(config, dict):
            trial.train_config = config
            break
    log = trial_root / "work" / STEP_METRICS_FILE
    if trial.train_config and trial.train_config.get("output_dir"):
        recorded_log = Path(trial.train_config["output_dir"]) / STEP_METRICS_FILE
        log = recorded_log if recorded_log.is_file() else log
    trial.step_log = _read_step_log(log)
    count_files = [path.parent / TASK_COUNTS_FILE for path in candidates]
    count_files += sorted(trial_root.glob(f"checkpoint_*/{TASK_COUNTS_FILE}"), key=_mtime, reverse=True)
    trial.task_counts = _read_task_counts(count_files, trial.steps)


def _read_task_counts(paths: list[Path], steps: int) -> dict[str, dict[str, tuple[int, int]]]:
    """split -> task_id -> (n, c) from the first readable counts file of the rung the trial last reported (its
    step equals `steps`; any step when that is unknown), keeping only well-formed splits; {} if there is none."""
    for path in paths:
        data = _read_json(path)
        if not isinstance(data, dict) or (steps and data.get("step") != steps):
            continue
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for split, counts in data.items():
            if not isinstance(counts, dict) or not counts:
                continue
            parsed = {}
            for task, pair in counts.items():
                if not (isinstance(pair, list) and len(pair) == 2 and all(type(v) is int for v in pair)):
                    break
                n, c = pair
                if n < 1 or not 0 <= c <= n:
                    break
                parsed[str(task)] = (n, c)
            else:
                out[split] = parsed
        return out
    return {}


def _read_step_log(path: Path) -> list[dict[str, float]]:
    """Per-step metrics, the last record of each step kept (a retried trial appends the steps it redoes)."""
    by_step: dict[int, dict[str, float]] = {}
    for row in _json_objects(path):
        if isinstance(row.get("step"), int):
            by_step[row["step"]] = _numbers(row)
    return [by_step[s] for s in sorted(by_step)]


def _json_objects(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, skipping lines a crash left half-written; none if it is absent."""
    if not path.is_file():
        return
    with path.open(errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row


# ---- small helpers ---------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if _finite(v)}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _newest_mtime(run_dir: Path) -> Optional[float]:
    newest = None
    for name in ("optuna.db", "trials.csv", "tune"):
        path = run_dir / name
        if path.exists():
            newest = max(newest or 0.0, _mtime(path))
    tune = run_dir / "tune"
    if tune.is_dir():
        for entry in os.scandir(tune):
            newest = max(newest or 0.0, entry.stat().st_mtime)
    return newest
