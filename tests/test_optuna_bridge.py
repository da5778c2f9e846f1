"""The Optuna bridge on a real SQLite study: presets, PRUNED/FAIL outcomes, conditional options, resume."""
from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.optuna_bridge import COMPLETE, FAIL, PRUNED, PrunedAwareOptunaSearch, trial_outcome
from search.space import load_space

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ["val/pass@1", "val/pass@2(2)"]


def _searcher(tmp_path: Path, seed: int = 0, num_samples: int = 0) -> PrunedAwareOptunaSearch:
    space = load_space(ROOT / "spaces" / "smoke.yaml")
    space.num_samples = num_samples or space.num_samples  # the searcher asks no more trials than this
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    sampler = optuna.samplers.RandomSampler(seed=seed)
    return PrunedAwareOptunaSearch(space, sampler=sampler, storage=storage, study_name="smoke")


def _result(rung: int, p1: float = 0.0, p2: float = 0.0) -> dict:
    return {"rung": rung, "val/pass@1": p1, "val/pass@2(2)": p2, "train/loss": 3.0}


def test_outcome_rules():
    assert trial_outcome(_result(2, 0.1, 0.2), False, 2, OBJECTIVES) == COMPLETE
    assert trial_outcome(_result(1, 0.9, 0.9), False, 2, OBJECTIVES) == PRUNED  # stopped at a low rung
    assert trial_outcome(None, False, 2, OBJECTIVES) == PRUNED
    assert trial_outcome(_result(2), True, 2, OBJECTIVES) == FAIL
    assert trial_outcome(_result(2, float("nan"), 0.1), False, 2, OBJECTIVES) == FAIL


def test_first_trials_are_baseline_then_paper(tmp_path):
    searcher = _searcher(tmp_path)
    baseline = searcher.suggest("t0")
    paper = searcher.suggest("t1")
    sampled = searcher.suggest("t2")
    assert baseline["role"] == "baseline" and baseline["alpha"] == 0.0 and baseline["optuna_trial"] == 0
    assert paper["role"] == "paper" and paper["optuna_trial"] == 1
    assert (paper["alpha"], paper["beta"], paper["prior"]) == (0.1, 0.02, "standard_normal")
    assert paper["tap_layer"] == pytest.approx(2 / 3)  # 4-layer tiny model: the paper's relative depth
    assert sampled["role"] == "search" and 0.01 <= sampled["alpha"] <= 1.0
    trials = searcher.study.get_trials(deepcopy=False)
    # The baseline's alpha = 0 lies outside the log-uniform alpha range: it is no Optuna parameter (the
    # sampler's density would be -inf there) but a user attribute; the paper's in-range alpha is a parameter.
    assert trials[0].params == {} and trials[0].user_attrs["preset"]["alpha"] == 0.0
    assert trials[1].params["alpha"] == 0.1 and "beta" not in trials[1].params  # 0.02 is not a beta choice
    assert set(trials[2].params) >= {"alpha", "beta", "tap_layer", "prior"}


def test_prior_options_exist_only_for_their_prior(tmp_path):
    searcher = _searcher(tmp_path, seed=3, num_samples=14)
    seen = set()
    for i in range(14):
        config = searcher.suggest(f"t{i}")
        if config["role"] != "search":
            continue
        seen.add(config["prior"])
        if config["prior"] == "mog":
            assert config["prior_options"]["components"] in (2, 3)
        else:
            assert config["prior_options"] == {}
    assert seen == {"mog", "standard_normal"}


def test_stopped_trials_are_pruned_errors_fail_finished_complete(tmp_path):
    searcher = _searcher(tmp_path)
    for i in range(4):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", _result(2, 0.25, 0.5))
    searcher.on_trial_complete("t1", _result(1, 0.75, 1.0))  # ASHA stopped it after rung 1 of 2
    searcher.on_trial_complete("t2", _result(2), error=True)
    searcher.on_trial_complete("t3", None)
    trials = searcher.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.PRUNED]
    assert trials[0].values == [0.25, 0.5]
    assert trials[1].values is None  # no low-fidelity values reach the sampler
    assert trials[1].user_attrs["rung"] == 1 and trials[1].user_attrs["val/pass@1"] == 0.75
    searcher.on_trial_complete("t0", _result(2, 0.0, 0.0))  # a repeat changes nothing
    assert searcher.study.get_trials(deepcopy=False)[0].values == [0.25, 0.5]


