"""Every TrainConfig field is validated before a model loads: a wrong type or an out-of-range value is a one-line
ConfigError naming the field (issue 22), and `ibft train` turns it into one stderr line and exit 2."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from search.cli import main
from trainables.commands.train import set_dotted
from trainables.errors import ConfigError
from trainables.ib.config import IBConfig
from trainables.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
NOTHING = object()
"""No out-of-range value: the field's type is its only constraint."""

# dotted field -> (a value of the wrong type, a well-typed value out of the field's range or NOTHING)
CASES: dict[str, tuple[Any, Any]] = {
    # TrainConfig's own fields
    "model": (5, NOTHING),
    "lora": ("r8", NOTHING),
    "ib": ([0.1], NOTHING),
    "data": (True, NOTHING),
    "optim": (5, NOTHING),
    "deepspeed": ("zero2", NOTHING),
    "seed": ("abc", NOTHING),
    "output_dir": (5, NOTHING),
    "log_every": ("abc", 0),
    "checkpoint_every": (1.5, -1),
    "keep_checkpoints": ("abc", 0),
    "resume": ("abc", NOTHING),
    "debug": (3, NOTHING),
    # ModelConfig
    "model.name_or_path": (123, NOTHING),
    "model.gguf_file": (5, NOTHING),
    "model.tokenizer": (["a"], NOTHING),
    "model.dtype": (16, "fp8"),
    "model.tiny_overrides": ("abc", NOTHING),
    # MemorizedBase (model.memorized: the memorization-barrier testbed's recipe)
    "model.memorized": (5, NOTHING),
    "model.memorized.data": (5, NOTHING),
    "model.memorized.max_examples": ("abc", 0),
    "model.memorized.epochs": ("abc", 0),
    "model.memorized.lr": ("abc", -1.0),
    "model.memorized.lora_r": (2.5, 0),
    "model.memorized.batch_size": ("abc", 0),
    "model.memorized.max_length": ("abc", 4),
    "model.memorized.prompt_format": (3, "xml"),
    "model.memorized.seed": ("abc", NOTHING),
    # LoraSettings
    "lora.r": ("abc", 0),
    "lora.alpha": ("abc", 0),
    "lora.dropout": ("abc", 1.0),
    "lora.target_modules": ("q_proj", []),
    # IBConfig
    "ib.alpha": ("abc", -0.1),
    "ib.beta": ("abc", -1),
    "ib.tap_layer": ("abc", 1.5),
    "ib.bottleneck_dim": (2.5, 0),
    "ib.logvar_min": ("abc", 5.0),
    "ib.logvar_max": ("abc", -5.0),
    "ib.prior": (3, "cauchy"),
    "ib.prior_options": ([1], NOTHING),
    "ib.ib_token_fraction": ("abc", 0.0),
    "ib.ce_chunk_size": ("abc", 0),
    "ib.kl_reduction": (1, "max"),
    "ib.encoder_input": (1, "layer_norm"),
    "ib.ce_kernel": (1, "triton"),
    # DataConfig
    "data.source": (1, NOTHING),
    "data.split": (1, NOTHING),
    "data.max_examples": ("abc", 0),
    "data.max_length": ("abc", 4),
    "data.drop_overlong": ("abc", NOTHING),
    "data.instruction_field": (1, NOTHING),
    "data.response_field": (1, NOTHING),
    "data.prompt_format": (1, "html"),
    "data.append_eos": ("abc", NOTHING),
    # OptimConfig
    "optim.lr": ("abc", 0),
    "optim.weight_decay": ("abc", -0.1),
    "optim.betas": ("abc", [0.9, 1.0]),
    "optim.warmup_steps": (1.5, -1),
    "optim.min_lr_ratio": ("abc", 1.5),
    "optim.max_steps": ("abc", 0),
    "optim.batch_size": (True, 0),
    "optim.grad_accum": ("abc", 0),
    "optim.max_grad_norm": ("abc", -1.0),
    "optim.gradient_checkpointing": ("yes", NOTHING),
    # DeepSpeedSettings
    "deepspeed.zero_stage": ("abc", 4),
    "deepspeed.offload_optimizer": ("abc", NOTHING),
    "deepspeed.offload_params": ("abc", True),  # needs zero_stage 3; the default is 2
    # DebugSettings
    "debug.fault_nan_at_step": ("abc", 0),
}


