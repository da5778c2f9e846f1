"""The one IB-FT training loop: `ibft train` runs it in-process, every Ray Train worker runs it in a trial.

train(cfg) loads the model, adds LoRA and the IB head, tokenizes the data, and runs cfg.optim.max_steps
optimizer steps (AdamW, warm-up + cosine, gradient accumulation and clipping), logging every loss component,
writing exact-resume checkpoints, and stopping with NonFiniteLossError the moment a loss goes non-finite.
It imports no ray: the Tune trainable plugs in through TrainHooks.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from trainables.errors import ConfigError
from trainables.train import checkpoint as ckpt
from trainables.train import distributed
from trainables.train.batch_order import BatchOrder
from trainables.train.config import TrainConfig
from trainables.train.engine import build_engine
from trainables.train.start_clock import START_KEY, StartClock

LOSS_COMPONENTS = ("loss", "ce_loss", "kl_loss", "ib_ce_loss")
"""Loss terms of the IBModel output, logged every step and checked for finiteness."""
METRICS_FILE = "metrics.jsonl"
"""Per-step metrics under output_dir (rank 0, one JSON object per logged step)."""


class NonFiniteLossError(RuntimeError):
    """A loss component became NaN or infinite; raised before the optimizer could apply it."""

    def __init__(self, step: int, components: dict[str, float]) -> None:
        self.step = step
        self.components = components
        bad = [name for name, value in components.items() if not math.isfinite(value)]
        shown = ", ".join(f"{name}={value:.6g}" for name, value in components.items())
        super().__init__(
            f"non-finite {', '.join(bad)} at optimizer step {step} ({shown}); the run was stopped before "
            f"this step's update (lower optim.lr, raise optim.warmup_steps or set optim.max_grad_norm)"
        )


class LossTerms(torch.nn.Module):
    """The IB model with a forward that returns only its loss terms, as a plain dict.

    DDP re-packs a module's output through torch's pytree, which cannot rebuild a Hugging Face ModelOutput
    carrying IBModel's extra fields; the loop needs nothing but the losses (and DDP then need not walk the logits).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(**batch)
        return {name: out[name] for name in LOSS_COMPONENTS}


@dataclass
class TrainHooks:
    """Optional callbacks through which a caller (the Tune trainable, the CLI's progress bar) follows a run.

    Both are called on every rank with identical arguments (metrics are already reduced across ranks).
    """

    on_log: Optional[Callable[[int, dict[str, float]], None]] = None
    """on_log(step, metrics) every cfg.log_every optimizer steps (1-based step)."""
    on_rung: Optional[Callable[[int, Any, Any, str], Optional[bool]]] = None
    """on_rung(step, model, tokenizer, checkpoint_dir) every rung_every steps, right after that step's
    checkpoint is written; model is the LoRA model in eval mode. Returning True ends training early.
    Random draws it makes do not disturb training (the RNG state is restored afterwards). Its forwards need not
    be in step across ranks: under ZeRO-3 it runs with the whole model gathered on each rank and no ZeRO hooks
    (DeepSpeedEngine.inference_context), so it must not call the DeepSpeed engine itself."""
    rung_every: Optional[int] = None
    """Optimizer steps between on_rung calls (None: never)."""


