"""Where a run's start goes: wall-clock marks from the moment a trial starts to the end of its first optimizer step.

A trial's start crosses processes (the Tune function, Ray Train's controller, each worker), so the marks are
Unix times (time.time()), not perf_counter readings. The marks are named by the moment they record; a part is
the time between one mark and the previous one, named by the later mark (START_PARTS says what each covers).
The loop writes the parts once per run, after its first step, to metrics.jsonl as {"start": {...}}, which
bench/search_pace.py breaks down over a run's trials. No torch, no Ray: the marks are plain floats.
"""
from __future__ import annotations

import time
from typing import Optional

START_PARTS: dict[str, str] = {
    "trial": "the Tune function: reading the trial's markers, validating its TrainConfig, building the trainer",
    "worker_process": "Ray Train: its controller actor, the placement group and the worker actor's process",
    "worker_loop": "the worker's Ray start-up, torch.distributed set-up and the unpickling of the loop "
    "(which imports trainables.tune_trainable)",
    "imports": "torch, transformers, peft and the loop's modules",
    "model_load": "the base model and tokenizer (the dequantised GGUF cache, a local folder or the hub)",
    "adapters": "LoRA, gradient checkpointing and the IB head (or their weights from a resumed checkpoint)",
    "data": "loading and tokenizing the training examples",
    "engine": "the optimizer and scheduler (plain PyTorch, DDP or DeepSpeed initialisation)",
    "first_step": "the first optimizer step (first batch, warm-up of kernels and allocator)",
}
"""Each part of a start, in order, and what it covers (the part ends at the mark of the same name)."""
START_KEY = "start"
"""The key of the metrics.jsonl record that holds a run's start parts."""
START_SECONDS_KEY = "start/seconds"
"""The result key every rung of a trial reports (trainables.tune_trainable): seconds from the trial's start (this
run of it) to its first training batch, i.e. the parts' total less the first step."""


class StartClock:
    """Wall-clock marks of one run's start, passed from the Tune function to the worker and into the loop."""

    def __init__(self, marks: Optional[dict[str, float]] = None) -> None:
        self.marks: dict[str, float] = dict(marks or {})

    def mark(self, name: str, at: Optional[float] = None) -> None:
        """Record that `name` happened now (or at Unix time `at`)."""
        self.marks[name] = time.time() if at is None else float(at)

    def parts(self) -> dict[str, float]:
        """Seconds of each part of START_PARTS whose mark and an earlier mark exist, plus `total`.

        A part whose mark is missing (an `ibft train` run has no Tune side) is left out, and the next part then
        runs from the last mark before it. A mark earlier than the previous one (a worker process Ray started
        ahead of the trial) counts as zero.
        """
        out: dict[str, float] = {}
        previous: Optional[float] = self.marks.get("start")
        first = previous
        for name in START_PARTS:
            at = self.marks.get(name)
            if at is None:
                continue
            if previous is not None:
                out[name] = max(0.0, at - previous)
                previous = max(previous, at)
            else:
                previous = first = at
        if first is not None and previous is not None and out:
            out["total"] = previous - first
        return out
