"""Build and run one search: Ray Tune Tuner + Optuna (SQLite study) + ASHA, fresh or resumed, then its tables.

RUN_DIR layout: space.yaml (the space the search runs), ib_semantics.json (what its unset params.kl_reduction /
params.encoder_input mean; a run without it predates them: search.space.run_ib_semantics), optuna.db (study
named after the search, so `optuna-dashboard sqlite:///RUN_DIR/optuna.db` opens it), tune/ (Ray's results and experiment state),
trials/<trial_id>/ (each trial's Ray Train run: checkpoints), wandb/, logs/ (what a quiet console leaves out:
search.console), trials.csv and pareto.json.
RUN_DIR may be an object-store URI (s3://...): then `run_dir` here is the driver's local staging directory of it
(search.storage), Ray and the trials write to the URI, and search.storage_sync.RunSync keeps the URI's copy of the
study, tables and W&B runs current.
"""
from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import optuna
from ray.tune import CLIReporter

from search.space import SearchSpace, load_space, record_ib_semantics, with_run_ib_semantics
from trainables.errors import ConfigError

SPACE_FILE = "space.yaml"
OPTUNA_DB = "optuna.db"
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
TRAINABLE = "trainables.tune_trainable:run_trial"

# Environment every Ray process of a search needs: Train V2 inside Tune, the classic trial table (the new
# output engine ignores a custom reporter), and room for slow worker start-up on busy machines.
RAY_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
    "TOKENIZERS_PARALLELISM": "false",
}


class SearchOutcome(dict):
    """Summary of a search run: run_dir, counts per state, interrupted flag, exhausted flag (a finite space
    whose every combination ran before num_samples trials), the Pareto front."""


def prepare_run_dir(space_path: Path, run_dir: Path) -> None:
    """Create RUN_DIR for a fresh search and keep a copy of its space file there (resume reads that copy)."""
    from trainables.errors import ConfigError

    if (run_dir / TUNE_DIR).exists() or (run_dir / OPTUNA_DB).exists():
        raise ConfigError(
            f"{run_dir} already holds a search; continue it with `ibft tune --resume {run_dir}` "
            f"or choose another --name/--storage-path"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(space_path, run_dir / SPACE_FILE)
    record_ib_semantics(run_dir)  # what the copy's unset params.kl_reduction / encoder_input mean, for --resume


def load_run_space(run_dir: Path) -> SearchSpace:
    """The space a run directory was started with; its search name is the directory's name."""
    from trainables.errors import ConfigError

    if not (run_dir / SPACE_FILE).is_file() or not (run_dir / TUNE_DIR).is_dir():
        raise ConfigError(f"--resume {run_dir}: not a search run directory (no {SPACE_FILE} and {TUNE_DIR}/)")
    # A run started before ib_semantics.json existed trained with LEGACY_SEMANTICS: its space file cannot set
    # kl_reduction / encoder_input, and today's defaults must not change what its remaining trials train with.
    space = with_run_ib_semantics(load_space(run_dir / SPACE_FILE), run_dir)
    space.name = run_dir.name
    return space


def trial_setup(space: SearchSpace, run_dir: Path) -> dict[str, Any]:
    """What every trial of this search shares, as plain data for the trainable (config key "setup")."""
    setup = space.model_dump(mode="json", exclude={"params", "sampler", "objectives", "asha", "num_samples"})
    setup["run_dir"] = _storage_location(run_dir)
    setup["num_rungs"] = space.num_rungs
    return setup


def _storage_location(run_dir: Path) -> str:
    """Where Ray and the trials keep the run: its URI (search.storage) or the absolute local directory."""
    from search.storage import remote_of

    return remote_of(run_dir) or str(run_dir.resolve())


def _connect(address: Optional[str], log_files: Any = None) -> None:
    """Start (or join) Ray. `log_files` (search.console.LogFiles, a quiet search): Ray's and Optuna's driver
    records below ERROR and every worker's output go to RUN_DIR/logs/ instead of the console."""
    import ray

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    if log_files is not None:
        log_files.route_driver_logs()  # before ray.init: its start-up notices go to the file too
    ray.init(
        # "local" always starts a private cluster: plain None would join any `ray start` cluster on
        # the machine, and a search without --address must not land on someone else's cluster.
        address=address or "local",
        runtime_env={"env_vars": {k: os.environ[k] for k in RAY_ENV}},
        # Worker output reaches the driver either way: on the console, or (quiet) the files of log_files.
        log_to_driver=True,
        logging_level="INFO" if log_files is not None else "WARNING",
    )
    if log_files is not None:
        from search.console import ray_session_logs

        log_files.announce(ray_session_logs(), workers_routed=log_files.route_worker_output())
    _stop_on_sigterm_like_ctrl_c()


def _stop_on_sigterm_like_ctrl_c() -> None:
    """Make SIGTERM (`ray job stop`, plain `kill`) stop the search the way Ctrl-C does.

    ray.init makes SIGTERM a bare sys.exit(15): no tables, no "continue with" line. Instead, run whatever
    handles SIGINT at that moment: during Tuner.fit that is Tune's handler (it stops the trials and saves the
    experiment state, and the tables follow), elsewhere Python's, which raises KeyboardInterrupt. The handler is
    called rather than SIGINT re-sent, because a driver started by `ray job submit` has SIGINT blocked.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def like_ctrl_c(signum, frame):
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # SIG_IGN or SIG_DFL: stop anyway, as Python's own handler does
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    signal.signal(signal.SIGTERM, like_ctrl_c)


def tpe_sampler(seed: int, startup_trials: Optional[int] = None) -> optuna.samplers.TPESampler:
    """The search's TPE (sampler "tpe"; bench/search_efficiency.py replays with this one too)."""
    # constant_liar: with trials running in parallel TPE treats them as pending bad results rather than
    # proposing the same region again; group/multivariate model the conditional prior options.
    startup = {} if startup_trials is None else {"n_startup_trials": startup_trials}
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True, **startup)


