"""Is there a memorization barrier? Plain fine-tuning from a memorized base against plain fine-tuning from the
fresh base, several seeds, bootstrap intervals over tasks (issue 20; docs/memorization-barrier.md).

Every step is a shipped command, run as a subprocess: `ibft memorize SPACE` (the memorized base of the space's
model.memorized recipe, cached), then per base (fresh, memorized) and seed `ibft train` with exactly a search
trial's settings at alpha 0 (trainables.tune_trainable.train_config_dict: the space's LoRA, data, optimizer and
step count), `ibft eval` of every fine-tuned model and of both untuned bases on the space's validation and test
benchmarks (the same seeded subset of tasks a search trial of the space evaluates, the same sampling seed, so
differences are paired and comparable with the search's), and `ibft memorization` (Min-K% and the
most/least-memorized geometry) of the seed-0 fine-tune from each base. Finished steps are skipped on a rerun.

Writes OUT/study.json (every number), OUT/study.md (the tables) and OUT/barrier.png (the figure). Intervals:
per-task pass rates averaged over the seeds, 95% percentile bootstrap over tasks; memorized − fresh paired.

    .venv/bin/python scripts/barrier_study.py spaces/smollm2-barrier.yaml --seeds 0 1 2 --out runs/barrier-study
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = (("pass@1", 1, 1), ("pass@10(10)", 10, 10))
"""(name, k, m) of the rates compared."""
BASES = ("fresh", "memorized")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("space", help="a space file with model.memorized (spaces/smollm2-barrier.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds (default 0 1 2)")
    parser.add_argument("--out", default="runs/barrier-study", help="output folder (default runs/barrier-study)")
    parser.add_argument("--jobs", type=int, default=2, help="commands run at once, one CPU thread each (default 2)")
    args = parser.parse_args()

    from search.space import load_space

    space = load_space(args.space)
    if space.model.memorized is None:
        parser.error(f"{args.space}: has no model.memorized recipe")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    log(f"barrier study: {args.space}, seeds {args.seeds}, output {out}")
    memorized = json.loads(command(["memorize", args.space, "--quiet"], out / "memorize.log", capture=True))
    log(f"  memorized base: {memorized['path']} (Min-K% {memorized['min_k']['fresh']['mean']:.3f} -> "
        f"{memorized['min_k']['memorized']['mean']:.3f})")

    runs = {(base, seed): out / "train" / f"{base}-seed{seed}" for base in BASES for seed in args.seeds}
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda item: train(space, out, item[0][0], item[0][1], item[1]), runs.items()))
    models = {f"{base}-seed{seed}": {"adapter": str(path / "final")} for (base, seed), path in runs.items()}
    models["fresh-untuned"] = {"model": space.model.name_or_path}
    models["memorized-untuned"] = {"model": memorized["path"]}
    jobs = [(name, split) for name in models for split in ("val", "test")]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: evaluate(space, out, job[0], models[job[0]], job[1]), jobs))
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda base: memorization(space, out, base, runs[(base, args.seeds[0])], memorized["path"]), BASES))

    study = summarize(space, out, args.seeds, memorized)
    study["seconds"] = round(time.time() - started, 1)
    (out / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    (out / "study.md").write_text(markdown(study))
    figure(study, out / "barrier.png")
    print(markdown(study))
    return 0


# ---- the steps ------------------------------------------------------------------------------------------


def train(space, out: Path, base: str, seed: int, run_dir: Path) -> None:
    """`ibft train` with a search trial's settings at alpha 0, from the fresh or the memorized base."""
    if (run_dir / "final" / "adapter" / "adapter_config.json").is_file():
        return
    import yaml

    from search.tuner import trial_setup
    from trainables.tune_trainable import train_config_dict

    setup = trial_setup(space, out)
    setup["seed"] = seed
    if base == "fresh":
        setup["model"] = {**setup["model"], "memorized": None}
    params = {"alpha": 0.0, "beta": 0.0, "tap_layer": tap_layer(space), "prior": "standard_normal", "prior_options": {},
              "kl_reduction": "mean", "encoder_input": "raw"}
    cfg = train_config_dict(setup, params, output_dir=str(run_dir), optuna_trial=None)
    cfg["resume"] = True
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir.parent / f"{run_dir.name}.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    log(f"  train {run_dir.name}")
    command(["train", "--config", str(config_file), "--no-progress"], run_dir.parent / f"{run_dir.name}.log")


