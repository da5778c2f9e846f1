"""Search-space files (`spaces/*.yaml`): their schema, validation and one-line errors.

Imports neither torch nor ray, so `ibft tune` rejects a bad file on a head node in well under a second.
Every error is one line naming the file, the field and what is allowed; the CLI turns it into exit code 2.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.errors import ConfigError

# The static list of prior names lives next to the IB config; importing it pulls no torch.
from trainables.ib.prior_names import PRIOR_NAMES
from trainables.ib.config import CE_KERNELS, ENCODER_INPUTS, KL_REDUCTIONS, LEGACY_SEMANTICS
from trainables.memorization import search_metrics as memorization_metrics

SAMPLERS = ("tpe", "nsga2", "random", "grid")
WANDB_MODES = ("offline", "online", "disabled")
PRECISIONS = ("fp32", "bf16")

# Depths of the models the project names, so tap layers can be checked without loading a model.
KNOWN_MODEL_DEPTHS = {"smollm2-135m-instruct": 30, "deepseek-ai/deepseek-coder-7b-instruct-v1.5": 30}

# The paper's IB setting (arXiv 2510.16022, OriGen), enqueued as the second trial of every search.
PAPER_ALPHA = 0.1
PAPER_BETA = 0.02
PAPER_TAP_LAYER = 20
# Layer 20 of the paper's 30-layer model, as a fraction for models too shallow to have a layer 20.
PAPER_TAP_FRACTION = 2 / 3
PAPER_PRIOR = "standard_normal"
# Roles a space's own preset may not take: the plain-LoRA baseline every search runs first, and the role of
# sampled trials. A preset named "paper" replaces the built-in paper setting (still the second trial).
RESERVED_PRESET_NAMES = ("baseline", "search")
PRESET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# The IB semantics a trial trains with (trainables.ib.config): categorical, fixed or searched like the prior.
IB_SEMANTICS_CHOICES = {"kl_reduction": KL_REDUCTIONS, "encoder_input": ENCODER_INPUTS}
IB_SEMANTICS_PARAMS = tuple(IB_SEMANTICS_CHOICES)
TRIAL_PARAMS = ("alpha", "beta", "tap_layer", "prior", *IB_SEMANTICS_PARAMS)
"""A trial's IB parameters other than its prior's options, searched or fixed: their Optuna names, trial config
keys and trials.csv columns. Every trial's params carry all of them."""
IB_SEMANTICS_FILE = "ib_semantics.json"
"""RUN_DIR record of what params.kl_reduction / params.encoder_input default to in that run (written when a
search starts); a run without it started before the two existed and trained with LEGACY_SEMANTICS."""


class _Strict(BaseModel):
    """Base of every section: unknown keys are errors that list the allowed ones."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            unknown = [k for k in data if k not in allowed]
            if unknown:
                raise ValueError(f"unknown field {unknown[0]!r}; allowed: {', '.join(allowed)}")
        return data


Scalar = Union[int, float, str, bool]


class Domain(_Strict):
    """How one searched parameter is drawn; exactly one of the four keys is set."""

    log_uniform: Optional[tuple[float, float]] = None
    """[low, high] with 0 < low < high, drawn uniformly in log space."""
    uniform: Optional[tuple[float, float]] = None
    """[low, high] with low < high, drawn uniformly."""
    int_range: Optional[tuple[int, int]] = None
    """[low, high] inclusive integers."""
    choices: Optional[list[Scalar]] = None
    """A finite list of values (categorical)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> "Domain":
        set_keys = [k for k in ("log_uniform", "uniform", "int_range", "choices") if getattr(self, k) is not None]
        if len(set_keys) != 1:
            raise ValueError(
                f"give exactly one of log_uniform, uniform, int_range, choices (got {', '.join(set_keys) or 'none'})"
            )
        if self.log_uniform is not None and not 0 < self.log_uniform[0] < self.log_uniform[1]:
            raise ValueError(f"log_uniform needs 0 < low < high, got {list(self.log_uniform)}")
        if self.uniform is not None and not self.uniform[0] < self.uniform[1]:
            raise ValueError(f"uniform needs low < high, got {list(self.uniform)}")
        if self.int_range is not None and not self.int_range[0] <= self.int_range[1]:
            raise ValueError(f"int_range needs low <= high, got {list(self.int_range)}")
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices must list at least one value")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise ValueError(f"choices must not repeat a value, got {self.choices}")
        return self

    @property
    def kind(self) -> str:
        """Which of the four forms this domain uses."""
        return next(k for k in ("log_uniform", "uniform", "int_range", "choices") if getattr(self, k) is not None)


ParamSpec = Union[Domain, Scalar]
"""A searched parameter is a Domain; a plain value fixes it."""


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_weight(name: str, spec: ParamSpec) -> ParamSpec:
    """alpha and beta: non-negative numbers; log-uniform, uniform or choices."""
    if isinstance(spec, Domain):
        if spec.int_range is not None:
            raise ValueError(f"{name} is a real number: use log_uniform, uniform or choices, not int_range")
        if spec.uniform is not None and spec.uniform[0] < 0:
            raise ValueError(f"{name} must be >= 0, got uniform {list(spec.uniform)}")
        if spec.choices is not None and not all(_is_number(c) and c >= 0 for c in spec.choices):
            raise ValueError(f"{name} choices must be numbers >= 0, got {spec.choices}")
        return spec
    if not _is_number(spec) or spec < 0:
        raise ValueError(f"{name} must be a number >= 0 or a domain, got {spec!r}")
    return spec


def _is_tap_value(x: Any) -> bool:
    """An int (negative counts from the top) or a fraction of depth in (0, 1)."""
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    return isinstance(x, float) and (0.0 < x < 1.0 or (x.is_integer() and abs(x) >= 1))


