"""`ibft train`: one IB-FT training run (no Ray) from a YAML TrainConfig and/or flags.

Progress (a bar with the loss) goes to stderr, the run's JSON summary to stdout; the checkpoint directory
is cfg.output_dir. torch is imported only inside run(), so `ibft train --help` stays fast.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Optional

from trainables.cli_output import emit_result
from trainables.errors import ConfigError

FLAG_FIELDS: dict[str, str] = {
    "model": "model.name_or_path",
    "data": "data.source",
    "max_steps": "optim.max_steps",
    "batch_size": "optim.batch_size",
    "grad_accum": "optim.grad_accum",
    "lr": "optim.lr",
    "alpha": "ib.alpha",
    "beta": "ib.beta",
    "tap_layer": "ib.tap_layer",
    "prior": "ib.prior",
    "ib_token_fraction": "ib.ib_token_fraction",
    "output_dir": "output_dir",
    "seed": "seed",
    "dtype": "model.dtype",
    "deepspeed_stage": "deepspeed.zero_stage",
    "max_examples": "data.max_examples",
    "max_length": "data.max_length",
    "checkpoint_every": "checkpoint_every",
}
"""argparse destination -> dotted TrainConfig field each flag overrides."""


class _YamlLoader:
    """Built lazily: a SafeLoader that also reads 5e-4 as a float (YAML 1.1 wants 5.0e-4, people write 5e-4)."""

    _cls = None

    @classmethod
    def get(cls):
        if cls._cls is None:
            import yaml

            class Loader(yaml.SafeLoader):
                pass

            Loader.add_implicit_resolver(
                "tag:yaml.org,2002:float",
                re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                list("-+0123456789"),
            )
            cls._cls = Loader
        return cls._cls


def parse_yaml(text: str, where: str) -> Any:
    """YAML text as Python data; a syntax error becomes a ConfigError naming `where`."""
    import yaml

    try:
        return yaml.load(text, Loader=_YamlLoader.get())
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(e).split())})") from None


def set_dotted(mapping: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """mapping["a"]["b"]["c"] = value for dotted "a.b.c", creating intermediate mappings."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"{where}: bad key {dotted!r} (expected dotted field names like optim.lr)")
    node = mapping
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{where}: {dotted!r} goes inside {part!r}, which is {child!r}, not a mapping")
        node = child
    node[parts[-1]] = value


def build_config(
    config_file: Optional[str] = None,
    flag_values: Optional[dict[str, Any]] = None,
    set_items: Optional[list[str]] = None,
):
    """The TrainConfig from a YAML file, then flags (FLAG_FIELDS keys), then `--set key.path=value` items."""
    from trainables.train.config import TrainConfig

    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config: file {config_file!r} does not exist")
        loaded = parse_yaml(path.read_text(), str(path))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: must hold a mapping of TrainConfig fields, got {type(loaded).__name__}")
        data = loaded or {}
    for dest, value in (flag_values or {}).items():
        if value is not None:
            set_dotted(data, FLAG_FIELDS[dest], value, f"--{dest.replace('_', '-')}")
    for item in set_items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set optim.warmup_steps=5")
        set_dotted(data, key.strip(), parse_yaml(raw, f"--set {key.strip()}"), "--set")
    return TrainConfig.from_dict(data)


def _tap_layer(text: str) -> Any:
    value = parse_yaml(text, "--tap-layer")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise argparse.ArgumentTypeError(f"expected an int layer or a fraction in (0, 1), got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML mapping of TrainConfig fields (flags override it)")
    g = parser.add_argument_group("overrides of common TrainConfig fields")
    g.add_argument("--model", metavar="NAME_OR_PATH", help="model.name_or_path (smollm2-135m-instruct, tiny-random-llama, a dir, a .gguf)")
    g.add_argument("--data", metavar="SOURCE", help="data.source (builtin:python-functions, origen, evol-codealpaca, a JSONL path)")
    g.add_argument("--max-steps", type=int, help="optim.max_steps")
    g.add_argument("--batch-size", type=int, help="optim.batch_size (per worker)")
    g.add_argument("--grad-accum", type=int, help="optim.grad_accum")
    g.add_argument("--lr", type=float, help="optim.lr (peak)")
    g.add_argument("--alpha", type=float, help="ib.alpha (0: plain LoRA fine-tuning)")
    g.add_argument("--beta", type=float, help="ib.beta")
    g.add_argument("--tap-layer", type=_tap_layer, help="ib.tap_layer: int L, negative from the top, or a fraction (0.5)")
    g.add_argument("--prior", help="ib.prior (standard_normal, learnable_gaussian, mog, vamp)")
    g.add_argument("--ib-token-fraction", type=float, help="ib.ib_token_fraction in (0, 1]")
    g.add_argument("--output-dir", metavar="DIR", help="output_dir: checkpoints, metrics.jsonl, final/")
    g.add_argument("--seed", type=int, help="seed")
    g.add_argument("--dtype", help="model.dtype (fp32 or bf16)")
    g.add_argument("--deepspeed-stage", type=int, metavar="STAGE", help="run under DeepSpeed with this ZeRO stage (0-3)")
    g.add_argument("--max-examples", type=int, help="data.max_examples")
    g.add_argument("--max-length", type=int, help="data.max_length (tokens)")
    g.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="checkpoint_every (0: only at the end)")
    g.add_argument(
        "--set", dest="set_items", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="any other field, value parsed as YAML (repeatable), e.g. --set lora.r=8 --set ib.prior_options.components=4",
    )
    r = parser.add_argument_group("resuming and output")
    r.add_argument("--resume-from", metavar="CHECKPOINT_DIR", help="continue from this step checkpoint")
    r.add_argument("--no-resume", action="store_true", help="start fresh even when output_dir holds checkpoints")
    r.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    r.add_argument(
        "--skip-memory-check", action="store_true",
        help="on a CUDA device, train even when the memory estimate says the run does not fit the GPU",
    )


