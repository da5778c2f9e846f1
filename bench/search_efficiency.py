"""Is ASHA + Optuna cheaper than plain search? A replay on recorded learning curves, no training.

Data: full learning curves of a grid of IB-FT configurations recorded once from real searches without early
stopping (spaces/smollm2-grid.yaml and smollm2-grid-learnable.yaml, one per prior; bench/record_curves.py
merged them into bench/data/smollm2_curves.json with the commands that produced it). Every replayed trial of a configuration sees exactly the recorded per-rung
results of that configuration (same seed in the product: a rerun reproduces them).

The configurations: every distinct recorded one with all rungs. The searched grid is the `search` trials'
(the parameters that vary among them, as categorical choices); the preset trials every product search
starts with (plain-LoRA baseline, alpha = 0, outside the grid; the paper's setting, which may coincide with
a grid point) are run first by every method, as the product does (--no-presets leaves the presets that are
not grid points out).

Methods, each spending the same currency, trial-steps (optimizer steps summed over trials; a trial stopped
after r rungs costs r * rung_steps), with the recording's max_concurrent trials running side by side (rungs
of equal duration, so trials advance in lockstep and report in worker order; what completes in a round is
counted once the whole round is spent):
- asha+tpe: the product's search. Optuna TPESampler(multivariate, group, constant_liar, seeded) on both
  objectives, the parameters restricted to the recorded grid as categorical choices, the presets enqueued as
  search.optuna_bridge does (the baseline without parameters, the paper trial with those inside the grid);
  Ray's own ASHA bracket (ray.tune.schedulers.async_hyperband._Bracket, as search.asha.LoggedASHA drives it:
  grace period and reduction factor of the recorded space, asynchronous promotion: at each milestone rung a
  trial goes on unless its value is below the (1 - 1/rf) percentile of the values recorded at that rung so
  far) ranking by search.asha.ranking_value (ties broken by the rung's train CE); stopped trials are told to
  Optuna as PRUNED, trials that reach the last rung as COMPLETE with their final values. A proposal of a
  configuration already run is answered from that run at no cost and another is asked for, as
  search.optuna_bridge does (ask_untrained: no study trial for a repeat); after MAX_DUPLICATE_ASKS such answers in a row an
  untried grid point is run, and once every grid point ran the search ends.
- tpe+rungs: asha+tpe whose proposer learns from stopped trials (space learn_from_stopped: true): a stopped
  trial stays PRUNED in the study, and TPE sees it as complete with its last rung's values
  (search.optuna_bridge.ask_untrained).
- random: grid configurations drawn uniformly among those not run yet (Optuna's RandomSampler with the
  product's repeat answering; the search ends once all were run), full budget each.
- grid: every configuration once in a fixed order (the product of the choices, in the order the parameters
  and their sorted values appear), full budget each; the same in every seed.
- pareto: asha+tpe with asha.promotion "pareto": at each milestone a trial goes on when it ranks among the
  best 1/rf of the trials recorded there on all objectives at once (non-dominated sorting, then crowding
  distance; search.asha.ParetoRungs, the product's own book-keeping).
- oracle: asha+tpe whose every ASHA decision sees the configuration's final rung instead of the current one,
  as if early results predicted the end perfectly. Not a method anyone can run: the bound on what a better
  early-stopping signal could buy with this proposer and budget; the gap from it to the target is the
  proposer's (which configurations it tries first), not the early stopping's.
Hypervolume (search.pareto.hypervolume, Optuna's exact algorithm) of the final validation objectives of the
trials that completed by a given spend, reference point 0 on every objective, divided by the hypervolume of
every configuration at full budget. The full budget is configurations x max_steps trial-steps (what the grid
method spends); the headline is the mean ratio at one third of it (target >= 0.95).

Usage: python bench/search_efficiency.py [--curves bench/data/smollm2_curves.json] [--seeds 50] [--no-presets]
       [--startup-trials N]
Always exits 0 when the data loads; prints PASS/MISS for the target.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Protocol

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_CURVES = ROOT / "bench" / "data" / "smollm2_curves.json"
PARAM_NAMES = ("alpha", "beta", "tap_layer", "prior")
TARGET = 0.95
BUDGET_POINTS = 10
COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"


# ---- the recorded curves ------------------------------------------------------------------------------------


@dataclass
class Config:
    """One distinct configuration and its recorded curve."""

    params: dict[str, Any]
    rungs: list[dict[str, Any]]
    """Per rung (1-based order): the reported metrics (val/..., train/ce_loss_rung...)."""
    roles: list[str] = field(default_factory=list)
    """Roles of the recorded trials that ran it ("baseline", "paper", a space preset's name, "search")."""

    def point(self, objectives: list[str]) -> tuple[float, ...]:
        return tuple(float(self.rungs[-1][m]) for m in objectives)


@dataclass
class Curves:
    """What the replay needs from a curves file."""

    path: Path
    space: str
    objectives: list[str]
    modes: list[str]
    asha: dict[str, Any]
    rung_steps: int
    num_rungs: int
    max_concurrent: int
    configs: list[Config]
    """Every distinct configuration with all rungs recorded."""
    presets: list[tuple[str, int]]
    """(role, config index) of the preset trials, in the order the product runs them (baseline, paper, the
    space's own presets)."""
    names: list[str]
    """Parameters that vary across the searched grid, in PARAM_NAMES order."""
    domains: dict[str, list[Any]]
    """Sorted values of each searched parameter."""
    index: dict[tuple, int] = field(default_factory=dict)
    """Values of the searched parameters -> config index (the grid points)."""
    notes: list[str] = field(default_factory=list)
    """Recorded trials merged or left out, and why."""

    def key(self, params: dict[str, Any]) -> tuple:
        return tuple(params.get(n) for n in self.names)

    @property
    def grid(self) -> list[int]:
        """Config indices of the grid points."""
        return sorted(set(self.index.values()))

    @property
    def full_budget(self) -> int:
        return len(self.configs) * self.num_rungs * self.rung_steps


def _sort_values(values: list[Any]) -> list[Any]:
    return sorted(values, key=lambda v: (isinstance(v, str), v))


def _fingerprint(params: dict[str, Any]) -> str:
    return json.dumps([{k: params.get(k) for k in PARAM_NAMES}, params.get("prior_options") or {}], sort_keys=True)


def load_curves(path: Path, *, presets: bool = True) -> Curves:
    """Read a curves file (bench/record_curves.py's format). Trials with the same parameters are one
    configuration (the first recording is kept); presets=False drops the preset-only configurations."""
    doc = json.loads(Path(path).read_text())
    num_rungs = int(doc["num_rungs"])
    objectives = [o["metric"] for o in doc["objectives"]]
    modes = [o.get("mode", "max") for o in doc["objectives"]]
    notes: list[str] = []
    configs: list[Config] = []
    by_fingerprint: dict[str, int] = {}
    for c in doc["configs"]:
        role = c.get("role") or "search"
        label = f"{c['run'] + ' ' if c.get('run') else ''}trial {c.get('trial')} ({role})"
        rungs = sorted(c["rungs"], key=lambda r: r["rung"])
        if [r["rung"] for r in rungs] != list(range(1, num_rungs + 1)):
            notes.append(f"{label}: left out, {len(rungs)} of {num_rungs} rungs recorded")
            continue
        if not all(isinstance(rungs[-1].get(m), (int, float)) and math.isfinite(rungs[-1][m]) for m in objectives):
            notes.append(f"{label}: left out, objectives missing at the last rung")
            continue
        params = {k: c["params"].get(k) for k in PARAM_NAMES}
        if c["params"].get("prior_options"):
            params["prior_options"] = c["params"]["prior_options"]
        fp = _fingerprint(params)
        if fp in by_fingerprint:
            first = configs[by_fingerprint[fp]]
            same = first.point(objectives) == tuple(float(rungs[-1][m]) for m in objectives)
            notes.append(
                f"{label}: same parameters as the {'/'.join(first.roles)} trial recorded before; "
                f"{'identical' if same else 'different'} final values ({', '.join(f'{v:g}' for v in (rungs[-1][m] for m in objectives))}), "
                f"the first recording is used"
            )
            first.roles.append(role)
            continue
        by_fingerprint[fp] = len(configs)
        configs.append(Config(params=params, rungs=rungs, roles=[role]))
    if not configs:
        raise ValueError(f"{path}: no configuration with all {num_rungs} rungs recorded")
    searched = [c for c in configs if "search" in c.roles] or configs
    names = [n for n in PARAM_NAMES if len({json.dumps(c.params[n]) for c in searched}) > 1]
    domains = {n: _sort_values(list({json.dumps(c.params[n]): c.params[n] for c in searched}.values())) for n in names}
    fixed = {n: searched[0].params[n] for n in PARAM_NAMES if n not in names}
    # A preset whose parameters are a grid point is that grid point's recording too: the search's own proposal
    # of it was answered from the preset's run (whether a "search" trial also ran it depends on timing).
    searched += [
        c for c in configs
        if c not in searched
        and all(c.params[n] in domains[n] for n in names)
        and all(c.params[n] == v for n, v in fixed.items())
    ]
    if not presets and len(searched) < len(configs):
        for c in configs:
            if c not in searched:
                notes.append(f"{'/'.join(c.roles)} configuration left out (no presets)")
        configs = searched
    curves = Curves(
        path=Path(path),
        space=str(doc.get("space")),
        objectives=objectives,
        modes=modes,
        asha=dict(doc["asha"]),
        rung_steps=int(doc["rung_steps"]),
        num_rungs=num_rungs,
        max_concurrent=int(doc.get("max_concurrent") or 1),
        configs=configs,
        presets=[],
        names=names,
        domains=domains,
        notes=notes,
    )
    curves.index = {curves.key(c.params): i for i, c in enumerate(configs) if c in searched}
    if presets:
        # The product's order: baseline, paper, then the space's own presets (roles named after them) in the
        # order they were first recorded (the file order of the space's presets).
        named = [r for c in configs for r in c.roles if r not in ("baseline", "paper", "search")]
        for role in ("baseline", "paper", *dict.fromkeys(named)):
            curves.presets += [(role, i) for i, c in enumerate(configs) if role in c.roles][:1]
    return curves


# ---- proposers: who picks the next configuration -----------------------------------------------------------


class Proposer(Protocol):
    def ask(self) -> Optional[tuple[Any, int]]:
        """(handle told back, config index) of the next trial, or None when the search has no more."""

    def tell(self, handle: Any, state: str, values: Optional[list[float]]) -> None: ...


class FixedOrder:
    """Configurations in a given order, each once; then no more (the search ends)."""

    def __init__(self, order: list[int]) -> None:
        self._order = list(order)

    def ask(self) -> Optional[tuple[Any, int]]:
        return (None, self._order.pop(0)) if self._order else None

    def tell(self, handle: Any, state: str, values: Optional[list[float]]) -> None:
        pass


class UniformRandom:
    """The presets, then uniform draws over the grid points not run yet (Optuna's RandomSampler on categorical
    choices, with search.optuna_bridge answering repeats from the earlier run); the search ends when every
    point ran, as the product's does on a finite space."""

    def __init__(self, curves: Curves, seed: int) -> None:
        import random

        self._presets = [i for _, i in curves.presets]
        self._grid = curves.grid
        self._rng = random.Random(seed)
        self._run: set[int] = set()

    def ask(self) -> Optional[tuple[Any, int]]:
        if self._presets:
            idx = self._presets.pop(0)
        else:
            untried = [i for i in self._grid if i not in self._run]
            if not untried:
                return None
            idx = untried[self._rng.randrange(len(untried))]
        self._run.add(idx)
        return None, idx

    def tell(self, handle: Any, state: str, values: Optional[list[float]]) -> None:
        pass


class OptunaTPE:
    """The product's sampler (search.tuner.tpe_sampler) on the grid's categorical choices, with the
    presets enqueued as search.optuna_bridge.PrunedAwareOptunaSearch enqueues them."""

    def __init__(
        self, curves: Curves, seed: int, startup_trials: Optional[int] = None, learn_from_stopped: bool = False
    ) -> None:
        import optuna

        self._learn_from_stopped = learn_from_stopped
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self._optuna = optuna
        self._curves = curves
        from search.tuner import tpe_sampler

        sampler = tpe_sampler(seed, startup_trials)
        directions = ["maximize" if m == "max" else "minimize" for m in curves.modes]
        self.study = optuna.create_study(directions=directions, sampler=sampler)
        self._queue: list[tuple[int, list[str]]] = []
        for role, idx in curves.presets:
            params = curves.configs[idx].params
            # The baseline is enqueued without parameters; the other presets with those inside the searched domains.
            fixed = [] if role == "baseline" else [n for n in curves.names if params.get(n) in curves.domains[n]]
            self.study.enqueue_trial({n: params[n] for n in fixed}, user_attrs={"role": role})
            self._queue.append((idx, fixed))
        self.missing = 0
        self.repeats = 0
        self.untried_picks = 0
        self._seed = seed
        self._combinations = [
            dict(zip(curves.names, key)) for key in itertools.product(*(curves.domains[n] for n in curves.names))
            if key in curves.index
        ]

    def ask(self) -> Optional[tuple[Any, int]]:
        if self._queue:
            idx, fixed = self._queue.pop(0)
            trial = self.study.ask()
            for n in fixed:
                trial.suggest_categorical(n, self._curves.domains[n])
            return trial, idx
        from search.optuna_bridge import MAX_DUPLICATE_ASKS, REPEATS_ATTR, ask_untrained, pick_untried, untried

        if not untried(self._combinations, self.study):
            return None  # every grid point ran: the product's search ends here
        names, domains = self._curves.names, self._curves.domains

        def define(trial: Any) -> dict[str, Any]:
            return {n: trial.suggest_categorical(n, domains[n]) for n in names}

        def answered() -> int:
            return sum((self.study.user_attrs.get(REPEATS_ATTR) or {}).values())

        for _ in range(1000):
            before = answered()
            # The product's proposer (PrunedAwareOptunaSearch._ask_new): repeats are answered from the earlier
            # run without a study trial; after MAX_DUPLICATE_ASKS of them in a row an untried point runs.
            trial = ask_untrained(
                self.study, define, max_asks=MAX_DUPLICATE_ASKS, learn_from_stopped=self._learn_from_stopped
            )
            self.repeats += answered() - before
            if trial is None:
                pick = pick_untried(self._combinations, self.study, self._seed)
                self.study.enqueue_trial(pick, user_attrs={"untried_pick": True})
                self.untried_picks += 1
                trial = self.study.ask()
            params = define(trial)
            idx = self._curves.index.get(tuple(params[n] for n in names))
            if idx is None:
                # A combination the recording lacks (a grid point that failed): no data, no cost; told failed,
                # so later proposals of it are answered from the failure, as the product answers them.
                self.missing += 1
                self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
                continue
            return trial, idx
        raise RuntimeError("the sampler keeps proposing configurations the recording lacks")

    def tell(self, handle: Any, state: str, values: Optional[list[float]]) -> None:
        TrialState = self._optuna.trial.TrialState
        if state == COMPLETE:
            self.study.tell(handle, values)
        else:
            if state == PRUNED and values and all(v is not None and math.isfinite(v) for v in values):
                from search.optuna_bridge import RUNG_VALUES_ATTR

                handle.set_user_attr(RUNG_VALUES_ATTR, [float(v) for v in values])  # as the product records it
            self.study.tell(handle, state=TrialState.PRUNED if state == PRUNED else TrialState.FAIL)


def grid_order(curves: Curves) -> list[int]:
    """The fixed grid order: the presets, then itertools.product of the sorted choices (parameters in
    PARAM_NAMES order), then any other configuration; each configuration once."""
    order = [i for _, i in curves.presets]
    order += [curves.index[k] for k in itertools.product(*(curves.domains[n] for n in curves.names)) if k in curves.index]
    order += range(len(curves.configs))
    return list(dict.fromkeys(order))


# ---- the replay ----------------------------------------------------------------------------------------------


@dataclass
class Replay:
    """One replayed search."""

    completions: list[tuple[int, tuple[float, ...]]]
    """(trial-steps spent when the trial completed, its final objective values), in completion order."""
    trials: list[dict[str, Any]]
    """Per trial started: config index, rungs run, state (COMPLETE, PRUNED, or RUNNING when the budget ran out)."""
    spent: int


def make_bracket(curves: Curves):
    """Ray's ASHA bracket exactly as LoggedASHA builds it (AsyncHyperBandScheduler, one bracket, s = 0)."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    return _Bracket(
        min_t=int(curves.asha["grace_period"]),
        max_t=curves.num_rungs,
        reduction_factor=float(curves.asha["reduction_factor"]),
        s=0,
        stop_last_trials=True,
    )


def simulate(
    curves: Curves,
    proposer: Proposer,
    budget: int,
    *,
    asha: bool,
    concurrency: int = 1,
    oracle: bool = False,
    pareto: bool = False,
) -> Replay:
    """Run trials until `budget` trial-steps are spent, `concurrency` at a time in lockstep rung by rung
    (`oracle`: ASHA ranks each trial by its configuration's final rung; `pareto`: ASHA ranks on all objectives,
    asha.promotion "pareto"; see the module docstring)."""
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    from search.asha import ParetoRungs, objective_values, ranking_value

    bracket = make_bracket(curves) if asha and not pareto else None
    rungs_book = None
    if asha and pareto:
        rungs_book = ParetoRungs(
            num_rungs=curves.num_rungs,
            grace_period=int(curves.asha["grace_period"]),
            reduction_factor=float(curves.asha["reduction_factor"]),
            modes=["max"] * len(curves.objectives),
        )
    metric, mode = curves.asha["metric"], curves.asha.get("mode", "max")
    tie_break = curves.asha.get("tie_break", "train_loss")
    workers: list[Optional[dict[str, Any]]] = [None] * concurrency
    trials: list[dict[str, Any]] = []
    completions: list[tuple[int, tuple[float, ...]]] = []
    spent = 0
    exhausted = False
    while spent < budget:
        for w in range(concurrency):
            if workers[w] is None and not exhausted:
                asked = proposer.ask()
                if asked is None:
                    exhausted = True
                    continue
                handle, idx = asked
                workers[w] = {"handle": handle, "config": idx, "rungs": 0, "state": "RUNNING", "id": f"t{len(trials)}"}
                trials.append(workers[w])  # type: ignore[arg-type]
        if all(t is None for t in workers):
            break
        done_this_round: list[tuple[float, ...]] = []
        for w in range(concurrency):
            t = workers[w]
            if t is None or spent >= budget:
                continue
            config = curves.configs[t["config"]]
            t["rungs"] += 1
            spent += curves.rung_steps
            row = config.rungs[t["rungs"] - 1]
            if t["rungs"] >= curves.num_rungs:
                t["state"] = COMPLETE
                point = config.point(curves.objectives)
                done_this_round.append(point)
                proposer.tell(t["handle"], COMPLETE, list(point))
                workers[w] = None
            elif bracket is not None or rungs_book is not None:
                if rungs_book is not None:
                    values = objective_values(row, list(zip(curves.objectives, curves.modes)), tie_break)
                    action = None if values is None else rungs_book.decide(t["id"], t["rungs"], values)[0]
                else:
                    score = ranking_value(config.rungs[-1] if oracle else row, metric, mode, tie_break)
                    action = None if score is None else bracket.on_result(SimpleNamespace(trial_id=t["id"]), t["rungs"], score)
                # None: no usable values, no decision (as LoggedASHA and ParetoASHA do)
                if action == TrialScheduler.STOP:
                    t["state"] = PRUNED
                    rung_values = [row.get(m) for m in curves.objectives]  # the stopped trial's last rung
                    proposer.tell(t["handle"], PRUNED, rung_values)
                    workers[w] = None
        # The trials of a round run side by side: what completes in it is there once the whole round is spent.
        completions += [(spent, point) for point in done_this_round]
    for t in trials:
        t.pop("handle", None)
    return Replay(completions=completions, trials=trials, spent=spent)


def hv_at(replay: Replay, budget: float, curves: Curves) -> float:
    """Hypervolume of the trials completed within `budget` trial-steps (reference: 0 on every objective)."""
    from search.pareto import hypervolume

    points = [p for spent, p in replay.completions if spent <= budget]
    return hypervolume(points, curves.modes, [0.0] * len(curves.modes)) if points else 0.0


# ---- the report ---------------------------------------------------------------------------------------------


def _fmt_params(curves: Curves, config: Config) -> str:
    shown = [n for n in PARAM_NAMES if n in curves.names or (n == "alpha" and "search" not in config.roles)]
    text = " ".join(f"{n}={config.params[n]}" for n in shown) or "(one configuration)"
    presets = [r for r in config.roles if r != "search"]
    return text + (f" [{'/'.join(presets)}]" if presets else "")


@dataclass
class Outcome:
    """Mean hypervolume ratios of every method over the seeds."""

    budgets: list[float]
    table: dict[str, list[float]]
    """method -> mean HV / full HV at each budget."""
    third: dict[str, float]
    """method -> mean HV / full HV at one third of the full budget."""
    hit: float
    """Share of asha+tpe seeds at or above the target at one third."""
    asha_stats: dict[str, float]
    """asha+tpe per seed: trials started, stopped, completed, distinct configurations completed."""


METHODS = ("asha+tpe", "tpe+rungs", "random", "grid", "oracle", "pareto")
"""tpe+rungs: asha+tpe whose sampler learns from stopped trials (space learn_from_stopped: true)."""


def replay_all(
    curves: Curves, seeds: int, concurrency: int, full_hv: float, startup_trials: Optional[int] = None
) -> Outcome:
    """Every method over `seeds` seeds, up to the full budget (startup_trials: the space's, for TPE)."""
    full_budget = curves.full_budget
    budgets = [full_budget * k / BUDGET_POINTS for k in range(1, BUDGET_POINTS + 1)]
    third = full_budget / 3
    table = {m: [0.0] * len(budgets) for m in METHODS}
    at_third = {m: [0.0] * seeds for m in METHODS}
    stats = {"trials": 0.0, "pruned": 0.0, "completed": 0.0, "distinct": 0.0, "missing": 0.0, "repeats": 0.0, "untried": 0.0}
    grid_replay = simulate(curves, FixedOrder(grid_order(curves)), full_budget, asha=False, concurrency=concurrency)
    for seed in range(seeds):
        tpe = OptunaTPE(curves, seed, startup_trials)
        replays = {
            "asha+tpe": simulate(curves, tpe, full_budget, asha=True, concurrency=concurrency),
            "tpe+rungs": simulate(
                curves, OptunaTPE(curves, seed, startup_trials, learn_from_stopped=True), full_budget, asha=True,
                concurrency=concurrency,
            ),
            "random": simulate(curves, UniformRandom(curves, seed), full_budget, asha=False, concurrency=concurrency),
            "grid": grid_replay,
            "oracle": simulate(curves, OptunaTPE(curves, seed, startup_trials), full_budget, asha=True, concurrency=concurrency, oracle=True),
            "pareto": simulate(curves, OptunaTPE(curves, seed, startup_trials), full_budget, asha=True, concurrency=concurrency, pareto=True),
        }
        for m, rp in replays.items():
            for j, b in enumerate(budgets):
                table[m][j] += hv_at(rp, b, curves) / full_hv / seeds
            at_third[m][seed] = hv_at(rp, third, curves) / full_hv
        run_trials = [t for t in replays["asha+tpe"].trials if t["rungs"]]
        stats["trials"] += len(run_trials) / seeds
        stats["pruned"] += sum(t["state"] == PRUNED for t in run_trials) / seeds
        stats["completed"] += sum(t["state"] == COMPLETE for t in run_trials) / seeds
        stats["distinct"] += len({t["config"] for t in run_trials if t["state"] == COMPLETE}) / seeds
        stats["missing"] += tpe.missing / seeds
        stats["repeats"] += tpe.repeats / seeds
        stats["untried"] += tpe.untried_picks / seeds
    return Outcome(
        budgets=budgets,
        table=table,
        third={m: sum(v) / seeds for m, v in at_third.items()},
        hit=sum(v >= TARGET for v in at_third["asha+tpe"]) / seeds,
        asha_stats=stats,
    )


def _ratio_line(prefix: str, curves: Curves, seeds: int, out: Outcome) -> str:
    verdict = "PASS" if out.third["asha+tpe"] >= TARGET else "MISS"
    return (
        f"{prefix} ({curves.full_budget / 3:.0f} of {curves.full_budget} trial-steps), mean HV / full HV over "
        f"{seeds} seeds: asha+tpe {out.third['asha+tpe']:.3f} (target >= {TARGET}: {verdict}; {out.hit:.0%} of "
        f"seeds >= {TARGET}), tpe+rungs (learn_from_stopped) {out.third['tpe+rungs']:.3f}, "
        f"random {out.third['random']:.3f}, grid {out.third['grid']:.3f}; "
        f"oracle (ASHA deciding on final values) {out.third['oracle']:.3f}; "
        f"pareto (asha.promotion pareto) {out.third['pareto']:.3f}"
    )


def _print_table(curves: Curves, seeds: int, out: Outcome, title: str) -> None:
    print()
    print(f"{title}hypervolume reached / full hypervolume, mean over {seeds} seeds (grid: one fixed order)")
    print(f"{'trial-steps':>11} {'of full':>7} " + " ".join(f"{m:>9}" for m in METHODS))
    for j, b in enumerate(out.budgets):
        print(f"{b:>11g} {b / curves.full_budget:>7.0%} " + " ".join(f"{out.table[m][j]:>9.3f}" for m in METHODS))
    st = out.asha_stats
    print(
        f"asha+tpe per seed up to the full budget: {st['trials']:.1f} trials run, {st['pruned']:.1f} stopped by ASHA, "
        f"{st['completed']:.1f} completed ({st['distinct']:.1f} distinct configurations), "
        f"{st['repeats']:.1f} repeated proposals answered from earlier runs, {st['untried']:.1f} untried grid points "
        "run after the sampler repeated itself"
        + (f"; {st['missing']:.1f} proposals outside the recording" if st["missing"] else "")
    )


def run(
    curves_path: Path, seeds: int, concurrency: Optional[int], presets: bool = True, startup_trials: Optional[int] = None
) -> int:
    t0 = time.perf_counter()
    from search.pareto import hypervolume, non_dominated

    curves = load_curves(curves_path, presets=presets)
    conc = concurrency or curves.max_concurrent
    points = [c.point(curves.objectives) for c in curves.configs]
    full_hv = hypervolume(points, curves.modes, [0.0] * len(curves.modes))
    front = set(non_dominated(points, curves.modes))

    print(f"data: {curves.path} (space {curves.space})")
    searched = ", ".join(f"{k} {v}" for k, v in curves.domains.items()) or "nothing"
    print(
        f"{len(curves.configs)} configurations x {curves.num_rungs} rungs of {curves.rung_steps} steps: "
        f"{len(curves.grid)} grid points (searched: {searched})"
        + (f" + presets run first: {', '.join(r for r, _ in curves.presets)}" if curves.presets else "; no presets")
    )
    for note in curves.notes:
        print(f"  {note}")
    print(
        f"ASHA: metric {curves.asha['metric']}, grace period {curves.asha['grace_period']}, reduction factor "
        f"{curves.asha['reduction_factor']}, tie break {curves.asha.get('tie_break', 'train_loss')}; "
        f"{conc} trials at a time; TPE start-up trials "
        f"{startup_trials if startup_trials is not None else '10 (Optuna default)'}"
    )
    asha_metric = curves.asha["metric"]
    print(f"final {' x '.join(curves.objectives)} per configuration (* = Pareto front), {asha_metric} per rung:")
    for i, c in enumerate(curves.configs):
        curve = " ".join(f"{r.get(asha_metric, float('nan')):.3f}" for r in c.rungs)
        print(f"  {'*' if i in front else ' '} {_fmt_params(curves, c):<44} {' '.join(f'{v:.3f}' for v in points[i])}   {curve}")
    print(f"full hypervolume (every configuration, reference 0): {full_hv:.6g}; full budget {curves.full_budget} trial-steps")
    if len(set(points)) == 1:
        print("the recorded metrics do not discriminate: every configuration ends at the same point")
    if full_hv <= 0:
        print("full hypervolume is 0 (no configuration is above 0 on every objective): no ratio to report")
        return 0

    out = replay_all(curves, seeds, conc, full_hv, startup_trials)
    _print_table(curves, seeds, out, "")
    lines = [_ratio_line("ratio at 1/3 budget", curves, seeds, out)]
    if presets and any(i not in curves.grid for _, i in curves.presets):
        # The same replay on the grid alone: how the methods compare once the fixed preset trials are left aside.
        bare = load_curves(curves_path, presets=False)
        bare_points = [c.point(bare.objectives) for c in bare.configs]
        bare_hv = hypervolume(bare_points, bare.modes, [0.0] * len(bare.modes))
        if bare_hv > 0:
            bare_out = replay_all(bare, seeds, conc, bare_hv, startup_trials)
            _print_table(bare, seeds, bare_out, f"without the presets (grid points only; full hypervolume {bare_hv:.6g}), ")
            lines.append(_ratio_line("without the presets (grid points only), ratio at 1/3 budget", bare, seeds, bare_out))
    print()
    for line in lines:
        print(line)
    print(f"seeds: {seeds}; data: {curves.path}; {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curves", type=Path, default=DEFAULT_CURVES, help="recorded curves (bench/record_curves.py)")
    parser.add_argument("--seeds", type=int, default=50, help="replays per seeded method")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="trials at a time (default: the recorded search's max_concurrent)"
    )
    parser.add_argument(
        "--no-presets", action="store_true", help="leave out the preset trials (baseline, paper, the space's presets) that are not grid points"
    )
    parser.add_argument(
        "--startup-trials", type=int, default=None,
        help="the space's startup_trials: random TPE proposals before it models results (default: Optuna's 10)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.startup_trials is not None and args.startup_trials < 1:
        parser.error("--startup-trials must be >= 1")
    try:
        return run(args.curves, args.seeds, args.concurrency, presets=not args.no_presets, startup_trials=args.startup_trials)
    except (OSError, ValueError, KeyError) as e:
        print(f"search_efficiency: {args.curves}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
