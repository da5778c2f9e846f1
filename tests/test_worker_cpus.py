"""One CPU per sandbox server when the workers cover the CPUs (forkserver.worker_cpus)."""
from __future__ import annotations

import os

import pytest

from trainables.execution.forkserver import SandboxPool, python_job, worker_cpus
from trainables.execution.python_check import verdict_from_report
from trainables.execution.sandbox import SandboxLimits


@pytest.mark.parametrize(
    ("workers", "allowed", "expected"),
    [
        (2, {0, 1}, [0, 1]),                 # the check has the machine: a core per server
        (4, {2, 3}, [2, 3, 2, 3]),           # more servers than cores: they share them in turn
        (3, {5, 1, 9}, [1, 5, 9]),           # an affinity set that is not 0..n-1, in CPU order
        (1, {0, 1}, [None]),                 # fewer servers than cores: other work shares them
        (2, {0, 1, 2, 3}, [None, None]),
        (2, set(), [None, None]),
    ],
)
def test_worker_cpus(workers, allowed, expected):
    assert worker_cpus(workers, allowed) == expected


PROBLEM = {"task_id": "t/cpus", "prompt": "def cpus(x):\n", "entry_point": "cpus",
           "test": "def check(candidate):\n    assert candidate(0) == 0\n"}
# Passes only when the candidate may run on exactly one CPU.
ONE_CPU = "    import os\n    return 0 if len(os.sched_getaffinity(0)) == 1 else 1\n"


def test_a_pool_covering_the_cpus_pins_each_server_and_its_samples():
    allowed = sorted(os.sched_getaffinity(0))
    strict = os.geteuid() == 0
    with SandboxPool(len(allowed), SandboxLimits(timeout=5.0), strict=strict) as pool:
        assert sorted(pool.cpus) == allowed
        replies = pool.run_all([python_job(PROBLEM, ONE_CPU, 5.0)] * (2 * len(allowed)), [30.0] * (2 * len(allowed)))
    assert all(verdict_from_report(r)["passed"] for r in replies)
