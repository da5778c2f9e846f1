"""A resumed search's generator, limiter and searcher follow the trial list Tune restored, whichever moment each
saved file is from (search/resume_reconcile.py). Real Tune objects (SearchGenerator, ConcurrencyLimiter,
Trial) on a real SQLite study; no Ray cluster: the kill lands between two of Tune's state uploads by
construction, not by timing."""
from __future__ import annotations

import json
from ray import cloudpickle as pickle  # as Tune pickles tuner.pkl (the generator holds an argparse parser)
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.utils.serialization import TuneFunctionEncoder

from search.optuna_bridge import PrunedAwareOptunaSearch, RungMetricsLimiter
from search.resume_reconcile import ReconcilingSearchGenerator, RestoredTrial, read_restored_trials
from search.results import trial_row
from search.space import load_space
from search.tuner import study_only_records

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ["val/pass@1", "val/pass@2(2)"]
NUM_SAMPLES = 4


def _trainable(config):  # never run: the generator only names it in its trials
    return None


def _generator(tmp_path: Path) -> ReconcilingSearchGenerator:
    space = load_space(ROOT / "spaces" / "smoke.yaml")
    space.num_samples = NUM_SAMPLES
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = PrunedAwareOptunaSearch(
        space, sampler=optuna.samplers.RandomSampler(seed=0), storage=storage, study_name="smoke"
    )
    return ReconcilingSearchGenerator(RungMetricsLimiter(searcher, max_concurrent=2, every_rung=OBJECTIVES))


def _start(generator: ReconcilingSearchGenerator, tmp_path: Path) -> ReconcilingSearchGenerator:
    # What tune.run does with the search algorithm it was given (or unpickled from tuner.pkl on a resume).
    generator.add_configurations(
        {"exp": {"run": _trainable, "num_samples": NUM_SAMPLES, "config": {}, "storage_path": str(tmp_path / "runs")}}
    )
    return generator


def _result(rung: int, p1: float = 0.5, p2: float = 0.5) -> dict:
    return {"rung": rung, "val/pass@1": p1, "val/pass@2(2)": p2, "train/loss": 1.0}


def _save_trial_list(state_dir: Path, trials, session: str = "2026-12-01_00-00-00") -> None:
    """Tune's experiment state file as TuneController.save_to_dir writes it (the trial list part)."""
    state = {"trial_data": [list(t.get_json_state()) for t in trials], "runner_data": {}, "stats": {}}
    (state_dir / f"experiment_state-{session}.json").write_text(json.dumps(state, cls=TuneFunctionEncoder))


def _save_search_state(generator, state_dir: Path, session: str = "2026-12-01_00-00-00") -> None:
    generator.save_to_dir(str(state_dir), session_str=session)


def _finish(generator, live_trials) -> list:
    """Run the resumed search to its end: Tune continues the restored trials, then asks for new ones while
    the generator has any (two at a time, as the limiter allows), finishing each at the final rung."""
    for trial in live_trials:
        generator.on_trial_complete(trial.trial_id, _result(2))
    ran = []
    while not generator.is_finished():
        batch = [t for t in (generator.next_trial(), generator.next_trial()) if t is not None]
        if not batch:
            break
        for trial in batch:
            ran.append(trial)
            generator.on_trial_complete(trial.trial_id, _result(2))
    return ran


def _study(generator) -> optuna.Study:
    return generator.searcher.searcher.study


def test_a_trial_finished_after_tunes_last_saved_state_counts_against_num_samples(tmp_path):
    """Seen in CI (tests/test_tune_e2e.py kill-and-resume): Tune's last uploaded state listed the first two
    trials as pending; after it, both finished and trials 2 and 3 were asked, and ASHA stopped trial 3. The
    resumed search ran 2 more trials (Tune's count said 2 of 4), so the study held 5 trials for num_samples 4."""
    state_dir = tmp_path / "tune"
    state_dir.mkdir()
    at_start = pickle.dumps(_generator(tmp_path))  # what Tune keeps in tuner.pkl
    generator = _start(pickle.loads(at_start), tmp_path)
    t0, t1 = generator.next_trial(), generator.next_trial()
    _save_trial_list(state_dir, [t0, t1])
    _save_search_state(generator, state_dir)  # Tune's last upload before the kill
    generator.on_trial_complete(t0.trial_id, _result(2))
    generator.on_trial_complete(t1.trial_id, _result(2))
    t2, t3 = generator.next_trial(), generator.next_trial()
    generator.on_trial_complete(t3.trial_id, _result(1))  # ASHA stopped it at rung 1: PRUNED
    assert [t.state for t in _study(generator).trials] == [
        TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED
    ]
    # SIGKILL. The resumed driver restores from the files above; the study is as it was left.
    resumed = _start(pickle.loads(at_start), tmp_path)
    resumed.restore_from_dir(str(state_dir))
    ran = _finish(resumed, [t0, t1])

    trials = _study(resumed).get_trials(deepcopy=False)
    assert len(trials) == NUM_SAMPLES  # trial 3 counted; trial 2 (asked, never run to the end) claimed
    assert all(t.state.is_finished() for t in trials)
    assert [t.config["optuna_trial"] for t in ran] == [2]
    assert trials[3].state == TrialState.PRUNED and trials[3].user_attrs["ray_trial_id"] == t3.trial_id
    assert resumed.is_finished()

    # The fit's results hold the Tune trials t0, t1 and the new one; trials.csv must list t3 too, from the study.
    space = resumed.searcher.searcher._search_space
    known = {t0.trial_id, t1.trial_id, *(t.trial_id for t in ran)}
    (tmp_path / "trials" / t3.trial_id / "checkpoint_2026-12-01_00-00-01").mkdir(parents=True)
    (record,) = study_only_records(space, tmp_path, known)
    row = trial_row(record, num_rungs=space.num_rungs, objectives=OBJECTIVES)
    assert (row["trial_id"], row["optuna_trial"], row["state"], row["last_rung"]) == (t3.trial_id, 3, "PRUNED", 1)
    assert {k: row[k] for k in ("alpha", "beta", "tap_layer", "prior")} == {
        k: t3.config[k] for k in ("alpha", "beta", "tap_layer", "prior")
    }
    assert json.loads(row["prior_options"]) == t3.config["prior_options"]
    assert row["val/pass@1"] == 0.5 and row["checkpoint_path"].endswith("checkpoint_2026-12-01_00-00-01")
    assert study_only_records(space, tmp_path, known | {t3.trial_id}) == []