def _sampler(space: SearchSpace):
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if space.sampler == "tpe":
        return tpe_sampler(space.seed, space.startup_trials)
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=space.seed, population_size=max(4, min(50, space.num_samples // 4)))
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=space.seed)
    grid = {name: list(d.choices or []) for name, d in space.params.domains().items()}
    return _GridSamplerForTune(grid, seed=space.seed)


class _GridSamplerForTune(optuna.samplers.GridSampler):
    """Optuna's grid, minus its end-of-grid study.stop().

    Trials reach the study through Ray's OptunaSearch (ask/tell), not study.optimize, so stop() raises
    "Study.stop is supposed to be invoked inside an objective function" on the last grid point (Ray then
    retries that trial), and a preset trial outside the grid can make it look up a missing point. Tune's
    num_samples already ends the search.
    """

    def after_trial(self, study, trial, state, values) -> None:
        return None


class StderrReporter(CLIReporter):
    """Ray's trial table on stderr (stdout carries the machine-readable summary), each table followed by the
    search's progress line (search.console.progress_line) when given the space's `progress` spec."""

    def __init__(self, *args: Any, progress: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress

    def _print(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        super().report(trials, done, *sys_info)
        if getattr(self, "_progress", None) is not None:  # a reporter pickled before it had one has none
            from search.console import tune_trials_progress

            self._print(tune_trials_progress(trials, self._progress))


def _reporter(space: SearchSpace) -> StderrReporter:
    from search.console import ProgressSpec

    metrics = {"rung": "rung", "train/loss": "loss"}
    for name in dict.fromkeys([space.asha.metric] + [o.metric for o in space.objectives]):
        metrics[name] = name
    params = {"role": "role", "alpha": "alpha", "beta": "beta", "tap_layer": "tap", "prior": "prior"}
    return StderrReporter(
        metric_columns=metrics, parameter_columns=params, max_report_frequency=30, progress=ProgressSpec.of(space)
    )


def build_tuner(space: SearchSpace, run_dir: Path, *, resume: bool):
    """The Tuner of this search: fresh, or restored from RUN_DIR/tune with unfinished trials continued."""
    import optuna
    from ray import tune
    from search.asha import make_scheduler
    from search.optuna_bridge import PrunedAwareOptunaSearch, RungMetricsLimiter
    from search.resume_reconcile import ReconcilingSearchGenerator
    from trainables import tune_trainable

    param_space = {"setup": trial_setup(space, run_dir)}
    if resume:
        param_space = {"setup": align_to_recorded_setup(param_space["setup"], run_dir)}
    # A one-worker trial's process holds its worker's resources (it trains itself); a Train run's driver holds none.
    trainable = tune.with_resources(tune_trainable.run_trial, tune_trainable.trial_resources(param_space["setup"]))
    if resume:
        tuner = tune.Tuner.restore(
            _storage_location(run_dir).rstrip("/") + "/" + TUNE_DIR,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
            param_space=param_space,
        )
        restore_asha(tuner, space, run_dir)
        return tuner
    storage = open_study_storage(run_dir / OPTUNA_DB)
    searcher = PrunedAwareOptunaSearch(space, sampler=_sampler(space), storage=storage, study_name=space.name)
    scheduler = make_scheduler(space)
    from search.pg_reaper import PlacementGroupReaper

    from search.console import SearchConsole

    callbacks: list = [PlacementGroupReaper(), SearchConsole.of(space)]  # trial start/end/error lines
    from search.storage import remote_of

    if remote_of(run_dir) is not None:
        from search.storage_sync import RunSync

        callbacks.append(RunSync(run_dir))
    if space.keep_checkpoints == "last_adapter":
        from search.checkpoints import SlimStoppedTrials

        callbacks.append(SlimStoppedTrials(run_dir.resolve(), space.name))
    if space.wandb.mode != "disabled":
        from search.wandb_logging import WandbCallback

        (run_dir / "wandb").mkdir(exist_ok=True)
        os.environ["WANDB_MODE"] = space.wandb.mode
        callbacks.append(
            WandbCallback(
                project=space.wandb.project,
                group=space.name,
                excludes=["setup"],
                mode=space.wandb.mode,
                dir=str(run_dir / "wandb"),
            )
        )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            # Tune's strict metric check sees only the objectives every rung reports (memorization/... come at
            # the final rung); the searcher tells Optuna all of them.
            # A resume makes the limiter's and the searcher's state agree with the trials Tune restored: Tune
            # uploads its state files one by one, so a kill can leave them from different moments.
            search_alg=ReconcilingSearchGenerator(
                RungMetricsLimiter(searcher, max_concurrent=space.max_concurrent, every_rung=space.rung_objectives())
            ),
            scheduler=scheduler,
            num_samples=space.num_samples,
            # A trial that trains in its own process hands that process to the next trial (Tune resets the function
            # trainable): its Python modules, the model file's pages and the allocator are warm, so the next start
            # skips a process start, the imports and most of the model load (docs/performance.md, trial start).
            # A Ray Train trial's process only waits on its run: nothing there to reuse.
            reuse_actors=tune_trainable.trains_in_trial(param_space["setup"]),
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=_storage_location(run_dir),
            failure_config=tune.FailureConfig(max_failures=space.failure.max_failures),
            progress_reporter=_reporter(space),
            callbacks=callbacks,
            verbose=1,
        ),
    )


def align_to_recorded_setup(setup: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """`setup` with the keys of the setup the run's trials were given (any RUN_DIR/tune/*/params.json).

    Tuner.restore refuses a param_space whose keys differ from the original's, so a run started before a space
    field existed could not be resumed by code that has it. The recorded keys are kept (their values from
    `setup` where it has them, else as recorded); keys the run never had are left out, and the trainable reads
    them with their defaults."""
    import json

    recorded = None
    for path in sorted((run_dir / TUNE_DIR).glob("*/params.json")):
        try:
            recorded = json.loads(path.read_text()).get("setup")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(recorded, dict):
            break
    if not isinstance(recorded, dict):
        return setup

    def align(new: Any, old: Any) -> Any:
        if isinstance(old, dict) and old:
            new = new if isinstance(new, dict) else {}
            return {k: align(new[k], v) if k in new else v for k, v in old.items()}
        return old if isinstance(new, dict) and new else new

    aligned = align(setup, recorded)
    aligned["run_dir"] = setup["run_dir"]  # where the run is now (it may have moved)
    return aligned


REPORTED_PREFIXES = ("val/", "test/", "train/", "memorization/")
"""Result keys a trial reports (with "rung" and "step"), as opposed to what Tune adds."""


def restore_asha(tuner: Any, space: SearchSpace, run_dir: Path) -> None:
    """Give a resumed search ASHA's state of before the interruption.

    Tune keeps no scheduler state across a resume: Tuner.restore takes the scheduler pickled in tuner.pkl when
    the search was built, with empty rungs, so the first trials to reach each rung after a resume would always
    go on. Its rungs are rebuilt here from every result the trials recorded (search.asha.recorded_results).
    A trial ASHA stopped is PRUNED in the study at once, but Tune's last experiment snapshot may still hold it
    RUNNING and would start it again: its directory gets STOPPED_MARKER, and the trainable then returns at once.
    """
    from search.asha import recorded_results
    from search.optuna_bridge import RAY_TRIAL_ID_ATTR
    from trainables.tune_trainable import STOPPED_MARKER

    import json

    results = recorded_results(run_dir / TUNE_DIR)
    study = optuna.load_study(study_name=space.name, storage=open_study_storage(run_dir / OPTUNA_DB))
    stopped: set[str] = set()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)):
        ray_id = trial.user_attrs.get(RAY_TRIAL_ID_ATTR)
        if not ray_id or not results.get(ray_id):
            continue  # never reported: nothing Tune could restart it from
        stopped.add(str(ray_id))
        # Its last result: the trainable reports it again instead of training (Tune expects a result with the
        # search's metrics from every trial that runs), and the scheduler answers it STOP.
        last = {k: v for k, v in results[ray_id][-1].items() if k in ("rung", "step") or k.startswith(REPORTED_PREFIXES)}
        from trainables import storage as run_storage

        # Where the trial reads it: RUN_DIR's URI for an object-store run (search.storage), else the directory.
        run_storage.write_text(
            run_storage.join(_storage_location(run_dir), TRIALS_DIR, str(ray_id), STOPPED_MARKER), json.dumps(last)
        )
    scheduler = getattr(getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None), "scheduler", None)
    if not hasattr(scheduler, "restore_rungs"):
        if space.asha.enabled:
            print("warning: ASHA's rungs could not be restored (no scheduler found in the restored Tuner)", file=sys.stderr)
        return
    restored = scheduler.restore_rungs(results, stopped=stopped)
    print(f"ASHA: {restored} rung record(s) restored from the recorded results", file=sys.stderr, flush=True)


