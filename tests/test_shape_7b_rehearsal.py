"""bench/shape_7b.py (the 7B-shape GPU check) rehearsed on CPU at a tiny scale, and bench/gpu_check.sh parsed, so
the script a lent GPU runs has already run through every line here (model build, LoRA, IB, checkpointing,
DeepSpeed ZeRO-2, the timed steps, the decode loop, the estimate)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_shape_7b_rehearsal_runs_the_whole_check_on_cpu():
    run = subprocess.run(
        [sys.executable, "bench/shape_7b.py", "--device", "cpu", "--dtype", "fp32", "--layers", "2", "--hidden", "256",
         "--vocab", "4096", "--seq", "64", "--batch", "2", "--decode-rows", "10", "--decode-new", "4", "--steps", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["shape"] == {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "vocab_size": 4096}
    assert result["gradient_checkpointing"] and result["zero_stage"] == 2
    assert result["step_s"] > 0 and result["tokens_per_s"] > 0 and result["estimate_train_gib"] > 0
    # 1 prompt x 10 samples, every row runs to its 4 new tokens (no EOS among random ids)
    assert (result["decode_rows"], result["decode_new_tokens"]) == (10, 40)
    assert "memory per GPU" in run.stderr


def test_gpu_check_script_parses_and_runs_the_7b_shape():
    script = (REPO / "bench" / "gpu_check.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_check.sh")]).returncode == 0
    assert "bench/shape_7b.py --device cuda" in script
