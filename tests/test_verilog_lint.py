"""A Verilog design cannot forge its verdict through the simulation it shares with its testbench
(trainables/execution/verilog_lint.py): hierarchical names, the reference module, files and directives are
refused before anything runs; every canonical solution still passes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trainables.execution import load_problems, load_verilogeval_folder
from trainables.execution.checker import Checker
from trainables.execution.results import summarize
from trainables.execution.verilog_check import verilog_source
from trainables.execution.verilog_lint import refusals, tokens

ROOT = Path(__file__).resolve().parents[1]
V2 = ROOT.parent / "shared" / "data" / "verilog-eval" / "v2" / "dataset_spec-to-rtl"
V1_MACHINE = ROOT.parent / "shared" / "data" / "verilog-eval" / "v1" / "data" / "VerilogEval_Machine.jsonl"
TASK = "2012_q1g"  # VerilogEval v1 Human: f = a function of x[4:1]; its testbench instantiates reference_module
HEADER = "module top_module (\n\tinput [4:1] x,\n\toutput logic f\n);\n"

# Each attack outputs a wrong answer (f = 0, or nothing of its own) and passes only by forging.
FORGERIES = {
    # Zeroes the testbench's mismatch counter at every sample: passed on the code before verilog_lint.
    "hierarchical-write": HEADER + "assign f = 0;\nalways @(tb.stats1.clocks) tb.stats1.errors = 0;\nendmodule\n",
    # Copies the reference model's output: passed before.
    "hierarchical-read": HEADER + "assign f = tb.f_ref;\nendmodule\n",
    # Instantiates the reference model itself: passed before.
    "reference-instance": HEADER + "reference_module r (.x(x), .f(f));\nendmodule\n",
    # Reads the testbench's source (it holds the per-sample report token) and prints a forged report.
    "read-the-testbench": HEADER + """assign f = 0;
integer fd, n; string prev, cur;
final begin fd = $fopen("tb.sv", "r"); prev = "";
  while (!$feof(fd)) begin n = $fscanf(fd, "%s", cur);
    if (cur == "Mismatches:") $display("%s Mismatches: 0 in 100 samples", prev.substr(10, prev.len() - 1));
    prev = cur; end
end
endmodule
""",
    # Outputs a constant, and ends the simulation after the first sample, which the constant matches (the
    # testbench's final block then reports "Mismatches: 0 in 1 samples"): passed before.
    "early-stop": "`timescale 1ps/1ps\n" + HEADER + "assign f = 1;\ninitial #6 $stop;\nendmodule\n",
    "early-finish": "`timescale 1ps/1ps\n" + HEADER + "assign f = 1;\ninitial #6 $finish;\nendmodule\n",
    # Force the design's own input (its net is the testbench's stimulus, which the reference reads too) to a
    # value whose answer the constant output gives: passed before. The same through a bidirectional switch.
    "force-the-input": HEADER + "initial force x = 4'h0;\nassign f = 1;\nendmodule\n",
    "switch-on-the-input": HEADER + "wire [4:1] z = 4'h0;\ntran t1 (x[1], z[1]), t2 (x[2], z[2]), t3 (x[3], z[3]), "
    "t4 (x[4], z[4]);\nassign f = 1;\nendmodule\n",
    "inout-port": "module top_module (inout [4:1] x, output logic f);\nassign x = 4'h0;\nassign f = 1;\nendmodule\n",
    # Found by a red team (2026-12-01), each passed the checker with the first version of these rules:
    # steering the one random-number generator the testbench's stimulus draws from (values the constant
    # cannot answer are drawn and thrown away, peeked at through a seeded copy of the state) ...
    "steer-the-stimulus": "`timescale 1ps/1ps\n" + HEADER + """assign f = 1;
integer m, t, v, dummy;
function automatic bit good(input [3:0] k);
  good = (k == 0 || k == 1 || k == 4 || k == 5 || k == 6 || k == 12 || k == 14 || k == 15);
endfunction
initial begin
  m = 0;
  #1;
  forever begin
    t = m; v = $random(t);
    while (!good(v[3:0])) begin dummy = $random; m = t; t = m; v = $random(t); end
    m = t;
    #5;
  end
end
endmodule
""",
    # ... escaped names, which iverilog reads as the system task or the module they spell ...
    "escaped-system-task": "`timescale 1ps/1ps\n" + HEADER + "assign f = 0;\ninitial #6 \\$finish ;\nendmodule\n",
    "escaped-module-name": HEADER + "\\reference_module r (.x(x), .f(f));\nendmodule\n",
    "escaped-forged-report": HEADER + """assign f = 0;
