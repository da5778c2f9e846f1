"""Ray's W&B logger callback with a logging actor that has W&B write everything before the actor is killed.

Ray's _WandbLoggingActor returns from run() after wandb.finish(), and the callback then ray.kill()s the actor at
once. W&B's core service writes the offline run file (.wandb) from its own process and closes it a moment after
finish returns; a kill in that moment leaves the file at its 7-byte header, with no run record. Measured in a CI
run: the smoke search's last trial (errored at its first step) ended so, because at the end of a search the callback
waits on the actor's run() and kills it the instant run() returns (earlier trials' actors happen to be killed
later, at some later trial's end). wandb.teardown() blocks until the service has shut down, files closed.

Ray's callback also hands every result to the trial's logging actor with ray.util.queue.Queue.put, which is a
blocking ray.get on the queue's own actor: the driver's Tune loop waits for that actor (started with the trial, a
fresh worker process) to come up and answer, on every result. Measured (bench/driver_pace.py, 2 cores): a trial's
first result waited 2-5 s for it ("The `callbacks.on_trial_result` operation took 2.785 s" in a search), each later
one ~3 ms. Here results go into a driver-side outbox per trial, sent with one put_nowait_batch call at a time (the
next only once the previous one is done, so the logging actor still reads them in order and the END marker last),
from Tune's step loop; the driver never waits on the actor during the search. At the experiment's end (and at the
callback's deletion) the outboxes are flushed, within the same timeout, before the actors' runs are awaited, so
every offline run is complete on disk as before.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.air.integrations.wandb import WandbLoggerCallback, _clean_log, _QueueItem, _WandbLoggingActor

logger = logging.getLogger(__name__)


class _FlushingWandbLoggingActor(_WandbLoggingActor):
    def run(self):
        try:
            super().run()
        finally:
            self._wandb.teardown()


class WandbCallback(WandbLoggerCallback):
    """WandbLoggerCallback whose runs are complete on disk when their actor is killed, and that never blocks
    Tune's loop on a logging actor while a search runs (see the module docstring)."""

    _logger_actor_cls = _FlushingWandbLoggingActor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbox: dict = {}  # trial -> [queue items not sent yet], in order
        self._in_flight: dict = {}  # trial -> ObjectRef of its one put_nowait_batch call not known to be done

    def _start_logging_actor(self, trial: Any, exclude_results: list, **wandb_init_kwargs: Any) -> None:
        if not self._remote_logger_class:
            # Ray's actor class, without restarts: Ray lets it restart for ever, and so prints a C++ error line to the
            # console ("has constructor arguments in the object store and max_restarts > 0") for the first trial of
            # every search. The actor runs on the driver's node (it dies only with the driver), and a restart could
            # not rebuild it anyway once its constructor's arguments were gone.
            import os

            from ray.air.integrations.wandb import WANDB_ENV_VAR
            from ray.air.util.node import _force_on_current_node

            env_vars = {WANDB_ENV_VAR: os.environ[WANDB_ENV_VAR]} if WANDB_ENV_VAR in os.environ else {}
            self._remote_logger_class = ray.remote(
                num_cpus=0, **_force_on_current_node(), runtime_env={"env_vars": env_vars}
            )(self._logger_actor_cls)
        super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

    def __setstate__(self, state: dict) -> None:
        # Tuner.restore unpickles the callback from tuner.pkl, possibly one pickled by code without the outboxes.
        self.__dict__.update(state)
        self.__dict__.setdefault("_outbox", {})
        self.__dict__.setdefault("_in_flight", {})

    # Ray's log_trial_result / log_trial_save / _signal_logging_actor_stop, with Queue.put (a blocking ray.get on
    # the queue actor) replaced by _send.
    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial not in self._trial_logging_actors:
            self.log_trial_start(trial)
        result = _clean_log(result, video_kwargs=self.video_kwargs, image_kwargs=self.image_kwargs)
        self._send(trial, (_QueueItem.RESULT, result))

    def log_trial_save(self, trial: Any) -> None:
        import pyarrow.fs

        if self.upload_checkpoints and trial.checkpoint:
            if isinstance(trial.checkpoint.filesystem, pyarrow.fs.LocalFileSystem) and trial.checkpoint.path:
                self._send(trial, (_QueueItem.CHECKPOINT, trial.checkpoint.path))

    def _signal_logging_actor_stop(self, trial: Any) -> None:
        self._send(trial, (_QueueItem.END, None))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Once per iteration of Tune's loop: send what waited for an earlier batch (or for the queue to start),
        # with one non-blocking ray.wait for all of them.
        waiting = {trial: self._in_flight[trial] for trial in self._outbox if trial in self._in_flight}
        done: set = set()
        if waiting:
            ready, _ = ray.wait(list(waiting.values()), num_returns=len(waiting), timeout=0)
            done = set(ready)
        for trial in list(self._outbox):
            if trial not in waiting or waiting[trial] in done:
                self._pump(trial, known_done=trial in waiting)

    def _send(self, trial: Any, item: tuple) -> None:
        if trial not in self._trial_queues:
            return  # no logging actor (never started, or cleaned up): Ray's own put raised KeyError here
        self._outbox.setdefault(trial, []).append(item)
        self._pump(trial)

    def _pump(self, trial: Any, known_done: bool = False) -> None:
        """Send the trial's outbox in one call unless its previous call is still under way (never waits)."""
        ref = self._in_flight.get(trial)
        if ref is not None:
            if not known_done and not ray.wait([ref], timeout=0)[0]:
                return
            del self._in_flight[trial]
            self._check(trial, ref)
        items = self._outbox.pop(trial, None)
        queue = self._trial_queues.get(trial)
        if items and queue is not None:
            # One call in flight per trial: Ray does not promise an async actor (the queue's) runs calls in the
            # order they were sent, so the next batch leaves only after this one is in the queue.
            self._in_flight[trial] = queue.actor.put_nowait_batch.remote(items)

    def _check(self, trial: Any, ref: Any) -> None:
        try:
            ray.get(ref, timeout=0)
        except Exception as e:  # the queue actor is gone for good: W&B misses these results; the search goes on
            logger.warning("W&B results of trial %s were not delivered to its logging actor: %s", trial, e)

    def _flush(self, timeout: float) -> None:
        """Deliver every outbox to its queue, waiting at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for trial in list(set(self._outbox) | set(self._in_flight)):
                self._pump(trial)
            refs = list(self._in_flight.values())
            left = deadline - time.monotonic()
            if not refs or left <= 0:
                return
            ray.wait(refs, num_returns=len(refs), timeout=left)

    def _cleanup_logging_actors(self, timeout: float = 0, kill_on_timeout: bool = False) -> None:
        # With a timeout (experiment end, deletion) Ray waits for the actors' runs; those end only once the END
        # marker is read, so the outboxes go first, within the same time.
        if timeout > 0:
            start = time.monotonic()
            self._flush(timeout)
            timeout = max(0.0, timeout - (time.monotonic() - start))
        super()._cleanup_logging_actors(timeout=timeout, kill_on_timeout=kill_on_timeout)

    def _cleanup_logging_actor(self, trial: Any) -> None:
        self._outbox.pop(trial, None)
        self._in_flight.pop(trial, None)
        super()._cleanup_logging_actor(trial)
