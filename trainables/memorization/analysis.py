"""The memorization analysis of one model, against its base when it carries a LoRA adapter.

Both passes score the same examples; the most/least-memorized groups are fixed by the *base*
model's Min-K% scores (what the base already memorizes, the paper's setting), so the base and the
fine-tuned geometry compare the same two sets of examples. A model without a peft adapter is scored
on its own and its own scores define the groups.

The IB head plays no part: it is a training-time branch that reads the tap layer without changing
it, so a checkpoint's LM predictions and hidden states are those of base + LoRA.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch

from trainables.data import IGNORE_INDEX, tokenize_examples
from trainables.errors import ConfigError
from trainables.memorization.geometry import check_quantile, group_geometry, resolve_tap_index, split_groups
from trainables.memorization.min_k import check_k, min_k_prob
from trainables.memorization.model_parts import adapter_active, adapter_disabled, model_parts
from trainables.memorization.scoring import ExampleScores, score_features

MEMORIZATION_GAP_METRIC = "angular_gap_deg"
"""Which group-geometry number `memorization_gap` reports (see trainables.memorization.geometry)."""
MEMORIZATION_GAP_MODE = "min"
"""Direction of `memorization_gap` as a search objective: smaller means the most- and least-memorized
examples are represented more alike, the effect IB-FT is meant to have."""
POOLING = "mean of hidden_states[tap_layer] over the positions that predict response tokens"
"""How an example's representation is formed (stated in every summary)."""
BASE, FINE_TUNED, MODEL = "base", "fine_tuned", "model"
"""Labels of the scored models: base and fine_tuned (or the caller's adapter labels) when comparing
adapters with their base, else model."""


@dataclass
class MemorizationAnalysis:
    """Everything one analysis measured."""

    summary: dict[str, Any]
    """JSON-able: settings, per-model Min-K% statistics and group geometry, and memorization_gap."""
    rows: list[dict[str, Any]]
    """One JSON-able record per input example, in input order (index, scores per model, group)."""


def analyze_memorization(
    model: Any,
    tokenizer: Any,
    examples: Sequence[dict[str, str]],
    *,
    k: float = 0.2,
    quantile: float = 0.2,
    tap_layer: int | float = 0.5,
    batch_size: int = 8,
    max_length: int = 512,
    compare_base: bool = True,
    adapters: Optional[Mapping[str, str]] = None,
    progress: bool = False,
    prompt_format: str = "auto",
    append_eos: bool = True,
) -> MemorizationAnalysis:
    """Min-K% Prob of each example's response and the most/least-memorized group geometry at `tap_layer`.

    With a peft adapter on `model` and compare_base, the base (adapter off) and the fine-tuned model are
    both scored. `adapters` ({label: peft adapter name}) scores several adapters loaded on one peft model
    (say an FT and an IB-FT checkpoint) one after the other against the same base; by default the active
    adapter is scored, labelled "fine_tuned". Examples are {"instruction", "response"}; responses are cut
    at max_length tokens. `progress` shows a tqdm bar per pass on stderr. The model's train/eval mode and
    active adapter are left as they were. `prompt_format` and `append_eos` are the training run's
    data.prompt_format and data.append_eos: examples are tokenized exactly as it trained on them.
    """
    check_k(k)
    check_quantile(quantile)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    parts = model_parts(model)
    tap_index = resolve_tap_index(parts.num_layers, tap_layer)
    scored_positions, features, truncated = _tokenize_each(examples, tokenizer, max_length, prompt_format, append_eos)

    def run(label: str) -> list[ExampleScores]:
        return score_features(
            parts,
            features,
            pad_token_id=tokenizer.pad_token_id,
            tap_index=tap_index,
            batch_size=batch_size,
            progress=f"Min-K% {label}" if progress else None,
        )

    passes: dict[str, list[ExampleScores]] = {}
    if compare_base and parts.peft_model is not None:
        tuned = _check_adapter_labels(adapters) if adapters else {FINE_TUNED: None}
        with adapter_disabled(parts):
            passes[BASE] = run(BASE)
        for label, adapter_name in tuned.items():
            with adapter_active(parts, adapter_name):
                passes[label] = run(label)
    else:
        if adapters:
            raise ConfigError("adapters: the model carries no peft adapter (or compare_base is off) to score them with")
        passes[MODEL] = run(MODEL)
    reference = BASE if BASE in passes else MODEL
    # The first fine-tuned model (or the only model) is the one memorization_gap describes.
    target = next(label for label in passes if label != BASE)

    scores = {label: [min_k_prob(s.token_logprobs, k) for s in p] for label, p in passes.items()}
    mean_logprobs = {label: [float(s.token_logprobs.double().mean()) for s in p] for label, p in passes.items()}
    most, least = split_groups(scores[reference], quantile)
    models = {
        label: {
            "min_k": _score_statistics(scores[label], most, least),
            "mean_token_logprob": statistics.fmean(mean_logprobs[label]),
            "geometry": group_geometry(torch.stack([s.tap_mean for s in p]), most, least),
        }
        for label, p in passes.items()
    }
    gap = models[target]["geometry"][MEMORIZATION_GAP_METRIC]
    gap_base = models[BASE]["geometry"][MEMORIZATION_GAP_METRIC] if BASE in models else None
    summary = {
        "memorization_gap": gap,
        "memorization_gap_base": gap_base,
        "memorization_gap_change": None if gap_base is None else gap - gap_base,
        "memorization_gap_metric": MEMORIZATION_GAP_METRIC,
        "memorization_gap_mode": MEMORIZATION_GAP_MODE,
        "min_k_mean": models[target]["min_k"]["mean"],
        "min_k_mean_base": models[BASE]["min_k"]["mean"] if BASE in models else None,
        "k": k,
        "quantile": quantile,
        "tap_layer": tap_layer,
        "tap_index": tap_index,
        "num_layers": parts.num_layers,
        "pooling": POOLING,
        "groups_from": reference,
        "gap_of": target,
        "group_size": len(most),
        "n_examples": len(examples),
        "n_scored": len(features),
        "n_truncated": sum(truncated),
        "n_dropped": len(examples) - len(features),
        "max_length": max_length,
        "prompt_format": prompt_format,
        "models": models,
    }
    rows = _rows(examples, scored_positions, features, truncated, scores, mean_logprobs, most, least)
    return MemorizationAnalysis(summary=summary, rows=rows)


