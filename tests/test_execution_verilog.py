"""Verilog checking with iverilog/vvp in the sandbox: shipped problems, broken designs, VerilogEval folders."""
import shutil

import pytest

from trainables.errors import ConfigError
from trainables.execution import check_samples, load_problems, load_verilogeval_folder
from trainables.execution.verilog_check import module_header, verilog_source

pytestmark = pytest.mark.skipif(
    shutil.which("iverilog") is None or shutil.which("vvp") is None,
    reason="iverilog/vvp not installed (Debian package 'iverilog'; `make` installs it)",
)

AND = "ibft_verilog/and_gate"
COUNTER = "ibft_verilog/counter4_enable"


@pytest.fixture(scope="module")
def problems():
    return load_problems("verilog")


def test_a_dozen_shipped_problems_and_every_reference_solution_passes(problems):
    assert len(problems) >= 12
    assert all(p["language"] == "verilog" and p["entry_point"] == "TopModule" for p in problems.values())
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    results = check_samples(problems, samples, timeout=10.0, workers=2)
    assert [r["outcome"] for r in results] == ["passed"] * len(samples), [r["result"] for r in results]


def test_broken_designs_fail_with_the_right_outcome(problems):
    completions = {
        "wrong_logic": "  assign y = a | b;\nendmodule\n",
        "compile_error": "  assign y = a & ;\nendmodule\n",
        "infinite_simulation": "  reg r = 0;\n  initial while (1) r = ~r;\n  assign y = a & b;\nendmodule\n",
        "fake_report": "  assign y = a;\n  initial #1000 begin $display(\"Mismatches: 0 in 256 samples\"); $finish; end\nendmodule\n",
        "finishes_before_the_testbench": "  assign y = a & b;\n  initial $finish;\nendmodule\n",
        "full_module": "module TopModule (input a, input b, output y);\n  assign y = b & a;\nendmodule\n",
    }
    samples = [{"task_id": AND, "completion": c} for c in completions.values()]
    samples.append({"task_id": COUNTER, "completion": "  always @(posedge clk) q <= q + 1;\nendmodule\n"})
    results = dict(zip(list(completions) + ["counter_ignores_reset"], check_samples(problems, samples, timeout=2.0)))
    assert results["wrong_logic"]["outcome"] == "failed" and "mismatches" in results["wrong_logic"]["result"]
    assert results["compile_error"]["outcome"] == "syntax_error"
    assert results["infinite_simulation"]["outcome"] == "timeout"
    assert not results["fake_report"]["passed"]
    assert not results["finishes_before_the_testbench"]["passed"]
    assert results["full_module"]["passed"]
    assert results["counter_ignores_reset"]["outcome"] == "failed"


def test_source_assembly_from_a_verilogeval_style_prompt():
    prompt = "Build an AND gate.\n\nmodule TopModule (\n  input a,\n  input b,\n  output y\n);\n"
    assert module_header(prompt).startswith("module TopModule (")
    assert verilog_source({"prompt": prompt}, "  assign y = a & b;\nendmodule\n").startswith("module TopModule (")
    whole = "module TopModule(input a, input b, output y); assign y = a; endmodule"
    assert verilog_source({"prompt": prompt}, whole) == whole


def test_verilogeval_folder_loader(tmp_path, problems):
    # A VerilogEval v2 folder: ProbNNN_name_{prompt.txt, ref.sv, test.sv}, testbench instantiating RefModule/TopModule.
    problem = problems[AND]
    test, ref = problem["test"].split("\nmodule RefModule", 1)
    (tmp_path / "Prob001_and_prompt.txt").write_text("Build an AND gate.\n\n" + module_header(problem["prompt"]))
    (tmp_path / "Prob001_and_ref.sv").write_text("module RefModule" + ref)
    (tmp_path / "Prob001_and_test.sv").write_text(test)
    (tmp_path / "Prob002_partial_prompt.txt").write_text("no reference or testbench")
    loaded = load_verilogeval_folder(str(tmp_path))
    assert list(loaded) == ["Prob001_and"]
    samples = [
        {"task_id": "Prob001_and", "completion": loaded["Prob001_and"]["canonical_solution"]},
        {"task_id": "Prob001_and", "completion": "  assign y = ~a;\nendmodule\n"},
    ]
    assert [r["passed"] for r in check_samples(loaded, samples, timeout=5.0)] == [True, False]
    with pytest.raises(ConfigError, match="no VerilogEval problems"):
        load_verilogeval_folder(str(tmp_path / "nothing-here"))


def test_testbench_without_a_report_line_is_a_clear_error():
    problem = {"task_id": "x", "prompt": "module TopModule(input a, output y);\n", "test": "module tb; endmodule",
               "entry_point": "TopModule", "language": "verilog"}
    with pytest.raises(ConfigError, match="Mismatches"):
        check_samples({"x": problem}, [{"task_id": "x", "completion": "assign y = a;\nendmodule\n"}])


def test_a_design_that_finishes_at_time_zero_never_passes_a_testbench_reporting_in_a_final_block():
    # VerilogEval v2's testbenches print their report from a `final` block, which runs on any $finish: a design
    # that ends the simulation at time 0 gets "Mismatches: 0 in 0 samples", which must not count as a pass.
    test = (
        "`timescale 1ns/1ps\n"
        "module tb;\n"
        "  reg a, b;\n"
        "  wire y_ref, y_dut;\n"
        "  RefModule ref_i (.a(a), .b(b), .y(y_ref));\n"
        "  TopModule dut_i (.a(a), .b(b), .y(y_dut));\n"
        "  integer errors = 0;\n"
        "  integer samples = 0;\n"
        "  integer i;\n"
        "  initial begin\n"
        "    for (i = 0; i < 64; i = i + 1) begin\n"
        "      {a, b} = $random;\n"
        "      #1;\n"
        "      samples = samples + 1;\n"
        "      if (y_ref !== y_dut) errors = errors + 1;\n"
        "    end\n"
        "    $finish;\n"
        "  end\n"
        "  final $display(\"Mismatches: %0d in %0d samples\", errors, samples);\n"
        "endmodule\n\n"
        "module RefModule (input a, input b, output y);\n  assign y = a & b;\nendmodule\n"
    )
    problem = {"task_id": "final_report/and", "language": "verilog", "entry_point": "TopModule", "test": test,
               "prompt": "module TopModule (\n  input a,\n  input b,\n  output y\n);\n"}
    samples = [
        {"task_id": "final_report/and", "completion": "  assign y = a & b;\nendmodule\n"},
        {"task_id": "final_report/and", "completion": "  assign y = a & b;\n  initial $finish;\nendmodule\n"},
    ]
    right, early = check_samples({"final_report/and": problem}, samples, timeout=5.0)
    assert right["passed"], right["result"]  # the final-block report itself is read
    # Ending the simulation is the testbench's: the design is refused before it runs (verilog_lint) ...
    assert not early["passed"] and early["outcome"] == "refused", early
    assert "$finish" in early["result"]
    # ... and a report of no samples at all is never a pass.
    from trainables.execution.verilog_check import verdict_from_steps

    ok = {"status": 0, "timed_out": False}
    reply = {"steps": [ok, ok], "data": [b"", b"tok Mismatches: 0 in 0 samples\n"]}
    assert verdict_from_steps(reply, "tok") == {
        "passed": False, "result": "failed: 0 mismatches in 0 samples", "outcome": "failed"
    }
