"""Turning instruction/response pairs into prompt text and loss-masked token ids.

format_prompt is the one place a prompt is built and encode_prompt the one place it is encoded, shared
by training (tokenize_examples), generation at validation and test (trainables.evaluation), `ibft eval`
and the memorization analysis, so a model is always evaluated on exactly the prompt format it was
fine-tuned on. Which format is data.prompt_format (trainables.train.config.PROMPT_FORMATS):

- auto: the tokenizer's chat template with the assistant turn opened, else PLAIN_TEMPLATE (the default,
  and what every run written before the option existed used);
- chat: the chat template, an error when the tokenizer has none;
- plain: PLAIN_TEMPLATE, the tokenizer's usual special tokens (a BOS for most models) on the prompt;
- official: the official IB-FT script's format (OPTML-Group/MemorizationBarrier, train_ib.py),
  instruction + "\n" then the response, no chat template and no special tokens added to either.

EOS (data.append_eos): the official script appends none, so its model is never taught to stop. We append
EOS by default in every format, `official` included: a model that cannot stop generates until
max_new_tokens at every validation (1024 new tokens per sample in the paper spaces, most of a rung's
generation time) and the extracted code then carries trailing junk. append_eos=False reproduces the
official script token for token.
"""
from __future__ import annotations

from typing import Any, Iterable

from trainables.errors import ConfigError
from trainables.train.config import PROMPT_FORMATS

IGNORE_INDEX = -100
"""Label value the loss ignores (prompt and padding positions), the Hugging Face convention."""

PLAIN_TEMPLATE = "### Instruction:\n{instruction}\n### Response:\n"
"""Prompt of the `plain` format (and of `auto` when the tokenizer has no chat template)."""

OFFICIAL_TEMPLATE = "{instruction}\n"
"""Prompt of the `official` format: the official IB-FT script's `example["Instruction"] + "\\n"`."""


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_prompt_format(tokenizer: Any, prompt_format: str = "auto") -> str:
    """The concrete format ("chat", "plain" or "official") that `prompt_format` means for this tokenizer."""
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(f"data.prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    if prompt_format == "auto":
        return "chat" if has_chat_template(tokenizer) else "plain"
    if prompt_format == "chat" and not has_chat_template(tokenizer):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"data.prompt_format 'chat': the tokenizer ({name}) has no chat template; "
            "use prompt_format auto, plain or official"
        )
    return prompt_format


def format_prompt(tokenizer: Any, instruction: str, prompt_format: str = "auto") -> str:
    """The prompt text for `instruction` in `prompt_format` (see the module docstring)."""
    kind = resolve_prompt_format(tokenizer, prompt_format)
    if kind == "chat":
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
        )
    if kind == "official":
        return OFFICIAL_TEMPLATE.format(instruction=instruction)
    return PLAIN_TEMPLATE.format(instruction=instruction)


def encode_prompt(tokenizer: Any, prompt: str, prompt_format: str = "auto") -> list[int]:
    """Token ids of a prompt from format_prompt (same `prompt_format`), the same way for training and generation.

    A chat template already writes its special tokens into the text and the official format adds none,
    so no special tokens are added then; the plain template gets the tokenizer's usual ones (a BOS for
    most models).
    """
    kind = resolve_prompt_format(tokenizer, prompt_format)
    return tokenizer(prompt, add_special_tokens=kind == "plain")["input_ids"]


def tokenize_examples(
    examples: Iterable[dict[str, str]],
    tokenizer: Any,
    max_length: int,
    drop_overlong: bool = False,
    *,
    prompt_format: str = "auto",
    append_eos: bool = True,
) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Features {"input_ids", "labels"} for each example, and counts {"kept", "truncated", "dropped"}.

    input_ids are prompt (format_prompt + encode_prompt in `prompt_format`) + response (+ EOS when
    append_eos, see the module docstring); the response is tokenized on its own with no special tokens,
    so its labels are exactly its ids; labels are the same ids with -100 on the prompt (unshifted:
    the model shifts). An example longer than max_length loses the end of its response, or is dropped
    when drop_overlong; one whose prompt alone leaves no room for a response token, or that has no
    response token at all (an empty response without EOS), is always dropped.
    "kept" counts truncated examples too.
    """
    if append_eos and tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos token: responses could never be taught to stop (data.append_eos)")
    resolve_prompt_format(tokenizer, prompt_format)  # a bad or impossible format fails before any work
    eos = [tokenizer.eos_token_id] if append_eos else []
    features: list[dict[str, list[int]]] = []
    stats = {"kept": 0, "truncated": 0, "dropped": 0}
    for example in examples:
        prompt_ids = encode_prompt(tokenizer, format_prompt(tokenizer, example["instruction"], prompt_format), prompt_format)
        # The response is tokenized on its own, so its labels are exactly its ids (the mask boundary is
        # exact); every format's prompt ends in a newline, so this is also how the joined text tokenizes.
        response_ids = tokenizer(example["response"], add_special_tokens=False)["input_ids"] + eos
        if len(prompt_ids) >= max_length or not response_ids:
            stats["dropped"] += 1
            continue
        if len(prompt_ids) + len(response_ids) > max_length:
            if drop_overlong:
                stats["dropped"] += 1
                continue
            response_ids = response_ids[: max_length - len(prompt_ids)]
            stats["truncated"] += 1
        features.append(
            {"input_ids": prompt_ids + response_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids}
        )
        stats["kept"] += 1
    return features, stats
