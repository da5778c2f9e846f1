"""The per-GPU memory estimate (trainables.memory_estimate): hand-worked numbers, the estimate against measured
peak tensor memory on CPU (tests/memory_tracker.py), and `ibft tune`'s preflight (search.memory_check)."""
from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from search.memory_check import check_space
from search.space import load_space, parse_space
from trainables.errors import ConfigError
from trainables.memory_estimate import (
    GIB,
    KNOWN_CONFIGS,
    ModelShape,
    TrainSetup,
    activation_bytes_per_token_layer,
    estimate,
    fixes,
    largest_decode_rows,
    model_shape,
)

ROOT = Path(__file__).resolve().parents[1]
DEEPSEEK = "deepseek-ai/deepseek-coder-7b-instruct-v1.5"
TOLERANCE = 0.15
# A small Llama whose activations, not its embeddings, dominate (GQA: 4 heads, 2 KV heads).
TINY = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 4096}
# spaces/origen.yaml's trial on one of its two workers: bf16, ZeRO-2, 2 x 2048 tokens, LoRA r32 on 7 projections.
ORIGEN = TrainSetup(dtype="bf16", batch_size=2, max_length=2048, deepspeed=True, zero_stage=2, world_size=2)


def deepseek() -> ModelShape:
    return model_shape(DEEPSEEK)


# ---- hand-worked numbers ---------------------------------------------------------------------------------------


def test_the_7b_weights_are_6_91e9_params_in_bf16():
    shape = deepseek()
    layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert shape.base_params() == 2 * 102400 * 4096 + 30 * layer + 4096 == 6_910_365_696
    lora = 30 * 32 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
    ib = 4096 * 512 + 512 + 256 * 4096 + 4096
    est = estimate(shape, replace(ORIGEN, gradient_checkpointing=True))
    assert est.trainable_params == lora + ib == 78_107_136
    assert est.parts["weights"] == 6_910_365_696 * 2 + (lora + ib) * 2


def test_activations_per_token_per_layer_of_the_7b_shape():
    shape = deepseek()
    # CPU, plain torch: peft's fp32 adapters, float dropout masks; no padding mask (batch 1). Issue 15 measured
    # about 408 KiB: 64h + 14I + 28r + 4 heads bytes.
    cpu = TrainSetup(dtype="bf16", batch_size=1, device="cpu")
    assert activation_bytes_per_token_layer(shape, cpu) == 64 * 4096 + 14 * 11008 + 28 * 32 + 4 * 32 == 417_280
    # CUDA under DeepSpeed bf16: adapters cast to bf16, 1-byte masks (34h + 9I + 14r), plus the padding mask's
    # bf16 bias row per token (2 x 2048 bytes) that SDPA saves in every layer.
    gpu = activation_bytes_per_token_layer(shape, ORIGEN)
    assert gpu == 34 * 4096 + 9 * 11008 + 14 * 32 + 4 * 32 + 2 * 2048 == 243_008


