"""Generation throughput: n samples per prompt in batched `generate` calls vs one sample at a time.

    python bench/generation_throughput.py [--model smollm2-135m-instruct] [--prompts 4] [--n 10]
                                          [--max-new-tokens 128] [--threads 1]

Same prompts (the python-functions validation tasks, formatted as `ibft eval` formats them), same
sampling settings and stopping rules, same max_new_tokens in both arms; the batched arm puts all n
samples of several prompts in one call and encodes each prompt once. Prints JSON with tokens/s of
each arm (wall clock and per CPU second, the latter steadier on a shared machine) and their ratio;
the target is a ratio of at least 4.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="ModelConfig.name_or_path of the model")
    parser.add_argument("--prompts", type=int, default=4, help="python-functions validation tasks to use")
    parser.add_argument("--n", type=int, default=10, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per sample at most")
    parser.add_argument("--batch-size", type=int, default=40, help="sequences per generate call in the batched arm")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from trainables.benchmarks import load_benchmark
    from trainables.evaluation import build_prompt
    from trainables.generation import GenerationSettings, generate_samples
    from trainables.models import load_model_and_tokenizer
    from trainables.train.config import ModelConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=args.model))
    problems = load_benchmark("python-functions", "val", args.prompts)
    prompts = [build_prompt(tokenizer, p) for p in problems]
    batched_settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    single_settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=1, share_prompt_cache=False)

    # One short call first so neither arm pays for lazy initialisation.
    generate_samples(model, tokenizer, prompts[:1], 1, GenerationSettings(max_new_tokens=4), seed=0)

    batched = _timed(lambda: generate_samples(model, tokenizer, prompts, args.n, batched_settings, seed=args.seed))

    def one_at_a_time():
        tokens = 0
        for i, prompt in enumerate(prompts):
            for j in range(args.n):
                out = generate_samples(model, tokenizer, [prompt], 1, single_settings, seed=args.seed + 1000 * i + j)
                tokens += out.new_tokens
        return tokens

    single = _timed(one_at_a_time)
    report = {
        "model": args.model,
        "prompts": len(prompts),
        "samples_per_prompt": args.n,
        "max_new_tokens": args.max_new_tokens,
        "torch_threads": torch.get_num_threads(),
        "batched": _arm(batched),
        "one_at_a_time": _arm(single),
    }
    report["speedup_tokens_per_second"] = round(report["batched"]["tokens_per_s"] / report["one_at_a_time"]["tokens_per_s"], 2)
    report["speedup_tokens_per_cpu_second"] = round(
        report["batched"]["tokens_per_cpu_s"] / report["one_at_a_time"]["tokens_per_cpu_s"], 2
    )
    report["target"] = 4.0
    report["meets_target"] = report["speedup_tokens_per_second"] >= 4.0
    print(json.dumps(report, indent=2))
    return 0


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _arm(timed) -> dict:
    result, wall, cpu = timed
    tokens = result if isinstance(result, int) else result.new_tokens
    return {
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "tokens_per_s": round(tokens / wall, 2),
        "tokens_per_cpu_s": round(tokens / cpu, 2),
    }


if __name__ == "__main__":
    sys.exit(main())
