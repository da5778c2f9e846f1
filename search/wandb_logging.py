"""Ray's W&B logger callback with a logging actor that has W&B write everything before the actor is killed.

Ray's _WandbLoggingActor returns from run() after wandb.finish(), and the callback then ray.kill()s the actor at
once. W&B's core service writes the offline run file (.wandb) from its own process and closes it a moment after
finish returns; a kill in that moment leaves the file at its 7-byte header, with no run record. Measured in a CI
run: the smoke search's last trial (errored at its first step) ended so, because at the end of a search the callback
waits on the actor's run() and kills it the instant run() returns (earlier trials' actors happen to be killed
later, at some later trial's end). wandb.teardown() blocks until the service has shut down, files closed.
"""
from __future__ import annotations

from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor


class _FlushingWandbLoggingActor(_WandbLoggingActor):
    def run(self):
        try:
            super().run()
        finally:
            self._wandb.teardown()


class WandbCallback(WandbLoggerCallback):
    """WandbLoggerCallback whose runs are complete on disk when their actor is killed."""

    _logger_actor_cls = _FlushingWandbLoggingActor
