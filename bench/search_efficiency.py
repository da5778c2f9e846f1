"""Is ASHA + Optuna cheaper than plain search? A replay on recorded learning curves, no training.

Data: full learning curves of a grid of IB-FT configurations recorded once from a real search without early
stopping (spaces/smollm2-grid.yaml; bench/record_curves.py wrote bench/data/smollm2_curves.json with the
commands that produced it). Every replayed trial of a configuration sees exactly the recorded per-rung
results of that configuration (same seed in the product: a rerun reproduces them).

Methods, each spending the same currency, trial-steps (optimizer steps summed over trials; a trial stopped
after r rungs costs r * rung_steps), with the recording's max_concurrent trials running side by side (rungs
of equal duration, so trials advance in lockstep and report in worker order):
- asha+tpe: the product's search. Optuna TPESampler(multivariate, group, constant_liar, seeded) on both
  objectives, the parameters restricted to the recorded grid as categorical choices; Ray's own ASHA bracket
  (ray.tune.schedulers.async_hyperband._Bracket, as search.asha.LoggedASHA drives it: grace period and
  reduction factor of the recorded space, asynchronous promotion: at each milestone rung a trial goes on when
  its value is not below the (1 - 1/rf) percentile of the values recorded at that rung so far) ranking by
  search.asha.ranking_value (ties broken by the rung's train CE); stopped trials are told to Optuna as
  PRUNED, trials that reach the last rung as COMPLETE with their final values.
- random: configurations drawn uniformly (with replacement, as Optuna's RandomSampler does), full budget each.
- grid: every configuration once in a fixed order (the product of the choices, in the order the parameters
  and their sorted values appear), full budget each; the same in every seed.
Hypervolume (search.pareto.hypervolume, Optuna's exact algorithm) of the final validation objectives of the
trials that completed by a given spend, reference point 0 on every objective, divided by the hypervolume of
the whole grid (every configuration at full budget). The grid's full budget is
configurations x max_steps trial-steps; the headline is the mean ratio at one third of it (target >= 0.95).

Usage: python bench/search_efficiency.py [--curves bench/data/smollm2_curves.json] [--seeds 50]
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
    """One grid configuration and its recorded curve."""

    params: dict[str, Any]
    rungs: list[dict[str, Any]]
    """Per rung (1-based order): the reported metrics (val/..., train/ce_loss_rung...)."""

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
    """The grid: distinct configurations with every rung recorded."""
    names: list[str]
    """Parameters that vary across the grid (the searched ones), in PARAM_NAMES order."""
    domains: dict[str, list[Any]]
    """Sorted values of each searched parameter."""
    index: dict[tuple, int] = field(default_factory=dict)
    """Values of the searched parameters -> config index."""
    skipped: list[str] = field(default_factory=list)
    """Recorded trials left out of the grid, and why."""

    def key(self, params: dict[str, Any]) -> tuple:
        return tuple(params.get(n) for n in self.names)

    @property
    def full_budget(self) -> int:
        return len(self.configs) * self.num_rungs * self.rung_steps


def _sort_values(values: list[Any]) -> list[Any]:
    return sorted(values, key=lambda v: (isinstance(v, str), v))


def load_curves(path: Path) -> Curves:
    """Read a curves file (bench/record_curves.py's format); the grid is its `search` trials with full curves."""
    doc = json.loads(Path(path).read_text())
    num_rungs = int(doc["num_rungs"])
    objectives = [o["metric"] for o in doc["objectives"]]
    modes = [o.get("mode", "max") for o in doc["objectives"]]
    skipped: list[str] = []
    roles = {c.get("role", "search") for c in doc["configs"]}
    configs: list[Config] = []
    seen: set[str] = set()
    for c in doc["configs"]:
        label = f"trial {c.get('trial')} ({c.get('role', 'search')})"
        if "search" in roles and c.get("role", "search") != "search":
            skipped.append(f"{label}: preset trial, not a grid point")
            continue
        rungs = sorted(c["rungs"], key=lambda r: r["rung"])
        if [r["rung"] for r in rungs] != list(range(1, num_rungs + 1)):
            skipped.append(f"{label}: {len(rungs)} of {num_rungs} rungs recorded")
            continue
        if not all(isinstance(rungs[-1].get(m), (int, float)) and math.isfinite(rungs[-1][m]) for m in objectives):
            skipped.append(f"{label}: objectives missing at the last rung")
            continue
        params = {k: c["params"].get(k) for k in PARAM_NAMES}
        fingerprint = json.dumps([params, c["params"].get("prior_options") or {}], sort_keys=True)
        if fingerprint in seen:
            skipped.append(f"{label}: repeats an earlier configuration")
            continue
        seen.add(fingerprint)
        configs.append(Config(params=params, rungs=rungs))
    if not configs:
        raise ValueError(f"{path}: no configuration with all {num_rungs} rungs recorded")
    names = [n for n in PARAM_NAMES if len({json.dumps(c.params[n]) for c in configs}) > 1]
    domains = {n: _sort_values(list({json.dumps(c.params[n]): c.params[n] for c in configs}.values())) for n in names}
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
        names=names,
        domains=domains,
        skipped=skipped,
    )
    curves.index = {curves.key(c.params): i for i, c in enumerate(configs)}
    return curves