STORAGE_OPEN_ATTEMPTS = 5


def open_study_storage(db: Path) -> optuna.storages.RDBStorage:
    """The search's SQLite study storage, created on first use.

    Creating it writes Optuna's schema and then its version row. Anything else that opens the brand-new file
    read-write at that moment (optuna-dashboard started early, a script polling the study) writes the same
    row, and whichever inserts second fails on the unique version: a search crashed at start-up that way
    in a test. By then the schema is complete, so opening again succeeds.
    """
    import time

    import sqlalchemy.exc

    for attempt in range(1, STORAGE_OPEN_ATTEMPTS + 1):
        try:
            return optuna.storages.RDBStorage(
                f"sqlite:///{db.resolve()}", engine_kwargs={"connect_args": {"timeout": 60}}
            )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            if attempt == STORAGE_OPEN_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def cut_off_trials(space: SearchSpace, run_dir: Path) -> set[str]:
    """Ray trial ids the study still holds as RUNNING after a fit: the trials Ctrl-C cut off.

    The searcher tells the study of every trial that ends (completed, pruned by ASHA, failed), so RUNNING
    there means the trial never ended. Tune's own status cannot say so: it marks the trials it stops on
    the way out TERMINATED, like those ASHA stopped, and they would be listed as pruned.
    """
    from search.optuna_bridge import RAY_TRIAL_ID_ATTR

    study = optuna.load_study(study_name=space.name, storage=open_study_storage(run_dir / OPTUNA_DB))
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return {t.user_attrs[RAY_TRIAL_ID_ATTR] for t in running if RAY_TRIAL_ID_ATTR in t.user_attrs}


