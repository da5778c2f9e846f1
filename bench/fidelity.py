"""What each remaining difference from the official IB-FT code does to one real batch's loss (docs/fidelity.md).

One batch of the shipped Python-function training set (8 examples, padded to the batch's longest) through the
real SmolLM2-135M-Instruct (the offline GGUF) with a fresh LoRA (B = 0, so the base model's own predictions)
and a fresh IB head seeded 0, at the official script's effective setting (alpha 0.2, beta 0.01, tap layer 20,
bottleneck 256). Each row changes one thing against the product's default and prints KL, CE_ib and the loss.

The official forward is restated from util/ModelWithIB.py (OPTML-Group/MemorizationBarrier) on the same model
and head weights: `VariationalAdapter` on every position of the padded batch (prompt and padding included),
z sampled, KL `.mean()` over all positions x dims, CE terms through `IB_loss` (labelled, attended positions).

Usage: python bench/fidelity.py [--examples 8] [--draws 20] [--pad-to 256]
Prints a Markdown table; exits 0.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.data import PaddingCollator, load_examples, tokenize_examples  # noqa: E402
from trainables.ib import IBConfig, IBModel  # noqa: E402
from trainables.models import apply_lora, load_model_and_tokenizer  # noqa: E402
from trainables.train.config import DataConfig, LoraSettings, ModelConfig  # noqa: E402

OFFICIAL = {"alpha": 0.2, "beta": 0.01, "tap_layer": 20, "bottleneck_dim": 256}
KEYS = ("kl_loss", "ib_ce_loss", "loss")


def official_forward(model: IBModel, batch: dict, *, sample: bool) -> dict[str, float]:
    """util/ModelWithIB.py's ModelWithIB.forward restated on `model`'s base model and IB head weights."""
    base, head, d = model.base_model, model.ib_head, model.ib_config.bottleneck_dim
    mask, labels = batch["attention_mask"], batch["labels"]
    out = base(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True)
    h = out.hidden_states[model.tap_index]
    w, b = head.encoder.weight, head.encoder.bias
    mu, logvar = h @ w[:d].T + b[:d], (h @ w[d:].T + b[d:]).clamp(-4.0, 4.0)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if sample else mu
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).mean()  # every position, padding included
    logits_ib = base.get_output_embeddings()(head.decoder(z))  # the second full-vocabulary logits tensor

    def ib_loss(logits):
        valid = (labels[:, 1:] != -100) & mask[:, 1:].bool()
        return nn.functional.cross_entropy(logits[:, :-1][valid].float(), labels[:, 1:][valid])

    ce, ce_ib = ib_loss(out.logits), ib_loss(logits_ib)
    alpha, beta = model.ib_config.alpha, model.ib_config.beta
    return {"kl_loss": kl.item(), "ib_ce_loss": ce_ib.item(), "loss": (ce + alpha * (kl + beta * ce_ib)).item()}


def ours(model: IBModel, batch: dict) -> dict[str, float]:
    out = model(**batch)
    return {k: out[k].item() for k in KEYS}


def mean_of_draws(fn, draws: int) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation over `draws` calls of a sampled loss."""
    values = [fn() for _ in range(draws)]
    mean = {k: statistics.fmean(v[k] for v in values) for k in KEYS}
    std = {k: statistics.pstdev(v[k] for v in values) for k in KEYS}
    return mean, std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--draws", type=int, default=20, help="draws averaged for each sampled row")
    parser.add_argument("--pad-to", type=int, default=256, help="fixed padding of the official-padding row")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    started = time.perf_counter()
    base, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path="smollm2-135m-instruct"))
    peft_model = apply_lora(base, LoraSettings(r=32, alpha=32, dropout=0.0), seed=0)
    examples = load_examples(DataConfig(source="builtin:python-functions", max_length=256), seed=0)[: args.examples]

    def batch_for(prompt_format: str = "auto", append_eos: bool = True, pad_to: int | None = None) -> dict:
        features, _ = tokenize_examples(examples, tokenizer, 256, prompt_format=prompt_format, append_eos=append_eos)
        # pad_to: every example padded to that fixed width, as the official script pads to max_length.
        return PaddingCollator(tokenizer.pad_token_id, pad_to_multiple_of=pad_to)(features)

    print(f"# loaded SmolLM2-135M-Instruct and {len(examples)} examples in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    rows: list[tuple[str, dict[str, float], str]] = []

    def model_with(**fields) -> IBModel:
        torch.manual_seed(0)  # the same head weights in every row
        return IBModel(peft_model, IBConfig(**{**OFFICIAL, **fields}))

    with torch.no_grad():
        batch = batch_for()
        n_targets = int((batch["labels"][:, 1:] != -100).sum())
        positions = batch["attention_mask"].numel()
        reference = model_with().eval()
        ref = ours(reference, batch)
        rows.append(("product default (KL mean, raw h, target tokens, z = mu at eval, fp32 KL)", ref, "reference"))
        rows.append(("official forward restated, z = mu", official_forward(reference, batch, sample=False),
                     f"KL over all {positions} positions (prompt + padding) vs {n_targets} target tokens"))
        off_mean, off_std = mean_of_draws(lambda: official_forward(reference, batch, sample=True), args.draws)
        rows.append((f"official forward restated, z sampled (mean of {args.draws})", off_mean,
                     f"CE_ib std {off_std['ib_ce_loss']:.3g} over draws"))
        padded = batch_for(pad_to=args.pad_to)
        rows.append((f"official forward, every example padded to {args.pad_to}", official_forward(reference, padded, sample=False),
                     "padding enters the official KL mean"))
        reference.train()
        tr_mean, tr_std = mean_of_draws(lambda: ours(reference, batch), args.draws)
        rows.append((f"product, training mode: z sampled (mean of {args.draws})", tr_mean, f"CE_ib std {tr_std['ib_ce_loss']:.3g}"))
        frac = model_with(ib_token_fraction=0.25).train()
        fr_mean, fr_std = mean_of_draws(lambda: ours(frac, batch), args.draws)
        rows.append((f"ib_token_fraction 0.25, training (mean of {args.draws})", fr_mean,
                     f"unbiased; loss std {fr_std['loss']:.3g} over draws"))
        reference.eval()
        rows.append(("kl_reduction sum", ours(model_with(kl_reduction="sum").eval(), batch), "d = 256 x the KL"))
        rows.append(("encoder_input rms_norm", ours(model_with(encoder_input="rms_norm").eval(), batch), ""))
        rows.append(("kl_reduction sum + encoder_input rms_norm (earlier default)",
                     ours(model_with(kl_reduction="sum", encoder_input="rms_norm").eval(), batch), ""))
        official_batch = batch_for(prompt_format="official", append_eos=False)
        rows.append(("prompt_format official, no EOS (official tokens)", ours(reference, official_batch),
                     "different tokens: CE and KL over other positions"))
        rows.append(("prompt_format official + EOS (paper spaces)", ours(reference, batch_for(prompt_format="official")), ""))
        bf16 = _kl_in_bf16(reference, batch)
        rows.append(("KL formula evaluated in bf16 instead of fp32", {**ref, "kl_loss": bf16}, "same mu, logvar rounded to bf16"))

    print(f"Real batch: {len(examples)} examples, {n_targets} target tokens, {positions} positions; "
          f"alpha {OFFICIAL['alpha']}, beta {OFFICIAL['beta']}, tap {OFFICIAL['tap_layer']}, d {OFFICIAL['bottleneck_dim']}.\n")
    print("| variant | KL | CE_ib | loss | Δ loss vs default | note |")
    print("|---|---|---|---|---|---|")
    for name, values, note in rows:
        delta = values["loss"] - ref["loss"]
        print(f"| {name} | {values['kl_loss']:.4g} | {values['ib_ce_loss']:.4g} | {values['loss']:.4g} | {delta:+.4g} | {note} |")
    print(f"\n({time.perf_counter() - started:.0f} s)", file=sys.stderr)


def _kl_in_bf16(model: IBModel, batch: dict) -> float:
    """The default KL with the closed form evaluated in bf16 (what skipping the fp32 cast would give)."""
    captured = {}
    head = model.ib_head
    original = head.prior.kl

    def bf16_kl(mu, logvar):
        captured["kl"] = original(mu.bfloat16(), logvar.bfloat16()).float()
        return captured["kl"]

    head.prior.kl = bf16_kl
    try:
        value = model(**batch)["kl_loss"].item()
    finally:
        head.prior.kl = original
    return value


if __name__ == "__main__":
    main()
