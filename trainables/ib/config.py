"""IB-FT configuration: what the paper's method needs to know, validated at construction.

Imports nothing heavy so a config can be built and checked on a head node without torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Union

from trainables.errors import ConfigError

TapLayer = Union[int, float]
CE_KERNELS = ("auto", "checkpointed", "fused", "fused_compiled")
KL_REDUCTIONS = ("mean", "sum")
ENCODER_INPUTS = ("raw", "rms_norm")
LEGACY_SEMANTICS = {"kl_reduction": "sum", "encoder_input": "rms_norm"}
"""What an IB config written before these two fields existed trained with: the KL summed over the bottleneck
dims and the encoder reading the RMS-normalised hidden state. A saved config (ib_config.json, a checkpoint's
train_config.json, a run started before the change) without the keys means exactly this."""


@dataclass
class IBConfig:
    """Hyper-parameters of the information bottleneck attached to a causal LM."""

    alpha: float = 0.1
    """Weight of the whole IB term: loss = CE_ft + alpha * (KL + beta * CE_ib). 0 means plain LoRA FT, at no IB cost."""
    beta: float = 0.01
    """Weight of the IB branch's prediction cross-entropy inside the IB term."""
    tap_layer: TapLayer = 0.5
    """Where q(z|h) reads h: int L = Hugging Face hidden_states[L] (0 = embeddings), negative ints count
    from the top (-1 = last block), a float in (0, 1) is a fraction of depth (0.5 = middle)."""
    bottleneck_dim: int = 256
    """Size of the bottleneck z."""
    logvar_min: float = -4.0
    """Lower clamp of log sigma^2 (paper: -4)."""
    logvar_max: float = 4.0
    """Upper clamp of log sigma^2 (paper: 4)."""
    prior: str = "standard_normal"
    """Name of the prior p(z) in the registry (trainables.ib.priors.PRIORS)."""
    prior_options: dict[str, Any] = field(default_factory=dict)
    """Prior-specific options, e.g. {"components": 4} for "mog"."""
    ib_token_fraction: float = 1.0
    """In training, compute the IB terms on this uniform random fraction of the target tokens (unbiased);
    evaluation always uses all target tokens."""
    ce_chunk_size: int = 1024
    """Target tokens per chunk when the IB branch scores them through the LM head, so the IB branch
    never holds a [tokens, vocab] tensor larger than chunk x vocab."""
    kl_reduction: str = "mean"
    """How the per-token KL is reduced over the bottleneck dims. "mean" (the official code's
    `VariationalAdapter`: `.mean()` over tokens x dims, the scale of the paper's alpha/beta grids) or "sum" (the
    textbook KL of the d-dim Gaussian, d x larger). alpha_sum = alpha_mean / d gives the same loss. Every prior
    uses the same per-dim scale."""
    encoder_input: str = "raw"
    """What q(z|h) reads: "raw" (hidden_states[L] as it is, the official code) or "rms_norm" (RMS-normalised,
    no learned scale: a KL that does not depend on the residual stream's scale; this project's earlier default)."""
    ce_kernel: str = "auto"
    """How the IB branch's CE through the frozen LM head is computed (trainables.ib.ce_kernels): "checkpointed"
    (recomputes each chunk in the backward; works with any head), "fused" (gradient formed in the forward,
    a third less LM-head work), "fused_compiled" (plus torch.compile's fused softmax kernel; GPU), or "auto"
    (fused_compiled on CUDA, fused on CPU, checkpointed for a trainable or ZeRO-3-partitioned head)."""

    def __post_init__(self) -> None:
        if not _is_number(self.alpha) or self.alpha < 0:
            raise ConfigError(f"ib.alpha must be a number >= 0, got {self.alpha!r}")
        if not _is_number(self.beta) or self.beta < 0:
            raise ConfigError(f"ib.beta must be a number >= 0, got {self.beta!r}")
        if isinstance(self.tap_layer, bool) or not _is_number(self.tap_layer):
            raise ConfigError(f"ib.tap_layer must be an int or a fraction in (0, 1), got {self.tap_layer!r}")
        if isinstance(self.tap_layer, float):
            if self.tap_layer.is_integer() and abs(self.tap_layer) >= 1:
                self.tap_layer = int(self.tap_layer)
            elif not 0.0 < self.tap_layer < 1.0:
                raise ConfigError(f"ib.tap_layer as a fraction must lie in (0, 1), got {self.tap_layer!r}")
        if not isinstance(self.bottleneck_dim, int) or self.bottleneck_dim < 1:
            raise ConfigError(f"ib.bottleneck_dim must be a positive int, got {self.bottleneck_dim!r}")
        if not self.logvar_min < self.logvar_max:
            raise ConfigError(
                f"ib.logvar_min must be below ib.logvar_max, got [{self.logvar_min!r}, {self.logvar_max!r}]"
            )
        if not _is_number(self.ib_token_fraction) or not 0.0 < self.ib_token_fraction <= 1.0:
            raise ConfigError(f"ib.ib_token_fraction must lie in (0, 1], got {self.ib_token_fraction!r}")
        if not isinstance(self.ce_chunk_size, int) or self.ce_chunk_size < 1:
            raise ConfigError(f"ib.ce_chunk_size must be a positive int, got {self.ce_chunk_size!r}")
        if self.kl_reduction not in KL_REDUCTIONS:
            raise ConfigError(f"ib.kl_reduction must be one of {', '.join(KL_REDUCTIONS)}, got {self.kl_reduction!r}")
        if self.encoder_input not in ENCODER_INPUTS:
            raise ConfigError(
                f"ib.encoder_input must be one of {', '.join(ENCODER_INPUTS)}, got {self.encoder_input!r}"
            )
        if self.ce_kernel not in CE_KERNELS:
            raise ConfigError(f"ib.ce_kernel must be one of {', '.join(CE_KERNELS)}, got {self.ce_kernel!r}")
        if not isinstance(self.prior_options, dict):
            raise ConfigError(f"ib.prior_options must be a mapping, got {self.prior_options!r}")
        # The prior name is checked against the registry lazily (it lives with torch code) but the
        # list of names is static, so a bad name fails here, before any model is loaded.
        from trainables.ib.prior_names import PRIOR_NAMES

        if self.prior not in PRIOR_NAMES:
            raise ConfigError(f"ib.prior {self.prior!r} is unknown; valid priors: {', '.join(PRIOR_NAMES)}")

    @property
    def enabled(self) -> bool:
        """False at alpha == 0: the model is then exactly the plain (LoRA) model."""
        return self.alpha > 0

    def resolve_tap_layer(self, num_layers: int) -> int:
        """The index into hidden_states (0..num_layers) that tap_layer names for a model with num_layers blocks."""
        t = self.tap_layer
        if isinstance(t, float):
            index = round(t * num_layers)
        elif t < 0:
            index = num_layers + 1 + t
        else:
            index = t
        if not 0 <= index <= num_layers:
            raise ConfigError(
                f"ib.tap_layer {t!r} is out of range for a model with {num_layers} layers "
                f"(allowed: 0..{num_layers}, -{num_layers + 1}..-1, or a fraction in (0, 1))"
            )
        return index

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IBConfig":
        from trainables.config_utils import from_mapping  # every value type-checked, errors name the field

        return from_mapping(cls, data, "ib")

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "IBConfig":
        """The config a saved dict was trained with: keys it lacks take LEGACY_SEMANTICS, not today's defaults."""
        return cls.from_dict(with_legacy_semantics(data))


def with_legacy_semantics(data: dict[str, Any]) -> dict[str, Any]:
    """A saved IB dict with LEGACY_SEMANTICS filled in where it predates kl_reduction / encoder_input."""
    return {**LEGACY_SEMANTICS, **data}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
