"""Finding the pieces of a (possibly wrapped) causal LM that memorization scoring needs.

A trial hands over whatever it trained: an IBModel, a peft PeftModel, a DeepSpeed engine or DDP
module around either, or a plain Hugging Face model. Scoring needs the plain LM (its decoder stack
and LM head), and the peft model when there is one (its adapter can be switched off to see the base).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from torch import nn

# Config fields of model families whose logits are not just lm_head(final hidden state); for those the
# scorer runs the model's own forward instead of applying the head to selected positions.
_LOGIT_TRANSFORM_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class ModelParts:
    """The layers of one model that scoring touches."""

    outer: nn.Module
    """What the caller passed (its train/eval mode is what gets saved and restored)."""
    lm: nn.Module
    """The Hugging Face causal LM (inside peft, with LoRA layers injected when there are any)."""
    peft_model: Optional[nn.Module]
    """The peft PeftModel when the LM carries an adapter, else None."""

    @property
    def decoder(self) -> nn.Module:
        """The decoder stack (embeddings, blocks, final norm) that produces the LM head's input."""
        return self.lm.get_decoder()

    @property
    def head(self) -> nn.Module:
        """The LM head (output embeddings)."""
        return self.lm.get_output_embeddings()

    @property
    def num_layers(self) -> int:
        """Number of decoder blocks (so hidden_states has num_layers + 1 entries)."""
        return int(self.lm.config.num_hidden_layers)

    @property
    def logits_are_plain_head(self) -> bool:
        """True when logits == head(decoder output), so the head can be applied to chosen positions only."""
        if not callable(getattr(self.lm, "get_decoder", None)) or self.lm.get_output_embeddings() is None:
            return False
        config = self.lm.config
        return all(getattr(config, name, None) in (None, 1, 1.0) for name in _LOGIT_TRANSFORM_FIELDS)


def model_parts(model: nn.Module) -> ModelParts:
    """Unwrap DeepSpeed/DDP, IBModel and peft layers down to the Hugging Face causal LM."""
    import peft

    inner = model
    while _is_engine_wrapper(inner):
        inner = inner.module
    # IBModel delegates unknown attributes to its base model; the IB head never changes the LM's own
    # predictions or hidden states, so scoring reads through it.
    if type(inner).__name__ == "IBModel" and isinstance(getattr(inner, "base_model", None), nn.Module):
        inner = inner.base_model
    peft_model = inner if isinstance(inner, peft.PeftModel) else None
    lm = inner.get_base_model() if peft_model is not None else inner
    if getattr(getattr(lm, "config", None), "num_hidden_layers", None) is None:
        raise TypeError(f"{type(lm).__name__} is not a Hugging Face causal LM (no config.num_hidden_layers)")
    return ModelParts(outer=model, lm=lm, peft_model=peft_model)


def _is_engine_wrapper(module: Any) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    inner = getattr(module, "module", None)
    return isinstance(inner, nn.Module) and (
        isinstance(module, DistributedDataParallel) or type(module).__name__ == "DeepSpeedEngine"
    )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off for the duration (LoRA dropout would make scores random); every module's mode comes back.

    Modes are restored module by module, since a trainer may keep parts of the model in eval mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def adapter_disabled(parts: ModelParts) -> Iterator[None]:
    """The base model's behaviour: the peft adapter switched off for the duration."""
    if parts.peft_model is None:
        raise ValueError("the model has no peft adapter to switch off")
    with parts.peft_model.disable_adapter():
        yield


@contextmanager
def adapter_active(parts: ModelParts, name: Optional[str]) -> Iterator[None]:
    """peft adapter `name` active for the duration (None: leave the active adapter as it is)."""
    if name is None:
        yield
        return
    if parts.peft_model is None or name not in parts.peft_model.peft_config:
        loaded = sorted(parts.peft_model.peft_config) if parts.peft_model is not None else []
        raise ValueError(f"no peft adapter named {name!r} on the model (loaded: {loaded})")
    previous = parts.peft_model.active_adapter
    parts.peft_model.set_adapter(name)
    try:
        yield
    finally:
        parts.peft_model.set_adapter(previous)
