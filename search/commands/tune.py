"""`ibft tune SPACE.yaml`: run a hyperparameter search (Ray Tune + Optuna + ASHA), or resume one.

The space file is validated before Ray starts (a bad file costs no cluster time), and a GPU space's per-GPU memory
estimate is printed and checked against resources.gpu_memory_gib (search.memory_check). Ray's trial table with a
progress line, one line per ASHA decision, per trial start and end and per error go to stderr (search.console);
Ray's worker output (Ray Train, transformers, W&B) goes to RUN_DIR/logs/, or with --verbose to the console as
Ray prints it. At the end the Pareto front is printed as a table on stderr and the run's JSON summary on stdout.
Ctrl-C, or SIGTERM (`ray job stop`, `kill`), stops cleanly: the run can be continued with --resume RUN_DIR.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from trainables.cli_output import emit_result
from trainables.errors import ConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
STORAGE_ENV = "IBFT_STORAGE_PATH"
"""The default --storage-path where it is set (cluster.yaml sets it in the container to its S3 bucket)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", nargs="?", help="search-space YAML file (see spaces/); not needed with --resume")
    parser.add_argument("--name", help="search name (default: the space's name, else its file name)")
    parser.add_argument(
        "--storage-path",
        default=os.environ.get(STORAGE_ENV) or "runs",
        help=f"parent of RUN_DIR = STORAGE_PATH/NAME (default: ${STORAGE_ENV} if set, as cluster.yaml sets it, else "
        "runs): a directory every node mounts, or an object-store URI such as s3://bucket/prefix (endpoint and "
        "credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... or the instance profile)",
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the search in RUN_DIR (a directory or a URI) after a kill or Ctrl-C"
    )
    parser.add_argument(
        "--address", help="Ray cluster to join: 'auto' or HOST:PORT (default: start a local Ray cluster)"
    )
    parser.add_argument("--num-samples", type=int, help="override the space's num_samples (trials in the search)")
    parser.add_argument(
        "--skip-memory-check",
        action="store_true",
        help="start a GPU space even when the per-GPU memory estimate says a trial does not fit "
        "resources.gpu_memory_gib (the estimate is printed either way)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print Ray's worker output (Ray Train, transformers, W&B) and Ray's driver notices on the console as "
        "Ray does, instead of into RUN_DIR/logs/workers.log, wandb.log and driver.log",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="train again configurations whose trial failed (errored after failure.max_failures retries, or "
        "non-finite values); by default a proposal of one is answered from its failure",
    )


def resolve_run(args: argparse.Namespace):
    """(space, run_dir, resume) from the arguments, with every user error as a ConfigError."""
    from search.space import load_space
    from search.tuner import load_run_space, prepare_run_dir

    if args.resume:
        if args.space or args.name or args.num_samples is not None:
            raise ConfigError("--resume RUN_DIR takes no SPACE, --name or --num-samples (the run keeps its own)")
        if is_uri(args.resume):
            from search.storage import check_writable, stage_for_resume

            # The URI alone: a head whose local disk was wiped resumes like one that kept it (search.storage).
            check_writable(args.resume.rstrip("/"), "--resume")
            run_dir = stage_for_resume(args.resume)
        else:
            run_dir = Path(args.resume)
        return load_run_space(run_dir), run_dir, True
    if not args.space:
        raise ConfigError("give a SPACE.yaml to start a search, or --resume RUN_DIR to continue one")
    space = load_space(args.space)
    if args.name is not None:
        space.name = args.name
    if not NAME_PATTERN.match(space.name or ""):
        raise ConfigError(f"--name {space.name!r}: use letters, digits, '.', '_' or '-' (it names a directory)")
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
        space.num_samples = args.num_samples
    from search.memory_check import check_space

    # Before the run directory or Ray: a trial that cannot fit its GPUs costs nothing to find out about.
    check_space(space, args.space, skip=getattr(args, "skip_memory_check", False))
    if is_uri(args.storage_path):
        run_dir = _prepare_remote_run(Path(args.space), args.storage_path.rstrip("/") + "/" + space.name)
    else:
        run_dir = Path(args.storage_path).resolve() / space.name
        prepare_run_dir(Path(args.space), run_dir)
    if args.num_samples is not None:
        _record_num_samples(run_dir, args.num_samples)
    from search.storage import upload_start_files

    upload_start_files(run_dir)  # an object-store run: space.yaml and ib_semantics.json go to its URI
    return space, run_dir, False


