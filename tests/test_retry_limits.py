"""Retry limits that hold: a trial's Ray Train run retries preemptions and worker-group start-up failures only
as often as failure.* says (Ray Train V2's defaults retry both for ever, uncounted), and a trial whose workers
wait for resources says so, naming them."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _setup(tmp_path: Path, **failure) -> dict:
    from search.space import load_space
    from search.tuner import trial_setup

    doc = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    doc["failure"] = {**doc.get("failure", {}), **failure}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    return trial_setup(load_space(tmp_path / "s.yaml"), tmp_path / "run")


def _decisions(config, errors) -> list[str]:
    from ray.train.v2._internal.execution.failure_handling.default import DefaultFailurePolicy

    policy = DefaultFailurePolicy(config)
    return [policy.make_decision(e).name for e in errors]


def _controller_error():
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return ControllerError(WorkerGroupStartupTimeoutError(num_workers=1))


def _preemption_error():
    from ray.train.v2.api.exceptions import PreemptionError
    from ray.train.v2.api.preemption import PreemptionInfo

    return PreemptionError(PreemptionInfo(deadline_ms=None, preempted_node_to_ranks={"n": [0]}))


def test_train_retry_limits_come_from_the_failure_section(tmp_path):
    import ray.train

    from trainables.tune_trainable import train_failure_config

    # Ray Train V2's defaults: worker-group start time-outs and preemptions retried without limit.
    assert _decisions(ray.train.FailureConfig(), [_controller_error()] * 50) == ["RETRY"] * 50
    assert _decisions(ray.train.FailureConfig(), [_preemption_error()] * 50) == ["RETRY"] * 50

    default = train_failure_config(_setup(tmp_path)["failure"])
    assert (default.max_failures, default.max_preemption_failures, default.controller_failure_limit) == (0, 0, 0)
    # Each fails the Train run at once, so Tune counts it as one of the trial's failure.max_failures.
    assert _decisions(default, [_controller_error()]) == ["RAISE"]
    assert _decisions(default, [_preemption_error()]) == ["RAISE"]

    chosen = train_failure_config(_setup(tmp_path, max_preemption_failures=2, controller_failure_limit=1)["failure"])
    assert _decisions(chosen, [_preemption_error()] * 3) == ["RETRY", "RETRY", "RAISE"]
    assert _decisions(chosen, [_controller_error()] * 2) == ["RETRY", "RAISE"]
    # A run started before the fields existed (its setup lacks them) gets the same explicit limits.
    assert train_failure_config({"max_failures": 2}) == default


@pytest.mark.parametrize("field, value", [("max_preemption_failures", -1), ("controller_failure_limit", -1), ("resource_wait_warn_s", 0)])
def test_unbounded_or_zero_limits_are_refused_naming_the_field(tmp_path, field, value):
    from search.space import load_space

    doc = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    doc["failure"] = {field: value}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(Exception) as info:
        load_space(tmp_path / "s.yaml")
    assert f"failure.{field}" in str(info.value) and "\n" not in str(info.value).strip()


def test_a_trial_waiting_for_resources_logs_what_it_waits_for_until_its_workers_start(tmp_path):
    from trainables.tune_trainable import resource_wait_line, watch_resource_wait

    resources = {"workers": 2, "cpus_per_worker": 4, "gpus_per_worker": 1}
    line = resource_wait_line("t_1", 600, resources, {"CPU": 3.0, "GPU": 0.0, "memory": 1e9})
    assert line == (
        "trial t_1 has waited 600 s for resources: 2 worker(s) x (4 CPU + 1 GPU) in one placement group; "
        "free in the cluster now: CPU 3, GPU 0"
    )
    lines: list[str] = []
    started = tmp_path / "workers_started"
    done = watch_resource_wait("t_1", started, resources, 0.05, echo=lines.append)
    deadline = time.time() + 10
    while len(lines) < 2 and time.time() < deadline:
        time.sleep(0.02)
    assert len(lines) >= 2 and lines[0].startswith("trial t_1 has waited 0 s for resources: 2 worker(s) x (4 CPU + 1 GPU)")
    started.touch()  # the workers run
    time.sleep(0.2)
    seen = len(lines)
    time.sleep(0.3)
    assert len(lines) == seen  # no more lines once the workers started
    done.set()

    quiet: list[str] = []
    done = watch_resource_wait("t_2", tmp_path / "never", resources, 0.05, echo=quiet.append)
    done.set()  # the run ended (or failed) before the first warning
    time.sleep(0.2)
    assert quiet == []
