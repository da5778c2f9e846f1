"""IBModel on a tiny random Llama with LoRA: alpha=0 identity, padding, tap layer, gradients, chunking, subsets."""
from __future__ import annotations

import math

import pytest
import torch

from ib_tiny_models import NUM_LAYERS, example, pad_batch, tiny_llama, tiny_lora
from trainables.errors import ConfigError
from trainables.ib import IBConfig, IBModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOSS_KEYS = ("loss", "ce_loss", "kl_loss", "ib_ce_loss")


def _batch(side: str = "right") -> dict[str, torch.Tensor]:
    return pad_batch([example(24, 10, 1), example(15, 6, 2), example(9, 3, 3)], side)


def _losses(model, batch) -> dict[str, torch.Tensor]:
    out = model(**batch)
    return {k: out[k].detach() for k in LOSS_KEYS}


def test_alpha_zero_is_the_plain_peft_model_bit_for_bit():
    base = tiny_lora()
    model = IBModel(base, IBConfig(alpha=0.0))
    assert model.ib_head is None and model._tap is None
    assert [n for n, _ in model.named_parameters()] == [f"base_model.{n}" for n, _ in base.named_parameters()]
    model.train()
    for side in ("right", "left"):
        batch = _batch(side)
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # left padding only: positions from 0
        out = model(**batch)
        plain_kwargs = {} if side == "right" else {"position_ids": positions}
        plain = base(**batch, **plain_kwargs)
        assert torch.equal(out.loss, plain.loss)
        real = batch["attention_mask"].bool()
        assert torch.equal(out.logits[real], plain.logits[real])
        if side == "right":
            assert torch.equal(out.logits, plain.logits)
        assert torch.equal(out.ce_loss, plain.loss)
        assert out.kl_loss.item() == 0.0 and out.ib_ce_loss.item() == 0.0
    # No hook may be left on (or ever put on) any module.
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in base.modules())


def test_alpha_zero_on_a_plain_model_without_padding_matches_the_plain_call():
    base = tiny_llama()
    ids, labels = example(20, 5, 7)
    out = IBModel(base, IBConfig(alpha=0.0))(input_ids=ids[None], labels=labels[None])
    assert torch.equal(out.loss, base(input_ids=ids[None], labels=labels[None]).loss)


