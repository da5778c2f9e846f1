"""VerilogEval v1 Human as the "verilogeval" benchmark: shipped problems, the seeded validation/test split, the
prompt instruct models get, answer extraction, and every canonical solution through the real checker."""
from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.cli import main
from trainables.benchmarks import (
    BUILTIN,
    VERILOGEVAL_EXCLUDED,
    VERILOGEVAL_FILE,
    VERILOGEVAL_SPLIT_FILE,
    load_benchmark,
    load_verilogeval,
    make_verilogeval_split,
)
from trainables.code_extraction import make_completion, verilog_completion
from trainables.execution import load_problems
from trainables.execution.verilog_check import verilog_source

REPO = Path(__file__).resolve().parents[1]
needs_iverilog = pytest.mark.skipif(
    shutil.which("iverilog") is None or shutil.which("vvp") is None,
    reason="iverilog/vvp not installed (Debian package 'iverilog'; `make` installs it)",
)

VACUOUS_TESTBENCH = {"m2014_q4d"}
"""VerilogEval problems whose own testbench accepts a wrong design: m2014_q4d's reference flip-flop samples `in`
while it is still X at the first clock edge, stays X, and `x === (x ^ dut ^ x)` holds for any output (the same
under iverilog 12; a property of the dataset, kept as published)."""

_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_CONTINUOUS = re.compile(r"^([ \t]*assign\s+[^;=]+=)\s*([^;]+);", re.MULTILINE)
_PROCEDURAL = re.compile(
    r"^([ \t]*(?:[\w']+\s*:\s*)?(?:begin\s+)?[A-Za-z_]\w*(?:\s*\[[^\]]*\])*\s*(?:<=|=)(?!=))\s*([^;]+);", re.MULTILINE
)


def invert_first_assignment(body: str) -> str | None:
    """The body with the right-hand side of its first meaningful assignment bitwise-inverted: the first
    `assign`, else the first procedural assignment that is not an X default or an `initial` value."""
    body = _COMMENTS.sub("", body)
    for pattern in (_CONTINUOUS, _PROCEDURAL):
        for m in pattern.finditer(body):
            if re.search(r"'[bh]x|^\s*default\b", m.group(0)) or re.search(r"\binitial\s*$", body[: m.start()]):
                continue
            return body[: m.start(2)] + "~(" + m.group(2) + ")" + body[m.end(2) :]
    return None


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return load_verilogeval()


def shipped_split() -> dict:
    with open(VERILOGEVAL_SPLIT_FILE, encoding="utf-8") as f:
        return json.load(f)


def test_shipped_problems_are_verilogeval_v1_human(problems):
    assert "verilogeval" in BUILTIN and "verilog" in BUILTIN
    assert len(problems) == 156
    for p in problems.values():
        assert p["language"] == "verilog" and p["entry_point"] == "top_module"
        assert p["prompt"].startswith("module top_module") and p["prompt"].rstrip().endswith(";")
        assert p["canonical_solution"].rstrip().endswith("endmodule") and p["description"].strip()
        assert "module tb" in p["test"] and '"Mismatches:' in p["test"]
    assert load_problems("verilogeval") == problems  # what `ibft check --problems verilogeval` reads
    licence = (Path(VERILOGEVAL_FILE).parent / "LICENSE").read_text()
    assert "MIT License" in licence and "NVIDIA" in licence
    assert "release/1.0.0" in (Path(VERILOGEVAL_FILE).parent / "SOURCE.md").read_text()


def test_split_is_disjoint_covering_and_records_its_exclusions(problems):
    split = shipped_split()
    val, test, excluded = set(split["val"]), set(split["test"]), set(split["excluded"])
    assert not val & test and not (val | test) & excluded
    assert val | test | excluded == set(problems)
    assert len(split["val"]) == len(val) == 40 and len(test) == 114
    assert split["excluded"] == VERILOGEVAL_EXCLUDED and all("iverilog" in r.lower() for r in split["excluded"].values())
    assert split["val"] == sorted(split["val"]) and split["test"] == sorted(split["test"])


def test_split_script_reproduces_the_shipped_file(tmp_path):
    out = tmp_path / "split.json"
    script = str(REPO / "scripts" / "make_verilogeval_split.py")
    subprocess.run([sys.executable, script, "--out", str(out)], check=True, capture_output=True)
    assert out.read_text() == Path(VERILOGEVAL_SPLIT_FILE).read_text()
    check = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_split_depends_on_the_seed_only_not_on_input_order(problems):
    ids = list(problems)
    assert make_verilogeval_split(ids) == make_verilogeval_split(list(reversed(ids)))
    assert make_verilogeval_split(ids, seed=1)["val"] != make_verilogeval_split(ids)["val"]
    with pytest.raises(ValueError, match="not in the problems"):
        make_verilogeval_split(ids[:10])


@pytest.mark.skipif(not Path("/work/shared/data/verilog-eval/v1").is_dir(), reason="no VerilogEval source copy here")
def test_shipped_file_is_the_import_of_the_source_copy():
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "import_verilogeval.py"), "--source", "/work/shared/data/verilog-eval", "--check"],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    with gzip.open(VERILOGEVAL_FILE, "rt", encoding="utf-8") as f:
        assert sum(1 for line in f if line.strip()) == 156


def test_splits_load_in_split_order():
    split = shipped_split()
    val, test = load_benchmark("verilogeval", "val"), load_benchmark("verilogeval", "test")
    assert [p["task_id"] for p in val] == split["val"] and [p["task_id"] for p in test] == split["test"]
    assert len(load_benchmark("verilogeval", "all")) == 156
    assert len(load_benchmark("verilogeval", "val", limit=3)) == 3
    assert len(load_benchmark("verilog", "val")) == 13  # the small problems stay for fast tests


