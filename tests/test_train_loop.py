"""The training loop on a tiny random Llama: exact resume, non-finite loss, accumulation, checkpoints, hooks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainables.train import checkpoint as ckpt
from trainables.train.config import TrainConfig
from trainables.train.loop import NonFiniteLossError, TrainHooks, train


def tiny_config(output_dir: Path, **sections) -> TrainConfig:
    data = {
        "model": {"name_or_path": "tiny-random-llama", "tiny_overrides": {"num_hidden_layers": 2}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "ib": {"alpha": 0.1, "beta": 0.01, "tap_layer": 1, "bottleneck_dim": 16},
        "data": {"max_examples": 12, "max_length": 128},
        "optim": {"lr": 2e-3, "warmup_steps": 2, "max_steps": 6, "batch_size": 2},
        "output_dir": str(output_dir),
        "seed": 3,
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return TrainConfig.from_dict(data)


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    final = output_dir / ckpt.FINAL_DIR
    weights = {f"lora.{k}": v for k, v in load_file(str(final / "adapter" / "adapter_model.safetensors")).items()}
    weights.update({f"ib.{k}": v for k, v in load_file(str(final / "ib_head.safetensors")).items()})
    return weights


@pytest.mark.slow
def test_resume_continues_bit_identically(tmp_path):
    # Dropout, IB sampling noise and a random IB token subset all draw from the RNG, so only an exact
    # restore of RNG, optimizer, scheduler, data position and weights reproduces the straight run.
    sections = {
        "ib": {"ib_token_fraction": 0.5},
        "optim": {"max_steps": 4},
        "checkpoint_every": 0,
        "keep_checkpoints": 1,
    }
    straight = train(tiny_config(tmp_path / "straight", **sections))

    stop_at_2 = TrainHooks(on_rung=lambda step, model, tok, path: step == 2, rung_every=2)
    first = train(tiny_config(tmp_path / "resumed", **sections), hooks=stop_at_2)
    assert first["steps"] == 2 and first["stopped_early"]
    assert ckpt.latest_checkpoint(tmp_path / "resumed").name == "step-000002"
    second = train(tiny_config(tmp_path / "resumed", **sections))

    assert second["resumed_from"].endswith("step-000002")
    assert second["steps"] == 4
    assert second["loss_history"] == straight["loss_history"]  # exact, step by step
    assert len(set(straight["loss_history"])) == 4
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and any(k.startswith("ib.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # keep_checkpoints=1: only the newest step checkpoint is left
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "resumed")] == [4]


def test_non_finite_loss_stops_before_the_update_and_names_the_step(tmp_path):
    cfg = tiny_config(tmp_path / "run", checkpoint_every=1, keep_checkpoints=5, debug={"fault_nan_at_step": 3})
    logged = []
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at optimizer step 3 \(loss=nan, ce_loss=") as info:
        train(cfg, hooks=TrainHooks(on_log=lambda step, m: logged.append(step)))
    assert info.value.step == 3 and isinstance(info.value, RuntimeError)
    assert logged == [1, 2]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [1, 2]
    assert not (tmp_path / "run" / ckpt.FINAL_DIR).exists()


@pytest.mark.slow
def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    # No dropout, and an IB posterior so narrow (sigma ~ 1e-6) that its sampling noise is below fp error.
    sections = {
        "lora": {"dropout": 0.0},
        "ib": {"logvar_min": -30.0, "logvar_max": -28.0},
        "optim": {"max_steps": 3, "max_grad_norm": 0.0},
    }
    big = train(tiny_config(tmp_path / "big", **{**sections, "optim": {**sections["optim"], "batch_size": 4}}))
    accum = train(
        tiny_config(tmp_path / "accum", **{**sections, "optim": {**sections["optim"], "batch_size": 2, "grad_accum": 2}})
    )
    assert accum["loss_history"] == pytest.approx(big["loss_history"], rel=1e-5)
    assert accum["tokens"] == big["tokens"]
    a, b = final_weights(tmp_path / "big"), final_weights(tmp_path / "accum")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    # and it did train: the adapters moved away from their zero initialisation
    assert any(k.endswith("lora_B.weight") and a[k].abs().max() > 0 for k in a)


def test_logs_every_component_writes_checkpoints_and_a_loadable_final(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(out, checkpoint_every=2, keep_checkpoints=2, log_every=2, optim={"max_steps": 5})
    logged: list[tuple[int, dict]] = []
    rungs: list[tuple[int, str, bool]] = []

    def on_rung(step, model, tokenizer, checkpoint_dir):
        rungs.append((step, checkpoint_dir, model.training))
        assert Path(checkpoint_dir, ckpt.TRAINER_STATE_FILE).is_file()
        return None

    summary = train(cfg, hooks=TrainHooks(on_log=lambda s, m: logged.append((s, m)), on_rung=on_rung, rung_every=2))
    assert [s for s, _ in logged] == [2, 4, 5]  # every log_every steps, and the last
    for _, metrics in logged:
        for name in ("loss", "ce_loss", "kl_loss", "ib_ce_loss", "grad_norm", "lr", "tokens_per_s", "step_time_s"):
            assert name in metrics and metrics[name] == metrics[name]
        assert metrics["loss"] == pytest.approx(
            metrics["ce_loss"] + 0.1 * (metrics["kl_loss"] + 0.01 * metrics["ib_ce_loss"]), rel=1e-5
        )
        assert metrics["kl_loss"] > 0 and metrics["ib_ce_loss"] > 0 and metrics["grad_norm"] > 0
    assert [(s, Path(p).name, training) for s, p, training in rungs] == [
        (2, "step-000002", False),
        (4, "step-000004", False),
    ]
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [4, 5]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "step" in line] == [2, 4, 5]
    assert [set(line) for line in lines if "step" not in line] == [{"start", "resumed", "pid"}]  # the start's parts, once
    assert summary["steps"] == 5 and summary["checkpoint"] == str(out / "final")
    examples = summary["examples"]
    assert examples["loaded"] == 12 and examples["kept"] + examples["dropped"] == 12 and examples["kept"] > 0
    assert summary["first_loss"] == summary["loss_history"][0] and len(summary["loss_history"]) == 5
    saved = json.loads((out / "final" / "summary.json").read_text())
    assert saved["final_loss"] == summary["final_loss"]
    assert TrainConfig.from_dict(json.loads((out / "final" / "train_config.json").read_text())) == cfg

    # final/ loads back: the adapter through peft, the IB head through IBModel.load_ib
    from peft import PeftModel

    from trainables.ib import IBModel
    from trainables.models import load_model_and_tokenizer

    base, _ = load_model_and_tokenizer(cfg.model)
    peft_model = PeftModel.from_pretrained(base, str(ckpt.adapter_dir(out / "final")))
    ib_model = IBModel.load_ib(peft_model, str(out / "final"))
    assert ib_model.ib_config == cfg.ib


def test_rung_hook_can_stop_training_early(tmp_path):
    calls = []
    summary = train(
        tiny_config(tmp_path / "run", ib={"alpha": 0.0}, optim={"max_steps": 6}),
        hooks=TrainHooks(on_rung=lambda step, *_: calls.append(step) or step >= 2, rung_every=1),
    )
    assert calls == [1, 2]
    assert summary["steps"] == 2 and summary["stopped_early"]
    assert len(summary["loss_history"]) == 2
    assert (tmp_path / "run" / "final" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "run" / "final" / "ib_head.safetensors").exists()