class SearchedParams(_Strict):
    """The IB hyper-parameters a search explores; a plain value instead of a domain fixes that parameter."""

    alpha: ParamSpec = Field(default_factory=lambda: Domain(log_uniform=(0.01, 1.0)))
    """Weight of the IB term (log_uniform or choices; 0 is the baseline, which every search runs anyway)."""
    beta: ParamSpec = Field(default_factory=lambda: Domain(log_uniform=(0.001, 0.1)))
    """Weight of CE_ib inside the IB term."""
    tap_layer: ParamSpec = Field(default_factory=lambda: Domain(choices=[0.5]))
    """Tap layer: choices of ints, negative ints or fractions in (0, 1), an int_range, or a uniform fraction range."""
    prior: Union[Domain, str] = "standard_normal"
    """Prior p(z): a name, or choices of names."""
    kl_reduction: Union[Domain, str] = "mean"
    """KL over the bottleneck dims (ib.kl_reduction): "mean" (the official code, the paper's alpha scale) or "sum"
    (d x stronger: alpha_sum = alpha_mean / d); a name, or choices of names."""
    encoder_input: Union[Domain, str] = "raw"
    """What q(z|h) reads (ib.encoder_input): "raw" (the official code) or "rms_norm"; a name, or choices of names."""
    prior_options: dict[str, dict[str, ParamSpec]] = Field(default_factory=dict)
    """Options per prior name, searched or fixed, used only in trials that pick that prior
    (e.g. {mog: {components: {choices: [2, 4, 8]}}})."""

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: ParamSpec) -> ParamSpec:
        return _check_weight("alpha", v)

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: ParamSpec) -> ParamSpec:
        return _check_weight("beta", v)

    @field_validator("tap_layer")
    @classmethod
    def _tap_layer(cls, v: ParamSpec) -> ParamSpec:
        allowed = "ints, negative ints or fractions in (0, 1)"
        if isinstance(v, Domain):
            if v.log_uniform is not None:
                raise ValueError("tap_layer cannot be log_uniform; use choices, int_range or a uniform fraction range")
            if v.choices is not None and not all(_is_tap_value(c) for c in v.choices):
                raise ValueError(f"tap_layer choices must be {allowed}, got {v.choices}")
            if v.uniform is not None and not 0.0 < v.uniform[0] < v.uniform[1] < 1.0:
                raise ValueError(f"tap_layer uniform is a fraction range inside (0, 1), got {list(v.uniform)}")
            if v.int_range is not None and v.int_range[0] < 0 < v.int_range[1]:
                raise ValueError(f"tap_layer int_range must not mix negative and positive ints, got {list(v.int_range)}")
            return v
        if not _is_tap_value(v):
            raise ValueError(f"tap_layer must be one of {allowed}, got {v!r}")
        return v

    @field_validator("prior")
    @classmethod
    def _prior(cls, v: Union[Domain, str]) -> Union[Domain, str]:
        names = v.choices if isinstance(v, Domain) else [v]
        if isinstance(v, Domain) and v.choices is None:
            raise ValueError("prior is categorical: give a name or choices of names")
        bad = [n for n in names if n not in PRIOR_NAMES]
        if bad:
            raise ValueError(f"unknown prior {bad[0]!r}; allowed: {', '.join(PRIOR_NAMES)}")
        return v

    @field_validator("kl_reduction", "encoder_input", mode="before")
    @classmethod
    def _ib_semantics_form(cls, v: Any, info: Any) -> Any:
        if not isinstance(v, (str, dict, Domain)):
            allowed = IB_SEMANTICS_CHOICES[info.field_name]
            raise ValueError(f"{info.field_name} must be one of {', '.join(allowed)} or {{choices: [...]}}, got {v!r}")
        return v

    @field_validator("kl_reduction", "encoder_input")
    @classmethod
    def _ib_semantics(cls, v: Union[Domain, str], info: Any) -> Union[Domain, str]:
        name, allowed = info.field_name, IB_SEMANTICS_CHOICES[info.field_name]
        if isinstance(v, Domain) and v.choices is None:
            raise ValueError(f"{name} is categorical: give one of {', '.join(allowed)} or choices of them")
        bad = [n for n in (v.choices if isinstance(v, Domain) else [v]) if n not in allowed]
        if bad:
            raise ValueError(f"{name} {bad[0]!r} is unknown; allowed: {', '.join(allowed)}")
        return v

    def __setstate__(self, state: dict[Any, Any]) -> None:
        # A space pickled by a search started before kl_reduction / encoder_input existed (Tune keeps the searcher,
        # space included, in RUN_DIR/tune) lacks them: its trials trained with LEGACY_SEMANTICS, and so do the
        # trials it proposes after a resume.
        state = dict(state)
        state["__dict__"] = {**LEGACY_SEMANTICS, **(state.get("__dict__") or {})}
        super().__setstate__(state)

    @model_validator(mode="after")
    def _options_match_priors(self) -> "SearchedParams":
        for name in self.prior_options:
            if name not in self.prior_names:
                raise ValueError(
                    f"prior_options.{name}: {name!r} is not among the priors searched ({', '.join(self.prior_names)})"
                )
        return self

    @property
    def prior_names(self) -> list[str]:
        """The priors a trial may use."""
        return list(self.prior.choices) if isinstance(self.prior, Domain) else [self.prior]

    def domains(self) -> dict[str, Domain]:
        """Every searched (not fixed) parameter by its Optuna name; prior options are named `<prior>.<option>`."""
        out = {name: getattr(self, name) for name in TRIAL_PARAMS}
        for prior, options in self.prior_options.items():
            for option, spec in options.items():
                out[f"{prior}.{option}"] = spec
        return {k: v for k, v in out.items() if isinstance(v, Domain)}