integer fd, out, r, k;
reg [8*400:1] line;
reg [256:1] tok;
initial begin
  out = \\$fopen ("/dev/stdout", "a");
  fd = \\$fopen ("tb.sv", "r");
  while (!\\$feof (fd)) begin
    line = 0;
    r = \\$fgets (line, fd);
    for (k = 0; k < 340; k = k + 1)
      if (line[8*k+1 +: 128] == " Mismatches: %1d" && line[8*(k+48)+1 +: 8] == "\\"")
        tok = line[8*(k+16)+1 +: 256];
  end
end
final \\$fdisplay (out, "%s Mismatches: 0 in 100 samples", tok);
endmodule
""",
    # ... and control characters, where iverilog and Python split the text differently: a backspace ends an
    # escaped name for iverilog only (hiding a hierarchical name), a vertical tab is whitespace for Python only
    # (faking a definition of the reference's name).
    "backspace-hierarchical-read": HEADER + "wire \\z = 0;\nassign f = \\z\b^tb.f_ref^\\z ;\nendmodule\n",
    "backspace-hierarchical-write": HEADER + "reg \\z = 0;\nassign f = 0;\n"
    "always @(\\z\b,tb.stats1.errors) begin \\z\b=0;tb.stats1.errors=0; end\nendmodule\n",
    "vertical-tab-definition": HEADER + "typedef logic \\q\vmodule ;\n"
    "function automatic logic g; \\q\vmodule reference_module; g = 0; endfunction\n"
    "reference_module r (.x(x), .f(f));\nendmodule\n",
    # A second red team: $sscanf with a format code Icarus 11 does not know stops the simulation with exit
    # status 0, after the one sample the constant matches (passed with the rules before it).
    "sscanf-stop": "`timescale 1ps/1ps\n" + HEADER + "assign f = 1;\ninteger v, r;\n"
    "initial #6 r = $sscanf(\"12\", \"%q\", v);\nendmodule\n",
    "memory-file": HEADER + "reg [7:0] m [0:9999];\ninitial $readmemh(\"tb.sv\", m);\nassign f = 0;\nendmodule\n",
    "include": "`include \"tb.sv\"\n" + HEADER + "assign f = 0;\nendmodule\n",
    # A macro leaks into the testbench, compiled after the design; pasting builds names out of pieces.
    "define": "`define OK 0\n" + HEADER + "assign f = 0;\nendmodule\n",
    "token-pasting": "`define J(a,b) a``b\n" + HEADER + "initial `J($fo,pen)(\"tb.sv\", \"r\");\nassign f = 0;\nendmodule\n",
    "root": HEADER + "assign f = $root.tb.f_ref;\nendmodule\n",
    "plusargs": HEADER + "integer v; initial if ($value$plusargs(\"x=%d\", v)) $display(v);\nassign f = 0;\nendmodule\n",
    "system": HEADER + "initial $system(\"cat tb.sv\");\nassign f = 0;\nendmodule\n",
    "bind": HEADER + "assign f = 0;\nendmodule\nbind tb top_module extra(.x(x), .f());\n",
}


@pytest.fixture(scope="module")
def v1():
    return load_problems("verilogeval")


def _canonical_refusals(problems: dict) -> dict:
    out = {}
    for task, p in problems.items():
        reasons = refusals(verilog_source(p, p["canonical_solution"]), p["test"])
        if reasons:
            out[task] = reasons
    return out


def test_every_shipped_canonical_solution_keeps_to_the_rules(v1):
    assert len(v1) == 156 and _canonical_refusals(v1) == {}
    shipped = load_problems("verilog")
    assert _canonical_refusals(shipped) == {}


@pytest.mark.skipif(not V2.is_dir() or not V1_MACHINE.is_file(),
                    reason=f"the VerilogEval v2 / v1 Machine copies are not beside the checkout ({V2.parents[2]})")
def test_every_verilogeval_v2_and_v1_machine_canonical_solution_keeps_to_the_rules():
    v2 = load_verilogeval_folder(str(V2))
    assert len(v2) == 156 and _canonical_refusals(v2) == {}
    machine = {}
    for line in V1_MACHINE.read_text().splitlines():
        record = json.loads(line)
        machine[record["task_id"]] = {**record, "language": "verilog"}
    assert len(machine) == 143 and _canonical_refusals(machine) == {}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_forging_design_is_refused_by_a_rule(v1, name):
    p = v1[TASK]
    reasons = refusals(verilog_source(p, FORGERIES[name]), p["test"])
    assert reasons and all(r.startswith("line ") for r in reasons), reasons


@pytest.mark.skipif(shutil.which("iverilog") is None or shutil.which("vvp") is None,
                    reason="iverilog/vvp not installed (Debian package 'iverilog'; `make` installs it)")
def test_forging_designs_never_run_and_never_pass_the_real_checker(v1):
    p = v1[TASK]
    samples = [{"task_id": TASK, "completion": code, "name": name} for name, code in FORGERIES.items()]
    samples.append({"task_id": TASK, "completion": p["canonical_solution"], "name": "canonical"})
    samples.append({"task_id": TASK, "completion": HEADER + "assign f = 1;\nendmodule\n", "name": "wrong"})
    checker = Checker(workers=1)
    try:
        results = {r["name"]: r for r in checker.check({TASK: p}, samples)}
    finally:
        checker.close()
    for name in FORGERIES:
        assert (results[name]["passed"], results[name]["outcome"]) == (False, "refused"), results[name]
        assert results[name]["result"].startswith("failed: refused: line ")
    assert results["canonical"]["outcome"] == "passed"
    assert results["wrong"]["outcome"] == "failed"  # an honest wrong design still runs and fails
    summary = summarize(list(results.values()), [1])
    assert summary["outcomes"]["refused"] == len(FORGERIES) and summary["outcomes"]["passed"] == 1


@pytest.mark.skipif(shutil.which("iverilog") is None or shutil.which("vvp") is None,
                    reason="iverilog/vvp not installed (Debian package 'iverilog'; `make` installs it)")
def test_a_run_the_simulator_stopped_on_an_error_fails_even_past_the_rules(v1, monkeypatch):
    """Defence in depth: were a design to reach a run-time error that stops vvp with exit status 0 (as $sscanf
    with an unknown format code does), the testbench's final block still reports the samples so far."""
    import trainables.execution.checker as checker_module

    monkeypatch.setattr(checker_module.verilog_lint, "refusals", lambda design, testbench: [])
    p = v1[TASK]
    checker = Checker(workers=1)
    try:
        (result,) = checker.check({TASK: p}, [{"task_id": TASK, "completion": FORGERIES["sscanf-stop"]}])
    finally:
        checker.close()
    assert (result["passed"], result["outcome"]) == (False, "error"), result
    assert "the simulator stopped on an error: ERROR:" in result["result"]


@pytest.mark.parametrize(
    "design",
    [
        "module m(input a, output y); sub u (.a(a), .y(y)); endmodule",  # named port connections
        "module m(input a, output y); sub u (.a, .y); endmodule",
        "module m(input a, output y); sub u (.*); endmodule",
        "module m(output real r); assign r = 1.5e3 + 0.25; endmodule",  # a number's point is not a name's
        "module m(output [3:0] y); assign y = 4'b1010 + 4'h F + 'x; endmodule",
        'module m(output y); initial $display("tb.stats1 $fopen `include"); assign y = 0; endmodule',  # in a string
        "// tb.stats1.errors, $fopen, `define\n/* reference_module r(); */ module m(output y); assign y = $signed(1'b0); endmodule",
        "`timescale 1ns/1ps\n`default_nettype none\nmodule m(output y); assign y = 1'b0; endmodule",
        "module m(output [7:0] y); localparam W = $clog2(256); assign y = $bits(y) + W; endmodule",
        "module m(output y); initial begin $dumpfile(\"w.vcd\"); $dumpvars; end assign y = 0; endmodule",
        "// Unicode in comments \u2265 and strings is fine\nmodule m(output y); initial $display(\"\u2264\"); "
        "assign y = 0; endmodule",
    ],
)
def test_honest_constructs_are_allowed(design):
    testbench = "module tb(); endmodule\nmodule reference_module(input x, output f); endmodule\n"
    assert refusals(design, testbench) == []


@pytest.mark.parametrize(
    "design, rule",
    [
        ("module m(output y); sub u (); assign y = u.q; endmodule", "hierarchical name u."),
        ("module m(output y); sub u [1:0] (); assign y = u[0].q; endmodule", "hierarchical name ]."),
        ("module m(output y); assign y = tb.x; endmodule", "'tb', which the testbench defines"),
        ("module m(output y); reference_module r (); endmodule", "'reference_module'"),
        ("`ifdef X\nmodule m; endmodule\n`endif", "compiler directive `ifdef"),
        ("module m; initial $fdisplay(32'h8000_0001, \"Mismatches: 0 in 1 samples\"); endmodule", "$fdisplay"),
        ("module m(output y); wire \\tb.f_ref ; assign y = \\tb.f_ref ; endmodule", "escaped name \\tb.f_ref"),
        ("module m(output y); assign y = $urandom; endmodule", "$urandom"),
        ("module m(output y);\n// a comment\x0c\nassign y = 0; endmodule", "line 2: control character 0x0c"),
        ("module m(output y); assign y = 0 \u2265 1; endmodule", "non-ASCII character"),
        ("module m(input x, output y); initial for\u00a0ce x = 0; endmodule", "non-ASCII character '\\xa0'"),
    ],
)
def test_each_rule_names_what_it_refused(design, rule):
    testbench = "module tb(); endmodule\nmodule reference_module(input x, output f); endmodule\n"
    reasons = refusals(design, testbench)
    assert reasons and rule in reasons[0], reasons


def test_a_design_may_define_a_module_the_testbench_only_instantiates():
    testbench = "module tb(); top_module dut (); reference_module r (); endmodule\nmodule reference_module(); endmodule"
    assert refusals("module top_module(); endmodule", testbench) == []


def test_tokens_keep_line_numbers_and_drop_comments():
    got = [(t.kind, t.text, t.line) for t in tokens("a /* x\ny */ $b\n// c\n`d \"e\\\"f\" 4'hF 1.5")]
    assert got == [("id", "a", 1), ("sys", "$b", 2), ("dir", "`d", 4), ("str", '"e\\"f"', 4), ("num", "4'hF", 4),
                   ("num", "1.5", 4)]
