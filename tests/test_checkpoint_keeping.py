"""Checkpoints stored once, and a stopped trial slimmed to its last rung's adapter (space keep_checkpoints)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]


def _rung_checkpoint(path: Path, rung: int) -> Path:
    path.mkdir(parents=True)
    (path / "rung_metrics.json").write_text(json.dumps({"rung": rung, "step": 2 * rung}))
    (path / "task_counts.json").write_text(json.dumps({"rung": rung, "step": 2 * rung, "val": {"t": [2, 1]}}))
    (path / "train_config.json").write_text("{}")
    (path / "ib_config.json").write_text("{}")
    (path / "ib_head.safetensors").write_bytes(b"h" * 100)
    (path / "adapter").mkdir()
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"a" * 1000)
    (path / "trainer_state.pt").write_bytes(b"s" * 5000)
    (path / "deepspeed" / "step").mkdir(parents=True)
    (path / "deepspeed" / "step" / "optim_states.pt").write_bytes(b"o" * 7000)
    return path


def _trial_dir(root: Path) -> Path:
    trial = root / "trials" / "t1"
    # Ray names its copies by time; the rung in rung_metrics.json decides which is the last.
    _rung_checkpoint(trial / "checkpoint_2026-12-01_00-00-09", 1)
    _rung_checkpoint(trial / "checkpoint_2026-12-01_00-00-10", 2)
    _rung_checkpoint(trial / "work" / "checkpoints" / "step-4", 2)
    (trial / "work" / "metrics.jsonl").write_text('{"step": 1}\n')
    return trial


def test_a_stopped_trial_keeps_only_its_last_rungs_adapter_and_what_the_report_reads(tmp_path):
    from search.checkpoints import slim_stopped_trial

    trial = _trial_dir(tmp_path)
    before = sum(p.stat().st_size for p in trial.rglob("*") if p.is_file())
    freed = slim_stopped_trial(trial)
    left = sorted(str(p.relative_to(trial)) for p in trial.rglob("*") if p.is_file())
    last = "checkpoint_2026-12-01_00-00-10"
    assert left == sorted(
        [f"{last}/{name}" for name in ("rung_metrics.json", "task_counts.json", "train_config.json", "ib_config.json",
                                       "ib_head.safetensors", "adapter/adapter_model.safetensors")]
        + ["work/metrics.jsonl"]
    )
    assert freed == before - sum(p.stat().st_size for p in trial.rglob("*") if p.is_file())
    assert freed >= 3 * (5000 + 7000) + 2 * 1000  # three engine states, two adapters
    assert json.loads((trial / last / "task_counts.json").read_text())["rung"] == 2


@pytest.mark.parametrize("half_copied", [False, True])
def test_a_stopped_trial_keeps_its_last_reported_rung_not_a_newer_one_on_disk(tmp_path, half_copied):
    # A stopped trial trains on while the driver decides: its rung-2 checkpoint can land (whole, or half-copied when
    # the trial is killed) after the rung-1 result ASHA stopped it on. The report reads rung 1's task counts (the
    # rung its results end at), so rung 1 must stay. A CI run lost them this way.
    from search.checkpoints import slim_stopped_trial

    trial = _trial_dir(tmp_path)
    newer = trial / "checkpoint_2026-12-01_00-00-10"
    if half_copied:
        (newer / "task_counts.json").unlink()
    slim_stopped_trial(trial, reported_rung=1)
    kept = [p.name for p in trial.glob("checkpoint_*")]
    assert kept == ["checkpoint_2026-12-01_00-00-09"]
    counts = json.loads((trial / kept[0] / "task_counts.json").read_text())
    assert (counts["rung"], counts["val"]) == (1, {"t": [2, 1]})
    assert not (trial / kept[0] / "trainer_state.pt").exists()
    # A reported rung whose checkpoint is missing: nothing is removed rather than the wrong one.
    other = _trial_dir(tmp_path / "other")
    slim_stopped_trial(other, reported_rung=3)
    assert len(list(other.glob("checkpoint_*/trainer_state.pt"))) == 2


def test_the_callback_slims_only_trials_the_study_holds_as_pruned(tmp_path):
    from search.checkpoints import SlimStoppedTrials

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize"])
    states = {}
    for number, state in enumerate((TrialState.PRUNED, TrialState.COMPLETE, TrialState.RUNNING)):
        t = study.ask()
        if state == TrialState.COMPLETE:
            study.tell(t, 1.0)
        elif state == TrialState.PRUNED:
            study.tell(t, state=TrialState.PRUNED)
        states[number] = state
    callback = SlimStoppedTrials(tmp_path, "s")
    for number in states:
        trial_dir = _trial_dir(tmp_path / f"n{number}")
        target = tmp_path / "trials" / f"t{number}"
        target.parent.mkdir(exist_ok=True)
        trial_dir.rename(target)
        callback.on_trial_complete(0, [], SimpleNamespace(trial_id=f"t{number}", config={"optuna_trial": number}))
    engine_states = {n: len(list((tmp_path / "trials" / f"t{n}").rglob("trainer_state.pt"))) for n in states}
    # Pruned: slimmed. Complete: kept as written. Running (cut off by an interrupt, resumable): kept.
    assert engine_states == {0: 0, 1: 3, 2: 3}
    # The storage it opened once for all trial ends stays out of Tune's tuner.pkl; a loaded one opens its own.
    import pickle

    assert callback._storage is not None
    loaded = pickle.loads(pickle.dumps(callback))
    assert loaded._storage is None and loaded._state_of(0) == TrialState.PRUNED


def test_keep_checkpoints_defaults_to_the_last_adapter_and_all_keeps_everything(tmp_path):
    from search.space import load_space

    assert load_space(ROOT / "spaces" / "smoke.yaml").keep_checkpoints == "last_adapter"
    doc = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    for value, ok in (("all", True), ("none", False)):
        doc["keep_checkpoints"] = value
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
        if ok:
            assert load_space(tmp_path / "s.yaml").keep_checkpoints == "all"
        else:
            with pytest.raises(Exception, match="keep_checkpoints"):
                load_space(tmp_path / "s.yaml")


def test_each_rung_checkpoint_is_stored_once_the_loops_copy_goes_after_the_report(tmp_path):
    from trainables.tune_trainable import drop_local_copy

    rank0 = _rung_checkpoint(tmp_path / "a" / "step-2", 1)
    rank1 = _rung_checkpoint(tmp_path / "b" / "step-2", 1)
    drop_local_copy(str(rank0), rank=0)
    drop_local_copy(str(rank1), rank=1)  # only rank 0 removes (after every rank's report returned)
    assert not rank0.exists() and rank1.exists()