class ModelSection(_Strict):
    """Base model of every trial."""

    name_or_path: str
    """Hub id, local directory, .gguf file, "smollm2-135m-instruct" (offline GGUF) or "tiny-random-llama"."""
    gguf_file: Optional[str] = None
    """GGUF file inside name_or_path when that is a directory or hub repo."""
    tokenizer: Optional[str] = None
    """Tokenizer source when it differs from the model's."""
    tiny_overrides: dict[str, Any] = Field(default_factory=dict)
    """LlamaConfig overrides of the tiny random model (tests)."""
    num_layers: Optional[int] = Field(default=None, ge=1)
    """Depth of the model, to check tap layers before any trial starts; known for the project's named models."""
    memorized: Optional[dict[str, Any]] = None
    """Start every trial from this model after it has memorized a data set (the memorization-barrier testbed):
    the fields of trainables.train.config.MemorizedBase (data, max_examples, epochs, lr, lora_r, batch_size,
    max_length, prompt_format, seed), each documented there and checked by it. `ibft tune` builds that base once
    before the first trial (or finds it cached); `ibft memorize SPACE.yaml` builds it on its own."""

    @field_validator("memorized")
    @classmethod
    def _memorized_recipe(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        # One definition of the recipe (the dataclass): its unknown-field, type and range checks, its defaults.
        if value is None:
            return None
        from dataclasses import asdict

        from trainables.config_utils import from_mapping
        from trainables.train.config import MemorizedBase

        try:
            return asdict(from_mapping(MemorizedBase, value, "model.memorized"))
        except ConfigError as e:
            # pydantic puts "model.memorized: " in front of the message already.
            raise ValueError(str(e).removeprefix("model.memorized: ").removeprefix("model.memorized.")) from None

    def base_config(self):
        """The base model as a trainables ModelConfig, without its memorized recipe (see memorized_recipe)."""
        from trainables.train.config import ModelConfig

        return ModelConfig(
            name_or_path=self.name_or_path,
            gguf_file=self.gguf_file,
            tokenizer=self.tokenizer,
            tiny_overrides=dict(self.tiny_overrides),
        )

    def memorized_recipe(self):
        """model.memorized as a trainables MemorizedBase, None when unset."""
        from trainables.train.config import MemorizedBase

        return None if self.memorized is None else MemorizedBase(**self.memorized)

    def depth(self) -> Optional[int]:
        """Number of decoder blocks when known without loading the model."""
        if self.num_layers is not None:
            return self.num_layers
        if self.name_or_path == "tiny-random-llama" and "num_hidden_layers" in self.tiny_overrides:
            return int(self.tiny_overrides["num_hidden_layers"])
        return KNOWN_MODEL_DEPTHS.get(self.name_or_path)


class DataSection(_Strict):
    """Training data (mirrors trainables.train.config.DataConfig)."""

    source: str = "builtin:python-functions"
    """"builtin:python-functions", "origen", "evol-codealpaca", a hub dataset id or a local JSONL path."""
    split: str = "train"
    """Split of a hub dataset."""
    max_examples: Optional[int] = Field(default=None, ge=1)
    """Use only the first N examples after the seeded shuffle."""
    max_length: int = Field(default=512, ge=8)
    """Token limit per example."""
    drop_overlong: bool = False
    """Drop rather than truncate examples longer than max_length."""
    instruction_field: Optional[str] = None
    """Instruction field name when not a known one."""
    response_field: Optional[str] = None
    """Response field name when not a known one."""
    prompt_format: Literal["auto", "chat", "plain", "official"] = "auto"
    """Prompt of training and of every validation/test generation: "auto" (chat template if the tokenizer
    has one, else "plain"), "chat" (chat template required), "plain" ("### Instruction:/### Response:"),
    "official" (the official IB-FT script's instruction + "\\n", no special tokens). See DataConfig."""
    append_eos: bool = True
    """Append EOS to each response (also with "official", whose script does not): a model never taught to
    stop generates max_new_tokens at every validation; false reproduces the official script exactly."""


class LoraSection(_Strict):
    """LoRA adapter (paper: r=32, alpha=32, dropout 0.05, all attention and MLP projections)."""

    r: int = Field(default=32, ge=1)
    """Adapter rank."""
    alpha: int = Field(default=32, ge=1)
    """lora_alpha scaling numerator."""
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Adapter input dropout."""
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )
    """Module names that get an adapter."""


class TrainingSection(_Strict):
    """Optimisation budget of one trial and how often it is evaluated (one rung = rung_steps optimizer steps)."""

    max_steps: int = Field(ge=1)
    """Optimizer steps of a trial that is never stopped."""
    rung_steps: int = Field(ge=1)
    """Optimizer steps between two validation evaluations (ASHA rungs)."""
    lr: float = Field(default=2e-4, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    warmup_steps: int = Field(default=10, ge=0)
    """Linear warm-up steps."""
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """Cosine decay floor as a fraction of lr."""
    batch_size: int = Field(default=4, ge=1)
    """Examples per micro-batch per worker."""
    grad_accum: int = Field(default=1, ge=1)
    """Micro-batches per optimizer step."""
    max_grad_norm: float = Field(default=1.0, ge=0)
    """Gradient clipping norm (0 disables)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder block's activations in the backward pass instead of storing them (about a third
    more compute per step). The activations of a 7B model at 2 x 2048 tokens do not fit a 48 GB GPU next to its
    bf16 weights without it; a small model on a large GPU trains faster with it off."""

    @model_validator(mode="after")
    def _rung_fits(self) -> "TrainingSection":
        if self.max_steps % self.rung_steps:
            # The last evaluation must be at max_steps: that is where finished trials are scored and compared.
            raise ValueError(f"max_steps {self.max_steps} must be a multiple of rung_steps {self.rung_steps}")
        return self

    @property
    def num_rungs(self) -> int:
        """Evaluations of a full trial: every rung_steps steps, the last one at max_steps."""
        return self.max_steps // self.rung_steps


class BenchmarkSection(_Strict):
    """A benchmark split and how its samples are drawn and scored."""

    benchmark: str
    """"python-functions", "humaneval", "verilogeval" (VerilogEval v1 Human), "verilog" (13 small problems, for
    tests) or a path to a problems JSONL or VerilogEval folder. The builtin names have a fixed val/test split:
    `validation` uses its val part, `test` its test part; a path is used whole by both."""
    tasks: Optional[int] = Field(default=None, ge=1)
    """Use a seeded subset of this many tasks of the split (all when unset)."""
    n: int = Field(default=10, ge=1)
    """Samples generated per task."""
    k: list[int] = Field(default_factory=lambda: [1, 10], min_length=1)
    """The k of pass@k reported."""
    m: list[int] = Field(default_factory=lambda: [10])
    """The m of pass@k(m) (at least m of k samples pass), reported for the largest k."""
    temperature: float = Field(default=0.8, ge=0)
    """Sampling temperature (0: greedy)."""
    top_p: float = Field(default=0.95, gt=0, le=1)
    """Nucleus sampling."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Generation length limit."""
    timeout: float = Field(default=10.0, gt=0)
    """Wall-clock seconds allowed to each sample's tests."""
    batch_size: int = Field(default=40, ge=1)
    """Sequences (tasks x samples) decoded together. 40 suits a CPU; on a GPU a whole split's samples fit in
    one batch, and the decode loop costs about the same per token at any batch size, so raise it there."""

    @model_validator(mode="after")
    def _k_m_fit_n(self) -> "BenchmarkSection":
        if max(self.k) > self.n:
            raise ValueError(f"k {max(self.k)} exceeds n {self.n} samples per task")
        for m in self.m:
            if not 1 <= m <= max(self.k):
                raise ValueError(f"m {m} must lie in 1..{max(self.k)} (the largest k)")
        return self

    def metric_names(self, prefix: str) -> list[str]:
        """The result keys this benchmark reports, e.g. val/pass@1, val/pass@10(10)."""
        names = [f"{prefix}/pass@{k}" for k in self.k]
        names += [f"{prefix}/pass@{max(self.k)}({m})" for m in self.m]
        return names


