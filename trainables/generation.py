"""Batched sampling of n answers per prompt from a transformers causal LM, each row stopping on its own.

Generation dominates an evaluation on CPU, so what matters is done here:
- all n samples of several prompts decode as one batch (left padding, KV cache, inference mode);
- each prompt is encoded once and its KV cache copied to its n samples, instead of encoding it n
  times as `generate(num_return_sequences=n)` would;
- a row ends as soon as its fenced code block closes, a stop sequence or EOS appears (chat models
  keep talking after the code, and those tokens are pure waste), and it then leaves the batch and
  the cache, so one long sample does not keep every finished row computing;
- nucleus sampling sorts only the few hundred most likely tokens, not the whole vocabulary.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from trainables.errors import ConfigError

FENCE = "```"


@dataclass
class GenerationSettings:
    """How answers are sampled."""

    temperature: float = 0.8
    """Softmax temperature; 0 means greedy decoding (then n identical samples per prompt)."""
    top_p: float = 0.95
    """Nucleus sampling: sample only from the smallest token set holding this much probability (1 disables)."""
    top_k: int = 0
    """Sample only from the k most likely tokens (0 disables, so top_p alone shapes the distribution)."""
    max_new_tokens: int = 384
    """Hard cap on generated tokens per sample; answers cut here usually fail, so size it to the task."""
    stop: list[str] = field(default_factory=list)
    """Plain stop sequences: a sample ends where one first appears, and the text is cut before it."""
    stop_after_code_block: bool = True
    """End a sample as soon as the fenced code block it writes closes (a prompt that ends inside an open
    fence counts as opened), since what chat models say after the code is never used."""
    batch_size: int = 40
    """Sequences (prompts x samples) per `generate` call: larger is faster until memory runs out."""
    share_prompt_cache: bool = True
    """Encode each prompt once and copy its KV cache to its n samples instead of encoding it n times."""

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ConfigError(f"generation.temperature must be a number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError(f"generation.top_p must lie in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"generation.top_k must be an int >= 0, got {self.top_k!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"generation.max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"generation.batch_size must be a positive int, got {self.batch_size!r}")
        self.stop = list(self.stop)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"generation.stop must be a list of non-empty strings, got {self.stop!r}")


@dataclass
class GenerationOutput:
    """Samples plus what producing them cost."""

    texts: list[list[str]]
    """texts[i][j] is sample j of prompt i, cut at its stop point."""
    new_tokens: int
    """Tokens generated over all samples, up to each sample's stop point."""
    seconds: float
    """Wall-clock seconds spent generating."""

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def stop_position(text: str, settings: GenerationSettings, prompt_fence_open: bool) -> Optional[int]:
    """Index where `text` (generated after a prompt) should end, or None if it has not reached a stop.

    The closing fence is kept (so extraction still sees a closed block); plain stop sequences are cut off.
    """
    ends = []
    if settings.stop_after_code_block:
        first = text.find(FENCE)
        if first >= 0:
            closing = first if prompt_fence_open else text.find(FENCE, first + len(FENCE))
            if closing >= 0:
                ends.append(closing + len(FENCE))
    for stop in settings.stop:
        i = text.find(stop)
        if i >= 0:
            ends.append(i)
    return min(ends) if ends else None


def sample(
    model, tokenizer, prompts: Sequence[str], n: int, settings: GenerationSettings, seed: int, prompt_format: str = "auto"
) -> list[list[str]]:
    """n sampled answers for each prompt (already formatted by trainables.data.format_prompt in `prompt_format`)."""
    return generate_samples(model, tokenizer, prompts, n, settings, seed, prompt_format=prompt_format).texts