def test_resume_claims_trials_asked_after_the_last_checkpoint(tmp_path):
    searcher = _searcher(tmp_path)
    pickled_at_start = pickle.dumps(searcher)  # what Tune keeps in tuner.pkl
    searcher.suggest("t0")
    searcher.suggest("t1")
    searcher.on_trial_complete("t0", _result(2, 0.1, 0.2))
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's periodic experiment checkpoint
    searcher.suggest("t2")  # asked for, then the driver is SIGKILLed before the next checkpoint
    searcher.on_trial_complete("t1", _result(2, 0.3, 0.4))  # told, also after the checkpoint

    restored = pickle.loads(pickled_at_start)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t1")["optuna_trial"] == 1  # Tune re-runs t1 with its old config
    restored.on_trial_complete("t1", _result(2, 0.0, 0.0))  # already told: the first telling stands
    again = restored.suggest("t9")  # Tune's next new trial takes over the orphaned Optuna trial 2
    assert again["optuna_trial"] == 2
    nxt = restored.suggest("t10")
    # The restored sampler's RNG replays its draws from the checkpoint on, so its next proposal repeats trial
    # 2's parameters: it is answered from the running trial 2 and adds no study trial; trial 3 runs.
    assert nxt["optuna_trial"] == 3
    trials = restored.study.get_trials(deepcopy=False)
    assert len(trials) == 4
    assert restored.study.user_attrs["repeats"] == {"2": 1}
    assert trials[1].values == [0.3, 0.4]
    assert trials[2].user_attrs["ray_trial_id"] == "t9"


def test_the_searcher_asks_no_more_than_num_samples_trials_but_still_hands_out_orphans(tmp_path):
    """Tune's count of suggestions may lag the study after a resume (a trial that finished after Tune's last
    saved state is in the study only, search/resume_reconcile.py): the searcher counts the study's asked
    trials itself. An orphan (asked before a kill, never run to the end) is still handed out beyond that."""
    from ray.tune.search import Searcher

    searcher = _searcher(tmp_path, num_samples=3)
    assert len(searcher.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) == 2  # the presets
    assert searcher.samples_used() == 0  # enqueued presets are not trials yet
    assert [searcher.suggest(f"t{i}")["optuna_trial"] for i in range(3)] == [0, 1, 2]
    assert searcher.samples_used() == 3
    assert searcher.suggest("t3") == Searcher.FINISHED
    searcher._orphans = [2]  # as reconcile leaves it when no restored trial runs trial 2
    assert searcher.suggest("t4")["optuna_trial"] == 2
    assert searcher.suggest("t5") == Searcher.FINISHED
    assert len(searcher.study.get_trials(deepcopy=False)) == 3


def test_resumed_study_does_not_enqueue_presets_again(tmp_path):
    first = _searcher(tmp_path)
    first.suggest("t0")
    second = _searcher(tmp_path)  # same storage and study name
    roles = [t.user_attrs.get("role") for t in second.study.get_trials(deepcopy=False)]
    assert roles.count("baseline") == 1 and roles.count("paper") == 1


# Two presets on the smoke space: one inside the searched domains (beta, tap layer, prior and the mog option
# are choices there; alpha 0.2 lies in the log-uniform range), one outside them (beta 0.005, tap layer 2).
SMOKE_PRESETS = {
    "official": {"alpha": 0.2, "beta": 0.01, "tap_layer": -1, "prior": "mog", "prior_options": {"components": 3}},
    "wide": {"alpha": 0.05, "beta": 0.005, "tap_layer": 2, "prior": "learnable_gaussian"},
}


