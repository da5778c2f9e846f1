"""The Ray Tune trainable of a search: one trial = one Ray Train V2 run of the IB-FT loop, evaluated per rung.

The only module of `trainables` that imports ray. The search driver hands a trial plain data: config
"setup" (what every trial of the search shares, from the space file) plus the trial's IB parameters
(alpha, beta, tap_layer, prior, kl_reduction, encoder_input, prior_options), its Optuna trial number and its role.

A trial with one worker (resources.worker_in_trial, the default) trains in the Tune trial's own process instead:
no Ray Train controller, worker group or process group to start (trainables.train.start_clock measures where a
start goes), the same loop and hooks, its rung checkpoints stored where Ray Train stores them
(trainables.rung_checkpoints). Otherwise
run_trial (on the Tune side) launches a TorchTrainer whose workers run trainables.train.loop.train with
hooks that, every rung, evaluate val Pass@k(m) (the tasks split across ranks), and at the last rung the
test split too (and, when the space asks for it, the memorization analysis of the trained model on rank 0),
then `ray.train.report` the metrics, the loss components and throughput with the rung's checkpoint (which also
holds the rung's per-task pass counts, TASK_COUNTS_FILE, for the report's confidence intervals);
TuneReportCallback forwards each report to Tune (ASHA, Optuna).

Retries and resumes: the Train run of a trial is named after the trial in RUN_DIR/trials, so a retried or
resumed trial's new TorchTrainer finds the run's checkpoints and continues from the last rung. A trial
whose loss went non-finite leaves a marker and fails again at once on a retry: the same config would
diverge at the same step.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import ray.train
from ray import tune
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.tune.integration.ray_train import TuneReportCallback

from trainables import storage as run_storage
from trainables.errors import ConfigError
from trainables.ib.config import LEGACY_SEMANTICS
from trainables.ray_trainer import IBTorchTrainer
from trainables.train.start_clock import START_SECONDS_KEY

DRIVER_RESOURCES = {"cpu": 0, "memory": 64 * 1024**2}
"""The Tune-side function only waits on its Train run; the run's workers hold the real resources.

No CPU at all: even 0.01 CPU per driver left a 2-CPU node 0.02 short of two 1-CPU trials, so one
Train run waited for the other to finish. Ray refuses an empty bundle, so the driver asks for a
little memory instead (every node has that resource)."""


def trial_resources(setup: dict[str, Any]) -> dict[str, float]:
    """What the Tune-side function of each trial asks Ray for: one worker's CPUs (and GPUs) when the trial trains
    in its own process (trains_in_trial), else DRIVER_RESOURCES, its Train run's workers holding the rest."""
    if not trains_in_trial(setup):
        return dict(DRIVER_RESOURCES)
    resources = setup["resources"]
    out = {"cpu": float(resources["cpus_per_worker"])}
    if resources.get("gpus_per_worker"):
        out["gpu"] = float(resources["gpus_per_worker"])
    return out
PARAM_KEYS = ("alpha", "beta", "tap_layer", "prior", "kl_reduction", "encoder_input", "prior_options")
"""The trial config keys that go into its TrainConfig's `ib` section."""
RUNG_METRICS_FILE = "rung_metrics.json"
"""Written into each rung checkpoint: what was reported with it (a resumed finished run re-reports it)."""
TASK_COUNTS_FILE = "task_counts.json"
"""Written into each rung checkpoint: {"rung", "step", "val": {task_id: [n, c]}, "test": {...} (last rung only)},
every rank's tasks merged, so `ibft report` can bootstrap intervals over tasks (search.report.load reads it)."""
NONFINITE_MARKER = "nonfinite_loss.txt"
STOPPED_MARKER = "stopped_by_asha.json"
"""Written by the driver on --resume for every trial the study holds PRUNED (RUN_DIR/trials/<id>/), holding its
last reported result: Tune's last snapshot may still hold it RUNNING, and its restart must not train."""


