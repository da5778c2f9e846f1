"""`ibft memorization`: Min-K% Prob of each training example and the most/least-memorized group geometry.

With --adapter (a LoRA checkpoint written by `ibft train`), the base model and the fine-tuned model
score the same examples and the output compares them. Writes OUT/scores.jsonl (one record per
example), OUT/geometry.json (the summary), OUT/scores.png and OUT/geometry.png; prints the summary
JSON on stdout and progress on stderr. torch is imported only inside run().
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from trainables.cli_output import emit_result
from trainables.errors import ConfigError

ADAPTER_CONFIG_FILE = "adapter_config.json"
IB_CONFIG_FILE = "ib_config.json"
TRAIN_CONFIG_FILE = "train_config.json"
DEFAULT_TAP_LAYER = 0.5
DEFAULT_MAX_LENGTH = 512


def _tap_layer(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int layer or a fraction in (0, 1), got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ibft memorization`."""
    parser.add_argument(
        "--model", metavar="NAME_OR_PATH",
        help="base model (smollm2-135m-instruct, tiny-random-llama, a dir, a .gguf); default: the adapter run's model",
    )
    parser.add_argument(
        "--adapter", metavar="DIR", action="append",
        help="fine-tuned LoRA checkpoint to compare with the base: an `ibft train` output dir, its final/ "
        "(or a step checkpoint) dir, or a peft adapter dir; repeat it to compare several (say FT and IB-FT) "
        "on the same examples and groups",
    )
    parser.add_argument(
        "--data", metavar="SOURCE",
        help="examples to score (builtin:python-functions, origen, evol-codealpaca, a JSONL path); "
        "default: the adapter run's training data, in its order",
    )
    parser.add_argument("--max-examples", type=int, metavar="N", help="score only the first N examples (after the seeded shuffle)")
    parser.add_argument("--seed", type=int, help="seed of the data shuffle (default: the adapter run's seed, else 0)")
    parser.add_argument("--k", type=float, default=0.2, help="Min-K%% fraction of lowest-probability tokens (default 0.2)")
    parser.add_argument(
        "--quantile", type=float, default=0.2,
        help="fraction of examples in each of the most/least-memorized groups, in (0, 0.5] (default 0.2)",
    )
    parser.add_argument(
        "--tap-layer", type=_tap_layer, metavar="L",
        help="hidden_states index for the geometry: int, negative from the top, or a fraction of depth; "
        f"default: the adapter's ib_config.json tap_layer, else {DEFAULT_TAP_LAYER}",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="examples per forward pass (default 8)")
    parser.add_argument(
        "--max-length", type=int,
        help=f"tokens per example, responses cut beyond (default: the adapter run's, else {DEFAULT_MAX_LENGTH})",
    )
    parser.add_argument("--dtype", choices=("fp32", "bf16"), help="model precision (default: the adapter run's, else fp32)")
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda when available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--out", metavar="DIR", default="runs/memorization", help="output folder (default runs/memorization)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (they need kaleido and Chromium)")


def run(args: argparse.Namespace) -> int:
    """Score, write the outputs, print the summary; 0 on success, 1 when only the plots failed."""
    from trainables.memorization.analysis import analyze_memorization
    from trainables.memorization.plots import PlotError, write_plots

    checkpoints = [_resolve_adapter(path) for path in args.adapter or []]
    labels = _adapter_labels([checkpoint for _, checkpoint in checkpoints])
    # The first checkpoint's run fills in what the flags leave open (model, data, seed, tap layer).
    first_checkpoint = checkpoints[0][1] if checkpoints else None
    train_config = _train_config(first_checkpoint)
    model_name = args.model or (train_config.model.name_or_path if train_config else None)
    if model_name is None:
        raise ConfigError("--model is required (no --adapter with a train_config.json to take it from)")
    model, tokenizer = _load_model(model_name, dict(zip(labels, (a for a, _ in checkpoints))), args, train_config)
    examples = _load_examples(args, train_config)
    tap_layer = args.tap_layer if args.tap_layer is not None else _adapter_tap_layer(first_checkpoint)
    if args.tap_layer is None and len({str(_adapter_tap_layer(c)) for _, c in checkpoints}) > 1:
        print(
            f"ibft memorization: the adapters were trained at different IB tap layers; all are compared at "
            f"{tap_layer!r} (the first one's); choose another with --tap-layer",
            file=sys.stderr,
        )
    max_length = args.max_length or (train_config.data.max_length if train_config else DEFAULT_MAX_LENGTH)

    analysis = analyze_memorization(
        model,
        tokenizer,
        examples,
        k=args.k,
        quantile=args.quantile,
        tap_layer=tap_layer,
        batch_size=args.batch_size,
        max_length=max_length,
        adapters={label: label for label in labels} if len(labels) > 1 else None,
        progress=True,
        # Tokenized as the (first) adapter run trained on them; without one, the default format.
        prompt_format=train_config.data.prompt_format if train_config else "auto",
        append_eos=train_config.data.append_eos if train_config else True,
    )
    summary = {
        **analysis.summary,
        "model": model_name,
        "adapters": {label: str(adapter) for label, (adapter, _) in zip(labels, checkpoints)},
        "data": args.data or (train_config.data.source if train_config else None),
    }
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "scores.jsonl", "w", encoding="utf-8") as f:
            for row in analysis.rows:
                f.write(json.dumps(row) + "\n")
        (out / "geometry.json").write_text(json.dumps(summary, indent=2) + "\n")
    except OSError as e:
        raise ConfigError(f"--out {args.out!r}: cannot write there ({e.strerror or e})") from None
    status = 0
    if not args.no_plots:
        try:
            write_plots(analysis.rows, summary, out)
        except PlotError as e:
            print(f"ibft memorization: {e}; scores.jsonl and geometry.json were written", file=sys.stderr)
            status = 1
    emit_result(summary, indent=2)
    return status