def _preset_searcher(tmp_path: Path, presets: dict, **extra) -> PrunedAwareOptunaSearch:
    import yaml

    doc = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    doc.update(presets=presets, **extra)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    space = load_space(tmp_path / "s.yaml")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return PrunedAwareOptunaSearch(space, sampler=optuna.samplers.RandomSampler(seed=0), storage=storage, study_name="s")


def test_space_presets_run_after_baseline_and_paper_in_file_order_with_their_names_as_roles(tmp_path):
    searcher = _preset_searcher(tmp_path, SMOKE_PRESETS)
    configs = [searcher.suggest(f"t{i}") for i in range(5)]
    assert [c["role"] for c in configs] == ["baseline", "paper", "official", "wide", "search"]
    assert [c["optuna_trial"] for c in configs] == [0, 1, 2, 3, 4]
    official, wide = configs[2], configs[3]
    assert (official["alpha"], official["beta"], official["tap_layer"], official["prior"]) == (0.2, 0.01, -1, "mog")
    assert official["prior_options"] == {"components": 3}
    assert (wide["alpha"], wide["beta"], wide["tap_layer"], wide["prior"]) == (0.05, 0.005, 2, "learnable_gaussian")
    assert wide["prior_options"] == {}
    trials = searcher.study.get_trials(deepcopy=False)
    assert [t.user_attrs["role"] for t in trials[:4]] == ["baseline", "paper", "official", "wide"]
    # What lies inside the searched domains reaches Optuna as fixed parameters; the rest are user attributes.
    assert trials[2].params == {"alpha": 0.2, "beta": 0.01, "tap_layer": -1, "prior": "mog", "mog.components": 3}
    assert trials[3].params == {"alpha": 0.05}
    assert trials[3].user_attrs["preset"]["beta"] == 0.005
    # The baseline keeps the paper trial's tap layer and prior; named presets do not change it.
    assert configs[0]["alpha"] == 0.0 and configs[0]["tap_layer"] == pytest.approx(2 / 3)


def test_a_preset_named_paper_replaces_the_paper_setting(tmp_path):
    paper = {"alpha": 0.3, "beta": 0.1, "tap_layer": 1, "prior": "standard_normal"}
    searcher = _preset_searcher(tmp_path, {"official": SMOKE_PRESETS["official"], "paper": paper})
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert [c["role"] for c in configs] == ["baseline", "paper", "official", "search"]
    assert (configs[1]["alpha"], configs[1]["beta"], configs[1]["tap_layer"]) == (0.3, 0.1, 1)
    assert configs[0]["tap_layer"] == 1 and configs[0]["alpha"] == 0.0  # the baseline taps where the paper trial does


def test_resumed_study_does_not_enqueue_space_presets_again(tmp_path):
    first = _preset_searcher(tmp_path, SMOKE_PRESETS)
    first.suggest("t0")
    first.suggest("t1")
    second = _preset_searcher(tmp_path, SMOKE_PRESETS)  # same storage and study name
    trials = second.study.get_trials(deepcopy=False)
    roles = [t.user_attrs.get("role") for t in trials]
    assert roles == ["baseline", "paper", "official", "wide"]
    # The resumed searcher runs the two waiting presets, then searches.
    assert [second.suggest(f"r{i}")["role"] for i in range(3)] == ["official", "wide", "search"]
    assert len(second.study.get_trials(deepcopy=False)) == 5