class NonFiniteTrialError(RuntimeError):
    """The trial's loss went non-finite; retrying the same configuration cannot help."""


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """The trial's IB parameters (PARAM_KEYS) from its config. A config proposed before kl_reduction /
    encoder_input existed (a resumed old run's unfinished trial) lacks them: it started with LEGACY_SEMANTICS,
    and continues with them."""
    return {k: config.get(k, LEGACY_SEMANTICS[k]) if k in LEGACY_SEMANTICS else config[k] for k in PARAM_KEYS}


def train_config_dict(setup: dict[str, Any], params: dict[str, Any], *, output_dir: str, optuna_trial: Any) -> dict:
    """The TrainConfig (as a dict) of one trial: the space's shared settings plus the trial's IB parameters."""
    params = trial_params(params)
    model, training, ds = setup["model"], setup["training"], setup["deepspeed"]
    faults = setup.get("faults") or {}
    nan_step = faults.get("nan_at_step") if optuna_trial in faults.get("trials", []) else None
    return {
        "model": {
            "name_or_path": model["name_or_path"],
            "gguf_file": model.get("gguf_file"),
            "tokenizer": model.get("tokenizer"),
            "dtype": ds["precision"],
            "tiny_overrides": dict(model.get("tiny_overrides") or {}),
            "memorized": model.get("memorized"),
        },
        "lora": dict(setup["lora"]),
        "ib": {**{k: params[k] for k in PARAM_KEYS}, **(setup.get("ib") or {})},
        "data": dict(setup["data"]),
        "optim": {
            "lr": training["lr"],
            "weight_decay": training["weight_decay"],
            "warmup_steps": training["warmup_steps"],
            "min_lr_ratio": training["min_lr_ratio"],
            "max_steps": training["max_steps"],
            "batch_size": training["batch_size"],
            "grad_accum": training["grad_accum"],
            "max_grad_norm": training["max_grad_norm"],
            "gradient_checkpointing": training.get("gradient_checkpointing", False),
        },
        "deepspeed": (
            {
                "zero_stage": ds["zero_stage"],
                "offload_optimizer": ds["offload_optimizer"],
                "offload_params": ds["offload_params"],
            }
            if ds["enabled"]
            else None
        ),
        "seed": setup["seed"],
        "output_dir": output_dir,
        "log_every": 1,
        "checkpoint_every": 0,
        "keep_checkpoints": 2,
        "resume": False,
        "debug": {"fault_nan_at_step": nan_step},
    }


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: run (or continue) this trial (its Ray Train run, or its loop in this process for
    one worker: trains_in_trial) to its end or until ASHA stops it."""
    from trainables.train.config import TrainConfig

    started_at = time.time()
    setup = config["setup"]
    trial_id = tune.get_context().get_trial_id()
    # RUN_DIR is a shared directory or an object-store URI (trainables.storage): the trial's markers go through
    # trainables.storage, its checkpoints through Ray Train's storage, its work dir is node-local for a URI.
    trials_root = run_storage.join(setup["run_dir"], "trials")
    marker = run_storage.join(trials_root, trial_id, NONFINITE_MARKER)
    reason_text = run_storage.read_text(marker)
    if reason_text is not None:
        raise NonFiniteTrialError(reason_text.strip())
    stopped = run_storage.read_text(run_storage.join(trials_root, trial_id, STOPPED_MARKER))
    if stopped is not None:
        # ASHA stopped it before the driver was interrupted: it never trains again. Its last result goes to Tune
        # once more (a trial that runs must report the search's metrics), and the scheduler answers STOP.
        tune.report(json.loads(stopped))
        return
    params = trial_params(config)
    work_dir = run_storage.trial_work_dir(setup["run_dir"], trial_id)
    train_dict = train_config_dict(setup, params, output_dir=str(work_dir), optuna_trial=config.get("optuna_trial"))
    TrainConfig.from_dict(train_dict)  # a bad combination fails here, before any worker starts
    resources = setup["resources"]
    start_marks = {"start": started_at}  # trainables.train.start_clock: where this trial's start goes
    if trains_in_trial(setup):
        from trainables.train.start_clock import StartClock

        start_marks["trial"] = time.time()
        _train_in_trial(setup, train_dict, trial_id, StartClock(start_marks), marker)
        return
    per_worker = {"CPU": resources["cpus_per_worker"]}
    if resources["gpus_per_worker"]:
        per_worker["GPU"] = resources["gpus_per_worker"]
    trainer = IBTorchTrainer(
        _worker_loop,
        train_loop_config={"train": train_dict, "setup": setup, "start_marks": start_marks},
        scaling_config=ScalingConfig(
            num_workers=resources["workers"],
            use_gpu=bool(resources["gpus_per_worker"]),
            resources_per_worker=per_worker,
            # With an object-store RUN_DIR each node's work dir is its own, and the loop commits a step checkpoint
            # on rank 0's node only: a trial split over two nodes would find no committed directory for the other
            # node's ranks. STRICT_PACK keeps a trial on one node (Ray's PACK only prefers to); a trial larger than
            # any node then waits, and the resource-wait line names what it needs.
            placement_strategy="STRICT_PACK" if run_storage.is_uri(setup["run_dir"]) else "PACK",
        ),
        run_config=RunConfig(
            name=trial_id,
            storage_path=trials_root,
            callbacks=[TuneReportCallback()],
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=train_failure_config(setup.get("failure") or {}),
        ),
    )
    started = run_storage.join(trials_root, trial_id, WORKERS_STARTED_MARKER)
    run_storage.remove(started)  # a retried trial waits again
    waiting = watch_resource_wait(
        trial_id, started, resources, float((setup.get("failure") or {}).get("resource_wait_warn_s", RESOURCE_WAIT_WARN_S))
    )
    start_marks["trial"] = time.time()  # the workers receive the config when fit() starts them
    try:
        trainer.fit()
    except Exception as e:  # Ray wraps the worker's exception; its text keeps the original type and message
        reason = _nonfinite_reason(str(e))
        if reason is None:
            raise
        run_storage.write_text(marker, reason + "\n")
        raise NonFiniteTrialError(reason) from None
    finally:
        waiting.set()


RESOURCE_WAIT_WARN_S = 300.0
"""failure.resource_wait_warn_s of a setup written before the field existed."""
WORKERS_STARTED_MARKER = "workers_started"
"""Written by rank 0 when the trial's Train workers run (RUN_DIR/trials/<id>/): the trial no longer waits."""


