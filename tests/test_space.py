"""Space files: every shipped one validates; broken ones give one-line errors naming file, field and what is allowed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.space import Domain, load_space
from trainables.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "spaces").glob("*.yaml"))


def test_the_shipped_spaces_are_there():
    names = {p.name for p in SPACES}
    assert {"smoke.yaml", "smollm2-python.yaml", "origen.yaml", "evol-codealpaca.yaml"} <= names


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_shipped_space_validates(path):
    space = load_space(path)
    assert space.name == path.stem
    assert space.num_rungs * space.training.rung_steps == space.training.max_steps
    # The space's sections must build a real TrainConfig for a trial (the trainable's conversion).
    from trainables.train.config import TrainConfig
    from trainables.tune_trainable import train_config_dict
    from search.tuner import trial_setup

    setup = trial_setup(space, Path("/tmp/run"))
    params = {**space.paper_params()}
    cfg = TrainConfig.from_dict(train_config_dict(setup, params, output_dir="/tmp/x", optuna_trial=1))
    assert cfg.optim.max_steps == space.training.max_steps
    assert cfg.ib.alpha == 0.1


def test_paper_spaces_use_the_paper_grids_and_zero2_on_gpus():
    for name, beta in (("origen", 0.02), ("evol-codealpaca", 0.01)):
        space = load_space(ROOT / "spaces" / f"{name}.yaml")
        assert space.params.alpha == Domain(choices=[0.01, 0.05, 0.1, 0.5, 1.0])
        assert space.params.beta == Domain(choices=[0.001, 0.01, 0.05, 0.1])
        assert space.params.tap_layer == Domain(choices=[10, 15, 20, 25])
        assert space.deepspeed.enabled and space.deepspeed.zero_stage == 2
        assert space.resources.gpus_per_worker >= 1
        assert space.paper_params()["beta"] == beta and space.paper_params()["tap_layer"] == 20


def test_paper_tap_layer_falls_back_to_a_fraction_on_shallow_models():
    space = load_space(ROOT / "spaces" / "smoke.yaml")
    assert space.model.depth() == 4
    assert space.paper_params()["tap_layer"] == pytest.approx(2 / 3)


def _base() -> dict:
    return yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())


def _set(data: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


_DELETE = object()

BROKEN = [
    # (dotted field, bad value, fragments the one-line error must contain)
    ("sampler", "cmaes", ["sampler", "tpe", "nsga2", "random", "grid"]),
    ("params.alpha", {"log_uniform": [0, 1]}, ["params.alpha", "0 < low < high"]),
    ("params.alpha", {"int_range": [1, 3]}, ["params.alpha", "log_uniform, uniform or choices"]),
    ("params.beta", -0.5, ["params.beta", ">= 0"]),
    ("params.tap_layer", {"choices": [2, 1.5]}, ["params.tap_layer", "fractions in (0, 1)"]),
    ("params.tap_layer", {"choices": [12]}, ["params.tap_layer 12", "4-layer model", "0..4"]),
    ("params.prior", {"choices": ["standard_normal", "laplace"]}, ["params.prior", "laplace", "mog"]),
    ("params.prior_options", {"vamp": {"pseudo_inputs": 4}}, ["prior_options.vamp", "not among the priors"]),
    ("params.alpha", {"log_uniform": [0.01, 1], "choices": [0.1]}, ["params.alpha", "exactly one"]),
    ("training.rung_steps", 3, ["training", "multiple of rung_steps 3"]),
    ("training.max_steps", _DELETE, ["training.max_steps", "required field is missing"]),
    ("asha.max_rungs", 5, ["asha.max_rungs 5", "max_steps / rung_steps = 2"]),
    ("asha.metric", "val/pass@10(10)", ["asha.metric", "val/pass@2(2)"]),
    ("validation.k", [1, 5], ["validation", "k 5 exceeds n 2"]),
    ("deepspeed.zero_stage", 1, ["deepspeed.zero_stage", "2", "3"]),
    ("wandb.mode", "cloud", ["wandb.mode", "offline", "online", "disabled"]),
    ("lora.rank", 8, ["lora", "unknown field 'rank'", "allowed: r, alpha"]),
    ("ib.alpha", 0.1, ["ib", "belongs under params"]),
    ("ib.ce_kernel", "triton", ["ib", "ce_kernel must be one of", "fused_compiled", "'triton'"]),
    ("num_samples", 0, ["num_samples", "greater than or equal to 1"]),
    ("startup_trials", 0, ["startup_trials", "greater than or equal to 1", "got 0"]),
    ("deepspeed.offload_params", True, ["deepspeed", "offload_params needs zero_stage 3"]),
]


@pytest.mark.parametrize("field,value,fragments", BROKEN, ids=[f"{b[0]}={b[1]!r}"[:50] for b in BROKEN])
def test_broken_space_gives_one_line_error(tmp_path, field, value, fragments):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(_set(_base(), field, value)))
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message, message


def test_grid_sampler_needs_choices(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_set(_base(), "sampler", "grid")))
    with pytest.raises(ConfigError, match=r"sampler grid needs choices .* params.alpha is log_uniform"):
        load_space(path)


def test_startup_trials_reach_tpe_and_only_tpe(tmp_path):
    from search.tuner import _sampler

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_set(_base(), "startup_trials", 4)))
    assert _sampler(load_space(path))._n_startup_trials == 4
    path.write_text(yaml.safe_dump(_base()))
    assert _sampler(load_space(path))._n_startup_trials == 10  # Optuna's default
    path.write_text(yaml.safe_dump(_set(_set(_base(), "startup_trials", 4), "sampler", "random")))
    with pytest.raises(ConfigError, match="startup_trials applies to sampler tpe only, got sampler 'random'"):
        load_space(path)


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line"):
        load_space(bad)
    with pytest.raises(ConfigError, match=r"space file not found"):
        load_space(tmp_path / "absent.yaml")


def test_exponent_floats_are_numbers(tmp_path):
    path = tmp_path / "exp.yaml"
    text = (ROOT / "spaces" / "smoke.yaml").read_text().replace("{choices: [0.01, 0.1]}", "{choices: [1e-3, 1e-2]}")
    path.write_text(text)
    assert load_space(path).params.beta == Domain(choices=[0.001, 0.01])


def test_cli_exits_2_with_one_line_and_without_starting_ray(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(_set(_base(), "sampler", "cmaes")))
    proc = subprocess.run(
        [sys.executable, "-m", "search", "tune", str(path), "--storage-path", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sampler" in lines[0] and "broken.yaml" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_space_validation_imports_neither_torch_nor_ray():
    code = (
        "import sys; from search.space import load_space; load_space(sys.argv[1]); "
        "bad = [m for m in ('torch', 'ray') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "spaces" / "smoke.yaml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_decode_batch_size_reaches_the_trials_generation(monkeypatch):
    """validation/test batch_size (default 40, the CPU value) is what a trial's evaluation decodes at once."""
    import trainables.evaluation as evaluation
    import trainables.tune_trainable as tt

    space = load_space(ROOT / "spaces" / "smollm2-gpu.yaml")
    assert (space.validation.batch_size, space.test.batch_size) == (220, 400)
    assert load_space(ROOT / "spaces" / "smoke.yaml").validation.batch_size == 40
    bench = space.model_dump(mode="json")["validation"]

    seen = []
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, generation, **kw: seen.append(generation.batch_size) or {})
    reporter = object.__new__(tt._RungReporter)
    reporter.setup, reporter.rank = {"resources": {"cpus_per_worker": 1}, "seed": 0}, 0
    reporter._evaluate("val", bench, [], None, None)
    reporter._evaluate("val", {k: v for k, v in bench.items() if k != "batch_size"}, [], None, None)
    assert seen == [220, 40]  # a setup saved before the field existed decodes 40 at a time, as it did
