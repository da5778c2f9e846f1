"""Give back the CPUs/GPUs of Ray Train runs whose trial ASHA stopped.

When Tune stops a trial, its Ray Train controller actor dies with it, but the placement group the
controller reserved for its workers stays (placement groups outlive the actor that created them). Ray
Train's own PlacementGroupCleaner frees it by asking the State API whether the controller is dead, and
that API needs the dashboard's HTTP server, which a minimal Ray install (no aiohttp) does not start: the
reservation then leaks and the next trial waits for resources forever. This Tune callback, on the driver,
asks the GCS directly after every trial ends and removes placement groups whose creating actor is dead.
"""
from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback

logger = logging.getLogger(__name__)


def orphaned_placement_groups() -> list[bytes]:
    """IDs of live placement groups whose creating actor is dead (never detached ones, never the driver's)."""
    import ray
    from ray.core.generated import gcs_pb2

    accessor = ray._private.state.state._connect_and_get_accessor()
    nil_actor = ray.ActorID.nil().binary()
    orphans = []
    for raw in accessor.get_placement_group_table():
        info = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if info.state == gcs_pb2.PlacementGroupTableData.REMOVED or info.is_detached:
            continue
        # Groups the driver (Tune's trial reservations) created carry the nil actor id: never theirs.
        if info.creator_actor_id not in (b"", nil_actor) and info.creator_actor_dead and not info.creator_job_dead:
            orphans.append(info.placement_group_id)
    return orphans


def remove_orphaned_placement_groups() -> int:
    """Remove every orphaned placement group; returns how many were removed."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = 0
    for pg_id in orphaned_placement_groups():
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg_id)))
            removed += 1
        except Exception as e:  # already removed by Ray Train's own cleaner in the meantime
            logger.debug("placement group %s not removed: %s", pg_id.hex(), e)
    return removed


class PlacementGroupReaper(Callback):
    """Tune callback: after each trial ends, free the reservations its dead Train controller left behind."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._reap()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._reap()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # A stopped trial's actor may die a moment after on_trial_complete; look again now and then.
        if iteration % 200 == 0:
            self._reap()

    def _reap(self) -> None:
        try:
            count = remove_orphaned_placement_groups()
        except Exception as e:  # never let housekeeping end a search
            logger.warning("could not check for orphaned placement groups: %s", e)
            return
        if count:
            logger.info("freed %d placement group(s) left by stopped trials", count)