def train_failure_config(failure: dict[str, Any]) -> "ray.train.FailureConfig":
    """The Train run's retry limits, all explicit. Worker errors are retried by Tune (failure.max_failures, one
    policy, one count), so the run itself retries none; preemptions and worker-group start-up failures
    (controller failures) are retried up to failure.max_preemption_failures / controller_failure_limit, then
    fail the run, and count as one of the trial's failures. Ray Train V2's defaults (-1) retry both without
    limit and count neither."""
    return ray.train.FailureConfig(
        max_failures=0,
        max_preemption_failures=int(failure.get("max_preemption_failures", 0)),
        controller_failure_limit=int(failure.get("controller_failure_limit", 0)),
    )


def resource_wait_line(trial_id: str, waited_s: float, resources: dict[str, Any], free: Optional[dict[str, float]]) -> str:
    """The line a trial logs while its workers wait for resources: what one trial needs, and what is free."""
    per_worker = f"{resources['cpus_per_worker']} CPU"
    if resources.get("gpus_per_worker"):
        per_worker += f" + {resources['gpus_per_worker']} GPU"
    line = (
        f"trial {trial_id} has waited {waited_s:.0f} s for resources: {resources['workers']} worker(s) x "
        f"({per_worker}) in one placement group"
    )
    if free is not None:
        shown = ", ".join(f"{k} {v:g}" for k, v in sorted(free.items()) if k in ("CPU", "GPU"))
        line += f"; free in the cluster now: {shown or 'no CPU, no GPU'}"
    return line


def _free_resources() -> Optional[dict[str, float]]:
    try:
        return dict(ray.available_resources()) if ray.is_initialized() else None
    except Exception:  # the line is worth printing without it
        return None


