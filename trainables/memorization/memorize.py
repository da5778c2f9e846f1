"""A base model that has memorized a data set: the memorization-barrier testbed's starting point.

The paper's failure mode (arXiv 2510.16022) is conditional on a base model that has *strongly memorized* the
downstream code data. SmolLM2 has never seen the project's own Python functions, so `ibft memorize` puts
them there: plain LoRA fine-tuning (no IB) for several passes over the examples, the adapter merged into the
weights, the result saved as an ordinary Hugging Face folder. It is built once and cached under
$IBFT_CACHE/memorized/ (like a dequantised GGUF), keyed by the base model and the whole recipe, so every
trial of a search (and every later search) loads it in about a second.

memorize.json inside it says how it was made and how strongly it memorized: Min-K% Prob (k = 20%) of every
memorized example under the fresh base and under the memorized base, in the format it memorized them in.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError
from trainables.train.config import (
    DataConfig,
    LoraSettings,
    MemorizedBase,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)

RECIPE_FILE = "memorize.json"
"""Written into the memorized base's folder: the recipe, the training summary and the Min-K% before/after."""
RECIPE_VERSION = 1
"""Part of the cache key: bump it when the build itself changes, so old caches are not taken for new ones."""
MIN_K = 0.2
"""Min-K% Prob's k for the before/after comparison (the Min-K% paper's 20%)."""


