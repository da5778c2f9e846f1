"""`ibft tune`'s console (search.console): the trial and progress lines as pure functions, the Tune callback on
stand-in trials, the routing of Ray's and Optuna's driver records and of worker output to RUN_DIR/logs/, and
`--verbose` reaching run_search. The real search's console is checked in test_tune_e2e.py (the shared smoke
search); one test here starts a small local Ray to see worker output routed, and left alone with --verbose."""
from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from search.console import (
    LogFiles,
    Progress,
    ProgressSpec,
    SearchConsole,
    compute_progress,
    end_line,
    error_line,
    error_summary,
    format_params,
    progress_line,
    start_line,
    worker_prefix,
)

OBJECTIVES = [("val/pass@1", "max"), ("val/pass@2(2)", "max")]
SPEC = ProgressSpec(num_samples=5, max_steps=4, num_rungs=2, objectives=OBJECTIVES)
CONFIG = {
    "optuna_trial": 2, "role": "search", "alpha": 0.0125207, "beta": 0.02, "tap_layer": 0.6666667, "prior": "mog",
    "prior_options": {"components": 2}, "setup": {"big": "not shown"},
}


def test_start_line_names_the_trial_its_role_and_parameters():
    assert start_line("0ac84e39", CONFIG) == (
        "trial 0ac84e39 (#2, search) started: alpha=0.01252 beta=0.02 tap=0.6667 prior=mog(components=2)"
    )
    baseline = {
        "optuna_trial": 0, "role": "baseline", "alpha": 0.0, "beta": 0.0, "tap_layer": 20, "prior": "standard_normal"
    }
    assert start_line("b30b1c8a", baseline, attempt=2) == (
        "trial b30b1c8a (#0, baseline) started again (attempt 2): alpha=0 beta=0 tap=20 prior=standard_normal"
    )
    assert format_params({}) == ""


def test_end_line_says_finished_or_stopped_with_metrics_and_start_time():
    result = {
        "rung": 2, "step": 4, "val/pass@1": 0.875, "val/pass@2(2)": 0.75, "start/seconds": 12.34, "time_total_s": 95.2
    }
    assert end_line("t1", CONFIG, result, 2, [m for m, _ in OBJECTIVES]) == (
        "trial t1 (#2, search) finished at rung 2/2, step 4: val/pass@1=0.875 val/pass@2(2)=0.75 "
        "(first batch 12.3 s after its start; 95 s in all)"
    )
    # start/seconds is optional (runs recorded before it existed), and a trial ASHA stopped ends before max_t.
    metrics = ["val/pass@1", "val/pass@2(2)"]
    stopped = end_line("t2", {"role": "paper"}, {"rung": 1, "step": 2, "val/pass@1": 0.5}, 2, metrics)
    assert stopped == "trial t2 (paper) stopped at rung 1/2, step 2: val/pass@1=0.5"


TUNE_ERROR = """Failure # 1 (occurred at 2026-12-01_04-51-02)
\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=9930, ip=192.0.2.2, repr=run_trial)
  File "/work/main/trainables/tune_trainable.py", line 323, in _worker_loop
    raise NonFiniteTrialError(str(e)) from None
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0 Error Snippet]:
  File "/work/main/trainables/tune_trainable.py", line 292, in _worker_loop
trainables.tune_trainable.NonFiniteTrialError: non-finite loss at optimizer step 1 (loss=nan)

"""


def test_error_summary_is_the_last_exception_line_of_the_traceback():
    assert error_summary(TUNE_ERROR) == (
        "trainables.tune_trainable.NonFiniteTrialError: non-finite loss at optimizer step 1 (loss=nan)"
    )
    assert error_summary("something odd\nno exception here\n") == "no exception here"
    assert error_summary(None) == error_summary("") == "error (no message recorded)"
    assert error_summary("ray.exceptions.RayTaskError(WorkerGroupError): boom") == (
        "ray.exceptions.RayTaskError(WorkerGroupError): boom"
    )


def test_error_line_has_the_summary_and_the_traceback_path():
    line = error_line("t3", {"role": "search", "optuna_trial": 4}, {}, 2, "ValueError: bad", "/r/tune/t3/error.txt")
    assert line == "trial t3 (#4, search) ERROR after rung 0/2: ValueError: bad [traceback: /r/tune/t3/error.txt]"
    retry = error_line("t3", {}, {"rung": 1}, 2, "ValueError: bad", None, retrying=True, attempt=1)
    assert retry == "trial t3 failed after rung 1/2 (attempt 1; Tune retries it): ValueError: bad"