def watch_resource_wait(
    trial_id: str, started: Path, resources: dict[str, Any], every_s: float, echo=None
) -> "threading.Event":
    """Start a daemon thread that logs resource_wait_line every `every_s` seconds until `started` exists or the
    returned event is set (the run ended)."""
    import sys
    import threading

    done = threading.Event()
    say = echo or (lambda line: print(line, file=sys.stderr, flush=True))

    def watch() -> None:
        waited = 0.0
        while not done.wait(every_s):
            waited += every_s
            if run_storage.exists(started):
                return
            say(resource_wait_line(trial_id, waited, resources, _free_resources()))

    threading.Thread(target=watch, name=f"resource-wait-{trial_id}", daemon=True).start()
    return done


def _nonfinite_reason(text: str) -> Optional[str]:
    for line in text.splitlines():
        if "NonFiniteTrialError: " in line:
            return line.split("NonFiniteTrialError: ", 1)[1].strip() or line.strip()
    return None


# ---- on the Ray Train workers ---------------------------------------------------------------------------


def _worker_loop(loop_config: dict[str, Any]) -> None:
    from trainables.train.start_clock import StartClock

    clock = StartClock(loop_config.get("start_marks"))
    clock.mark("worker_process", _process_started_at())
    clock.mark("worker_loop")
    import torch

    from trainables.train import NonFiniteLossError
    from trainables.train.config import TrainConfig

    setup = loop_config["setup"]
    train_dict = loop_config["train"]
    if run_storage.is_uri(setup["run_dir"]):
        # An object-store run: the loop's work dir is on this node's own disk (IBFT_NODE_WORK_DIR, else its temp
        # dir), chosen here on the worker, not by the Tune-side function that may run on another node.
        experiment = ray.train.get_context().get_experiment_name()
        train_dict = dict(train_dict, output_dir=run_storage.trial_work_dir(setup["run_dir"], experiment))
    cfg = TrainConfig.from_dict(train_dict)
    if ray.train.get_context().get_world_rank() == 0:  # the workers run: the trial waits no more for resources
        trial_root = run_storage.join(setup["run_dir"], "trials", ray.train.get_context().get_experiment_name())
        try:
            run_storage.write_text(run_storage.join(trial_root, WORKERS_STARTED_MARKER), "")
        except Exception:  # (pyarrow raises OSError subclasses and others) only the wait line depends on it
            pass
        _fetch_step_log(setup, cfg.output_dir, trial_root)
    torch.set_num_threads(max(1, int(setup["resources"]["cpus_per_worker"])))
    checkpoint = ray.train.get_checkpoint()
    side = TrainWorkerSide(run_storage.join(setup["run_dir"], "trials", ray.train.get_context().get_experiment_name()))
    with checkpoint.as_directory() if checkpoint is not None else nullcontext(None) as resume_dir:
        try:
            _train_with_rungs(setup, cfg, side, clock, resume_dir, report_again=ray.train.report)
        except NonFiniteLossError as e:
            # Re-raised as a one-message error: Ray re-creates a worker's exception on the driver, and that
            # fails for NonFiniteLossError(step, components), which would lose the reason.
            raise NonFiniteTrialError(str(e)) from None


def _train_with_rungs(setup: dict[str, Any], cfg: Any, side: "TrainWorkerSide | InTrialSide", clock: Any,
                      resume_dir: Optional[str | Path], report_again: Any) -> None:
    """The loop of one worker (a Train worker's or the trial's own), its rungs reported through `side`, continued
    from `resume_dir` (a rung checkpoint) when given. A run that had already finished only reports its last rung
    again (`report_again`: ray.train.report or tune.report) for Tune. NonFiniteLossError propagates."""
    from trainables.train import TrainHooks, train

    if resume_dir is not None:
        done = _finished_metrics(Path(resume_dir), cfg.optim.max_steps)
        if done is not None:
            report_again(done)
            return
    rung = _RungReporter(setup, side, tap_layer=cfg.ib.tap_layer, prompt_format=cfg.data.prompt_format, clock=clock)
    rung.output_dir = cfg.output_dir
    hooks = TrainHooks(on_log=rung.on_log, on_rung=rung.on_rung, rung_every=setup["training"]["rung_steps"])
    train(cfg, hooks=hooks, resume_from=str(resume_dir) if resume_dir is not None else None, start_clock=clock)


