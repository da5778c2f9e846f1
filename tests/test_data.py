"""Prompt formatting, loss masking, truncation counts, dynamic padding and example loading."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from trainables.data import (
    IGNORE_INDEX,
    PaddingCollator,
    encode_prompt,
    format_prompt,
    load_examples,
    tokenize_examples,
)
from trainables.data.formatting import PLAIN_TEMPLATE
from trainables.errors import ConfigError
from trainables.models import TINY_RANDOM_LLAMA, load_model_and_tokenizer
from trainables.train.config import DataConfig, ModelConfig

EXAMPLES = [
    {"instruction": "Write a function `add(a, b)` returning a + b.", "response": "```python\ndef add(a, b):\n    return a + b\n```"},
    {"instruction": "Say hi.", "response": "hi"},
    {"instruction": "Reverse a string.", "response": "```python\ndef rev(s):\n    return s[::-1]\n```"},
]


@pytest.fixture(scope="module")
def chat_tokenizer():
    return load_model_and_tokenizer(ModelConfig(name_or_path=TINY_RANDOM_LLAMA, tiny_overrides={"num_hidden_layers": 1}))[1]


@pytest.fixture(scope="module")
def plain_tokenizer():
    tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=TINY_RANDOM_LLAMA, tiny_overrides={"num_hidden_layers": 1}))[1]
    tokenizer.chat_template = None
    return tokenizer


def test_chat_template_prompt_opens_the_assistant_turn(chat_tokenizer):
    prompt = format_prompt(chat_tokenizer, "Write code.")
    assert "<|im_start|>user\nWrite code.<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_plain_template_when_tokenizer_has_none(plain_tokenizer):
    assert format_prompt(plain_tokenizer, "Write code.") == PLAIN_TEMPLATE.format(instruction="Write code.")
    assert format_prompt(plain_tokenizer, "Write code.") == "### Instruction:\nWrite code.\n### Response:\n"


@pytest.mark.parametrize("which", ["chat_tokenizer", "plain_tokenizer"])
def test_labels_mask_exactly_the_prompt(which, request):
    tokenizer = request.getfixturevalue(which)
    features, stats = tokenize_examples(EXAMPLES, tokenizer, max_length=512)
    assert stats == {"kept": 3, "truncated": 0, "dropped": 0}
    for example, feature in zip(EXAMPLES, features):
        prompt_ids = encode_prompt(tokenizer, format_prompt(tokenizer, example["instruction"]))
        response_ids = tokenizer(example["response"], add_special_tokens=False)["input_ids"]
        ids, labels = feature["input_ids"], feature["labels"]
        assert ids == prompt_ids + response_ids + [tokenizer.eos_token_id]
        assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
        assert labels[len(prompt_ids):] == ids[len(prompt_ids):]
        assert IGNORE_INDEX not in labels[len(prompt_ids):]


def test_separate_tokenization_matches_the_joined_text(chat_tokenizer):
    # The mask boundary is only exact if tokenizing prompt and response apart gives the joined text's tokens.
    for example in EXAMPLES:
        prompt = format_prompt(chat_tokenizer, example["instruction"])
        joined = chat_tokenizer(prompt + example["response"], add_special_tokens=False)["input_ids"]
        feature = tokenize_examples([example], chat_tokenizer, max_length=512)[0][0]
        assert feature["input_ids"][:-1] == joined


def test_overlong_examples_are_truncated_on_the_response_side(chat_tokenizer):
    prompt_len = len(encode_prompt(chat_tokenizer, format_prompt(chat_tokenizer, EXAMPLES[0]["instruction"])))
    max_length = prompt_len + 3
    features, stats = tokenize_examples(EXAMPLES[:1], chat_tokenizer, max_length=max_length)
    assert stats == {"kept": 1, "truncated": 1, "dropped": 0}
    assert len(features[0]["input_ids"]) == max_length
    assert features[0]["labels"].count(IGNORE_INDEX) == prompt_len


def test_overlong_examples_are_dropped_when_asked(chat_tokenizer):
    lengths = [len(f["input_ids"]) for f in tokenize_examples(EXAMPLES, chat_tokenizer, max_length=512)[0]]
    limit = sorted(lengths)[1]  # the shortest two fit, the longest does not
    features, stats = tokenize_examples(EXAMPLES, chat_tokenizer, max_length=limit, drop_overlong=True)
    assert stats == {"kept": 2, "truncated": 0, "dropped": 1}
    assert all(len(f["input_ids"]) <= limit for f in features)


def test_prompt_longer_than_limit_is_dropped_even_when_truncating(chat_tokenizer):
    long_example = {"instruction": "word " * 300, "response": "x"}
    features, stats = tokenize_examples([long_example, EXAMPLES[1]], chat_tokenizer, max_length=64)
    assert stats == {"kept": 1, "truncated": 0, "dropped": 1}
    assert len(features) == 1


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_dynamically_on_either_side(side):
    features = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [8, 9, 10, 11, 12], "labels": [-100, -100, 10, 11, 12]},
    ]
    batch = PaddingCollator(pad_token_id=0, padding_side=side)(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long and t.shape == (2, 5) for t in batch.values())
    if side == "right":
        assert batch["input_ids"][0].tolist() == [5, 6, 7, 0, 0]
        assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]
        assert batch["labels"][0].tolist() == [-100, 6, 7, -100, -100]
    else:
        assert batch["input_ids"][0].tolist() == [0, 0, 5, 6, 7]
        assert batch["attention_mask"][0].tolist() == [0, 0, 1, 1, 1]
        assert batch["labels"][0].tolist() == [-100, -100, -100, 6, 7]
    assert batch["input_ids"][1].tolist() == [8, 9, 10, 11, 12]
    assert batch["attention_mask"][1].tolist() == [1] * 5


def test_collator_rounds_up_to_a_multiple_and_handles_unlabelled_features():
    batch = PaddingCollator(pad_token_id=2, pad_to_multiple_of=8)([{"input_ids": [1, 2, 3]}])
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (1, 8)
    with pytest.raises(ValueError, match="padding_side"):
        PaddingCollator(pad_token_id=0, padding_side="middle")


def test_real_batch_pad_positions_carry_no_loss(chat_tokenizer):
    features, _ = tokenize_examples(EXAMPLES, chat_tokenizer, max_length=512)
    batch = PaddingCollator(chat_tokenizer.pad_token_id)(features)
    assert batch["input_ids"].shape[1] == max(len(f["input_ids"]) for f in features)
    assert torch.all(batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX)
    counted = (batch["labels"] != IGNORE_INDEX).sum().item()
    assert counted == sum(sum(1 for l in f["labels"] if l != IGNORE_INDEX) for f in features)


def test_builtin_set_loads_shuffled_by_seed():
    a = load_examples(DataConfig(), seed=0)
    b = load_examples(DataConfig(), seed=0)
    c = load_examples(DataConfig(), seed=1)
    assert 300 <= len(a) <= 600
    assert a == b and a != c and sorted(map(str, a)) == sorted(map(str, c))
    assert all(set(e) == {"instruction", "response"} for e in a)
    assert all(e["response"].startswith("```python\n") for e in a)
    assert load_examples(DataConfig(max_examples=5), seed=0) == a[:5]


def test_unknown_builtin_is_a_config_error():
    with pytest.raises(ConfigError, match="builtin:nope"):
        load_examples(DataConfig(source="builtin:nope"), seed=0)


@pytest.mark.parametrize(
    "fields", [("instruction", "response"), ("Instruction", "Response"), ("instruction", "output"), ("prompt", "completion")]
)
def test_local_jsonl_accepts_common_field_names(tmp_path, fields):
    path = tmp_path / "d.jsonl"
    rows = [{fields[0]: f"q{i}", fields[1]: f"a{i}", "extra": 1} for i in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    examples = load_examples(DataConfig(source=str(path)), seed=0)
    assert sorted(e["instruction"] for e in examples) == ["q0", "q1", "q2", "q3"]
    assert all(e["response"] == "a" + e["instruction"][1:] for e in examples)


def test_local_jsonl_gz_with_named_fields(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(3):
            f.write(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n")
    cfg = DataConfig(source=str(path), instruction_field="question", response_field="answer")
    assert len(load_examples(cfg, seed=0)) == 3
    with pytest.raises(ConfigError, match="no instruction/response fields.*question"):
        load_examples(DataConfig(source=str(path)), seed=0)


def test_bad_local_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "response": "b"}\n\n{"instruction": "c", oops}\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:3: not valid JSON"):
        load_examples(DataConfig(source=str(path)), seed=0)
    path.write_text('{"instruction": "a", "response": "b"}\n{"instruction": "c"}\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:2: field 'response'"):
        load_examples(DataConfig(source=str(path)), seed=0)


def test_missing_local_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_examples(DataConfig(source=str(tmp_path / "absent.jsonl")), seed=0)


@pytest.mark.parametrize("source, named", [("origen", "henryen/origen_dataset_instruction"), ("someone/some-data", "someone/some-data")])
def test_hub_dataset_offline_is_a_quick_one_line_config_error(source, named):
    code = (
        "from trainables.data import load_examples\n"
        "from trainables.train.config import DataConfig\n"
        "from trainables.errors import ConfigError\n"
        "try:\n"
        f"    load_examples(DataConfig(source={source!r}), seed=0)\n"
        "except ConfigError as e:\n"
        "    print('CONFIGERROR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.time()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert time.time() - started < 60
    lines = [l for l in out.stdout.splitlines() if l.startswith("CONFIGERROR")]
    assert len(lines) == 1, out.stdout + out.stderr
    assert named in lines[0] and "local .jsonl" in lines[0]


# ---- data.prompt_format and data.append_eos ----------------------------------------------------------------

from trainables.data.formatting import OFFICIAL_TEMPLATE, resolve_prompt_format  # noqa: E402
from trainables.train.config import PROMPT_FORMATS, TrainConfig  # noqa: E402


class _WithBos:
    """A tokenizer that, like most real ones, writes a BOS when asked for special tokens (the tiny one has none)."""

    BOS = 10**6  # an id no real token has, so it is recognisable

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, text, add_special_tokens=True):
        ids = self._inner(text, add_special_tokens=False)["input_ids"]
        return {"input_ids": ([self.BOS] if add_special_tokens else []) + ids}

    def encode(self, text, add_special_tokens=True):
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]


class _NoEos(_WithBos):
    eos_token_id = None


@pytest.fixture(scope="module")
def bos_tokenizer(chat_tokenizer):
    return _WithBos(chat_tokenizer)


TOKENIZERS = ["chat_tokenizer", "plain_tokenizer", "bos_tokenizer"]
FORMATS_FOR = {  # which formats each tokenizer supports ("chat" needs a chat template)
    "chat_tokenizer": PROMPT_FORMATS,
    "plain_tokenizer": ("auto", "plain", "official"),
    "bos_tokenizer": PROMPT_FORMATS,
}
CASES = [(t, f) for t in TOKENIZERS for f in FORMATS_FOR[t]]


def _today(tokenizer, instruction):
    """Prompt ids as built before data.prompt_format existed (what `auto` must keep giving)."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer("### Instruction:\n" + instruction + "\n### Response:\n", add_special_tokens=True)["input_ids"]


