"""`ibft report RUN_DIR`: write the Pareto report of a search (finished, running or crashed).

Writes RUN_DIR/report/index.html (one self-contained interactive page), pareto.png, summary.md and
configs/<trial>.yaml (the exact `ibft train` config of each front trial, the baseline, the paper trial and
the space's preset trials); prints where they are as JSON on stdout. Imports neither torch nor ray: it runs on a head node.
"""
from __future__ import annotations

import argparse
import sys

from trainables.cli_output import emit_result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a search's run directory (STORAGE_PATH/NAME of `ibft tune`), or its URI (s3://bucket/prefix/NAME): "
        "then the run's small files are read into a local cache and the report is uploaded to RUN_DIR/report",
    )
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default: RUN_DIR/report)")
    parser.add_argument("--no-png", action="store_true", help="skip pareto.png (it needs Chromium for kaleido)")


def run(args: argparse.Namespace) -> int:
    from search.report import write_report

    print(f"ibft report: reading {args.run_dir}", file=sys.stderr, flush=True)
    run_dir = args.run_dir
    if "://" in run_dir:
        from search.storage import stage_for_report

        # An object-store run: its tables, study, Tune results and per-rung metrics (not the weights) into a local
        # cache (search.storage), the report from there, then uploaded next to the run.
        run_dir = str(stage_for_report(run_dir))
    result = write_report(run_dir, args.out, png=not args.no_png)
    if run_dir != args.run_dir and args.out is None:
        from pathlib import Path

        from search.storage import upload_report

        result["uploaded"] = upload_report(Path(run_dir), Path(result["html"]).parent)
        result["run_dir"] = args.run_dir
        print(f"ibft report: uploaded to {result['uploaded']}", file=sys.stderr)
    if "png_error" in result:
        print(f"ibft report: warning: pareto.png not written ({result['png_error']})", file=sys.stderr)
    print(f"ibft report: open {result['html']}", file=sys.stderr)
    emit_result(result)
    return 0