def test_logits_states_and_kv_cache_of_the_origen_trial():
    shape = deepseek()
    tokens, vocab = 2 * 2048, 102400
    est = estimate(shape, ORIGEN)
    # fp32 saved log-softmax + incoming + outgoing gradient of the CE.
    assert est.parts["logits_ce"] == 12 * tokens * vocab
    # ZeRO-2 over 2 ranks: fp32 master + moments + fp32 grads + bf16 grads over 2, plus the 5e8-element bf16 bucket.
    n = est.trainable_params
    assert est.parts["lora_ib_states"] == -(-n * 18 // 2) + 500_000_000 * 2
    no_ckpt = est.parts["activations"]
    assert no_ckpt > 30 * 243_008 * tokens
    ckpt = estimate(shape, replace(ORIGEN, gradient_checkpointing=True)).parts["activations"]
    assert ckpt < no_ckpt / 10
    # KV cache: 2 (k, v) x 30 layers x 4096 x 2 bytes = 480 KiB per token.
    rows, length = 10, 1000 + 24
    kv = estimate(shape, replace(ORIGEN, decode_rows=rows, prompt_tokens=1000, max_new_tokens=24, samples_per_prompt=10)).parts["decode_kv"]
    assert kv >= rows * length * 480 * 1024
    assert kv < rows * length * 480 * 1024 * 1.1


def test_origen_needs_checkpointing_at_48_gb_and_fits_with_it():
    shape = deepseek()
    without = estimate(shape, ORIGEN)
    with_ckpt = estimate(shape, replace(ORIGEN, gradient_checkpointing=True))
    assert not without.fits(44.4) and without.total > 40 * GIB > with_ckpt.total
    assert with_ckpt.fits(44.4) and with_ckpt.total < 25 * GIB
    line = with_ckpt.one_line()
    assert "\n" not in line and line.startswith("20.5 GiB per GPU (training peak; weights 13.0 GiB")
    table = with_ckpt.table(44.4).splitlines()
    assert table[-1].split() == ["peak", "(training)", "20.5", "GiB", "of", "44.4", "GiB:", "fits"]
    names = [name for name, _ in fixes(shape, ORIGEN, 44.4)]
    assert "training.gradient_checkpointing: true" in names
    # ZeRO-3 splits the weights over the ranks, offload takes them off the GPU.
    z3 = estimate(shape, replace(ORIGEN, zero_stage=3)).parts["weights"]
    assert z3 == pytest.approx(without.parts["weights"] / 2, rel=1e-6)
    assert estimate(shape, replace(ORIGEN, zero_stage=3, offload_params=True)).parts["weights"] == 0


def test_largest_decode_rows_is_a_multiple_of_the_samples_and_fits():
    shape = deepseek()
    decode = replace(ORIGEN, gradient_checkpointing=True, decode_rows=40, prompt_tokens=1400, max_new_tokens=1024)
    rows = largest_decode_rows(shape, decode, 44.4, step=10)
    assert rows % 10 == 0 and 0 < rows < 40
    assert estimate(shape, replace(decode, decode_rows=rows)).fits(44.4)
    assert not estimate(shape, replace(decode, decode_rows=rows + 10)).fits(44.4)


def test_known_shapes_need_no_download(monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    assert model_shape(DEEPSEEK) == ModelShape.from_config(KNOWN_CONFIGS[DEEPSEEK])
    smol = model_shape("smollm2-135m-instruct")
    assert (smol.hidden_size, smol.num_key_value_heads, smol.vocab_size, smol.tie_word_embeddings) == (576, 3, 49152, True)
    assert model_shape("tiny-random-llama", {"num_hidden_layers": 2}).num_hidden_layers == 2
    # Unknown and unreachable: no estimate, no error.
    assert model_shape("some-org/some-model") is None
    assert model_shape("/no/such/dir") is None


def test_a_local_config_json_gives_the_shape(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps(KNOWN_CONFIGS[DEEPSEEK]))
    assert model_shape(str(tmp_path)) == model_shape(DEEPSEEK)


# ---- estimate vs measured peak tensor memory (CPU) -------------------------------------------------------------


def _within(estimated: int, measured: int) -> None:
    assert abs(estimated - measured) <= TOLERANCE * measured, f"estimate {estimated / 2**20:.1f} MiB vs measured {measured / 2**20:.1f} MiB"


@pytest.mark.parametrize("dtype,checkpointing", [("fp32", False), ("bf16", True)])
def test_train_step_estimate_matches_measured_tiny(dtype, checkpointing):
    from memory_tracker import build_ib_model, measure_train_step

    model = build_ib_model("tiny-random-llama", dtype, tiny_overrides=TINY, checkpointing=checkpointing)
    measured = measure_train_step(model, batch=2, length=64)
    setup = TrainSetup(dtype=dtype, batch_size=2, max_length=64, device="cpu", gradient_checkpointing=checkpointing)
    _within(estimate(model_shape("tiny-random-llama", TINY), setup).train_peak, measured)


def test_decode_estimate_matches_measured_tiny():
    from memory_tracker import build_ib_model, measure_decode

    model = build_ib_model("tiny-random-llama", "fp32", tiny_overrides=TINY)
    measured = measure_decode(model, rows=8, prompt=48, new_tokens=8)
    setup = TrainSetup(dtype="fp32", device="cpu", decode_rows=8, prompt_tokens=48, max_new_tokens=8)
    est = estimate(model_shape("tiny-random-llama", TINY), setup)
    _within(est.parts["weights"] + est.parts["decode_kv"], measured)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,checkpointing", [("fp32", False), ("bf16", True)])
def test_train_step_estimate_matches_measured_smollm2(dtype, checkpointing):
    from memory_tracker import build_ib_model, measure_train_step

    model = build_ib_model("smollm2-135m-instruct", dtype, checkpointing=checkpointing)
    measured = measure_train_step(model, batch=2, length=48)
    setup = TrainSetup(dtype=dtype, batch_size=2, max_length=48, device="cpu", gradient_checkpointing=checkpointing)
    _within(estimate(model_shape("smollm2-135m-instruct"), setup).train_peak, measured)


@pytest.mark.slow
def test_decode_estimate_matches_measured_smollm2():
    from memory_tracker import build_ib_model, measure_decode

    model = build_ib_model("smollm2-135m-instruct", "fp32")
    measured = measure_decode(model, rows=4, prompt=48, new_tokens=4)
    setup = TrainSetup(dtype="fp32", device="cpu", decode_rows=4, prompt_tokens=48, max_new_tokens=4)
    est = estimate(model_shape("smollm2-135m-instruct"), setup)
    _within(est.parts["weights"] + est.parts["decode_kv"], measured)


# ---- the preflight of `ibft tune` ------------------------------------------------------------------------------


def test_origen_prints_its_per_gpu_estimate():
    out = io.StringIO()
    space = load_space(ROOT / "spaces" / "origen.yaml")
    try:
        result = check_space(space, "spaces/origen.yaml", out=out)
    except ConfigError as e:
        result, refusal = None, str(e)
        assert "gpu_memory_gib 44.4 GiB" in refusal and "it fits with" in refusal and "\n" not in refusal
    text = out.getvalue()
    assert "weights" in text and "13.0 GiB" in text and "peak (" in text and "of 44.4 GiB" in text
    if result is not None:
        assert result.fits(44.4)


def test_cpu_spaces_are_not_checked_and_print_nothing():
    out = io.StringIO()
    space = load_space(ROOT / "spaces" / "smoke.yaml")
    assert space.resources.gpus_per_worker == 0
    assert check_space(space, "spaces/smoke.yaml", out=out) is None
    assert out.getvalue() == ""


def test_gpu_memory_gib_defaults_to_the_l40s_and_must_be_positive():
    data = yaml.safe_load((ROOT / "spaces" / "smollm2-gpu.yaml").read_text())
    assert parse_space(data).resources.gpu_memory() == 44.4
    data["resources"]["gpu_memory_gib"] = 78
    assert parse_space(data).resources.gpu_memory() == 78
    data["resources"]["gpu_memory_gib"] = 0
    with pytest.raises(ConfigError, match="gpu_memory_gib"):
        parse_space(data)


def test_tune_refuses_a_trial_that_cannot_fit_with_one_line_and_exit_2(tmp_path):
    data = yaml.safe_load((ROOT / "spaces" / "smollm2-gpu.yaml").read_text())
    data["resources"]["gpu_memory_gib"] = 6.0
    data["training"]["gradient_checkpointing"] = False
    data["training"]["batch_size"] = 16
    data["data"]["max_length"] = 1024
    space = tmp_path / "too-big.yaml"
    space.write_text(yaml.safe_dump(data, sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "search", "tune", str(space), "--storage-path", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("ibft tune: error:")]
    assert len(errors) == 1 and errors[0] == done.stderr.strip().splitlines()[-1]
    assert "resources.gpu_memory_gib 6 GiB" in errors[0] and "it fits with" in errors[0]
    assert "training.gradient_checkpointing: true" in errors[0] or "training.batch_size" in errors[0]
    assert "memory per GPU" in done.stderr and "does NOT fit" in done.stderr
    assert not (tmp_path / "runs").exists()  # refused before the run directory (and Ray)
    assert done.stdout == ""


def _fake_cuda(monkeypatch, total_gib: float) -> None:
    import torch

    class Properties:
        total_memory = int(total_gib * GIB)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Properties())
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_ibft_train_checks_the_cuda_device_before_the_model_loads(monkeypatch, capsys):
    from trainables.commands.train import build_config, check_memory

    small = build_config(None, {"model": "smollm2-135m-instruct", "dtype": "bf16", "batch_size": 2, "max_length": 256})
    _fake_cuda(monkeypatch, 45.0)
    check_memory(small)
    err = capsys.readouterr().err
    assert "ibft train: memory per GPU for cuda:0" in err and "of 44.4 GiB: fits" in err

    big = build_config(None, {"model": DEEPSEEK, "dtype": "bf16", "batch_size": 2, "max_length": 2048})
    with pytest.raises(ConfigError) as refused:
        check_memory(big)
    line = str(refused.value)
    assert "\n" not in line and "more than the 44.4 GiB of cuda:0" in line
    assert "optim.gradient_checkpointing: true" in line
    check_memory(big, skip=True)  # --skip-memory-check: printed, not refused


def test_ibft_train_on_cpu_prints_nothing(monkeypatch, capsys):
    import torch

    from trainables.commands.train import build_config, check_memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_memory(build_config(None, {"model": DEEPSEEK, "batch_size": 64, "max_length": 4096}))
    assert capsys.readouterr().err == ""


def test_estimate_matches_the_recorded_h200_peak_of_the_smollm2_shape():
    """bench/data/h200-2026-11-29/gpu-check.log: bench/ib_overhead.py on an H200, SmolLM2-135M's shape in bf16, LoRA
    r32 (fp32 adapters, plain torch AdamW), batch 8 x 1024 unpadded, torch.cuda.max_memory_allocated of one step."""
    import ast
    import re

    log = (ROOT / "bench" / "data" / "h200-2026-11-29" / "gpu-check.log").read_text()
    peaks = {m.group(1): ast.literal_eval(m.group(2))["peak_mib"] for m in re.finditer(r"^memory (\w+(?:\.\d+)?): (\{.*\})$", log, re.M)}
    shape = model_shape("smollm2-135m-instruct")
    setup = TrainSetup(dtype="bf16", batch_size=8, max_length=1024, device="cuda", padded=False)
    for variant, ib in (("plain", False), ("ib_f1.00", True)):
        # Half of each row is prompt (label -100): the IB branch sees half the tokens.
        est = estimate(shape, replace(setup, ib_enabled=ib, ib_token_fraction=0.5)).train_peak / 2**20
        assert abs(est - peaks[variant]) <= 0.02 * peaks[variant], (variant, est, peaks[variant])