def train(
    cfg: TrainConfig,
    *,
    hooks: Optional[TrainHooks] = None,
    resume_from: Optional[str] = None,
    start_clock: Optional[StartClock] = None,
) -> dict:
    """Run (or resume) one training run and return its summary.

    Resumes from `resume_from` (a step checkpoint directory) when given, else from the newest checkpoint
    in cfg.output_dir when cfg.resume is set. The summary: first/final loss, the per-step loss history,
    steps, tokens, wall time, example counts (kept/truncated/dropped), the start's parts (StartClock: marks
    made before train() was called, e.g. by the Tune trainable, come in through `start_clock`) and the final
    checkpoint path.
    """
    clock = start_clock if start_clock is not None else StartClock()
    if "start" not in clock.marks:
        clock.mark("start")
    from trainables.data import PaddingCollator, load_examples, tokenize_examples
    from trainables.ib import IBModel
    from trainables.models import apply_lora, enable_gradient_checkpointing, load_model_and_tokenizer

    clock.mark("imports")
    hooks = hooks or TrainHooks()
    if hooks.rung_every is not None and hooks.rung_every < 1:
        raise ConfigError(f"rung_every must be a positive int or None, got {hooks.rung_every!r}")
    started = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    rank, world = distributed.rank(), distributed.world_size()
    resume_dir = _resume_point(cfg, resume_from)

    _seed_all(cfg.seed)
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    clock.mark("model_load")
    peft_model = apply_lora(model, cfg.lora, cfg.seed)
    if cfg.optim.gradient_checkpointing:
        # Before the IB model and any engine wrap it: DeepSpeed and DDP must see the checkpointed blocks.
        enable_gradient_checkpointing(peft_model)
    device = _device()
    # The IB head's initial weights must be the same on every rank (DDP and ZeRO assume it).
    torch.manual_seed(cfg.seed)
    if resume_dir is not None and cfg.deepspeed is None:
        ckpt.load_adapter_weights(resume_dir, peft_model)
        ib_model = IBModel.load_ib(peft_model, str(resume_dir))
    else:
        ib_model = IBModel(peft_model, cfg.ib)
    if cfg.deepspeed is None:
        ib_model.to(device)
    clock.mark("adapters")

    examples = load_examples(cfg.data, cfg.seed)
    features, data_stats = tokenize_examples(
        examples, tokenizer, cfg.data.max_length, cfg.data.drop_overlong,
        prompt_format=cfg.data.prompt_format, append_eos=cfg.data.append_eos,
    )
    if not features:
        raise ConfigError(
            f"data: all {len(examples)} examples from {cfg.data.source!r} were dropped as longer than "
            f"data.max_length={cfg.data.max_length}; raise data.max_length"
        )
    collate = PaddingCollator(tokenizer.pad_token_id)
    order = BatchOrder(len(features), batch_size=cfg.optim.batch_size, seed=cfg.seed, rank=rank, world_size=world)
    clock.mark("data")

    engine = build_engine(LossTerms(ib_model), cfg, device)
    step, history, totals = 0, [], {"tokens": 0, "target_tokens": 0, "train_time_s": 0.0}
    if resume_dir is not None:
        state = ckpt.load_trainer_state(resume_dir)
        engine.load(resume_dir, state.get("engine", {}))
        order.load_state_dict(state["data"])
        step, history, totals = state["step"], list(state["loss_history"]), dict(state["totals"])
        _restore_rank_rng(state["rng"], rank, world, cfg.seed)
    else:
        # Dropout and IB noise differ across ranks, like any data-parallel run's.
        _seed_all(cfg.seed + 1_000_003 * rank)
    clock.mark("engine")

    ib_model.train()
    run_started = time.perf_counter()
    stopped_early = False
    last_checkpoint: Optional[Path] = None
    grad_accum = cfg.optim.grad_accum
    while step < cfg.optim.max_steps:
        step_started = time.perf_counter()
        batches = [collate([features[i] for i in order.next_indices()]) for _ in range(grad_accum)]
        local_targets = [_target_count(b["labels"]) for b in batches]
        global_targets = distributed.all_reduce_sum([float(sum(local_targets))])[0]
        sums = dict.fromkeys(LOSS_COMPONENTS, 0.0)
        tokens = 0
        lr = engine.lr()
        for index, (batch, targets) in enumerate(zip(batches, local_targets)):
            batch = {k: v.to(device) for k, v in batch.items()}
            share = targets / global_targets if global_targets else 0.0
            with engine.micro_batch(last=index == grad_accum - 1):
                out = engine.module(**batch)
                values = {name: float(out[name].detach().float()) for name in LOSS_COMPONENTS}
                if cfg.debug.fault_nan_at_step == step + 1:
                    values["loss"] = float("nan")  # as a diverged run would see it; never backpropagated
                if targets > 0 and not all(math.isfinite(v) for v in values.values()):
                    raise NonFiniteLossError(step + 1, values)
                loss = out["loss"] if targets > 0 else out["loss"].nan_to_num(0.0)  # an empty batch is 0/0
                engine.backward(loss, share)
            for name in LOSS_COMPONENTS:
                sums[name] += values[name] * share if targets > 0 else 0.0
            tokens += int(batch["attention_mask"].sum())
        grad_norm = engine.step()
        step += 1

        reduced = distributed.all_reduce_sum([sums[n] for n in LOSS_COMPONENTS] + [float(tokens)])
        step_time = time.perf_counter() - step_started
        metrics = dict(zip(LOSS_COMPONENTS, reduced[:-1]))
        metrics.update(
            grad_norm=grad_norm,
            lr=lr,
            tokens=int(reduced[-1]),
            target_tokens=int(global_targets),
            tokens_per_s=reduced[-1] / step_time if step_time > 0 else 0.0,
            step_time_s=step_time,
        )
        history.append(metrics["loss"])
        if "first_step" not in clock.marks:
            clock.mark("first_step")
            _log_start(output_dir, clock, resumed=resume_dir is not None)
        totals["tokens"] += metrics["tokens"]
        totals["target_tokens"] += metrics["target_tokens"]
        if step % cfg.log_every == 0 or step == cfg.optim.max_steps:
            _log(output_dir, step, metrics, hooks)

        rung_due = bool(hooks.on_rung and hooks.rung_every and step % hooks.rung_every == 0)
        checkpoint_due = (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.optim.max_steps
        if rung_due or checkpoint_due:
            totals_now = {**totals, "train_time_s": totals["train_time_s"] + time.perf_counter() - run_started}
            last_checkpoint = _write_step_checkpoint(
                cfg, step, engine, peft_model, ib_model, order, history, totals_now
            )
        if rung_due:
            ib_model.eval()
            # Ranks evaluate out of step with each other (own task shares, own sample lengths, memorization on
            # rank 0): under ZeRO-3 the whole model is gathered first, so those forwards need no collective.
            with ckpt.preserved_rng(), engine.inference_context():
                stop = hooks.on_rung(step, peft_model, tokenizer, str(last_checkpoint))
            ib_model.train()
            if stop:
                stopped_early = step < cfg.optim.max_steps
                break

    totals["train_time_s"] += time.perf_counter() - run_started
    summary = {
        "steps": step,
        "max_steps": cfg.optim.max_steps,
        "first_loss": history[0] if history else None,
        "final_loss": history[-1] if history else None,
        "loss_history": history,
        "tokens": totals["tokens"],
        "target_tokens": totals["target_tokens"],
        "train_time_s": totals["train_time_s"],
        "wall_time_s": time.perf_counter() - started,
        "examples": {"loaded": len(examples), **data_stats},
        "stopped_early": stopped_early,
        "start_s": clock.parts(),
        "resumed_from": str(resume_dir) if resume_dir is not None else None,
        "engine": engine.name,
        "world_size": world,
        "output_dir": str(output_dir),
        "checkpoint": str(output_dir / ckpt.FINAL_DIR),
        "last_step_checkpoint": str(last_checkpoint) if last_checkpoint is not None else None,
    }
    _write_final(cfg, engine, peft_model, ib_model, summary)
    return summary


def _resume_point(cfg: TrainConfig, resume_from: Optional[str]) -> Optional[Path]:
    if resume_from is not None:
        path = Path(resume_from)
        if not (path / ckpt.TRAINER_STATE_FILE).is_file():
            raise ConfigError(f"resume_from {resume_from!r} is not a step checkpoint (no {ckpt.TRAINER_STATE_FILE})")
        return path
    if cfg.resume:
        return ckpt.latest_checkpoint(cfg.output_dir)
    return None


def _device() -> torch.device:
    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _target_count(labels: torch.Tensor) -> int:
    # Hugging Face shifts labels inside the model: position t's label is scored from position t-1.
    return int((labels[:, 1:] != -100).sum())


def _log(output_dir: Path, step: int, metrics: dict[str, float], hooks: TrainHooks) -> None:
    if distributed.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        with open(output_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
    if hooks.on_log is not None:
        hooks.on_log(step, dict(metrics))


def _log_start(output_dir: Path, clock: StartClock, *, resumed: bool) -> None:
    """Rank 0 appends the start's parts to metrics.jsonl once, after the first step (no "step" key: readers of the
    step records skip it)."""
    if distributed.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        with open(output_dir / METRICS_FILE, "a") as f:
            # The pid tells a start in a fresh process from one in a process an earlier trial used.
            f.write(json.dumps({START_KEY: clock.parts(), "resumed": resumed, "pid": os.getpid()}) + "\n")


def _write_step_checkpoint(cfg, step, engine, peft_model, ib_model, order, history, totals) -> Path:
    """Write output_dir/checkpoints/step-N atomically: every rank adds its part to a temp dir, rank 0 renames."""
    final_path = ckpt.step_checkpoint_dir(cfg.output_dir, step)
    rng_states = _gather_rng_states()
    tmp = ckpt.temp_dir_for(final_path)
    if distributed.is_main_process():
        ckpt.begin_atomic_dir(final_path)
    distributed.barrier()
    engine_state = engine.save(tmp)  # DeepSpeed: every rank writes its shards here
    with engine.gathered_parameters():
        if distributed.is_main_process():
            ckpt.save_model_files(tmp, peft_model, ib_model)
    if distributed.is_main_process():
        ckpt.save_trainer_state(
            tmp,
            {
                "step": step,
                "engine_name": engine.name,
                "engine": engine_state,
                "data": order.state_dict(),
                "rng": rng_states,
                "world_size": distributed.world_size(),
                "loss_history": list(history),
                "totals": dict(totals),
                "config": cfg.to_dict(),
            },
        )
        ckpt.write_json(tmp / ckpt.TRAIN_CONFIG_FILE, cfg.to_dict())
        ckpt.commit_atomic_dir(tmp, final_path)
        ckpt.prune_checkpoints(cfg.output_dir, cfg.keep_checkpoints)
    distributed.barrier()
    return final_path


def _write_final(cfg, engine, peft_model, ib_model, summary: dict) -> None:
    final_path = Path(cfg.output_dir) / ckpt.FINAL_DIR

    def write(tmp: Path) -> None:
        ckpt.save_model_files(tmp, peft_model, ib_model)
        ckpt.write_json(tmp / ckpt.TRAIN_CONFIG_FILE, cfg.to_dict())
        ckpt.write_json(tmp / ckpt.SUMMARY_FILE, summary)

    with engine.gathered_parameters():
        if distributed.is_main_process():
            ckpt.write_dir_atomically(final_path, write)
    distributed.barrier()


def _gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (only rank 0's copy is written)."""
    state = ckpt.capture_rng_state()
    if distributed.world_size() == 1:
        return [state]
    import torch.distributed as dist

    states: list[Any] = [None] * distributed.world_size()
    dist.all_gather_object(states, state)
    return states


def _restore_rank_rng(states: list[dict[str, Any]], rank: int, world: int, seed: int) -> None:
    if len(states) == world:
        ckpt.restore_rng_state(states[rank])
    else:
        # A different world size cannot replay the old noise streams; the data order is still exact.
        _seed_all(seed + 1_000_003 * rank + 7919 * len(states))
