"""Reading trials.csv cells back: shared by the search driver and the report (which must not import ray)."""
from __future__ import annotations

from typing import Any, Optional


def parse_cell(text: Optional[str]) -> Any:
    """A CSV cell as the value it was written from: None for empty, else int, float or the text itself."""
    if text is None or text == "":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text