def test_prompt_is_description_then_module_header(problems):
    from trainables.data.formatting import format_prompt
    from trainables.evaluation import instruction_for
    from trainables.generation import FENCE

    for p in problems.values():
        instruction = instruction_for(p)
        assert instruction.index(p["description"].strip()) < instruction.index(p["prompt"])
        assert instruction.endswith(p["prompt"]) and "Verilog" in instruction
        prompt = format_prompt(None, instruction, "official")  # spaces/origen.yaml's prompt format
        assert prompt == instruction + "\n" and prompt.count(FENCE) % 2 == 0


def test_answers_as_a_whole_module_or_a_body_give_the_same_design(problems):
    p = problems["gatesv"]
    header, body = p["prompt"], p["canonical_solution"]
    whole = header + body
    answers = {
        "body": body,
        "fenced module among prose": "Sure! Here is the design:\n```verilog\n" + whole + "```\nIt uses three assigns.",
        "bare module after prose": "Here is the code:\n" + whole + "\nThis module compares adjacent bits.",
        "body then prose": body + "\nThe body above closes the module.",
        "module and a longer testbench": "```verilog\n" + whole + "```\nTest it with:\n```verilog\nmodule tb_gatesv;\n"
        + "  reg [3:0] in;\n" * 30 + "endmodule\n```",
        "directive first": "`timescale 1ns/1ps\n" + whole,
    }
    for name, answer in answers.items():
        completion = make_completion(p, answer)
        design = verilog_source(p, completion)
        assert design.count("module top_module") == 1, name
        assert design.rstrip().endswith("endmodule") and "assign out_different" in design, name
        assert "This module" not in design and "tb_gatesv" not in design and "Here is" not in design, name
    assert verilog_completion(header, "`timescale 1ns/1ps\n" + whole).startswith("`timescale")
    # A body followed by a helper module keeps the header: the helper does not make it a whole design.
    helper = "  inv u(.a(in[0]), .y());\nendmodule\n\nmodule inv(input a, output y);\n  assign y = ~a;\nendmodule\n"
    assert verilog_source(p, make_completion(p, helper)).startswith(header)


@pytest.mark.slow  # about 620 iverilog compiles + simulations: 50 s on 2 busy cores
@needs_iverilog
def test_canonical_solutions_pass_and_corrupted_ones_fail_through_ibft_check(problems, tmp_path, capsys):
    """All 156 canonical solutions through `ibft check --problems verilogeval` (its batch Checker, one sandboxed
    worker per CPU), with the same designs as chat answers (a whole module in a fence), and two corruptions of
    each: the module body emptied and its first assignment inverted."""
    rows, kinds = [], []

    def add(task_id, completion, kind):
        rows.append({"task_id": task_id, "completion": completion})
        kinds.append((kind, task_id))

    for t, p in problems.items():
        add(t, p["canonical_solution"], "canonical")
        add(t, make_completion(p, "```verilog\n" + p["prompt"] + p["canonical_solution"] + "```"), "whole module")
        if t in VERILOGEVAL_EXCLUDED:
            continue
        add(t, "endmodule\n", "emptied")
        inverted = invert_first_assignment(p["canonical_solution"])
        if inverted is not None:
            add(t, inverted, "inverted")
    add("notgate", "  inv u(.a(in), .y(out));\nendmodule\n\nmodule inv(input a, output y);\n  assign y = ~a;\nendmodule\n",
        "body with a helper module")
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    started = time.perf_counter()
    code = main(["check", "--problems", "verilogeval", "--samples", str(samples), "--k", "1", "--timeout", "20",
                 "--no-progress"])
    seconds = time.perf_counter() - started
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out)
    results = [json.loads(line) for line in Path(summary["results_file"]).read_text().splitlines()]
    assert len(results) == len(rows)
    print(f"ibft check: {len(rows)} VerilogEval samples in {seconds:.1f} s")

    by_kind: dict[str, list[dict]] = {}
    for (kind, task_id), result in zip(kinds, results):
        assert result["task_id"] == task_id
        by_kind.setdefault(kind, []).append(result)
    for kind in ("canonical", "whole module"):
        for r in by_kind[kind]:
            if r["task_id"] in VERILOGEVAL_EXCLUDED:
                # iverilog 11 cannot compile these testbenches (enum casts); iverilog 12 can.
                assert r["passed"] or (r["outcome"] == "syntax_error" and "cast" in r["result"]), r
            else:
                assert r["passed"], (kind, r["task_id"], r["result"])
    assert not any(r["passed"] for r in by_kind["emptied"]) and len(by_kind["emptied"]) == 154
    inverted = by_kind["inverted"]
    assert len(inverted) >= 150
    wrongly_passed = {r["task_id"] for r in inverted if r["passed"]}
    assert wrongly_passed <= VACUOUS_TESTBENCH, wrongly_passed
    assert all(r["outcome"] == "failed" for r in inverted if not r["passed"]), [r for r in inverted if r["outcome"] != "failed"]
    assert by_kind["body with a helper module"][0]["passed"]


@pytest.mark.usefixtures("one_torch_thread")
def test_ibft_eval_runs_the_verilogeval_test_split(tmp_path, capsys):
    code = main(["eval", "--no-progress", "--model", "tiny-random-llama", "--benchmark", "verilogeval", "--split", "test",
                 "--limit", "1", "--n", "1", "--k", "1", "--m", "1", "--max-new-tokens", "4", "--out", str(tmp_path / "e")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["n_tasks"] == 1 and summary["n_samples"] == 1
    sample = json.loads((tmp_path / "e" / "samples.jsonl").read_text().splitlines()[0])
    assert sample["task_id"] == shipped_split()["test"][0]