def measure_memorization(
    model: Any,
    tokenizer: Any,
    examples: Sequence[dict[str, str]],
    *,
    k: float = 0.2,
    quantile: float = 0.2,
    tap_layer: int | float = 0.5,
    batch_size: int = 8,
    max_length: int = 512,
    prompt_format: str = "auto",
    append_eos: bool = True,
) -> dict[str, Any]:
    """The summary of analyze_memorization, for a trial to call on its trained model at the end.

    `memorization_gap` (lower is better, see MEMORIZATION_GAP_MODE) is the fine-tuned model's angular gap
    between the groups the base model's scores define; `memorization_gap_base` and
    `memorization_gap_change` say where the base stood. Keep tap_layer fixed across the trials of a
    search (not each trial's IB tap layer) so their gaps are measured at the same depth.
    """
    return analyze_memorization(
        model,
        tokenizer,
        examples,
        k=k,
        quantile=quantile,
        tap_layer=tap_layer,
        batch_size=batch_size,
        max_length=max_length,
        prompt_format=prompt_format,
        append_eos=append_eos,
    ).summary


def _check_adapter_labels(adapters: Mapping[str, str]) -> dict[str, Optional[str]]:
    for label in adapters:
        if label in (BASE, MODEL) or not label or not all(c.isalnum() or c in "_-@." for c in label):
            raise ConfigError(
                f"adapters: label {label!r} is reserved or not a plain name (letters, digits, _ - @ .; not base/model)"
            )
    return dict(adapters)


def _tokenize_each(
    examples: Sequence[dict[str, str]], tokenizer: Any, max_length: int, prompt_format: str = "auto", append_eos: bool = True
) -> tuple[list[int], list[dict[str, list[int]]], list[bool]]:
    # One example at a time: tokenize_examples drops examples whose prompt fills max_length, and each
    # score must stay tied to its example.
    if not examples:
        raise ConfigError("examples: there are none to score")
    positions, features, truncated = [], [], []
    for position, example in enumerate(examples):
        tokenized, stats = tokenize_examples(
            [example], tokenizer, max_length, drop_overlong=False, prompt_format=prompt_format, append_eos=append_eos
        )
        if tokenized:
            positions.append(position)
            features.append(tokenized[0])
            truncated.append(stats["truncated"] > 0)
    if not features:
        raise ConfigError(
            f"max_length {max_length}: every one of the {len(examples)} prompts fills it, so no response token "
            "is left to score; raise max_length"
        )
    return positions, features, truncated


def _score_statistics(scores: list[float], most: Sequence[int], least: Sequence[int]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(scores),
        "median": statistics.median(scores),
        "most_memorized_mean": statistics.fmean(scores[i] for i in most),
        "least_memorized_mean": statistics.fmean(scores[i] for i in least),
    }


def _rows(
    examples: Sequence[dict[str, str]],
    scored_positions: list[int],
    features: list[dict[str, list[int]]],
    truncated: list[bool],
    scores: dict[str, list[float]],
    mean_logprobs: dict[str, list[float]],
    most: Sequence[int],
    least: Sequence[int],
) -> list[dict[str, Any]]:
    group = {i: "most" for i in most} | {i: "least" for i in least}
    at: dict[int, Optional[int]] = {position: i for i, position in enumerate(scored_positions)}
    rows = []
    for position, example in enumerate(examples):
        i = at.get(position)
        row: dict[str, Any] = {"index": position, "instruction": example["instruction"]}
        if i is None:
            row.update(n_response_tokens=0, truncated=False, dropped=True, group=None)
            row.update({f"min_k_{label}": None for label in scores})
            row.update({f"mean_logprob_{label}": None for label in scores})
        else:
            n_tokens = sum(1 for label in features[i]["labels"][1:] if label != IGNORE_INDEX)
            row.update(n_response_tokens=n_tokens, truncated=truncated[i], dropped=False, group=group.get(i))
            row.update({f"min_k_{label}": values[i] for label, values in scores.items()})
            row.update({f"mean_logprob_{label}": values[i] for label, values in mean_logprobs.items()})
        rows.append(row)
    return rows
