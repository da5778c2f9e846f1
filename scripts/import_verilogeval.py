"""Write trainables/data/files/verilogeval/: VerilogEval v1 Human, with its descriptions merged in.

    python scripts/import_verilogeval.py --source VERILOG_EVAL_DIR [--check]

VERILOG_EVAL_DIR is a copy of NVlabs/verilog-eval's branch release/1.0.0 laid out like
/work/shared/data/verilog-eval (v1/data/VerilogEval_Human.jsonl, v1/descriptions/VerilogDescription_Human.jsonl,
LICENSE); a plain checkout of that branch (data/, descriptions/ at its top) works too.

Each shipped problem keeps VerilogEval's task_id, prompt (the `module top_module (...);` header),
canonical_solution (the module body) and test (testbench `tb` + `reference_module`, printing
"Mismatches: N in M samples"), unchanged, and adds entry_point "top_module", language "verilog" and
description (VerilogDescription_Human's detail_description). Only Human is shipped: Machine describes the
same circuits (same task_ids) in machine-written words, so using it next to Human would leak tasks across
a validation/test split. The file is gzipped with mtime 0, so the same input gives the same bytes.
--check compares the shipped problems with a fresh import and exits 1 if they differ.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import sys

from trainables.benchmarks import VERILOGEVAL_DIR, VERILOGEVAL_FILE

FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point", "language", "description")


def _find(source: str, *candidates: str) -> str:
    for rel in candidates:
        path = os.path.join(source, rel)
        if os.path.isfile(path):
            return path
    raise SystemExit(f"import_verilogeval: none of {', '.join(candidates)} under {source}")


def _jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def merged_problems(source: str) -> list[dict]:
    """VerilogEval v1 Human problems in the source file's order, each with its description."""
    problems = _jsonl(_find(source, "v1/data/VerilogEval_Human.jsonl", "data/VerilogEval_Human.jsonl"))
    descriptions = {
        d["task_id"]: d["detail_description"]
        for d in _jsonl(_find(source, "v1/descriptions/VerilogDescription_Human.jsonl", "descriptions/VerilogDescription_Human.jsonl"))
    }
    missing = [p["task_id"] for p in problems if p["task_id"] not in descriptions]
    if missing:
        raise SystemExit(f"import_verilogeval: no description for {', '.join(missing[:5])}")
    out = []
    for p in problems:
        record = {**p, "entry_point": "top_module", "language": "verilog", "description": descriptions[p["task_id"]]}
        out.append({k: record[k] for k in FIELDS})
    return out


def gz_bytes(problems: list[dict]) -> bytes:
    text = "".join(json.dumps(p) + "\n" for p in problems).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(text)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="a verilog-eval copy (see the module docstring)")
    parser.add_argument("--check", action="store_true", help="only compare the shipped problems with a fresh import")
    args = parser.parse_args(argv)
    problems = merged_problems(args.source)
    if args.check:
        with gzip.open(VERILOGEVAL_FILE, "rt", encoding="utf-8") as f:
            shipped = [json.loads(line) for line in f if line.strip()]
        same = shipped == problems
        print(f"{VERILOGEVAL_FILE}: {'matches' if same else 'DIFFERS FROM'} {args.source}")
        return 0 if same else 1
    os.makedirs(VERILOGEVAL_DIR, exist_ok=True)
    with open(VERILOGEVAL_FILE, "wb") as f:
        f.write(gz_bytes(problems))
    shutil.copyfile(_find(args.source, "LICENSE"), os.path.join(VERILOGEVAL_DIR, "LICENSE"))
    print(f"wrote {VERILOGEVAL_FILE}: {len(problems)} problems; copied LICENSE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
