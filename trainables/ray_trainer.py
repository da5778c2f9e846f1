"""Ray Train's TorchTrainer, minus its PlacementGroupCleaner where that helper cannot work.

Each Train run starts a detached PlacementGroupCleaner actor. Once a second it asks Ray's State API whether
the run's controller is still alive, and frees the run's placement group when it is not. The State API
is served by the dashboard, which a minimal Ray install (ray[train,tune], as here) does not run. Then every
question fails: the cleaner logs "Failed to query Ray Train Controller actor state" once a second for as
long as it lives. For a trial that ASHA stops, the controller dies without telling it to stop, so it lives
until the Ray cluster goes: one idle process per stopped trial, on a long-lived `ray up` cluster across
searches. The search's PlacementGroupReaper (search/pg_reaper.py) frees those placement groups through the
GCS instead, so without the State API the cleaner is dropped. Where the State API answers, as on clusters
running the full Ray image, it stays.
"""
from __future__ import annotations

import logging

from ray.train.torch import TorchTrainer

logger = logging.getLogger(__name__)

STATE_API_TIMEOUT_S = 5


def state_api_available() -> bool:
    """Whether Ray's State API answers here (a failed query takes milliseconds when no dashboard runs)."""
    from ray.util.state import get_actor

    try:
        get_actor("ff" * 16, timeout=STATE_API_TIMEOUT_S)  # an id no actor has: None when the API works
    except Exception:  # RayStateApiException, or a timeout on a loaded head: either way the cleaner could not work
        return False
    return True


class IBTorchTrainer(TorchTrainer):
    """TorchTrainer that leaves out Ray Train's PlacementGroupCleaner where the State API is down."""

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        try:
            from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
        except ImportError:  # a Ray without that helper: nothing to leave out
            return callbacks
        if state_api_available():
            return callbacks
        logger.debug("Ray State API unavailable: Ray Train's PlacementGroupCleaner left out (search/pg_reaper.py)")
        return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]
