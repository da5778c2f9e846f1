"""ZeRO-3 with two ranks (gloo, CPU): a rung's evaluation forwards are not in step across ranks, and must not hang.

Under ZeRO-3 each module's forward all-gathers its parameter shards, a collective every rank must join. At a rung
each rank samples its own task share (its own number of batches and of decoding steps, rows stopping at their own
lengths) and memorization runs on rank 0 alone, so before DeepSpeedEngine.inference_context a rank that finished
early left the other blocked in an all-gather for good. Here the ranks do deliberately different amounts of
generation (1 prompt and 3 tokens against 3 prompts in 3 batches and 12 tokens), rank 0 alone scores Min-K%
memorization through the tap hook and runs the IB model's forward, and training then goes on (ZeRO-3's hooks must
be back), resumes exactly from the rung's checkpoint, and follows the very losses of a run without validation.

The tiny Llama's embedding (49152 x 64, tied with the LM head) is far over ZeRO-3's parameter persistence
threshold, so it is partitioned and every forward all-gathers it. Without the fix (`run_ranks(..., without_fix=True)`)
the ranks' collectives fall out of step at the first rung: gloo aborts a rank on the size mismatch ("Is there a
distributed collective mismatch"), NCCL would wait forever; gathering the parameters but keeping ZeRO-3's hooks
fails the same way (each module's forward releases and re-gathers its weights). A hang that does happen is cut by
run_ranks' own deadline.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from test_train_loop import tiny_config


SECTIONS = {"optim": {"max_steps": 4, "batch_size": 1}, "checkpoint_every": 0, "deepspeed": {"zero_stage": 3}}
PROMPTS = ["def add(a, b):", "def reverse(s):", "class Stack:"]
EXAMPLES = [
    {"instruction": f"Write function number {i}.", "response": f"def f{i}(x):\n    return x * {i} + {i * i}\n"}
    for i in range(10)
]


def _uneven_rung(rank: int, record: dict, engines: list):
    """An on_rung hook whose forwards differ per rank in count and shape, as a real rung's do."""

    def on_rung(step, model, tokenizer, checkpoint_dir):
        import torch

        from trainables.generation import GenerationSettings, generate_samples
        from trainables.memorization import measure_memorization
        from trainables.train import distributed

        settings = GenerationSettings(
            temperature=0.8, max_new_tokens=3 + 9 * rank, batch_size=2, stop_after_code_block=False
        )
        prompts = PROMPTS[: 1 + 2 * rank]  # rank 0: one batch; rank 1: three (n=2 samples, one prompt per batch)
        out = generate_samples(model, tokenizer, prompts, 2, settings, seed=step + rank)
        record["generated"].append(out.new_tokens)
        if rank == 0:
            memo = measure_memorization(model, tokenizer, EXAMPLES, tap_layer=1, batch_size=2, max_length=64)
            record["memorization_gap"].append(memo["memorization_gap"])
            # The IB model's own forward (tap hook, encoder, prior, decoder through the LM head) on rank 0 alone.
            ib_model = engines[-1].module.module.model
            device = next(ib_model.parameters()).device
            batch = tokenizer(["def add(a, b):\n    return a + b"], return_tensors="pt").to(device)
            with torch.no_grad():
                ib_out = ib_model(**batch, labels=batch["input_ids"])
            record["ib_losses"].append([float(ib_out[k]) for k in ("ce_loss", "kl_loss", "ib_ce_loss")])
        distributed.barrier()  # a rung's metrics are combined across ranks at the end, as _RungReporter does
        return None

    return on_rung


def _observed(inference_context, exits: list):
    """inference_context, recording ZeRO-3's hook counts before, inside and after it, and how many partitioned
    (non-persistent) parameters are still gathered once it has exited."""

    @contextlib.contextmanager
    def observed(self):
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        offload = self.module.optimizer.parameter_offload
        counts = lambda: [len(offload.forward_hooks), len(offload.backward_hooks)]  # noqa: E731
        before = counts()
        with inference_context(self):
            inside = counts()
            yield
        params = list(self.module.parameters())
        gathered = [p for p in params if not p.ds_persist and p.ds_status != ZeroParamStatus.NOT_AVAILABLE]
        exits.append({"hooks": [before, inside, counts()], "partitioned": sum(not p.ds_persist for p in params),
                      "still_gathered": len(gathered)})

    return observed


