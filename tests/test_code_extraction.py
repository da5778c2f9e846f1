"""Code extraction: every answer shape a model produces must turn into prompt + completion that runs."""
from __future__ import annotations

import pytest

from trainables.code_extraction import (
    definitions_only,
    extract_code,
    fenced_blocks,
    humaneval_completion,
    make_completion,
    verilog_completion,
)

PROMPT = 'def add(a, b):\n    """Return the sum of a and b.\n    >>> add(1, 2)\n    3\n    """\n'


def run_completion(prompt: str, answer: str, entry_point: str = "add", fence_open: bool = False):
    """Execute prompt + completion like a checker does and return the entry point."""
    namespace: dict = {"__name__": "__main__"}  # the harshest case: demo code guarded by __main__ would run
    exec(prompt + humaneval_completion(prompt, answer, entry_point, fence_open), namespace)
    return namespace[entry_point]


def test_fenced_restated_function_with_chatter_around_it():
    answer = (
        "Sure! Here is the function you asked for:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
        "This works because `+` adds numbers. Let me know if you need anything else."
    )
    assert run_completion(PROMPT, answer)(2, 3) == 5


def test_multiple_fences_pick_the_block_that_defines_the_entry_point():
    answer = (
        "Usage first:\n```python\nprint(add(1, 2))\n```\nThe implementation:\n"
        "```python\ndef add(a, b):\n    return a + b\n```\nAnd a test:\n```python\nassert add(1, 1) == 3\n```\n"
    )
    assert run_completion(PROMPT, answer)(4, 5) == 9


def test_blocks_in_another_language_are_ignored():
    answer = "```bash\npython add.py\n```\n```python\ndef add(a, b):\n    return a + b\n```"
    assert extract_code(answer, "python") == "def add(a, b):\n    return a + b\n"


def test_no_fence_bare_code():
    assert run_completion(PROMPT, "def add(a, b):\n    return a + b\n")(1, 1) == 2


def test_restated_function_keeps_imports_and_helpers_and_drops_demo_code():
    answer = (
        "```python\nimport math\n\ndef _half(x):\n    return x / 2\n\ndef add(a, b):\n"
        "    return int(math.floor(_half(2 * (a + b))))\n\nprint(add(1, 2))\nassert add(1, 1) == 3\n"
        'if __name__ == "__main__":\n    raise SystemExit(1)\n```'
    )
    # The assert and the __main__ block would fail the run if they were kept.
    assert run_completion(PROMPT, answer)(2, 2) == 4


def test_body_only_continuation_of_the_prompt():
    answer = "    total = a + b\n    return total\n\n\ndef unrelated():\n    return 0\n\n\nprint(add(1, 2))\nraise SystemExit(1)\n"
    assert run_completion(PROMPT, answer)(3, 4) == 7


def test_body_written_at_column_zero_is_indented():
    answer = "```python\ntotal = a + b\nreturn total\n```"
    assert run_completion(PROMPT, answer)(3, 4) == 7


def test_body_only_with_helper_defined_after_it():
    answer = "    return _plus(a, b)\n\ndef _plus(x, y):\n    return x + y\n"
    assert run_completion(PROMPT, answer)(5, 6) == 11


def test_answer_cut_off_inside_an_open_fence_keeps_what_was_written():
    answer = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n"
    assert run_completion(PROMPT, answer)(1, 2) == 3


def test_prompt_that_opened_the_fence_answer_closes_it():
    answer = "def add(a, b):\n    return a + b\n```\nThat is the whole function.\n```python\nprint(add(1, 2))\n```"
    assert run_completion(PROMPT, answer, fence_open=True)(1, 2) == 3
    # Without being told, the code before the first fence still wins when it defines the entry point.
    assert run_completion(PROMPT, answer)(1, 2) == 3
    body = "    return a + b\n```\nDone, this is a long explanation of what the body does and why."
    assert run_completion(PROMPT, body, fence_open=True)(2, 2) == 4


def test_prompt_helper_functions_survive_a_restated_entry_point():
    prompt = (
        "def is_palindrome(s):\n    return s == s[::-1]\n\n\n"
        'def longest_palindrome_prefix(s):\n    """Longest prefix of s that is a palindrome."""\n'
    )
    answer = (
        "```python\ndef longest_palindrome_prefix(s):\n    for end in range(len(s), 0, -1):\n"
        "        if is_palindrome(s[:end]):\n            return s[:end]\n    return ''\n```"
    )
    assert run_completion(prompt, answer, "longest_palindrome_prefix")("abacus") == "aba"


def test_syntax_error_is_kept_for_the_checker_to_report():
    answer = "```python\ndef add(a, b):\n    return a +\n```"
    with pytest.raises(SyntaxError):
        run_completion(PROMPT, answer)


def test_empty_answer_gives_an_empty_completion_that_fails_the_tests():
    assert humaneval_completion(PROMPT, "I cannot help with that.", "add") != ""  # prose is kept, fails later
    assert humaneval_completion(PROMPT, "", "add") == ""
    assert run_completion(PROMPT, "")(1, 2) is None


def test_fenced_blocks_reports_tags_and_unclosed_block():
    text = "a\n```Python\nx = 1\n```\nb\n```\ny = 2\n```\n```verilog\nmodule m;"
    assert fenced_blocks(text) == [("python", "x = 1\n"), ("", "y = 2\n"), ("verilog", "module m;")]


def test_definitions_only_leaves_unparsable_code_alone():
    assert definitions_only("def f(:\n  pass") == "def f(:\n  pass"
    assert definitions_only("import os\nprint(1)\nX = 2\n") == "import os\n\nX = 2"


VERILOG_PROMPT = "Implement an AND gate.\n\nmodule TopModule (\n  input a,\n  input b,\n  output out\n);\n"


def test_verilog_module_in_a_fence_is_the_whole_design():
    answer = (
        "Here is the module:\n```verilog\nmodule TopModule (\n  input a,\n  input b,\n  output out\n);\n"
        "  assign out = a & b;\nendmodule\n```\nIt uses a continuous assignment."
    )
    completion = verilog_completion(VERILOG_PROMPT, answer)
    assert completion.startswith("module TopModule (")
    assert completion.rstrip().endswith("endmodule")
    assert "continuous" not in completion


def test_verilog_body_only_gets_endmodule():
    completion = make_completion(
        {"prompt": VERILOG_PROMPT, "language": "verilog", "entry_point": "TopModule"}, "  assign out = a & b;\n"
    )
    assert completion == "  assign out = a & b;\nendmodule\n"
    assert verilog_completion(VERILOG_PROMPT, "  assign out = a & b;\nendmodule\n").count("endmodule") == 1


def test_invalid_escapes_in_model_code_raise_no_warning():
    """Python 3.12+ prints a SyntaxWarning (3.11: DeprecationWarning) per invalid escape when parsing; model
    code has many, and they flooded trial logs on the GPU machine."""
    import warnings

    code = 'import re\ndef f(s):\n    return re.findall("\\d+", s)\nprint(f("a1"))\n'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = definitions_only(code)
    assert not caught, [str(w.message) for w in caught]
    assert "def f" in kept and "print(" not in kept