def generate_samples(
    model,
    tokenizer,
    prompts: Sequence[str],
    n: int,
    settings: GenerationSettings,
    seed: int,
    progress: Any = None,
    prompt_format: str = "auto",
) -> GenerationOutput:
    """Like `sample`, also counting generated tokens and time; `progress` (a tqdm bar) advances per sample.

    Prompts are encoded by trainables.data.encode_prompt in `prompt_format`, the format they were built in
    (the model's data.prompt_format), so their ids are exactly those of the training prompts."""
    import torch

    from trainables.data.formatting import encode_prompt

    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n (samples per prompt) must be a positive int, got {n!r}")
    if tokenizer.pad_token_id is None:
        raise ConfigError("the tokenizer has no pad token; batched generation needs one")
    started = time.perf_counter()
    texts: list[list[str]] = [[] for _ in prompts]
    new_tokens = 0
    encoded = [encode_prompt(tokenizer, p, prompt_format) for p in prompts]
    # Similar lengths share a batch so little compute goes to padding.
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    prompts_per_call = max(1, settings.batch_size // n)
    token_text = _TokenText(tokenizer)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        for start in range(0, len(order), prompts_per_call):
            chunk = order[start : start + prompts_per_call]
            chunk_texts, chunk_tokens = _generate_chunk(
                model, tokenizer, [encoded[i] for i in chunk], [prompts[i] for i in chunk], n, settings, token_text
            )
            new_tokens += chunk_tokens
            for i, t in zip(chunk, chunk_texts):
                texts[i] = t
            if progress is not None:
                progress.update(len(chunk) * n)
    return GenerationOutput(texts=texts, new_tokens=new_tokens, seconds=time.perf_counter() - started)


class _TokenText:
    """Per-token decoded text, cached: the stop check runs every step on every row, so it must be cheap.

    Per-token decoding can garble a multi-byte character split across tokens; stop sequences and fences
    are matched on this text only to decide *when* to stop, the returned text is decoded properly.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = "" if token_id in self.special else self.tokenizer.decode([token_id])
            self.cache[token_id] = text
        return text


def _generate_chunk(model, tokenizer, encoded, prompts, n, settings, token_text) -> tuple[list[list[str]], int]:
    """n samples for each of a few prompts in one batch; finished rows leave the batch and the KV cache.

    A hand-written decode loop rather than `model.generate`: generate keeps computing every row until
    the last one finishes, so one rambling sample costs the whole batch its full max_new_tokens.
    Here a row that closes its code block, hits a stop sequence or EOS is dropped from the batch
    (and from the cache) at once, so compute follows the tokens actually kept.
    """
    import torch
    from transformers import DynamicCache

    device = _model_device(model)
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad
    width = max(len(ids) for ids in encoded)
    # Left padding: every row's next token goes in the same (last) column.
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    # Positions count real tokens only, so a left-padded prompt is encoded as it would be alone.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    share = settings.share_prompt_cache and n > 1
    if not share:
        input_ids, attention_mask, position_ids = (
            t.repeat_interleave(n, dim=0) for t in (input_ids, attention_mask, position_ids)
        )
    cache = DynamicCache(config=model.config)
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    logits = output.logits[:, -1]
    if share:
        # Each prompt was encoded once; its n samples start from copies of its cache.
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, dim=0)
        attention_mask = attention_mask.repeat_interleave(n, dim=0)
        position_ids = position_ids.repeat_interleave(n, dim=0)
    next_position = position_ids[:, -1] + 1

    rows = len(encoded) * n
    fence_open = [p.count(FENCE) % 2 == 1 for p in prompts for _ in range(n)]
    generated: list[list[int]] = [[] for _ in range(rows)]
    running_text = [""] * rows
    active = list(range(rows))  # batch position -> row
    sampler = NucleusSampler(settings.temperature, settings.top_p, settings.top_k) if settings.temperature > 0 else None
    for step in range(settings.max_new_tokens):
        tokens = sampler(logits) if sampler is not None else logits.argmax(-1)
        keep = []
        for position, (row, token) in enumerate(zip(active, tokens.tolist())):
            generated[row].append(token)
            running_text[row] += token_text(token)
            finished = token == eos or stop_position(running_text[row], settings, fence_open[row]) is not None
            if not finished:
                keep.append(position)
        if not keep or step == settings.max_new_tokens - 1:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            tokens, attention_mask, next_position = tokens[index], attention_mask[index], next_position[index]
            active = [active[p] for p in keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
        output = model(
            input_ids=tokens[:, None],
            attention_mask=attention_mask,
            position_ids=next_position[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        logits = output.logits[:, -1]
        next_position = next_position + 1

    texts: list[list[str]] = []
    for p in range(len(encoded)):
        per_prompt = []
        for j in range(n):
            row = p * n + j
            text = tokenizer.decode(generated[row], skip_special_tokens=True)
            end = stop_position(text, settings, fence_open[row])
            per_prompt.append(text if end is None else text[:end])
        texts.append(per_prompt)
    return texts, sum(len(ids) for ids in generated)


class NucleusSampler:
    """Draws each row's next token with temperature, top-k and top-p (nucleus) sampling.

    Exact nucleus sampling, made cheap: the nucleus almost always lies within the few hundred most
    likely tokens, so only those are sorted; a row whose candidates hold less than top_p of the
    probability falls back to the full vocabulary. Sorting 49k logits per row per step otherwise
    costs as much as a sizeable part of the model's forward pass on CPU.
    """

    CANDIDATES = 512
    """Tokens considered before falling back to the full vocabulary (when top_k does not limit them)."""

    def __init__(self, temperature: float, top_p: float, top_k: int = 0) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k

    def __call__(self, scores):
        """Next token id of each row of `scores` ([rows, vocab] logits)."""
        logits = scores.float() / self.temperature
        vocab = logits.shape[-1]
        if self.top_k:
            return self._draw(logits, min(self.top_k, vocab), renormalise=True)
        return self._draw(logits, min(self.CANDIDATES, vocab), renormalise=False)

    def _draw(self, logits, k: int, renormalise: bool):
        import torch

        top_logits, top_ids = logits.topk(k, dim=-1)
        if renormalise:
            probs = torch.softmax(top_logits, dim=-1)
        else:
            probs = (top_logits - torch.logsumexp(logits, dim=-1, keepdim=True)).exp()
            short = probs.sum(-1) < self.top_p
            if short.any() and k < logits.shape[-1]:
                rows = short.nonzero().squeeze(1)
                chosen = self._draw_from(probs, top_ids)
                chosen[rows] = self._draw(logits[rows], logits.shape[-1], renormalise=False)
                return chosen
        return self._draw_from(probs, top_ids)

    def _draw_from(self, probs, ids):
        import torch

        # Keep a token while the tokens above it hold less than top_p: the smallest set reaching top_p.
        above = probs.cumsum(-1) - probs
        kept = torch.where(above < self.top_p, probs, torch.zeros_like(probs))
        index = torch.multinomial(kept, 1)
        return ids.gather(-1, index).squeeze(-1)


def _model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        import torch

        return torch.device("cpu")
