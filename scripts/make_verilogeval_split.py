"""Write trainables/data/files/verilogeval_split.json: the seeded VerilogEval validation/test split.

    python scripts/make_verilogeval_split.py [--out PATH] [--check]

Splits the task ids of the shipped VerilogEval v1 Human problems (trainables/data/files/verilogeval/), less
the problems recorded as excluded (trainables.benchmarks.VERILOGEVAL_EXCLUDED, each with its reason), into
40 validation and 114 test tasks. The split ships in the repository and must never change (a search tuned on
validation tasks that later moved to test would report a leaked test score); --check verifies the shipped
file is what this script produces and exits 1 if not.
"""
from __future__ import annotations

import argparse
import json
import sys

from trainables.benchmarks import VERILOGEVAL_SPLIT_FILE, load_verilogeval, make_verilogeval_split


def split_json() -> str:
    """The split file's exact text."""
    return json.dumps(make_verilogeval_split(list(load_verilogeval())), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=VERILOGEVAL_SPLIT_FILE, help="where to write the split (default: the shipped file)")
    parser.add_argument("--check", action="store_true", help="only compare the shipped file with a fresh split")
    args = parser.parse_args(argv)
    text = split_json()
    if args.check:
        with open(args.out, encoding="utf-8") as f:
            same = f.read() == text
        print(f"{args.out}: {'matches' if same else 'DIFFERS FROM'} the seeded split")
        return 0 if same else 1
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    split = json.loads(text)
    print(
        f"wrote {args.out}: {len(split['val'])} val, {len(split['test'])} test tasks, "
        f"{len(split['excluded'])} excluded (seed {split['seed']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