def _process_started_at() -> float:
    """Unix time this worker process started (a process Ray started ahead of the trial predates it: StartClock
    then counts its part as zero)."""
    import psutil

    return psutil.Process().create_time()


STEP_LOG_FILE = "metrics.jsonl"
"""The loop's per-step log under its output_dir (trainables.train.loop.METRICS_FILE)."""


def _remote_step_log(setup: dict[str, Any], trial_root: str) -> Optional[str]:
    """Where a trial's step log lives in an object-store RUN_DIR (None on a shared filesystem: the loop writes it there)."""
    if not run_storage.is_uri(setup["run_dir"]):
        return None
    return run_storage.join(trial_root, "work", STEP_LOG_FILE)


def _fetch_step_log(setup: dict[str, Any], output_dir: str, trial_root: str) -> None:
    """Rank 0 of a trial resumed on a node without its local work dir: continue the step log the bucket holds."""
    remote = _remote_step_log(setup, trial_root)
    local = Path(output_dir) / STEP_LOG_FILE
    if remote is None or local.exists():
        return
    try:
        text = run_storage.read_text(remote)
    except Exception:
        return
    if text:
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text)


def _push_step_log(setup: dict[str, Any], output_dir: Optional[str], trial_root: str) -> None:
    """Rank 0, at every rung of an object-store run: the step log up to this rung goes to the bucket."""
    if output_dir is None or not run_storage.is_uri(setup["run_dir"]):
        return
    local = Path(output_dir) / STEP_LOG_FILE
    if not local.is_file():
        return
    run_storage.upload_file(local, _remote_step_log(setup, trial_root))


def drop_local_copy(checkpoint_dir: str, rank: int) -> None:
    """Store each rung checkpoint once: Ray's copy (RUN_DIR/trials/<id>/checkpoint_*, what a retried or resumed
    trial continues from) is complete once every rank's report returned (uploads are synchronous), so the loop's
    own copy under work/checkpoints/ goes. Every rank waits for the others first; rank 0 removes it."""
    import shutil

    from trainables.train import distributed

    distributed.barrier()
    if rank == 0:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


class TrainWorkerSide:
    """Where a Ray Train worker's rung reports go: ray.train.report, which stores the rung checkpoint in the Train
    run's storage (RUN_DIR/trials/<id>/checkpoint_*) and, through TuneReportCallback, gives Tune the metrics."""

    def __init__(self, trial_root: str) -> None:
        context = ray.train.get_context()
        self.rank, self.world, self.local_rank = context.get_world_rank(), context.get_world_size(), context.get_local_rank()
        self.trial_root = trial_root

    def publish(self, report: dict[str, Any], checkpoint_dir: str) -> None:
        # Every rank reports (Train synchronises on it); one rank per node uploads that node's checkpoint files.
        checkpoint = Checkpoint.from_directory(checkpoint_dir) if self.local_rank == 0 else None
        ray.train.report(report, checkpoint=checkpoint)
        if ray.is_initialized():
            drop_local_copy(checkpoint_dir, self.rank)


class InTrialSide:
    """Where the rung reports of a trial that trains in its own Tune process go (one worker, no Ray Train): the rung
    checkpoint into RUN_DIR/trials/<id>/ as Ray Train would store it (trainables.rung_checkpoints: moved, not
    copied, on a shared filesystem; the last two kept), then tune.report with its path, as TuneReportCallback
    forwards a Train report."""

    rank, world, local_rank = 0, 1, 0

    def __init__(self, trial_root: str) -> None:
        self.trial_root = trial_root

    def publish(self, report: dict[str, Any], checkpoint_dir: str) -> None:
        from trainables import rung_checkpoints

        path = rung_checkpoints.persist(checkpoint_dir, self.trial_root, RUNG_METRICS_FILE)
        rung_checkpoints.prune(self.trial_root, RUNG_METRICS_FILE)
        tune.report(dict(report, checkpoint_path=path))


