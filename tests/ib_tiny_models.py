"""Tiny random Llama (+ LoRA) and toy batches shared by the tests/test_ib_*.py files."""
from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM


VOCAB = 1000
NUM_LAYERS = 4
HIDDEN = 64


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A randomly initialised 4-layer Llama (hidden 64, vocab 1000, tied embeddings) in eval mode."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def tiny_lora(seed: int = 0, dtype: torch.dtype = torch.float32):
    """tiny_llama with a rank-4 LoRA on all attention and MLP projections (dropout 0: deterministic)."""
    model = tiny_llama(seed, dtype)
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,  # non-zero B, so LoRA actually changes the outputs under test
    )
    return get_peft_model(model, lora).eval()


def example(length: int, prompt: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [length], labels [length]) with the first `prompt` labels masked to -100."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (length,), generator=g)
    labels = ids.clone()
    labels[:prompt] = -100
    return ids, labels


def pad_batch(examples: list[tuple[torch.Tensor, torch.Tensor]], side: str, extra: int = 0) -> dict[str, torch.Tensor]:
    """Pad (ids, labels) pairs to the longest + `extra` on `side`: pad id 0, label -100, mask 0."""
    width = max(len(ids) for ids, _ in examples) + extra
    input_ids = torch.zeros(len(examples), width, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros(len(examples), width, dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        span = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
        input_ids[row, span], labels[row, span], mask[row, span] = ids, lab, 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
