"""Reading Hugging Face `hidden_states[L]` of a causal LM with one hook, without output_hidden_states.

`output_hidden_states=True` keeps every layer's activations alive as outputs; a single hook keeps
one. HF's convention, which the tap reproduces exactly: hidden_states[0] is the embedding output,
hidden_states[L] for 0 < L < num_layers is the output of block L-1 (= the input of block L), and
hidden_states[num_layers] is the output of the final norm (what the LM head reads).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

_FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_norm", "norm_f")
_BLOCK_LIST_NAMES = ("layers", "h", "blocks", "block")


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a peft PeftModel (or the model itself when it is not wrapped)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def find_decoder_blocks(model: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    """(decoder blocks, final norm) of a causal LM, peft-wrapped or not.

    Looks through `get_decoder()` first (every HF decoder-only model has it) and falls back to the
    first ModuleList of config.num_hidden_layers blocks, so LoRA-wrapped blocks are found too.
    """
    inner = unwrap_peft(model)
    num_layers = getattr(getattr(inner, "config", None), "num_hidden_layers", None)
    get_decoder = getattr(inner, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    candidates = [decoder] if isinstance(decoder, nn.Module) else []
    candidates += [m for m in inner.modules() if m is not decoder]
    for module in candidates:
        for name in _BLOCK_LIST_NAMES:
            blocks = getattr(module, name, None)
            if isinstance(blocks, nn.ModuleList) and (num_layers is None or len(blocks) == num_layers):
                norm = next(
                    (getattr(module, n) for n in _FINAL_NORM_NAMES if isinstance(getattr(module, n, None), nn.Module)),
                    None,
                )
                if norm is None:
                    raise ValueError(f"{type(inner).__name__}: found the decoder blocks but no final norm module")
                return blocks, norm
    raise ValueError(f"{type(inner).__name__}: cannot find its decoder blocks (a ModuleList of {num_layers} layers)")


class HiddenStateTap:
    """Captures hidden_states[index] of one forward pass through a hook that exists only during `capture()`.

    A plain object, not an nn.Module: it refers to the base model's blocks without registering them
    a second time (which would duplicate their parameters in state dicts and optimisers).
    """

    def __init__(self, blocks: nn.ModuleList, final_norm: nn.Module, index: int) -> None:
        self.blocks = blocks
        self.final_norm = final_norm
        self.index = index
        self.hidden: torch.Tensor | None = None

    def _before_block(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        # First call wins. Under activation checkpointing the hook is already removed when the backward
        # recomputes the blocks (IBModel takes the state and leaves capture() inside its forward; recent
        # transformers checkpoint a block's forward, not its hooks); were a recompute to reach the hook while
        # it is registered, it must not replace the forward's tensor, whose graph the IB loss was built on.
        if self.hidden is None:
            self.hidden = args[0] if args else kwargs["hidden_states"]

    def _after_norm(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self.hidden is None:
            self.hidden = output

    @contextmanager
    def capture(self) -> Iterator["HiddenStateTap"]:
        """Hook the tapped module for the duration of the block; `self.hidden` holds what it saw."""
        self.hidden = None
        if self.index < len(self.blocks):
            handle = self.blocks[self.index].register_forward_pre_hook(self._before_block, with_kwargs=True)
        else:
            handle = self.final_norm.register_forward_hook(self._after_norm)
        try:
            yield self
        finally:
            handle.remove()

    def take(self) -> torch.Tensor:
        """The captured hidden state, released from the tap so it lives no longer than its user needs it."""
        hidden, self.hidden = self.hidden, None
        if hidden is None:
            raise RuntimeError(f"the forward pass never reached the tapped module (hidden_states[{self.index}])")
        return hidden