def trains_in_trial(setup: dict[str, Any]) -> bool:
    """Whether this search's trials train in their own Tune process (resources.worker_in_trial and one worker)
    rather than in a Ray Train worker group. A setup written before the field existed trains through Ray Train."""
    resources = setup["resources"]
    return int(resources["workers"]) == 1 and bool(resources.get("worker_in_trial", False))


def _train_in_trial(setup: dict[str, Any], train_dict: dict[str, Any], trial_id: str, clock: Any, marker: str) -> None:
    """Run (or continue) a one-worker trial's loop in this process: what _worker_loop does on a Train worker,
    without the Train controller, worker group and process group (about 10 s of every trial's start on 2 cores,
    docs/performance.md). The trial's process holds the worker's resources (search.tuner.trial_resources)."""
    import gc

    import torch

    from trainables import rung_checkpoints
    from trainables.train import NonFiniteLossError
    from trainables.train.config import TrainConfig

    # Tune reuses this process for the next trial (search.tuner: reuse_actors): whatever the previous trial's loop
    # left in reference cycles goes now, not when the collector next happens to run, and its GPU blocks with it.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    cfg = TrainConfig.from_dict(train_dict)
    trial_root = run_storage.join(setup["run_dir"], "trials", trial_id)
    _fetch_step_log(setup, cfg.output_dir, trial_root)
    torch.set_num_threads(max(1, int(setup["resources"]["cpus_per_worker"])))
    found = rung_checkpoints.latest(trial_root, RUNG_METRICS_FILE)
    resume_dir = rung_checkpoints.local_copy(found, Path(cfg.output_dir) / "resume") if found else None
    try:
        _train_with_rungs(setup, cfg, InTrialSide(trial_root), clock, resume_dir, report_again=tune.report)
    except NonFiniteLossError as e:
        run_storage.write_text(marker, str(e) + "\n")
        raise NonFiniteTrialError(str(e)) from None


def _finished_metrics(checkpoint_dir: Path, max_steps: int) -> Optional[dict]:
    path = checkpoint_dir / RUNG_METRICS_FILE
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("step", 0) >= max_steps else None