def run(args: argparse.Namespace) -> int:
    flag_values = {dest: getattr(args, dest) for dest in FLAG_FIELDS}
    cfg = build_config(args.config, flag_values, args.set_items)
    if args.no_resume:
        cfg.resume = False
    check_memory(cfg, skip=args.skip_memory_check)

    from trainables.train.loop import NonFiniteLossError, TrainHooks, train

    bar = _progress_bar(cfg.optim.max_steps, disabled=args.no_progress)

    def on_log(step: int, metrics: dict[str, float]) -> None:
        if bar is not None:
            bar.n = step
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", gnorm=f"{metrics['grad_norm']:.3g}", refresh=False)
            bar.refresh()

    print(f"ibft train: {cfg.model.name_or_path} on {cfg.data.source} -> {cfg.output_dir}", file=sys.stderr, flush=True)
    try:
        summary = train(cfg, hooks=TrainHooks(on_log=on_log), resume_from=args.resume_from)
    except NonFiniteLossError as e:
        if bar is not None:
            bar.close()
        print(f"ibft train: error: {e}", file=sys.stderr)
        return 1
    if bar is not None:
        bar.close()
    emit_result(summary, indent=2)
    return 0


def train_setup(cfg, world_size: int = 1, device: str = "cuda"):
    """What trainables.memory_estimate needs to know of a TrainConfig (one rank of `world_size`; no decode)."""
    from trainables.memory_estimate import TrainSetup

    ds = cfg.deepspeed
    return TrainSetup(
        dtype=cfg.model.dtype,
        batch_size=cfg.optim.batch_size,
        max_length=cfg.data.max_length,
        lora_r=cfg.lora.r,
        lora_dropout=cfg.lora.dropout,
        lora_targets=tuple(cfg.lora.target_modules),
        ib_enabled=cfg.ib.alpha > 0,
        bottleneck_dim=cfg.ib.bottleneck_dim,
        ce_chunk_size=cfg.ib.ce_chunk_size,
        ib_token_fraction=cfg.ib.ib_token_fraction,
        gradient_checkpointing=bool(getattr(cfg.optim, "gradient_checkpointing", False)),
        deepspeed=ds is not None,
        zero_stage=ds.zero_stage if ds is not None else 2,
        offload_optimizer=bool(ds and ds.offload_optimizer),
        offload_params=bool(ds and ds.offload_params),
        world_size=world_size,
        device=device,
    )


def check_memory(cfg, skip: bool = False) -> None:
    """On a CUDA device: print the per-GPU estimate against the device's memory (less ~0.6 GiB of CUDA context)
    before the model loads, and refuse (one-line ConfigError) a run that cannot fit. Quiet on CPU."""
    import os

    import torch

    if not torch.cuda.is_available():
        return
    from trainables.memory_estimate import GIB, estimate, fixes, gib, model_shape

    shape = model_shape(cfg.model.name_or_path, cfg.model.tiny_overrides)
    if shape is None:
        print(f"ibft train: memory estimate skipped: no config for {cfg.model.name_or_path!r} here", file=sys.stderr)
        return
    index = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
    capacity = round(torch.cuda.get_device_properties(index).total_memory / GIB - 0.6, 1)
    setup = train_setup(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    result = estimate(shape, setup)
    print("ibft train: " + result.table(capacity, f"cuda:{index}"), file=sys.stderr, flush=True)
    if result.fits(capacity) or skip:
        return
    options = [f"{name.replace('training.', 'optim.')} ({gib(total)})" for name, total in fixes(shape, setup, capacity)]
    fix = ("it fits with " + " or ".join(options)) if options else "no single change makes it fit"
    raise ConfigError(
        f"the run's peak is {gib(result.total)} per GPU, more than the {capacity:g} GiB of cuda:{index}: {fix} "
        "(--skip-memory-check trains anyway)"
    )


def _progress_bar(total: int, disabled: bool):
    if disabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)