def _grid_searcher(tmp_path: Path, seed: int = 0) -> PrunedAwareOptunaSearch:
    """The 12-point smollm2-grid space (alpha x tap layer choices) under a random sampler, which repeats itself."""
    space = load_space(ROOT / "spaces" / "smollm2-grid.yaml")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return PrunedAwareOptunaSearch(
        space, sampler=optuna.samplers.RandomSampler(seed=seed), storage=storage, study_name="grid"
    )


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_one_study_trial_per_trained_configuration_repeats_are_counted_not_added(tmp_path, sampler):
    """A search with more samples (30) than the 12-point grid has combinations: every configuration is one study
    trial, repeated proposals add none (no COMPLETE copy for TPE's density, startup_trials or the dashboard) and
    are counted on the trial that ran them; the search ends once every combination ran."""
    from collections import Counter

    from ray.tune.search import Searcher

    from search.optuna_bridge import repeat_counts
    from search.tuner import tpe_sampler

    space = load_space(ROOT / "spaces" / "smollm2-grid.yaml")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    chosen = optuna.samplers.RandomSampler(seed=0) if sampler == "random" else tpe_sampler(0, startup_trials=3)
    searcher = PrunedAwareOptunaSearch(space, sampler=chosen, storage=storage, study_name="grid")
    runs = []
    for i in range(30):
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        runs.append((config["role"], config["alpha"], config["tap_layer"]))
        # Even trials finish, odd ones are stopped at rung 1.
        result = _result(3, 0.01 * i, 0.005 * i) if i % 2 == 0 else _result(1)
        searcher.on_trial_complete(f"t{i}", {**result, "val/pass@10(10)": 0.005 * i})
    # Baseline + the 12 grid points (the paper's setting is one of them), each run once, then the search ends.
    assert len(runs) == 13 and len(set(runs)) == 13, runs

    trials = searcher.study.get_trials(deepcopy=False)
    per_configuration = Counter(tuple(sorted(t.params.items())) for t in trials)
    assert len(trials) == 13 and max(per_configuration.values()) == 1, per_configuration
    assert all("ray_trial_id" in t.user_attrs and "duplicate_of" not in t.user_attrs for t in trials)
    repeats = repeat_counts(searcher.study)
    assert sum(repeats.values()) > 0, "a sampler drawing 12 points of 12 repeats itself"
    assert all(0 <= number < 13 and trials[number].params for number in repeats)
    assert searcher.suggest("again") == Searcher.FINISHED
    assert len(searcher.study.get_trials(deepcopy=False)) == 13


