"""optim.gradient_checkpointing: the decoder blocks recompute their activations in the backward pass, and training
is otherwise unchanged: the same losses and the same gradient of every trainable parameter (LoRA and IB head),
under plain torch with each IB CE kernel and under DeepSpeed ZeRO-2/3; validation generation still works with it on.

Kernels: "checkpointed" and "fused" run here on CPU; "fused_compiled" (torch.compile, a Triton kernel on CUDA) runs
only where a GPU is present (on CPU it would compile C++ for minutes of a 2-core machine's time for the same math
test_ib_ce_kernels.py already checks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ib_tiny_models import example, pad_batch, tiny_lora
from test_train_deepspeed import one_rank_gloo_group  # noqa: F401  (a fixture)
from test_train_loop import final_weights, tiny_config
from trainables.ib import IBConfig, IBModel
from trainables.train import checkpoint as ckpt
from trainables.train.engine import TorchEngine
from trainables.train.loop import TrainHooks, train

REPO = Path(__file__).resolve().parents[1]
LAYERS = 2
"""tiny_config's model: 2 decoder blocks."""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def step_grads(monkeypatch):
    """Per optimizer step of a plain-torch run: every trainable parameter's gradient just before the update."""
    grads: list[dict[str, torch.Tensor]] = []
    step = TorchEngine.step

    def recording_step(self):
        grads.append({n: p.grad.detach().clone() for n, p in self.module.named_parameters() if p.grad is not None})
        return step(self)

    monkeypatch.setattr(TorchEngine, "step", recording_step)
    return grads


@pytest.fixture
def attention_calls(monkeypatch):
    """One entry per LlamaAttention forward (the module's training flag): a checkpointed block runs it twice."""
    from transformers.models.llama import modeling_llama

    calls: list[bool] = []
    forward = modeling_llama.LlamaAttention.forward

    def counted(self, *args, **kwargs):
        calls.append(self.training)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", counted)
    return calls


def _assert_same_gradients(plain: list[dict], checkpointed: list[dict]) -> None:
    # Bit-identical on CPU with non-reentrant checkpointing; the tolerance admits reordered fp sums only
    # (reentrant checkpointing, measured: 2e-9 absolute, 3e-6 relative on one element).
    assert len(plain) == len(checkpointed) > 0
    for step, (a, b) in enumerate(zip(plain, checkpointed), start=1):
        assert a.keys() == b.keys(), step
        assert any("lora_A" in n for n in a) and any("lora_B" in n for n in a) and any("ib_head" in n for n in a)
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-8, msg=lambda m: f"step {step} {name}: {m}")


CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel of fused_compiled needs CUDA")


@pytest.mark.parametrize("kernel", ["checkpointed", "fused", pytest.param("fused_compiled", marks=CUDA_ONLY)])
def test_training_steps_have_the_same_losses_and_gradients_with_checkpointing(
    tmp_path, kernel, step_grads, attention_calls, ce_kernels_used
):
    # tiny_config keeps LoRA dropout (0.1) and the IB posterior's sampling noise: the recompute must replay the
    # forward's dropout masks exactly (torch's checkpoint restores the RNG state) and not move the RNG stream.
    runs = {}
    for on in (False, True):
        step_grads.clear(), attention_calls.clear(), ce_kernels_used.clear()
        summary = train(
            tiny_config(tmp_path / str(on), ib={"ce_kernel": kernel}, optim={"max_steps": 2, "gradient_checkpointing": on})
        )
        assert set(ce_kernels_used) == {kernel}
        runs[on] = summary["loss_history"], list(step_grads), len(attention_calls)
    (plain_losses, plain_grads, plain_calls), (gc_losses, gc_grads, gc_calls) = runs[False], runs[True]
    # Each block ran once per micro-batch without checkpointing, and once more in each backward with it.
    assert plain_calls == 2 * LAYERS and gc_calls == 2 * plain_calls
    assert gc_losses == pytest.approx(plain_losses, rel=1e-6, abs=0)
    _assert_same_gradients(plain_grads, gc_grads)