def test_a_trial_list_newer_than_the_searchers_state_is_followed(tmp_path):
    """Tune's trial list was uploaded after a save the searcher's state missed: the trial list knows t2, the
    limiter and the searcher do not. t2's result must still reach Optuna, and t2's Optuna trial must not be
    handed to a new trial (that would train its configuration twice)."""
    state_dir = tmp_path / "tune"
    state_dir.mkdir()
    at_start = pickle.dumps(_generator(tmp_path))
    generator = _start(pickle.loads(at_start), tmp_path)
    t0, t1 = generator.next_trial(), generator.next_trial()
    _save_search_state(generator, state_dir)  # the searcher's and the limiter's files: t0 and t1 only
    generator.on_trial_complete(t0.trial_id, _result(2))
    t2 = generator.next_trial()
    t0.set_status("TERMINATED")
    _save_trial_list(state_dir, [t0, t1, t2])  # the trial list, from a later save

    resumed = _start(pickle.loads(at_start), tmp_path)
    resumed.restore_from_dir(str(state_dir))
    ran = _finish(resumed, [t1, t2])

    trials = _study(resumed).get_trials(deepcopy=False)
    assert len(trials) == NUM_SAMPLES and all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[2].user_attrs["ray_trial_id"] == t2.trial_id  # told from t2's own result
    assert [t.config["optuna_trial"] for t in ran] == [3]


def test_a_searchers_state_newer_than_the_trial_list_leaves_no_ghost(tmp_path):
    """The other way round: the searcher and the limiter know t2, Tune's trial list does not. Without
    reconciling, the limiter would hold t2's concurrency slot for ever and t2's Optuna trial would stay
    RUNNING; it is claimed by the next new trial instead."""
    state_dir = tmp_path / "tune"
    state_dir.mkdir()
    at_start = pickle.dumps(_generator(tmp_path))
    generator = _start(pickle.loads(at_start), tmp_path)
    t0, t1 = generator.next_trial(), generator.next_trial()
    _save_trial_list(state_dir, [t0, t1])
    generator.on_trial_complete(t0.trial_id, _result(2))
    t2 = generator.next_trial()
    _save_search_state(generator, state_dir)  # knows t2

    resumed = _start(pickle.loads(at_start), tmp_path)
    resumed.restore_from_dir(str(state_dir))
    assert resumed.searcher.live_trials == {t0.trial_id, t1.trial_id}
    ran = _finish(resumed, [t0, t1])

    trials = _study(resumed).get_trials(deepcopy=False)
    assert len(trials) == NUM_SAMPLES and all(t.state == TrialState.COMPLETE for t in trials)
    assert [t.config["optuna_trial"] for t in ran] == [2, 3]
    assert trials[2].user_attrs["ray_trial_id"] != t2.trial_id  # the new trial that took it over


def test_trial_list_reading(tmp_path):
    assert read_restored_trials(tmp_path, "optuna_trial") is None  # no state: nothing to reconcile
    older = {"trial_data": [[json.dumps({"trial_id": "a", "status": "PENDING", "config": {"optuna_trial": 0}}), "{}"]]}
    newer = {
        "trial_data": [
            [json.dumps({"trial_id": "b", "status": "TERMINATED", "config": {"optuna_trial": 1}}), "{}"],
            [json.dumps({"trial_id": "c", "status": "RUNNING", "config": {}}), "{}"],
        ]
    }
    (tmp_path / "experiment_state-2026-11-30_23-59-59.json").write_text(json.dumps(older))
    (tmp_path / "experiment_state-2026-12-01_00-00-00.json").write_text(json.dumps(newer))
    assert read_restored_trials(tmp_path, "optuna_trial") == [
        RestoredTrial("b", "TERMINATED", 1),
        RestoredTrial("c", "RUNNING", None),
    ]
    assert [t.live for t in read_restored_trials(tmp_path, "optuna_trial")] == [False, True]
    (tmp_path / "experiment_state-2026-12-02_00-00-00.json").write_text("{not json")
    assert read_restored_trials(tmp_path, "optuna_trial") is None  # unreadable: the searcher's own state stands


@pytest.mark.parametrize("status, live", [("PENDING", True), ("RUNNING", True), ("PAUSED", True),
                                          ("TERMINATED", False), ("ERROR", False)])
def test_which_restored_trials_run_again(status, live):
    assert RestoredTrial("x", status, 0).live is live