def _trials():
    return [
        ("TERMINATED", {"rung": 2, "step": 4, "val/pass@1": 0.5, "val/pass@2(2)": 0.25}),  # finished
        ("TERMINATED", {"rung": 2, "step": 4, "val/pass@1": 0.25, "val/pass@2(2)": 0.5}),  # finished
        ("TERMINATED", {"rung": 2, "step": 4, "val/pass@1": 0.2, "val/pass@2(2)": 0.2}),  # finished, dominated
        ("TERMINATED", {"rung": 1, "step": 2, "val/pass@1": 0.9, "val/pass@2(2)": 0.9}),  # stopped: not on the front
        ("ERROR", {"rung": 1, "step": 2}),
        ("RUNNING", {"rung": 1, "step": 2}),
        ("PENDING", {}),
    ]


def test_progress_counts_trials_budget_and_the_front_hypervolume():
    p = compute_progress(_trials(), ProgressSpec(num_samples=10, max_steps=4, num_rungs=2, objectives=OBJECTIVES))
    assert (p.finished, p.stopped, p.errored, p.running, p.pending, p.ended) == (3, 1, 1, 1, 1, 5)
    assert (p.steps, p.max_steps, p.rungs, p.num_rungs) == (4 * 3 + 2 * 3, 40, 2 * 3 + 3, 20)
    assert p.front == 2
    # Pass rates count from 0: the union of [0, .5]x[0, .25] and [0, .25]x[0, .5].
    assert p.hypervolume == pytest.approx(0.5 * 0.25 + 0.25 * 0.5 - 0.25 * 0.25)
    assert progress_line(p) == (
        "progress: 5/10 trials ended (3 finished, 1 stopped, 1 errored), 1 running, 1 pending | budget 18/40 steps "
        "(45%), 9/20 trial-rungs | front 2 trial(s), hypervolume 0.1875"
    )


def test_progress_before_any_trial_finished():
    p = compute_progress([("RUNNING", {}), ("PENDING", None)], SPEC)
    assert p.hypervolume is None and p.front == 0
    assert progress_line(p) == (
        "progress: 0/5 trials ended (0 finished, 0 stopped, 0 errored), 1 running, 1 pending | budget 0/20 steps "
        "(0%), 0/10 trial-rungs | front: no finished trial yet"
    )
    assert progress_line(Progress()).startswith("progress: 0/0 trials ended")  # no budget: no share


def test_hypervolume_reference_is_a_pass_rate_bound_else_the_worst_value_seen():
    from search.pareto import reference_point as hypervolume_reference  # (the report's too)

    objectives = [("val/pass@1", "max"), ("memorization/gap", "min"), ("test/pass@1", "min"), ("val/loss", "max")]
    points = [[0.5, 0.1, 0.2, 3.0], [0.2, 0.4, 0.3, 1.0]]
    assert hypervolume_reference(objectives, points) == [0.0, 0.4, 1.0, 1.0]


def _trial(trial_id: str, status: str, result: dict, config: dict | None = None):
    return SimpleNamespace(
        trial_id=trial_id, status=status, last_result=result, config=config or {"role": "search"}, error_file=None,
        storage=None,
    )


def test_search_console_prints_start_end_and_progress_counting_the_trial_that_ends():
    lines: list[str] = []
    console = SearchConsole(SPEC, echo=lines.append)
    done = _trial("a", "RUNNING", {"rung": 2, "step": 4, "val/pass@1": 0.5, "val/pass@2(2)": 0.5, "start/seconds": 3.0})
    other = _trial("b", "RUNNING", {"rung": 1, "step": 2})
    console.on_trial_start(iteration=1, trials=[done, other], trial=done)
    # Tune tells callbacks of a trial's end before it sets the trial's status: the progress counts it as ended.
    console.on_trial_complete(iteration=2, trials=[done, other], trial=done)
    assert lines[0] == "trial a (search) started"
    assert lines[1].startswith(
        "trial a (search) finished at rung 2/2, step 4: val/pass@1=0.5 val/pass@2(2)=0.5 (first batch 3.0 s"
    )
    assert lines[2].startswith("progress: 1/5 trials ended (1 finished, 0 stopped, 0 errored), 1 running |")
    assert lines[2].endswith("front 1 trial(s), hypervolume 0.25")

    done.status = "TERMINATED"  # as Tune sets it after the callbacks
    console.on_trial_error(iteration=3, trials=[done, other], trial=other)
    assert lines[3] == "trial b (search) ERROR after rung 1/2: error (no message recorded)"
    assert "2/5 trials ended (1 finished, 0 stopped, 1 errored), 0 running" in lines[4]


