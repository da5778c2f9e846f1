"""The memorization-barrier testbed: `ibft memorize` really makes a model memorize (its Min-K% Prob on the
examples rises), caches it once, trials load it, and the barrier space and its recipe validate."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from search.cli import main
from search.space import load_space
from search.tuner import trial_setup
from trainables.errors import ConfigError
from trainables.memorization.memorize import RECIPE_FILE, ensure_memorized_base, memorized_base_dir
from trainables.models import load_model_and_tokenizer
from trainables.train.config import MemorizedBase, ModelConfig, TrainConfig
from trainables.tune_trainable import train_config_dict

ROOT = Path(__file__).resolve().parents[1]
# A random model initialised at 0.02 has logits within about ±1 whatever LoRA does to its blocks (the tied
# embeddings stay small), so it cannot learn anything by heart; at 0.2 it can.
TINY = ModelConfig(name_or_path="tiny-random-llama", tiny_overrides={"num_hidden_layers": 2, "initializer_range": 0.2})
# 8 examples, 24 passes at a high rate: enough for a 2-layer random model to learn them by heart in seconds.
RECIPE = MemorizedBase(max_examples=8, epochs=24, lr=1e-2, lora_r=16, batch_size=4, max_length=96)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One IBFT_CACHE for the module: the tiny memorized base is built once (the first test checks that)."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("cache")
        patch.setenv("IBFT_CACHE", str(folder))
        yield folder


def test_a_tiny_model_memorizes_its_examples_and_is_built_once(cache, one_torch_thread):
    assert not memorized_base_dir(TINY, RECIPE).exists()
    folder = ensure_memorized_base(TINY, RECIPE, progress=False)
    assert folder == memorized_base_dir(TINY, RECIPE) and folder.is_relative_to(cache / "memorized")
    record = json.loads((folder / RECIPE_FILE).read_text())
    assert record["examples"] == 8 and record["steps"] == 48
    min_k = record["min_k"]
    # Min-K% (mean log-prob of the 20% least likely response tokens) of the random model is about -14 (measured);
    # memorized, the same tokens are far likelier on every example (about -6).
    assert min_k["fresh"]["mean"] < -10
    assert min_k["memorized"]["mean"] > min_k["fresh"]["mean"] + 5, min_k
    assert min_k["rose_fraction"] == 1.0
    assert record["final_loss"] < record["first_loss"] / 3
    assert not (folder / "_train").exists()  # the intermediate adapter run is not kept

    stamp = (folder / RECIPE_FILE).stat().st_mtime_ns
    assert ensure_memorized_base(TINY, RECIPE, progress=False) == folder
    assert (folder / RECIPE_FILE).stat().st_mtime_ns == stamp  # found in the cache, not built again
    # Another recipe is another base; the same recipe spelt differently (3 or 3.0 epochs) is the same.
    other = MemorizedBase(**{**RECIPE.__dict__, "epochs": 2})
    assert memorized_base_dir(TINY, other) != folder
    assert memorized_base_dir(TINY, MemorizedBase(epochs=3, lr=1)) == memorized_base_dir(TINY, MemorizedBase(epochs=3.0, lr=1.0))


def test_a_model_config_with_a_recipe_loads_the_memorized_weights(cache, one_torch_thread):
    folder = ensure_memorized_base(TINY, RECIPE, progress=False)
    memorized, _ = load_model_and_tokenizer(ModelConfig(**{**TINY.__dict__, "memorized": RECIPE}))
    fresh, _ = load_model_and_tokenizer(TINY)
    from transformers import AutoModelForCausalLM

    cached = AutoModelForCausalLM.from_pretrained(folder)
    for (name, a), (_, b), (_, c) in zip(
        memorized.state_dict().items(), cached.state_dict().items(), fresh.state_dict().items()
    ):
        assert torch.equal(a, b), name
    changed = [n for (n, a), (_, c) in zip(memorized.state_dict().items(), fresh.state_dict().items()) if not torch.equal(a, c)]
    assert any("q_proj" in n for n in changed) and any("down_proj" in n for n in changed)


def test_ibft_memorization_compares_a_run_from_a_memorized_base_with_that_base(cache, tmp_path, capsys, one_torch_thread):
    from trainables.train.loop import train

    folder = ensure_memorized_base(TINY, RECIPE, progress=False)
    cfg = TrainConfig.from_dict({
        "model": {**TINY.__dict__, "memorized": RECIPE.__dict__},
        "ib": {"alpha": 0.0, "tap_layer": 1, "bottleneck_dim": 8},
        "data": {"max_examples": 12, "max_length": 96},
        "optim": {"max_steps": 1, "batch_size": 2, "warmup_steps": 0},
        "output_dir": str(tmp_path / "run"),
    })
    train(cfg)
    summaries = []
    for extra in ([], ["--model", str(folder)]):
        argv = ["memorization", "--adapter", str(tmp_path / "run"), "--out", str(tmp_path / f"m{len(extra)}"), "--no-plots"]
        assert main(argv + extra) == 0
        summaries.append(json.loads(capsys.readouterr().out))
    # Without --model the run's own base is rebuilt from its recipe: the memorized one, not the fresh model.
    assert summaries[0]["models"]["base"]["min_k"] == summaries[1]["models"]["base"]["min_k"]
    assert summaries[0]["min_k_mean_base"] > -10  # the fresh random model's is about -14


def test_ibft_memorize_prints_the_record_and_says_when_it_is_cached(cache, capsys, one_torch_thread):
    argv = ["memorize", "--model", "tiny-random-llama", "--max-examples", "4", "--epochs", "2", "--batch-size", "2",
            "--max-length", "64", "--lora-r", "4"]
    assert main(argv) == 0
    first = capsys.readouterr()
    record = json.loads(first.out)
    assert record["examples"] == 4 and record["steps"] == 4 and Path(record["path"]).is_dir()
    assert "ibft memorize: 4 examples of builtin:python-functions, 2 epochs = 4 steps" in first.err
    assert main(argv) == 0
    second = capsys.readouterr()
    assert json.loads(second.out) == record and "cached at" in second.err


def test_ibft_memorize_errors(tmp_path, capsys):
    assert main(["memorize"]) == 2
    assert "give a SPACE.yaml with a model.memorized recipe, or --model" in capsys.readouterr().err
    assert main(["memorize", str(ROOT / "spaces" / "smoke.yaml")]) == 2
    assert "has no model.memorized recipe" in capsys.readouterr().err
    assert main(["memorize", "--model", "tiny-random-llama", "--epochs", "0"]) == 2
    assert "model.memorized.epochs must be > 0, got 0.0" in capsys.readouterr().err


def test_the_barrier_space_starts_every_trial_from_its_memorized_base(tmp_path):
    space = load_space(ROOT / "spaces" / "smollm2-barrier.yaml")
    recipe = space.model.memorized_recipe()
    assert recipe.data == space.data.source and recipe.prompt_format == space.data.prompt_format
    assert recipe.max_examples == space.data.max_examples  # it memorizes what its trials fine-tune on
    setup = trial_setup(space, tmp_path)
    params = {"alpha": 0.1, "beta": 0.01, "tap_layer": 20, "prior": "standard_normal", "prior_options": {}}
    cfg = TrainConfig.from_dict(train_config_dict(setup, params, output_dir=str(tmp_path / "t"), optuna_trial=0))
    assert cfg.model.memorized == recipe and cfg.model.name_or_path == "smollm2-135m-instruct"
    saved = TrainConfig.from_saved(json.loads(json.dumps(cfg.to_dict())))  # a checkpoint's train_config.json
    assert saved.model.memorized == recipe


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"epochs": -1}, "model.memorized: epochs must be > 0, got -1"),
        ({"lora_r": 0}, "model.memorized: lora_r must be a positive int, got 0"),
        ({"prompt_format": "xml"}, "model.memorized: prompt_format must be one of auto, chat, plain, official, got 'xml'"),
        ({"epochs": "x"}, "model.memorized: epochs must be a number, got 'x'"),
        ({"epoch": 3}, "model.memorized: unknown field(s) epoch; allowed: data, max_examples, epochs"),
    ],
)
def test_a_bad_recipe_in_a_space_is_a_one_line_error(tmp_path, recipe, message):
    import yaml

    data = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    data["model"]["memorized"] = recipe
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as error:
        load_space(path)
    assert message in str(error.value)


@pytest.mark.slow
def test_ibft_tune_builds_the_memorized_base_once_and_its_trials_train_from_it(tmp_path):
    """A real search on a local Ray cluster: the driver builds the base before the first trial, and each trial's
    first loss is the memorized model's, far below the fresh random model's."""
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from smoke_search import finish_tune, smoke_space_file, start_tune

    recipe = {"max_examples": 32, "epochs": 6, "lr": 1e-2, "lora_r": 16, "batch_size": 4, "max_length": 128}
    model = {"name_or_path": "tiny-random-llama", "tiny_overrides": dict(TINY.tiny_overrides), "memorized": recipe}
    space = smoke_space_file(
        tmp_path, model=model, num_samples=2, training={"max_steps": 4, "rung_steps": 2, "lr": 1e-3, "warmup_steps": 0,
                                                       "batch_size": 2}, memorization={"enabled": False},
    )
    env = {**os.environ, "IBFT_CACHE": str(tmp_path / "cache")}
    proc = start_tune([str(space), "--name", "barrier", "--storage-path", str(tmp_path / "runs")], env=env)
    code, out, err = finish_tune(proc, timeout=900)
    assert code == 0, err[-3000:]
    built = list((tmp_path / "cache" / "memorized").iterdir())
    assert len(built) == 1 and f"trials start from the memorized base {built[0]}" in err
    fresh_first_loss = json.loads((built[0] / RECIPE_FILE).read_text())["first_loss"]
    trial_dirs = sorted((tmp_path / "runs" / "barrier" / "trials").iterdir())
    assert len(trial_dirs) == 2
    for trial in trial_dirs:
        saved = json.loads(next(trial.rglob("train_config.json")).read_text())
        assert saved["model"]["memorized"]["epochs"] == 6
        steps = [json.loads(line) for line in (trial / "work" / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
        assert steps[0]["ce_loss"] < fresh_first_loss - 3, (steps[0], fresh_first_loss)