class _RungReporter:
    """The hooks of one worker: collects the loss components between rungs, evaluates and reports at each rung."""

    def __init__(
        self, setup: dict[str, Any], side: "TrainWorkerSide | InTrialSide", tap_layer: Any = 0.5,
        prompt_format: str = "auto", clock: Any = None,
    ) -> None:
        self.setup = setup
        self.side = side
        self.tap_layer = tap_layer
        # The trial's data.prompt_format: validation and test prompts are built as its training prompts were.
        self.prompt_format = prompt_format
        self.clock = clock  # the run's StartClock: every report says how long the trial took to start
        self.logs: list[dict[str, float]] = []
        self.rank, self.world = side.rank, side.world
        self.val_problems = _rank_share(_benchmark_problems(setup["validation"], "val", setup["seed"]), self.rank, self.world)
        test = setup.get("test")
        self.test_problems = (
            _rank_share(_benchmark_problems(test, "test", setup["seed"]), self.rank, self.world) if test else None
        )

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.logs.append(dict(metrics, step=step))

    def on_rung(self, step: int, model: Any, tokenizer: Any, checkpoint_dir: str) -> None:
        rung_steps = self.setup["training"]["rung_steps"]
        rung = step // rung_steps
        final = rung >= self.setup["num_rungs"]
        report: dict[str, Any] = {"rung": rung, "step": step}
        self.task_counts: dict[str, dict[str, list[int]]] = {}  # split -> task_id -> [n, c], filled by _evaluate
        if ray.is_initialized():  # (asked outside Ray, the runtime context would start a local Ray instance)
            # The Ray node this rank trained on (Tune forwards rank 0's report), so a multi-node search shows
            # where each rung ran; Tune's own node_ip cannot tell apart nodes that share a machine.
            report["node_id"] = ray.get_runtime_context().get_node_id()
        report.update(self._start_metrics())
        report.update(self._train_metrics())
        report.update(self._evaluate("val", self.setup["validation"], self.val_problems, model, tokenizer))
        if final and self.test_problems is not None:
            report.update(self._evaluate("test", self.setup["test"], self.test_problems, model, tokenizer))
        memorization = self.setup.get("memorization") or {}
        if final and memorization.get("enabled"):
            report.update(self._memorization(model, tokenizer))
        if self.side.local_rank == 0:
            Path(checkpoint_dir, RUNG_METRICS_FILE).write_text(json.dumps(report))
            if self.task_counts:
                counts = {"rung": rung, "step": step, **self.task_counts}
                Path(checkpoint_dir, TASK_COUNTS_FILE).write_text(json.dumps(counts, separators=(",", ":")))
        if self.rank == 0:
            _push_step_log(self.setup, getattr(self, "output_dir", None), self.side.trial_root)
        self.side.publish(report, checkpoint_dir)
        self.logs.clear()
        return None

    def _start_metrics(self) -> dict[str, float]:
        """start/seconds: from the trial's start (this run's, for a retried or resumed trial) to its first batch."""
        parts = self.clock.parts() if self.clock is not None else {}
        if "total" not in parts or "first_step" not in parts:
            return {}
        return {START_SECONDS_KEY: parts["total"] - parts["first_step"]}

    def _train_metrics(self) -> dict[str, float]:
        if not self.logs:
            return {}
        last = self.logs[-1]
        out = {f"train/{k}": float(last[k]) for k in ("loss", "ce_loss", "kl_loss", "ib_ce_loss", "lr", "grad_norm") if k in last}
        ce = [log["ce_loss"] for log in self.logs if "ce_loss" in log]
        if ce:
            out["train/ce_loss_rung"] = sum(ce) / len(ce)
        speeds = [log["tokens_per_s"] for log in self.logs if "tokens_per_s" in log]
        if speeds:
            out["train/tokens_per_s"] = sum(speeds) / len(speeds)
        return out

    def _evaluate(self, prefix: str, bench: dict[str, Any], problems: list[dict], model: Any, tokenizer: Any) -> dict:
        from trainables import evaluation
        from trainables.execution.results import per_task_counts
        from trainables.generation import GenerationSettings

        started = time.perf_counter()
        run = evaluation.run_evaluation(
            model,
            tokenizer,
            problems,
            n=bench["n"],
            ks=bench["k"],
            ms=bench["m"],
            generation=GenerationSettings(
                temperature=bench["temperature"],
                top_p=bench["top_p"],
                max_new_tokens=bench["max_new_tokens"],
                # Setups written before the field existed (a resumed search) keep GenerationSettings' default.
                **({"batch_size": bench["batch_size"]} if "batch_size" in bench else {}),
            ),
            workers=max(1, int(self.setup["resources"]["cpus_per_worker"])),
            seed=self.setup["seed"] + 7919 * self.rank,
            timeout=bench["timeout"],
            prompt_format=self.prompt_format,
        )
        summary = run.summary
        names = _metric_keys(bench)
        local = {name: float(summary[name]) for name in names} if problems else {name: 0.0 for name in names}
        combined = _combine_across_ranks(local, len(problems))
        # Per-task [n, c] over every rank's share: on_rung writes them next to the rung's metrics (TASK_COUNTS_FILE)
        # rather than reporting them to Tune, where every val/ key would become a trials.csv column.
        self.task_counts[prefix] = _gather_task_counts(per_task_counts(run.results) if problems else {})
        out = {f"{prefix}/{name}": value for name, value in combined.items()}
        out[f"{prefix}/eval_seconds"] = time.perf_counter() - started
        return out

    def _memorization(self, model: Any, tokenizer: Any) -> dict[str, float]:
        """Rank 0 measures; every rank reports the same numbers (a failure fails every rank, none waits)."""
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        outcome: dict[str, Any] = {}
        if self.rank == 0:
            try:
                outcome = {"metrics": trial_memorization(model, tokenizer, self.setup, self.tap_layer)}
            except Exception as e:
                if not distributed:
                    raise
                outcome = {"error": f"{type(e).__name__}: {e}"}
        if distributed:
            box = [outcome]
            dist.broadcast_object_list(box, src=0)
            outcome = box[0]
        if "error" in outcome:
            raise RuntimeError(f"memorization measurement failed on rank 0: {outcome['error']}")
        return outcome["metrics"]


