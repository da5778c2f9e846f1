"""One batched, no-grad pass over tokenized examples: what each response costs the model, token by token.

For every example the pass returns the log-probability of each response token given everything
before it and, when asked, the mean tap-layer hidden state over the positions that predict those
tokens. "Response tokens" are the positions whose label is not -100 (tokenize_examples masks the
prompt), so prompt and padding never count. Examples are batched longest-first with right padding:
under a causal mask a real position never attends to the padding after it, so an example's numbers
do not depend on what it is batched with.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from trainables.data import IGNORE_INDEX, PaddingCollator
from trainables.ib.tap import HiddenStateTap, find_decoder_blocks
from trainables.memorization.model_parts import ModelParts, eval_mode

DEFAULT_HEAD_CHUNK = 1024
"""Target positions scored through the LM head at a time (bounds the logits buffer at chunk x vocab)."""


@dataclass
class ExampleScores:
    """What one scoring pass measured on one example."""

    token_logprobs: torch.Tensor
    """float32 [n_response_tokens] on CPU: log p(response token t | all tokens before t), in order."""
    tap_mean: Optional[torch.Tensor]
    """float64 [hidden] on CPU: hidden_states[tap] averaged over the positions that predict the response
    tokens (the same positions the IB bottleneck reads), or None when no tap layer was asked for."""


def score_features(
    parts: ModelParts,
    features: Sequence[dict[str, list[int]]],
    *,
    pad_token_id: int,
    tap_index: Optional[int] = None,
    batch_size: int = 8,
    head_chunk: int = DEFAULT_HEAD_CHUNK,
    progress: Optional[str] = None,
) -> list[ExampleScores]:
    """Score each feature {"input_ids", "labels"} (labels -100 outside the response) under `parts`' model.

    `tap_index` is a Hugging Face hidden_states index (0..num_layers); `progress`, when given, is the
    label of a tqdm bar on stderr. Every feature needs at least one response token.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i, feature in enumerate(features):
        if all(label == IGNORE_INDEX for label in feature["labels"][1:]):
            raise ValueError(f"feature {i} has no response token to score")
    tap = None
    if tap_index is not None:
        blocks, final_norm = find_decoder_blocks(parts.lm)
        tap = HiddenStateTap(blocks, final_norm, tap_index)
    device = next(parts.lm.parameters()).device
    collate = PaddingCollator(pad_token_id, padding_side="right")
    # Longest first: a batch size too large for memory fails on the first batch, not the last.
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    results: list[Optional[ExampleScores]] = [None] * len(features)
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=progress, unit="batch", file=sys.stderr, dynamic_ncols=True)
    with torch.inference_mode(), eval_mode(parts.outer):
        for start in starts:
            chosen = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([features[i] for i in chosen]).items()}
            per_example = _score_batch(parts, batch, tap, head_chunk)
            for i, scores in zip(chosen, per_example):
                results[i] = scores
    return results  # type: ignore[return-value]


def _score_batch(
    parts: ModelParts, batch: dict[str, torch.Tensor], tap: Optional[HiddenStateTap], head_chunk: int
) -> list[ExampleScores]:
    # Position t predicts token t+1: the scored positions are those whose next label is real.
    next_labels = batch["labels"][:, 1:]
    predicts = next_labels != IGNORE_INDEX
    targets = next_labels[predicts]
    with tap.capture() if tap is not None else nullcontext():
        if parts.logits_are_plain_head:
            hidden = parts.decoder(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            ).last_hidden_state
            logprobs = _head_logprobs(parts.head, hidden[:, :-1][predicts], targets, head_chunk)
        else:
            logits = parts.lm(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            ).logits
            logprobs = _gather_logprobs(logits[:, :-1][predicts], targets)
    counts = predicts.sum(dim=1).tolist()
    token_logprobs = logprobs.float().cpu().split(counts)
    if tap is None:
        return [ExampleScores(token_logprobs=lp, tap_mean=None) for lp in token_logprobs]
    tapped = tap.take()[:, :-1][predicts].to(torch.float64).cpu().split(counts)
    return [ExampleScores(token_logprobs=lp, tap_mean=h.mean(dim=0)) for lp, h in zip(token_logprobs, tapped)]


def _head_logprobs(head: Any, hidden: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    # Only the scored positions go through the head, a chunk at a time, so no [batch, seq, vocab]
    # tensor is ever built (49k-128k vocabularies make that the largest buffer by far).
    pieces = [
        _gather_logprobs(head(hidden[s : s + chunk]), targets[s : s + chunk]) for s in range(0, len(targets), chunk)
    ]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def _gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # float32 log-softmax: bf16 logits would quantise log-probs to ~0.01-0.1 nats.
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
