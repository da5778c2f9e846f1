"""Ray Tune's OptunaSearch, corrected for a multi-fidelity search that must survive its driver being killed.

What Ray's OptunaSearch gets wrong for us, and what this subclass does instead:
- A trial ASHA stopped at a low rung is told to Optuna as COMPLETE with its low-fidelity values, so the
  sampler believes a half-trained model is a finished one. Here it is told PRUNED (no values); a trial is
  COMPLETE only when it reported its final rung, and errored trials are FAIL.
- The search space is our space file's: conditional prior options, and the baseline (alpha = 0, outside any
  log-uniform alpha range), the paper's setting and the space's own presets enqueued as the first trials,
  each with a `role` ("baseline", "paper", then the preset's name).
- Resume: Tune checkpoints the searcher every few seconds, but Optuna's SQLite study is written at once. A
  trial asked for after the last checkpoint exists in the study but not in Tune; on restore it is claimed by
  the next suggestion instead of a new one being asked, so the study never holds a trial twice. A trial
  already told before a kill is not told again. Tune's trial list, not this searcher's checkpoint, decides
  which trials are still running (reconcile, called by resume_reconcile), and the study's own count of
  trials, not Tune's, decides when num_samples are reached: a trial may have finished after Tune's last save.
- A sampler may propose parameters an earlier trial already ran (TPE often does on `choices` domains, the
  paper spaces' kind). Every trial trains with the space's seed, so a re-run reproduces the earlier result at
  full cost. Proposals are therefore asked in a scratch in-memory copy of the study (ask_untrained): a repeat
  adds no trial to the study (no copy for samplers, startup_trials or NSGA-II generations to count, none in
  optuna-dashboard); it is answered from the earlier trial's run, counted in the study's user attribute
  `repeats` ({twin number: proposals answered}), and another is asked for, up to MAX_DUPLICATE_ASKS times.
  Only a new configuration becomes a study trial. A configuration whose trial FAILed (errored after Tune's
  failure.max_failures retries, or non-finite final values) is answered from that failure too, unless the
  search runs with `--retry-failed` (RETRY_FAILED_ENV). Runs recorded before this kept their repeats as
  trials marked `duplicate_of`; those are still never twins and still counted. With the space's
  learn_from_stopped, the sampler sees each stopped trial in that scratch copy as complete with its last rung's
  values (RUNG_VALUES_ATTR); the study keeps it PRUNED. On a space of finitely many parameter combinations
  (every domain `choices` or `int_range`) the sampler has then converged: an untried combination is run
  instead, and once every combination ran the search ends, since more trials could only repeat results. On a
  continuous space a repeat is run.
"""
from __future__ import annotations

import itertools
import logging
import math
import random
from typing import Any, Callable, Optional, Union

import optuna
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from search.space import TRIAL_PARAMS, Domain, SearchSpace
from trainables.ib.config import LEGACY_SEMANTICS

logger = logging.getLogger(__name__)

RUNG_KEY = "rung"
"""Result key counting evaluations of a trial (1-based); a trial that reached num_rungs finished."""
OPTUNA_NUMBER_KEY = "optuna_trial"
"""Trial config key holding the Optuna trial number, joining Tune trials to the study."""
ROLE_KEY = "role"
"""Trial config key and Optuna user attribute: "baseline", "paper", a space preset's name or "search"."""
RAY_TRIAL_ID_ATTR = "ray_trial_id"
"""Optuna user attribute holding the Tune trial id that ran the Optuna trial."""

DUPLICATE_OF_ATTR = "duplicate_of"
"""Optuna user attribute of a proposal told without running, in runs recorded before repeats stopped adding
trials: the number of the trial that ran its parameters."""
REPEATS_ATTR = "repeats"
"""Optuna study user attribute: {trial number as text: proposals of its configuration answered from its run}."""
RUNG_VALUES_ATTR = "rung_values"
"""Optuna user attribute of a PRUNED trial: its objective values at the last rung it reported (what a sampler
that learns from stopped trials is shown, see ask_untrained)."""
RETRY_FAILED_ENV = "IBFT_RETRY_FAILED"
"""Driver environment variable ("1": `ibft tune --retry-failed`): a FAILed configuration may be trained again.
Read at every proposal, so a resumed search (whose searcher Tune unpickles) follows the flag of its resume."""
MAX_DUPLICATE_ASKS = 20
"""Proposals in a row that may be answered from an earlier trial before one is run anyway."""

COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"


def trial_outcome(result: Optional[dict], error: bool, num_rungs: int, objectives: list[str]) -> str:
    """How a finished Tune trial is told to Optuna: FAIL (errored, or final values not finite), PRUNED
    (stopped before its last rung) or COMPLETE (reported its last rung)."""
    if error:
        return FAIL
    rung = (result or {}).get(RUNG_KEY)
    if not isinstance(rung, (int, float)) or rung < num_rungs:
        return PRUNED
    values = [(result or {}).get(m) for m in objectives]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return FAIL
    return COMPLETE


def in_domain(domain: Domain, value: Any) -> bool:
    """Whether `value` is one the domain can produce (so Optuna may record it as that parameter)."""
    if domain.choices is not None:
        return any(type(c) is type(value) and c == value for c in domain.choices)
    if domain.int_range is not None:
        return isinstance(value, int) and domain.int_range[0] <= value <= domain.int_range[1]
    low, high = domain.log_uniform or domain.uniform  # type: ignore[misc]
    return isinstance(value, (int, float)) and low <= value <= high


def _suggest(trial: optuna.Trial, name: str, domain: Domain) -> Any:
    if domain.log_uniform is not None:
        return trial.suggest_float(name, *domain.log_uniform, log=True)
    if domain.uniform is not None:
        return trial.suggest_float(name, *domain.uniform)
    if domain.int_range is not None:
        return trial.suggest_int(name, *domain.int_range)
    return trial.suggest_categorical(name, domain.choices)


def define_params(space: SearchSpace, trial: optuna.Trial) -> dict[str, Any]:
    """Draw one trial's IB parameters (define-by-run, so prior options exist only for the prior drawn).

    The preset trials (baseline, paper, the space's presets) carry their values as user attributes: the parts
    inside the searched domains were enqueued as fixed parameters (the sampler learns from them), the rest
    are constants; prior options a preset leaves out are drawn as in a search trial.
    """
    role = trial.user_attrs.get(ROLE_KEY, "search")
    preset: dict[str, Any] = trial.user_attrs.get("preset", {})
    enqueued = trial.user_attrs.get("preset_enqueued", [])
    p = space.params
    out: dict[str, Any] = {}
    for name in TRIAL_PARAMS:
        spec = getattr(p, name)
        if name in preset and name not in enqueued:
            out[name] = preset[name]
        elif isinstance(spec, Domain):
            out[name] = _suggest(trial, name, spec)
        else:
            out[name] = spec
    options: dict[str, Any] = {}
    if role != "baseline":  # alpha = 0 trains no IB head, so its options would be noise in the study
        preset_options = preset.get("prior_options") or {}
        for option, spec in p.prior_options.get(out["prior"], {}).items():
            if option in preset_options and f"{out['prior']}.{option}" not in enqueued:
                options[option] = preset_options[option]
            else:
                options[option] = _suggest(trial, f"{out['prior']}.{option}", spec) if isinstance(spec, Domain) else spec
        for option, value in preset_options.items():
            options.setdefault(option, value)
    out["prior_options"] = options
    return out


TrialKey = Callable[[dict[str, Any], dict[str, Any]], tuple]
"""(Optuna params, user attributes) of a trial -> what it trains with, comparable between trials."""


def sampled_key(params: dict[str, Any], user_attrs: dict[str, Any]) -> tuple:
    """The sampled parameters alone: enough where every trial shares the same constants."""
    return tuple(sorted(params.items()))


