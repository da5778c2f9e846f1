"""`ibft eval` end to end: files written, summary shape, adapters, and one-line errors."""
from __future__ import annotations

import json

import pytest
import torch

from search.cli import main


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_eval(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["eval", "--no-progress", *args])
    captured = capsys.readouterr()
    summary = json.loads(captured.out) if code == 0 else None
    return code, summary, captured.err


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_tiny_model_writes_samples_results_and_summary(tmp_path, capsys):
    out = tmp_path / "eval"
    code, summary, _ = run_eval(
        capsys, "--model", "tiny-random-llama", "--benchmark", "python-functions", "--limit", "2", "--n", "2",
        "--k", "1,2", "--m", "2", "--max-new-tokens", "8", "--workers", "2", "--out", str(out),
    )
    assert code == 0
    samples = read_jsonl(out / "samples.jsonl")
    results = read_jsonl(out / "samples.jsonl_results.jsonl")
    assert len(samples) == len(results) == 4
    assert {s["task_id"] for s in samples} == {"PyFn/val/0", "PyFn/val/1"}
    assert all({"completion", "answer", "passed", "result", "outcome"} <= r.keys() for r in results)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert {"pass@1", "pass@2", "pass@2(2)"} <= summary.keys()
    assert sum(summary["outcomes"].values()) == 4
    assert 0 < summary["tokens_generated"] <= 4 * 8


def test_adapter_checkpoint_with_ib_head_loads(tmp_path, capsys):
    from trainables.ib import IBConfig, IBModel
    from trainables.models import apply_lora, tiny_random_llama
    from trainables.train.config import LoraSettings

    final = tmp_path / "run" / "final"
    peft_model = apply_lora(tiny_random_llama(), LoraSettings(r=4), seed=0)
    torch.nn.init.normal_(next(p for n, p in peft_model.named_parameters() if "lora_B" in n))  # a non-trivial adapter
    peft_model.save_pretrained(str(final / "adapter"))
    IBModel(peft_model, IBConfig(alpha=0.1, bottleneck_dim=8, tap_layer=1)).save_ib(str(final))
    code, summary, err = run_eval(
        capsys, "--model", "tiny-random-llama", "--adapter", str(final), "--limit", "1", "--n", "1", "--k", "1",
        "--m", "1", "--max-new-tokens", "4", "--out", str(tmp_path / "eval"),
    )
    assert code == 0, err
    assert summary["adapter"] == str(final) and summary["n_samples"] == 1


@pytest.mark.parametrize(
    "recorded, flag, expected",
    [({"prompt_format": "official"}, [], "official"), ({}, [], "auto"), ({"prompt_format": "official"}, ["--prompt-format", "plain"], "plain")],
    ids=["checkpoint-format", "saved-before-the-option", "flag-overrides"],
)
def test_checkpoint_is_evaluated_with_the_prompt_format_it_trained_on(tmp_path, capsys, monkeypatch, recorded, flag, expected):
    import trainables.data.formatting as formatting
    from trainables.models import apply_lora, tiny_random_llama
    from trainables.train.config import LoraSettings

    final = tmp_path / "run" / "final"
    apply_lora(tiny_random_llama(), LoraSettings(r=4), seed=0).save_pretrained(str(final / "adapter"))
    # A train_config.json as a run writes it; without prompt_format it is one written before the option existed.
    saved = {"model": {"name_or_path": "tiny-random-llama"}, "data": {"source": "builtin:python-functions", **recorded}}
    (final / "train_config.json").write_text(json.dumps(saved))
    used: list[str] = []
    original = formatting.encode_prompt
    monkeypatch.setattr(
        formatting, "encode_prompt", lambda tok, prompt, prompt_format="auto": used.append(prompt_format) or original(tok, prompt, prompt_format)
    )
    code, summary, err = run_eval(
        capsys, "--adapter", str(final), "--limit", "1", "--n", "1", "--k", "1", "--m", "1", "--max-new-tokens", "2",
        "--workers", "1", "--out", str(tmp_path / "eval"), *flag,
    )
    assert code == 0, err
    assert summary["prompt_format"] == expected and summary["model"] == "tiny-random-llama"
    assert used == [expected]  # generation encoded the prompt in that format


@pytest.mark.parametrize(
    "args, message",
    [
        (["--benchmark", "nope"], "--benchmark"),
        (["--adapter", "/no/such/dir"], "--adapter"),
        (["--k", "0"], "--k"),
        (["--temperature", "-1"], "temperature"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    code, _, err = run_eval(capsys, "--model", "tiny-random-llama", "--out", str(tmp_path), *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_smollm2_on_python_functions_offline(tmp_path, capsys):
    out = tmp_path / "eval"
    code, summary, err = run_eval(
        capsys, "--model", "smollm2-135m-instruct", "--benchmark", "python-functions", "--limit", "2", "--n", "2",
        "--k", "1", "--m", "1", "--max-new-tokens", "128", "--workers", "2", "--out", str(out),
    )
    assert code == 0, err
    assert 0.0 <= summary["pass@1"] <= 1.0
    assert summary["n_tasks"] == 2 and summary["n_samples"] == 4
    for name in ("samples.jsonl", "samples.jsonl_results.jsonl", "summary.json"):
        assert (out / name).is_file()
    # Each answer that closed a code block stops right there: nothing after the closing fence.
    for sample in read_jsonl(out / "samples.jsonl"):
        if sample["answer"].count("```") >= 2:
            assert sample["answer"].endswith("```")
