"""Plain torch or DeepSpeed behind one small interface, so the loop has a single code path.

An engine owns the optimizer and LR scheduler and knows how its backend averages gradients:
- `module`: what the loop calls forward on (the IB model, possibly DDP- or DeepSpeed-wrapped);
- `micro_batch(last)`: context for one micro-batch's forward+backward (skips DDP's all-reduce until the last);
- `backward(loss, token_share)`: accumulate the gradient of `loss`, a mean over this micro-batch's target
  tokens that stands for `token_share` of all target tokens in the global optimizer step, so the step's
  gradient is that of the token mean over the whole global batch whatever the accumulation and world size;
- `step() -> grad_norm`: clip, update, advance the schedule, zero the gradients;
- `lr()`: the learning rate the next update uses;
- `save(dir) -> dict` / `load(dir, state)`: the optimizer/scheduler (or DeepSpeed shards);
- `inference_context()`: context for forwards outside the training step (a rung's validation, test and
  memorization), which ranks run out of step with each other (see DeepSpeedEngine.inference_context).
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any, ContextManager, Iterator

import torch

from trainables.train import distributed
from trainables.train.config import TrainConfig
from trainables.train.schedule import build_scheduler

DEEPSPEED_SUBDIR = "deepspeed"
_DEEPSPEED_TAG = "state"


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


class TorchEngine:
    """Plain PyTorch: AdamW + LambdaLR, clipping by torch, DDP when more than one rank is running."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.params = trainable_parameters(model)
        self.optimizer = build_optimizer(self.params, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim)
        self.world_size = distributed.world_size()
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            # Some IB parameters (a prior's, the IB head at a token fraction that picks nothing) can miss
            # a step's graph; DDP must then not wait for their gradients.
            self.module = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
            )
        else:
            self.module = model

    def micro_batch(self, last: bool) -> ContextManager:
        if self.world_size > 1 and not last:
            return self.module.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, token_share: float) -> None:
        # DDP averages gradients over ranks; the world-size factor turns that average back into the sum of shares.
        (loss * (token_share * self.world_size)).backward()

    def step(self) -> float:
        max_norm = self.cfg.optim.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm if max_norm > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def gathered_parameters(self) -> ContextManager:
        return contextlib.nullcontext()

    def inference_context(self) -> ContextManager:
        # Every rank holds the whole model: its forwards need no other rank.
        return contextlib.nullcontext()

    def save(self, directory: Path) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load(self, directory: Path, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class DeepSpeedEngine:
    """A DeepSpeed engine (ZeRO stage/offload from cfg.deepspeed), given the same AdamW and schedule.

    Accumulation and clipping are DeepSpeed's; the schedule is ours (a LambdaLR DeepSpeed steps at each
    accumulation boundary), so both engines follow the identical lr curve.
    """

    name = "deepspeed"

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> None:
        import deepspeed

        self.cfg = cfg
        ds = cfg.deepspeed
        params = trainable_parameters(model)
        zero: dict[str, Any] = {"stage": ds.zero_stage}
        if ds.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        if ds.offload_params:
            zero["offload_param"] = {"device": "cpu"}
        config = {
            "train_micro_batch_size_per_gpu": cfg.optim.batch_size,
            "gradient_accumulation_steps": cfg.optim.grad_accum,
            "gradient_clipping": float(cfg.optim.max_grad_norm),
            "zero_optimization": zero,
            "bf16": {"enabled": cfg.model.dtype == "bf16"},
            # Our torch AdamW, not DeepSpeed's fused/CPU Adam, so both engines optimise identically.
            "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if not distributed.is_distributed():
            _single_process_rendezvous_env()
        elif "LOCAL_RANK" not in os.environ:
            # DeepSpeed insists on LOCAL_RANK even with a process group already up (a bare gloo group);
            # the loop has already chosen this rank's device.
            os.environ["LOCAL_RANK"] = str(device.index or 0)
        self.module, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=params,
            optimizer=build_optimizer(params, cfg),
            lr_scheduler=lambda optimizer: build_scheduler(optimizer, cfg.optim),
            config=config,
            dist_init_required=not distributed.is_distributed(),
        )
        self.params = params
        self.grad_accum = cfg.optim.grad_accum
        self.world_size = distributed.world_size()

    def micro_batch(self, last: bool) -> ContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, token_share: float) -> None:
        # DeepSpeed divides by the accumulation steps and averages over ranks; undo both.
        self.module.backward(loss * (token_share * self.grad_accum * self.world_size))
        if not self.module.is_gradient_accumulation_boundary():
            self.module.step()  # only advances DeepSpeed's micro-step counter between boundaries

    def step(self) -> float:
        self.module.step()
        norm = self.module.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def gathered_parameters(self) -> ContextManager:
        if self.cfg.deepspeed.zero_stage == 3:
            import deepspeed

            # ZeRO-3 keeps only a shard of each parameter on a rank; saving the adapter needs them whole.
            return deepspeed.zero.GatheredParameters(self.params, modifier_rank=None)
        return contextlib.nullcontext()

    def inference_context(self) -> ContextManager:
        """Context for the forwards of a rung's validation, test and memorization: under ZeRO-3, the whole model
        gathered on every rank and ZeRO-3's module hooks off, so those forwards run without any collective.

        ZeRO-3 keeps a shard of each parameter per rank, and its hooks all-gather a module's parameters before
        each forward: a collective every rank must join, in the same order. Evaluation forwards are not in step
        across ranks (each rank samples its own task share, rows stop at their own lengths, memorization runs on
        rank 0 alone), so a rank that finished early left the others blocked in an all-gather for good. Here every
        rank gathers all parameters once (one collective, at the same point on every rank), the hooks come off,
        forwards use the local full copy, and on exit the hooks go back and the parameters are partitioned again.
        Costs the whole model in each device's memory for the duration (a 7B model in bf16: 14 GB); a model that
        does not fit one device fails here with a clear error on every rank. ZeRO-0/1/2 keep whole parameters on
        every rank: nothing to do.
        """
        if self.cfg.deepspeed.zero_stage == 3:
            return _zero3_whole_model(self.module)
        return contextlib.nullcontext()

    def save(self, directory: Path) -> dict[str, Any]:
        self.module.save_checkpoint(
            str(directory / DEEPSPEED_SUBDIR), tag=_DEEPSPEED_TAG, save_latest=False, exclude_frozen_parameters=True
        )
        return {}

    def load(self, directory: Path, state: dict[str, Any]) -> None:
        path, _ = self.module.load_checkpoint(
            str(directory / DEEPSPEED_SUBDIR),
            tag=_DEEPSPEED_TAG,
            load_module_strict=False,  # frozen base weights are not in the shards; they come from the model
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise RuntimeError(f"no DeepSpeed checkpoint shards under {directory / DEEPSPEED_SUBDIR}")


def build_engine(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """DeepSpeedEngine when cfg.deepspeed is set, TorchEngine otherwise."""
    if cfg.deepspeed is not None:
        return DeepSpeedEngine(model, cfg, device)
    return TorchEngine(model, cfg, device)


@contextlib.contextmanager
def _zero3_whole_model(engine: Any) -> Iterator[None]:
    """Whole parameters on every rank and no ZeRO-3 hooks for the duration (engine: a ZeRO-3 DeepSpeedEngine).

    As DeepSpeed's own deepspeed.runtime.zero.stage3.unwrap_model_for_generation (and TRL's
    unwrap_model_for_generation) do it, plus: stale active-submodule marks cleared (re-registered modules get new
    ids, and a parameter still marked active could never be freed), and the hooks restored even on an error.
    Every rank must enter together: the gather is a collective.
    """
    import deepspeed

    offload = getattr(engine.optimizer, "parameter_offload", None) or engine.optimizer
    if offload is None or not hasattr(offload, "forward_hooks"):
        raise RuntimeError("ZeRO-3 engine without its parameter coordinator (an unsupported DeepSpeed version?)")
    params = list(engine.module.parameters())
    _check_whole_model_fits(params)
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        for param in params:
            param.ds_active_sub_modules.clear()
        try:
            yield
        finally:
            # Re-registering invalidates ZeRO-3's recorded module trace: the next training forward records anew.
            offload._register_deepspeed_module(offload.module)


def _check_whole_model_fits(params: list[torch.nn.Parameter]) -> None:
    """Raise on every rank alike when gathering the whole model would not fit some rank's free device memory.

    The decision is all-reduced: one rank raising while the others enter the gather would leave them blocked.
    """
    if not torch.cuda.is_available() or not distributed.is_distributed():
        return
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    needed = sum(p.ds_numel * p.element_size() for p in params if p.ds_status == ZeroParamStatus.NOT_AVAILABLE)
    free, _ = torch.cuda.mem_get_info()
    free += torch.cuda.memory_reserved() - torch.cuda.memory_allocated()  # cached by torch, free to reuse
    headroom = distributed.all_reduce_min([float(free - needed)])[0]
    if headroom < 0:
        raise RuntimeError(
            f"deepspeed.zero_stage 3: validation gathers the whole model on every rank ({needed / 2**30:.1f} GiB "
            f"more), but a rank has {-headroom / 2**30:.1f} GiB too little free device memory; use GPUs that hold "
            "the whole model (ZeRO-3 then still saves optimizer and gradient memory in training)"
        )


def _single_process_rendezvous_env() -> None:
    """Let DeepSpeed set up its own 1-rank group when run outside any launcher (`ibft train --deepspeed-stage 2`)."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