class TrainingKey:
    """What a trial of `space` trains with: its sampled parameters over the space's constants, or over a preset
    trial's own values (the paper's standard-normal prior is not a search trial's in a space whose prior is
    another constant, though their sampled parameters may be equal). A class, not a closure: Tune pickles the
    searcher that holds it."""

    def __init__(self, space: SearchSpace) -> None:
        self._params = space.params
        self._constants = space.fixed_params()

    def __call__(self, params: dict[str, Any], user_attrs: dict[str, Any]) -> tuple:
        preset = user_attrs.get("preset")
        if preset:
            base = {k: preset[k] for k in TRIAL_PARAMS if k in preset}
            base.update({f"{preset['prior']}.{o}": v for o, v in (preset.get("prior_options") or {}).items()})
        else:
            prior = params.get("prior", self._params.prior)
            base = dict(self._constants)
            if isinstance(prior, str):
                options = self._params.prior_options.get(prior, {})
                base.update({f"{prior}.{o}": v for o, v in options.items() if not isinstance(v, Domain)})
        # A preset (or this key's constants) recorded before kl_reduction / encoder_input existed trained with
        # LEGACY_SEMANTICS; a newer run always has both, fixed or sampled.
        return tuple(sorted({**LEGACY_SEMANTICS, **base, **params}.items(), key=lambda kv: kv[0]))


def retry_failed_requested() -> bool:
    """Whether this driver runs with `--retry-failed` (RETRY_FAILED_ENV)."""
    import os

    return os.environ.get(RETRY_FAILED_ENV, "") == "1"


def _twin_states(retry_failed: bool) -> tuple[TrialState, ...]:
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return live if retry_failed else (*live, TrialState.FAIL)


def twin_for(
    study: optuna.Study,
    params: dict[str, Any],
    user_attrs: dict[str, Any],
    key: TrialKey = sampled_key,
    *,
    retry_failed: bool = False,
    exclude: Optional[int] = None,
) -> Optional[optuna.trial.FrozenTrial]:
    """A trial of `study` that ran (is running, or FAILed, unless `retry_failed`) what `params`/`user_attrs`
    would train with (by `key`), or None. Without sampled parameters (the baseline) there is no twin; trials
    marked `duplicate_of` (repeats of older runs) are never twins."""
    if not params:
        return None
    mine = key(params, user_attrs)
    for other in study.get_trials(deepcopy=False, states=_twin_states(retry_failed)):
        if (
            other.number != exclude
            and DUPLICATE_OF_ATTR not in other.user_attrs
            and other.params
            and key(other.params, other.user_attrs) == mine
        ):
            return other
    return None


def twin_of(
    study: optuna.Study, trial: optuna.Trial, key: TrialKey = sampled_key, *, retry_failed: bool = False
) -> Optional[optuna.trial.FrozenTrial]:
    """An earlier trial that ran (or is running, or FAILed unless `retry_failed`) what `trial` would train with
    (by `key`), or None (see twin_for)."""
    return twin_for(study, trial.params, trial.user_attrs, key, retry_failed=retry_failed, exclude=trial.number)


def record_repeat(study: optuna.Study, twin: optuna.trial.FrozenTrial) -> None:
    """Count one proposal answered from `twin`'s run in the study's `repeats` user attribute (a finished
    trial's own attributes can no longer be written)."""
    repeats = dict(study.user_attrs.get(REPEATS_ATTR) or {})
    repeats[str(twin.number)] = int(repeats.get(str(twin.number), 0)) + 1
    study.set_user_attr(REPEATS_ATTR, repeats)


def repeat_counts(study: optuna.Study) -> dict[int, int]:
    """{trial number: proposals answered from its run}, with the `duplicate_of` trials of older runs."""
    counts = {int(k): int(v) for k, v in (study.user_attrs.get(REPEATS_ATTR) or {}).items()}
    for t in study.get_trials(deepcopy=False):
        if DUPLICATE_OF_ATTR in t.user_attrs:
            twin = int(t.user_attrs[DUPLICATE_OF_ATTR])
            counts[twin] = counts.get(twin, 0) + 1
    return counts


