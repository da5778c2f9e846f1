"""bench/search_pace.py: the ASHA budget against the hand-worked figures of docs/cluster.md §8, and the pace
read back from the GPU search's recorded run directory (bench/data/h200-2026-11-29)."""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import search_pace  # noqa: E402

GPU_RUN = ROOT / "bench" / "data" / "h200-2026-11-29" / "smollm2-gpu-run.tgz"


@pytest.mark.parametrize(
    "samples,rungs,rung_steps,grace,rf,steps,vals,tests",
    [
        (16, 6, 20, 1, 3, 640, 32, 16 / 9),  # smollm2-gpu: decision points at rungs 1 and 3
        (40, 8, 250, 2, 3, 35556, 142.2, 40 / 9),  # origen: at rungs 2 and 6
        (6, 3, 8, 1, 2, 84, 10.5, 1.5),  # smollm2-python: at rungs 1 and 2
        (5, 2, 2, 1, 2, 15, 7.5, 2.5),  # smoke: rung 2 is the last, so only rung 1 cuts
    ],
)
def test_asha_budget_matches_the_hand_worked_figures(samples, rungs, rung_steps, grace, rf, steps, vals, tests):
    budget = search_pace.asha_budget(samples, rungs, rung_steps, grace, rf)
    assert budget["trial_steps"] == pytest.approx(steps, abs=0.5)
    assert budget["val_evals"] == pytest.approx(vals, abs=0.05)
    assert budget["test_evals"] == pytest.approx(tests)


def test_pace_of_the_recorded_gpu_search(tmp_path):
    with tarfile.open(GPU_RUN) as archive:
        archive.extractall(tmp_path, filter="data")
    run_dir = tmp_path / "smollm2-gpu"
    paces = search_pace.trial_paces(run_dir)
    assert len(paces["start"]) == len(paces["first_val"]) == 6  # every trial that reported a rung
    assert len(paces["test"]) == 2  # the baseline and the paper setting finished
    assert len(paces["step"]) == 431 - 6 * search_pace.WARMUP_STEPS

    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "search_pace.py"), str(run_dir), "--space", str(ROOT / "spaces" / "smollm2-gpu.yaml")],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "t_step         0.456 s/step" in out
    assert "ASHA: 640 trial-steps, 32.0 validations, 1.8 tests, 16 starts -> 0.184 GPU-hours" in out


def test_a_run_without_results_is_reported_not_priced(tmp_path):
    (tmp_path / "tune").mkdir()
    (tmp_path / "space.yaml").write_text((ROOT / "spaces" / "smoke.yaml").read_text())
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "search_pace.py"), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1 and "has reported a rung" in done.stderr


def test_start_parts_print_in_order_with_their_medians(capsys):
    parts = [{"trial": 0.5, "model_load": 3.0, "first_step": 5.0, "total": 8.5},
             {"trial": 0.1, "model_load": 1.0, "first_step": 6.0, "total": 7.1},
             {"trial": 0.3, "model_load": 2.0, "first_step": 4.0, "total": 6.3}]
    search_pace.print_start_parts(parts)
    lines = capsys.readouterr().out.splitlines()
    assert "median over 3 trial start(s)" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["trial", "model_load", "first_step", "total"]
    assert lines[2].split()[1] == "2.00" and "(1.00-3.00)" in lines[2]
    search_pace.print_start_parts([])
    assert "none recorded" in capsys.readouterr().out


def test_trial_start_bench_cuts_the_space_and_chooses_the_trial_path(tmp_path):
    import trial_start
    from search.space import load_space

    for in_trial in (False, True):
        path = trial_start.short_space(ROOT / "spaces" / "smollm2-python.yaml", tmp_path / f"{in_trial}.yaml",
                                       in_trial=in_trial, rung_steps=2)
        space = load_space(path)  # still a valid space
        assert (space.training.max_steps, space.training.rung_steps, space.num_rungs) == (4, 2, 2)
        assert space.resources.worker_in_trial is in_trial
        assert (space.validation.tasks, space.test.tasks) == (3, 2)
        assert space.num_samples == 6 and space.max_concurrent == 2  # the demo's trials and concurrency
