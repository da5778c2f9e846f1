"""A trial's start: where it goes (StartClock), the one-worker path that trains in the trial's own process, and its
rung checkpoints laid out as Ray Train's (trainables.rung_checkpoints)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainables import rung_checkpoints
from trainables.train.start_clock import START_PARTS, StartClock

COMMIT = "rung_metrics.json"


# ---- StartClock: hand-worked marks ------------------------------------------------------------------------------


def test_parts_are_the_gaps_between_marks_named_by_the_later_one():
    clock = StartClock({"start": 100.0, "trial": 100.5, "worker_process": 104.0, "worker_loop": 109.0})
    clock.mark("imports", 109.25)
    clock.mark("model_load", 112.25)
    clock.mark("first_step", 117.25)
    assert clock.parts() == {
        "trial": 0.5, "worker_process": 3.5, "worker_loop": 5.0, "imports": 0.25, "model_load": 3.0,
        "first_step": 5.0, "total": 17.25,
    }


def test_a_missing_mark_folds_its_part_into_the_next():
    # The in-trial path has no worker process or worker loop: imports runs from the trial mark.
    clock = StartClock({"start": 10.0, "trial": 10.5, "imports": 11.0, "first_step": 13.0})
    assert clock.parts() == {"trial": 0.5, "imports": 0.5, "first_step": 2.0, "total": 3.0}


def test_a_worker_process_started_before_the_trial_counts_zero():
    # Ray may hand the trial a worker process it started earlier: that part is 0, and the next runs from the trial.
    clock = StartClock({"start": 50.0, "trial": 51.0, "worker_process": 20.0, "worker_loop": 53.0})
    assert clock.parts() == {"trial": 1.0, "worker_process": 0.0, "worker_loop": 2.0, "total": 3.0}


def test_without_a_start_mark_the_first_mark_starts_the_clock():
    assert StartClock({"imports": 5.0, "model_load": 7.0}).parts() == {"model_load": 2.0, "total": 2.0}
    assert StartClock().parts() == {}
    assert list(START_PARTS)[-1] == "first_step"


def test_ibft_train_writes_its_start_parts_once_to_the_step_log(tmp_path):
    from trainables.train import TrainConfig, train

    cfg = TrainConfig.from_dict({
        "model": {"name_or_path": "tiny-random-llama", "tiny_overrides": {"num_hidden_layers": 2}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "ib": {"alpha": 0.1, "beta": 0.02, "tap_layer": 1, "bottleneck_dim": 8},
        "data": {"source": "builtin:python-functions", "max_examples": 8, "max_length": 64},
        "optim": {"max_steps": 2, "batch_size": 2, "warmup_steps": 0},
        "output_dir": str(tmp_path / "out"),
    })
    summary = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in rows if "start" in r]
    assert len(starts) == 1 and "step" not in starts[0]
    parts = starts[0]["start"]
    assert set(parts) == {"imports", "model_load", "adapters", "data", "engine", "first_step", "total"}
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    assert summary["start_s"] == parts
    assert [r["step"] for r in rows if "step" in r] == [1, 2]


# ---- rung checkpoints -------------------------------------------------------------------------------------------


def _step_dir(root: Path, rung: int, commit: bool = True) -> Path:
    step = root / f"step-{rung}"
    (step / "adapter").mkdir(parents=True)
    (step / "adapter" / "weights.bin").write_bytes(bytes([rung]) * 16)
    if commit:
        (step / COMMIT).write_text(json.dumps({"rung": rung, "step": 2 * rung}))
    return step


@pytest.mark.parametrize("uri", [False, True], ids=["local", "uri"])
def test_persist_prune_and_latest_keep_ray_trains_layout(tmp_path, uri):
    """file:// takes the object-store branch (pyarrow.fs) without a server; tests/test_storage_s3.py runs S3."""
    work = tmp_path / "work"
    trial_root = (tmp_path / "trial").as_uri() if uri else str(tmp_path / "trial")
    assert rung_checkpoints.latest(trial_root, COMMIT) is None
    paths = [rung_checkpoints.persist(_step_dir(work, rung), trial_root, COMMIT) for rung in (1, 2, 3)]
    for rung in (1, 2, 3):
        assert not (work / f"step-{rung}").exists()  # moved or uploaded, never left twice
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in paths]
    assert names == sorted(names) and all(n.startswith("checkpoint_") for n in names)
    rung_checkpoints.prune(trial_root, COMMIT)
    assert [r for r, _, _ in rung_checkpoints.complete(trial_root, COMMIT)] == [2, 3]
    assert rung_checkpoints.latest(trial_root, COMMIT) == paths[2]
    local = rung_checkpoints.local_copy(paths[2], tmp_path / "scratch")
    assert (local / "adapter" / "weights.bin").read_bytes() == bytes([3]) * 16
    assert json.loads((local / COMMIT).read_text())["rung"] == 3