def evaluate(space, out: Path, name: str, model: dict, split: str) -> None:
    """`ibft eval` of one model on the space's validation (split val) or test (split test) benchmark."""
    folder = out / "eval" / name / split
    if (folder / "summary.json").is_file():
        return
    section = space.validation if split == "val" else space.test
    argv = ["eval", "--benchmark", section.benchmark, "--split", split, "--n", str(section.n), "--k", "1,10",
            "--m", "10", "--temperature", str(section.temperature), "--top-p", str(section.top_p),
            "--max-new-tokens", str(section.max_new_tokens), "--timeout", str(section.timeout), "--seed", "0",
            "--threads", "1", "--workers", "1", "--out", str(folder), "--no-progress",
            "--prompt-format", space.data.prompt_format]
    if section.tasks is not None:  # the seeded subset a search trial of this space evaluates
        argv += ["--tasks", str(section.tasks), "--task-seed", str(space.seed)]
    argv += ["--adapter", model["adapter"]] if "adapter" in model else ["--model", model["model"]]
    log(f"  eval {name} on {split}")
    folder.mkdir(parents=True, exist_ok=True)
    command(argv, folder / "eval.log")


def memorization(space, out: Path, base: str, run_dir: Path, memorized_path: str) -> None:
    """`ibft memorization` of one base and its seed-0 fine-tune on the training examples."""
    folder = out / "memorization" / base
    if (folder / "geometry.json").is_file():
        return
    model = space.model.name_or_path if base == "fresh" else memorized_path
    log(f"  memorization of {base} and its fine-tune")
    folder.mkdir(parents=True, exist_ok=True)
    command(["memorization", "--model", model, "--adapter", str(run_dir / "final"), "--max-examples", "128",
             "--tap-layer", str(tap_layer(space)),
             "--out", str(folder), "--no-plots"], folder / "memorization.log")


def tap_layer(space) -> int | float:
    """Where the geometry is measured: the paper's layer 20 where the model has one, else 2/3 of its depth."""
    depth = space.model.depth()
    return 20 if depth is not None and depth > 20 else 0.667