def _sampler_view(trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """A stopped trial as a sampler that learns from stopped trials sees it: COMPLETE with its last rung's
    objective values (RUNG_VALUES_ATTR); every other trial as it is."""
    values = trial.user_attrs.get(RUNG_VALUES_ATTR)
    if trial.state != TrialState.PRUNED or not isinstance(values, list) or not values:
        return trial
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        values=[float(v) for v in values],
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=trial.user_attrs,
        system_attrs=trial.system_attrs,
    )


def _scratch_copy(study: optuna.Study, learn_from_stopped: bool = False) -> optuna.Study:
    """An in-memory copy of `study`'s asked and finished trials, sharing its sampler: proposals asked there leave
    the study itself untouched. With `learn_from_stopped`, stopped trials carry their last rung's values there
    (_sampler_view)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" per proposal
    try:
        scratch = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(), sampler=study.sampler, directions=study.directions
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    scratch.add_trials([_sampler_view(t) for t in trials] if learn_from_stopped else trials)
    return scratch


def ask_untrained(
    study: optuna.Study,
    define: Callable[[optuna.Trial], Any],
    key: TrialKey = sampled_key,
    *,
    retry_failed: bool = False,
    max_asks: int = MAX_DUPLICATE_ASKS,
    learn_from_stopped: bool = False,
) -> Optional[optuna.Trial]:
    """A new trial of `study` whose configuration no trial of it ran, is running or FAILed (unless
    `retry_failed`), or None after `max_asks` repeats in a row.

    Each proposal is asked of the study's sampler in a scratch copy of the study (`define` draws its
    parameters). A repeat stays there (left running: a constant-liar TPE steers away from it) and is only
    counted on its twin (record_repeat); the first new proposal is enqueued in `study` and asked there, with
    the sampler's own marks (grid id, ...) copied onto it, so the study gains exactly one trial. With
    `learn_from_stopped` the sampler sees each stopped trial's last rung values (_sampler_view); the study keeps
    it PRUNED."""
    scratch = _scratch_copy(study, learn_from_stopped)
    for _ in range(max_asks):
        proposal = scratch.ask()
        define(proposal)
        twin = twin_for(study, proposal.params, proposal.user_attrs, key, retry_failed=retry_failed)
        if twin is None:
            study.enqueue_trial(dict(proposal.params))
            trial = study.ask()
            marks = scratch._storage.get_trial(proposal._trial_id).system_attrs
            have = study._storage.get_trial(trial._trial_id).system_attrs
            for name, value in marks.items():
                if name not in have and name != "fixed_params":
                    study._storage.set_trial_system_attr(trial._trial_id, name, value)
            return trial
        how = "failed" if twin.state == TrialState.FAIL else "ran"
        logger.info("a proposal repeats Optuna trial %d's parameters (it %s): answered from it, not run", twin.number, how)
        record_repeat(study, twin)
    return None


def _values(domain: Domain) -> Optional[list[Any]]:
    if domain.choices is not None:
        return list(domain.choices)
    if domain.int_range is not None:
        return list(range(domain.int_range[0], domain.int_range[1] + 1))
    return None


def finite_combinations(space: SearchSpace, limit: int = 100_000) -> Optional[list[dict[str, Any]]]:
    """Every combination of sampled parameters the space can draw, as Optuna params ("alpha", ...,
    "<prior>.<option>"), or None when a domain is continuous or there are more than `limit`."""
    p = space.params
    top = {name: getattr(p, name) for name in TRIAL_PARAMS if isinstance(getattr(p, name), Domain)}
    top_values = {name: _values(d) for name, d in top.items()}
    if any(v is None for v in top_values.values()):
        return None
    out: list[dict[str, Any]] = []
    for combo in itertools.product(*top_values.values()):
        params = dict(zip(top_values, combo))
        prior = params.get("prior", p.prior)
        options = {f"{prior}.{o}": d for o, d in p.prior_options.get(prior, {}).items() if isinstance(d, Domain)}
        option_values = {name: _values(d) for name, d in options.items()}
        if any(v is None for v in option_values.values()):
            return None
        for opts in itertools.product(*option_values.values()):
            out.append({**params, **dict(zip(option_values, opts))})
            if len(out) > limit:
                return None
    return out


def untried(
    combinations: list[dict[str, Any]], study: optuna.Study, key: TrialKey = sampled_key, *, retry_failed: bool = False
) -> list[dict[str, Any]]:
    """The combinations no trial of `study` ran, is running, or FAILed (unless `retry_failed`) (presets included
    where `key` says they train the same)."""
    tried = {
        key(t.params, t.user_attrs)
        for t in study.get_trials(deepcopy=False, states=_twin_states(retry_failed))
        if t.params and DUPLICATE_OF_ATTR not in t.user_attrs
    }
    return [c for c in combinations if key(c, {}) not in tried]


def pick_untried(
    combinations: list[dict[str, Any]], study: optuna.Study, seed: int, key: TrialKey = sampled_key, *,
    retry_failed: bool = False,
) -> Optional[dict[str, Any]]:
    """One untried combination, drawn with a seed tied to the study's size (so a resumed search draws as the
    first run would have), or None when every combination ran."""
    left = untried(combinations, study, key, retry_failed=retry_failed)
    if not left:
        return None
    return random.Random(seed * 1_000_003 + len(study.get_trials(deepcopy=False))).choice(left)


def tell_as_duplicate(study: optuna.Study, trial: optuna.Trial, twin: optuna.trial.FrozenTrial) -> None:
    """How repeats were answered before ask_untrained (kept for reading and re-creating older runs): tell
    `trial` what its twin's run says: its values if complete, pruned if stopped, failed while unknown."""
    trial.set_user_attr(DUPLICATE_OF_ATTR, twin.number)
    if twin.state == TrialState.COMPLETE:
        study.tell(trial, twin.values if len(twin.values) > 1 else twin.values[0])
    elif twin.state == TrialState.PRUNED:
        study.tell(trial, state=TrialState.PRUNED)
    else:  # still running: its outcome is not known yet, and constant_liar already steers TPE away from it
        study.tell(trial, state=TrialState.FAIL)