@pytest.mark.parametrize("which, fmt", CASES)
@pytest.mark.parametrize("append_eos", [True, False])
def test_every_format_masks_exactly_the_prompt_and_labels_the_response_ids(which, fmt, append_eos, request):
    tokenizer = request.getfixturevalue(which)
    features, stats = tokenize_examples(EXAMPLES, tokenizer, 512, prompt_format=fmt, append_eos=append_eos)
    assert stats == {"kept": 3, "truncated": 0, "dropped": 0}
    eos = [tokenizer.eos_token_id] if append_eos else []
    for example, feature in zip(EXAMPLES, features):
        prompt_ids = encode_prompt(tokenizer, format_prompt(tokenizer, example["instruction"], fmt), fmt)
        response_ids = tokenizer(example["response"], add_special_tokens=False)["input_ids"] + eos
        assert feature["input_ids"] == prompt_ids + response_ids
        assert feature["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids


@pytest.mark.parametrize("which", TOKENIZERS)
@pytest.mark.parametrize("append_eos", [True, False])
def test_official_format_is_the_official_scripts_tokens(which, append_eos, request):
    tokenizer = request.getfixturevalue(which)
    assert format_prompt(tokenizer, "Say hi.", "official") == "Say hi.\n" == OFFICIAL_TEMPLATE.format(instruction="Say hi.")
    features, _ = tokenize_examples(EXAMPLES, tokenizer, 512, prompt_format="official", append_eos=append_eos)
    for example, feature in zip(EXAMPLES, features):
        prompt_ids = tokenizer.encode(example["instruction"] + "\n", add_special_tokens=False)
        response_ids = tokenizer.encode(example["response"], add_special_tokens=False)
        expected = prompt_ids + response_ids + ([tokenizer.eos_token_id] if append_eos else [])
        assert feature["input_ids"] == expected
        assert feature["labels"] == [IGNORE_INDEX] * len(prompt_ids) + expected[len(prompt_ids):]
        if which == "bos_tokenizer":
            assert _WithBos.BOS not in feature["input_ids"]  # no special token added anywhere


@pytest.mark.parametrize("which", TOKENIZERS)
def test_auto_is_unchanged(which, request):
    tokenizer = request.getfixturevalue(which)
    default, _ = tokenize_examples(EXAMPLES, tokenizer, 512)
    auto, _ = tokenize_examples(EXAMPLES, tokenizer, 512, prompt_format="auto", append_eos=True)
    assert default == auto
    for example, feature in zip(EXAMPLES, auto):
        prompt_ids = _today(tokenizer, example["instruction"])
        response_ids = tokenizer(example["response"], add_special_tokens=False)["input_ids"]
        assert feature["input_ids"] == prompt_ids + response_ids + [tokenizer.eos_token_id]
    assert resolve_prompt_format(tokenizer, "auto") == ("chat" if tokenizer.chat_template else "plain")


def test_plain_format_uses_the_plain_template_even_with_a_chat_template(bos_tokenizer):
    prompt = format_prompt(bos_tokenizer, "Write code.", "plain")
    assert prompt == PLAIN_TEMPLATE.format(instruction="Write code.")
    assert encode_prompt(bos_tokenizer, prompt, "plain")[0] == _WithBos.BOS
    assert _WithBos.BOS not in encode_prompt(bos_tokenizer, format_prompt(bos_tokenizer, "Write code.", "chat"), "chat")


def test_chat_format_without_a_chat_template_is_a_clear_config_error(plain_tokenizer):
    for call in (
        lambda: format_prompt(plain_tokenizer, "x", "chat"),
        lambda: encode_prompt(plain_tokenizer, "x", "chat"),
        lambda: tokenize_examples(EXAMPLES, plain_tokenizer, 512, prompt_format="chat"),
    ):
        with pytest.raises(ConfigError, match="prompt_format 'chat'.*no chat template"):
            call()


def test_unknown_prompt_format_is_rejected_quoting_it(chat_tokenizer):
    with pytest.raises(ConfigError, match="data.prompt_format.*'alpaca'"):
        DataConfig(prompt_format="alpaca")
    with pytest.raises(ConfigError, match="data.append_eos.*'yes'"):
        DataConfig(append_eos="yes")
    with pytest.raises(ConfigError, match="'alpaca'"):
        format_prompt(chat_tokenizer, "x", "alpaca")


def test_a_config_saved_before_the_option_reads_as_auto_with_eos():
    saved = {"model": {"name_or_path": TINY_RANDOM_LLAMA}, "data": {"source": "builtin:python-functions", "max_length": 256}}
    for cfg in (TrainConfig.from_dict(saved), getattr(TrainConfig, "from_saved", TrainConfig.from_dict)(saved)):
        assert cfg.data.prompt_format == "auto" and cfg.data.append_eos is True
    assert TrainConfig.from_dict({"data": {"prompt_format": "official"}}).to_dict()["data"]["prompt_format"] == "official"


def test_missing_eos_is_an_error_only_when_eos_is_appended(chat_tokenizer):
    no_eos = _NoEos(chat_tokenizer)
    with pytest.raises(ValueError, match="no eos token"):
        tokenize_examples(EXAMPLES, no_eos, 512, prompt_format="official")
    features, stats = tokenize_examples(EXAMPLES, no_eos, 512, prompt_format="official", append_eos=False)
    assert stats["kept"] == 3
    # An empty response without EOS has no token to learn: dropped, not kept with an all-masked label.
    _, stats = tokenize_examples([{"instruction": "a", "response": ""}], no_eos, 512, prompt_format="official", append_eos=False)
    assert stats == {"kept": 0, "truncated": 0, "dropped": 1}


class _StubModel:
    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self


class _Captured(Exception):
    pass


PROBLEMS = [
    {"task_id": "T/0", "instruction": EXAMPLES[0]["instruction"], "prompt": "", "test": "", "entry_point": "add"},
    {"task_id": "T/1", "prompt": "def rev(s):\n", "test": "", "entry_point": "rev"},  # no instruction: HumanEval-like
]


@pytest.mark.parametrize("which, fmt", CASES)
def test_evaluation_generates_from_the_training_prompt_of_its_format(which, fmt, request, monkeypatch):
    # The whole path validation/test/`ibft eval` take (run_evaluation -> build_prompt -> generate_samples ->
    # encode_prompt), spied where the ids enter the model: they must be the training prompt ids of `fmt`.
    from trainables import generation
    from trainables.evaluation import build_prompt, instruction_for, run_evaluation

    tokenizer = request.getfixturevalue(which)
    seen: dict[str, list[int]] = {}

    def spy(model, tok, encoded, prompts, n, settings, token_text):
        seen.update(zip(prompts, encoded))
        raise _Captured

    monkeypatch.setattr(generation, "_generate_chunk", spy)
    with pytest.raises(_Captured):
        run_evaluation(_StubModel(), tokenizer, PROBLEMS, n=1, ks=[1], prompt_format=fmt,
                       generation=generation.GenerationSettings(batch_size=64))
    assert len(seen) == len(PROBLEMS)
    for problem in PROBLEMS:
        instruction = instruction_for(problem)
        feature = tokenize_examples([{"instruction": instruction, "response": "x"}], tokenizer, 512, prompt_format=fmt)[0][0]
        train_prompt_ids = feature["input_ids"][: feature["labels"].count(IGNORE_INDEX)]
        prompt = build_prompt(tokenizer, problem, fmt)
        assert prompt == format_prompt(tokenizer, instruction, fmt)
        assert seen[prompt] == train_prompt_ids
    # The formats really differ, so a generation path that ignored the format would fail above.
    if fmt != "auto":
        other = "official" if fmt != "official" else "plain"
        assert build_prompt(tokenizer, PROBLEMS[0], other) not in seen
