"""Min-K% Prob, the group geometry and measure_memorization on a tiny random Llama with the real tokenizer."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from trainables.data import IGNORE_INDEX, PaddingCollator, load_examples, tokenize_examples
from trainables.errors import ConfigError
from trainables.memorization.analysis import analyze_memorization, measure_memorization
from trainables.memorization.geometry import group_geometry, mean_pairwise_angle_deg, split_groups, tap_representations
from trainables.memorization.min_k import min_k_count, min_k_prob, min_k_scores
from trainables.models import apply_lora, load_model_and_tokenizer, tiny_random_llama
from trainables.train.config import DataConfig, LoraSettings, ModelConfig

TINY = {"num_hidden_layers": 2}


@pytest.fixture(scope="module")
def tokenizer():
    return load_model_and_tokenizer(ModelConfig(name_or_path="tiny-random-llama", tiny_overrides=TINY))[1]


@pytest.fixture(scope="module")
def examples():
    return load_examples(DataConfig(max_examples=12), seed=0)


@pytest.fixture(scope="module")
def features(examples, tokenizer):
    feats, stats = tokenize_examples(examples, tokenizer, max_length=512)
    assert stats["kept"] == len(examples)
    return feats


def _trained_lora_model(seed: int = 0):
    """A tiny LoRA model whose adapter is not the identity (peft starts B at zero)."""
    model = apply_lora(tiny_random_llama(**TINY), LoraSettings(r=4, alpha=8, dropout=0.1), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=gen)
    return model


# --- Min-K% Prob -----------------------------------------------------------------------------------


def test_min_k_prob_of_known_values():
    values = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0, -10.0])
    assert min_k_prob(values, 0.2) == pytest.approx(-9.5)  # mean of the 2 lowest
    assert min_k_prob(values, 1.0) == pytest.approx(-5.5)  # all tokens: the mean log-prob
    assert min_k_prob(values[:3], 0.2) == pytest.approx(-3.0)  # floor(0.6) = 0 -> still the single lowest
    assert [min_k_count(n, 0.3) for n in (1, 3, 10, 11)] == [1, 1, 3, 3]
    assert min_k_count(100, 0.29) == 29


def test_min_k_scores_match_a_hand_computation_on_a_tiny_model(features, tokenizer):
    model = tiny_random_llama(**TINY)
    scores = min_k_scores(model, features[:3], pad_token_id=tokenizer.pad_token_id, k=0.2, batch_size=2)
    for feature, score in zip(features[:3], scores):
        ids = torch.tensor([feature["input_ids"]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        token_lps = [
            float(logprobs[t - 1, feature["input_ids"][t]])
            for t in range(1, len(feature["input_ids"]))
            if feature["labels"][t] != IGNORE_INDEX
        ]
        assert len(token_lps) == sum(label != IGNORE_INDEX for label in feature["labels"])
        lowest = sorted(token_lps)[: max(1, math.floor(0.2 * len(token_lps)))]
        assert score == pytest.approx(sum(lowest) / len(lowest), abs=1e-4)


def test_padding_and_batching_do_not_change_any_score(features, tokenizer):
    model = _trained_lora_model()
    # The shortest example batched with the longest one gets the most padding.
    by_length = sorted(features, key=lambda f: len(f["input_ids"]))
    assert len(by_length[-1]["input_ids"]) - len(by_length[0]["input_ids"]) > 10
    pad = tokenizer.pad_token_id
    alone = [min_k_scores(model, [f], pad_token_id=pad, batch_size=1)[0] for f in by_length]
    together = min_k_scores(model, by_length, pad_token_id=pad, batch_size=len(by_length))
    in_threes = min_k_scores(model, by_length, pad_token_id=pad, batch_size=3)
    assert together == pytest.approx(alone, abs=1e-5)
    assert in_threes == pytest.approx(alone, abs=1e-5)
    # Scores are not trivially equal: different examples really score differently.
    assert max(alone) - min(alone) > 1e-3


def test_padding_collator_padding_really_is_there(features, tokenizer):
    """Guards the padding test: batched examples of different lengths are in fact right-padded."""
    batch = PaddingCollator(tokenizer.pad_token_id)(features[:4])
    assert (batch["attention_mask"] == 0).any()


def test_scoring_leaves_the_train_mode_as_it_was(features, tokenizer):
    model = _trained_lora_model()
    model.train()
    first = min_k_scores(model, features[:2], pad_token_id=tokenizer.pad_token_id)
    assert model.training and all(m.training for m in model.modules())
    second = min_k_scores(model, features[:2], pad_token_id=tokenizer.pad_token_id)
    # LoRA dropout is 0.1: equal scores mean the scoring ran in eval mode both times.
    assert first == second


def test_bad_k_is_a_config_error(features, tokenizer):
    with pytest.raises(ConfigError, match="k must be a fraction"):
        min_k_scores(tiny_random_llama(**TINY), features[:1], pad_token_id=tokenizer.pad_token_id, k=0.0)


# --- groups and geometry ---------------------------------------------------------------------------


def test_split_groups_takes_top_and_bottom_quantiles():
    scores = [0.5, -3.0, 2.0, 1.0, -1.0, 0.0, 3.0, -2.0, 4.0, -4.0]
    most, least = split_groups(scores, 0.2)
    assert most == [8, 6] and least == [9, 1]
    with pytest.raises(ConfigError, match="at least 10 examples"):
        split_groups(scores[:9], 0.2)
    with pytest.raises(ConfigError, match=r"\(0, 0.5\]"):
        split_groups(scores, 0.6)


def test_mean_pairwise_angle_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(4, 5, generator=gen, dtype=torch.float64) + 1.0

    def angle(x, y):
        return math.degrees(math.acos(max(-1.0, min(1.0, float(x @ y / (x.norm() * y.norm()))))))

    cross = sum(angle(x, y) for x in a for y in b) / (len(a) * len(b))
    within = sum(angle(a[i], a[j]) for i, j in itertools.permutations(range(len(a)), 2)) / (len(a) * (len(a) - 1))
    for block_rows in (1, 3, 1024):  # blocks smaller than, not dividing, and larger than the group
        assert mean_pairwise_angle_deg(a, b, block_rows=block_rows) == pytest.approx(cross, abs=1e-9)
        assert mean_pairwise_angle_deg(a, block_rows=block_rows) == pytest.approx(within, abs=1e-9)
    assert mean_pairwise_angle_deg(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])) == pytest.approx(90.0)


def test_angular_gap_is_never_negative():
    gen = torch.Generator().manual_seed(1)
    for trial in range(20):
        reps = torch.randn(10, 4, generator=gen, dtype=torch.float64) + 0.5 * (trial % 3)
        assert group_geometry(reps, most=[0, 1, 2, 3], least=[4, 5, 6, 7, 8])["angular_gap_deg"] >= -1e-9


def test_group_geometry_numbers():
    # Group A around direction x, group B around direction y, the same spread: a 90 degree centroid angle.
    a = torch.tensor([[2.0, 0.0, 0.1], [2.0, 0.0, -0.1]])
    b = torch.tensor([[0.0, 2.0, 0.1], [0.0, 2.0, -0.1]])
    geo = group_geometry(torch.cat([a, b]), most=[0, 1], least=[2, 3])
    assert geo["centroid_l2_distance"] == pytest.approx(math.sqrt(8))
    assert geo["centroid_angle_deg"] == pytest.approx(90.0)
    assert geo["mean_norm"] == pytest.approx(math.sqrt(4.01))
    assert geo["relative_centroid_distance"] == pytest.approx(math.sqrt(8) / math.sqrt(4.01))
    assert geo["within_most_angle_deg"] == pytest.approx(math.degrees(2 * math.atan(0.05)))
    # Within-group means count self-pairs (angle 0) in the gap: 2 of each group's 4 ordered pairs.
    assert geo["angular_gap_deg"] == pytest.approx(geo["angular_disparity_deg"] - geo["within_most_angle_deg"] / 2)
    # Identical groups: no gap at all, whatever their spread; scaling changes L2 but no angle.
    same = group_geometry(torch.cat([a, a]), most=[0, 1], least=[2, 3])
    assert same["centroid_l2_distance"] == pytest.approx(0.0, abs=1e-12)
    assert same["angular_gap_deg"] == pytest.approx(0.0, abs=1e-5)  # acos near 0 in float64: ~1e-6 degrees
    assert same["angular_disparity_deg"] > 1.0  # while the plain cross-group mean angle is not 0
    scaled = group_geometry(10 * torch.cat([a, b]), most=[0, 1], least=[2, 3])
    assert scaled["centroid_l2_distance"] == pytest.approx(10 * geo["centroid_l2_distance"])
    assert scaled["angular_gap_deg"] == pytest.approx(geo["angular_gap_deg"])


def test_tap_representations_are_the_hugging_face_hidden_state_mean(features, tokenizer):
    model = tiny_random_llama(**TINY)
    reps = tap_representations(model, features[:3], pad_token_id=tokenizer.pad_token_id, tap_layer=1, batch_size=3)
    for feature, rep in zip(features[:3], reps):
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([feature["input_ids"]]), output_hidden_states=True).hidden_states[1][0]
        predicting = [t - 1 for t in range(1, len(feature["labels"])) if feature["labels"][t] != IGNORE_INDEX]
        torch.testing.assert_close(rep, hidden[predicting].double().mean(0), atol=1e-5, rtol=1e-5)


def test_geometry_is_invariant_to_batch_size(examples, tokenizer):
    model = _trained_lora_model()
    kwargs = dict(k=0.2, quantile=0.25, tap_layer=1, max_length=512)
    one = analyze_memorization(model, tokenizer, examples, batch_size=1, **kwargs)
    many = analyze_memorization(model, tokenizer, examples, batch_size=5, **kwargs)
    assert [r["group"] for r in one.rows] == [r["group"] for r in many.rows]
    for label in ("base", "fine_tuned"):
        g1, g5 = one.summary["models"][label]["geometry"], many.summary["models"][label]["geometry"]
        assert g1.keys() == g5.keys()
        for key in g1:
            assert g5[key] == pytest.approx(g1[key], rel=1e-4, abs=1e-6), key
    assert one.summary["memorization_gap"] == pytest.approx(many.summary["memorization_gap"], rel=1e-4, abs=1e-6)


# --- base vs fine-tuned ----------------------------------------------------------------------------


def test_measure_memorization_compares_with_the_base(examples, tokenizer, features):
    model = _trained_lora_model()
    model.train()
    summary = measure_memorization(model, tokenizer, examples, k=0.2, quantile=0.25, tap_layer=-1, batch_size=4)
    assert model.training
    assert summary["groups_from"] == "base" and set(summary["models"]) == {"base", "fine_tuned"}
    assert summary["tap_index"] == 2 and summary["group_size"] == 3 and summary["n_scored"] == len(examples)
    assert summary["memorization_gap_mode"] == "min"
    assert summary["memorization_gap"] == summary["models"]["fine_tuned"]["geometry"]["angular_gap_deg"]
    assert summary["memorization_gap_change"] == pytest.approx(summary["memorization_gap"] - summary["memorization_gap_base"])
    # The base pass (adapter switched off) is the plain model the adapter was put on.
    plain = min_k_scores(tiny_random_llama(**TINY), features, pad_token_id=tokenizer.pad_token_id)
    assert summary["models"]["base"]["min_k"]["mean"] == pytest.approx(sum(plain) / len(plain), abs=1e-6)
    assert summary["models"]["fine_tuned"]["min_k"]["mean"] != pytest.approx(summary["models"]["base"]["min_k"]["mean"], abs=1e-4)
    # The groups come from the base scores: the most memorized group scores higher under the base.
    base = summary["models"]["base"]["min_k"]
    assert base["most_memorized_mean"] > base["least_memorized_mean"]


def test_an_ib_model_scores_like_its_lora_model(examples, tokenizer):
    from trainables.ib import IBConfig, IBModel

    model = _trained_lora_model()
    wrapped = IBModel(model, IBConfig(alpha=0.1, tap_layer=1, bottleneck_dim=8))
    direct = measure_memorization(model, tokenizer, examples, quantile=0.25, tap_layer=1)
    through_ib = measure_memorization(wrapped, tokenizer, examples, quantile=0.25, tap_layer=1)
    assert through_ib["memorization_gap"] == pytest.approx(direct["memorization_gap"], abs=1e-9)
    assert through_ib["min_k_mean"] == pytest.approx(direct["min_k_mean"], abs=1e-9)


def test_prompt_filling_max_length_is_reported_not_scored(examples, tokenizer):
    long_prompt = {"instruction": "word " * 400, "response": "pass"}
    analysis = analyze_memorization(
        tiny_random_llama(**TINY), tokenizer, [long_prompt] + list(examples), quantile=0.2, max_length=256
    )
    assert analysis.rows[0]["dropped"] and analysis.rows[0]["min_k_model"] is None
    assert analysis.summary["n_dropped"] == 1 and analysis.summary["n_scored"] == len(examples)
    assert all(isinstance(r["min_k_model"], float) for r in analysis.rows[1:])
    assert [r["index"] for r in analysis.rows] == list(range(len(examples) + 1))


@pytest.mark.slow
def test_a_repeated_training_example_gains_more_min_k_than_unseen_ones(features, tokenizer):
    """A few dozen LoRA steps on batches that repeat one example: it becomes the memorized one."""
    torch.manual_seed(0)
    model = apply_lora(tiny_random_llama(**TINY), LoraSettings(r=8, alpha=16, dropout=0.0), seed=0)
    repeated, others, unseen = features[0], features[1:4], features[6:12]
    pad = tokenizer.pad_token_id
    before = min_k_scores(model, [repeated] + unseen, pad_token_id=pad)
    # Each batch: the repeated example twice plus one of three other examples, each seen 5 times.
    collate = PaddingCollator(pad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(15):
        batch = collate([repeated, repeated, others[step % len(others)]])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = min_k_scores(model, [repeated] + unseen, pad_token_id=pad)
    gains = [a - b for a, b in zip(after, before)]
    repeated_gain, unseen_gains = gains[0], gains[1:]
    assert repeated_gain > 0.25, gains
    assert repeated_gain > 3 * max(unseen_gains), gains