def preset_trials(space: SearchSpace) -> list[tuple[str, dict[str, Any]]]:
    """(role, values) of the trials every search starts with, in order: the plain-LoRA baseline (the paper
    trial's tap layer and prior at alpha = beta = 0), the paper's setting (or the space's presets.paper), then
    the space's other presets in file order, each with its name as its role."""
    paper = space.paper_params()
    baseline = {**paper, "alpha": 0.0, "beta": 0.0, "prior_options": {}}
    return [("baseline", baseline), ("paper", paper), *space.named_presets()]


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch on a space file, with PRUNED/FAIL outcomes, preset trials and duplicate-free resume."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        sampler: optuna.samplers.BaseSampler,
        storage: optuna.storages.BaseStorage,
        study_name: str,
    ) -> None:
        self._search_space = space
        self._num_rungs = space.num_rungs
        self._orphans: list[int] = []
        metrics = [o.metric for o in space.objectives]
        modes = [o.mode for o in space.objectives]
        super().__init__(
            space=_DefineByRun(space),
            metric=metrics if len(metrics) > 1 else metrics[0],
            mode=modes if len(modes) > 1 else modes[0],
            sampler=sampler,
            study_name=study_name,
            storage=storage,
        )
        self._combinations = finite_combinations(space)
        self._key = TrainingKey(space)
        self._enqueue_presets()

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (in RUN_DIR/optuna.db)."""
        return self._ot_study

    def _objective_names(self) -> list[str]:
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    def _enqueue_presets(self) -> None:
        if any("preset" in t.user_attrs or t.user_attrs.get(ROLE_KEY) in ("baseline", "paper")
               for t in self._ot_study.get_trials(deepcopy=False)):
            return  # a resumed study: its presets were enqueued when it was created
        domains = self._search_space.params.domains()
        for role, values in preset_trials(self._search_space):
            flat = {k: values[k] for k in TRIAL_PARAMS}
            flat.update({f"{values['prior']}.{o}": v for o, v in (values.get("prior_options") or {}).items()})
            fixed = {k: v for k, v in flat.items() if k in domains and in_domain(domains[k], v) and role != "baseline"}
            self._ot_study.enqueue_trial(
                fixed, user_attrs={ROLE_KEY: role, "preset": values, "preset_enqueued": sorted(fixed)}
            )

    def suggest(self, trial_id: str) -> Optional[Union[dict, str]]:
        if trial_id not in self._ot_trials:
            ot_trial = self._claim_orphan()
            if ot_trial is None:
                used = self.samples_used()
                if used >= self._search_space.num_samples:
                    # Tune's own count can fall short of this after a resume: a trial that ran and finished after
                    # Tune's last saved state is in the study but not in Tune's trial list (resume_reconcile).
                    logger.info("the study holds %d trials, the space's num_samples: the search asks no more", used)
                    return Searcher.FINISHED
                ot_trial = self._ask_new()
            if ot_trial is None:
                return Searcher.FINISHED
            ot_trial.set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
            self._ot_trials[trial_id] = ot_trial
        ot_trial = self._ot_trials[trial_id]
        params = define_params(self._search_space, ot_trial)
        role = ot_trial.user_attrs.get(ROLE_KEY, "search")
        if ROLE_KEY not in ot_trial.user_attrs:
            ot_trial.set_user_attr(ROLE_KEY, role)
        return {**params, OPTUNA_NUMBER_KEY: ot_trial.number, ROLE_KEY: role}

    def samples_used(self) -> int:
        """The search's trials so far: every study trial asked for (each Tune suggestion asks exactly one, or
        claims an orphan; a repeated proposal adds none), not the presets still WAITING to be asked."""
        return sum(1 for t in self._ot_study.get_trials(deepcopy=False) if t.state != TrialState.WAITING)

    def _ask_new(self) -> Optional[optuna.Trial]:
        """A new Optuna trial whose parameters no earlier trial ran or FAILed (presets always run; FAILed ones
        again under --retry-failed); None when the space is finite and every combination ran. Repeated
        proposals add no trial (ask_untrained)."""
        combinations = self._combinations
        retry = retry_failed_requested()
        if self._ot_study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return self._ot_study.ask()  # an enqueued preset (or an untried pick asked before a kill)
        if combinations is not None and not untried(combinations, self._ot_study, self._key, retry_failed=retry):
            return None  # checked before asking: an exhausted space must not spend proposals
        ot_trial = ask_untrained(
            self._ot_study,
            lambda t: define_params(self._search_space, t),
            self._key,
            retry_failed=retry,
            max_asks=MAX_DUPLICATE_ASKS,
            learn_from_stopped=bool(getattr(self._search_space, "learn_from_stopped", False)),
        )
        if ot_trial is not None:
            return ot_trial
        if combinations is None:
            logger.warning(
                "the sampler proposed only already-run parameters %d times in a row; running a repeat", MAX_DUPLICATE_ASKS
            )
            return self._ot_study.ask()
        pick = pick_untried(combinations, self._ot_study, self._search_space.seed, self._key, retry_failed=retry)
        if pick is None:
            logger.warning(
                "every one of the space's %d parameter combinations ran: the search ends (more trials would repeat them)",
                len(combinations),
            )
            return None
        logger.info(
            "the sampler proposed only already-run parameters %d times in a row: running an untried combination: %s",
            MAX_DUPLICATE_ASKS, pick,
        )
        self._ot_study.enqueue_trial(pick, user_attrs={"untried_pick": True})
        return self._ot_study.ask()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Ray's OptunaSearch reports a single objective's every value as an intermediate value; an objective
        # reported only at the final rung (memorization/...) is absent before it, and is no intermediate value.
        metric = self.metric
        if isinstance(metric, str) and not (isinstance(result.get(metric), (int, float)) and math.isfinite(result[metric])):
            return
        super().on_trial_result(trial_id, result)

    def _claim_orphan(self) -> Optional[optuna.Trial]:
        while self._orphans:
            number = self._orphans.pop(0)
            frozen = self._ot_study.get_trials(deepcopy=False)[number]
            if frozen.state == TrialState.RUNNING:
                logger.info("reusing Optuna trial %d, asked for before the driver stopped", number)
                return optuna.Trial(self._ot_study, frozen._trial_id)
        return None

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        self._completed_trials.add(trial_id)
        objectives = self._objective_names()
        outcome = trial_outcome(result, error, self._num_rungs, objectives)
        frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
        if frozen.state.is_finished():
            return  # told before the driver was killed and resumed; the first telling stands
        for key, value in (result or {}).items():
            if key == RUNG_KEY or key.startswith(("val/", "test/")):
                if isinstance(value, (int, float)) and math.isfinite(value):
                    ot_trial.set_user_attr(key, value)
        ot_trial.set_user_attr("outcome", outcome)
        if outcome == PRUNED and result:
            rung_values = [result.get(m) for m in objectives]
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in rung_values):
                ot_trial.set_user_attr(RUNG_VALUES_ATTR, [float(v) for v in rung_values])  # type: ignore[arg-type]
        if outcome == COMPLETE:
            values = [float(result[m]) for m in objectives]  # type: ignore[index]
            self._ot_study.tell(ot_trial, values if len(values) > 1 else values[0], state=TrialState.COMPLETE)
        else:
            self._ot_study.tell(ot_trial, None, state=TrialState.PRUNED if outcome == PRUNED else TrialState.FAIL)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        known = {t.number for t in self._ot_trials.values()}
        self._orphans = [
            t.number
            for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number not in known
        ]

    def reconcile(self, restored: list) -> None:
        """Follow the trial list Tune restored (resume_reconcile.RestoredTrial's) rather than this searcher's
        checkpoint, which may be from another moment: each restored trial runs the Optuna trial its config
        names, and a RUNNING Optuna trial that no restored unfinished trial runs is an orphan, claimed by the
        next new suggestion (its own Tune trial was lost, or finished without telling)."""
        by_number = {t.number: t for t in self._ot_study.get_trials(deepcopy=False)}
        mapped: dict[str, optuna.Trial] = {}
        for r in restored:
            frozen = by_number.get(r.optuna_number)
            if frozen is not None:
                mapped[r.trial_id] = optuna.Trial(self._ot_study, frozen._trial_id)
        run_by_live = {r.optuna_number for r in restored if r.live and r.trial_id in mapped}
        self._ot_trials = mapped
        self._completed_trials = {r.trial_id for r in restored if not r.live}
        self._orphans = [
            t.number
            for t in by_number.values()
            if t.state == TrialState.RUNNING and t.number not in run_by_live
        ]
        self._orphans.sort()


class RungMetricsLimiter(ConcurrencyLimiter):
    """Ray's ConcurrencyLimiter, showing Tune's strict metric check only the objectives every rung reports.

    Tune checks every result for each of the searcher's metrics, but a memorization objective
    (memorization/gap, ...) is measured only at a trial's final rung: the first rung's result would stop the
    search ("... memorization/gap that SearchGenerator expects"). The searcher still tells Optuna every
    objective, from the final result; a trial that ends without one is PRUNED (stopped early) or FAIL
    (trial_outcome), never COMPLETE with a made-up value. Nothing else reads this property: ASHA ranks on
    asha.metric (a validation metric, reported every rung)."""

    def __init__(self, searcher: Searcher, max_concurrent: int, every_rung: list[str]) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self._every_rung = list(every_rung)

    @property
    def metric(self) -> Any:
        every_rung = getattr(self, "_every_rung", None)
        if every_rung is None:
            return super().metric
        if not every_rung:
            return None  # every objective comes at the final rung: nothing for Tune to check at every result
        return every_rung if len(every_rung) > 1 else every_rung[0]


class _DefineByRun:
    """Picklable define-by-run callable (Tune pickles the searcher into its experiment state)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return define_params(self.space, trial)