@pytest.mark.parametrize("prior", ["standard_normal", "learnable_gaussian"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_never_changes_any_loss_component(prior, side):
    torch.manual_seed(0)
    model = IBModel(tiny_lora(), IBConfig(alpha=0.3, beta=0.5, tap_layer=2, prior=prior, bottleneck_dim=16)).eval()
    ex = example(20, 8, 11)
    alone = _losses(model, pad_batch([ex], "right"))
    padded = _losses(model, pad_batch([ex], side, extra=7))
    for key in LOSS_KEYS:
        torch.testing.assert_close(padded[key], alone[key], rtol=1e-5, atol=1e-5)
    assert alone["kl_loss"] > 0 and alone["ib_ce_loss"] > 0


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_is_the_token_weighted_mean_of_its_examples(side):
    torch.manual_seed(0)
    model = IBModel(tiny_lora(), IBConfig(alpha=0.3, beta=0.5, tap_layer=1, bottleneck_dim=16)).eval()
    examples = [example(24, 10, 1), example(15, 6, 2)]
    together = _losses(model, pad_batch(examples, side, extra=2))
    parts = [_losses(model, pad_batch([ex], "right")) for ex in examples]
    counts = [int((ex[1][1:] != -100).sum()) for ex in examples]
    for key in ("kl_loss", "ib_ce_loss", "ce_loss"):
        expected = sum(p[key] * c for p, c in zip(parts, counts)) / sum(counts)
        torch.testing.assert_close(together[key], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wrap_in_peft", [False, True])
@pytest.mark.parametrize("tap_layer, index", [(0, 0), (2, 2), (NUM_LAYERS, NUM_LAYERS), (-1, NUM_LAYERS), (-5, 0), (0.5, 2), (0.25, 1)])
def test_tap_layer_reads_exactly_hf_hidden_states(tap_layer, index, wrap_in_peft):
    base = tiny_lora() if wrap_in_peft else tiny_llama()
    model = IBModel(base, IBConfig(alpha=0.1, tap_layer=tap_layer))
    assert model.tap_index == index
    batch = _batch("left")
    reference = base(**batch, output_hidden_states=True).hidden_states
    assert len(reference) == NUM_LAYERS + 1
    with model._tap.capture():
        base(**batch)
    torch.testing.assert_close(model._tap.take(), reference[index], rtol=0, atol=0)


@pytest.mark.parametrize("kl_reduction", ["mean", "sum"])
def test_loss_is_ce_plus_alpha_times_kl_plus_beta_times_ib_ce(kl_reduction):
    """loss == CE_ft + alpha * (KL + beta * CE_ib) from the returned parts; the head's weights (and so every
    part) are the same for each (alpha, beta), and "mean" is the "sum" KL over d."""
    torch.manual_seed(0)
    base = tiny_lora()
    batch = _batch()
    plain_ce = _losses(IBModel(base, IBConfig(alpha=0.0)), batch)["loss"]
    head_state = IBModel(base, IBConfig(alpha=0.1, tap_layer=2, bottleneck_dim=16)).ib_head.state_dict()
    parts = {}
    for alpha, beta in [(0.01, 0.02), (0.1, 0.0), (0.2, 0.01), (0.5, 0.5), (3.0, 2.0)]:
        config = IBConfig(alpha=alpha, beta=beta, tap_layer=2, bottleneck_dim=16, kl_reduction=kl_reduction)
        model = IBModel(base, config)
        model.ib_head.load_state_dict(head_state)
        out = _losses(model.eval(), batch)
        assert out["kl_loss"] > 0 and out["ib_ce_loss"] > 0
        expected = out["ce_loss"] + alpha * (out["kl_loss"] + beta * out["ib_ce_loss"])
        torch.testing.assert_close(out["loss"], expected, rtol=1e-6, atol=0)
        parts[(alpha, beta)] = out
    for out in parts.values():  # alpha and beta weigh the parts, never change them
        for key in ("ce_loss", "kl_loss", "ib_ce_loss"):
            torch.testing.assert_close(out[key], parts[(0.01, 0.02)][key], rtol=1e-6, atol=0)
        torch.testing.assert_close(out["ce_loss"], plain_ce, rtol=1e-6, atol=0)
    summed = IBModel(base, IBConfig(alpha=0.1, tap_layer=2, bottleneck_dim=16, kl_reduction="sum"))
    summed.ib_head.load_state_dict(head_state)
    scale = 16 if kl_reduction == "mean" else 1
    torch.testing.assert_close(parts[(0.01, 0.02)]["kl_loss"] * scale, _losses(summed.eval(), batch)["kl_loss"],
                               rtol=1e-5, atol=0)


def test_forward_never_asks_for_all_hidden_states():
    base = tiny_lora()
    model = IBModel(base, IBConfig(alpha=0.1, tap_layer=1)).eval()
    out = model(**_batch())
    assert out.hidden_states is None


def test_alpha_positive_trains_lora_head_and_learnable_prior_but_not_frozen_weights():
    torch.manual_seed(0)
    base = tiny_lora()
    model = IBModel(base, IBConfig(alpha=0.5, beta=0.5, tap_layer=2, prior="learnable_gaussian", bottleneck_dim=16))
    model.train()
    model(**_batch()).loss.backward()
    head_params = dict(model.ib_head.named_parameters())
    assert set(head_params) == {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias",
                                "prior.mean", "prior.log_scale"}
    for name, param in head_params.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    lora = [p for n, p in base.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora)
    frozen = [p for n, p in base.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in lora} | {id(p) for p in head_params.values()}


def test_alpha_zero_trains_only_lora():
    base = tiny_lora()
    model = IBModel(base, IBConfig(alpha=0.0)).train()
    model(**_batch()).loss.backward()
    lora = {id(p) for n, p in base.named_parameters() if "lora_" in n}
    assert {id(p) for p in model.trainable_parameters()} == lora


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_sampled_priors_train_end_to_end(prior):
    torch.manual_seed(0)
    model = IBModel(tiny_lora(), IBConfig(alpha=0.5, tap_layer=-1, prior=prior, bottleneck_dim=16)).train()
    out = model(**_batch())
    assert all(torch.isfinite(out[k]) for k in LOSS_KEYS)
    out.loss.backward()
    for name, param in model.ib_head.prior.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kernel", ["checkpointed", "fused"])
def test_chunk_size_changes_neither_losses_nor_gradients(kernel):
    results = []
    for chunk in (3, 100_000):
        torch.manual_seed(0)
        config = IBConfig(alpha=0.5, beta=1.0, tap_layer=2, bottleneck_dim=16, ce_chunk_size=chunk, ce_kernel=kernel)
        model = IBModel(tiny_lora(), config)
        model.train()
        torch.manual_seed(1)  # same reparameterisation noise for both chunk sizes
        out = model(**_batch())
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(({k: out[k].detach() for k in LOSS_KEYS}, grads))
    (losses_small, grads_small), (losses_big, grads_big) = results
    for key in LOSS_KEYS:
        torch.testing.assert_close(losses_small[key], losses_big[key], rtol=1e-6, atol=1e-6)
    assert grads_small.keys() == grads_big.keys()
    # Chunking changes only the fp32 summation order: differences at the 1e-7 level are rounding.
    for name in grads_small:
        torch.testing.assert_close(grads_small[name], grads_big[name], rtol=1e-5, atol=1e-6)


def test_checkpointed_ib_branch_feeds_the_lm_head_at_most_chunk_rows_at_a_time():
    chunk = 4
    base = tiny_lora()
    config = IBConfig(alpha=0.5, tap_layer=2, bottleneck_dim=16, ce_chunk_size=chunk, ce_kernel="checkpointed")
    model = IBModel(base, config).train()
    batch = _batch()
    n_targets = int((batch["labels"][:, 1:] != -100).sum())
    rows_seen = []
    handle = base.get_output_embeddings().register_forward_pre_hook(lambda m, args: rows_seen.append(args[0].shape))
    try:
        model(**batch).loss.backward()
    finally:
        handle.remove()
    batch_shape = tuple(batch["input_ids"].shape)
    full_calls = [s for s in rows_seen if tuple(s[:-1]) == batch_shape]
    ib_calls = [s for s in rows_seen if tuple(s[:-1]) != batch_shape]
    assert len(full_calls) == 1  # the base model's own logits, which plain LoRA FT computes too
    assert all(len(s) == 2 and s[0] <= chunk for s in ib_calls)
    # Each chunk runs once in the forward and once more when the backward recomputes it.
    assert sum(s[0] for s in ib_calls) == 2 * n_targets


def test_token_fraction_uses_ceil_of_the_fraction_in_training_and_everything_in_eval():
    base = tiny_lora()
    model = IBModel(base, IBConfig(alpha=0.5, tap_layer=2, bottleneck_dim=16, ib_token_fraction=0.3))
    batch = _batch()
    n_targets = int((batch["labels"][:, 1:] != -100).sum())
    rows = []
    handle = model.ib_head.decoder.register_forward_hook(lambda m, a, out: rows.append(out.shape[0]))
    try:
        with torch.no_grad():
            model.train()(**batch)
            model.eval()(**batch)
    finally:
        handle.remove()
    assert rows == [math.ceil(0.3 * n_targets), n_targets]


def test_token_fraction_estimate_is_unbiased():
    torch.manual_seed(0)
    # A near-zero posterior variance removes the reparameterisation noise: what remains is the
    # randomness of the token subset, whose estimate must average to the all-token value.
    config = dict(alpha=1.0, beta=1.0, tap_layer=2, bottleneck_dim=16, logvar_min=-30.0, logvar_max=-29.0)
    base = tiny_lora()
    full = IBModel(base, IBConfig(**config)).train()
    sub = IBModel(base, IBConfig(**config, ib_token_fraction=0.25))
    sub.ib_head.load_state_dict(full.ib_head.state_dict())
    sub.train()
    batch = _batch()
    with torch.no_grad():
        reference = _losses(full, batch)
        # The base model's forward does not depend on the subset, so it runs once; the IB terms
        # are then redrawn many times from the same tapped hidden state.
        with sub._tap.capture():
            base(**batch)
        hidden = sub._tap.take()
        draws = [sub._ib_losses(hidden, batch["labels"], batch["attention_mask"], None) for _ in range(400)]
    for position, key in enumerate(("kl_loss", "ib_ce_loss")):
        values = torch.stack([d[position] for d in draws])
        stderr = values.std() / math.sqrt(len(values))
        assert values.std() > 1e-4, key  # the subsets really differ
        assert abs(values.mean() - reference[key]) < 4 * stderr, (key, values.mean(), reference[key], stderr)


def test_num_items_in_batch_normalises_like_the_base_loss():
    torch.manual_seed(0)
    model = IBModel(tiny_lora(), IBConfig(alpha=0.5, tap_layer=2, bottleneck_dim=16)).eval()
    batch = _batch()
    n_targets = int((batch["labels"][:, 1:] != -100).sum())
    plain = _losses(model, batch)
    scaled = model(**batch, num_items_in_batch=torch.tensor(2 * n_targets))
    for key in LOSS_KEYS:
        torch.testing.assert_close(scaled[key].detach(), plain[key] / 2, rtol=1e-5, atol=1e-6)


def test_head_follows_bf16_base_model_and_losses_stay_finite():
    base = tiny_lora(dtype=torch.bfloat16)
    model = IBModel(base, IBConfig(alpha=0.1, tap_layer=2, prior="mog", bottleneck_dim=16)).train()
    assert {p.dtype for p in model.ib_head.parameters()} == {torch.bfloat16}
    out = model(**_batch())
    assert out.kl_loss.dtype == torch.float32 and all(torch.isfinite(out[k]) for k in LOSS_KEYS)
    out.loss.backward()
    assert model.ib_head.encoder.weight.grad.dtype == torch.bfloat16


def test_generation_and_attributes_are_delegated_to_the_base_model():
    base = tiny_lora()
    model = IBModel(base, IBConfig(alpha=0.1, tap_layer=2)).eval()
    assert model.config is base.config
    assert model.get_input_embeddings() is base.get_input_embeddings()
    prompt = torch.tensor([[5, 6, 7]])
    generated = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4,
                               do_sample=False, pad_token_id=0)
    assert torch.equal(generated, base.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                                max_new_tokens=4, do_sample=False, pad_token_id=0))
    assert generated.shape == (1, 7)


def test_no_targets_gives_zero_ib_terms():
    model = IBModel(tiny_lora(), IBConfig(alpha=0.1, tap_layer=2)).eval()
    batch = _batch()
    batch["labels"][:] = -100
    out = model(**batch)
    assert out.kl_loss.item() == 0.0 and out.ib_ce_loss.item() == 0.0


@pytest.mark.parametrize("tap_layer", [NUM_LAYERS + 1, -(NUM_LAYERS + 2)])
def test_tap_layer_out_of_range_is_a_one_line_config_error(tap_layer):
    with pytest.raises(ConfigError) as info:
        IBModel(tiny_llama(), IBConfig(alpha=0.1, tap_layer=tap_layer))
    message = str(info.value)
    assert f"ib.tap_layer {tap_layer}" in message and f"allowed: 0..{NUM_LAYERS}" in message and "\n" not in message


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"alpha": -0.1}, "ib.alpha must be a number >= 0, got -0.1"),
        ({"prior": "laplace"}, "valid priors: standard_normal, learnable_gaussian, mog, vamp"),
        ({"tap_layer": 1.5}, "ib.tap_layer as a fraction must lie in (0, 1), got 1.5"),
        ({"ib_token_fraction": 0.0}, "ib.ib_token_fraction must lie in (0, 1], got 0.0"),
    ],
)
def test_bad_ib_config_is_a_one_line_config_error(fields, fragment):
    with pytest.raises(ConfigError) as info:
        IBConfig(**fields)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_bad_prior_option_fails_when_the_model_is_built():
    with pytest.raises(ConfigError) as info:
        IBModel(tiny_llama(), IBConfig(alpha=0.1, prior="mog", prior_options={"components": -2}))
    assert str(info.value) == "ib.prior_options.components for prior 'mog' must be an int >= 1, got -2"


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_tap_and_gradients_survive_base_model_gradient_checkpointing(use_reentrant):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        base = tiny_lora()
        if checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
            base.enable_input_require_grads()
        model = IBModel(base, IBConfig(alpha=0.5, beta=1.0, tap_layer=2, bottleneck_dim=16)).train()
        torch.manual_seed(1)
        model(**_batch()).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)
