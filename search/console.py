"""What `ibft tune` prints while a search runs, and where everything else it used to print goes.

By default the console (stderr) carries: Ray's trial table, each followed by a progress line (trials ended,
running, budget spent, the front's hypervolume so far); one line per ASHA decision (search.asha); one line per
trial start and end (role, parameters, the seconds to its first batch); one line per trial error (the exception
and the path of its traceback); errors of Ray itself; and the Pareto front at the end (search.commands.tune).
Everything else goes to RUN_DIR/logs/, whose paths are printed once at the start:

- workers.log: the output of every Ray worker process (Ray Train controllers and workers, the trials' own
  lines, transformers' bars and warnings, raylet warnings), as Ray would print it on the console;
- wandb.log: the W&B logging actors' output (the offline banner, the run summaries, the sync advice);
- driver.log: Ray's and Optuna's own log records on the driver (Ray's start-up and auth-token notices, Tune's
  slow-callback warnings, each failed trial's full traceback).

`ibft tune --verbose` leaves Ray's routing alone: everything on the console as before (the trial lines and the
progress line are printed either way). Ray's own session logs (every process, C++ included) stay where Ray
keeps them; that directory is printed with the others.

How: worker output reaches the driver through Ray's log subscription (ray.init(log_to_driver=True)); Ray's
handler that prints it is swapped for one that writes the files (ray._private.ray_logging's dispatcher, the hook
Ray's own client server uses). ray.init(log_to_driver=False) would silence the console too, but leave the output
only in Ray's per-process session files, one per worker pid, where a trial's lines are hard to find. Worker lines
a user must see on the console pass through: the autoscaler's events (as Ray prints them) and a trial's
"has waited ... for resources" lines (trainables.tune_trainable.resource_wait_line).

The pure functions (line formats, progress) take plain data; SearchConsole (a Tune Callback) and
search.tuner.StderrReporter feed them Tune's trials.
"""
from __future__ import annotations

import logging
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from ray.tune import Callback

from search.optuna_bridge import OPTUNA_NUMBER_KEY, ROLE_KEY, RUNG_KEY
from trainables.train.start_clock import START_SECONDS_KEY  # (optional in a result: runs before it lack it)

LOGS_DIR = "logs"
WORKERS_LOG = "workers.log"
WANDB_LOG = "wandb.log"
DRIVER_LOG = "driver.log"

STEP_KEY = "step"
TIME_KEY = "time_total_s"
"""Tune's result key: seconds the trial has run."""

PASSED_WORKER_LINES = re.compile(r"^trial \S+ has waited \d+ s for resources")
"""Worker lines that reach the console in quiet mode too (a trial waiting for its placement group)."""
TUNE_TRIAL_FAILED = "Trial task failed for trial"
"""Tune's ERROR record of a failed trial (with the whole traceback): the console has the trial's error line."""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure)(?:\([\w.]+\))?): ?(.*)$")


# ---------------------------------------------------------------------------------------------- trial lines


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


def trial_label(trial_id: str, config: dict) -> str:
    """"trial 0ac84e39 (#2, search)": Tune's id, the Optuna trial number and the role."""
    extra = []
    if config.get(OPTUNA_NUMBER_KEY) is not None:
        extra.append(f"#{config[OPTUNA_NUMBER_KEY]}")
    if config.get(ROLE_KEY):
        extra.append(str(config[ROLE_KEY]))
    return f"trial {trial_id}" + (f" ({', '.join(extra)})" if extra else "")


def format_params(config: dict) -> str:
    """The searched parameters of a trial: "alpha=0.0125 beta=0.0269 tap=25 prior=mog(components=2)"."""
    parts = []
    for key, shown in (("alpha", "alpha"), ("beta", "beta"), ("tap_layer", "tap")):
        if key in config:
            parts.append(f"{shown}={_number(config[key])}")
    if "prior" in config:
        prior = str(config["prior"])
        options = config.get("prior_options")
        if isinstance(options, dict) and options:
            prior += "(" + ",".join(f"{k}={_number(v)}" for k, v in sorted(options.items())) + ")"
        parts.append(f"prior={prior}")
    return " ".join(parts)


