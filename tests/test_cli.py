"""The `ibft` entry point: six verbs, fast --help without torch/ray, one-line errors with exit code 2."""
import subprocess
import sys

import pytest

from search.cli import VERBS, main

VERB_NAMES = ["train", "tune", "eval", "check", "memorization", "memorize", "report"]


def test_help_lists_the_seven_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in VERB_NAMES:
        assert verb in out
    assert list(VERBS) == VERB_NAMES


@pytest.mark.parametrize("verb", VERB_NAMES)
def test_each_subcommand_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert "usage: ibft " + verb in capsys.readouterr().out


def test_help_imports_neither_torch_nor_ray():
    code = (
        "import sys\n"
        "from search.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'transformers', 'deepspeed') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_subcommand_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "search", "nosuchverb"], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "invalid choice" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_library_prints_during_a_verb_go_to_stderr_and_only_the_result_to_stdout(capsys):
    # DeepSpeed logs "Setting accelerator to CPU" with print-like handlers on stdout while it is imported.
    import json

    from trainables.cli_output import emit_result, results_only_on_stdout

    with results_only_on_stdout():
        print("[WARNING] [real_accelerator.py] Setting accelerator to CPU")
        emit_result({"pass@1": 0.5}, indent=2)
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"pass@1": 0.5}
    assert "Setting accelerator" in captured.err