def trial_memorization(model: Any, tokenizer: Any, setup: dict[str, Any], tap_layer: Any) -> dict[str, float]:
    """The memorization metrics (memorization/...) of a trained trial model on its own training data.

    Scores the first setup["memorization"]["max_examples"] of the examples the trial trained on (the same
    source, seeded shuffle, max_examples and max_length; with data.drop_overlong, the ones training kept), at
    memorization.tap_layer or else `tap_layer` (the trial's IB tap layer). `model` is the trial's LoRA model
    (or anything trainables.memorization accepts); it is scored without gradients in eval mode, once with the
    adapter off (the base) and once on, and left in the mode it was in.
    """
    from trainables.data import load_examples, tokenize_examples
    from trainables.memorization import measure_memorization
    from trainables.memorization.search_metrics import SECONDS, search_metrics
    from trainables.train.config import DataConfig

    memo = setup["memorization"]
    data = DataConfig(**setup["data"])
    started = time.perf_counter()
    examples = load_examples(data, setup["seed"])
    tokenized_as = {"prompt_format": data.prompt_format, "append_eos": data.append_eos}  # as the trial trained
    if data.drop_overlong:
        examples = [
            ex for ex in examples if tokenize_examples([ex], tokenizer, data.max_length, drop_overlong=True, **tokenized_as)[0]
        ]
    examples = examples[: memo["max_examples"]]
    chosen = memo.get("tap_layer")
    try:
        summary = measure_memorization(
            model,
            tokenizer,
            examples,
            k=memo["k"],
            quantile=memo["quantile"],
            tap_layer=chosen if chosen is not None else tap_layer,
            batch_size=memo["batch_size"],
            max_length=data.max_length,
            **tokenized_as,
        )
    except ConfigError as e:
        raise ConfigError(f"memorization: {e}") from None
    metrics = search_metrics(summary)
    metrics[SECONDS] = time.perf_counter() - started
    return metrics


def _metric_keys(bench: dict[str, Any]) -> list[str]:
    kmax = max(bench["k"])
    return [f"pass@{k}" for k in bench["k"]] + [f"pass@{kmax}({m})" for m in bench["m"]]


def _combine_across_ranks(local: dict[str, float], n_tasks: int) -> dict[str, float]:
    """Task-weighted mean of each rank's pass rates (ranks evaluate disjoint task shares)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (local, n_tasks))
    total = sum(n for _, n in gathered)
    if total == 0:
        return local
    return {name: sum(values[name] * n for values, n in gathered) / total for name in local}


def _gather_task_counts(local: dict[str, Any]) -> dict[str, list[int]]:
    """task_id -> [n samples, c passed] over every rank's task share (a collective: every rank calls it)."""
    import torch.distributed as dist

    merged = {str(task): [int(n), int(c)] for task, (n, c) in local.items()}
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return merged
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, merged)
    out: dict[str, list[int]] = {}
    for share in gathered:
        for task, (n, c) in share.items():
            entry = out.setdefault(task, [0, 0])
            entry[0] += n
            entry[1] += c
    return out


def _rank_share(problems: list[dict], rank: int, world: int) -> list[dict]:
    return problems[rank::world]


def _benchmark_problems(bench: dict[str, Any], split: str, seed: int) -> list[dict]:
    """The benchmark split's problems, or a seeded subset of `tasks` of them (the same for every trial)."""
    from trainables.benchmarks import BUILTIN, load_benchmark, task_subset

    # A user's own problems file has no shipped split: the space names one file per role, used whole.
    problems = load_benchmark(bench["benchmark"], split if bench["benchmark"] in BUILTIN else "all")
    problems = task_subset(problems, bench.get("tasks"), seed)
    if not problems:
        raise ConfigError(f"{split} benchmark {bench['benchmark']!r} has no problems")
    return problems