def start_line(trial_id: str, config: dict, attempt: int = 1) -> str:
    again = "" if attempt <= 1 else f" again (attempt {attempt})"
    params = format_params(config)
    return f"{trial_label(trial_id, config)} started{again}" + (f": {params}" if params else "")


def _timing(result: dict) -> str:
    parts = []
    start = result.get(START_SECONDS_KEY)
    if isinstance(start, (int, float)) and math.isfinite(start):
        parts.append(f"first batch {start:.1f} s after its start")
    total = result.get(TIME_KEY)
    if isinstance(total, (int, float)) and math.isfinite(total):
        parts.append(f"{total:.0f} s in all")
    return "; ".join(parts)


def end_line(trial_id: str, config: dict, result: dict, num_rungs: int, metrics: Sequence[str]) -> str:
    """A trial that ended without error: finished (all rungs) or stopped (by ASHA, or before its last rung)."""
    rung = result.get(RUNG_KEY)
    how = "finished" if isinstance(rung, int) and rung >= num_rungs else "stopped"
    where = f"rung {rung if rung is not None else 0}/{num_rungs}"
    if result.get(STEP_KEY) is not None:
        where += f", step {result[STEP_KEY]}"
    shown = " ".join(f"{m}={_number(result[m])}" for m in metrics if m in result)
    line = f"{trial_label(trial_id, config)} {how} at {where}"
    if shown:
        line += f": {shown}"
    timing = _timing(result)
    if timing:
        line += f" ({timing})"
    return line


