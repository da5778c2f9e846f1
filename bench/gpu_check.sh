#!/usr/bin/env bash
# The GPU checks, as one short script for a lent GPU machine (run from the repository root; at most 11 min,
# each step under its own timeout). What it runs:
#   1. the CUDA tests (tests/test_gpu_path.py: DeepSpeed bf16 ZeRO-2 with the fused Triton CE kernel and
#      ZeRO-3 with the checkpointed fallback; the CUDA case of tests/test_ib_ce_kernels.py);
#   2. bench/ib_ce_kernels.py at the 7B and SmolLM2 LM-head shapes, bf16;
#   3. bench/ib_overhead.py on the GPU, bf16, batch 8 x 1024;
#   4. bench/shape_7b.py: one trial's worker at DeepSeek-Coder-7B's shape (random weights, no download), bf16,
#      LoRA r 32, IB at the paper's setting, 4 x 2048 tokens, gradient checkpointing, ZeRO-2 on one GPU: peak
#      memory against the preflight's estimate, step time, tokens/s, MFU, decode tokens/s at the validation
#      batch; then once more without checkpointing (2 steps), for the estimate's other branch.
# Everything is logged to $OUT/gpu-check.log (OUT defaults to /tmp/gpu-check); docs/performance.md says
# where the figures go. Needs a python3 with CUDA torch, transformers, peft and triton; the project's other
# dependencies (deepspeed, pydantic, pyyaml, safetensors, ...) can come as wheels in .whl/, installed first.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
  timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu_path.py \
    tests/test_ib_ce_kernels.py::test_fused_compiled_on_cuda_bf16_matches_checkpointed_with_no_more_memory
  timeout 60 python3 bench/ib_ce_kernels.py --device cuda --dtype bf16 --shape 7b --tokens 8192 --chunk 4096
  timeout 40 python3 bench/ib_ce_kernels.py --device cuda --dtype bf16 --shape smollm2 --tokens 8192 --chunk 4096
  timeout 100 python3 bench/ib_overhead.py --device cuda --dtype bf16 --batch 8 --seq 1024 --rounds 8 --memory-steps 1
  timeout 200 python3 bench/shape_7b.py --device cuda | tee "$OUT/shape_7b.json"
  timeout 150 python3 bench/shape_7b.py --device cuda --no-checkpointing --steps 2 --decode-rows 10 --decode-new 16 \
    | tee "$OUT/shape_7b_no_checkpointing.json"
} 2>&1 | tee "$OUT/gpu-check.log"
