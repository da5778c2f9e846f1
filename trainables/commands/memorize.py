"""`ibft memorize`: build (or find cached) a base model that has memorized a data set.

The memorization-barrier testbed's first step (trainables.memorization.memorize). Given a space file, it
builds the base its model.memorized recipe names, exactly as `ibft tune` would before the first trial;
flags override the recipe's fields (or give one without a space). Prints the memorized base's record as
JSON on stdout, with its folder under "path": Min-K% Prob of the examples under the fresh base and under the
memorized one. torch is imported only inside run().
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys

from trainables.cli_output import emit_result
from trainables.errors import ConfigError

RECIPE_FLAGS = ("data", "max_examples", "epochs", "lr", "lora_r", "batch_size", "max_length", "prompt_format", "seed")
"""Flags that override the fields of the same name of the recipe (trainables.train.config.MemorizedBase)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `ibft memorize`."""
    parser.add_argument(
        "space", nargs="?", metavar="SPACE.yaml",
        help="a space file whose model.memorized names the recipe (spaces/smollm2-barrier.yaml); optional with --model",
    )
    parser.add_argument("--model", metavar="NAME_OR_PATH", help="base model (default: the space's model.name_or_path)")
    parser.add_argument("--data", metavar="SOURCE", help="examples to memorize (default builtin:python-functions)")
    parser.add_argument("--max-examples", type=int, metavar="N", help="memorize only the first N (after the seeded shuffle)")
    parser.add_argument("--epochs", type=float, help="passes over the examples (default 6)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    parser.add_argument("--lora-r", type=int, help="rank of the merged LoRA adapter (default 64)")
    parser.add_argument("--batch-size", type=int, help="examples per step (default 8)")
    parser.add_argument("--max-length", type=int, help="tokens per example (default 256)")
    parser.add_argument("--prompt-format", choices=("auto", "chat", "plain", "official"), help="format (default auto)")
    parser.add_argument("--seed", type=int, help="seed of the order and the adapter (default 0)")
    parser.add_argument("--rebuild", action="store_true", help="build it again even when it is cached")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    """Build or find the memorized base, print its record; 0 on success."""
    from trainables.memorization.memorize import ensure_memorized_base, memorized_base_dir, read_recipe

    base, recipe = resolve(args)
    target = memorized_base_dir(base, recipe)
    if args.rebuild and target.exists():
        shutil.rmtree(target)
    cached = target.exists()
    folder = ensure_memorized_base(base, recipe, progress=not args.quiet)
    if cached and not args.quiet:
        print(f"ibft memorize: cached at {folder} (--rebuild to build it again)", file=sys.stderr)
    emit_result({**read_recipe(folder), "path": str(folder)}, indent=2)
    return 0


def resolve(args: argparse.Namespace):
    """(base ModelConfig, MemorizedBase recipe) from the space file and the flags."""
    from trainables.train.config import MemorizedBase, ModelConfig

    recipe_fields: dict = {}
    base = None
    if args.space:
        from search.space import load_space

        space = load_space(args.space)
        base = space.model.base_config()
        if space.model.memorized is not None:
            recipe_fields = dict(space.model.memorized)
        elif not any(getattr(args, name) is not None for name in RECIPE_FLAGS):
            raise ConfigError(f"{args.space}: has no model.memorized recipe (add one, or give the recipe as flags)")
    if args.model:
        base = ModelConfig(name_or_path=args.model) if base is None else dataclasses.replace(base, name_or_path=args.model)
    if base is None:
        raise ConfigError("give a SPACE.yaml with a model.memorized recipe, or --model")
    for name in RECIPE_FLAGS:
        value = getattr(args, name)
        if value is not None:
            recipe_fields[name] = value
    return base, MemorizedBase(**recipe_fields)
