"""One IB-FT trial's worker at the paper's 7B shape, without downloading the model: memory, step time, MFU, decode.

Builds DeepSeek-Coder-7B-instruct-v1.5's architecture (trainables.memory_estimate.KNOWN_CONFIGS: LlamaForCausalLM,
hidden 4096, 30 layers, vocab 102400) with random weights directly on the device, then trains it the way a trial
of spaces/origen.yaml does, through the project's own pieces: trainables.models.apply_lora (LoRA r 32 on the 7
projections), the IB head at the paper's setting (α 0.1, β 0.01, tap layer 20, bottleneck 256),
trainables.models.enable_gradient_checkpointing and the DeepSpeed engine of trainables.train.engine (ZeRO-2, bf16,
one rank). Random weights cost the same FLOPs and bytes as trained ones; only the token statistics differ.

It prints one JSON line with:
- peak_gib: torch.cuda.max_memory_allocated over the training steps (CPU: not measured), next to the memory
  preflight's estimate for the same set-up (trainables.memory_estimate) and their ratio;
- step_s (median of the timed steps after warm-up), tokens_per_s (batch x seq / step_s);
- mfu: model FLOPs utilisation by the PaLM convention, (6·N + 12·L·h·s)·tokens / step_s / peak bf16 FLOP/s, with N
  the non-embedding parameters. With a frozen base and checkpointing the GPU executes about 2N (forward) + 2N
  (activation gradients, no weight gradients) + 2N (recompute) per token, so this convention is also close to
  the work actually done. Peak FLOP/s comes from a table of known GPUs (dense bf16); unknown GPUs print null;
- decode_tokens_per_s: the project's validation decode loop (trainables.generation._generate_chunk: KV cache,
  nucleus sampling, rows leave the batch when done) at the validation batch size, with prompts of
  --prompt-tokens random tokens and no EOS, so every row runs to --decode-new tokens (the worst case).

Usage (on a GPU, ~3 min at the full shape; bench/gpu_check.sh runs it):
  python bench/shape_7b.py --device cuda
  python bench/shape_7b.py --device cpu --dtype fp32 --layers 2 --hidden 256 --vocab 4096 --seq 64 --batch 2 \\
      --decode-rows 4 --decode-new 8 --steps 2   # the CPU rehearsal the tests run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "deepseek-ai/deepseek-coder-7b-instruct-v1.5"
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}
"""Dense bf16 tensor-core peak by GPU name fragment (vendor data sheets, no sparsity)."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--batch", type=int, default=4, help="examples per micro-batch (the issue's 4 x 2048)")
    p.add_argument("--seq", type=int, default=2048, help="tokens per example (all real: the longest batch)")
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps (after one warm-up step)")
    p.add_argument("--zero", type=int, default=2, choices=[0, 2, 3], help="DeepSpeed ZeRO stage (0: plain torch)")
    p.add_argument("--no-checkpointing", action="store_true", help="train without gradient checkpointing")
    p.add_argument("--decode-rows", type=int, default=40, help="validation decode batch (BenchmarkSection default)")
    p.add_argument("--decode-new", type=int, default=256, help="new tokens per decoded row")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--layers", type=int, help="override num_hidden_layers (a smaller rehearsal)")
    p.add_argument("--hidden", type=int, help="override hidden_size (intermediate scales with it)")
    p.add_argument("--vocab", type=int, help="override vocab_size")
    p.add_argument("--tap-layer", type=int, default=20)
    return p.parse_args(argv)


