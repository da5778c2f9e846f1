"""The IB branch's CE through the frozen LM head on its own: fused kernels against the checkpointed one.

Times forward + backward of trainables.ib.ce_kernels.lm_head_cross_entropy for N target tokens at an LM
head shape (SmolLM2-135M: hidden 576, vocab 49152; DeepSeek-Coder-7B: hidden 4096, vocab 102400), for
each kernel: "checkpointed" (the reference: forward, recompute, gradient product = three head products per
chunk), "fused" (gradient formed in the forward: two) and "fused_compiled" (the same with torch.compile's
fused softmax math; a Triton kernel on CUDA, C++ on CPU; compiled in the warm-up rounds).

Timing: paired, interleaved rounds (the order rotates each round); a kernel's ratio in a round is its time
over the checkpointed time of the same round; the reported ratio is the median. On CUDA the memory column
is torch's peak allocation during one forward + backward above what was allocated before it.

Usage: python bench/ib_ce_kernels.py [--shape smollm2|7b] [--tokens 1024] [--chunk 1024] [--rounds 10]
       [--device cpu|cuda] [--dtype fp32|bf16] [--threads 2]
Always exits 0; prints PASS/MISS for the target (fused at most 0.85x the checkpointed time).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

SHAPES = {"smollm2": (576, 49152), "7b": (4096, 102400)}
"""Name -> (hidden size, vocabulary size) of the LM head."""
KERNELS = ("checkpointed", "fused", "fused_compiled")
TARGET = ("fused step ratio <= 0.85", lambda r: r <= 0.85)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="smollm2")
    parser.add_argument("--tokens", type=int, default=1024, help="target tokens N scored through the head")
    parser.add_argument("--chunk", type=int, default=1024, help="ib.ce_chunk_size")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (torch.compile compiles here)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    args = parser.parse_args(argv)

    import torch
    from torch import nn

    from trainables.ib.ce_kernels import lm_head_cross_entropy

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    hidden_size, vocab = SHAPES[args.shape]
    torch.manual_seed(0)
    head = nn.Linear(hidden_size, vocab, bias=False).to(device, dtype).requires_grad_(False)
    hidden = torch.randn(args.tokens, hidden_size, device=device, dtype=dtype)
    targets = torch.randint(0, vocab, (args.tokens,), device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run(kernel: str) -> float:
        h = hidden.detach().requires_grad_(True)
        sync()
        start = time.perf_counter()
        lm_head_cross_entropy(h, targets, head, args.chunk, kernel=kernel).backward()
        sync()
        return time.perf_counter() - start

    from bench.interleaved import interleaved_rounds

    timed = interleaved_rounds({k: (lambda k=k: run(k)) for k in KERNELS}, "checkpointed", args.rounds, args.warmup, "ms")
    seconds, ratios = timed["seconds"], timed["ratios"]

    peaks = {}
    if device.type == "cuda":
        for k in KERNELS:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run(k)
            peaks[k] = (torch.cuda.max_memory_allocated() - before) / 2**20

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"\nIB-branch CE through the LM head, {args.shape} head ({hidden_size} x {vocab}), N={args.tokens}, "
          f"chunk {args.chunk}, {args.dtype}, {where}: forward + backward")
    print(f"{'kernel':<15} {'median ms':>10} {'ratio':>7} {'peak MiB':>9}")
    for k in KERNELS:
        ratio = 1.0 if k == "checkpointed" else statistics.median(ratios[k])
        peak = f"{peaks[k]:>9.0f}" if peaks else f"{'-':>9}"
        print(f"{k:<15} {statistics.median(seconds[k]) * 1e3:>10.1f} {ratio:>7.3f} {peak}")
    label, ok = TARGET
    fused = statistics.median(ratios["fused"])
    print(f"{'PASS' if ok(fused) else 'MISS'}  {label} (measured {fused:.3f})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
