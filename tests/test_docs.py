"""The docs stay true: every `ibft …` command in README.md, docs/*.md and the comments of cluster.yaml,
spaces/*.yaml and configs/*.yaml parses with the real CLI parser (the verb exists, each --flag belongs to that
verb), every repository path they name exists, and every `make` target they name is in the Makefile.

Parse-only: build_parser() imports the verb modules, which import neither torch nor ray at module level.
Also: the `cluster` extra (boto3) is installed, so `ray up cluster.yaml` can load Ray's AWS node provider.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from search.cli import VERBS, build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# YAML files whose comments quote commands and paths (checked as prose: their `inline code`).
COMMENTED = [ROOT / "cluster.yaml", *sorted((ROOT / "spaces").glob("*.yaml")), *sorted((ROOT / "configs").glob("*.yaml"))]
# Top-level folders of the repository whose paths the docs name; anything else (runs/, /tmp, RUN_DIR,
# /shared/…, report/configs/…) is not a repository path.
REPO_DIRS = ("spaces", "configs", "bench", "docs", "tests", "trainables", "search", "scripts")

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")  # one inline span, possibly wrapped onto a second line
_IBFT = re.compile(r"(?:^|[\s\"'(])(?:\S*/)?ibft(?![\w.-])((?:\s+[^\s|;&#\"')]+)*)")
_PATH = re.compile(r"(?<![\w./~{-])((?:%s)/[\w./-]*)" % "|".join(REPO_DIRS))


def _read(doc: Path) -> str:
    text = doc.read_text(encoding="utf-8")
    if doc.suffix == ".yaml":  # only the comments, with their "#" taken off, so wrapped `code` joins up
        text = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    return text


def _commands(text: str) -> list[str]:
    """Each `ibft …` command line: from fenced code blocks (with `\\` continuations joined) and inline code."""
    found: list[str] = []
    for block in _FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            found += [m.group(1) for m in _IBFT.finditer(line)]
    prose = _FENCE.sub("", text)
    for span in _INLINE.findall(prose):
        found += [m.group(1) for m in _IBFT.finditer(" ".join(span.split()))]
    return [" ".join(c.split()) for c in found]


def _doc_commands() -> list[tuple[str, str]]:
    return [(doc.name, cmd) for doc in [*DOCS, *COMMENTED] for cmd in _commands(_read(doc)) if cmd]  # not a bare `ibft` name


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("ibft has no subcommands")


def test_docs_name_commands():
    """The extraction itself works: the README's quick start and the cluster guide are found."""
    cmds = [c for _, c in _doc_commands()]
    assert any(c.startswith("tune ") and "--storage-path" in c for c in cmds), cmds
    assert any(c.startswith("train ") and "--config" in c for c in cmds), cmds
    assert {c.split()[0] for c in cmds if c} >= {"train", "tune", "eval", "check", "memorization", "report"}


def test_every_documented_ibft_command_parses():
    parser = build_parser()
    verbs = _subparsers(parser)
    top_flags = set(parser._option_string_actions)
    problems = []
    for doc, cmd in _doc_commands():
        words = cmd.split()
        if not words or words[0].startswith("-"):  # `ibft --help`
            problems += [f"{doc}: `ibft {cmd}`: {w} is not an ibft option" for w in words
                         if w.startswith("--") and w.split("=")[0] not in top_flags]
            continue
        verb = words[0]
        if verb not in VERBS:
            problems.append(f"{doc}: `ibft {cmd}`: no such command {verb!r}")
            continue
        known = set(verbs[verb]._option_string_actions)
        for w in words[1:]:
            if w == "--":
                break
            if w.startswith("--") and w.split("=")[0] not in known:
                problems.append(f"{doc}: `ibft {cmd}`: ibft {verb} has no option {w.split('=')[0]}")
    assert not problems, "\n".join(problems)


def _doc_paths() -> list[tuple[str, str]]:
    out = []
    for doc in [*DOCS, *COMMENTED]:
        for m in _PATH.finditer(_read(doc)):
            path = m.group(1).rstrip(".")
            if path.rstrip("/") not in REPO_DIRS:
                out.append((doc.name, path))
    return out


def test_every_documented_repository_path_exists():
    paths = _doc_paths()
    assert any(p == "spaces/origen.yaml" for _, p in paths)
    missing = sorted({f"{doc}: {p}" for doc, p in paths if not (ROOT / p).exists()})
    assert not missing, "paths named in the docs that are not in the repository:\n" + "\n".join(missing)


def test_cluster_extra_lets_ray_load_the_aws_node_provider():
    """`ray up cluster.yaml` needs boto3 (the `cluster` extra, which `make venv` installs)."""
    import boto3  # install it with: .venv/bin/pip install -c constraints.txt -e '.[cluster]'
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    assert boto3.__version__
    assert AWSNodeProvider.__name__ == "AWSNodeProvider"


def test_every_documented_make_target_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    named = {(doc.name, t) for doc in [*DOCS, *COMMENTED] for t in re.findall(r"`make ([\w-]+)", _read(doc))}
    assert named, "no `make …` found in the docs"
    missing = sorted(f"{doc}: make {t}" for doc, t in named if t not in targets)
    assert not missing, "\n".join(missing)
