"""Model loading (tiny random Llama, local dirs, GGUF cache, hub ids offline) and LoRA wrapping."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from trainables import models
from trainables.errors import ConfigError
from trainables.models import (
    SMOLLM2,
    SMOLLM2_VOCAB_SIZE,
    TINY_RANDOM_LLAMA,
    apply_lora,
    load_model_and_tokenizer,
    tiny_random_llama,
)
from trainables.train.config import LoraSettings, ModelConfig

REPO = Path(__file__).resolve().parent.parent


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _lora_wrapped_modules(model: torch.nn.Module) -> set[str]:
    names = (n.split(".") for n, _ in model.named_parameters() if ".lora_A." in n)
    return {parts[parts.index("lora_A") - 1] for parts in names}


def test_tiny_random_llama_is_seeded_and_uses_smollm2_vocab():
    a, b, c = tiny_random_llama(seed=3), tiny_random_llama(seed=3), tiny_random_llama(seed=4)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)
    assert a.config.vocab_size == SMOLLM2_VOCAB_SIZE
    assert a.config.hidden_size == 64 and a.config.num_hidden_layers == 4
    assert not a.training


def test_tiny_random_llama_leaves_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    tiny_random_llama(seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_overrides_apply_and_unknown_fields_are_rejected():
    model = tiny_random_llama(num_hidden_layers=2, hidden_size=32)
    assert len(model.model.layers) == 2 and model.config.hidden_size == 32
    with pytest.raises(ConfigError, match="num_hiden_layers"):
        tiny_random_llama(num_hiden_layers=2)


def test_load_tiny_model_with_smollm2_tokenizer_in_requested_dtype():
    cfg = ModelConfig(name_or_path=TINY_RANDOM_LLAMA, dtype="bf16", tiny_overrides={"num_hidden_layers": 2})
    model, tokenizer = load_model_and_tokenizer(cfg)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not model.training
    assert len(model.model.layers) == 2
    assert tokenizer.pad_token_id is not None
    assert len(tokenizer) <= model.config.vocab_size
    ids = tokenizer("def f(x):\n    return x", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape == (1, ids.shape[1], SMOLLM2_VOCAB_SIZE)


def test_tokenizer_without_pad_token_reuses_eos_and_keeps_vocab(tmp_path):
    _, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=TINY_RANDOM_LLAMA))
    size = len(tokenizer)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "tok")
    model, reloaded = load_model_and_tokenizer(ModelConfig(name_or_path=TINY_RANDOM_LLAMA, tokenizer=str(tmp_path / "tok")))
    assert reloaded.pad_token == reloaded.eos_token
    assert len(reloaded) == size
    assert model.get_input_embeddings().weight.shape[0] == SMOLLM2_VOCAB_SIZE


def test_local_directory_loads_the_saved_weights(tmp_path):
    model, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=TINY_RANDOM_LLAMA))
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded, loaded_tok = load_model_and_tokenizer(ModelConfig(name_or_path=str(tmp_path / "m")))
    assert _same_weights(model, loaded)
    assert loaded_tok("hello")["input_ids"] == tokenizer("hello")["input_ids"]


@pytest.mark.parametrize(
    "cfg, match",
    [
        (ModelConfig(name_or_path="/no/such/model.gguf"), "does not exist"),
        (ModelConfig(name_or_path="./no/such/dir"), "not an existing directory"),
    ],
)
def test_bad_local_paths_raise_config_error(cfg, match):
    with pytest.raises(ConfigError, match=match):
        load_model_and_tokenizer(cfg)


def test_missing_gguf_file_in_directory_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model.gguf_file"):
        load_model_and_tokenizer(ModelConfig(name_or_path=str(tmp_path), gguf_file="absent.gguf"))


def test_hub_id_offline_fails_fast_with_one_line_config_error():
    code = (
        "from trainables.models import load_model_and_tokenizer\n"
        "from trainables.train.config import ModelConfig\n"
        "from trainables.errors import ConfigError\n"
        "try:\n"
        "    load_model_and_tokenizer(ModelConfig(name_or_path='some-org/not-a-cached-model'))\n"
        "except ConfigError as e:\n"
        "    print('CONFIGERROR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.time()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert time.time() - started < 60
    lines = [l for l in out.stdout.splitlines() if l.startswith("CONFIGERROR")]
    assert len(lines) == 1, out.stdout + out.stderr
    assert "some-org/not-a-cached-model" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]


def test_apply_lora_targets_all_projections_and_is_seeded():
    lora = LoraSettings(r=4, alpha=8, dropout=0.0)
    a = apply_lora(tiny_random_llama(), lora, seed=1)
    b = apply_lora(tiny_random_llama(), lora, seed=1)
    c = apply_lora(tiny_random_llama(), lora, seed=2)
    assert _lora_wrapped_modules(a) == set(lora.target_modules)
    lora_a = {n: p for n, p in a.named_parameters() if "lora_" in n}
    assert all(torch.equal(p, dict(b.named_parameters())[n]) for n, p in lora_a.items())
    assert not all(torch.equal(p, dict(c.named_parameters())[n]) for n, p in lora_a.items())
    trainable = {n for n, p in a.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert a.peft_config["default"].r == 4 and a.peft_config["default"].lora_alpha == 8


def test_fresh_lora_does_not_change_the_output():
    base = tiny_random_llama()
    ids = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        before = base(ids).logits.clone()
        after = apply_lora(base, LoraSettings(r=2, dropout=0.0), seed=0)(ids).logits
    assert torch.allclose(before, after)


def test_apply_lora_keeps_existing_targets_and_rejects_none_matching():
    model = apply_lora(tiny_random_llama(), LoraSettings(r=2, target_modules=["q_proj", "c_attn"]), seed=0)
    assert _lora_wrapped_modules(model) == {"q_proj"}
    with pytest.raises(ConfigError, match="c_attn.*q_proj"):
        apply_lora(tiny_random_llama(), LoraSettings(r=2, target_modules=["c_attn", "c_proj"]), seed=0)


def test_concurrent_cache_writers_leave_one_complete_copy(tmp_path):
    target = tmp_path / "cache" / "entry"

    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        time.sleep(0.2)  # both writers are mid-write at the same time
        (folder / "weights.bin").write_bytes(b"x" * 1000)

    threads = [threading.Thread(target=models._write_atomically, args=(target, write)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (target / "weights.bin").read_bytes() == b"x" * 1000
    assert sorted(p.name for p in target.parent.iterdir()) == ["entry"]


def test_smollm2_loads_from_cache_quickly_and_identically():
    """Uses the shared cache (~/.cache/ibft-search or $IBFT_CACHE): the first run ever converts once."""
    first, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=SMOLLM2))
    started = time.time()
    second, _ = load_model_and_tokenizer(ModelConfig(name_or_path=SMOLLM2))
    assert time.time() - started < 15
    assert _same_weights(first, second)
    assert first.config.num_hidden_layers == 30 and first.config.hidden_size == 576
    assert first.config.tie_word_embeddings
    assert first.get_output_embeddings().weight.data_ptr() == first.get_input_embeddings().weight.data_ptr()
    assert tokenizer.chat_template and tokenizer.pad_token_id is not None


@pytest.mark.slow
def test_gguf_conversion_cache_matches_direct_gguf_load(tmp_path, monkeypatch):
    """A fresh cache: one conversion, its files in place, and weights equal to transformers' own GGUF load."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("IBFT_CACHE", str(tmp_path))
    gguf = models.smollm2_gguf_path()
    cached, _ = load_model_and_tokenizer(ModelConfig(name_or_path=str(gguf)))
    entries = list((tmp_path / "gguf").iterdir())
    assert len(entries) == 1 and (entries[0] / "ibft_cache_complete").is_file()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert _same_weights(cached, direct)
