"""Dynamic padding of tokenized examples into batches (to the longest in the batch, never a fixed length)."""
from __future__ import annotations

from typing import Any, Sequence

from trainables.data.formatting import IGNORE_INDEX

PADDING_SIDES = ("right", "left")


class PaddingCollator:
    """Pads a list of features {"input_ids", optional "labels"} to the batch's longest example.

    Returns LongTensors input_ids, attention_mask (0 on padding) and, when features carry labels,
    labels (-100 on padding).
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", pad_to_multiple_of: int | None = None):
        """pad_to_multiple_of rounds the batch length up (tensor-core friendly sizes); None pads to the longest."""
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {', '.join(PADDING_SIDES)}, got {padding_side!r}")
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: give the tokenizer a pad token first")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of!r}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not features:
            raise ValueError("cannot collate an empty batch")
        with_labels = "labels" in features[0]
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids, attention_mask, labels = [], [], []
        for f in features:
            ids = list(f["input_ids"])
            pad = length - len(ids)
            input_ids.append(self._pad(ids, pad, self.pad_token_id))
            attention_mask.append(self._pad([1] * len(ids), pad, 0))
            if with_labels:
                if len(f["labels"]) != len(ids):
                    raise ValueError("labels and input_ids differ in length")
                labels.append(self._pad(list(f["labels"]), pad, IGNORE_INDEX))
        batch = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
        }
        if with_labels:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch

    def _pad(self, values: list[int], pad: int, value: int) -> list[int]:
        return values + [value] * pad if self.padding_side == "right" else [value] * pad + values
