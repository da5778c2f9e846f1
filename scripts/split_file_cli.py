"""The command line shared by the scripts that write a shipped benchmark split (make_humaneval_split.py,
make_verilogeval_split.py): write the seeded split, or --check that the shipped file is exactly it."""
from __future__ import annotations

import argparse
import json
from typing import Callable


def run(description: str, default_out: str, make_split: Callable[[], dict], argv: list[str] | None = None) -> int:
    """Write make_split()'s JSON to --out (default: the shipped file), or with --check compare it and exit 1 if the
    shipped file differs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=default_out, help="where to write the split (default: the shipped file)")
    parser.add_argument("--check", action="store_true", help="only compare the shipped file with a fresh split")
    args = parser.parse_args(argv)
    text = json.dumps(make_split(), indent=1) + "\n"
    if args.check:
        with open(args.out, encoding="utf-8") as f:
            same = f.read() == text
        print(f"{args.out}: {'matches' if same else 'DIFFERS FROM'} the seeded split")
        return 0 if same else 1
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    split = json.loads(text)
    excluded = f", {len(split['excluded'])} excluded" if "excluded" in split else ""
    print(f"wrote {args.out}: {len(split['val'])} val, {len(split['test'])} test tasks{excluded} (seed {split['seed']})")
    return 0
