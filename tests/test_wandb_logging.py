"""search.wandb_logging.WandbCallback hands results to a trial's W&B logging actor without the driver waiting on it
(issue 19), in order, END last, and everything delivered before the experiment's end waits on the runs. Ray is
replaced by a fake here: calls "complete" when the test says so. The real actors are exercised by the smoke
search's W&B test (tests/test_tune_e2e.py) and bench/driver_pace.py."""
from __future__ import annotations

import pickle

import pytest
from ray.air.integrations.wandb import _QueueItem

import search.wandb_logging as wandb_logging
from search.wandb_logging import WandbCallback


class FakeRef:
    def __init__(self, items=None) -> None:
        self.items = items
        self.ready = False


class FakeRay:
    """ray.wait / ray.get / ray.kill over FakeRefs; a wait with a timeout lets every pending call complete."""

    def __init__(self) -> None:
        self.killed: list = []

    def wait(self, refs, num_returns=1, timeout=None):
        if timeout:
            for ref in refs:
                ref.ready = True
        ready = [r for r in refs if r.ready]
        return ready, [r for r in refs if not r.ready]

    def get(self, ref, timeout=None):
        assert ref.ready
        return None

    def kill(self, actor) -> None:
        self.killed.append(actor)

    def is_initialized(self) -> bool:  # Ray's WandbLoggerCallback.__del__: nothing to clean up
        return False


class FakeQueue:
    """A ray.util.queue.Queue whose actor records each put_nowait_batch call."""

    def __init__(self) -> None:
        self.calls: list[FakeRef] = []
        queue = self

        class Method:
            @staticmethod
            def remote(items):
                queue.calls.append(FakeRef(list(items)))
                return queue.calls[-1]

        class Actor:
            put_nowait_batch = Method

        self.actor = Actor

    def delivered(self) -> list:
        return [item for ref in self.calls if ref.ready for item in ref.items]


@pytest.fixture
def fake_ray(monkeypatch):
    import ray.air.integrations.wandb as ray_wandb

    fake = FakeRay()
    monkeypatch.setattr(wandb_logging, "ray", fake)
    monkeypatch.setattr(ray_wandb, "ray", fake)  # Ray's own clean-up (ray.wait on the runs, ray.kill)
    return fake


def _callback_with_trial(trial: str = "t1") -> tuple[WandbCallback, FakeQueue, FakeRef]:
    callback = WandbCallback(project="p", mode="offline")
    queue, run = FakeQueue(), FakeRef()
    callback._trial_queues[trial] = queue
    callback._trial_logging_actors[trial] = f"actor-{trial}"
    callback._trial_logging_futures[trial] = run
    callback._logging_future_to_trial[run] = trial
    return callback, queue, run


def _results(items: list) -> list:
    return [(kind, None if content is None else content["training_iteration"]) for kind, content in items]


def test_results_go_out_one_batch_at_a_time_in_order_and_end_last(fake_ray):
    callback, queue, run = _callback_with_trial()
    callback.log_trial_result(1, "t1", {"training_iteration": 1})
    assert [r.items for r in queue.calls] == [[(_QueueItem.RESULT, {"training_iteration": 1})]]  # sent at once
    callback.log_trial_result(2, "t1", {"training_iteration": 2})
    callback.log_trial_result(3, "t1", {"training_iteration": 3})
    callback.on_step_end(0, [])
    assert len(queue.calls) == 1  # the first batch is not known to be in the queue: the rest wait, in order
    queue.calls[0].ready = True
    callback.on_step_end(1, [])
    assert len(queue.calls) == 2 and _results(queue.calls[1].items) == [(_QueueItem.RESULT, 2), (_QueueItem.RESULT, 3)]
    callback.log_trial_end("t1")  # END waits for the second batch; the run has not ended, nothing is killed
    assert len(queue.calls) == 2 and fake_ray.killed == []
    queue.calls[1].ready = True
    callback.on_step_end(2, [])
    assert _results(queue.calls[2].items) == [(_QueueItem.END, None)]
    queue.calls[2].ready = run.ready = True  # the actor read END and finished its run
    callback._cleanup_logging_actors()
    assert fake_ray.killed == ["actor-t1"] and not callback._outbox and not callback._in_flight
    assert _results(queue.delivered()) == [
        (_QueueItem.RESULT, 1), (_QueueItem.RESULT, 2), (_QueueItem.RESULT, 3), (_QueueItem.END, None)
    ]


def test_the_experiment_end_delivers_every_outbox_before_waiting_on_the_runs(fake_ray):
    callback, queue, run = _callback_with_trial()
    for i in (1, 2, 3):
        callback.log_trial_result(i, "t1", {"training_iteration": i})
    callback.log_trial_end("t1")
    assert len(queue.calls) == 1  # results 2, 3 and END still in the driver's outbox
    callback.on_experiment_end(trials=[])
    assert _results(queue.delivered()) == [
        (_QueueItem.RESULT, 1), (_QueueItem.RESULT, 2), (_QueueItem.RESULT, 3), (_QueueItem.END, None)
    ]
    assert fake_ray.killed == ["actor-t1"]


def test_a_trial_without_a_logging_actor_is_ignored(fake_ray):
    callback = WandbCallback(project="p", mode="offline")
    callback.log_trial_end("never-started")  # Ray's own callback raised KeyError here
    assert not callback._outbox


def test_the_callback_pickles_for_tuner_pkl_and_loads_an_older_pickle():
    callback = WandbCallback(project="p", mode="offline")
    loaded = pickle.loads(pickle.dumps(callback))
    assert loaded._outbox == {} and loaded._in_flight == {}
    state = dict(callback.__dict__)
    del state["_outbox"], state["_in_flight"]  # as pickled by the code before issue 19
    old = WandbCallback.__new__(WandbCallback)
    old.__setstate__(state)
    assert old._outbox == {} and old._in_flight == {}