def test_search_console_pickles_with_the_tuner_without_its_echo():
    console = SearchConsole(SPEC, echo=[].append)
    copy = pickle.loads(pickle.dumps(console))
    assert copy.spec == SPEC and copy._echo is None


def test_error_file_path_is_the_run_directory_copy_for_a_local_run(tmp_path):
    import pyarrow.fs

    from search.console import _error_text

    staging = tmp_path / "staging" / "run_trial_x"
    staging.mkdir(parents=True)
    (staging / "error.txt").write_text(
        "Failure # 1 (occurred at x)\nKeyError: 'a'\nFailure # 2 (occurred at y)\nValueError: b\n"
    )
    trial = SimpleNamespace(
        error_file=str(staging / "error.txt"),
        storage=SimpleNamespace(
            storage_filesystem=pyarrow.fs.LocalFileSystem(), trial_fs_path=str(tmp_path / "run" / "tune" / "run_trial_x")
        ),
    )
    text, path = _error_text(trial)
    assert error_summary(text) == "ValueError: b"  # the latest failure
    assert path == str(tmp_path / "run" / "tune" / "run_trial_x" / "error.txt")


# ------------------------------------------------------------------------------------------- log routing


def test_worker_output_goes_to_its_file_and_resource_waits_to_the_console(tmp_path):
    echoed: list[str] = []
    files = LogFiles(tmp_path, echo=echoed.append)
    try:
        files.write_worker_output(
            {"pid": 11, "actor_name": "_FlushingWandbLoggingActor", "ip": "10.0.0.1", "localhost": "10.0.0.1",
             "lines": ["wandb: Tracking run with wandb version 0.31.0"], "is_err": True}
        )
        files.write_worker_output(
            {"pid": 12, "actor_name": "RayTrainWorker", "ip": "10.0.0.2", "localhost": "10.0.0.1",
             "lines": ["Setting up process group for: env://", "trial abc has waited 600 s for resources: 1 worker(s)"]}
        )
        files.write_worker_output({"pid": "raylet", "lines": ["WARNING: 8 PYTHON worker processes have been started"]})
    finally:
        files.close()
    wandb = (tmp_path / "logs" / "wandb.log").read_text()
    workers = (tmp_path / "logs" / "workers.log").read_text()
    assert "(_FlushingWandbLoggingActor pid=11) wandb: Tracking run" in wandb and "Tracking run" not in workers
    assert "(RayTrainWorker pid=12, ip=10.0.0.2) Setting up process group" in workers
    assert "(raylet) WARNING: 8 PYTHON worker" in workers
    assert echoed == ["trial abc has waited 600 s for resources: 1 worker(s)"]
    assert worker_prefix({"pid": 3, "task_name": "f", "ip": "a", "localhost": "a"}) == "(f pid=3)"


