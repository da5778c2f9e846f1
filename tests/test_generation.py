"""Batched sampling: stopping, determinism, the shared prompt cache and the sampler itself."""
from __future__ import annotations

import pytest
import torch

from trainables.data.formatting import encode_prompt
from trainables.errors import ConfigError
from trainables.generation import GenerationSettings, NucleusSampler, generate_samples, sample, stop_position
from trainables.models import TINY_RANDOM_LLAMA, load_model_and_tokenizer
from trainables.train.config import ModelConfig

PROMPTS = [
    "Write a function that adds two numbers.",
    "Write a Python function `reverse_string(s)` that returns the string reversed, and explain it at length.",
    "Hi",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_model_and_tokenizer(ModelConfig(name_or_path=TINY_RANDOM_LLAMA))


def greedy(**overrides) -> GenerationSettings:
    return GenerationSettings(**{"temperature": 0.0, "max_new_tokens": 24, "stop_after_code_block": False, **overrides})


def test_stop_sequence_cuts_text_and_ends_generation_early(tiny):
    model, tokenizer = tiny
    full = generate_samples(model, tokenizer, PROMPTS, 1, greedy(), seed=0)
    text = full.texts[1][0]
    assert len(text) > 12
    stop = text[8:12]  # a piece from the middle of what the model says anyway
    cut = generate_samples(model, tokenizer, PROMPTS, 1, greedy(stop=[stop]), seed=0)
    assert cut.texts[1][0] == text[: text.find(stop)]
    assert cut.new_tokens < full.new_tokens
    # The other prompts run on unaffected unless the stop also occurs in their text.
    for i in (0, 2):
        if stop not in full.texts[i][0]:
            assert cut.texts[i][0] == full.texts[i][0]


def test_max_new_tokens_caps_every_sample(tiny):
    model, tokenizer = tiny
    out = generate_samples(model, tokenizer, PROMPTS, 2, greedy(max_new_tokens=5), seed=0)
    assert out.new_tokens <= len(PROMPTS) * 2 * 5
    assert all(len(tokenizer(t, add_special_tokens=False)["input_ids"]) <= 6 for ts in out.texts for t in ts)


def test_stop_position_closes_fenced_block():
    settings = GenerationSettings()
    answer = "Here:\n```python\nx = 1\n```\nMore talk"
    assert answer[: stop_position(answer, settings, prompt_fence_open=False)] == "Here:\n```python\nx = 1\n```"
    assert stop_position("Here:\n```python\nx = 1\n", settings, prompt_fence_open=False) is None
    # A prompt that ended inside a fence: the first fence in the answer closes it.
    assert stop_position("x = 1\n```\nok", settings, prompt_fence_open=True) == len("x = 1\n```")
    assert stop_position(answer, GenerationSettings(stop_after_code_block=False), False) is None
    assert stop_position(answer, GenerationSettings(stop=["x ="]), False) == answer.find("x =")


def test_same_seed_same_samples_other_seed_other_samples(tiny):
    model, tokenizer = tiny
    settings = GenerationSettings(temperature=1.0, top_p=0.95, max_new_tokens=12)
    a = sample(model, tokenizer, PROMPTS, 3, settings, seed=7)
    b = sample(model, tokenizer, PROMPTS, 3, settings, seed=7)
    c = sample(model, tokenizer, PROMPTS, 3, settings, seed=8)
    assert a == b
    assert a != c
    assert len(a) == len(PROMPTS) and all(len(x) == 3 for x in a)
    assert len({t for t in a[0]}) > 1  # samples of one prompt differ from each other


def test_sampling_leaves_the_global_random_stream_alone(tiny):
    model, tokenizer = tiny
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sample(model, tokenizer, PROMPTS[:1], 2, GenerationSettings(max_new_tokens=3), seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_shared_prompt_cache_gives_what_plain_generate_gives(tiny):
    model, tokenizer = tiny
    shared = sample(model, tokenizer, PROMPTS, 2, greedy(share_prompt_cache=True), seed=0)
    plain = sample(model, tokenizer, PROMPTS, 2, greedy(share_prompt_cache=False), seed=0)
    assert shared == plain


def test_greedy_decoding_matches_transformers_generate(tiny):
    model, tokenizer = tiny
    ours = generate_samples(model, tokenizer, PROMPTS, 1, greedy(max_new_tokens=16), seed=0)
    for prompt, (text,) in zip(PROMPTS, ours.texts):
        ids = torch.tensor([encode_prompt(tokenizer, prompt)])
        with torch.inference_mode():
            reference = model.generate(ids, do_sample=False, max_new_tokens=16, pad_token_id=tokenizer.pad_token_id)
        new = reference[0, ids.shape[1] :].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id) + 1]
        assert text == tokenizer.decode(new, skip_special_tokens=True)


def test_left_padded_batch_gives_what_one_prompt_at_a_time_gives(tiny):
    model, tokenizer = tiny
    batched = sample(model, tokenizer, PROMPTS, 2, greedy(batch_size=40), seed=0)
    one_by_one = sample(model, tokenizer, PROMPTS, 2, greedy(batch_size=1, share_prompt_cache=False), seed=0)
    assert batched == one_by_one


def test_nucleus_sampler_draws_only_from_the_nucleus():
    torch.manual_seed(0)
    vocab = 2000
    logits = torch.full((4000, vocab), -20.0)
    logits[:, 0], logits[:, 1], logits[:, 2] = 2.0, 1.0, 0.5  # p ~ 0.63, 0.23, 0.14 (rest negligible)
    chosen = NucleusSampler(1.0, 0.8, 0)(logits)
    counts = torch.bincount(chosen, minlength=vocab)
    assert set(chosen.tolist()) == {0, 1}  # 0.63 < 0.8, 0.63 + 0.23 >= 0.8: token 2 is outside
    assert abs(counts[0].item() / len(chosen) - 0.63 / 0.86) < 0.03
    top1 = NucleusSampler(1.0, 0.95, 1)(logits)
    assert set(top1.tolist()) == {0}


def test_nucleus_sampler_falls_back_to_full_vocabulary_when_candidates_hold_too_little():
    torch.manual_seed(0)
    vocab = 4 * NucleusSampler.CANDIDATES
    flat = torch.zeros((64, vocab))  # uniform: the nucleus is 95% of the whole vocabulary
    chosen = NucleusSampler(1.0, 0.95, 0)(flat)
    assert (chosen >= NucleusSampler.CANDIDATES).float().mean() > 0.5


def test_settings_reject_bad_values():
    with pytest.raises(ConfigError, match="temperature"):
        GenerationSettings(temperature=-1)
    with pytest.raises(ConfigError, match="top_p"):
        GenerationSettings(top_p=0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ConfigError, match="stop"):
        GenerationSettings(stop=[""])
