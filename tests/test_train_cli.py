"""`ibft train`: config merging, one-line errors with exit 2, and real runs (tiny model; SmolLM2, slow)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.cli import main
from trainables.commands.train import build_config
from trainables.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_flags_override_the_file_and_set_overrides_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("optim:\n  lr: 5e-4\n  max_steps: 7\nib:\n  alpha: 0.3\nlora:\n  r: 16\n")
    cfg = build_config(
        str(config),
        {"alpha": 0.05, "max_steps": None, "tap_layer": 0.25, "deepspeed_stage": 3},
        ["lora.r=4", "ib.prior_options={components: 3}", "optim.betas=[0.9, 0.95]"],
    )
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)  # YAML 1.1 would read "5e-4" as a string
    assert cfg.optim.max_steps == 7  # an unset flag leaves the file's value
    assert cfg.ib.alpha == 0.05 and cfg.ib.tap_layer == 0.25
    assert cfg.lora.r == 4 and cfg.ib.prior_options == {"components": 3} and cfg.optim.betas == (0.9, 0.95)
    assert cfg.deepspeed is not None and cfg.deepspeed.zero_stage == 3


def test_the_shipped_demo_config_is_valid():
    cfg = build_config(str(REPO / "configs" / "train-smollm2.yaml"))
    assert cfg.model.name_or_path == "smollm2-135m-instruct"
    assert cfg.ib.alpha == 0.1 and cfg.ib.beta == 0.01 and cfg.ib.tap_layer == 0.5
    assert cfg.optim.lr == 5e-4 and cfg.data.max_length == 256


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--alpha", "-1"], "ib.alpha must be a number >= 0"),
        (["--set", "optim.nope=1"], "unknown field(s) nope"),
        (["--set", "novalue"], "expected KEY.PATH=VALUE"),
        (["--lr", "0.1", "--set", "optim.lr.deeper=1"], "which is 0.1, not a mapping"),
        (["--config", "/nonexistent/x.yaml"], "/nonexistent/x.yaml"),
        (["--dtype", "fp8"], "model.dtype must be one of fp32, bf16"),
        (["--deepspeed-stage", "5"], "deepspeed.zero_stage"),
        (["--prior", "cauchy"], "ib.prior 'cauchy' is unknown"),
        (["--max-steps", "ten"], "invalid int value"),
        (["--bogus-flag"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        rc = main(["train", *argv])
        raise SystemExit(rc)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    assert "Traceback" not in err


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        build_config(str(bad))
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        build_config(str(bad))


def _ibft(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "search.cli", "train", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
    )


def test_a_non_finite_loss_ends_the_command_with_a_one_line_error(tmp_path):
    proc = _ibft(
        ["--model", "tiny-random-llama", "--set", "model.tiny_overrides={num_hidden_layers: 2}", "--set", "lora.r=4",
         "--max-examples", "8", "--max-length", "128", "--batch-size", "2", "--max-steps", "5",
         "--set", "debug.fault_nan_at_step=2", "--output-dir", str(tmp_path / "run"), "--no-progress"],
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ibft train: error: non-finite loss at optimizer step 2"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_real_smollm2_run_offline_lowers_the_training_loss(tmp_path):
    out = tmp_path / "run"
    proc = _ibft(
        ["--model", "smollm2-135m-instruct", "--max-steps", "8", "--batch-size", "2", "--max-length", "128",
         "--max-examples", "24", "--lr", "1e-3", "--set", "optim.warmup_steps=2", "--set", "lora.r=8",
         "--alpha", "0.1", "--beta", "0.01", "--tap-layer", "0.5", "--output-dir", str(out)],
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    losses = summary["loss_history"]
    assert summary["steps"] == 8 and len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert "train:" in proc.stderr  # the progress bar
    assert (out / "final" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "final" / "summary.json").read_text())["final_loss"] == summary["final_loss"]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in logged if "step" in m]  # (and one {"start": ...} record: trainables.train.start_clock)
    assert [m["step"] for m in logged] == list(range(1, 9))
    assert all(m["kl_loss"] > 0 and m["ib_ce_loss"] > 0 for m in logged)