class Objective(_Strict):
    """One objective of the multi-objective study."""

    metric: str
    """A reported result key, e.g. "val/pass@1"."""
    mode: Literal["max", "min"] = "max"
    """Maximise or minimise."""


class AshaSection(_Strict):
    """Asynchronous successive halving on the validation proxy."""

    enabled: bool = True
    """false: no early stopping (Ray's FIFO scheduler); every trial runs all its rungs, e.g. to record full
    learning curves. The other fields still say which metric the trials are watched on."""
    metric: str = "val/pass@10(10)"
    """The reported key ASHA ranks trials by at each rung."""
    mode: Literal["max", "min"] = "max"
    """Whether larger metric values are better."""
    grace_period: int = Field(default=1, ge=1)
    """Rungs every trial runs before it can be stopped."""
    reduction_factor: float = Field(default=2.0, gt=1)
    """Keep roughly 1/reduction_factor of the trials at each rung."""
    max_rungs: Optional[int] = Field(default=None, ge=1)
    """Rungs of a full trial; must equal max_steps / rung_steps when given."""
    tie_break: Literal["train_loss", "none"] = "train_loss"
    """With few tasks and samples many trials tie on the metric; "train_loss" ranks tied trials by their
    mean CE_ft over the rung (a perturbation far below one sample's worth of pass rate), "none" keeps ties."""
    promotion: Literal["metric", "pareto"] = "metric"
    """How a rung's trials are ranked. "metric": on `metric` alone (Ray's ASHA). "pareto": on every objective
    at once (non-dominated sorting, then crowding distance, as NSGA-II ranks), keeping the best
    1/reduction_factor; a trial that leads on one objective is then never stopped for trailing on `metric`.
    Needs objectives reported at every rung (validation metrics)."""


class ResourcesSection(_Strict):
    """What one trial occupies: a Ray Train worker group, or one worker in the trial's own process."""

    workers: int = Field(default=1, ge=1)
    """Ray Train workers (data-parallel ranks) per trial."""
    gpus_per_worker: float = Field(default=0, ge=0)
    """GPUs per worker (0: CPU training)."""
    cpus_per_worker: float = Field(default=1, gt=0)
    """CPUs per worker."""
    worker_in_trial: bool = True
    """With one worker, train in the Tune trial's own process (which then holds the worker's CPUs and GPUs)
    instead of starting a Ray Train controller and worker group for it: the same loop, reports and checkpoint
    layout, about 10 s less per trial start on 2 CPU cores (docs/performance.md). False keeps Ray Train for
    one-worker trials too. Trials with more workers always use Ray Train."""
    gpu_memory_gib: Optional[float] = Field(default=None, gt=0)
    """GPU memory one worker's tensors may use, in GiB. `ibft tune` estimates a trial's per-GPU peak from the
    model's shape and these settings (trainables.memory_estimate) and refuses, before Ray starts, a GPU space
    whose trial cannot fit. Unset on a GPU space: 44.4, what a 48 GB L40S of cluster.yaml leaves (nvidia-smi's
    46,068 MiB = 45.0 GiB less ~0.6 GiB of CUDA context and NCCL buffers); an 80 GB A100/H100 leaves about 78.
    Unused by CPU spaces (gpus_per_worker 0)."""

    def gpu_memory(self) -> Optional[float]:
        """The GiB a worker's GPU is taken to have; None for CPU training."""
        if self.gpus_per_worker <= 0:
            return None
        from trainables.memory_estimate import L40S_GPU_MEMORY_GIB

        return self.gpu_memory_gib if self.gpu_memory_gib is not None else L40S_GPU_MEMORY_GIB