def _all_fields(cls: type, prefix: str = "") -> list[str]:
    import typing

    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        out.append(path)
        hint = hints[f.name]
        inner = next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), hint)
        if dataclasses.is_dataclass(inner):
            out.extend(_all_fields(inner, f"{path}."))
    return out


def test_the_table_covers_every_field_of_every_config_dataclass():
    assert sorted(CASES) == sorted(_all_fields(TrainConfig))


def _config_error(dotted: str, value: Any) -> str:
    data: dict[str, Any] = {}
    set_dotted(data, dotted, value, "test")
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(data)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _names(message: str, dotted: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(dotted)}(?![\w])", message) is not None


@pytest.mark.parametrize("dotted", sorted(CASES))
def test_a_wrong_type_names_the_field(dotted):
    wrong, _ = CASES[dotted]
    message = _config_error(dotted, wrong)
    assert _names(message, dotted) and repr(wrong) in message, message
    assert "not supported between" not in message and "unexpected keyword" not in message, message


@pytest.mark.parametrize("dotted", sorted(d for d, (_, bad) in CASES.items() if bad is not NOTHING))
def test_an_out_of_range_value_names_the_field(dotted):
    _, bad = CASES[dotted]
    assert _names(_config_error(dotted, bad), dotted)


@pytest.mark.parametrize(
    "dotted, value",
    [
        ("optim.lr", 1),  # an int where a float is expected is fine
        ("optim.weight_decay", 0),
        ("ib.tap_layer", 3),
        ("ib.tap_layer", -1),
        ("optim.betas", [0.9, 0.95]),
        ("data.max_examples", None),
        ("deepspeed", None),
        ("deepspeed", {"zero_stage": 3, "offload_params": True}),
        ("model.tiny_overrides", {"num_hidden_layers": 2}),
        ("optim.gradient_checkpointing", True),
    ],
)
def test_well_typed_values_still_pass(dotted, value):
    data: dict[str, Any] = {}
    set_dotted(data, dotted, value, "test")
    TrainConfig.from_dict(data)


def test_a_saved_ib_config_is_type_checked_too():
    with pytest.raises(ConfigError, match=r"ib\.alpha must be a number, got 'abc'"):
        IBConfig.from_dict({"alpha": "abc"})
    with pytest.raises(ConfigError, match="unknown field"):
        IBConfig.from_dict({"gamma": 1})


@pytest.mark.parametrize(
    "set_item, field",
    [("optim.weight_decay=abc", "optim.weight_decay"), ("keep_checkpoints=abc", "keep_checkpoints")],
)
def test_cli_rejects_a_bad_set_value_before_loading_a_model(set_item, field, capsys, monkeypatch):
    # importing the training loop (torch, the model loader) would raise: validation must come first
    monkeypatch.setitem(sys.modules, "trainables.train.loop", None)
    rc = main(["train", "--config", str(REPO / "configs" / "train-smollm2.yaml"), "--set", set_item])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and _names(err, field) and "'abc'" in err, err
    assert "Traceback" not in err


def test_cli_names_the_field_of_a_bad_config_file_value(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "trainables.train.loop", None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: abc}\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and _names(err, "optim.lr") and "not supported" not in err, err


def test_ibft_train_exits_2_quickly_on_a_bad_set_value():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", "train", "--config", "configs/train-smollm2.yaml",
         "--set", "optim.weight_decay=abc"],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "optim.weight_decay" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert elapsed < 10, f"took {elapsed:.1f} s: a model was loaded before validation?"