def space_exhausted(space: SearchSpace, run_dir: Path, *, retry_failed: bool = False) -> bool:
    """Whether every parameter combination of a finite space ran (or FAILed, unless `retry_failed`) in the study
    (the searcher then ends the search before num_samples trials; that is a finished search, not an interrupted
    one)."""
    from search.optuna_bridge import TrainingKey, finite_combinations, untried

    combinations = finite_combinations(space)
    if combinations is None:
        return False
    study = optuna.load_study(study_name=space.name, storage=open_study_storage(run_dir / OPTUNA_DB))
    return not untried(combinations, study, TrainingKey(space), retry_failed=retry_failed)


def trial_records(result_grid, cut_off: frozenset[str] | set[str] = frozenset()) -> list[dict[str, Any]]:
    """Plain records of every Tune trial of a finished (or interrupted) fit; `cut_off`: ids of trials an
    interruption stopped (see cut_off_trials), recorded as unfinished whatever Tune's status says."""
    from ray.tune.experiment import Trial

    records = []
    for trial in result_grid._experiment_analysis.trials:
        error = None
        if trial.status == Trial.ERROR:
            error = trial.error_file and Path(trial.error_file).is_file() and Path(trial.error_file).read_text()
            error = error or "trial errored"
        records.append(
            {
                "trial_id": trial.trial_id,
                "config": trial.config,
                "last_result": trial.last_result,
                "finished": trial.status == Trial.TERMINATED and trial.trial_id not in cut_off,
                "errored": trial.status == Trial.ERROR,
                "error": error,
            }
        )
    return records