def test_a_checkpoint_without_its_commit_file_is_never_resumed_from(tmp_path):
    trial_root = tmp_path / "trial"
    done = rung_checkpoints.persist(_step_dir(tmp_path / "work", 1), str(trial_root), COMMIT)
    half = trial_root / rung_checkpoints.new_name()  # a crash mid-upload: files, no commit file
    half.mkdir(parents=True)
    (half / "trainer_state.pt").write_bytes(b"x")
    assert rung_checkpoints.latest(str(trial_root), COMMIT) == done
    rung_checkpoints.prune(str(trial_root), COMMIT, keep=1)
    assert half.is_dir()  # an incomplete checkpoint may be one still being written: prune leaves it
    with pytest.raises(FileNotFoundError, match="no rung_metrics.json"):
        rung_checkpoints.persist(_step_dir(tmp_path / "work2", 2, commit=False), str(trial_root), COMMIT)


# ---- the two trial paths train the same trial identically ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_in_trial_and_ray_train_paths_train_identically(tmp_path):
    """The same two trials (baseline and paper: fixed configs, one seed) through Ray Train and in the trial's own
    process: the same loss at every step, the same adapter and IB head at every rung, the same rung metrics, the
    checkpoints in the same place; and only the in-trial path skips Ray Train's controller. In-trial, one trial at
    a time, the paper trial runs in the process the baseline trained in (Tune reuses it): what a trial may inherit
    from an earlier one changes nothing it computes."""
    from search.results import read_trials_csv
    from smoke_search import finish_tune, smoke_space_file, start_tune

    runs = {}
    for name, in_trial in (("train", False), ("intrial", True)):
        (tmp_path / name).mkdir()
        space = smoke_space_file(
            tmp_path / name,
            num_samples=2,
            max_concurrent=1 if in_trial else 2,
            asha={"metric": "val/pass@2(2)", "grace_period": 2, "reduction_factor": 2, "max_rungs": 2},
            resources={"workers": 1, "cpus_per_worker": 1, "worker_in_trial": in_trial},
            memorization={"enabled": False},
        )
        code, out, err = finish_tune(start_tune([str(space), "--name", name, "--storage-path", str(tmp_path / "runs")]),
                                     timeout=800)
        assert code == 0, err[-4000:]
        run_dir = tmp_path / "runs" / name
        runs[name] = {row["role"]: (run_dir / "trials" / row["trial_id"], row) for row in read_trials_csv(run_dir / "trials.csv")}

    assert set(runs["train"]) == set(runs["intrial"]) == {"baseline", "paper"}
    for role in ("baseline", "paper"):
        (train_root, train_row), (own_root, own_row) = runs["train"][role], runs["intrial"][role]
        assert train_row["state"] == own_row["state"] == "COMPLETE"
        assert _step_losses(own_root) == _step_losses(train_root)
        assert {k: v for k, v in own_row.items() if k.startswith("val/pass@")} == {
            k: v for k, v in train_row.items() if k.startswith("val/pass@")}
        own, theirs = _rung_checkpoints(own_root), _rung_checkpoints(train_root)
        assert sorted(own) == sorted(theirs) == [1, 2]
        for rung in (1, 2):
            weights = sorted(p.relative_to(own[rung]) for p in own[rung].rglob("*.safetensors"))
            assert weights == sorted(p.relative_to(theirs[rung]) for p in theirs[rung].rglob("*.safetensors"))
            assert Path("adapter/adapter_model.safetensors") in weights  # (the baseline has no IB head to save)
            for rel in weights:
                a, b = load_file(own[rung] / rel), load_file(theirs[rung] / rel)
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (role, rung, rel)
        assert Path(own_row["checkpoint_path"]).parent == own_root
        assert (train_root / "checkpoint_manager_snapshot.json").is_file()
        assert not (own_root / "checkpoint_manager_snapshot.json").exists()  # no Ray Train run behind it
        own_start = _start_parts(own_root)
        assert "worker_process" not in own_start and {"model_load", "first_step"} <= set(own_start)
        assert {"worker_process", "worker_loop", "model_load"} <= set(_start_parts(train_root))
    pids = {role: _start_record(root)["pid"] for role, (root, _) in runs["intrial"].items()}
    assert pids["baseline"] == pids["paper"], pids  # the second trial reused the first one's process


def _step_losses(trial_root: Path) -> list[tuple[int, float, float, float]]:
    rows = [json.loads(line) for line in (trial_root / "work" / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["ce_loss"], r["kl_loss"]) for r in rows if "step" in r]


def _rung_checkpoints(trial_root: Path) -> dict[int, Path]:
    return {json.loads((p / COMMIT).read_text())["rung"]: p for p in trial_root.glob("checkpoint_*") if (p / COMMIT).is_file()}


def _start_record(trial_root: Path) -> dict:
    rows = [json.loads(line) for line in (trial_root / "work" / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if "start" in r)


def _start_parts(trial_root: Path) -> dict[str, float]:
    return _start_record(trial_root)["start"]
