"""scripts/barrier_study.py end to end on a tiny random model: every shipped command it chains runs, and the
study holds paired intervals over the same tasks for both bases, per-seed rates, the memorization geometry
and the figure. (Its numbers say nothing here: a random model solves no task.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _tiny_barrier_space(tmp: Path) -> Path:
    data = yaml.safe_load((ROOT / "spaces" / "smollm2-barrier.yaml").read_text())
    data["name"] = "tiny-barrier"
    data["model"] = {
        "name_or_path": "tiny-random-llama",
        "tiny_overrides": {"num_hidden_layers": 2, "initializer_range": 0.2},
        "memorized": {"max_examples": 16, "epochs": 4, "lr": 1e-2, "lora_r": 8, "batch_size": 4, "max_length": 96},
    }
    data["data"].update(max_examples=16, max_length=96)
    data["validation"].update(tasks=3, max_new_tokens=8)
    data["test"].update(tasks=2, max_new_tokens=8)
    data["training"].update(max_steps=2, rung_steps=1)
    data["params"]["tap_layer"] = {"choices": [1]}
    data["ib"] = {"bottleneck_dim": 8}
    path = tmp / "tiny-barrier.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_the_barrier_study_runs_the_shipped_commands_and_pairs_the_bases(tmp_path):
    space, out = _tiny_barrier_space(tmp_path), tmp_path / "study"
    env = {**os.environ, "IBFT_CACHE": str(tmp_path / "cache")}
    argv = [sys.executable, str(ROOT / "scripts" / "barrier_study.py"), str(space), "--seeds", "0", "1", "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    assert study["seeds"] == [0, 1] and study["memorized_base"]["examples"] == 16
    assert study["memorized_base"]["min_k"]["memorized"]["mean"] > study["memorized_base"]["min_k"]["fresh"]["mean"]
    assert {s: study["splits"][s]["tasks"] for s in ("val", "test")} == {"val": 3, "test": 2}
    for split in ("val", "test"):
        for metric in ("pass@1", "pass@10(10)"):
            entry = study["splits"][split]["metrics"][metric]
            assert set(entry["per_seed"]) == {"fresh-seed0", "fresh-seed1", "memorized-seed0", "memorized-seed1",
                                              "fresh-untuned", "memorized-untuned"}
            assert entry["memorized_minus_fresh"]["n_tasks"] == study["splits"][split]["tasks"]
    # The memorized fine-tune really started from the memorized base: its train config carries the recipe.
    saved = json.loads((out / "train" / "memorized-seed0" / "final" / "train_config.json").read_text())
    assert saved["model"]["memorized"]["epochs"] == 4
    assert json.loads((out / "train" / "fresh-seed0" / "final" / "train_config.json").read_text())["model"]["memorized"] is None
    assert set(study["memorization"]) == {"fresh", "memorized"}
    assert (out / "barrier.png").read_bytes().startswith(b"\x89PNG") and "| split | metric |" in (out / "study.md").read_text()
    # A rerun finds every step done and only recomputes the summary.
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "  train " not in again.stderr and "  eval " not in again.stderr
    assert json.loads((out / "study.json").read_text())["splits"] == study["splits"]