def test_finite_combinations_of_a_space(tmp_path):
    import yaml

    from search.optuna_bridge import finite_combinations

    grid = load_space(ROOT / "spaces" / "smollm2-grid.yaml")
    combos = finite_combinations(grid)
    assert len(combos) == 12 and {"alpha": 0.03, "tap_layer": 20} in combos
    assert finite_combinations(load_space(ROOT / "spaces" / "smollm2-python.yaml")) is None  # alpha log-uniform
    # Prior options count only under their own prior: 2 taps x (standard normal + mog with 2 or 4 components).
    doc = yaml.safe_load((ROOT / "spaces" / "smollm2-grid.yaml").read_text())
    doc["sampler"] = "tpe"
    doc["params"] = {
        "alpha": 0.1, "beta": 0.01, "tap_layer": {"int_range": [10, 11]},
        "prior": {"choices": ["standard_normal", "mog"]}, "prior_options": {"mog": {"components": {"choices": [2, 4]}}},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    combos = finite_combinations(load_space(tmp_path / "s.yaml"))
    assert len(combos) == 2 * 3
    assert {"tap_layer": 11, "prior": "mog", "mog.components": 4} in combos
    assert {"tap_layer": 10, "prior": "standard_normal"} in combos


class _StuckSampler(optuna.samplers.BaseSampler):
    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return param_distribution.choices[0]


@pytest.mark.parametrize(
    "space_file, distinct",
    [
        # Baseline + the 12 grid points, the paper's setting among them (its standard-normal prior is the space's).
        ("smollm2-grid.yaml", 13),
        # Baseline + paper + the 12 grid points: here the grid's prior is the learnable Gaussian, so the grid
        # point with the paper's alpha and tap layer trains something else and must run too.
        ("smollm2-grid-learnable.yaml", 14),
    ],
)
def test_a_converged_sampler_on_a_finite_space_runs_untried_combinations_then_the_search_ends(tmp_path, space_file, distinct):
    from ray.tune.search import Searcher

    from search.tuner import space_exhausted

    space = load_space(ROOT / "spaces" / space_file)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    # A sampler that has converged for good: it proposes the first choice of everything, always.
    searcher = PrunedAwareOptunaSearch(space, sampler=_StuckSampler(), storage=storage, study_name=space.name)
    assert not space_exhausted(space, tmp_path)
    runs = []
    for i in range(20):
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        runs.append((config["alpha"], config["tap_layer"], config["prior"]))
        searcher.on_trial_complete(f"t{i}", {**_result(3, 0.1, 0.1), "val/pass@10(10)": 0.1})
    # Every distinct configuration once, then no more trials: the stuck point once, the rest as untried picks.
    assert len(runs) == distinct and len(set(runs)) == distinct, runs
    assert runs[2] == (space.params.alpha.choices[0], 10, space.params.prior), runs  # the first choice of each
    trials = searcher.study.get_trials(deepcopy=False)
    assert sum(bool(t.user_attrs.get("untried_pick")) for t in trials) == 12 - 1 - (distinct == 13)
    assert sum("ray_trial_id" in t.user_attrs for t in trials) == distinct
    assert searcher.suggest("again") == Searcher.FINISHED
    assert len(searcher.study.get_trials(deepcopy=False)) == len(trials)  # no told repeats once exhausted
    assert space_exhausted(space, tmp_path)  # what `ibft tune` reads to call the search finished, not interrupted


@pytest.mark.parametrize("retry", [False, True])
def test_a_failed_configuration_is_answered_from_its_failure_unless_retry_failed(tmp_path, monkeypatch, retry):
    """A configuration whose trial FAILed (errored after Tune's max_failures retries, or NaN) is not trained again:
    the sampler's next proposals of it are answered from the failure, without a study trial; with
    `ibft tune --retry-failed` (IBFT_RETRY_FAILED=1 in the driver) it runs again."""
    from search.optuna_bridge import RETRY_FAILED_ENV, repeat_counts
    from search.tuner import space_exhausted

    if retry:
        monkeypatch.setenv(RETRY_FAILED_ENV, "1")
    else:
        monkeypatch.delenv(RETRY_FAILED_ENV, raising=False)
    space = load_space(ROOT / "spaces" / "smollm2-grid.yaml")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = PrunedAwareOptunaSearch(space, sampler=_StuckSampler(), storage=storage, study_name=space.name)
    for i in range(2):  # baseline, paper
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {**_result(3, 0.1, 0.1), "val/pass@10(10)": 0.1})
    stuck = searcher.suggest("t2")  # the point the stuck sampler always proposes
    searcher.on_trial_complete("t2", _result(3), error=True)  # e.g. out of memory, after max_failures retries
    assert searcher.study.get_trials(deepcopy=False)[2].state == TrialState.FAIL
    nxt = searcher.suggest("t3")
    same = (nxt["alpha"], nxt["tap_layer"]) == (stuck["alpha"], stuck["tap_layer"])
    trials = searcher.study.get_trials(deepcopy=False)
    assert len(trials) == 4
    if retry:
        assert same and not repeat_counts(searcher.study)
    else:
        assert not same and trials[3].user_attrs.get("untried_pick")
        assert repeat_counts(searcher.study) == {2: 20}  # every proposal of it answered from trial 2's failure
    # A finite space whose only untried point failed is exhausted, unless failed points may run again.
    for i in range(4, 30):
        config = searcher.suggest(f"t{i}")
        if config == "FINISHED":
            break
        searcher.on_trial_complete(f"t{i}", {**_result(3, 0.1, 0.1), "val/pass@10(10)": 0.1})
    assert space_exhausted(space, tmp_path, retry_failed=retry)
    failed_runs = sum(
        t.state == TrialState.FAIL or (t.params.get("alpha"), t.params.get("tap_layer")) == (stuck["alpha"], stuck["tap_layer"])
        for t in searcher.study.get_trials(deepcopy=False)
    )
    assert failed_runs == (2 if retry else 1)


