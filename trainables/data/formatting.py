"""Turning instruction/response pairs into prompt text and loss-masked token ids.

format_prompt is the one place a prompt is built, shared by training and generation, so the model
is evaluated on exactly the prompt format it was fine-tuned on.
"""
from __future__ import annotations

from typing import Any, Iterable

IGNORE_INDEX = -100
"""Label value the loss ignores (prompt and padding positions), the Hugging Face convention."""

PLAIN_TEMPLATE = "### Instruction:\n{instruction}\n### Response:\n"
"""Prompt used when the tokenizer has no chat template."""


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, instruction: str) -> str:
    """The prompt text for `instruction`: the chat template with the assistant turn opened, or PLAIN_TEMPLATE."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_TEMPLATE.format(instruction=instruction)


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt from format_prompt, the same way for training and generation.

    A chat template already writes its special tokens into the text, so none are added then; the
    plain template gets the tokenizer's usual ones (a BOS for most models).
    """
    return tokenizer(prompt, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


def tokenize_examples(
    examples: Iterable[dict[str, str]], tokenizer: Any, max_length: int, drop_overlong: bool = False
) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Features {"input_ids", "labels"} for each example, and counts {"kept", "truncated", "dropped"}.

    input_ids are prompt + response + EOS; labels are the same ids with -100 on the prompt (unshifted:
    the model shifts). An example longer than max_length loses the end of its response, or is dropped
    when drop_overlong; one whose prompt alone leaves no room for a response token is always dropped.
    "kept" counts truncated examples too.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos token: responses could never be taught to stop")
    features: list[dict[str, list[int]]] = []
    stats = {"kept": 0, "truncated": 0, "dropped": 0}
    for example in examples:
        prompt_ids = encode_prompt(tokenizer, format_prompt(tokenizer, example["instruction"]))
        # The prompt ends in a newline (chat template or plain), so tokenizing the response on its
        # own gives the same tokens as tokenizing the joined text, and the mask boundary is exact.
        response_ids = tokenizer(example["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(prompt_ids) >= max_length:
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
