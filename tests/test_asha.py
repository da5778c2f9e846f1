"""search/asha.py: multi-objective promotion (asha.promotion "pareto") on hand-worked rungs, next to the
single-metric ASHA it replaces there."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from search.asha import LoggedASHA, ParetoASHA, ParetoRungs, make_scheduler
from search.space import parse_space
from trainables.memorization import search_metrics

ROOT = Path(__file__).resolve().parents[1]
M1, P = "val/pass@1", "val/pass@10(10)"


def test_pareto_rungs_judge_at_rays_milestones():
    rungs = ParetoRungs(num_rungs=3, grace_period=1, reduction_factor=2, modes=["max", "max"])
    assert rungs.milestones == [2, 1]  # Ray's bracket for max_t 3, grace 1, rf 2, highest first
    assert rungs.decide("a", 1, (0.2, 0.2)) == ("CONTINUE", (1, 1))  # the first always goes on
    assert rungs.decide("b", 1, (0.1, 0.1)) == ("STOP", (2, 1))  # dominated by a
    assert rungs.decide("c", 1, (0.3, 0.05)) == ("CONTINUE", (3, 2))  # shares a's front
    assert rungs.decide("a", 2, (0.3, 0.3)) == ("CONTINUE", (1, 1))
    assert rungs.decide("a", 3, (0.3, 0.3)) == ("CONTINUE", None)  # judged at every milestone already


def _schedulers(lines):
    common = dict(metric=P, mode="max", num_rungs=3, grace_period=1, reduction_factor=2, tie_break="none", echo=lines.append)
    return LoggedASHA(**common), ParetoASHA(objectives=[(M1, "max"), (P, "max")], **common)


def test_pareto_asha_keeps_the_best_pass_at_1_that_metric_asha_stops():
    lines: list[str] = []
    metric_asha, pareto_asha = _schedulers(lines)
    results = {"t1": (0.5, 0.3), "t2": (0.55, 0.1), "t3": (0.4, 0.2)}
    decided = {}
    for name, scheduler in (("metric", metric_asha), ("pareto", pareto_asha)):
        decided[name] = [
            scheduler.on_trial_result(None, SimpleNamespace(trial_id=t), {"rung": 1, M1: p1, P: p10})
            for t, (p1, p10) in results.items()
        ]
    # t2 is the best on pass@1 but the worst on pass@10(10): ASHA on pass@10(10) stops it (0.1 < 0.3) and lets
    # t3 go on (0.2, the median of 0.3 and 0.1). On both objectives t2 shares the first front with t1, while
    # t3 is dominated by t1 and ranks third of three, where 2 go on.
    assert decided["metric"] == ["CONTINUE", "STOP", "CONTINUE"]
    assert decided["pareto"] == ["CONTINUE", "CONTINUE", "STOP"]
    assert lines[-1] == (
        f"ASHA t3 rung 1/3: {M1}=0.4000, {P}=0.2000 (Pareto rank among 3 at this rung, best 2 go on) -> STOP"
    )
    last = pareto_asha.on_trial_result(None, SimpleNamespace(trial_id="t1"), {"rung": 3, M1: 0.6, P: 0.4})
    assert last == "CONTINUE" and lines[-1].endswith("-> FINISHED")
    assert pareto_asha.on_trial_result(None, SimpleNamespace(trial_id="t4"), {"rung": 1, M1: 0.2}) == "CONTINUE"


def _space(**asha):
    data = yaml.safe_load((ROOT / "spaces" / "smollm2-python.yaml").read_text())
    data["asha"] = {**data.get("asha", {}), **asha}
    return data


def test_make_scheduler_follows_asha_promotion():
    assert type(make_scheduler(parse_space(_space()))) is LoggedASHA
    scheduler = make_scheduler(parse_space(_space(promotion="pareto")))
    assert isinstance(scheduler, ParetoASHA)
    assert scheduler._objectives == [(M1, "max"), (P, "max")]


def test_pareto_promotion_refuses_objectives_reported_only_at_the_end():
    data = _space(promotion="pareto")
    data["memorization"] = {**data.get("memorization", {}), "enabled": True}
    data["objectives"] = [{"metric": M1, "mode": "max"}, {"metric": search_metrics.OBJECTIVE_METRICS[0], "mode": "min"}]
    with pytest.raises(Exception, match="promotion 'pareto'.*reported only at the last rung"):
        parse_space(data)
    data["asha"]["promotion"] = "metric"
    parse_space(data)  # single-metric ASHA ranks on a validation metric: fine


def test_pareto_asha_runs_under_ray_tune(tmp_path):
    """A real Tune run (local Ray, a trivial trainable reporting three rungs): Tune accepts the scheduler and
    it stops exactly the trials the Pareto rule says, in a fixed order (one trial at a time)."""
    import ray
    from ray import tune

    points = [(0.5, 0.3), (0.55, 0.1), (0.4, 0.2), (0.6, 0.35)]

    def trainable(config):  # nested, so Ray ships it by value (the tests folder is not on the workers' path)
        p1, p10 = points[config["i"]]
        for rung in (1, 2, 3):
            tune.report({"rung": rung, M1: p1 * rung / 3, P: p10 * rung / 3})

    lines: list[str] = []
    _, scheduler = _schedulers(lines)
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        results = tune.Tuner(
            trainable,
            param_space={"i": tune.grid_search(list(range(len(points))))},
            tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    rungs = sorted((r.config["i"], r.metrics["rung"]) for r in results)
    # #0 first, on; #1 shares #0's front (pass@10(10)-only ASHA would stop it); #2 is dominated by #0 and
    # ranks 3rd of 3 -> stopped at rung 1; #3 dominates everything -> on.
    assert rungs == [(0, 3), (1, 3), (2, 1), (3, 3)], lines


# ---- ASHA's rungs across a resume --------------------------------------------------------------------------


def _simulate(make, tmp: Path, seed: int, kill_at: int | None, restore: bool) -> list[tuple[str, int, str]]:
    """A search of 14 trials over 4 rungs, arriving in a seeded interleaving; each trial reports its next rung
    until ASHA stops it. Every result goes to RUN_DIR/tune/<trial>/result.json as Ray's JSON logger writes it.
    With kill_at, the driver dies after that many results: a new scheduler (as Tuner.restore unpickles it from
    tuner.pkl) takes over, its rungs rebuilt from those files when `restore`. Returns the decision log."""
    import json
    import random

    from search.asha import recorded_results

    rng = random.Random(seed)
    values = {f"t{i:02d}": [round(rng.uniform(0, 1), 2) for _ in range(4)] for i in range(14)}
    losses = {t: rng.uniform(0.5, 2.0) for t in values}
    tune_dir = tmp / f"tune-{seed}-{kill_at}-{restore}"
    scheduler = make()
    next_rung = {t: 1 for t in values}
    live = list(values)
    log: list[tuple[str, int, str]] = []
    step = 0
    while live:
        trial_id = rng.choice(live[:3])  # up to 3 trials running side by side, out of step with each other
        rung = next_rung[trial_id]
        value = values[trial_id][rung - 1]
        result = {"trial_id": trial_id, "rung": rung, M1: value, P: round(1 - value, 2), "train/ce_loss_rung": losses[trial_id]}
        if kill_at is not None and step == kill_at:
            scheduler = make()
            if restore:
                assert scheduler.restore_rungs(recorded_results(tune_dir)) > 0
        action = scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial_id), result)
        trial_dir = tune_dir / f"run_trial_{trial_id}"
        trial_dir.mkdir(parents=True, exist_ok=True)
        with (trial_dir / "result.json").open("a") as f:
            f.write(json.dumps(result) + "\n")
        log.append((trial_id, rung, action))
        step += 1
        if action == "STOP" or rung == 4:
            live.remove(trial_id)
        else:
            next_rung[trial_id] = rung + 1
    return log


@pytest.mark.parametrize("promotion", ["metric", "pareto"])
def test_a_resumed_search_makes_the_decisions_an_uninterrupted_one_makes(tmp_path, promotion):
    """The decision log of a search whose driver died after its first rung decisions and was resumed with the
    rungs rebuilt from the recorded results equals that of the uninterrupted search, exactly: the same
    interleaving of arrivals is replayed in both, so only the scheduler's state can differ. A fresh scheduler
    (what Ray's Tuner.restore gives, today's behaviour before the rebuild) decides otherwise."""
    common = dict(metric=P, mode="max", num_rungs=4, grace_period=1, reduction_factor=2, tie_break="train_loss", echo=lambda s: None)

    def make():
        if promotion == "pareto":
            return ParetoASHA(objectives=[(M1, "max"), (P, "max")], **common)
        return LoggedASHA(**common)

    forgetful = 0
    for seed in range(6):
        whole = _simulate(make, tmp_path, seed, None, False)
        stops = [i for i, (_, _, action) in enumerate(whole) if action == "STOP"]
        kill_at = stops[1] + 1  # after its first rung decisions, a STOP among them
        assert _simulate(make, tmp_path, seed, kill_at, True) == whole
        forgetful += _simulate(make, tmp_path, seed, kill_at, False) != whole
    assert forgetful >= 3  # without the rebuild most resumed searches decide differently


def test_recorded_results_read_every_trials_lines_and_skip_a_cut_line(tmp_path):
    from search.asha import recorded_results

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "result.json").write_text('{"trial_id": "a", "rung": 1}\n{"trial_id": "a", "rung": 2}\n{"trial_id": "a", "ru')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "result.json").write_text('{"trial_id": "b", "rung": 1}\n')
    assert {t: [r["rung"] for r in rs] for t, rs in recorded_results(tmp_path).items()} == {"a": [1, 2], "b": [1]}


def test_resume_rebuilds_the_restored_tuners_rungs_and_marks_stopped_trials(tmp_path, capsys):
    """search.tuner.restore_asha on what Tuner.restore returns: the scheduler it will run with gets the recorded
    rungs, and a trial the study holds PRUNED gets the marker that makes its restart return without training."""
    import json

    import optuna

    from search.space import load_space
    from search.tuner import OPTUNA_DB, restore_asha
    from trainables.tune_trainable import STOPPED_MARKER

    space = load_space(ROOT / "spaces" / "smoke.yaml")
    study = optuna.create_study(study_name=space.name, storage=f"sqlite:///{tmp_path / OPTUNA_DB}", directions=["maximize"] * 2)
    for ray_id, state in (("aaa", optuna.trial.TrialState.PRUNED), ("bbb", optuna.trial.TrialState.RUNNING)):
        t = study.ask()
        t.set_user_attr("ray_trial_id", ray_id)
        if state == optuna.trial.TrialState.PRUNED:
            study.tell(t, state=state)
    for ray_id, value in (("aaa", 0.0), ("bbb", 0.5)):
        (tmp_path / "tune" / ray_id).mkdir(parents=True)
        result = {"trial_id": ray_id, "rung": 1, space.asha.metric: value, "train/ce_loss_rung": 1.0}
        (tmp_path / "tune" / ray_id / "result.json").write_text(json.dumps(result) + "\n")
    scheduler = make_scheduler(space)
    tuner = SimpleNamespace(_local_tuner=SimpleNamespace(_tune_config=SimpleNamespace(scheduler=scheduler)))
    restore_asha(tuner, space, tmp_path)
    assert "ASHA: 2 rung record(s) restored" in capsys.readouterr().err
    assert {t: v for _, rung in scheduler._brackets[0]._rungs for t, v in rung.items()} == {
        "aaa": pytest.approx(0.0, abs=1e-5), "bbb": pytest.approx(0.5, abs=1e-5)
    }
    marker = tmp_path / "trials" / "aaa" / STOPPED_MARKER
    assert json.loads(marker.read_text()) == {"rung": 1, space.asha.metric: 0.0, "train/ce_loss_rung": 1.0}
    assert not (tmp_path / "trials" / "bbb" / STOPPED_MARKER).exists()
    # Restarted by Tune from its last snapshot, the stopped trial reports that result again and is stopped.
    result = json.loads(marker.read_text())
    assert scheduler.on_trial_result(None, SimpleNamespace(trial_id="aaa"), result) == "STOP"


def test_a_restarted_trial_asha_had_stopped_returns_without_training(tmp_path, monkeypatch):
    import trainables.tune_trainable as tt

    reported = []
    monkeypatch.setattr(tt.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "aaa"))
    monkeypatch.setattr(tt.tune, "report", reported.append)
    monkeypatch.setattr(tt, "IBTorchTrainer", lambda *a, **k: pytest.fail("a stopped trial must not train"))
    (tmp_path / "trials" / "aaa").mkdir(parents=True)
    (tmp_path / "trials" / "aaa" / tt.STOPPED_MARKER).write_text('{"rung": 1, "val/pass@2(2)": 0.5}')
    assert tt.run_trial({"setup": {"run_dir": str(tmp_path)}}) is None
    assert reported == [{"rung": 1, "val/pass@2(2)": 0.5}]  # its last result again, for Tune's metric check


def test_a_run_started_before_a_space_field_existed_resumes_with_its_recorded_setup_keys(tmp_path):
    """Tuner.restore refuses a param_space whose keys differ from the original's: a resume by code that has more
    space fields (failure.max_preemption_failures, keep_checkpoints, ...) passes the recorded keys, today's values."""
    import json

    from ray.tune.utils import flatten_dict

    from search.space import load_space
    from search.tuner import align_to_recorded_setup, trial_setup

    setup = trial_setup(load_space(ROOT / "spaces" / "smoke.yaml"), tmp_path / "moved")
    old = json.loads(json.dumps(setup))
    del old["keep_checkpoints"], old["failure"]["max_preemption_failures"], old["learn_from_stopped"]
    old["failure"]["max_failures"] = 5
    old["run_dir"] = "/somewhere/else"
    old["retired_field"] = {"x": 1}
    (tmp_path / "tune" / "run_trial_a").mkdir(parents=True)
    (tmp_path / "tune" / "run_trial_a" / "params.json").write_text(json.dumps({"setup": old, "alpha": 0.1}))
    aligned = align_to_recorded_setup(setup, tmp_path)
    assert sorted(flatten_dict({"setup": aligned})) == sorted(flatten_dict({"setup": old}))
    assert aligned["failure"]["max_failures"] == setup["failure"]["max_failures"]  # today's values
    assert aligned["retired_field"] == {"x": 1} and aligned["run_dir"] == setup["run_dir"]
    assert align_to_recorded_setup(setup, tmp_path / "no-run") == setup