@pytest.mark.slow  # a few seconds each, but the first DeepSpeed engine of a process takes about a minute
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_the_same_with_checkpointing(tmp_path, one_rank_gloo_group, stage, attention_calls):  # noqa: F811
    runs = {}
    for on in (False, True):
        attention_calls.clear()
        norms: list[float] = []
        summary = train(
            tiny_config(
                tmp_path / str(on),
                optim={"max_steps": 3, "gradient_checkpointing": on},
                deepspeed={"zero_stage": stage},
                checkpoint_every=0,
            ),
            hooks=TrainHooks(on_log=lambda step, metrics: norms.append(metrics["grad_norm"])),
        )
        assert summary["engine"] == "deepspeed" and summary["steps"] == 3
        runs[on] = summary["loss_history"], norms, final_weights(tmp_path / str(on)), len(attention_calls)
    (plain_losses, plain_norms, plain_weights, plain_calls) = runs[False]
    (gc_losses, gc_norms, gc_weights, gc_calls) = runs[True]
    assert plain_calls == 3 * LAYERS and gc_calls == 2 * plain_calls
    assert gc_losses == pytest.approx(plain_losses, rel=1e-6, abs=0)
    assert gc_norms == pytest.approx(plain_norms, rel=1e-6, abs=0)  # the whole gradient, step by step
    assert plain_weights.keys() == gc_weights.keys() and any(k.startswith("ib.") for k in plain_weights)
    for name, tensor in plain_weights.items():
        torch.testing.assert_close(gc_weights[name], tensor, rtol=1e-6, atol=1e-8, msg=lambda m: f"{name}: {m}")


def test_validation_generation_at_a_rung_works_and_matches_with_checkpointing_on(tmp_path, attention_calls):
    """A rung's generation runs in eval mode with the KV cache though training turned use_cache off: the samples
    are those of the same weights trained without checkpointing, and every block ran once per decode step."""
    from trainables.generation import GenerationSettings, generate_samples

    settings = GenerationSettings(temperature=0.8, max_new_tokens=12, stop_after_code_block=False, batch_size=8)
    prompts = ["Write a Python function that returns the sum of a list.", "def fib(n):"]

    def run(on: bool) -> tuple[list[list[str]], int]:
        seen: dict = {}

        def on_rung(step, model, tokenizer, checkpoint_dir):
            base = model.get_base_model()
            assert not model.training
            assert base.config.use_cache is not on  # off for training with checkpointing, left alone without
            assert base.is_activation_checkpointing is on
            attention_calls.clear()
            output = generate_samples(model, tokenizer, prompts, 2, settings, seed=5)
            seen["texts"], seen["new_tokens"], seen["calls"] = output.texts, output.new_tokens, list(attention_calls)
            return None

        train(
            tiny_config(tmp_path / str(on), optim={"max_steps": 2, "gradient_checkpointing": on}),
            hooks=TrainHooks(on_rung=on_rung, rung_every=2),
        )
        assert seen["new_tokens"] > 0 and not any(seen["calls"])  # generation ran in eval mode only
        return seen["texts"], len(seen["calls"])

    plain_texts, plain_calls = run(False)
    gc_texts, gc_calls = run(True)
    assert gc_texts == plain_texts and any(t for row in gc_texts for t in row)
    # Prefill + one forward per further token, each through every block once: nothing was recomputed or re-encoded.
    assert gc_calls == plain_calls


def test_the_tap_hook_is_gone_before_the_backward_so_a_recompute_cannot_reach_it():
    """IBModel reads the tapped hidden state in its forward and removes the hook when the forward ends: the
    recompute of checkpointed blocks in the backward runs no tap hook and leaves the tap empty."""
    torch.manual_seed(0)
    base = tiny_lora()
    base.get_base_model().activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = IBModel(base, IBConfig(alpha=0.5, beta=1.0, tap_layer=2, bottleneck_dim=16)).train()
    tap = model._tap
    calls = []
    before_block = tap._before_block
    tap._before_block = lambda *args: calls.append(torch.is_grad_enabled()) or before_block(*args)
    out = model(**pad_batch([example(20, 6, 1), example(12, 4, 2)], "right"))
    assert calls == [True] and tap.hidden is None and not tap.blocks[tap.index]._forward_pre_hooks
    out.loss.backward()
    assert calls == [True] and tap.hidden is None
    assert all(p.grad is not None for p in model.ib_head.parameters() if p.requires_grad)
    assert all(p.grad is not None for n, p in base.named_parameters() if "lora_" in n)


