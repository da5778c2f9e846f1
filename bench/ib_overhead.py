"""What IB-FT costs over plain LoRA FT: step-time and peak-memory ratios on a SmolLM2-135M-shaped model.

The model is SmolLM2-135M's architecture with random weights (no download, no 30 s GGUF load):
30 layers, hidden 576, vocab 49152, tied embeddings, LoRA r=32 on all 7 projections. One training
step = forward + backward + AdamW step on a batch of 2 x 256 tokens whose first half is prompt
(label -100), on CPU in fp32.

Timing: paired, interleaved rounds. Each round runs one step of every variant (the order rotates
from round to round so drift and cache effects do not favour one variant); a variant's ratio in a
round is its step time over the plain LoRA step of the same round; the reported ratio is the median
over rounds. Warm-up rounds are run first and discarded.

Memory: each variant runs in a fresh subprocess, and its peak resident set size
(resource.getrusage(RUSAGE_SELF).ru_maxrss, the kernel's high-water mark of the whole process:
weights, optimizer state, activations, allocator slack) is compared with plain LoRA's. The growth
of the peak over the RSS before the first step (the training-step working set) is shown as well.

On a GPU (--device cuda, typically with --dtype bf16 and a larger --batch/--seq) the steps are timed
between CUDA synchronisations and memory is torch's peak allocation during one step of each variant in
this process (torch.cuda.max_memory_allocated after a reset), not the RSS.

ib_ckpt is ib_f1.00 with the IB branch's CE through the LM head checkpointed (ib.ce_kernel
"checkpointed", three head products per chunk) instead of the default fused kernel (gradient formed in
the forward, two; see trainables/ib/fused_ce.py): the difference is what the fused kernel saves.

Usage: python bench/ib_overhead.py [--rounds 10] [--threads 2] [--device cuda --dtype bf16 --batch 8 --seq 1024]
Always exits 0; prints PASS/MISS per target.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "plain": None,
    "alpha0": {"alpha": 0.0},
    "ib_f1.00": {"alpha": 0.1, "beta": 0.01, "tap_layer": 20, "ib_token_fraction": 1.0},
    "ib_f0.25": {"alpha": 0.1, "beta": 0.01, "tap_layer": 20, "ib_token_fraction": 0.25},
    "ib_ckpt": {"alpha": 0.1, "beta": 0.01, "tap_layer": 20, "ib_token_fraction": 1.0, "ce_kernel": "checkpointed"},
}
"""Variant name -> IBConfig fields (None: the peft model on its own, no IBModel wrapper)."""

TARGETS = {
    "ib_f1.00": ("step ratio <= 1.20", lambda r: r <= 1.20),
    "ib_f0.25": ("step ratio <= 1.08", lambda r: r <= 1.08),
    "alpha0": ("step ratio 1.00 +- 0.05", lambda r: abs(r - 1.0) <= 0.05),
}
MEMORY_TARGET = ("peak RSS ratio <= 1.10", lambda r: r <= 1.10)

BATCH, SEQ = 2, 256


class Setting:
    """Where and how the steps run (set once from the command line)."""

    device = "cpu"
    dtype = "fp32"
    batch = BATCH
    seq = SEQ


def sync() -> None:
    if Setting.device == "cuda":
        import torch

        torch.cuda.synchronize()


def build_lora_model(seed: int = 0):
    """SmolLM2-135M-shaped random Llama with the paper's LoRA (r=32, alpha 32, dropout 0.05, 7 projections)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config).to(Setting.device, getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[Setting.dtype]))
    lora = LoraConfig(
        r=32, lora_alpha=32, lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    return get_peft_model(model, lora).train()


def make_batch(seed: int = 0) -> dict:
    """batch x seq random tokens (2 x 256 by default); the first half of each row is prompt (label -100)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 49152, (Setting.batch, Setting.seq), generator=g)
    labels = input_ids.clone()
    labels[:, : Setting.seq // 2] = -100
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {k: v.to(Setting.device) for k, v in batch.items()}


def make_variant(base, name: str):
    """(model to call, AdamW over its trainable parameters) for one variant, sharing `base`."""
    import torch

    from trainables.ib import IBConfig, IBModel

    fields = VARIANTS[name]
    model = base if fields is None else IBModel(base, IBConfig(**fields)).to(Setting.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-5)


def train_step(model, optimizer, batch) -> float:
    """One forward + backward + optimizer step; returns its wall time in seconds."""
    sync()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    optimizer.step()
    sync()
    return time.perf_counter() - start


def time_variants(rounds: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Per-round step times and ratios (variant / plain of the same round) for every variant."""
    from bench.interleaved import interleaved_rounds

    base = build_lora_model()
    batch = make_batch()
    runners = {name: make_variant(base, name) for name in VARIANTS}
    steps = {name: (lambda r=runner: train_step(*r, batch)) for name, runner in runners.items()}
    return interleaved_rounds(steps, "plain", rounds, warmup)


def measure_peak_rss(name: str, steps: int) -> dict[str, float]:
    """In this (fresh) process: RSS before the first step and peak RSS after `steps` steps, in MiB."""
    import resource

    model, optimizer = make_variant(build_lora_model(), name)
    batch = make_batch()
    with open(f"/proc/{os.getpid()}/statm") as f:
        rss_before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    for _ in range(steps):
        train_step(model, optimizer, batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"rss_before_mib": rss_before, "peak_mib": peak}


def cuda_peak_memory(steps: int) -> dict[str, dict[str, float]]:
    """Per variant, in this process: allocated memory before a step and torch's peak during it, in MiB."""
    import torch

    base = build_lora_model()
    batch = make_batch()
    results = {}
    for name in VARIANTS:
        runner = make_variant(base, name)
        for _ in range(steps):
            train_step(*runner, batch)  # optimizer state exists from the first step on
        runner[1].zero_grad(set_to_none=True)
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        train_step(*runner, batch)
        results[name] = {"rss_before_mib": before, "peak_mib": torch.cuda.max_memory_allocated() / 2**20}
        print(f"memory {name}: {results[name]}", file=sys.stderr, flush=True)
        del runner
        torch.cuda.empty_cache()
    return results


def memory_in_subprocesses(threads: int, steps: int) -> dict[str, dict[str, float]]:
    results = {}
    for name in VARIANTS:
        command = [sys.executable, __file__, "--measure-memory", name, "--threads", str(threads),
                   "--memory-steps", str(steps), "--batch", str(Setting.batch), "--seq", str(Setting.seq),
                   "--dtype", Setting.dtype]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"memory {name}: {results[name]}", file=sys.stderr, flush=True)
    return results