def _gap_space(tmp_path: Path, objectives: list[dict]):
    import yaml

    from search.space import load_space as load

    doc = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    doc["objectives"] = objectives
    (tmp_path / "gap.yaml").write_text(yaml.safe_dump(doc))
    return load(tmp_path / "gap.yaml")


def test_a_final_rung_objective_passes_tunes_metric_check_and_is_told_from_the_final_result(tmp_path):
    """memorization/gap as a third objective: Tune's own strict check (TuneController._validate_result_metrics,
    called here as Tune calls it on each result) accepts a rung-1 result without it; the study gets the gap of
    the final result as the third value, and a final result without one is FAIL, never a made-up value."""
    from types import SimpleNamespace

    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search import SearchGenerator

    from search.asha import make_scheduler
    from search.optuna_bridge import RungMetricsLimiter

    gap = {"metric": "memorization/gap", "mode": "min"}
    space = _gap_space(tmp_path, [{"metric": "val/pass@1"}, {"metric": "val/pass@2(2)"}, gap])
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = PrunedAwareOptunaSearch(space, sampler=optuna.samplers.RandomSampler(seed=0), storage=storage, study_name="gap")
    limiter = RungMetricsLimiter(searcher, max_concurrent=2, every_rung=space.rung_objectives())
    assert limiter.metric == ["val/pass@1", "val/pass@2(2)"] and searcher.metric[-1] == "memorization/gap"
    controller = SimpleNamespace(_metric=None, _scheduler_alg=make_scheduler(space), _search_alg=SearchGenerator(limiter))
    check = lambda result: TuneController._validate_result_metrics(controller, result)  # noqa: E731
    check({**_result(1), "train/ce_loss_rung": 2.0})  # rung 1: no gap yet, and no error
    with pytest.raises(ValueError, match="val/pass@1"):
        check({"rung": 1, "val/pass@2(2)": 0.0, "train/loss": 1.0})  # a per-rung objective missing is still caught

    for i in range(2):
        limiter.suggest(f"t{i}")
        limiter.on_trial_result(f"t{i}", _result(1))
    limiter.on_trial_complete("t0", {**_result(2, 0.5, 0.25), "memorization/gap": 12.5})
    limiter.on_trial_complete("t1", _result(2, 0.5, 0.25))  # finished without its gap
    trials = searcher.study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.COMPLETE and trials[0].values == [0.5, 0.25, 12.5]
    assert trials[1].state == TrialState.FAIL and trials[1].values is None

    # The gap as the only objective: Tune checks nothing per result, the searcher reports no intermediate value.
    alone = _gap_space(tmp_path, [gap])
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'alone.db'}")
    single = PrunedAwareOptunaSearch(alone, sampler=optuna.samplers.RandomSampler(seed=0), storage=storage, study_name="alone")
    assert RungMetricsLimiter(single, max_concurrent=1, every_rung=alone.rung_objectives()).metric is None
    single.suggest("s0")
    single.on_trial_result("s0", {**_result(1), "training_iteration": 1})
    assert single.study.get_trials(deepcopy=False)[0].intermediate_values == {}


def test_twin_rules_on_hand_made_trials():
    from search.optuna_bridge import tell_as_duplicate, twin_of

    study = optuna.create_study(directions=["maximize", "maximize"])
    choices = [0.01, 0.1, 1.0]

    def trial_with(alpha):
        study.enqueue_trial({"alpha": alpha})
        t = study.ask()
        t.suggest_categorical("alpha", choices)
        return t

    complete, pruned, running = trial_with(0.01), trial_with(0.1), trial_with(1.0)
    study.tell(complete, [0.5, 0.25])
    study.tell(pruned, state=TrialState.PRUNED)
    no_params = study.ask()
    assert twin_of(study, no_params) is None  # the baseline kind: nothing sampled, nothing to repeat
    study.tell(no_params, [0.0, 0.0])

    expected = {0.01: (TrialState.COMPLETE, [0.5, 0.25]), 0.1: (TrialState.PRUNED, None), 1.0: (TrialState.FAIL, None)}
    for alpha, twin_number in ((0.01, complete.number), (0.1, pruned.number), (1.0, running.number)):
        repeat = trial_with(alpha)
        twin = twin_of(study, repeat)
        assert twin is not None and twin.number == twin_number
        tell_as_duplicate(study, repeat, twin)
        told = study.get_trials(deepcopy=False)[repeat.number]
        assert (told.state, told.values) == expected[alpha]
        assert told.user_attrs["duplicate_of"] == twin_number
        # A told repeat is never itself a twin: the next repeat points at the trial that ran.
        again = trial_with(alpha)
        assert twin_of(study, again).number == twin_number
        study.tell(again, state=TrialState.FAIL)


