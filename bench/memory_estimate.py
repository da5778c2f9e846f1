"""The per-GPU memory estimate (trainables/memory_estimate.py) against measured peak tensor memory, on CPU.

For each configuration, one IB-FT training step (forward, backward, AdamW step; the second step, with the optimizer
state already there) or one decode (prefill + new tokens through a DynamicCache) runs under
tests/memory_tracker.StorageTracker, which counts the bytes of live torch storages (not RSS) and keeps the peak.
The estimate is computed for the same shape and settings with device="cpu" (dropout masks in the input's dtype,
as CPU dropout keeps them). Then the shipped spaces' estimates, as `ibft tune` prints them.

Models: tiny-random-llama (a 4-layer, 256-wide Llama) and SmolLM2-135M-Instruct (the offline GGUF; its first load
dequantises it, ~30 s). LoRA r=32 on all 7 projections, dropout 0.05, IB head (bottleneck 256) at mid depth.

Usage: python bench/memory_estimate.py [--quick]   (--quick: the tiny model only)
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TINY = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 4096}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-random-llama only")
    args = parser.parse_args()

    import torch

    from memory_tracker import build_ib_model, measure_decode, measure_train_step
    from trainables.memory_estimate import TrainSetup, estimate, model_shape

    torch.set_num_threads(2)
    models = [("tiny-random-llama", TINY)] + ([] if args.quick else [("smollm2-135m-instruct", {})])
    print(f"{'model':<24}{'what':<34}{'measured':>12}{'estimate':>12}{'ratio':>8}")
    for name, overrides in models:
        shape = model_shape(name, overrides)
        for dtype, checkpointing, batch, length in [("fp32", False, 2, 128), ("bf16", False, 2, 64), ("bf16", True, 2, 64),
                                                     ("fp32", True, 2, 64)]:
            model = build_ib_model(name, dtype, tiny_overrides=overrides, checkpointing=checkpointing)
            measured = measure_train_step(model, batch, length)
            setup = TrainSetup(dtype=dtype, batch_size=batch, max_length=length, device="cpu",
                               gradient_checkpointing=checkpointing)
            est = estimate(shape, setup).train_peak
            what = f"train {dtype} {batch}x{length}" + (" ckpt" if checkpointing else "")
            print(f"{name:<24}{what:<34}{measured / 2**20:>9.1f} MiB{est / 2**20:>9.1f} MiB{est / measured:>8.3f}", flush=True)
        model = build_ib_model(name, "fp32", tiny_overrides=overrides)
        rows, prompt, new = 8, 64, 16
        measured = measure_decode(model, rows, prompt, new)
        est = estimate(shape, TrainSetup(dtype="fp32", device="cpu", decode_rows=rows, prompt_tokens=prompt,
                                         max_new_tokens=new))
        what = f"decode fp32 {rows} rows x {prompt}+{new}"
        value = est.parts["weights"] + est.parts["decode_kv"]
        print(f"{name:<24}{what:<34}{measured / 2**20:>9.1f} MiB{value / 2**20:>9.1f} MiB{value / measured:>8.3f}", flush=True)

    from search.memory_check import train_setup
    from search.space import load_space

    for space_file in ("spaces/origen.yaml", "spaces/evol-codealpaca.yaml", "spaces/smollm2-gpu.yaml"):
        space = load_space(ROOT / space_file)
        shape = model_shape(space.model.name_or_path, space.model.tiny_overrides)
        setup = train_setup(space)
        for checkpointing in (False, True):
            est = estimate(shape, replace(setup, gradient_checkpointing=checkpointing))
            label = f"{space_file}, gradient_checkpointing {str(checkpointing).lower()}"
            print(f"\n{label}\n" + est.table(space.resources.gpu_memory()))


if __name__ == "__main__":
    main()
