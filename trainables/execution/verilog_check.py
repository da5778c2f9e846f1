"""Checking Verilog samples: compile with iverilog, simulate with vvp, both inside the sandbox.

VerilogEval's convention: the testbench prints "Mismatches: N in M samples" when the simulation
finishes; a sample passes when N is 0. Here that line only counts when it carries a per-sample
token spliced into the testbench's own format string, so a module that prints a fake report
cannot pass. A design that names the testbench, the reference or files is refused before it runs
(verilog_lint: it could otherwise rewrite the testbench's counters or copy the reference). Compile errors
are `syntax_error`; a simulation that never finishes is a `timeout`.
"""
from __future__ import annotations

import os
import re
import shutil

from trainables.errors import ConfigError

TESTBENCH_TOP = "tb"
_REPORT_LITERAL = '"Mismatches:'
_MODULE_START = re.compile(r"^[ \t]*module\s", re.MULTILINE)
_LEADING_TRIVIA = re.compile(r"(?:\s+|//[^\n]*|/\*.*?\*/|`[^\n]*)*", re.DOTALL)
"""Whitespace, comments and compiler directives (`timescale, `default_nettype) before a design's first code."""


def tool_paths() -> tuple[str, str]:
    """(iverilog, vvp) absolute paths; ConfigError naming the Debian package when missing."""
    iverilog, vvp = shutil.which("iverilog"), shutil.which("vvp")
    if not iverilog or not vvp:
        raise ConfigError("Verilog problems need iverilog and vvp on PATH: install the Debian package 'iverilog'")
    return os.path.realpath(iverilog), os.path.realpath(vvp)


def verilog_source(problem: dict, completion: str) -> str:
    """The sample's design: the completion alone when it is a whole design, else the prompt's module header
    + completion (a module body, perhaps followed by helper modules).

    A whole design starts with a `module` declaration (after comments and compiler directives) or declares
    the prompt's own module somewhere (helper modules first); a prompt without a module header takes any
    completion that declares a module as whole.
    """
    if is_whole_design(problem["prompt"], completion):
        return completion
    return module_header(problem["prompt"]) + completion


def is_whole_design(prompt: str, code: str) -> bool:
    """Whether `code` is a complete design (see verilog_source) rather than the body of the prompt's module."""
    name = header_module_name(prompt)
    if name is None:
        return bool(_MODULE_START.search(code))
    rest = code[_LEADING_TRIVIA.match(code).end():]
    if re.match(r"module\s", rest):
        return True
    return bool(re.search(rf"^[ \t]*module\s+{re.escape(name)}\b", code, re.MULTILINE))


def header_module_name(prompt: str) -> str | None:
    """The name the prompt's last `module` declaration gives (VerilogEval v1: top_module; v2: TopModule)."""
    found = re.findall(r"^[ \t]*module\s+([A-Za-z_][A-Za-z0-9_$]*)", prompt, re.MULTILINE)
    return found[-1] if found else None


def module_header(prompt: str) -> str:
    """The prompt from its last `module` declaration on (VerilogEval prompts put prose before it)."""
    starts = list(_MODULE_START.finditer(prompt))
    return prompt[starts[-1].start():] if starts else prompt


def testbench_with_token(problem: dict, token: str) -> str:
    """The problem's testbench with `token` spliced into its report format string."""
    test = problem["test"]
    if _REPORT_LITERAL not in test:
        raise ConfigError(
            f"problem {problem['task_id']}: its testbench never prints \"Mismatches: N in M samples\" "
            "(VerilogEval's report line), so no sample could pass"
        )
    return test.replace(_REPORT_LITERAL, f'"{token} Mismatches:')


def build_steps(iverilog: str, vvp: str) -> list[list[str]]:
    """Compile (VerilogEval's iverilog flags) then simulate non-interactively."""
    return [
        [iverilog, "-Wall", "-Winfloop", "-Wno-timescale", "-g2012", "-s", TESTBENCH_TOP, "-o", "sim.vvp", "dut.sv", "tb.sv"],
        [vvp, "-n", "sim.vvp"],
    ]


def verdict_from_steps(reply: dict, token: str) -> dict:
    """Result fields (passed, result, outcome) from the compile and simulate steps' outcomes."""
    if reply.get("server_error"):
        return _verdict(False, f"failed: {reply['server_error']}", "error")
    outputs = [data.decode("utf-8", "replace") for data in reply.get("data", [])]
    steps = [{**step, "output": outputs[i] if i < len(outputs) else ""} for i, step in enumerate(reply.get("steps", []))]
    if not steps:
        return _verdict(False, "failed: the sandbox ran no step", "error")
    compile_step = steps[0]
    if compile_step["timed_out"]:
        return _verdict(False, "timed out", "timeout")
    if compile_step["status"] != 0 or len(steps) < 2:
        return _verdict(False, "failed: compile error: " + _first_error(compile_step["output"]), "syntax_error")
    sim = steps[1]
    if sim["timed_out"]:
        return _verdict(False, "timed out", "timeout")
    if sim.get("leftover_processes"):
        return _verdict(False, "failed: the simulation left processes running", "error")
    report = re.findall(rf"^{re.escape(token)} Mismatches: (\d+) in (\d+) samples\s*$", sim["output"], re.MULTILINE)
    if sim["status"] != 0:
        signalled = os.WIFSIGNALED(sim["status"])
        outcome = "resource_limit" if signalled else "error"
        return _verdict(False, f"failed: simulation ended with status {sim['status']}", outcome)
    if not report:
        return _verdict(False, "failed: the simulation ended without the testbench's report", "error")
    stopped = re.search(r"^ERROR: .*$", sim["output"], re.MULTILINE)
    if stopped:
        # vvp stops some runs on a run-time error yet exits 0, and the testbench's final block still reports the
        # samples so far (no VerilogEval testbench prints "ERROR:" itself).
        return _verdict(False, f"failed: the simulator stopped on an error: {stopped.group()[:300]}", "error")
    mismatches, samples = (int(v) for v in report[-1])
    if re.search(r"^TIMEOUT\s*$", sim["output"], re.MULTILINE):
        return _verdict(False, "failed: the testbench's own time limit was reached (TIMEOUT)", "timeout")
    if mismatches == 0 and samples > 0:
        return _verdict(True, "passed", "passed")
    return _verdict(False, f"failed: {mismatches} mismatches in {samples} samples", "failed")


def refused_verdict(reasons: list[str]) -> dict:
    """The verdict of a design refused before running (verilog_lint.refusals gave `reasons`)."""
    more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
    return _verdict(False, f"failed: refused: {reasons[0]}{more}", "refused")


def _first_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    # iverilog reports constructs it does not implement as "FILE:LINE: sorry: ..." and then only counts them.
    errors = [line for line in lines if "error" in line.lower() or "sorry:" in line]
    return (errors or lines or ["iverilog failed"])[0][:500]


def _verdict(passed: bool, result: str, outcome: str) -> dict:
    return {"passed": passed, "result": result, "outcome": outcome}