def command(argv: list[str], log_file: Path, capture: bool = False) -> str:
    """Run `ibft ARGV` with one torch thread; its stderr goes to log_file. stdout is returned."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ibft = Path(sys.executable).with_name("ibft")
    with open(log_file, "w") as err:
        done = subprocess.run([str(ibft), *argv], stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"barrier study: `ibft {' '.join(argv)}` failed ({done.returncode}); see {log_file}")
    return done.stdout


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- the numbers ----------------------------------------------------------------------------------------


def task_counts(folder: Path) -> dict[str, tuple[int, int]]:
    from trainables.execution.results import per_task_counts as counts_of

    with open(folder / "samples.jsonl_results.jsonl") as f:
        return {task: tuple(nc) for task, nc in counts_of([json.loads(line) for line in f if line.strip()]).items()}


def summarize(space, out: Path, seeds: list[int], memorized: dict) -> dict:
    import numpy as np

    from search.report.uncertainty import bootstrap_interval, paired_difference_interval, task_values

    study: dict = {"space": space.name, "seeds": seeds, "memorized_base": memorized, "splits": {}}
    for split in ("val", "test"):
        section = space.validation if split == "val" else space.test
        per_split: dict = {"benchmark": section.benchmark, "tasks": None, "metrics": {}}
        for metric, k, m in METRICS:
            values = {}
            for name in [f"{b}-seed{s}" for b in BASES for s in seeds] + ["fresh-untuned", "memorized-untuned"]:
                tasks, vals = task_values(task_counts(out / "eval" / name / split), k, m)
                values[name] = vals
                per_split["tasks"] = len(tasks)
            mean = {b: np.mean([values[f"{b}-seed{s}"] for s in seeds], axis=0) for b in BASES}
            entry = {
                "per_seed": {name: float(np.mean(v)) for name, v in values.items()},
                "fine_tuned": {b: interval(bootstrap_interval(mean[b])) for b in BASES},
                "untuned": {b: interval(bootstrap_interval(values[f"{b}-untuned"])) for b in BASES},
                "memorized_minus_fresh": interval(paired_difference_interval(mean["memorized"], mean["fresh"])),
                "fine_tuning_gain": {
                    b: interval(paired_difference_interval(mean[b], values[f"{b}-untuned"])) for b in BASES
                },
            }
            per_split["metrics"][metric] = entry
        study["splits"][split] = per_split
    study["memorization"] = {}
    for base in BASES:
        summary = json.loads((out / "memorization" / base / "geometry.json").read_text())
        study["memorization"][base] = summary
    return study


def interval(iv) -> dict:
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "n_tasks": iv.n_tasks}


def fmt(iv: dict) -> str:
    return f"{iv['estimate']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]"


def markdown(study: dict) -> str:
    seeds = study["seeds"]
    mk = study["memorized_base"]["min_k"]
    lines = [
        f"Memorized base: Min-K% (k {mk['k']}) of the {study['memorized_base']['examples']} training examples, "
        f"mean {mk['fresh']['mean']:.3f} (fresh) -> {mk['memorized']['mean']:.3f} (memorized), higher on "
        f"{mk['rose_fraction']:.0%} of them.",
        "",
        "| split | metric | untuned fresh | untuned memorized | FT from fresh | FT from memorized | memorized − fresh (paired) |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, per_split in study["splits"].items():
        for metric, e in per_split["metrics"].items():
            lines.append(
                f"| {split} ({per_split['benchmark']}, {per_split['tasks']} tasks) | {metric} | {fmt(e['untuned']['fresh'])} | "
                f"{fmt(e['untuned']['memorized'])} | {fmt(e['fine_tuned']['fresh'])} | {fmt(e['fine_tuned']['memorized'])} | "
                f"{fmt(e['memorized_minus_fresh'])} |"
            )
    lines += ["", "What fine-tuning gained over its own untuned base (paired over tasks):", "",
              "| split | metric | from fresh | from memorized |", "|---|---|---|---|"]
    for split, per_split in study["splits"].items():
        for metric, e in per_split["metrics"].items():
            gain = e["fine_tuning_gain"]
            lines.append(f"| {split} | {metric} | {fmt(gain['fresh'])} | {fmt(gain['memorized'])} |")
    lines += ["", f"Per seed ({', '.join(map(str, seeds))}):", ""]
    lines += ["| split | metric | " + " | ".join(f"{b} s{s}" for b in BASES for s in seeds) + " |",
              "|---|---|" + "---|" * (len(BASES) * len(seeds))]
    for split, per_split in study["splits"].items():
        for metric, e in per_split["metrics"].items():
            cells = [f"{e['per_seed'][f'{b}-seed{s}']:.3f}" for b in BASES for s in seeds]
            lines.append(f"| {split} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", "Memorization of the seed-0 fine-tunes (`ibft memorization`, 128 training examples):", "",
              "| from | Min-K% base | Min-K% fine-tuned | gap base | gap fine-tuned |", "|---|---|---|---|---|"]
    for base, summary in study["memorization"].items():
        cells = [summary.get(key) for key in ("min_k_mean_base", "min_k_mean", "memorization_gap_base", "memorization_gap")]
        lines.append(f"| {base} | " + " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def figure(study: dict, path: Path) -> None:
    """Pass rates with their intervals: untuned and fine-tuned, fresh and memorized base, val and test."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    splits = list(study["splits"])
    metrics = [m for m, _, _ in METRICS]
    fig = make_subplots(rows=1, cols=len(splits) * len(metrics),
                        subplot_titles=[f"{s}: {m}" for s in splits for m in metrics])
    colors = {"fresh": "#4c78a8", "memorized": "#e45756"}
    col = 0
    for split in splits:
        for metric in metrics:
            col += 1
            e = study["splits"][split]["metrics"][metric]
            for base in BASES:
                points = [e["untuned"][base], e["fine_tuned"][base]]
                fig.add_trace(go.Bar(
                    x=["untuned", "fine-tuned"], y=[p["estimate"] for p in points], name=f"{base} base",
                    marker_color=colors[base], showlegend=col == 1,
                    error_y=dict(type="data", symmetric=False, array=[p["high"] - p["estimate"] for p in points],
                                 arrayminus=[p["estimate"] - p["low"] for p in points]),
                ), row=1, col=col)
    fig.update_layout(
        barmode="group", width=1400, height=520,
        title=(f"Plain fine-tuning from the fresh vs the memorized base ({study['space']}, seeds "
               f"{', '.join(map(str, study['seeds']))}; 95% bootstrap over tasks; scripts/barrier_study.py)"),
        legend=dict(orientation="h", y=-0.12),
    )
    fig.update_yaxes(range=[0, 1])
    fig.write_image(str(path), format="png", scale=1)


if __name__ == "__main__":
    raise SystemExit(main())
