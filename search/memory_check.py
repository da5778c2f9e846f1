"""`ibft tune`'s memory preflight: will one trial of a GPU space fit its GPUs? Answered before Ray starts.

The estimate (trainables.memory_estimate) comes from the model's shape and the space's settings alone; a GPU space
whose trial's per-GPU peak exceeds resources.gpu_memory_gib is refused with one line naming the changes that would
make it fit (each checked by estimating again with it). CPU spaces are not checked (nothing to compare against).
"""
from __future__ import annotations

import sys
from typing import Any, Optional, TextIO

from trainables.errors import ConfigError


CHARS_PER_TOKEN = 3.7
"""Characters per token assumed for a benchmark's prompts when no tokenizer is at hand (SmolLM2's tokenizer
averages 3.7 on VerilogEval's instructions and 3.3 on HumanEval's, but 4.4 on VerilogEval's longest)."""
TEMPLATE_TOKENS = 32
"""Tokens a prompt format adds around the instruction (chat template, "### Instruction:" lines)."""


def train_setup(space: Any) -> Any:
    """The TrainSetup of one searched trial (alpha > 0) of `space` on one worker, its decode the larger of the
    validation and test decodes."""
    from trainables.memory_estimate import TrainSetup

    ds, training, ib = space.deepspeed, space.training, space.ib
    setup = TrainSetup(
        dtype=ds.precision,
        batch_size=training.batch_size,
        max_length=space.data.max_length,
        lora_r=space.lora.r,
        lora_dropout=space.lora.dropout,
        lora_targets=tuple(space.lora.target_modules),
        ib_enabled=True,
        bottleneck_dim=int(ib.get("bottleneck_dim", 256)),
        ce_chunk_size=int(ib.get("ce_chunk_size", 1024)),
        ib_token_fraction=float(ib.get("ib_token_fraction", 1.0)),
        gradient_checkpointing=bool(getattr(training, "gradient_checkpointing", False)),
        deepspeed=ds.enabled,
        zero_stage=ds.zero_stage,
        offload_optimizer=ds.offload_optimizer,
        offload_params=ds.offload_params,
        world_size=space.resources.workers,
        device="cuda",
    )
    decodes = decode_setups(space, setup)
    return max(decodes.values(), key=lambda d: d.decode_rows * (d.prompt_tokens + d.max_new_tokens))


def decode_setups(space: Any, setup: Any) -> dict[str, Any]:
    """{"validation": setup with its decode, "test": ...} for the benchmarks the space scores."""
    from dataclasses import replace

    out = {}
    for name in ("validation", "test"):
        bench = getattr(space, name)
        if bench is None:
            continue
        split = "val" if name == "validation" else "test"
        out[name] = replace(
            setup, decode_rows=decode_rows(bench), prompt_tokens=prompt_tokens(bench.benchmark, split),
            max_new_tokens=bench.max_new_tokens, samples_per_prompt=bench.n,
        )
    return out


def decode_rows(bench: Any) -> int:
    """Sequences trainables.generation decodes together: batch_size // n whole prompts' n samples."""
    prompts = max(1, bench.batch_size // bench.n)
    if bench.tasks is not None:
        prompts = min(prompts, bench.tasks)
    return prompts * bench.n


def prompt_tokens(benchmark: str, split: str) -> int:
    """Tokens of a benchmark split's longest prompt, from its characters (the benchmark files are local); the
    estimator's default when the benchmark cannot be read here."""
    from trainables.memory_estimate import DEFAULT_PROMPT_TOKENS

    try:
        from trainables.benchmarks import load_benchmark
        from trainables.evaluation import instruction_for

        problems = load_benchmark(benchmark, split)
        longest = max(len(instruction_for(p)) for p in problems)
    except Exception:  # a path benchmark not on this machine, an unknown name: the default prompt length
        return DEFAULT_PROMPT_TOKENS
    return int(longest / CHARS_PER_TOKEN) + TEMPLATE_TOKENS


def check_space(space: Any, where: str, out: Optional[TextIO] = None, skip: bool = False) -> Optional[Any]:
    """Print the per-GPU estimate of a GPU space's trial on `out` (stderr) and raise a one-line ConfigError when it
    cannot fit resources.gpu_memory_gib (unless `skip`). Returns the MemoryEstimate, or None when not checked."""
    out = out if out is not None else sys.stderr
    capacity = space.resources.gpu_memory()
    if capacity is None:
        return None  # CPU training: no GPU memory to compare against
    from dataclasses import replace

    from trainables.memory_estimate import GIB, estimate, fixes, gib, largest_decode_rows, model_shape

    model = space.model
    shape = model_shape(model.name_or_path, model.tiny_overrides)
    if shape is None:
        print(
            f"ibft tune: memory estimate skipped: no config.json for {model.name_or_path!r} here and the hub is not "
            "reachable",
            file=out,
        )
        return None
    setup = train_setup(space)
    result = estimate(shape, setup)
    print("ibft tune: " + result.table(capacity, f"one trial of {where}"), file=out, flush=True)
    if result.fits(capacity) or skip:
        return result
    problems = []
    training_only = replace(setup, decode_rows=0)
    if estimate(shape, training_only).total > capacity * GIB:
        options = [f"{name} ({gib(total)})" for name, total in fixes(shape, training_only, capacity)]
        problems.append(
            f"training needs {gib(result.train_peak)}: "
            + (("it fits with " + " or ".join(options)) if options else
               "no single change (gradient checkpointing, batch size, max_length, ZeRO-3, offload) makes it fit")
        )
    if result.decode_peak > capacity * GIB:
        limits = []
        for name, decode in decode_setups(space, training_only).items():
            if estimate(shape, decode).decode_peak > capacity * GIB:
                rows = largest_decode_rows(shape, decode, capacity, step=getattr(space, name).n)
                limits.append(f"{name}.batch_size: {rows}" if rows else f"{name}.max_new_tokens lower")
        problems.append(f"the validation/test decode needs {gib(result.decode_peak)}: it fits with " + " and ".join(limits))
    fix = "; ".join(problems)
    raise ConfigError(
        f"{where}: a trial's peak is {gib(result.total)} per GPU, more than resources.gpu_memory_gib "
        f"{capacity:g} GiB: {fix} (--skip-memory-check starts it anyway)"
    )
