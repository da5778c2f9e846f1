"""Training data: loading instruction/response examples, prompt formatting, loss masking, dynamic padding."""
from trainables.data.collate import PaddingCollator
from trainables.data.formatting import IGNORE_INDEX, encode_prompt, format_prompt, has_chat_template, tokenize_examples
from trainables.data.loaders import BUILTIN_SOURCES, PYTHON_TASK_FILES, load_examples, read_jsonl

__all__ = [
    "BUILTIN_SOURCES",
    "IGNORE_INDEX",
    "PYTHON_TASK_FILES",
    "PaddingCollator",
    "encode_prompt",
    "format_prompt",
    "has_chat_template",
    "load_examples",
    "read_jsonl",
    "tokenize_examples",
]