def test_a_recompute_that_does_reach_the_tap_hook_keeps_the_forward_capture():
    """Were a backward to run while the hook is still registered (a whole-model checkpoint inside `capture()`),
    the recomputed pass must not replace the tensor the forward captured (it would belong to another graph)."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    base = tiny_lora()
    model = IBModel(base, IBConfig(alpha=0.5, beta=1.0, tap_layer=2, bottleneck_dim=16)).train()
    tap = model._tap
    batch = pad_batch([example(20, 6, 1), example(12, 4, 2)], "right")
    calls = []
    before_block = tap._before_block
    tap._before_block = lambda *args: calls.append(1) or before_block(*args)
    with tap.capture():
        loss = checkpoint(lambda ids: base(input_ids=ids, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss,
                          batch["input_ids"], use_reentrant=False)
        captured = tap.hidden
        loss.backward()
        assert len(calls) == 2  # the recompute did run the hook
        assert tap.hidden is captured
    assert tap.take() is captured


def test_the_search_spaces_pass_gradient_checkpointing_to_the_trial_config():
    from search.space import load_space
    from search.tuner import trial_setup
    from trainables.train.config import TrainConfig
    from trainables.tune_trainable import train_config_dict

    for name, expected in (("origen", True), ("evol-codealpaca", True), ("smollm2-gpu", False), ("smoke", False)):
        space = load_space(REPO / "spaces" / f"{name}.yaml")
        assert space.training.gradient_checkpointing is expected, name
        setup = json.loads(json.dumps(trial_setup(space, Path("/tmp/unused"))))  # plain data, as Tune hands it over
        cfg = TrainConfig.from_dict(train_config_dict(setup, space.paper_params(), output_dir="/tmp/x", optuna_trial=0))
        assert cfg.optim.gradient_checkpointing is expected, name


def test_ibft_train_with_gradient_checkpointing_trains_like_without(tmp_path):
    """`ibft train --set optim.gradient_checkpointing=true` end to end (a subprocess), against the same run in-process
    without checkpointing."""
    from trainables.commands.train import build_config

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {name_or_path: tiny-random-llama, tiny_overrides: {num_hidden_layers: 2}}\n"
        "lora: {r: 4, alpha: 8}\n"
        "ib: {alpha: 0.1, beta: 0.01, tap_layer: 1, bottleneck_dim: 16}\n"
        "data: {max_examples: 8, max_length: 128}\n"
        "optim: {lr: 2.0e-3, warmup_steps: 1, max_steps: 2, batch_size: 2}\n"
        "seed: 3\n"
    )
    out = tmp_path / "gc"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", "train", "--config", str(config),
         "--set", "optim.gradient_checkpointing=true", "--output-dir", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    saved = json.loads((out / ckpt.FINAL_DIR / ckpt.TRAIN_CONFIG_FILE).read_text())
    assert saved["optim"]["gradient_checkpointing"] is True and summary["steps"] == 2

    plain_cfg = build_config(str(config), None, [f"output_dir={tmp_path / 'plain'}"])
    assert plain_cfg.optim.gradient_checkpointing is False
    plain = train(plain_cfg)
    assert summary["loss_history"] == pytest.approx(plain["loss_history"], rel=1e-6)
    gc_weights, plain_weights = final_weights(out), final_weights(tmp_path / "plain")
    for name, tensor in plain_weights.items():
        torch.testing.assert_close(gc_weights[name], tensor, rtol=1e-5, atol=1e-7)