class DeepSpeedSection(_Strict):
    """DeepSpeed engine of every trial, and the training precision."""

    enabled: bool = True
    """Train under DeepSpeed (ZeRO); false trains with plain torch DDP."""
    zero_stage: Literal[2, 3] = 2
    """ZeRO stage 2 (optimizer + gradients partitioned) or 3 (parameters too)."""
    offload_optimizer: bool = False
    """Keep optimizer state in CPU memory."""
    offload_params: bool = False
    """Keep parameters in CPU memory (ZeRO-3 only)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """One precision for weights and compute (the paper's code mixed bf16 and fp16 settings)."""

    @model_validator(mode="after")
    def _offload_needs_zero3(self) -> "DeepSpeedSection":
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        return self


class WandbSection(_Strict):
    """Weights & Biases logging: one run per trial, grouped by search name."""

    project: str = "ibft-search"
    """W&B project."""
    mode: Literal["offline", "online", "disabled"] = "offline"
    """offline writes runs under RUN_DIR/wandb for `wandb sync`; online needs a configured API key."""


class FailureSection(_Strict):
    """What happens when a trial fails."""

    max_failures: int = Field(default=1, ge=0)
    """Retries of a failed trial by Tune, each from its last checkpoint (non-finite losses are never retried). A
    trial that still fails ends FAIL, and its configuration is not trained again unless `ibft tune
    --retry-failed`."""
    max_preemption_failures: int = Field(default=0, ge=0)
    """Spot preemptions a trial's Ray Train run recovers from itself (from its last rung checkpoint) before the
    preemption fails the run; then it counts as one of the trial's failures (max_failures). Ray Train V2's own
    default, -1, would retry preemptions without limit and never count them."""
    controller_failure_limit: int = Field(default=0, ge=0)
    """Times a trial's Ray Train run retries starting its worker group after a start-up failure or time-out
    (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 600 s: e.g. the autoscaler has no capacity) before the run fails;
    then it counts as one of the trial's failures. Ray Train V2's default, -1, retries without limit: a search
    short of capacity would wait silently for ever."""
    resource_wait_warn_s: float = Field(default=300.0, gt=0)
    """A trial whose workers have not started after this many seconds logs a line naming the resources it waits
    for (and what the cluster has free), again every as many seconds while it waits."""


class MemorizationSection(_Strict):
    """Memorization analysis at the end of every finished trial (trainables.memorization): Min-K% Prob of the
    first max_examples training examples, and the geometry between the most- and least-memorized groups.

    Enabled, a finished trial reports memorization/gap (the angular gap between the groups, lower is better),
    memorization/gap_base and gap_change (vs the base model on the same groups), l2_distance,
    relative_distance, angular_disparity, min_k_mean, min_k_mean_base, tap_index, n_scored and seconds; they
    land in trials.csv and the report, and gap, gap_change, l2_distance, relative_distance,
    angular_disparity and min_k_mean may be objectives (mode min). Stopped trials are not measured.
    """

    enabled: bool = False
    """Measure memorization at the final rung of every trial."""
    k: float = Field(default=0.2, gt=0, le=1)
    """Min-K% Prob's K: the fraction of each response's lowest-probability tokens averaged (paper: 0.2)."""
    quantile: float = Field(default=0.2, gt=0, le=0.5)
    """Fraction of the scored examples in each group (0.2: top 20% most vs bottom 20% least memorized)."""
    max_examples: int = Field(default=64, ge=4)
    """Score the first N training examples (in the seeded order the trial loads them)."""
    batch_size: int = Field(default=8, ge=1)
    """Examples per forward pass (the numbers do not depend on it)."""
    tap_layer: Optional[Union[int, float]] = None
    """Depth the representations are read at (int, negative int or fraction of depth). Unset: each trial's own
    tap layer (params.tap_layer; the baseline's is the paper trial's). Set it when params.tap_layer is searched
    and the gap is an objective, so every trial's gap is measured at the same depth."""

    @field_validator("tap_layer")
    @classmethod
    def _tap_layer(cls, v: Optional[Union[int, float]]) -> Optional[Union[int, float]]:
        if v is not None and not _is_tap_value(v):
            raise ValueError(f"tap_layer must be an int, a negative int or a fraction in (0, 1), got {v!r}")
        return v


class FaultInjection(_Strict):
    """Testing aid: make chosen trials produce a NaN loss, to exercise error handling end to end."""

    nan_at_step: int = Field(ge=1)
    """Optimizer step at which the loss becomes NaN."""
    trials: list[int] = Field(min_length=1)
    """Optuna trial numbers (0 = the baseline, 1 = the paper trial, then the space's presets, then sampled
    trials) that get the fault."""


class Preset(_Strict):
    """One fixed IB setting a space runs as its own trial (`presets: {name: {...}}`), after the baseline and the
    paper trial, with its name as the trial's role."""

    alpha: float
    """Weight of the IB term, > 0 (alpha 0 is the baseline, which every search runs first)."""
    beta: float
    """Weight of CE_ib inside the IB term, >= 0."""
    tap_layer: Union[int, float]
    """Tap layer: an int (negative counts from the top) or a fraction of depth in (0, 1); checked against the
    model's depth like params.tap_layer."""
    prior: str = PAPER_PRIOR
    """Prior p(z) by name (any registered prior, searched by the space or not)."""
    prior_options: dict[str, Scalar] = Field(default_factory=dict)
    """Fixed options of that prior (e.g. {components: 4}); options the space searches for this prior and
    the preset leaves out are drawn as in a search trial."""
    kl_reduction: Optional[str] = None
    """"mean" or "sum"; unset: params.kl_reduction where the space fixes it, else "mean"."""
    encoder_input: Optional[str] = None
    """"raw" or "rms_norm"; unset: params.encoder_input where the space fixes it, else "raw"."""

    @field_validator("kl_reduction", "encoder_input")
    @classmethod
    def _ib_semantics(cls, v: Optional[str], info: Any) -> Optional[str]:
        allowed = IB_SEMANTICS_CHOICES[info.field_name]
        if v is not None and v not in allowed:
            raise ValueError(f"{info.field_name} {v!r} is unknown; allowed: {', '.join(allowed)}")
        return v

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha(cls, v: Any) -> Any:
        if not _is_number(v) or v <= 0:
            raise ValueError(f"alpha must be a number > 0 (alpha 0 is the baseline, which every search runs first), got {v!r}")
        return v

    @field_validator("beta", mode="before")
    @classmethod
    def _beta(cls, v: Any) -> Any:
        if not _is_number(v) or v < 0:
            raise ValueError(f"beta must be a number >= 0, got {v!r}")
        return v

    @field_validator("tap_layer", mode="before")
    @classmethod
    def _tap_layer(cls, v: Any) -> Any:
        if not _is_tap_value(v):
            raise ValueError(f"tap_layer must be an int, a negative int or a fraction in (0, 1), got {v!r}")
        return v

    @field_validator("prior")
    @classmethod
    def _prior(cls, v: str) -> str:
        if v not in PRIOR_NAMES:
            raise ValueError(f"unknown prior {v!r}; allowed: {', '.join(PRIOR_NAMES)}")
        return v

    def values(self) -> dict[str, Any]:
        """The trial's IB parameters, as the baseline's and the paper trial's are given (kl_reduction and
        encoder_input only where the preset sets them; SearchSpace fills in the rest)."""
        out = {
            "alpha": self.alpha, "beta": self.beta, "tap_layer": self.tap_layer, "prior": self.prior,
            "prior_options": dict(self.prior_options),
        }
        out.update({k: getattr(self, k) for k in IB_SEMANTICS_PARAMS if getattr(self, k) is not None})
        return out


class SearchSpace(_Strict):
    """One experiment: what every trial trains and how the search explores, stops and reports."""

    name: Optional[str] = None
    """Default search name (RUN_DIR = storage_path/name); the file name when unset."""
    description: str = ""
    """What the experiment is for."""
    model: ModelSection
    """Base model."""
    data: DataSection = Field(default_factory=DataSection)
    """Training data."""
    validation: BenchmarkSection
    """Validation split: the only benchmark data the search sees."""
    test: Optional[BenchmarkSection] = None
    """Test split, scored once per finished (not stopped) trial; unset: no test scoring."""
    lora: LoraSection = Field(default_factory=LoraSection)
    """LoRA settings."""
    training: TrainingSection
    """Budget and rung size."""
    params: SearchedParams = Field(default_factory=SearchedParams)
    """Searched (and fixed) IB parameters."""
    ib: dict[str, Any] = Field(default_factory=dict)
    """Fixed IB settings other than the searched ones (bottleneck_dim, ib_token_fraction, ce_chunk_size,
    ce_kernel...)."""
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    """Optuna sampler."""
    startup_trials: Optional[int] = Field(default=None, ge=1)
    """sampler tpe only: trials drawn at random before TPE models the results (Optuna's n_startup_trials; unset:
    Optuna's default, 10). The preset trials and proposals answered from an earlier run count. A search of a
    few dozen trials under ASHA learns from its stopped trials early; a small value lets it use them."""
    num_samples: int = Field(default=20, ge=1)
    """Trials in the search, the preset trials (baseline, paper and the space's presets) included."""
    max_concurrent: int = Field(default=2, ge=1)
    """Trials running at once."""
    seed: int = 0
    """Seeds the sampler and every trial's training and sampling."""
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="val/pass@1"), Objective(metric="val/pass@10(10)")], min_length=1
    )
    """Objectives of the study (Pareto front)."""
    asha: AshaSection = Field(default_factory=AshaSection)
    """Early stopping."""
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    """Per-trial resources."""
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    """DeepSpeed and precision."""
    wandb: WandbSection = Field(default_factory=WandbSection)
    """W&B logging."""
    failure: FailureSection = Field(default_factory=FailureSection)
    """Retries."""
    paper_beta: float = Field(default=PAPER_BETA, ge=0)
    """beta of the paper-setting trial (paper: 0.02 on OriGen, 0.01 on Evol-CodeAlpaca-V1)."""
    presets: dict[str, Preset] = Field(default_factory=dict)
    """The space's own fixed settings, each run as one trial after the baseline and the paper trial, in file
    order, with its name as the trial's role (in trials.csv, the report and the Optuna study); they count in
    num_samples. A preset named "paper" replaces the built-in paper setting (and then paper_beta must be
    unset); "baseline" and "search" are taken. E.g. {official: {alpha: 0.2, beta: 0.01, tap_layer: 20}}."""
    memorization: MemorizationSection = Field(default_factory=MemorizationSection)
    """Memorization analysis of every finished trial (off unless enabled)."""
    learn_from_stopped: bool = False
    """Show the sampler each trial ASHA stopped as if complete with its last rung's objective values (the study
    keeps it PRUNED). Off: a stopped trial carries no values, and a multi-objective TPE ranks all of them alike.
    Measured with bench/search_efficiency.py (README, search efficiency)."""
    keep_checkpoints: Literal["last_adapter", "all"] = "last_adapter"
    """What a trial ASHA stopped keeps in RUN_DIR/trials/<id>/ once it stops: "last_adapter" its last rung's
    checkpoint without the optimizer/engine state (the LoRA adapter and IB head, the rung's metrics and per-task
    counts, its train config: what `ibft eval --adapter` and the report read), "all" every rung checkpoint as
    written. A stopped trial never trains again, so nothing else is read."""
    faults: Optional[FaultInjection] = None
    """Testing aid only: inject a NaN loss into chosen trials."""

    @model_validator(mode="after")
    def _startup_trials_need_tpe(self) -> "SearchSpace":
        if self.startup_trials is not None and self.sampler != "tpe":
            raise ValueError(f"startup_trials applies to sampler tpe only, got sampler {self.sampler!r}")
        return self

    @field_validator("presets", mode="before")
    @classmethod
    def _preset_names(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for name in v:
                if name in RESERVED_PRESET_NAMES:
                    raise ValueError(
                        f"preset name {name!r} is taken ({', '.join(RESERVED_PRESET_NAMES)} are roles every search "
                        "has; a preset named 'paper' replaces the paper setting)"
                    )
                if not isinstance(name, str) or not PRESET_NAME.match(name):
                    raise ValueError(f"preset name {name!r} must be a letter then letters, digits, '_' or '-'")
        return v

    @model_validator(mode="after")
    def _paper_set_once(self) -> "SearchSpace":
        if "paper" in self.presets and "paper_beta" in self.model_fields_set:
            raise ValueError("paper_beta and presets.paper both set the paper trial; give its beta in presets.paper")
        return self

    @field_validator("ib")
    @classmethod
    def _ib_fixed(cls, v: dict[str, Any]) -> dict[str, Any]:
        searched = (*TRIAL_PARAMS, "prior_options")
        allowed = ("bottleneck_dim", "logvar_min", "logvar_max", "ib_token_fraction", "ce_chunk_size")
        for key, value in v.items():
            if key in searched:
                raise ValueError(f"{key} belongs under params (searched or fixed there), not ib")
            if key == "ce_kernel":
                if value not in CE_KERNELS:
                    raise ValueError(f"ce_kernel must be one of {', '.join(CE_KERNELS)}, got {value!r}")
                continue
            if key not in allowed:
                raise ValueError(f"unknown field {key!r}; allowed: {', '.join(allowed + ('ce_kernel',))}")
            if not _is_number(value):
                raise ValueError(f"{key} must be a number, got {value!r}")
        if "ib_token_fraction" in v and not 0 < v["ib_token_fraction"] <= 1:
            raise ValueError(f"ib_token_fraction must lie in (0, 1], got {v['ib_token_fraction']!r}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "SearchSpace":
        if self.asha.max_rungs is not None and self.asha.max_rungs != self.training.num_rungs:
            raise ValueError(
                f"asha.max_rungs {self.asha.max_rungs} disagrees with training: max_steps / rung_steps = "
                f"{self.training.num_rungs}"
            )
        if self.asha.grace_period > self.training.num_rungs:
            raise ValueError(
                f"asha.grace_period {self.asha.grace_period} exceeds the {self.training.num_rungs} rungs of a trial"
            )
        self._check_metrics()
        for name in ("validation", "test"):
            bench = getattr(self, name, None)
            if bench is not None and bench.tasks is not None and bench.tasks < self.resources.workers:
                # Each worker evaluates its own share of the tasks; a worker with none fails the trial at its rung.
                raise ValueError(
                    f"{name}.tasks {bench.tasks} is fewer than resources.workers {self.resources.workers}: every "
                    "worker needs at least one task"
                )
        depth = self.model.depth()
        if depth is not None:
            self._check_tap_layers(depth)
        if self.sampler == "grid":
            for name, domain in self.params.domains().items():
                if domain.choices is None:
                    raise ValueError(f"sampler grid needs choices for every searched parameter; params.{name} is {domain.kind}")
        return self

    def rung_objectives(self) -> list[str]:
        """The objectives reported at every rung (validation metrics); the others (memorization/...) come only
        with a trial's final rung, so Tune must not expect them in every result (optuna_bridge.RungMetricsLimiter)."""
        validation = self.validation.metric_names("val")
        return [o.metric for o in self.objectives if o.metric in validation]

    def _check_metrics(self) -> None:
        """ASHA ranks on a validation metric (reported every rung); objectives are validation metrics or, with
        memorization enabled, memorization metrics (reported at the final rung, lower is better)."""
        validation = self.validation.metric_names("val")
        if self.asha.metric not in validation:
            raise ValueError(f"asha.metric {self.asha.metric!r} is not reported; allowed: {', '.join(sorted(validation))}")
        memorization = list(memorization_metrics.OBJECTIVE_METRICS) if self.memorization.enabled else []
        for i, objective in enumerate(self.objectives):
            name, metric = f"objectives[{i}]", objective.metric
            if metric in memorization_metrics.OBJECTIVE_METRICS and not self.memorization.enabled:
                raise ValueError(
                    f"{name}.metric {metric!r} is reported only with memorization measured: "
                    "set memorization.enabled: true"
                )
            if metric not in validation and metric not in memorization:
                allowed = sorted(validation) + memorization
                raise ValueError(f"{name}.metric {metric!r} is not reported; allowed: {', '.join(allowed)}")
            if metric in memorization and objective.mode != memorization_metrics.MODE:
                raise ValueError(
                    f"{name}.mode: {metric} is lower-is-better, so its mode must be min, got {objective.mode}"
                )
        if len({o.metric for o in self.objectives}) != len(self.objectives):
            raise ValueError("objectives must not repeat a metric")
        if self.asha.enabled and self.asha.promotion == "pareto":
            late = [o.metric for o in self.objectives if o.metric not in validation]
            if late:
                raise ValueError(
                    f"asha.promotion 'pareto' ranks rungs on the objectives, but {', '.join(late)} is reported only "
                    "at the last rung; use validation objectives or promotion 'metric'"
                )
        if self.memorization.enabled:
            memo = self.memorization
            available = min(memo.max_examples, self.data.max_examples or memo.max_examples)
            size = math.floor(memo.quantile * available + 1e-9)
            if size < 2:
                raise_what = "data.max_examples" if available < memo.max_examples else "memorization.max_examples"
                raise ValueError(
                    f"memorization.quantile {memo.quantile} of {available} examples gives groups of {size}; each group "
                    f"needs at least 2 (raise {raise_what} or memorization.quantile)"
                )

    def _check_tap_layers(self, depth: int) -> None:
        spec = self.params.tap_layer
        values: list[Any]
        if isinstance(spec, Domain):
            values = list(spec.choices or []) + list(spec.int_range or [])
        else:
            values = [spec]
        checked = [("params.tap_layer", value) for value in values]
        checked += [(f"presets.{name}.tap_layer", preset.tap_layer) for name, preset in self.presets.items()]
        if self.memorization.enabled and self.memorization.tap_layer is not None:
            checked.append(("memorization.tap_layer", self.memorization.tap_layer))
        for name, value in checked:
            if isinstance(value, int) and not -(depth + 1) <= value <= depth:
                raise ValueError(
                    f"{name} {value} is out of range for a {depth}-layer model "
                    f"(allowed: 0..{depth}, -{depth + 1}..-1 or a fraction in (0, 1))"
                )

    # ---- what the search side derives from a space ------------------------------------------------

    @property
    def num_rungs(self) -> int:
        """Rungs of a trial that is never stopped."""
        return self.training.num_rungs

    def paper_params(self) -> dict[str, Any]:
        """The paper trial's setting: presets.paper when the space gives one, else the paper's (alpha 0.1, beta
        paper_beta, tap layer 20 where the model has one, standard normal)."""
        if "paper" in self.presets:
            return self._preset_semantics(self.presets["paper"].values())
        depth = self.model.depth()
        tap: Union[int, float] = PAPER_TAP_LAYER if depth is None or depth >= PAPER_TAP_LAYER else PAPER_TAP_FRACTION
        return self._preset_semantics(
            {"alpha": PAPER_ALPHA, "beta": self.paper_beta, "tap_layer": tap, "prior": PAPER_PRIOR, "prior_options": {}}
        )

    def named_presets(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, values) of the space's presets other than "paper", in file order: the trials enqueued after
        the baseline and the paper trial."""
        return [(name, self._preset_semantics(p.values())) for name, p in self.presets.items() if name != "paper"]

    def _preset_semantics(self, values: dict[str, Any]) -> dict[str, Any]:
        """A preset trial's values with kl_reduction / encoder_input it leaves out: the space's value where it
        fixes one, else the default ("mean", "raw")."""
        for name in IB_SEMANTICS_PARAMS:
            spec = getattr(self.params, name)
            values.setdefault(name, SearchedParams.model_fields[name].default if isinstance(spec, Domain) else spec)
        return values

    def fixed_params(self) -> dict[str, Any]:
        """Parameters the space fixes to one value (not searched)."""
        out = {
            name: getattr(self.params, name)
            for name in TRIAL_PARAMS
            if not isinstance(getattr(self.params, name), Domain)
        }
        return out


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("Domain", "int", "float", "str", "bool") or "[" in str(item) or str(item).startswith("function-"):
            continue  # pydantic's union-branch labels say nothing to a user
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _one_line(path: str, error: ValidationError) -> str:
    errors = error.errors()
    # A union field reports one error per branch; the Domain branch's message is the informative one.
    first = next((e for e in errors if "Domain" in e["loc"]), errors[0])
    loc = _format_loc(tuple(first["loc"]))
    msg = first["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if first["type"] == "missing":
        msg = "required field is missing"
    elif first["type"] not in ("value_error", "assertion_error") and "input" in first:
        msg = f"{msg}, got {first['input']!r}"
    where = f"{path}: {loc}: " if loc else f"{path}: "
    return (where + msg).replace("\n", " ")


def parse_space(data: Any, path: str = "<space>") -> SearchSpace:
    """Validate a space given as a mapping; `path` names it in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a space file must be a YAML mapping, got {type(data).__name__}")
    try:
        space = SearchSpace.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(path, e)) from None
    if space.name is None:
        space.name = Path(path).stem if path != "<space>" else "search"
    return space


class SpaceYamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3 as a float (YAML 1.1 insists on 1.0e-3; people write 1e-3)."""


SpaceYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file; every problem is a one-line ConfigError naming the file and field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: space file not found")
    try:
        data = yaml.load(p.read_text(), Loader=SpaceYamlLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    space = parse_space(data, str(p))
    if space.name is None or data.get("name") is None:
        space.name = p.stem
    return space


# ---- what a run directory's unset kl_reduction / encoder_input mean ------------------------------------------


def default_ib_semantics() -> dict[str, str]:
    """What params.kl_reduction / params.encoder_input are when a space file leaves them out (today)."""
    return {name: SearchedParams.model_fields[name].default for name in IB_SEMANTICS_PARAMS}


def record_ib_semantics(run_dir: Path) -> None:
    """Write RUN_DIR/ib_semantics.json at the start of a search: what its unset kl_reduction / encoder_input mean."""
    import json

    (Path(run_dir) / IB_SEMANTICS_FILE).write_text(json.dumps(default_ib_semantics(), indent=2) + "\n")


def run_ib_semantics(run_dir: Path) -> dict[str, str]:
    """What unset params.kl_reduction / encoder_input mean in the run at RUN_DIR: its ib_semantics.json, or
    LEGACY_SEMANTICS for a run started before that record (and the two params) existed."""
    import json

    path = Path(run_dir) / IB_SEMANTICS_FILE
    if not path.is_file():
        return dict(LEGACY_SEMANTICS)
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({' '.join(str(e).split())})") from None
    valid = isinstance(recorded, dict) and all(recorded.get(k) in IB_SEMANTICS_CHOICES[k] for k in IB_SEMANTICS_PARAMS)
    if not valid:
        allowed = "; ".join(f"{k}: {', '.join(v)}" for k, v in IB_SEMANTICS_CHOICES.items())
        raise ConfigError(f"{path}: expected {{kl_reduction, encoder_input}} ({allowed}), got {recorded!r}")
    return {k: recorded[k] for k in IB_SEMANTICS_PARAMS}


def with_run_ib_semantics(space: SearchSpace, run_dir: Path) -> SearchSpace:
    """`space` (the run's copy of its space file) with the kl_reduction / encoder_input the file leaves unset set to
    what they meant when the run started (run_ib_semantics): a resumed run proposes, and its report reads, trials
    with the semantics its first trials trained with, whatever today's defaults are."""
    semantics = run_ib_semantics(run_dir)
    for name in IB_SEMANTICS_PARAMS:
        if name not in space.params.model_fields_set:
            setattr(space.params, name, semantics[name])
    return space