def study_only_records(space: SearchSpace, run_dir: Path, known: set[str]) -> list[dict[str, Any]]:
    """Records, from the Optuna study, of trials that ran and ended but that no Tune trial of the fit holds.

    A trial that ended after Tune's last saved state, just before its driver was killed, is in the study (the
    searcher tells it at once) but not in the state Tune resumed from, so the fit's results lack it. The
    searcher counts it against num_samples (search/resume_reconcile.py), and its parameters, last rung and
    val/ and test/ values are in the study, so the tables list it like any other trial."""
    from search.optuna_bridge import (
        OPTUNA_NUMBER_KEY, RAY_TRIAL_ID_ATTR, ROLE_KEY, RUNG_KEY, define_params,
    )

    study = optuna.load_study(study_name=space.name, storage=open_study_storage(run_dir / OPTUNA_DB))
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    records = []
    for t in study.get_trials(deepcopy=False, states=ended):
        trial_id = t.user_attrs.get(RAY_TRIAL_ID_ATTR)
        if trial_id is None or trial_id in known:
            continue
        result = {k: v for k, v in t.user_attrs.items() if k == RUNG_KEY or k.startswith(("val/", "test/"))}
        if t.state == optuna.trial.TrialState.COMPLETE and t.values:
            result.update(zip([o.metric for o in space.objectives], t.values))
        failed = t.state == optuna.trial.TrialState.FAIL
        checkpoints = sorted((run_dir / TRIALS_DIR / trial_id).glob("checkpoint_*"))  # named by time: last is newest
        if checkpoints:
            result["checkpoint_path"] = str(checkpoints[-1])
        records.append(
            {
                "trial_id": trial_id,
                "config": {**define_params(space, t), OPTUNA_NUMBER_KEY: t.number,
                           ROLE_KEY: t.user_attrs.get(ROLE_KEY, "search")},
                "last_result": result,
                "finished": not failed,
                "errored": failed,
                "error": "the trial failed (its Tune record was lost when the driver was killed)" if failed else None,
            }
        )
    return records


