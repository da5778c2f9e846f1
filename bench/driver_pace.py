"""The search driver's own work per trial result: what Tune's loop spends in this project's scheduler, searcher and
callbacks for every result a trial reports (GitHub issue 19, "a driver that keeps up").

No training runs. The scheduler, searcher and callbacks are the ones `ibft tune` installs (search.tuner.build_tuner
on spaces/smoke.yaml, with W&B offline and --trials samples), plus Tune's default logger callbacks, driven the way
Tune's TuneController drives them: trials suggested by the searcher (max_concurrent at a time), started, reporting
synthetic results rung by rung (scheduler, then searcher, then callbacks, then on_step_end), completed when ASHA
stops them or at their last rung. Each component is timed on its own.

Reference (same run, same results): every event also goes, right after the driver's callbacks, to a second set of
Tune's default callbacks alone (CSV, JSON, TensorBoard, progress; own trial directories), i.e. what any Tune search
pays per result, timed under the same load. With --old-wandb K (default 6) the first K trials' events are also
replayed through Ray's stock WandbLoggerCallback (the code path before the fix: a blocking Queue.put per result) and
through search.wandb_logging.WandbCallback, each alone: W&B's before/after ratio.

Trials here take no time, so the loop idles (Tune's loop steps on, on_step_end timed) while more than 4 W&B runs
are open, as they would be finishing while real trials train; a W&B run costs a few CPU-seconds, so the default run
takes several minutes on 2 cores.

Usage: python bench/driver_pace.py [--trials 120] [--rungs 4] [--old-wandb 6] [--seed 0] [--keep]
Prints ms per result (and per loop step) per component, the driver's total and slowest result, and their ratios
against the reference; exits 0.
Numbers are only comparable within one run (the machine is shared); the ratios are what to read.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULT_EVENTS = ("scheduler", "searcher", "on_trial_result")
"""What Tune does for each result (its `process_trial_result`: scheduler, searcher, then the callbacks)."""
STEP_EVENTS = ("on_step_end",)
"""What Tune does at the end of every iteration of its loop, result or not (reported per step)."""


@dataclass
class Driver:
    """What Tune's loop calls for each trial event, as `ibft tune` builds it."""

    space: Any
    run_dir: Path
    searcher: Any
    scheduler: Any
    callbacks: list
    param_space: dict


@dataclass
class Timings:
    """Seconds per call, by (component, event); `results` counts the results driven."""

    calls: dict = field(default_factory=dict)
    results: int = 0
    trials: int = 0
    steps: int = 0
    result_totals: list = field(default_factory=list)  # seconds of all RESULT_EVENTS for each result

    def worst_result_ms(self) -> float:
        """The longest any one result kept Tune's loop (what Ray's "took X s" warning measures)."""
        return 1000 * max(self.result_totals, default=0.0)

    def per_step_ms(self) -> float:
        seconds = sum(sum(v) for (c, e), v in self.calls.items() if e in STEP_EVENTS)
        return 1000 * seconds / max(1, self.steps)

    def add(self, component: str, event: str, seconds: float) -> None:
        self.calls.setdefault((component, event), []).append(seconds)

    def per_result_ms(self, events: tuple = RESULT_EVENTS) -> dict[str, float]:
        """Mean ms per result of each component, summed over the given per-result events."""
        out: dict[str, float] = {}
        for (component, event), seconds in self.calls.items():
            if event in events:
                out[component] = out.get(component, 0.0) + 1000 * sum(seconds) / max(1, self.results)
        return out

    def total_per_result_ms(self, events: tuple = RESULT_EVENTS) -> float:
        return sum(self.per_result_ms(events).values())


