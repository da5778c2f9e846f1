"""IBModel: a Hugging Face causal LM (plain or peft-wrapped) with the information-bottleneck loss of IB-FT.

loss = CE_ft + alpha * (KL + beta * CE_ib), where
- CE_ft is the base model's own mean next-token cross-entropy (computed by the base model, untouched);
- KL is KL(q(z|h) || p(z)) averaged over the real target tokens (positions t whose next-token label is
  not -100; padding and prompt never count) and, by default (ib.kl_reduction "mean"), over the bottleneck
  dims too, as the official code's `.mean()`; "sum" keeps the sum over dims (d x stronger);
- CE_ib is the mean cross-entropy of the same targets scored from the decoded bottleneck by the base
  model's frozen LM head, in chunks, so the IB branch never builds a [batch, seq, vocab] tensor
  (trainables.ib.ce_kernels picks how: gradient formed in the forward, or checkpointed chunks).
At alpha = 0 there is no head and no hook: the forward is the base model's forward.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.errors import ConfigError
from trainables.ib.ce_kernels import lm_head_cross_entropy
from trainables.ib.config import IBConfig
from trainables.ib.layers import IBHead
from trainables.ib.tap import HiddenStateTap, find_decoder_blocks

IB_CONFIG_FILE = "ib_config.json"
IB_HEAD_FILE = "ib_head.safetensors"
IGNORE_INDEX = -100


class IBModel(nn.Module):
    """Wraps `base_model` (a HF causal LM, optionally a peft PeftModel) and adds the IB loss terms.

    `forward` returns the base model's output object with `loss`, `ce_loss`, `kl_loss` and
    `ib_ce_loss` set whenever labels are given. Anything else (generate, config, save_pretrained,
    get_input_embeddings, ...) is delegated to the base model.
    """

    def __init__(self, base_model: nn.Module, config: IBConfig) -> None:
        super().__init__()
        if not isinstance(config, IBConfig):
            raise TypeError(f"IBModel needs an IBConfig, got {type(config).__name__}")
        self.base_model = base_model
        self.ib_config = config
        self.ib_head: IBHead | None = None
        self._tap: HiddenStateTap | None = None
        if not config.enabled:
            return
        blocks, final_norm = find_decoder_blocks(base_model)
        self.tap_index = config.resolve_tap_layer(len(blocks))
        self._tap = HiddenStateTap(blocks, final_norm, self.tap_index)
        reference = base_model.get_output_embeddings().weight
        hidden_size = base_model.get_input_embeddings().weight.shape[-1]
        self.ib_head = IBHead(hidden_size, config).to(dtype=reference.dtype, device=reference.device)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_model", "ib_head", "_tap"):
                raise
            return getattr(self.base_model, name)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The base model's forward; with labels, `loss` becomes the IB-FT loss and its parts are added."""
        if attention_mask is not None and kwargs.get("position_ids") is None and kwargs.get("past_key_values") is None:
            kwargs["position_ids"] = _positions_after_left_padding(attention_mask)
        if self.ib_head is None or labels is None:
            output = self.base_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
            if labels is not None:
                zero = torch.zeros((), dtype=output.loss.dtype, device=output.loss.device)
                _set(output, ce_loss=output.loss, kl_loss=zero, ib_ce_loss=zero.clone())
            return output
        with self._tap.capture():
            output = self.base_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        kl, ib_ce = self._ib_losses(self._tap.take(), labels, attention_mask, kwargs.get("num_items_in_batch"))
        ce_ft = output.loss
        alpha, beta = self.ib_config.alpha, self.ib_config.beta
        _set(output, loss=ce_ft + alpha * (kl + beta * ib_ce), ce_loss=ce_ft, kl_loss=kl, ib_ce_loss=ib_ce)
        return output

    def _ib_losses(
        self,
        hidden: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None,
        num_items_in_batch: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(KL, CE_ib) averaged over the real target tokens (or a uniform random subset of them in training)."""
        next_labels = labels[:, 1:].to(hidden.device)
        is_target = next_labels != IGNORE_INDEX
        if attention_mask is not None:
            is_target &= attention_mask[:, 1:].to(hidden.device).bool()
        # Position t predicts label t+1 (HF's shift), so the hidden state of t goes with label t+1.
        target_hidden = hidden[:, :-1][is_target]
        targets = next_labels[is_target]
        n_targets = targets.shape[0]
        if n_targets == 0:
            zero = hidden.new_zeros((), dtype=torch.float32)
            return zero, zero.clone()
        n_used = n_targets
        fraction = self.ib_config.ib_token_fraction
        if self.training and fraction < 1.0:
            # A uniform subset of fixed size: its mean is an unbiased estimate of the full mean.
            n_used = max(1, math.ceil(fraction * n_targets))
            chosen = torch.randperm(n_targets, device=hidden.device)[:n_used]
            target_hidden, targets = target_hidden[chosen], targets[chosen]
        kl_per_token, decoded = self.ib_head(target_hidden)
        ce_sum = lm_head_cross_entropy(
            decoded,
            targets,
            self.base_model.get_output_embeddings(),
            self.ib_config.ce_chunk_size,
            self.ib_config.ce_kernel,
        )
        # Same normaliser as CE_ft: the tokens of this batch, or the caller's count across
        # gradient-accumulation steps when HF's num_items_in_batch is passed.
        denominator = float(n_used)
        if num_items_in_batch is not None:
            denominator = float(num_items_in_batch) * n_used / n_targets
        return kl_per_token.sum() / denominator, ce_sum / denominator

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Generation is the base model's: the IB head plays no part at inference."""
        return self.base_model.generate(*args, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: the base model's trainable weights (LoRA) plus the IB head and its prior."""
        return [p for p in self.parameters() if p.requires_grad]

    def save_ib(self, directory: str | Path) -> None:
        """Write ib_config.json and, at alpha > 0, ib_head.safetensors into `directory`.

        The base model / peft adapter is saved by the caller (e.g. into the same directory).
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / IB_CONFIG_FILE).write_text(json.dumps(self.ib_config.to_dict(), indent=2) + "\n")
        if self.ib_head is not None:
            state = {k: v.detach().contiguous().cpu() for k, v in self.ib_head.state_dict().items()}
            save_file(state, str(directory / IB_HEAD_FILE))

    @classmethod
    def load_ib(cls, base_model: nn.Module, directory: str | Path) -> "IBModel":
        """The IBModel that `save_ib(directory)` saved, wrapped around `base_model`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path = directory / IB_CONFIG_FILE
        if not config_path.is_file():
            raise ConfigError(f"{config_path}: not found (expected a directory written by IBModel.save_ib)")
        try:
            data = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{config_path}: not valid JSON ({e})") from None
        # A file written before kl_reduction / encoder_input existed loads with what it was trained with.
        model = cls(base_model, IBConfig.from_saved(data))
        if model.ib_head is None:
            return model
        head_path = directory / IB_HEAD_FILE
        if not head_path.is_file():
            raise ConfigError(f"{head_path}: not found, but {config_path} has alpha > 0")
        reference = next(model.ib_head.parameters())
        state = {k: v.to(dtype=reference.dtype, device=reference.device) for k, v in load_file(str(head_path)).items()}
        try:
            model.ib_head.load_state_dict(state, strict=True)
        except RuntimeError as e:
            detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
            raise ConfigError(f"{head_path}: does not fit this base model and config ({detail})") from None
        return model


def _positions_after_left_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first attended token.

    HF counts positions from the first column, so left padding would shift every RoPE position of
    the real tokens and change the loss. Rows without leading padding (right-padded or unpadded)
    get exactly HF's default arange, so those batches are computed bit-for-bit as HF would.
    """
    leading_pads = (attention_mask.long().cumsum(-1) == 0).sum(-1, keepdim=True)
    columns = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (columns - leading_pads).clamp(min=0)


def _set(output: Any, **values: torch.Tensor) -> None:
    # Item assignment on a ModelOutput sets the key and the attribute, so both out.kl_loss and
    # out["kl_loss"] work, as for the base model's own fields.
    for key, value in values.items():
        output[key] = value
