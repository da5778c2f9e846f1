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
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a search's run directory (STORAGE_PATH/NAME of `ibft tune`)")
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default: RUN_DIR/report)")
    parser.add_argument("--no-png", action="store_true", help="skip pareto.png (it needs Chromium for kaleido)")


def run(args: argparse.Namespace) -> int:
    from search.report import write_report

    print(f"ibft report: reading {args.run_dir}", file=sys.stderr, flush=True)
    result = write_report(args.run_dir, args.out, png=not args.no_png)
    if "png_error" in result:
        print(f"ibft report: warning: pareto.png not written ({result['png_error']})", file=sys.stderr)
    print(f"ibft report: open {result['html']}", file=sys.stderr)
    emit_result(result)
    return 0