def write_tables(space: SearchSpace, run_dir: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """trials.csv and pareto.json of the run; returns the Pareto front."""
    from search.results import PARETO_JSON, TRIALS_CSV, trial_row, write_pareto_json, write_trials_csv

    objectives = [o.metric for o in space.objectives]
    rows = [trial_row(r, num_rungs=space.num_rungs, objectives=objectives) for r in records]
    write_trials_csv(rows, run_dir / TRIALS_CSV)
    front = write_pareto_json(rows, [o.model_dump() for o in space.objectives], run_dir / PARETO_JSON)
    from search.storage import upload_best_effort, upload_tables

    # An object-store run: its URI gets both tables (nothing for a local run directory); a store that fails now
    # costs a warning, not the search's summary (the staging directory keeps them).
    upload_best_effort(upload_tables, run_dir, "trials.csv and pareto.json")
    return front


def _check_cluster_fits(space: SearchSpace, address: Optional[str]) -> None:
    import ray

    from search.cluster_fit import shortfalls, trial_needs

    r = space.resources
    missing = shortfalls(trial_needs(r.workers, r.cpus_per_worker, r.gpus_per_worker), ray.cluster_resources())
    if not missing:
        return
    message = f"space {space.name!r}: one trial needs " + ", ".join(missing)
    if address is None:
        ray.shutdown()
        raise ConfigError(
            f"{message}; this machine's private Ray cluster cannot grow: lower resources in the space or pass "
            "--address of a cluster that has them"
        )
    print(f"warning: {message}; trials wait until the autoscaler adds such nodes", file=sys.stderr, flush=True)


def run_search(
    space: SearchSpace,
    run_dir: Path,
    *,
    resume: bool,
    address: Optional[str],
    retry_failed: bool = False,
    verbose: bool = True,
) -> SearchOutcome:
    """Run (or resume) the search to completion, or until Ctrl-C; always writes the tables. `retry_failed`
    (`--retry-failed`): configurations whose trial FAILed may be proposed and trained again. `verbose` False
    (`ibft tune` without --verbose): Ray's worker output and driver notices go to RUN_DIR/logs/ (search.console)."""
    from search.optuna_bridge import RETRY_FAILED_ENV

    if retry_failed:
        os.environ[RETRY_FAILED_ENV] = "1"  # read by the searcher at every proposal, also once Tune restored it
    else:
        os.environ.pop(RETRY_FAILED_ENV, None)
    from search.console import LogFiles

    log_files = None if verbose else LogFiles(run_dir)
    try:
        return _run_search(
            space, run_dir, resume=resume, address=address, retry_failed=retry_failed, log_files=log_files
        )
    finally:
        if log_files is not None:
            log_files.close()


def _run_search(
    space: SearchSpace, run_dir: Path, *, resume: bool, address: Optional[str], retry_failed: bool, log_files: Any
) -> SearchOutcome:
    _connect(address, log_files)
    _check_cluster_fits(space, address)
    from search.storage_sync import check_nodes_can_write

    check_nodes_can_write(run_dir, address)  # a node that cannot write the run's storage fails now, not at a rung
    tuner = build_tuner(space, run_dir, resume=resume)
    result_grid = tuner.fit()
    records = trial_records(result_grid, cut_off_trials(space, run_dir))
    records += study_only_records(space, run_dir, {r["trial_id"] for r in records})
    front = write_tables(space, run_dir, records)
    states: dict[str, int] = {}
    from search.results import trial_row

    for r in records:
        state = trial_row(r, num_rungs=space.num_rungs, objectives=[o.metric for o in space.objectives])["state"]
        states[state] = states.get(state, 0) + 1
    exhausted = len(records) < space.num_samples and space_exhausted(space, run_dir, retry_failed=retry_failed)
    interrupted = bool(states.get("UNFINISHED")) or (len(records) < space.num_samples and not exhausted)
    # Release the Tuner (and its W&B callback) while ray is still importable: left to interpreter
    # shutdown, the callback's __del__ finds the ray module gone and prints a traceback.
    del tuner, result_grid
    import gc

    gc.collect()
    import ray

    # Disconnect (and stop a local cluster) now, so the trials' last log lines come before the front.
    ray.shutdown()
    from search.storage import location, upload_best_effort, upload_study, upload_wandb

    # An object-store run: the study and the W&B runs as they ended (no-op for a local one).
    upload_best_effort(upload_study, run_dir, "the Optuna study")
    upload_best_effort(upload_wandb, run_dir, "the W&B runs")
    return SearchOutcome(
        run_dir=location(run_dir), name=space.name, states=states, interrupted=interrupted, exhausted=exhausted, pareto=front
    )
