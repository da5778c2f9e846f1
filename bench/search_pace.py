"""The pace of a search, measured from its run directory: the t's of the cost formula in docs/cluster.md §8.

    t_step   seconds per optimizer step of one trial (median of `step_time_s` in every trial's
             trials/<id>/work/metrics.jsonl, each trial's first 2 steps left out: compilation and warm-up)
    t_val    seconds per validation evaluation after a trial's first (median of `val/eval_seconds`; the first
             one of each trial also warms up generation and is shown on its own)
    t_test   seconds per test evaluation (median of `test/eval_seconds`)
    t_start  seconds from a trial's start to its first step: Ray Train workers, model load, engine set-up
             (rung 1's `time_this_iter_s` minus its steps and its validation)

and where a trial's start goes: the median of each part the trials recorded in metrics.jsonl ({"start": ...},
trainables.train.start_clock.START_PARTS), from the Tune function's start to the end of the first step.

It then prints the GPU-hours (or core-hours) the run's own space would cost under the formula, at ASHA's
ideal budget and at full budget. Reads only files; needs no Ray.

Usage: python bench/search_pace.py RUN_DIR [--space SPACE.yaml] [--gpus-per-trial G]
(G defaults to the space's workers x gpus_per_worker; --space prices another space at the run's pace)
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

WARMUP_STEPS = 2


def json_lines(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line cut off by a kill
    return rows


def trial_paces(run_dir: Path) -> dict[str, list[float]]:
    """Per-quantity samples over every trial of the run that reported at least one rung."""
    samples: dict[str, list[float]] = {"step": [], "val": [], "first_val": [], "test": [], "start": [], "parts": []}
    for result_file in sorted((run_dir / "tune").glob("*/result.json")):
        results = [r for r in json_lines(result_file) if r.get("rung") is not None]
        trial_id = results[0].get("trial_id") if results else None
        metrics_file = run_dir / "trials" / str(trial_id) / "work" / "metrics.jsonl"
        if not results or not metrics_file.is_file():
            continue
        rows = json_lines(metrics_file)
        steps = [r["step_time_s"] for r in rows if "step_time_s" in r]
        samples["parts"] += [r["start"] for r in rows if isinstance(r.get("start"), dict) and not r.get("resumed")]
        samples["step"] += steps[WARMUP_STEPS:]
        first = results[0]
        samples["first_val"].append(first["val/eval_seconds"])
        samples["val"] += [r["val/eval_seconds"] for r in results[1:] if "val/eval_seconds" in r]
        samples["test"] += [r["test/eval_seconds"] for r in results if "test/eval_seconds" in r]
        first_rung_steps = steps[: int(first.get("step") or 0)]
        samples["start"].append(first["time_this_iter_s"] - sum(first_rung_steps) - first["val/eval_seconds"])
    return samples


def print_start_parts(parts: list[dict[str, float]]) -> None:
    """The median of each start part over the trials' first starts (a resumed start is left out), in START_PARTS order."""
    if not parts:
        print("start parts: none recorded (a run made before trials recorded them)")
        return
    from trainables.train.start_clock import START_PARTS

    print(f"where a start goes (median over {len(parts)} trial start(s), seconds; to the end of the first step):")
    for name in [*START_PARTS, "total"]:
        values = [p[name] for p in parts if name in p]
        if values:
            spread = f"  ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""
            what = START_PARTS.get(name, "from the trial's start to the end of its first step")
            print(f"  {name:<15} {statistics.median(values):7.2f}{spread:<16} {what}")


def asha_budget(num_samples: int, num_rungs: int, rung_steps: int, grace: int, rf: int) -> dict[str, float]:
    """Trial-steps, validations and test evaluations at ASHA's ideal cut (1/rf go on at each decision point)."""
    points = int(math.log(num_rungs / grace) / math.log(rf) + 1) if num_rungs > grace else 0
    rungs = [grace * rf**k for k in range(points) if grace * rf**k < num_rungs]
    trials, last, steps, vals = float(num_samples), 0, 0.0, 0.0
    for rung in rungs:
        steps += trials * (rung - last) * rung_steps
        vals += trials * (rung - last)
        trials, last = trials / rf, rung
    steps += trials * (num_rungs - last) * rung_steps
    vals += trials * (num_rungs - last)
    return {"trial_steps": steps, "val_evals": vals, "test_evals": trials}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--gpus-per-trial", type=float, help="G of the formula (default: from the space)")
    parser.add_argument("--space", type=Path, help="price this space's budget at the run's pace (default: "
                        "RUN_DIR/space.yaml, the space the run searched)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from search.space import load_space  # pydantic only: no torch, no Ray

    space = load_space(args.space or args.run_dir / "space.yaml")
    samples = trial_paces(args.run_dir)
    if not samples["step"]:
        print(f"no trial of {args.run_dir} has reported a rung yet", file=sys.stderr)
        return 1
    parts = samples.pop("parts")
    t = {name: statistics.median(values) if values else 0.0 for name, values in samples.items()}
    for name, unit in (("step", "s/step"), ("first_val", "s"), ("val", "s"), ("test", "s"), ("start", "s")):
        values = samples[name]
        spread = f" ({min(values):.3g}-{max(values):.3g}, n={len(values)})" if values else " (none yet)"
        print(f"t_{name:<9} {t[name]:8.3f} {unit}{spread}")

    print_start_parts(parts)

    training, num_rungs = space.training, space.num_rungs
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = space.resources.workers * space.resources.gpus_per_worker
    full = {"trial_steps": space.num_samples * training.max_steps, "val_evals": space.num_samples * num_rungs,
            "test_evals": space.num_samples}
    ideal = asha_budget(space.num_samples, num_rungs, training.rung_steps, space.asha.grace_period,
                        space.asha.reduction_factor)
    unit = "GPU-hours" if gpus else "trial-hours (CPU)"
    for label, budget in (("ASHA", ideal), ("full", full)):
        seconds = (budget["trial_steps"] * t["step"] + budget["val_evals"] * t["val"]
                   + budget["test_evals"] * t["test"] + space.num_samples * t["start"])
        cost = (gpus or 1) * seconds / 3600
        wall = seconds / max(1, space.max_concurrent or 1) / 60
        print(f"{label:>4}: {budget['trial_steps']:.0f} trial-steps, {budget['val_evals']:.1f} validations, "
              f"{budget['test_evals']:.1f} tests, {space.num_samples} starts -> {cost:.3f} {unit}, "
              f"~{wall:.0f} min wall at max_concurrent {space.max_concurrent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