def test_study_storage_opens_again_after_losing_the_schema_race(tmp_path, monkeypatch):
    """Another process initialising the same new SQLite file first makes Optuna's version insert fail
    (seen in a fresh-clone run: UNIQUE constraint failed: alembic_version.version_num); the search opens
    the storage again instead of crashing."""
    import optuna
    import sqlalchemy.exc

    from search import tuner

    db = tmp_path / "optuna.db"
    other = optuna.storages.RDBStorage(f"sqlite:///{db}")  # the other process got there first
    real_init = optuna.storages.RDBStorage.__init__
    calls = []

    def racing_init(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "__init__", racing_init)
    storage = tuner.open_study_storage(db)
    assert len(calls) == 2
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    assert other.get_study_id_from_name("s") == study_id  # one database, shared

    def always_locked(self, *args, **kwargs):
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("database is locked"))

    monkeypatch.setattr(optuna.storages.RDBStorage, "__init__", always_locked)
    monkeypatch.setattr(tuner, "STORAGE_OPEN_ATTEMPTS", 2)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        tuner.open_study_storage(db)  # a lasting failure still surfaces


def test_kl_reduction_and_encoder_input_searched_as_choices_reach_the_trials_train_config(tmp_path):
    import yaml

    import trainables.tune_trainable as tt
    from search.optuna_bridge import finite_combinations
    from search.tuner import trial_setup
    from trainables.train.config import TrainConfig

    doc = yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())
    doc["params"].update(kl_reduction={"choices": ["mean", "sum"]}, encoder_input="rms_norm")
    doc["num_samples"] = 12
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    space = load_space(tmp_path / "s.yaml")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    sampler = optuna.samplers.RandomSampler(seed=0)
    searcher = PrunedAwareOptunaSearch(space, sampler=sampler, storage=storage, study_name="s")
    configs = [searcher.suggest(f"t{i}") for i in range(12)]
    assert all({"kl_reduction", "encoder_input"} <= set(c) for c in configs)  # every trial carries both
    assert (configs[0]["kl_reduction"], configs[1]["kl_reduction"]) == ("mean", "mean")  # presets: the default
    assert {c["kl_reduction"] for c in configs if c["role"] == "search"} == {"mean", "sum"}
    assert {c["encoder_input"] for c in configs} == {"rms_norm"}
    trials = searcher.study.get_trials(deepcopy=False)
    assert trials[1].params["kl_reduction"] == "mean"  # the paper preset's value is a point of the searched domain
    assert all("encoder_input" not in t.params for t in trials)  # fixed: a constant, not an Optuna parameter
    setup = trial_setup(space, tmp_path)
    for c in configs:
        train = tt.train_config_dict(setup, tt.trial_params(c), output_dir="/tmp/x", optuna_trial=0)
        cfg = TrainConfig.from_dict(train)
        assert (cfg.ib.kl_reduction, cfg.ib.encoder_input) == (c["kl_reduction"], "rms_norm")

    doc = yaml.safe_load((ROOT / "spaces" / "smollm2-grid.yaml").read_text())
    doc["params"]["kl_reduction"] = {"choices": ["mean", "sum"]}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    combos = finite_combinations(load_space(tmp_path / "g.yaml"))
    assert len(combos) == 24 and {"alpha": 0.03, "tap_layer": 20, "kl_reduction": "sum"} in combos