def build_memorized_base(space) -> None:
    """A space whose model.memorized names a recipe: build that base here, once, before Ray starts, so the trials
    of this node load it from the cache instead of each building it (progress on stderr). On other nodes a trial
    finds it in $IBFT_CACHE when that is shared, else builds the same recipe itself (docs/memorization-barrier.md)."""
    recipe = space.model.memorized_recipe()
    if recipe is None:
        return
    from trainables.memorization.memorize import ensure_memorized_base

    folder = ensure_memorized_base(space.model.base_config(), recipe)
    print(f"ibft tune: trials start from the memorized base {folder}", file=sys.stderr)


def is_uri(path: str) -> bool:
    return "://" in path


def _prepare_remote_run(space_path: Path, uri: str) -> Path:
    """A new search whose RUN_DIR is the URI `uri`: check it can be written and holds no search, then a fresh local
    staging directory for the driver (search.storage), returned as the run directory the search works in."""
    from search.storage import check_writable, holds_a_search, new_staging
    from search.tuner import prepare_run_dir

    check_writable(uri)
    if holds_a_search(uri):
        raise ConfigError(
            f"{uri} already holds a search; continue it with `ibft tune --resume {uri}` "
            "or choose another --name/--storage-path"
        )
    run_dir = new_staging(uri)
    prepare_run_dir(space_path, run_dir)
    return run_dir


def _record_num_samples(run_dir: Path, num_samples: int) -> None:
    """Keep the run's copy of the space in step with --num-samples, so a resume sees the same budget."""
    import yaml

    from search.space import SpaceYamlLoader
    from search.tuner import SPACE_FILE

    path = run_dir / SPACE_FILE
    data = yaml.load(path.read_text(), Loader=SpaceYamlLoader)
    data["num_samples"] = num_samples
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def print_front(front: list[dict], objectives: list[str]) -> None:
    """The Pareto front as a small table on stderr."""
    print(f"\nPareto front ({len(front)} trial(s)) on {', '.join(objectives)}:", file=sys.stderr)
    header = ["trial", "role", "alpha", "beta", "tap", "prior"] + objectives
    print("  " + " | ".join(header), file=sys.stderr)
    for entry in front:
        p, m = entry["params"], entry["metrics"]
        cells = [str(entry["optuna_trial"]), str(entry["role"]), f"{p['alpha']:.4g}", f"{p['beta']:.4g}"]
        cells += [str(p["tap_layer"]), str(p["prior"])] + [f"{m.get(o, float('nan')):.4f}" for o in objectives]
        print("  " + " | ".join(cells), file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    space, run_dir, resume = resolve_run(args)
    build_memorized_base(space)
    from search.tuner import run_search

    outcome = run_search(
        space,
        run_dir,
        resume=resume,
        address=args.address,
        retry_failed=args.retry_failed,
        verbose=getattr(args, "verbose", False),
    )
    objectives = [o.metric for o in space.objectives]
    print_front(outcome["pareto"], objectives)
    emit_result(outcome)
    if outcome["interrupted"]:
        from search.storage import location

        print(f"ibft tune: interrupted; continue with: ibft tune --resume {location(run_dir)}", file=sys.stderr)
        return 130
    if outcome.get("exhausted"):
        trials = sum(outcome["states"].values())
        print(
            f"ibft tune: every parameter combination of the space ran, so the search ended after {trials} of "
            f"num_samples {space.num_samples} trials",
            file=sys.stderr,
        )
    return 0
