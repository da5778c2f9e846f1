"""Reading trials.csv back: shared by the search driver and the report (which must not import ray)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

TEXT_COLUMNS = (
    "trial_id", "role", "prior", "kl_reduction", "encoder_input", "prior_options", "state", "checkpoint_path", "error"
)
"""Columns read back as text even when they look like numbers. Tune trial ids are `<8 hex>_<5 digits>`: about one
search in 40 draws an all-digit prefix, and `int("12345678_00002")` is 1234567800002 (Python accepts `_` between
digits), which once made the report count such a trial twice."""


def parse_cell(text: Optional[str]) -> Any:
    """A CSV cell as the value it was written from: None for empty, else int, float or the text itself.
    Text with `_` stays text: the writer never groups digits, so `1_000` can only be a name."""
    if text is None or text == "":
        return None
    if "_" not in text:
        for convert in (int, float):
            try:
                return convert(text)
            except ValueError:
                pass
    return text


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a trials.csv with numbers parsed back (empty cells become None, TEXT_COLUMNS stay text)."""
    with Path(path).open(newline="") as f:
        return [
            {k: (v or None) if k in TEXT_COLUMNS else parse_cell(v) for k, v in row.items() if k}
            for row in csv.DictReader(f)
        ]
