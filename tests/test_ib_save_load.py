"""save_ib / load_ib round trips (next to a peft adapter saved by the caller) and bad directories."""
from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from ib_tiny_models import example, pad_batch, tiny_llama, tiny_lora
from trainables.errors import ConfigError
from trainables.ib import IBConfig, IBModel
from trainables.ib.model import IB_CONFIG_FILE, IB_HEAD_FILE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch():
    return pad_batch([example(20, 8, 1), example(13, 4, 2)], "right")


def _trained(config: IBConfig) -> IBModel:
    """An IBModel after one optimiser step, so LoRA, head and prior all differ from their initialisation."""
    torch.manual_seed(0)
    model = IBModel(tiny_lora(), config).train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model(**_batch()).loss.backward()
    optimizer.step()
    return model.eval()


@pytest.mark.parametrize("prior", ["standard_normal", "learnable_gaussian", "mog", "vamp"])
def test_round_trip_with_adapter_in_the_same_directory_gives_identical_outputs(tmp_path, prior):
    config = IBConfig(alpha=0.2, beta=0.5, tap_layer=-2, prior=prior, bottleneck_dim=16,
                      prior_options={"components": 3} if prior in ("mog", "vamp") else {})
    model = _trained(config)
    model.base_model.save_pretrained(tmp_path)
    model.save_ib(tmp_path)
    assert (tmp_path / IB_CONFIG_FILE).is_file() and (tmp_path / IB_HEAD_FILE).is_file()

    reloaded_base = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    reloaded = IBModel.load_ib(reloaded_base, tmp_path).eval()
    assert reloaded.ib_config == config
    before_state, after_state = model.ib_head.state_dict(), reloaded.ib_head.state_dict()
    assert before_state.keys() == after_state.keys()
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)

    batch = _batch()
    torch.manual_seed(5)
    before = model(**batch)
    torch.manual_seed(5)  # the sampled priors draw the same Monte-Carlo noise
    after = reloaded(**batch)
    for key in ("loss", "ce_loss", "kl_loss", "ib_ce_loss", "logits"):
        assert torch.equal(before[key], after[key]), key


def test_alpha_zero_saves_only_the_config_and_reloads_without_a_head(tmp_path):
    model = IBModel(tiny_lora(), IBConfig(alpha=0.0))
    model.save_ib(tmp_path)
    assert not (tmp_path / IB_HEAD_FILE).exists()
    reloaded = IBModel.load_ib(tiny_lora(), tmp_path)
    assert reloaded.ib_head is None and reloaded.ib_config.alpha == 0.0


def test_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ib_config.json: not found"):
        IBModel.load_ib(tiny_llama(), tmp_path / "nowhere")


def test_missing_head_file_is_a_config_error(tmp_path):
    (tmp_path / IB_CONFIG_FILE).write_text(json.dumps(IBConfig(alpha=0.1, tap_layer=1).to_dict()))
    with pytest.raises(ConfigError, match="ib_head.safetensors: not found"):
        IBModel.load_ib(tiny_llama(), tmp_path)


def test_head_from_a_different_shape_is_a_one_line_config_error(tmp_path):
    IBModel(tiny_llama(), IBConfig(alpha=0.1, tap_layer=1, bottleneck_dim=8)).save_ib(tmp_path)
    config = json.loads((tmp_path / IB_CONFIG_FILE).read_text())
    config["bottleneck_dim"] = 16
    (tmp_path / IB_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ConfigError) as info:
        IBModel.load_ib(tiny_llama(), tmp_path)
    assert "does not fit this base model" in str(info.value) and "\n" not in str(info.value)


def test_unknown_field_in_saved_config_is_a_config_error(tmp_path):
    IBModel(tiny_llama(), IBConfig(alpha=0.0)).save_ib(tmp_path)
    config = json.loads((tmp_path / IB_CONFIG_FILE).read_text())
    config["gamma"] = 1
    (tmp_path / IB_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="unknown field"):
        IBModel.load_ib(tiny_llama(), tmp_path)
