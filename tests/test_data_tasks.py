"""The project's own Python function task family: reproducible, correct references, disjoint splits."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainables.data import PYTHON_TASK_FILES, read_jsonl

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "make_python_tasks.py"


def _load(split: str) -> list[dict]:
    return [record for _, record in read_jsonl(PYTHON_TASK_FILES[split])]


def _run_check(program: str) -> subprocess.CompletedProcess:
    # Our own trusted reference programs: a plain subprocess is enough isolation here.
    return subprocess.run([sys.executable, "-"], input=program, capture_output=True, text=True, timeout=60)


def _suite(pairs: list[tuple[str, str, str]]) -> str:
    """One program that runs check() for each (code, test, entry_point) and prints the failing indices."""
    parts = ["failed = []"]
    for i, (code, test, entry) in enumerate(pairs):
        parts.append(
            f"try:\n    _g = {{}}\n    exec({(code + chr(10) + test + chr(10) + f'check({entry})' + chr(10))!r}, _g)\n"
            f"except BaseException as _e:\n    failed.append({i})"
        )
    parts.append("print(failed)")
    return "\n".join(parts)


def test_script_reproduces_the_shipped_files(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for split, shipped in PYTHON_TASK_FILES.items():
        assert (tmp_path / shipped.name).read_bytes() == shipped.read_bytes(), f"{shipped.name} differs from the script's output"


def test_split_sizes_and_fields():
    train, val, test = _load("train"), _load("val"), _load("test")
    assert 300 <= len(train) <= 600
    assert 16 <= len(val) <= 24 and 16 <= len(test) <= 30
    for record in train:
        assert {"instruction", "response", "task_id", "test", "entry_point"} <= set(record)
        assert record["response"].startswith("```python\n") and record["response"].endswith("```")
    for record in val + test:
        assert {"task_id", "prompt", "test", "entry_point", "instruction"} <= set(record)
        assert record["prompt"].startswith(f"def {record['entry_point']}(")
        assert "def check(candidate):" in record["test"]
    ids = [r["task_id"] for r in train + val + test]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_reference_solution_passes_its_tests(split):
    records = _load(split)
    if split == "train":
        pairs = [(r["solution"], r["test"], r["entry_point"]) for r in records]
    else:
        pairs = [(r["prompt"] + r["canonical_solution"], r["test"], r["entry_point"]) for r in records]
    out = _run_check(_suite(pairs))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"failing references: {out.stdout}"


@pytest.mark.parametrize("split", ["val", "test"])
def test_tests_reject_a_wrong_solution(split):
    # A body that returns None, or the input unchanged, must fail every problem's tests.
    records = _load(split)
    for wrong in ("    return None\n", "    return locals()[list(locals())[0]]\n"):
        pairs = [(r["prompt"] + wrong, r["test"], r["entry_point"]) for r in records]
        out = _run_check(_suite(pairs))
        assert json.loads(out.stdout) == list(range(len(records)))


def test_evaluation_tasks_never_occur_in_train():
    train, val, test = _load("train"), _load("val"), _load("test")
    train_instructions = {r["instruction"] for r in train}
    train_tests = {(r["entry_point"], r["test"]) for r in train}
    for record in val + test:
        assert record["instruction"] not in train_instructions
        assert (record["entry_point"], record["test"]) not in train_tests
        assert record["test"] not in {r["test"] for r in train}
    assert not {r["instruction"] for r in val} & {r["instruction"] for r in test}
    assert not {r["test"] for r in val} & {r["test"] for r in test}