def _rank_main(rank: int, world: int, port: int, out_dir: str, without_fix: bool) -> None:
    os.environ["DS_ACCELERATOR"] = "cpu"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from trainables.train import engine as engine_module
    from trainables.train import loop
    from trainables.train.loop import TrainHooks, train

    exits: list = []
    if without_fix:  # the code before the fix: evaluation forwards went through ZeRO-3's hooks
        engine_module.DeepSpeedEngine.inference_context = lambda self: contextlib.nullcontext()
    else:
        fixed = engine_module.DeepSpeedEngine.inference_context
        engine_module.DeepSpeedEngine.inference_context = _observed(fixed, exits)
    engines: list = []
    build = loop.build_engine
    loop.build_engine = lambda *a: engines.append(build(*a)) or engines[-1]
    out = Path(out_dir)
    try:
        record, again = ({"generated": [], "memorization_gap": [], "ib_losses": []} for _ in range(2))
        hooks = TrainHooks(on_rung=_uneven_rung(rank, record, engines), rung_every=2)
        validated = train(tiny_config(out / "validated", **SECTIONS), hooks=hooks)
        resumed = train(
            tiny_config(out / "resumed", **SECTIONS),
            hooks=TrainHooks(on_rung=_uneven_rung(rank, again, engines), rung_every=2),
            resume_from=str(out / "validated" / "checkpoints" / "step-000002"),
        )
        plain = train(tiny_config(out / "plain", **SECTIONS))
        result = {
            "record": record,
            "validated": validated["loss_history"],
            "resumed": resumed["loss_history"],
            "resumed_steps": resumed["steps"],
            "plain": plain["loss_history"],
            "exits": exits,
        }
        (out / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_ranks(out_dir: Path, *, without_fix: bool = False, timeout: float = 480) -> dict:
    """Both ranks' results, or {"hung": seconds} when they had not finished by `timeout` (then killed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    context = mp.start_processes(
        _rank_main, args=(2, port, str(out_dir), without_fix), nprocs=2, start_method="spawn", join=False
    )
    try:
        while not context.join(timeout=max(1.0, timeout - (time.monotonic() - started))):
            if time.monotonic() - started >= timeout:
                return {"hung": round(time.monotonic() - started, 1)}
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()
    return {rank: json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_zero3_rung_evaluation_out_of_step_across_ranks_neither_hangs_nor_disturbs_training(tmp_path):
    results = run_ranks(tmp_path)
    assert "hung" not in results, f"ZeRO-3 ranks blocked at the rung's evaluation for {results.get('hung')} s"
    r0, r1 = results[0], results[1]
    # Genuinely out of step: different numbers of batches and of generated tokens at each of the two rungs.
    assert len(r0["record"]["generated"]) == len(r1["record"]["generated"]) == 2
    assert all(a < b for a, b in zip(r0["record"]["generated"], r1["record"]["generated"])), (r0, r1)
    assert len(r0["record"]["memorization_gap"]) == 2 and not r1["record"]["memorization_gap"]
    assert all(math.isfinite(g) for g in r0["record"]["memorization_gap"])
    assert all(math.isfinite(v) for losses in r0["record"]["ib_losses"] for v in losses)
    # Training after the rungs is the training of a run that never evaluated (the hooks came back, nothing
    # moved), and the rung's checkpoint resumes it exactly.
    assert r0["validated"] == r1["validated"]
    assert r0["validated"] == pytest.approx(r0["plain"], rel=1e-6)
    assert r0["resumed_steps"] == 4
    assert r0["resumed"] == pytest.approx(r0["validated"], rel=1e-6)
    # Inside the context no ZeRO-3 hook; after it every hook back and every partitioned parameter partitioned again.
    for exit in r0["exits"] + r1["exits"]:
        before, inside, after = exit["hooks"]
        assert inside == [0, 0] and after == before and before[0] > 0, exit
        assert exit["partitioned"] > 0 and exit["still_gathered"] == 0, exit
    assert len(r0["exits"]) == len(r1["exits"]) == 3  # two rungs, and the resumed run's second


def test_zero3_whole_model_gather_is_refused_alike_on_every_rank_when_a_gpu_cannot_hold_it(monkeypatch):
    """The gather is a collective: one rank failing it (CUDA out of memory) would leave the others blocked in it,
    so the ranks first agree (an all-reduced minimum of free memory minus the model) and all refuse together."""
    import torch
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    from trainables.train import distributed
    from trainables.train import engine as engine_module

    class Shard:  # a ZeRO-3 parameter as the check sees it
        def __init__(self, numel: int, status) -> None:
            self.ds_numel, self.ds_status = numel, status

        def element_size(self) -> int:
            return 2  # bf16

    gib = 2**30
    # 14 GiB to gather (the available shard is not counted)
    params = [Shard(7 * gib, ZeroParamStatus.NOT_AVAILABLE), Shard(10**6, ZeroParamStatus.AVAILABLE)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (14 * gib, 80 * gib))
    # torch's cache counts as free: 3 GiB reserved, 2 GiB of it in use
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 3 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 2 * gib)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    reduced = []
    monkeypatch.setattr(distributed, "all_reduce_min", lambda values: reduced.append(values) or list(values))
    engine_module._check_whole_model_fits(params)  # 15 GiB free here and on the other ranks: fits
    assert reduced == [[1.0 * gib]]
    # Another rank has 2 GiB less free: this rank, which alone would fit, refuses too.
    monkeypatch.setattr(distributed, "all_reduce_min", lambda values: [values[0] - 2 * gib])
    refused = r"zero_stage 3: validation gathers the whole model .*14\.0 GiB.* 1\.0 GiB too little"
    with pytest.raises(RuntimeError, match=refused):
        engine_module._check_whole_model_fits(params)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    engine_module._check_whole_model_fits(params)  # CPU (gloo) ranks: nothing to check