def _resolve_adapter(path_text: str) -> tuple[Path, Path]:
    """(peft adapter dir, checkpoint dir holding ib_config.json / train_config.json) for --adapter."""
    path = Path(path_text).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--adapter: {path_text!r} is not a directory")
    for candidate in (path, path / "adapter", path / "final" / "adapter"):
        if (candidate / ADAPTER_CONFIG_FILE).is_file():
            if candidate != path:
                return candidate, candidate.parent
            # A bare adapter dir: its run files sit beside it in a checkpoint, or inside it.
            beside = not _has_run_files(path) and _has_run_files(path.parent)
            return path, path.parent if beside else path
    raise ConfigError(
        f"--adapter: no {ADAPTER_CONFIG_FILE} in {path_text!r}, its adapter/ or its final/adapter/ "
        "(expected an `ibft train` output dir, a checkpoint dir or a peft adapter dir)"
    )


def _adapter_labels(checkpoint_dirs: list[Path]) -> list[str]:
    """Readable, unique names for the compared adapters: "fine_tuned" for one, else their run names."""
    if len(checkpoint_dirs) == 1:
        return ["fine_tuned"]
    labels: list[str] = []
    for directory in checkpoint_dirs:
        resolved = directory.resolve()
        name = resolved.name
        if name == "final":
            name = resolved.parent.name
        elif name.startswith("step-") and resolved.parent.name == "checkpoints":
            name = f"{resolved.parent.parent.name}-{name}"
        # peft keeps adapters in ModuleDicts, whose keys may not contain dots.
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in name) or "adapter"
        if name in ("base", "model"):
            name = f"{name}_adapter"
        unique, n = name, 2
        while unique in labels:
            unique, n = f"{name}-{n}", n + 1
        labels.append(unique)
    return labels


def _has_run_files(directory: Path) -> bool:
    return (directory / IB_CONFIG_FILE).is_file() or (directory / TRAIN_CONFIG_FILE).is_file()


def _train_config(checkpoint_dir: Optional[Path]) -> Any:
    if checkpoint_dir is None or not (checkpoint_dir / TRAIN_CONFIG_FILE).is_file():
        return None
    from trainables.train.config import TrainConfig

    path = checkpoint_dir / TRAIN_CONFIG_FILE
    try:
        return TrainConfig.from_saved(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg})") from None


def _adapter_tap_layer(checkpoint_dir: Optional[Path]) -> int | float:
    if checkpoint_dir is None or not (checkpoint_dir / IB_CONFIG_FILE).is_file():
        return DEFAULT_TAP_LAYER
    path = checkpoint_dir / IB_CONFIG_FILE
    try:
        tap_layer = json.loads(path.read_text()).get("tap_layer", DEFAULT_TAP_LAYER)
    except (json.JSONDecodeError, AttributeError):
        raise ConfigError(f"{path}: not a JSON object with a tap_layer (use --tap-layer to choose one)") from None
    return tap_layer


def _load_model(model_name: str, adapters: dict[str, Path], args: argparse.Namespace, train_config: Any) -> tuple[Any, Any]:
    """The base model with each adapter loaded under its label (the first one active)."""
    import torch

    from trainables.models import load_model_and_tokenizer
    from trainables.train.config import ModelConfig

    # The run's own model settings (GGUF file, tokenizer, tiny-model shape) when it is the run's model.
    same_model = train_config is not None and model_name == train_config.model.name_or_path
    base = train_config.model if same_model else ModelConfig(name_or_path=model_name)
    dtype = args.dtype or (train_config.model.dtype if train_config else "fp32")
    model, tokenizer = load_model_and_tokenizer(
        ModelConfig(
            name_or_path=model_name,
            gguf_file=base.gguf_file,
            tokenizer=base.tokenizer,
            dtype=dtype,
            tiny_overrides=base.tiny_overrides,
            # A run fine-tuned from a memorized base (the barrier testbed) is compared with that base.
            memorized=base.memorized,
        )
    )
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        model = model.to(torch.device(device))
    except (RuntimeError, AssertionError) as e:
        raise ConfigError(f"--device {args.device!r}: cannot use it ({str(e).splitlines()[0]})") from None
    for label, adapter_dir in adapters.items():
        from peft import PeftModel

        try:
            if isinstance(model, PeftModel):
                model.load_adapter(str(adapter_dir), adapter_name=label)
            else:
                model = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=label)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            detail = " ".join(str(e).split())[:300]
            raise ConfigError(f"--adapter {str(adapter_dir)!r}: does not load onto {model_name!r} ({detail})") from None
    model.eval()
    return model, tokenizer


def _load_examples(args: argparse.Namespace, train_config: Any) -> list[dict[str, str]]:
    from trainables.data import load_examples
    from trainables.train.config import DataConfig

    if args.data is None and train_config is None:
        raise ConfigError("--data is required (no --adapter with a train_config.json to take the training data from)")
    if args.data is None:
        # The run's own data settings and seed give back exactly the examples it trained on, in order.
        data = train_config.data
        data = DataConfig(
            source=data.source,
            split=data.split,
            max_examples=args.max_examples or data.max_examples,
            max_length=data.max_length,
            instruction_field=data.instruction_field,
            response_field=data.response_field,
        )
    else:
        data = DataConfig(source=args.data, max_examples=args.max_examples)
    seed = args.seed if args.seed is not None else (train_config.seed if train_config else 0)
    return load_examples(data, seed=seed)