def error_summary(text: Optional[str]) -> str:
    """The one line of a trial's error text (Tune's error.txt, a traceback) that says what went wrong: its last
    "SomeError: message" line, else its last non-empty line."""
    if not text:
        return "error (no message recorded)"
    lines = [_ANSI.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    return lines[-1] if lines else "error (no message recorded)"


def error_line(
    trial_id: str, config: dict, result: dict, num_rungs: int, summary: str, traceback_path: Optional[str],
    *, retrying: bool = False, attempt: int = 1,
) -> str:
    rung = result.get(RUNG_KEY) or 0
    label = trial_label(trial_id, config)
    if retrying:
        line = f"{label} failed after rung {rung}/{num_rungs} (attempt {attempt}; Tune retries it)"
    else:
        line = f"{label} ERROR after rung {rung}/{num_rungs}"
    line += f": {summary}"
    if traceback_path:
        line += f" [traceback: {traceback_path}]"
    return line


# ---------------------------------------------------------------------------------------------- progress


@dataclass
class ProgressSpec:
    """What the progress line needs of the space (plain data: it travels pickled with the Tuner)."""

    num_samples: int
    max_steps: int
    num_rungs: int
    objectives: list[tuple[str, str]] = field(default_factory=list)
    """(metric, mode) per objective."""

    @classmethod
    def of(cls, space: Any) -> "ProgressSpec":
        return cls(
            num_samples=int(space.num_samples),
            max_steps=int(space.training.max_steps),
            num_rungs=int(space.num_rungs),
            objectives=[(o.metric, o.mode) for o in space.objectives],
        )


@dataclass
class Progress:
    trials: int = 0
    """Trials Tune knows of (started or pending)."""
    num_samples: int = 0
    finished: int = 0
    stopped: int = 0
    errored: int = 0
    running: int = 0
    pending: int = 0
    steps: int = 0
    max_steps: int = 0
    rungs: int = 0
    num_rungs: int = 0
    front: int = 0
    hypervolume: Optional[float] = None
    """None: no finished trial yet (or no objectives)."""

    @property
    def ended(self) -> int:
        return self.finished + self.stopped + self.errored


def compute_progress(trials: Iterable[tuple[str, dict]], spec: ProgressSpec) -> Progress:
    """Progress of a search from (Tune status, last result) per trial: status PENDING, RUNNING, PAUSED,
    TERMINATED (finished when its last rung is num_rungs, else stopped) or ERROR."""
    from search.pareto import hypervolume, non_dominated, reference_point

    p = Progress(num_samples=spec.num_samples, num_rungs=spec.num_samples * spec.num_rungs,
                 max_steps=spec.num_samples * spec.max_steps)
    points: list[list[float]] = []
    for status, result in trials:
        result = result or {}
        p.trials += 1
        rung = result.get(RUNG_KEY)
        step = result.get(STEP_KEY)
        p.rungs += int(rung) if isinstance(rung, (int, float)) and not isinstance(rung, bool) else 0
        p.steps += int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else 0
        if status == "ERROR":
            p.errored += 1
        elif status == "TERMINATED":
            if isinstance(rung, (int, float)) and rung >= spec.num_rungs:
                p.finished += 1
                values = [result.get(metric) for metric, _ in spec.objectives]
                if spec.objectives and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                    points.append([float(v) for v in values])
            else:
                p.stopped += 1
        elif status in ("RUNNING", "PAUSED"):
            p.running += 1
        else:
            p.pending += 1
    if points:
        modes = [mode for _, mode in spec.objectives]
        front = [points[i] for i in non_dominated(points, modes)]
        p.front = len(front)
        p.hypervolume = hypervolume(front, modes, reference_point(spec.objectives, points))
    return p


def progress_line(p: Progress) -> str:
    """ "progress: 3/5 trials ended (1 finished, 1 stopped, 1 errored), 2 running | budget 14/20 steps (70%),
    7/10 trial-rungs | front 1 trial(s), hypervolume 0.25" """
    ended = f"{p.ended}/{p.num_samples} trials ended ({p.finished} finished, {p.stopped} stopped, {p.errored} errored)"
    active = f"{p.running} running" + (f", {p.pending} pending" if p.pending else "")
    share = f" ({100 * p.steps / p.max_steps:.0f}%)" if p.max_steps else ""
    budget = f"budget {p.steps}/{p.max_steps} steps{share}, {p.rungs}/{p.num_rungs} trial-rungs"
    if p.hypervolume is None:
        front = "front: no finished trial yet"
    else:
        front = f"front {p.front} trial(s), hypervolume {p.hypervolume:.4g}"
    return f"progress: {ended}, {active} | {budget} | {front}"


def tune_trials_progress(trials: Iterable[Any], spec: ProgressSpec, ending: Optional[tuple[Any, str]] = None) -> str:
    """The progress line of Tune's trials; `ending`: (trial, status) of a trial whose end a callback is being told
    of (Tune calls on_trial_complete / on_trial_error before it sets the trial's status)."""
    def status(t: Any) -> str:
        return ending[1] if ending is not None and t is ending[0] else str(t.status)

    return progress_line(compute_progress(((status(t), t.last_result or {}) for t in trials), spec))


# ---------------------------------------------------------------------------------------------- Tune callback


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _error_text(trial: Any) -> tuple[Optional[str], Optional[str]]:
    """(text of the trial's latest failure, path of its traceback file) as Tune recorded them."""
    path = getattr(trial, "error_file", None)
    text = None
    if path and Path(path).is_file():
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            text = None
        if text and "\nFailure # " in "\n" + text:
            text = text[text.rfind("Failure # "):]  # the file holds every failure; the latest is last
    # Where it stays: the trial's directory in RUN_DIR/tune/ (Tune copies it there; this is the driver's copy).
    try:
        import pyarrow.fs

        if path and isinstance(trial.storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            path = str(Path(trial.storage.trial_fs_path) / Path(path).name)
    except Exception:  # noqa: BLE001 - the driver's copy is as good
        pass
    return text, path


class SearchConsole(Callback):
    """Tune callback printing one line per trial start and end (and error), and the progress line after each
    end. Holds plain data only: Tune pickles it with the Tuner, and a resumed search runs the pickled one."""

    def __init__(self, spec: ProgressSpec, echo: Optional[Callable[[str], None]] = None) -> None:
        self.spec = spec
        self._echo = echo
        self._attempts: dict[str, int] = {}

    @classmethod
    def of(cls, space: Any, echo: Optional[Callable[[str], None]] = None) -> "SearchConsole":
        return cls(ProgressSpec.of(space), echo)

    def _say(self, line: str) -> None:
        (self._echo or _echo)(line)

    def _metrics(self) -> list[str]:
        return [m for m, _ in self.spec.objectives]

    def on_trial_start(self, iteration, trials, trial, **info):
        attempt = self._attempts.get(trial.trial_id, 0) + 1
        self._attempts[trial.trial_id] = attempt
        self._say(start_line(trial.trial_id, trial.config, attempt))

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        self._say(end_line(trial.trial_id, trial.config, result, self.spec.num_rungs, self._metrics()))
        self._say(tune_trials_progress(trials, self.spec, ending=(trial, "TERMINATED")))

    def on_trial_recover(self, iteration, trials, trial, **info):
        text, path = _error_text(trial)
        attempt = self._attempts.get(trial.trial_id, 1)
        self._say(error_line(trial.trial_id, trial.config, trial.last_result or {}, self.spec.num_rungs,
                             error_summary(text), path, retrying=True, attempt=attempt))

    def on_trial_error(self, iteration, trials, trial, **info):
        text, path = _error_text(trial)
        self._say(error_line(trial.trial_id, trial.config, trial.last_result or {}, self.spec.num_rungs,
                             error_summary(text), path))
        self._say(tune_trials_progress(trials, self.spec, ending=(trial, "ERROR")))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_echo"] = None  # a test's list, or a closure: not for the Tuner's pickle
        return state


# ---------------------------------------------------------------------------------------------- log routing


def worker_prefix(data: dict) -> str:
    """Ray's prefix of a worker's line ("(RayTrainWorker pid=123)", "(raylet)", ", ip=..." off the head)."""
    pid = data.get("pid")
    if pid in ("raylet", "autoscaler"):
        return f"({pid})"
    name = data.get("actor_name") or data.get("task_name") or ""
    ip = data.get("ip")
    where = "" if not ip or ip == data.get("localhost") else f", ip={ip}"
    return f"({name + ' ' if name else ''}pid={pid}{where})"


def is_wandb_output(data: dict) -> bool:
    return "Wandb" in str(data.get("actor_name") or data.get("task_name") or "")


class LogFiles:
    """RUN_DIR/logs/: where a quiet search sends Ray's worker output and the driver's Ray/Optuna log records."""

    def __init__(self, run_dir: Path, echo: Optional[Callable[[str], None]] = None) -> None:
        self.dir = Path(run_dir) / LOGS_DIR
        self.workers = self.dir / WORKERS_LOG
        self.wandb = self.dir / WANDB_LOG
        self.driver = self.dir / DRIVER_LOG
        self._echo = echo or _echo
        self._files: dict[Path, Any] = {}
        self._handlers: list[tuple[logging.Logger, logging.Handler]] = []
        self._console_filters: list[tuple[logging.Handler, logging.Filter, int]] = []
        self._optuna_verbosity: Optional[int] = None
        self._ray_level: Optional[int] = None

    def _file(self, path: Path):
        f = self._files.get(path)
        if f is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            f = self._files[path] = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
            f.write(f"===== ibft tune {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
        return f

    # Driver side, before ray.init: Ray's and Optuna's records go to driver.log, errors still to the console.
    def route_driver_logs(self) -> None:
        formatter = logging.Formatter("%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s")
        to_file = logging.StreamHandler(self._file(self.driver))
        to_file.setFormatter(formatter)
        ray_logger = logging.getLogger("ray")
        self._ray_level = ray_logger.level  # ray.init(logging_level=...) changes it
        quiet = _ConsoleErrorsOnly()
        for handler in list(ray_logger.handlers):
            self._console_filters.append((handler, quiet, handler.level))
            handler.addFilter(quiet)
            handler.setLevel(logging.ERROR)
        ray_logger.addHandler(to_file)
        self._handlers.append((ray_logger, to_file))
        try:
            import optuna

            optuna_logger = logging.getLogger("optuna")
            optuna_file = logging.StreamHandler(self._file(self.driver))
            optuna_file.setFormatter(formatter)
            optuna_logger.addHandler(optuna_file)
            self._handlers.append((optuna_logger, optuna_file))
            self._optuna_verbosity = optuna.logging.get_verbosity()
            optuna.logging.disable_default_handler()
            optuna.logging.set_verbosity(optuna.logging.INFO)
            console = logging.StreamHandler(sys.stderr)  # Optuna's own warnings stay on the console
            console.setLevel(logging.WARNING)
            console.setFormatter(logging.Formatter("[%(levelname)1.1s %(asctime)s] %(message)s"))
            optuna_logger.addHandler(console)
            self._handlers.append((optuna_logger, console))
        except ImportError:
            pass

    # After ray.init: worker output to workers.log / wandb.log instead of the console.
    def route_worker_output(self) -> bool:
        """Swap Ray's printing of worker output for the files; False where this Ray has no such hook (its output
        then stays on the console)."""
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        except ImportError:
            return False
        if not any(name == "ray_print_logs" for name, _ in getattr(dispatcher, "handlers", [])):
            return False
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ibft_log_files", self.write_worker_output)
        return True

    def write_worker_output(self, data: dict) -> None:
        try:
            if data.get("pid") == "autoscaler":  # cluster events (nodes added, requests it cannot meet)
                from ray._private.worker import print_to_stdstream

                print_to_stdstream(data, ignore_prefix=False)
                return
            target = self._file(self.wandb if is_wandb_output(data) else self.workers)
            prefix = worker_prefix(data)
            for line in data.get("lines", []):
                target.write(f"{prefix} {line}\n")
                if PASSED_WORKER_LINES.match(_ANSI.sub("", line)):
                    self._echo(line)
        except Exception as e:  # noqa: BLE001 - a log line must never stop Ray's log thread
            print(f"ibft tune: could not write worker output to {self.dir}: {e}", file=sys.stderr)

    def announce(self, ray_logs: Optional[str], workers_routed: bool = True) -> str:
        """Print, once, where the console's left-outs go."""
        where = f"Ray worker output -> {self.workers}; W&B -> {self.wandb}; " if workers_routed else ""
        text = (
            f"logs: {where}Ray and Optuna messages -> {self.driver}"
            + (f"; Ray's own session logs -> {ray_logs}" if ray_logs else "")
            + " (ibft tune --verbose prints them here instead)"
        )
        if not workers_routed:
            text += "; this Ray offers no hook for worker output, so it stays on the console"
        self._echo(text)
        return text

    def close(self) -> None:
        """Undo the routing (after ray.shutdown) and close the files."""
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

            dispatcher.remove_handler("ibft_log_files")
        except ImportError:
            pass
        for logger, handler in self._handlers:
            logger.removeHandler(handler)
        self._handlers.clear()
        for handler, quiet, level in self._console_filters:
            handler.removeFilter(quiet)
            handler.setLevel(level)
        self._console_filters.clear()
        if self._ray_level is not None:
            logging.getLogger("ray").setLevel(self._ray_level)
            self._ray_level = None
        if self._optuna_verbosity is not None:
            import optuna

            optuna.logging.set_verbosity(self._optuna_verbosity)
            optuna.logging.enable_default_handler()
            self._optuna_verbosity = None
        for f in self._files.values():
            try:
                f.close()
            except OSError:
                pass
        self._files.clear()


class _ConsoleErrorsOnly(logging.Filter):
    """Ray's console handler in a quiet search: errors, except Tune's traceback of a failed trial (the trial's
    error line says what failed and where the traceback is; driver.log has the record too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return False
        return not str(record.msg).startswith(TUNE_TRIAL_FAILED)


def ray_session_logs() -> Optional[str]:
    """The Ray session's log directory on this node (None when not known, e.g. a client connection)."""
    try:
        import ray._private.worker as worker

        node = getattr(worker, "_global_node", None)
        return node.get_logs_dir_path() if node is not None else None
    except Exception:  # noqa: BLE001
        return None