class _Console(logging.Handler):
    """Stands in for Ray's console handler on the "ray" logger (pytest's capture cannot see Ray's own)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_driver_records_go_to_driver_log_and_errors_stay_on_the_console(tmp_path, capfd):
    import optuna

    ray_root = logging.getLogger("ray")
    console = _Console()
    ray_root.addHandler(console)
    level = ray_root.level
    ray_logger = logging.getLogger("ray.tune.test_console")
    files = LogFiles(tmp_path)
    try:
        files.route_driver_logs()
        ray_root.setLevel(logging.INFO)  # as ray.init(logging_level="INFO") sets it in a quiet search
        ray_logger.warning("a slow callback, quietly")
        ray_logger.error("Trial task failed for trial run_trial_x\nTraceback ...")
        ray_logger.error("a real error of Ray")
        optuna.logging.get_logger("optuna.test").info("A new study created")
        optuna.logging.get_logger("optuna.test").warning("an optuna warning")
        files.close()
        assert ray_root.level == level  # close() gave the logger and its handlers back
        ray_root.setLevel(logging.WARNING)
        ray_logger.warning("loud again")
    finally:
        files.close()
        ray_root.removeHandler(console)
        ray_root.setLevel(level)
    err = capfd.readouterr().err
    driver = (tmp_path / "logs" / "driver.log").read_text()
    assert console.messages == ["a real error of Ray", "loud again"]
    assert "an optuna warning" in err and "A new study" not in err
    for text in ("a slow callback", "Trial task failed for trial run_trial_x", "a real error", "A new study created"):
        assert text in driver
    assert "loud again" not in driver


@pytest.mark.slow  # two local Ray starts, about half a minute on 2 cores
def test_real_ray_worker_output_is_routed_quietly_and_left_alone_verbose(tmp_path, capfd, monkeypatch):
    """search.tuner._connect as a search calls it: quiet (LogFiles) then --verbose, each on a fresh local Ray."""
    import signal

    import ray

    from search import tuner

    for key in tuner.RAY_ENV:
        monkeypatch.setenv(key, tuner.RAY_ENV[key])
    sigterm = signal.getsignal(signal.SIGTERM)
    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    def print_marker(text: str) -> None:  # nested: shipped to the worker by value (tests/ is not importable there)
        print(text, flush=True)

    marker = ray.remote(num_cpus=0)(print_marker)
    files = LogFiles(tmp_path, echo=lambda line: print(line, file=sys.stderr, flush=True))
    try:
        tuner._connect(None, files)
        ray.get(marker.remote("quiet-worker-marker"))
        _wait_for(lambda: "quiet-worker-marker" in _read(tmp_path / "logs" / "workers.log"))
        ray.shutdown()
        files.close()
        quiet = capfd.readouterr()
        assert "quiet-worker-marker" not in quiet.out + quiet.err
        assert f"logs: Ray worker output -> {tmp_path / 'logs' / 'workers.log'}" in quiet.err

        tuner._connect(None, None)  # --verbose: Ray prints worker output itself
        ray.get(marker.remote("verbose-worker-marker"))
        _wait_for(lambda: "verbose-worker-marker" in capfd.readouterr().out)
    finally:
        ray.shutdown()
        files.close()
        signal.signal(signal.SIGTERM, sigterm)
    assert "verbose-worker-marker" not in _read(tmp_path / "logs" / "workers.log")


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _wait_for(condition, timeout: float = 30.0) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("not seen in time")


# ------------------------------------------------------------------------------------------- the CLI flag


@pytest.mark.parametrize("argv, verbose", [([], False), (["--verbose"], True)])
def test_verbose_flag_reaches_run_search(argv, verbose, tmp_path, monkeypatch):
    import search.commands.tune as tune_command
    import search.tuner
    from search.cli import main

    from smoke_search import smoke_space_file

    seen = {}

    def fake_run_search(space, run_dir, **kwargs):
        seen.update(kwargs)
        return {"run_dir": str(run_dir), "states": {}, "interrupted": False, "exhausted": False, "pareto": []}

    monkeypatch.setattr(search.tuner, "run_search", fake_run_search)
    monkeypatch.setattr(tune_command, "emit_result", lambda outcome: None)
    space = smoke_space_file(tmp_path)
    assert main(["tune", str(space), "--storage-path", str(tmp_path / "runs"), *argv]) == 0
    assert seen["verbose"] is verbose


def test_the_log_paths_are_announced_once(tmp_path):
    said: list[str] = []
    files = LogFiles(tmp_path / "run", echo=said.append)
    files.announce("/tmp/ray/session_x/logs")
    files.announce(None, workers_routed=False)
    logs = tmp_path / "run" / "logs"
    assert said[0] == (
        f"logs: Ray worker output -> {logs / 'workers.log'}; W&B -> {logs / 'wandb.log'}; Ray and Optuna messages -> "
        f"{logs / 'driver.log'}; Ray's own session logs -> /tmp/ray/session_x/logs (ibft tune --verbose prints them "
        "here instead)"
    )
    assert said[1].startswith(f"logs: Ray and Optuna messages -> {logs / 'driver.log'}")
    assert "stays on the console" in said[1]