def test_a_searcher_pickled_before_the_ib_semantics_existed_resumes_with_legacy(tmp_path):
    """Tune restores the searcher, space included, from its pickle in RUN_DIR/tune: one from a run started before
    kl_reduction / encoder_input existed keeps proposing trials with the semantics that run trained with."""
    from search.optuna_bridge import TrainingKey
    from trainables.ib.config import LEGACY_SEMANTICS

    searcher = _searcher(tmp_path)
    for key in LEGACY_SEMANTICS:  # what such a pickle holds: neither field, nor either constant
        del searcher._search_space.params.__dict__[key]
        del searcher._key._constants[key]
    for t in searcher.study.get_trials(deepcopy=False):  # and the presets it enqueued had neither key
        preset = {k: v for k, v in t.user_attrs["preset"].items() if k not in LEGACY_SEMANTICS}
        searcher.study._storage.set_trial_user_attr(t._trial_id, "preset", preset)
    restored = pickle.loads(pickle.dumps(searcher))
    configs = [restored.suggest(f"t{i}") for i in range(4)]
    assert all({k: c[k] for k in LEGACY_SEMANTICS} == LEGACY_SEMANTICS for c in configs)
    # Old study records (presets without the keys) and old constants compare as what they trained with.
    space = load_space(ROOT / "spaces" / "smoke.yaml")
    params = {"alpha": 0.1, "beta": 0.01, "tap_layer": 1, "prior": "standard_normal"}
    old_preset = {"preset": {**params, "prior_options": {}}}
    assert restored._key(params, old_preset) == restored._key(params, {})
    new_key = TrainingKey(space)
    assert new_key(params, {}) != restored._key(params, {})  # mean/raw today is not the legacy sum/rms_norm
    assert dict(new_key(params, {"preset": {**params, **LEGACY_SEMANTICS}})) == dict(restored._key(params, old_preset))


@pytest.mark.parametrize("space_file", ["origen.yaml", "evol-codealpaca.yaml"])
def test_the_paper_trial_of_a_paper_space_is_a_point_of_its_grid(tmp_path, space_file):
    """Every searched parameter of the paper trial is an Optuna parameter (origen's beta 0.02 among the choices),
    so TPE's group decomposition keeps it in the same group as the search trials."""
    space = load_space(ROOT / "spaces" / space_file)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = PrunedAwareOptunaSearch(space, sampler=optuna.samplers.RandomSampler(seed=0), storage=storage, study_name="p")
    searcher.suggest("t0")
    paper = searcher.suggest("t1")
    assert paper["role"] == "paper"
    frozen = searcher.study.get_trials(deepcopy=False)[1]
    assert set(frozen.params) == set(space.params.domains()) == {"alpha", "beta", "tap_layer"}
    assert frozen.params["beta"] == space.paper_params()["beta"]


def test_a_sampler_learning_from_stopped_trials_sees_their_last_rung_values_the_study_keeps_them_pruned(tmp_path):
    from search.optuna_bridge import RUNG_VALUES_ATTR, _scratch_copy

    searcher = _searcher(tmp_path)
    for i in range(3):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", _result(2, 0.5, 0.25))
    searcher.on_trial_complete("t1", _result(1, 0.75, 0.5))  # stopped by ASHA at rung 1
    searcher.on_trial_complete("t2", None)  # removed before it reported: nothing to learn
    trials = searcher.study.get_trials(deepcopy=False)
    assert trials[1].state == TrialState.PRUNED and trials[1].user_attrs[RUNG_VALUES_ATTR] == [0.75, 0.5]
    assert RUNG_VALUES_ATTR not in trials[2].user_attrs
    seen = {t.number: (t.state, t.values) for t in _scratch_copy(searcher.study, learn_from_stopped=True).get_trials()}
    assert seen == {0: (TrialState.COMPLETE, [0.5, 0.25]), 1: (TrialState.COMPLETE, [0.75, 0.5]), 2: (TrialState.PRUNED, None)}
    assert _scratch_copy(searcher.study).get_trials()[1].state == TrialState.PRUNED  # the default: as the study says
