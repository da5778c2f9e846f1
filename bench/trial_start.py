"""Trial start, paired: the same short search with one-worker trials through Ray Train (the reference: how every
trial started before resources.worker_in_trial) and in the trial's own process (the default), in interleaved rounds.

Each run is `ibft tune` on a copy of the space (default: the `make demo` space, spaces/smollm2-python.yaml) cut
to 2 rungs of --rung-steps steps and small validation/test sets, so start-up is a large share of it; everything
that decides a start (model, data, concurrency, W&B, cores) is the space's own. Per setting it prints t_start
(bench/search_pace.py's definition: rung 1's time minus its steps and validation), the median of each start part
the trials recorded (trainables.train.start_clock), whether later trials reused a process, and the ratio of the
medians (in-trial / Ray Train).

Usage: python bench/trial_start.py [--space SPACE.yaml] [--rounds 2] [--rung-steps 2] [--keep DIR]
Takes minutes (the demo space: about 3 min a run on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SETTINGS = {"ray_train": False, "in_trial": True}
"""Setting name -> resources.worker_in_trial; the first is the reference."""


def short_space(space_file: Path, out: Path, *, in_trial: bool, rung_steps: int) -> Path:
    """A copy of the space with 2 rungs, small evaluations and the given trial path."""
    import yaml

    data = yaml.safe_load(space_file.read_text())
    training = data.setdefault("training", {})
    training.update(max_steps=2 * rung_steps, rung_steps=rung_steps, warmup_steps=min(training.get("warmup_steps", 0), rung_steps))
    for split, tasks in (("validation", 3), ("test", 2)):
        if data.get(split):
            data[split].update(tasks=tasks, n=2, k=[1, 2], m=[2])
    data["objectives"] = [{"metric": "val/pass@1"}, {"metric": "val/pass@2(2)"}]
    data.setdefault("asha", {})["metric"] = "val/pass@2(2)"
    data.setdefault("resources", {})["worker_in_trial"] = in_trial
    data.pop("memorization", None)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def run_once(space: Path, storage: Path, name: str) -> dict:
    """Run the search; t_start samples, start parts and pids of its trials."""
    from search_pace import json_lines, trial_paces

    started = time.time()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ibft"), "tune", str(space), "--storage-path", str(storage), "--name", name],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name}: ibft tune exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    run_dir = storage / name
    parts, pids = [], []
    for log in sorted((run_dir / "trials").glob("*/work/metrics.jsonl")):
        for row in json_lines(log):
            if isinstance(row.get("start"), dict):
                parts.append(row["start"])
                pids.append(row.get("pid"))
    return {"t_start": trial_paces(run_dir)["start"], "parts": parts, "pids": pids, "wall": time.time() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=ROOT / "spaces" / "smollm2-python.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rung-steps", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the run directories here (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    from trainables.train.start_clock import START_PARTS

    work = Path(tempfile.mkdtemp(prefix="trial-start-"))
    storage = args.keep or work / "runs"
    samples = {name: {"t_start": [], "parts": [], "pids": [], "wall": []} for name in SETTINGS}
    try:
        for round_ in range(args.rounds):
            order = list(SETTINGS) if round_ % 2 == 0 else list(reversed(SETTINGS))  # interleaved, alternating first
            for name in order:
                space = short_space(args.space, work / f"{name}.yaml", in_trial=SETTINGS[name], rung_steps=args.rung_steps)
                got = run_once(space, storage, f"{name}-{round_}")
                for key in ("t_start", "parts"):
                    samples[name][key] += got[key]
                samples[name]["pids"].append(got["pids"])
                samples[name]["wall"].append(got["wall"])
                print(f"round {round_ + 1} {name:<9} t_start median {statistics.median(got['t_start']):6.2f} s "
                      f"(n={len(got['t_start'])}), search {got['wall']:.0f} s", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    medians = {}
    for name, got in samples.items():
        t = got["t_start"]
        medians[name] = statistics.median(t)
        reused = sum(len(p) - len(set(p)) for p in got["pids"])
        print(f"\n{name}: t_start median {medians[name]:.2f} s ({min(t):.2f}-{max(t):.2f}, n={len(t)}); "
              f"searches {statistics.median(got['wall']):.0f} s median; {reused} of {len(got['parts'])} starts "
              "in a process an earlier trial used")
        for part in [*START_PARTS, "total"]:
            values = [p[part] for p in got["parts"] if part in p]
            if values:
                print(f"  {part:<15} {statistics.median(values):7.2f} s  ({min(values):.2f}-{max(values):.2f})")
    reference, candidate = list(SETTINGS)
    print(f"\nt_start {candidate} / {reference}: {medians[candidate] / medians[reference]:.3f} "
          f"({medians[candidate]:.2f} s vs {medians[reference]:.2f} s; target: median <= 10 s on the demo space)")
    print(json.dumps({"t_start_median_s": medians, "ratio": medians[candidate] / medians[reference]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