# ---- proposers: who picks the next configuration -----------------------------------------------------------


class Proposer(Protocol):
    def ask(self) -> tuple[Any, int]: ...

    def tell(self, handle: Any, state: str, values: Optional[list[float]]) -> None: ...


class FixedOrder:
    """Configurations in a given order, cycling when the list is exhausted."""

    def __init__(self, order: list[int]) -> None:
        self._order = order
        self._i = 0

    def ask(self) -> tuple[Any, int]:
        idx = self._order[self._i % len(self._order)]
        self._i += 1
        return None, idx

    def tell(self, handle: Any, state: str, values: Optional[list[float]]) -> None:
        pass


class UniformRandom:
    """Uniform draws over the grid, with replacement (Optuna's RandomSampler on categorical choices)."""

    def __init__(self, n: int, seed: int) -> None:
        import random

        self._n = n
        self._rng = random.Random(seed)

    def ask(self) -> tuple[Any, int]:
        return None, self._rng.randrange(self._n)

    def tell(self, handle: Any, state: str, values: Optional[list[float]]) -> None:
        pass


class OptunaTPE:
    """The product's sampler (search.tuner._sampler, sampler "tpe") on the grid's categorical choices."""

    def __init__(self, curves: Curves, seed: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self._optuna = optuna
        self._curves = curves
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
        directions = ["maximize" if m == "max" else "minimize" for m in curves.modes]
        self.study = optuna.create_study(directions=directions, sampler=sampler)
        self.missing = 0

    def ask(self) -> tuple[Any, int]:
        for _ in range(1000):
            trial = self.study.ask()
            params = {n: trial.suggest_categorical(n, self._curves.domains[n]) for n in self._curves.names}
            idx = self._curves.index.get(tuple(params[n] for n in self._curves.names))
            if idx is not None:
                return trial, idx
            # A combination the recording lacks (a grid point that failed): no data, no cost; tell it failed.
            self.missing += 1
            self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        raise RuntimeError("the sampler keeps proposing configurations the recording lacks")

    def tell(self, handle: Any, state: str, values: Optional[list[float]]) -> None:
        TrialState = self._optuna.trial.TrialState
        if state == COMPLETE:
            self.study.tell(handle, values)
        else:
            self.study.tell(handle, state=TrialState.PRUNED if state == PRUNED else TrialState.FAIL)


def grid_order(curves: Curves) -> list[int]:
    """The fixed grid order: itertools.product of the sorted choices, parameters in PARAM_NAMES order."""
    order = [curves.index[key] for key in itertools.product(*(curves.domains[n] for n in curves.names)) if key in curves.index]
    return order + [i for i in range(len(curves.configs)) if i not in order]


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


def simulate(curves: Curves, proposer: Proposer, budget: int, *, asha: bool, concurrency: int = 1) -> Replay:
    """Run trials until `budget` trial-steps are spent, `concurrency` at a time in lockstep rung by rung."""
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    from search.asha import ranking_value

    bracket = make_bracket(curves) if asha else None
    metric, mode = curves.asha["metric"], curves.asha.get("mode", "max")
    tie_break = curves.asha.get("tie_break", "train_loss")
    workers: list[Optional[dict[str, Any]]] = [None] * concurrency
    trials: list[dict[str, Any]] = []
    completions: list[tuple[int, tuple[float, ...]]] = []
    spent = 0
    while spent < budget:
        for w in range(concurrency):
            if workers[w] is None:
                handle, idx = proposer.ask()
                workers[w] = {"handle": handle, "config": idx, "rungs": 0, "state": "RUNNING", "id": f"t{len(trials)}"}
                trials.append(workers[w])  # type: ignore[arg-type]
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
            elif bracket is not None:
                score = ranking_value(row, metric, mode, tie_break)
                if score is None:
                    continue  # LoggedASHA: no usable metric, no decision
                action = bracket.on_result(SimpleNamespace(trial_id=t["id"]), t["rungs"], score)
                if action == TrialScheduler.STOP:
                    t["state"] = PRUNED
                    proposer.tell(t["handle"], PRUNED, None)
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


def _fmt_params(curves: Curves, params: dict[str, Any]) -> str:
    return " ".join(f"{n}={params[n]}" for n in curves.names) or "(one configuration)"


def run(curves_path: Path, seeds: int, concurrency: Optional[int]) -> int:
    t0 = time.perf_counter()
    from search.pareto import hypervolume, non_dominated

    curves = load_curves(curves_path)
    conc = concurrency or curves.max_concurrent
    n = len(curves.configs)
    full_budget = curves.full_budget
    third = full_budget / 3
    points = [c.point(curves.objectives) for c in curves.configs]
    ref = [0.0] * len(curves.modes)
    full_hv = hypervolume(points, curves.modes, ref)
    front = set(non_dominated(points, curves.modes))

    print(f"data: {curves.path} (space {curves.space})")
    print(
        f"grid: {n} configurations x {curves.num_rungs} rungs of {curves.rung_steps} steps; searched: "
        f"{', '.join(f'{k} {v}' for k, v in curves.domains.items()) or 'nothing'}"
    )
    for note in curves.skipped:
        print(f"  left out: {note}")
    print(
        f"ASHA: metric {curves.asha['metric']}, grace period {curves.asha['grace_period']}, reduction factor "
        f"{curves.asha['reduction_factor']}, tie break {curves.asha.get('tie_break', 'train_loss')}; "
        f"{conc} trials at a time"
    )
    obj = " x ".join(curves.objectives)
    print(f"final validation {obj} per configuration (* = Pareto front):")
    asha_metric = curves.asha["metric"]
    for i, c in enumerate(curves.configs):
        curve = " ".join(f"{r.get(asha_metric, float('nan')):.3f}" for r in c.rungs)
        print(
            f"  {'*' if i in front else ' '} {_fmt_params(curves, c.params):<48} "
            f"{' '.join(f'{v:.3f}' for v in points[i])}   {asha_metric} per rung: {curve}"
        )
    print(f"full-grid hypervolume (reference 0): {full_hv:.6g}; full budget {full_budget} trial-steps")
    if len({p for p in points}) == 1:
        print("the recorded metrics do not discriminate: every configuration ends at the same point")
    if full_hv <= 0:
        print("full-grid hypervolume is 0 (no configuration is above 0 on every objective): no ratio to report")
        return 0

    budgets = [full_budget * k / BUDGET_POINTS for k in range(1, BUDGET_POINTS + 1)]
    methods = ("asha+tpe", "random", "grid")
    table = {m: [[0.0] * len(budgets) for _ in range(seeds)] for m in methods}
    at_third = {m: [0.0] * seeds for m in methods}
    asha_stats = {"trials": 0, "pruned": 0, "completed": 0, "distinct": 0, "missing": 0}
    grid_replay = simulate(curves, FixedOrder(grid_order(curves)), full_budget, asha=False, concurrency=conc)
    for seed in range(seeds):
        tpe = OptunaTPE(curves, seed)
        replays = {
            "asha+tpe": simulate(curves, tpe, full_budget, asha=True, concurrency=conc),
            "random": simulate(curves, UniformRandom(n, seed), full_budget, asha=False, concurrency=conc),
            "grid": grid_replay,
        }
        for m, rp in replays.items():
            table[m][seed] = [hv_at(rp, b, curves) / full_hv for b in budgets]
            at_third[m][seed] = hv_at(rp, third, curves) / full_hv
        rp = replays["asha+tpe"]
        within = [t for t in rp.trials if t["state"] != "RUNNING" or t["rungs"]]
        asha_stats["trials"] += len(within)
        asha_stats["pruned"] += sum(t["state"] == PRUNED for t in within)
        asha_stats["completed"] += sum(t["state"] == COMPLETE for t in within)
        asha_stats["distinct"] += len({t["config"] for t in within if t["state"] == COMPLETE})
        asha_stats["missing"] += tpe.missing

    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print()
    print(f"hypervolume reached / full-grid hypervolume, mean over {seeds} seeds (grid: one fixed order)")
    print(f"{'trial-steps':>11} {'of full':>7} " + " ".join(f"{m:>9}" for m in methods))
    for j, b in enumerate(budgets):
        print(f"{b:>11g} {b / full_budget:>7.0%} " + " ".join(f"{mean([r[j] for r in table[m]]):>9.3f}" for m in methods))
    print(
        f"asha+tpe per seed at full budget: {asha_stats['trials'] / seeds:.1f} trials started, "
        f"{asha_stats['pruned'] / seeds:.1f} stopped by ASHA, {asha_stats['completed'] / seeds:.1f} completed "
        f"({asha_stats['distinct'] / seeds:.1f} distinct configurations)"
        + (f"; {asha_stats['missing'] / seeds:.1f} proposals outside the recording" if asha_stats["missing"] else "")
    )
    ratio = {m: mean(at_third[m]) for m in methods}
    hit = sum(v >= TARGET for v in at_third["asha+tpe"]) / seeds
    verdict = "PASS" if ratio["asha+tpe"] >= TARGET else "MISS"
    print()
    print(
        f"ratio at 1/3 budget ({third:.0f} of {full_budget} trial-steps), mean HV / full HV over {seeds} seeds: "
        f"asha+tpe {ratio['asha+tpe']:.3f} (target >= {TARGET}: {verdict}; {hit:.0%} of seeds >= {TARGET}), "
        f"random {ratio['random']:.3f}, grid {ratio['grid']:.3f}"
    )
    print(f"seeds: {seeds}; data: {curves.path}; {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curves", type=Path, default=DEFAULT_CURVES, help="recorded curves (bench/record_curves.py)")
    parser.add_argument("--seeds", type=int, default=50, help="replays per seeded method")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="trials at a time (default: the recorded search's max_concurrent)"
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    try:
        return run(args.curves, args.seeds, args.concurrency)
    except (OSError, ValueError, KeyError) as e:
        print(f"search_efficiency: {args.curves}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