def _timed(timings: Timings, component: str, event: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    timings.add(component, event, time.perf_counter() - start)
    return out


def space_file(tmp: Path, trials: int, wandb_mode: str, rungs: int = 4) -> Path:
    """spaces/smoke.yaml with `trials` samples of `rungs` rungs each and W&B in `wandb_mode`."""
    import yaml

    data = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    data.update(num_samples=trials, wandb={"project": "ibft-search", "mode": wandb_mode})
    data["training"]["max_steps"] = rungs * data["training"]["rung_steps"]
    data["asha"]["max_rungs"] = rungs
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def build_driver(space_path: Path, run_dir: Path) -> Driver:
    """The searcher, scheduler and callbacks `ibft tune` would run `space_path` with (plus Tune's defaults)."""
    from ray.tune.utils.callback import _create_default_callbacks
    from ray.tune.utils.log import set_verbosity

    from search.space import load_space, with_run_ib_semantics
    from search.tuner import SPACE_FILE, build_tuner, prepare_run_dir

    set_verbosity(1)  # `ibft tune`'s verbose=1: Tune's progress callback prints no result
    prepare_run_dir(space_path, run_dir)
    space = with_run_ib_semantics(load_space(run_dir / SPACE_FILE), run_dir)
    space.name = run_dir.name
    tuner = build_tuner(space, run_dir, resume=False)
    internal = tuner._local_tuner
    tune_config, run_config = internal._tune_config, internal._run_config
    scheduler = tune_config.scheduler
    if hasattr(scheduler, "_echo"):
        scheduler._echo = lambda line: None  # no ASHA line per decision in the bench's output
    callbacks = _create_default_callbacks(list(run_config.callbacks or []), metric=None, mode=None)
    for callback in callbacks:
        callback.setup()
    from ray.tune.search.search_generator import SearchGenerator

    searcher = tune_config.search_alg
    if isinstance(searcher, SearchGenerator):  # the bench asks the limiter itself, as the generator would
        searcher = searcher.searcher
    return Driver(space, run_dir, searcher, scheduler, callbacks, dict(internal.param_space or {}))


def _stub_trial(trial_id: str, config: dict, storage_root: Path) -> Any:
    """A Tune trial object as the controller hands it to callbacks (never run), its driver-side directory (where
    Tune's loggers write) under storage_root rather than the Ray session's directory."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    class BenchStorage(StorageContext):
        def _get_session_path(self) -> str:
            return str(Path(storage_root, "session", self.experiment_dir_name))

    trial = Trial("run_trial", config=config, trial_id=trial_id, storage=BenchStorage(str(storage_root), "tune"),
                  stub=True)
    trial.init_local_path()
    return trial


def synthetic_result(rng: random.Random, space: Any, trial_id: str, rung: int, config: dict) -> dict:
    """A result as the trainable reports it (rung metrics) plus what Tune adds, with random pass rates on the
    grid a validation of tasks x n samples can produce."""
    grid = space.validation.tasks * space.validation.n
    result: dict[str, Any] = {"rung": rung, "step": rung * space.training.rung_steps}
    for name in ("loss", "ce_loss", "kl_loss", "ib_ce_loss", "grad_norm", "ce_loss_rung", "tokens_per_s"):
        result[f"train/{name}"] = rng.uniform(0.1, 3.0)
    result["train/lr"] = space.training.lr
    for metric in space.validation.metric_names("val"):
        result[metric] = rng.randint(0, grid) / grid
    result["val/eval_seconds"] = rng.uniform(1, 10)
    if rung >= space.num_rungs:
        for metric in space.validation.metric_names("test"):
            result[metric] = rng.randint(0, grid) / grid
        for objective in space.objectives:
            result.setdefault(objective.metric, rng.uniform(0, 1))
    now = time.time()
    result.update(
        done=False, training_iteration=rung, trial_id=trial_id, date=time.strftime("%Y-%m-%d_%H-%M-%S"),
        timestamp=int(now), time_this_iter_s=rng.uniform(20, 60), time_total_s=rung * 40.0, pid=os.getpid(),
        hostname="bench", node_ip="127.0.0.1", config=config,
    )
    return result


class Mirror:
    """A list of callbacks fed the events of another run (drive's), each call timed, with its own stub trials
    (Tune's loggers keep one file per trial object) under storage_root."""

    def __init__(self, callbacks: list, storage_root: Path, max_trials: Optional[int] = None) -> None:
        self.callbacks = callbacks
        self.storage_root = storage_root
        self.max_trials = max_trials
        self.timings = Timings()
        self.trials: dict[str, Any] = {}
        for callback in callbacks:
            callback.setup()

    def event(self, kind: str, trial_id: Optional[str], payload: Any, iteration: int) -> None:
        if kind == "start":
            if self.max_trials is not None and len(self.trials) >= self.max_trials:
                return
            self.trials[trial_id] = _stub_trial(trial_id, payload, self.storage_root)
            self.timings.trials += 1
        elif kind != "step" and trial_id not in self.trials:
            return
        trial = self.trials.get(trial_id)
        trials = list(self.trials.values())
        if kind == "result":
            trial.update_last_result(payload)  # Tune updates the trial before its callbacks hear of the result
            self.timings.results += 1
        elif kind == "step":
            self.timings.steps += 1
        before = time.perf_counter()
        for callback in self.callbacks:
            name = type(callback).__name__
            if kind == "start":
                _timed(self.timings, name, "on_trial_start", callback.on_trial_start, iteration=iteration,
                       trials=trials, trial=trial)
            elif kind == "result":
                _timed(self.timings, name, "on_trial_result", callback.on_trial_result, iteration=iteration,
                       trials=trials, trial=trial, result=payload)
            elif kind == "complete":
                _timed(self.timings, name, "on_trial_complete", callback.on_trial_complete, iteration=iteration,
                       trials=trials, trial=trial)
            else:
                _timed(self.timings, name, "on_step_end", callback.on_step_end, iteration=iteration, trials=trials)
        if kind == "result":
            self.timings.result_totals.append(time.perf_counter() - before)

    def end(self) -> Timings:
        start = time.perf_counter()
        for callback in self.callbacks:
            callback.on_experiment_end(trials=list(self.trials.values()))
        self.timings.add("all callbacks", "on_experiment_end", time.perf_counter() - start)
        return self.timings


def _live_logging_actors(callbacks: list) -> int:
    """W&B logging actors whose run has not returned yet (each a process with its own W&B service)."""
    import ray

    futures = [f for c in callbacks for f in getattr(c, "_trial_logging_futures", {}).values()]
    if not futures:
        return 0
    _, remaining = ray.wait(futures, num_returns=len(futures), timeout=0)
    return len(remaining)


def drive(
    driver: Driver, trials: int, seed: int = 0, *, reference: Optional[Mirror] = None, max_logging_actors: int = 4
) -> tuple[Timings, list]:
    """Run `trials` synthetic trials through the driver's components; returns the timings and the event stream
    (for replay through other callbacks). `reference` hears every event right after the driver's callbacks, so
    both are timed under the same load.

    A real trial trains for minutes, in which its W&B logging actor starts and, after the trial, finishes its run.
    Here trials take no time, so before a trial starts the loop idles (Tune's loop steps on: on_step_end, timed)
    while more than `max_logging_actors` W&B runs are still open, rather than starting a W&B process per trial
    at once."""
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher
    from ray.tune.utils import flatten_dict

    rng = random.Random(seed)
    timings = Timings()
    stream: list = []
    live: list = []
    all_trials: list = []
    iteration = 0
    scheduler_name = type(driver.scheduler).__name__
    searcher_name = type(getattr(driver.searcher, "searcher", driver.searcher)).__name__

    def callbacks(event: str, kind: str, trial_id: Optional[str], payload: Any, **kwargs: Any) -> None:
        for callback in driver.callbacks:
            _timed(timings, type(callback).__name__, event, getattr(callback, event), **kwargs)
        stream.append((kind, trial_id, payload))
        if reference is not None:
            reference.event(kind, trial_id, payload, iteration)

    def step_end() -> None:
        nonlocal iteration
        iteration += 1
        timings.steps += 1
        callbacks("on_step_end", "step", None, None, iteration=iteration, trials=all_trials)

    started = 0
    while started < trials or live:
        # Start trials up to the searcher's concurrency limit (Tune asks the searcher each step).
        while started < trials and _live_logging_actors(driver.callbacks) > max_logging_actors:
            time.sleep(0.05)  # trials training; the driver's loop steps meanwhile
            step_end()
        while started < trials:
            trial_id = f"{started:08x}"
            suggestion = _timed(timings, searcher_name, "suggest", driver.searcher.suggest, trial_id)
            if suggestion is None or suggestion == Searcher.FINISHED:
                if not live:
                    started = trials  # the searcher has nothing more to give
                break
            config = {**driver.param_space, **suggestion}
            trial = _stub_trial(trial_id, config, driver.run_dir)
            _timed(timings, scheduler_name, "on_trial_add", driver.scheduler.on_trial_add, None, trial)
            all_trials.append(trial)
            callbacks("on_trial_start", "start", trial_id, config, iteration=iteration, trials=all_trials, trial=trial)
            live.append([trial, 0])
            started += 1
            timings.trials += 1
        # One result from every live trial, then the end of Tune's step.
        for entry in list(live):
            trial, rung = entry
            rung += 1
            entry[1] = rung
            result = synthetic_result(rng, driver.space, trial.trial_id, rung, trial.config)
            before = time.perf_counter()
            decision = _timed(timings, scheduler_name, "scheduler", driver.scheduler.on_trial_result, None, trial, result)
            _timed(timings, searcher_name, "searcher", driver.searcher.on_trial_result, trial.trial_id,
                   flatten_dict(result))
            trial.update_last_result(result)
            timings.results += 1
            for callback in driver.callbacks:
                _timed(timings, type(callback).__name__, "on_trial_result", callback.on_trial_result,
                       iteration=iteration, trials=all_trials, trial=trial, result=result)
            timings.result_totals.append(time.perf_counter() - before)
            stream.append(("result", trial.trial_id, result))
            if reference is not None:
                reference.event("result", trial.trial_id, result, iteration)
            if decision == TrialScheduler.STOP or rung >= driver.space.num_rungs:
                _timed(timings, searcher_name, "on_trial_complete", driver.searcher.on_trial_complete, trial.trial_id,
                       result=result)
                _timed(timings, scheduler_name, "on_trial_complete", driver.scheduler.on_trial_complete, None, trial,
                       result)
                callbacks("on_trial_complete", "complete", trial.trial_id, None, iteration=iteration,
                          trials=all_trials, trial=trial)
                live.remove(entry)
        step_end()
    start = time.perf_counter()
    for callback in driver.callbacks:
        callback.on_experiment_end(trials=all_trials)
    timings.add("all callbacks", "on_experiment_end", time.perf_counter() - start)
    return timings, stream


def replay(stream: list, callbacks: list, storage_root: Path, *, max_trials: Optional[int] = None) -> Timings:
    """Feed a recorded event stream (drive's) to `callbacks` alone."""
    mirror = Mirror(callbacks, storage_root, max_trials)
    if max_trials is not None:  # up to the selected trials' last event: later steps would only pad the steps
        chosen = {t for kind, t, _ in stream if kind == "start"}
        chosen = set(sorted(chosen, key=[t for kind, t, _ in stream if kind == "start"].index)[:max_trials])
        last = max(i for i, (kind, t, _) in enumerate(stream) if t in chosen)
        stream = stream[: last + 1]
    iteration = 0
    for kind, trial_id, payload in stream:
        mirror.event(kind, trial_id, payload, iteration)
        iteration += kind == "step"
    return mirror.end()


def default_callbacks() -> list:
    """Tune's own callbacks of every search (CSV, JSON, TensorBoard loggers, trial progress)."""
    from ray.tune.utils.callback import _create_default_callbacks

    return _create_default_callbacks([], metric=None, mode=None)


def old_wandb_callback(run_dir: Path) -> Any:
    """The W&B callback as `ibft tune` installed it before issue 19: Ray's WandbLoggerCallback (a blocking
    Queue.put per result) with this project's flushing logging actor."""
    from ray.air.integrations.wandb import WandbLoggerCallback

    from search.wandb_logging import _FlushingWandbLoggingActor

    class RayWandbLoggerCallback(WandbLoggerCallback):
        _logger_actor_cls = _FlushingWandbLoggingActor

    (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
    return RayWandbLoggerCallback(project="ibft-search", group="bench", excludes=["setup"], mode="offline",
                                  dir=str(run_dir / "wandb"))


def new_wandb_callback(run_dir: Path) -> Any:
    from search.wandb_logging import WandbCallback

    (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
    return WandbCallback(project="ibft-search", group="bench", excludes=["setup"], mode="offline",
                         dir=str(run_dir / "wandb"))


def _quantiles(seconds: list[float]) -> tuple[float, float]:
    return 1000 * statistics.median(seconds), 1000 * max(seconds)


def report(timings: Timings, title: str) -> None:
    print(f"{title}: {timings.trials} trials, {timings.results} results, {timings.steps} loop steps")
    print(f"  {'component':28s} {'event':18s} {'calls':>6s} {'mean ms':>16s} {'median ms':>10s} {'max ms':>9s}")
    for (component, event), seconds in sorted(timings.calls.items()):
        if event == "on_experiment_end":
            continue
        median, worst = _quantiles(seconds)
        if event in RESULT_EVENTS:
            shown = f"{1000 * sum(seconds) / max(1, timings.results):9.3f}/result"
        elif event in STEP_EVENTS:
            shown = f"{1000 * sum(seconds) / max(1, timings.steps):11.3f}/step"
        else:
            shown = f"{1000 * statistics.mean(seconds):10.3f}/trial"
        print(f"  {component:28s} {event:18s} {len(seconds):6d} {shown:>16s} {median:10.3f} {worst:9.1f}")
    print(f"  per result: {timings.total_per_result_ms():.3f} ms (slowest {timings.worst_result_ms():.1f} ms); "
          f"per loop step: {timings.per_step_ms():.3f} ms")
    end = timings.calls.get(("all callbacks", "on_experiment_end"))
    if end:
        print(f"  on_experiment_end (all callbacks): {end[0]:.2f} s")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--rungs", type=int, default=4, help="rungs of a full trial (ASHA stops many before)")
    parser.add_argument("--old-wandb", type=int, default=6, metavar="K",
                        help="also replay the first K trials through Ray's stock W&B callback and ours (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)

    from search.tuner import RAY_ENV

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    tmp = Path(tempfile.mkdtemp(prefix="driver_pace_"))
    try:
        driver = build_driver(space_file(tmp, args.trials, "offline", args.rungs), tmp / "runs" / "pace")
        mirror = Mirror(default_callbacks(), tmp / "reference")
        timings, stream = drive(driver, args.trials, args.seed, reference=mirror)
        reference = mirror.end()
        del driver
        report(timings, "driver (ibft tune's scheduler, searcher and callbacks + Tune's defaults)")
        report(reference, "reference (the same results, at the same moments, through Tune's default callbacks only)")
        mine, base = timings.total_per_result_ms(), reference.total_per_result_ms()
        print(f"driver: {mine:.3f} ms/result; reference: {base:.3f} ms/result; ratio driver/reference: "
              f"{mine / base:.2f}")
        print(f"slowest result: driver {timings.worst_result_ms():.1f} ms, reference {reference.worst_result_ms():.1f} "
              f"ms; ratio {timings.worst_result_ms() / max(1e-9, reference.worst_result_ms()):.2f}")
        if args.old_wandb > 0:
            old = replay(stream, [old_wandb_callback(tmp / "old")], tmp / "old", max_trials=args.old_wandb)
            report(old, "Ray's WandbLoggerCallback (before issue 19)")
            new = replay(stream, [new_wandb_callback(tmp / "new")], tmp / "new", max_trials=args.old_wandb)
            report(new, "search.wandb_logging.WandbCallback")
            a, b = old.total_per_result_ms(), new.total_per_result_ms()
            print(f"W&B callback on the first {args.old_wandb} trials' {new.results} results: before {a:.3f} "
                  f"ms/result (slowest {old.worst_result_ms():.1f}), now {b:.3f} ms/result (slowest "
                  f"{new.worst_result_ms():.1f}); ratio before/now: {a / b:.1f}")
    finally:
        ray.shutdown()
        if args.keep:
            print(f"scratch: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