def memorized_base_dir(base: ModelConfig, recipe: MemorizedBase) -> Path:
    """Cache folder of `base` after memorizing `recipe` (it may not exist yet)."""
    from trainables.models import cache_root

    key = json.dumps(
        {"version": RECIPE_VERSION, "base": _base_identity(base), "recipe": dataclasses.asdict(recipe)}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = Path(base.name_or_path.rstrip("/")).name.removesuffix(".gguf") or "model"
    return cache_root() / "memorized" / f"{stem}-{digest}"


def ensure_memorized_base(base: ModelConfig, recipe: MemorizedBase, *, progress: bool = True) -> Path:
    """The memorized base's folder, building it first when the cache lacks it (minutes on 2 CPU cores for
    SmolLM2-135M; progress on stderr). Concurrent builders each write a private copy and the first rename
    wins (trainables.models._write_atomically), so nobody reads a half-written folder."""
    from trainables.models import _CACHE_COMPLETE_MARKER, _write_atomically

    target = memorized_base_dir(base, recipe)
    if not (target / _CACHE_COMPLETE_MARKER).is_file():
        _write_atomically(target, lambda tmp: build_memorized_base(base, recipe, tmp, progress=progress))
    return target


def read_recipe(folder: Path) -> dict[str, Any]:
    """The memorize.json of a memorized base's folder."""
    path = Path(folder) / RECIPE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the memorized base's record ({e})") from None


def build_memorized_base(base: ModelConfig, recipe: MemorizedBase, out: Path, *, progress: bool = True) -> dict:
    """Fine-tune `base` on the recipe's examples, merge the adapter, save the model and tokenizer to `out`, and
    write out/memorize.json (returned)."""
    from trainables.data import load_examples, tokenize_examples
    from trainables.models import load_model_and_tokenizer
    from trainables.train.loop import TrainHooks, train

    started = time.time()
    fresh = _plain(base)
    data = DataConfig(
        source=recipe.data,
        max_examples=recipe.max_examples,
        max_length=recipe.max_length,
        prompt_format=recipe.prompt_format,
    )
    examples = load_examples(data, seed=recipe.seed)
    steps = max(1, math.ceil(recipe.epochs * len(examples) / recipe.batch_size))
    say = _printer(progress)
    say(
        f"ibft memorize: {len(examples)} examples of {recipe.data}, {recipe.epochs:g} epochs = {steps} steps of "
        f"{recipe.batch_size} at lr {recipe.lr:g} (LoRA r {recipe.lora_r}, merged afterwards) on {base.name_or_path}"
    )
    train_dir = out / "_train"
    cfg = TrainConfig(
        model=fresh,
        lora=LoraSettings(r=recipe.lora_r, alpha=recipe.lora_r, dropout=0.05),
        ib=_no_ib(),
        data=data,
        optim=OptimConfig(
            lr=recipe.lr, warmup_steps=max(1, steps // 20), min_lr_ratio=0.1, max_steps=steps, batch_size=recipe.batch_size
        ),
        seed=recipe.seed,
        output_dir=str(train_dir),
        log_every=1,
        checkpoint_every=0,
        keep_checkpoints=1,
        resume=False,
    )
    every = max(1, steps // 20)

    def on_log(step: int, metrics: dict[str, float]) -> None:
        if step % every == 0 or step == steps:
            elapsed = time.time() - started
            say(f"ibft memorize:   step {step}/{steps}  loss {metrics.get('ce_loss', float('nan')):.4f}  ({elapsed:.0f} s)")

    summary = train(cfg, hooks=TrainHooks(on_log=on_log))

    say("ibft memorize: merging the adapter into the weights and scoring Min-K% before and after")
    model, tokenizer = load_model_and_tokenizer(fresh)
    features, _ = tokenize_examples(
        examples, tokenizer, recipe.max_length, prompt_format=recipe.prompt_format, append_eos=True
    )
    before = _min_k(model, tokenizer, features)
    merged = _merge(model, Path(summary["checkpoint"]) / "adapter")
    after = _min_k(merged, tokenizer, features)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(train_dir, ignore_errors=True)

    record = {
        "base": _base_identity(base),
        "recipe": dataclasses.asdict(recipe),
        "examples": len(examples),
        "steps": steps,
        "first_loss": summary.get("first_loss"),
        "final_loss": summary.get("final_loss"),
        "min_k": {
            "k": MIN_K,
            "fresh": _describe(before),
            "memorized": _describe(after),
            "rose_fraction": sum(a > b for a, b in zip(after, before)) / len(before),
        },
        "seconds": round(time.time() - started, 1),
    }
    (out / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    say(
        f"ibft memorize: Min-K% (k {MIN_K:g}) mean {record['min_k']['fresh']['mean']:.3f} -> "
        f"{record['min_k']['memorized']['mean']:.3f}; rose on {record['min_k']['rose_fraction']:.0%} of the examples "
        f"({record['seconds']:.0f} s)"
    )
    return record


def _plain(base: ModelConfig) -> ModelConfig:
    """`base` as it is, in fp32 (the memorized weights are saved in full precision; trials cast them)."""
    return dataclasses.replace(base, memorized=None, dtype="fp32")


def _base_identity(base: ModelConfig) -> dict[str, Any]:
    """What names the base model in the cache key: its source (a GGUF's size and mtime too) and tiny shape."""
    from trainables.models import SMOLLM2, smollm2_gguf_path

    identity: dict[str, Any] = {
        "name_or_path": base.name_or_path,
        "gguf_file": base.gguf_file,
        "tokenizer": base.tokenizer,
        "tiny_overrides": dict(base.tiny_overrides),
    }
    path = smollm2_gguf_path() if base.name_or_path == SMOLLM2 else Path(base.name_or_path).expanduser()
    if path.exists():
        stat = path.stat()
        identity["file"] = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return identity


def _no_ib():
    from trainables.ib.config import IBConfig

    return IBConfig(alpha=0.0)


def _merge(model: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    return peft_model.merge_and_unload().eval()


def _min_k(model: Any, tokenizer: Any, features: list[dict[str, list[int]]]) -> list[float]:
    import torch

    from trainables.memorization.min_k import min_k_scores

    with torch.no_grad():
        return min_k_scores(model, features, pad_token_id=tokenizer.pad_token_id, k=MIN_K, batch_size=8)


def _describe(scores: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(scores),
        "median": statistics.median(scores),
        "min": min(scores),
        "max": max(scores),
    }


def _printer(enabled: bool):
    def say(text: str) -> None:
        if enabled:
            print(text, file=sys.stderr, flush=True)

    return say

