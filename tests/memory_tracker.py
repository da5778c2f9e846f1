"""Peak torch tensor memory of a block of code, counted storage by storage (not RSS).

RSS on CPU says little about tensors: the allocator keeps freed pages, Python and the libraries' own heaps
are in it, and the GGUF cache's mmap'd weights move it around. This tracker instead counts the bytes of
every live tensor storage, and records the largest total seen:

- on entry, the storages of the tensors given (the model's parameters and buffers, the optimizer's state)
  are counted as already live;
- a TorchDispatchMode sees every op's outputs (autograd's backward ops included: the mode is thread-local
  state the autograd engine carries into its thread), and each storage not seen before is added;
- a weakref.finalize on each storage subtracts its bytes when it is freed.

Views share their base's storage and are counted once; in-place ops create nothing. What this does not see:
memory that torch allocates outside its tensors (oneDNN scratch space, the CUDA caching allocator's
fragmentation), which the estimate leaves out too (it budgets a margin for it on GPUs).
"""
from __future__ import annotations

import weakref
from typing import Any, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class StorageTracker(TorchDispatchMode):
    """`with StorageTracker(already_live) as t: ...` then t.peak / t.live (bytes)."""

    def __init__(self, already_live: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self._seen: dict[int, int] = {}
        self.live = 0
        self.peak = 0
        for tensor in already_live:
            self._track(tensor)
        self.baseline = self.live

    def reset_peak(self) -> None:
        self.peak = self.live

    def _track(self, tensor: Any) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        try:
            storage = tensor.untyped_storage()
        except (NotImplementedError, RuntimeError):
            return
        key = storage.data_ptr()
        if key == 0 or key in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen[key] = nbytes
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._seen.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            self._track(tensor)
        return out


def live_tensors(*objects: Any) -> list[torch.Tensor]:
    """Every tensor of modules (parameters, buffers) and optimizers (state) given, to seed a tracker."""
    out: list[torch.Tensor] = []
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            out += list(obj.parameters()) + list(obj.buffers())
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                out += [v for v in state.values() if isinstance(v, torch.Tensor)]
        elif isinstance(obj, torch.Tensor):
            out.append(obj)
    return out


# ---- measuring one IB-FT training step and one decode, as the estimator models them ------------------------------


def build_ib_model(name: str, dtype: str, *, r: int = 32, dropout: float = 0.05, tiny_overrides: Any = None,
                   bottleneck_dim: int = 256, ce_chunk_size: int = 1024, checkpointing: bool = False):
    """The model of a trial (base + LoRA on all 7 projections + IB head at mid depth), in training mode."""
    from trainables.ib import IBConfig, IBModel
    from trainables.models import apply_lora, load_model_and_tokenizer
    from trainables.train.config import LoraSettings, ModelConfig

    base, _ = load_model_and_tokenizer(ModelConfig(name_or_path=name, dtype=dtype, tiny_overrides=dict(tiny_overrides or {})))
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_lora(base, LoraSettings(r=r, alpha=r, dropout=dropout), seed=0)
    ib = IBModel(model, IBConfig(alpha=0.1, beta=0.01, tap_layer=0.5, bottleneck_dim=bottleneck_dim,
                                  ce_chunk_size=ce_chunk_size))
    ib.train()
    return ib


def _batch(vocab: int, batch: int, length: int, padded: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    if padded and batch > 1:
        mask[1:, length - length // 4:] = 0  # the other rows are shorter: right padding, as the collator pads
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def measure_train_step(model: torch.nn.Module, batch: int, length: int, steps: int = 2) -> int:
    """Peak live tensor bytes over the last of `steps` training steps (forward, backward, AdamW step): the first
    step creates the optimizer state, the last one sees it already there, as every later step of a run does."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.get_output_embeddings().weight.shape[0]
    data = _batch(vocab, batch, length, padded=batch > 1)
    peak = 0
    for _ in range(steps):
        with StorageTracker(live_tensors(model, optimizer)) as tracker:
            out = model(**data)
            out["loss"].backward()
            del out
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        peak = tracker.peak
    return peak


def measure_decode(model: torch.nn.Module, rows: int, prompt: int, new_tokens: int) -> int:
    """Peak live tensor bytes of decoding `rows` sequences: a prompt of `prompt` tokens, then `new_tokens` steps
    through a DynamicCache, as trainables.generation decodes a validation batch (no row leaving early)."""
    from transformers import DynamicCache

    base = model.base_model if hasattr(model, "ib_head") else model
    vocab = base.get_output_embeddings().weight.shape[0]
    ids = torch.randint(3, vocab, (rows, prompt), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.inference_mode(), StorageTracker(live_tensors(model)) as tracker:
        cache = DynamicCache(config=base.config)
        mask = torch.ones_like(ids)
        out = base(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
        for _ in range(new_tokens):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
            out = base(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
        del out, cache
    model.train()
    return tracker.peak