def report(timing: dict | None, memory: dict | None) -> None:
    where = Setting.device.upper()
    if Setting.device == "cuda":
        import torch

        where = torch.cuda.get_device_name()
    memory_kind = "peak MiB" if Setting.device == "cpu" else "cuda MiB"
    print(f"\nIB-FT overhead, SmolLM2-135M shape, batch {Setting.batch}x{Setting.seq}, {where} {Setting.dtype}, "
          f"AdamW step included")
    print(f"{'variant':<10} {'median s':>9} {'step ratio':>11} {memory_kind:>9} {'peak ratio':>11} {'step-set ratio':>15}")
    lines = []
    for name in VARIANTS:
        if timing:
            seconds = statistics.median(timing["seconds"][name])
            ratio = 1.0 if name == "plain" else statistics.median(timing["ratios"][name])
            step = f"{seconds:>9.3f} {ratio:>11.3f}"
        else:
            step = f"{'-':>9} {'-':>11}"
        if memory:
            peak = memory[name]["peak_mib"]
            peak_ratio = peak / memory["plain"]["peak_mib"]
            growth = (peak - memory[name]["rss_before_mib"]) / (memory["plain"]["peak_mib"] - memory["plain"]["rss_before_mib"])
            mem = f"{peak:>9.0f} {peak_ratio:>11.3f} {growth:>15.3f}"
        else:
            mem = f"{'-':>9} {'-':>11} {'-':>15}"
        print(f"{name:<10} {step} {mem}")
        if timing and name in TARGETS:
            label, ok = TARGETS[name]
            lines.append(f"{'PASS' if ok(ratio) else 'MISS'}  {name}: {label} (measured {ratio:.3f})")
        if memory and name != "plain":
            label, ok = MEMORY_TARGET
            lines.append(f"{'PASS' if ok(peak_ratio) else 'MISS'}  {name}: {label} (measured {peak_ratio:.3f})")
    if timing:
        plain_seconds = statistics.median(timing["seconds"]["plain"])
        print(f"(plain LoRA step: {plain_seconds:.3f} s median; step ratios are medians of per-round ratios)")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (each runs one step of every variant)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps per memory subprocess")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-timing", action="store_true", help="skip the timed rounds (memory only)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the steps run")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="model precision")
    parser.add_argument("--batch", type=int, default=BATCH, help="sequences per step")
    parser.add_argument("--seq", type=int, default=SEQ, help="tokens per sequence (first half is prompt)")
    parser.add_argument("--measure-memory", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    Setting.device, Setting.dtype, Setting.batch, Setting.seq = args.device, args.dtype, args.batch, args.seq

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        print(json.dumps(measure_peak_rss(args.measure_memory, args.memory_steps)))
        return 0
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    timing = None if args.no_timing else time_variants(args.rounds, args.warmup)
    if args.no_memory:
        memory = None
    elif args.device == "cuda":
        memory = cuda_peak_memory(args.memory_steps)
    else:
        memory = memory_in_subprocesses(args.threads, args.memory_steps)
    report(timing, memory)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
