"""Checkpoint directories: naming, atomic writes, pruning, RNG state, and the trainer-state file.

Layout of one checkpoint (`output_dir/checkpoints/step-000010/`, and `output_dir/final/` at the end):
    adapter/            the LoRA adapter (peft save_pretrained), loadable with PeftModel.from_pretrained
    ib_config.json      the IB head (IBModel.save_ib), absent parts when alpha == 0 are IBModel's business
    ib_head.safetensors
    train_config.json   the TrainConfig that produced it
    trainer_state.pt    step checkpoints only: optimizer, scheduler, RNG states, data position, step, history
    deepspeed/          step checkpoints of DeepSpeed runs: the engine's own (per-rank) shards
    summary.json        final/ only: the run's summary
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
ADAPTER_DIR = "adapter"
TRAINER_STATE_FILE = "trainer_state.pt"
TRAIN_CONFIG_FILE = "train_config.json"
SUMMARY_FILE = "summary.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint written after optimizer step `step` lives."""
    return Path(output_dir) / CHECKPOINTS_DIR / f"step-{step:06d}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints under output_dir, oldest first (half-written temp dirs never match)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir() and (child / TRAINER_STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """The newest complete step checkpoint, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` (at least 1, so a resume point always remains); returns the deleted."""
    found = list_checkpoints(output_dir)
    doomed = [path for _, path in found[: max(0, len(found) - max(1, keep))]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def temp_dir_for(final_path: Path) -> Path:
    """The temporary sibling a checkpoint is written into before its rename (the same on every rank)."""
    return final_path.parent / f".tmp-{final_path.name}"


def begin_atomic_dir(final_path: Path) -> Path:
    """Create a fresh, empty temporary directory for `final_path` (removing a stale one from a crash)."""
    tmp = temp_dir_for(final_path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_atomic_dir(tmp: Path, final_path: Path) -> Path:
    """Move the finished temporary directory into place; an existing directory of that name is replaced.

    A reader sees either the old complete directory or the new complete one, never a half-written one
    (the rename is atomic; only the short window between removing an old copy and renaming loses it).
    """
    if final_path.exists():
        shutil.rmtree(final_path)
    os.replace(tmp, final_path)
    return final_path


def write_dir_atomically(final_path: Path, write: Callable[[Path], None]) -> Path:
    """Single-process convenience: write(tmp) fills a temp dir which then becomes final_path."""
    tmp = begin_atomic_dir(final_path)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit_atomic_dir(tmp, final_path)


def capture_rng_state() -> dict[str, Any]:
    """Every RNG the training step draws from: python, numpy, torch CPU and (when present) CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what capture_rng_state returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (an evaluation that samples, say) without it moving the training RNG streams,
    so a run with rung evaluations and the same run resumed from a checkpoint stay bit-identical."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def save_trainer_state(directory: Path, state: dict[str, Any]) -> None:
    torch.save(state, directory / TRAINER_STATE_FILE)


def load_trainer_state(directory: str | Path) -> dict[str, Any]:
    # Our own file, holding numpy RNG arrays that the weights-only unpickler refuses.
    return torch.load(Path(directory) / TRAINER_STATE_FILE, map_location="cpu", weights_only=False)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_model_files(directory: Path, peft_model, ib_model) -> None:
    """The parts `ibft eval --adapter DIR` needs: the LoRA adapter under adapter/, the IB head beside it."""
    peft_model.save_pretrained(str(directory / ADAPTER_DIR))
    ib_model.save_ib(str(directory))


def load_adapter_weights(directory: str | Path, peft_model) -> None:
    """Load the adapter saved by save_model_files into an already LoRA-wrapped model, exactly."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    weights = load_peft_weights(str(Path(directory) / ADAPTER_DIR), device="cpu")
    result = set_peft_model_state_dict(peft_model, weights)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise RuntimeError(f"checkpoint {directory} lacks adapter weights {missing[:3]}…")


def adapter_dir(path: str | Path) -> Path:
    """The adapter directory of a checkpoint, given the checkpoint or the adapter directory itself."""
    path = Path(path)
    return path / ADAPTER_DIR if (path / ADAPTER_DIR).is_dir() else path