def model_config(args):
    from transformers import LlamaConfig

    from trainables.memory_estimate import KNOWN_CONFIGS

    fields = dict(KNOWN_CONFIGS[MODEL])
    if args.hidden:
        scale = args.hidden / fields["hidden_size"]
        fields.update(hidden_size=args.hidden, intermediate_size=int(fields["intermediate_size"] * scale) // 8 * 8,
                      num_attention_heads=max(1, args.hidden // 128), num_key_value_heads=max(1, args.hidden // 128))
    if args.layers:
        fields["num_hidden_layers"] = args.layers
    if args.vocab:
        fields["vocab_size"] = args.vocab
    # rope_theta and max positions as in the hub config.json; they cost nothing in memory.
    return LlamaConfig(**fields, max_position_embeddings=4096, rope_theta=100000.0, rms_norm_eps=1e-6)


def train_config(args, tap_layer: int):
    from trainables.train.config import TrainConfig

    return TrainConfig.from_dict({
        "model": {"name_or_path": "tiny-random-llama", "dtype": args.dtype},
        "lora": {"r": 32, "alpha": 32, "dropout": 0.05},
        "ib": {"alpha": 0.1, "beta": 0.01, "tap_layer": tap_layer, "bottleneck_dim": 256},
        "optim": {"lr": 1e-4, "max_steps": args.steps + 1, "batch_size": args.batch, "warmup_steps": 0,
                  "gradient_checkpointing": not args.no_checkpointing},
        "deepspeed": {"zero_stage": args.zero} if args.zero else None,
        "output_dir": "/tmp/shape_7b",
    })


def build(args):
    """(IB model, engine, config, train config) on the device, weights random in the training dtype."""
    import torch
    from transformers import LlamaForCausalLM

    from trainables.ib import IBModel
    from trainables.models import apply_lora, enable_gradient_checkpointing
    from trainables.train.engine import build_engine

    config = model_config(args)
    tap = min(args.tap_layer, config.num_hidden_layers)
    cfg = train_config(args, tap)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the training dtype: a 7B fp32 copy would need 28 GB on the way
    try:
        with device:
            base = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    peft_model = apply_lora(base, cfg.lora, seed=0)
    if cfg.optim.gradient_checkpointing:
        enable_gradient_checkpointing(peft_model)
    model = IBModel(peft_model, cfg.ib).to(device).train()
    engine = build_engine(model, cfg, device)
    return model, engine, config, cfg


def batch(config, args, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq), generator=g)
    labels = ids.clone()
    labels[:, : args.seq // 4] = -100  # a prompt quarter, as instruction data has
    return {k: v.to(args.device) for k, v in
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}.items()}


def sync(args) -> None:
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def train_steps(engine, config, args) -> list[float]:
    times = []
    for step in range(args.steps + 1):
        data = batch(config, args, step)
        sync(args)
        start = time.perf_counter()
        loss = engine.module(**data).loss
        engine.backward(loss, 1.0)
        engine.step()
        sync(args)
        times.append(time.perf_counter() - start)
        print(f"step {step}: {times[-1]:.3f} s, loss {float(loss):.3f}", file=sys.stderr, flush=True)
    return times[1:]  # the first step pays for allocation and autotuning


class _NoTextTokenizer:
    """What the decode loop needs of a tokenizer, for random token ids: no EOS is ever sampled."""

    pad_token_id = 0
    eos_token_id = -1

    def decode(self, ids, skip_special_tokens=True) -> str:
        return ""


def decode(model, config, args) -> dict:
    import torch

    from trainables.generation import GenerationSettings, _generate_chunk

    settings = GenerationSettings(temperature=0.8, top_p=0.95, max_new_tokens=args.decode_new,
                                  stop_after_code_block=False, batch_size=args.decode_rows)
    n = 10 if args.decode_rows % 10 == 0 else 1  # tasks x 10 samples sharing a prompt cache, as validation does
    prompts = args.decode_rows // n
    g = torch.Generator().manual_seed(1)
    encoded = [torch.randint(3, config.vocab_size, (args.prompt_tokens,), generator=g).tolist() for _ in range(prompts)]
    model.eval()
    sync(args)
    start = time.perf_counter()
    with torch.no_grad():
        _, tokens = _generate_chunk(model, _NoTextTokenizer(), encoded, [""] * prompts, n, settings, lambda t: "")
    sync(args)
    seconds = time.perf_counter() - start
    model.train()
    return {"decode_rows": prompts * n, "decode_new_tokens": tokens, "decode_s": round(seconds, 3),
            "decode_tokens_per_s": round(tokens / seconds, 1)}


def estimated(config, args):
    from trainables.memory_estimate import ModelShape, TrainSetup, estimate

    setup = TrainSetup(
        dtype=args.dtype, batch_size=args.batch, max_length=args.seq, lora_r=32, bottleneck_dim=256,
        gradient_checkpointing=not args.no_checkpointing, deepspeed=bool(args.zero), zero_stage=args.zero or 2,
        world_size=1, device="cuda" if args.device.startswith("cuda") else "cpu",
        decode_rows=args.decode_rows, prompt_tokens=args.prompt_tokens, max_new_tokens=args.decode_new,
    )
    return estimate(ModelShape.from_config(config), setup)


def mfu(config, args, step_s: float):
    import torch

    if not args.device.startswith("cuda"):
        return None, None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    h, layers = config.hidden_size, config.num_hidden_layers
    non_embedding = layers * (4 * h * h + 3 * h * config.intermediate_size)
    flops = (6 * non_embedding + 12 * layers * h * args.seq) * args.batch * args.seq
    return name, (round(flops / step_s / peak, 4) if peak else None)


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("shape_7b: --device cuda but no CUDA GPU here", file=sys.stderr)
        return 2
    model, engine, config, cfg = build(args)
    est = estimated(config, args)
    print(est.table(where=f"{MODEL} shape, batch {args.batch} x {args.seq}"), file=sys.stderr)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = train_steps(engine, config, args)
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
    step_s = statistics.median(times)
    gpu, util = mfu(config, args, step_s)
    result = {
        "shape": {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")},
        "gpu": gpu, "dtype": args.dtype, "zero_stage": args.zero, "gradient_checkpointing": not args.no_checkpointing,
        "batch": args.batch, "seq": args.seq,
        "step_s": round(step_s, 3), "step_s_all": [round(t, 3) for t in times],
        "tokens_per_s": round(args.batch * args.seq / step_s, 1), "mfu": util,
        "peak_gib": round(peak / 2**30, 2) if peak is not None else None,
        "estimate_train_gib": round(est.train_peak / 2**30, 2),
        "peak_over_estimate": round(peak / est.train_peak, 3) if peak is not None else None,
    }
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result.update(decode(model.base_model, config, args))  # validation decodes with the peft model, IB head unused
    if args.device.startswith("cuda"):
        result["decode_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["estimate_decode_gib"] = round(est.decode_peak / 2**30, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
