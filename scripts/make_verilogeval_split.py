"""Write trainables/data/files/verilogeval_split.json: the seeded VerilogEval validation/test split.

    python scripts/make_verilogeval_split.py [--out PATH] [--check]

Splits the task ids of the shipped VerilogEval v1 Human problems (trainables/data/files/verilogeval/), less
the problems recorded as excluded (trainables.benchmarks.VERILOGEVAL_EXCLUDED, each with its reason), into
40 validation and 114 test tasks. The split ships in the repository and must never change (a search tuned on
validation tasks that later moved to test would report a leaked test score); --check verifies the shipped
file is what this script produces and exits 1 if not.
"""
from __future__ import annotations

import sys

import split_file_cli  # scripts/, on sys.path when a script runs
from trainables.benchmarks import VERILOGEVAL_SPLIT_FILE, load_verilogeval, make_verilogeval_split


def main(argv: list[str] | None = None) -> int:
    return split_file_cli.run(__doc__.splitlines()[0], VERILOGEVAL_SPLIT_FILE, lambda: make_verilogeval_split(list(load_verilogeval())), argv)


if __name__ == "__main__":
    sys.exit(main())
