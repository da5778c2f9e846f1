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
        # The paper's beta grid, plus the space's paper beta where the grid lacks it (origen's 0.02): the paper
        # trial's beta is then an Optuna parameter like every other trial's, keeping TPE's parameter groups whole.
        assert space.params.beta == Domain(choices=sorted({0.001, 0.01, 0.05, 0.1, beta}))
        assert beta in space.params.beta.choices
        assert space.params.tap_layer == Domain(choices=[10, 15, 20, 25])
        assert space.deepspeed.enabled and space.deepspeed.zero_stage == 2
        assert space.resources.gpus_per_worker >= 1
        assert space.paper_params()["beta"] == beta and space.paper_params()["tap_layer"] == 20
        assert space.paper_params()["alpha"] == 0.1  # the paper text's setting stays the built-in paper trial
        # The official script's effective setting (ModelWithIB's defaults) runs third, as preset "official".
        # It takes the space's (default, the official code's) KL mean and raw encoder input.
        assert space.named_presets() == [
            ("official", {"alpha": 0.2, "beta": 0.01, "tap_layer": 20, "prior": "standard_normal", "prior_options": {},
                          "kl_reduction": "mean", "encoder_input": "raw"})
        ]


def test_paper_spaces_train_as_the_official_config_where_a_space_can_say_it():
    for name in ("origen", "evol-codealpaca"):
        space = load_space(ROOT / "spaces" / f"{name}.yaml")
        t = space.training
        assert (t.lr, t.batch_size, t.grad_accum, t.weight_decay, t.max_grad_norm) == (1e-4, 2, 1, 0.0, 1.0)
        assert t.warmup_steps == t.max_steps // 10 and t.min_lr_ratio == 0.0  # cosine, 10% warm-up, to 0
        assert space.seed == 42
        assert (space.lora.r, space.lora.alpha, space.lora.dropout) == (32, 32, 0.05)
        assert sorted(space.lora.target_modules) == sorted(
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        )


def test_presets_parse_in_file_order_and_paper_may_be_replaced(tmp_path):
    from search.optuna_bridge import preset_trials

    presets = {"zeta": {"alpha": 0.5, "beta": 0, "tap_layer": 0.25}, "a-1": {"alpha": 1, "beta": 0.1, "tap_layer": -2,
               "prior": "mog", "prior_options": {"components": 4}}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(_set(_base(), "presets", presets), sort_keys=False))
    space = load_space(path)
    assert [role for role, _ in preset_trials(space)] == ["baseline", "paper", "zeta", "a-1"]
    assert dict(space.named_presets())["a-1"] == {
        "alpha": 1.0, "beta": 0.1, "tap_layer": -2, "prior": "mog", "prior_options": {"components": 4},
        "kl_reduction": "mean", "encoder_input": "raw",
    }
    assert space.paper_params()["alpha"] == 0.1  # no presets.paper: the built-in paper setting
    paper = {"alpha": 0.2, "beta": 0.01, "tap_layer": 3}
    path.write_text(yaml.safe_dump(_set(_base(), "presets", {"official": presets["zeta"], "paper": paper}), sort_keys=False))
    space = load_space(path)
    assert [role for role, _ in preset_trials(space)] == ["baseline", "paper", "official"]
    assert space.paper_params() == {
        **paper, "prior": "standard_normal", "prior_options": {}, "kl_reduction": "mean", "encoder_input": "raw"
    }
    assert preset_trials(space)[0][1]["tap_layer"] == 3  # the baseline taps where the paper trial does
    # Spaces without presets (paper_beta alone) keep working.
    assert load_space(ROOT / "spaces" / "smollm2-grid.yaml").paper_params()["beta"] == 0.01


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
    ("presets.baseline", {"alpha": 0.1, "beta": 0.01, "tap_layer": 2}, ["presets", "'baseline' is taken"]),
    ("presets.search", {"alpha": 0.1, "beta": 0.01, "tap_layer": 2}, ["presets", "'search' is taken"]),
    ("presets.2x", {"alpha": 0.1, "beta": 0.01, "tap_layer": 2}, ["presets", "'2x'", "must be a letter"]),
    ("presets.x", {"alpha": 0, "beta": 0.01, "tap_layer": 2}, ["presets.x.alpha", "> 0", "baseline", "got 0"]),
    ("presets.x", {"alpha": 0.1, "beta": -1, "tap_layer": 2}, ["presets.x.beta", ">= 0", "got -1"]),
    ("presets.x", {"alpha": 0.1, "beta": 0.01, "tap_layer": 12}, ["presets.x.tap_layer 12", "4-layer model", "0..4"]),
    ("presets.x", {"alpha": 0.1, "beta": 0.01, "tap_layer": 1.5}, ["presets.x.tap_layer", "fraction in (0, 1)"]),
    ("presets.x", {"alpha": 0.1, "beta": 0.01, "tap_layer": 2, "prior": "laplace"}, ["presets.x.prior", "'laplace'", "mog"]),
    ("presets.x", {"alpha": 0.1, "beta": 0.01}, ["presets.x.tap_layer", "required field is missing"]),
    ("presets.x", {"alpha": 0.1, "beta": 0.01, "tap_layer": 2, "lr": 1}, ["presets.x", "unknown field 'lr'", "alpha, beta"]),
    ("presets", [{"alpha": 0.1}], ["presets", "dictionary"]),
    ("params.kl_reduction", "avg", ["params.kl_reduction", "'avg'", "allowed: mean, sum"]),
    ("params.kl_reduction", {"choices": ["mean", "max"]}, ["params.kl_reduction", "'max'", "allowed: mean, sum"]),
    ("params.kl_reduction", {"uniform": [0, 1]}, ["params.kl_reduction", "categorical", "mean, sum"]),
    ("params.kl_reduction", 3, ["params.kl_reduction", "mean, sum or {choices: [...]}", "got 3"]),
    ("params.encoder_input", "layer_norm", ["params.encoder_input", "'layer_norm'", "allowed: raw, rms_norm"]),
    ("params.encoder_input", {"choices": ["raw", "ln"]}, ["params.encoder_input", "'ln'", "raw, rms_norm"]),
    ("ib.kl_reduction", "sum", ["ib", "kl_reduction belongs under params"]),
    ("ib.encoder_input", "raw", ["ib", "encoder_input belongs under params"]),
    ("presets.x", {"alpha": 0.1, "beta": 0.01, "tap_layer": 2, "kl_reduction": "avg"},
     ["presets.x.kl_reduction", "'avg'", "mean, sum"]),
    ("presets.x", {"alpha": 0.1, "beta": 0.01, "tap_layer": 2, "encoder_input": "ln"},
     ["presets.x.encoder_input", "'ln'", "raw, rms_norm"]),
    ("resources.workers", 3, ["validation.tasks 2 is fewer than resources.workers 3", "at least one task"]),
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


def test_paper_beta_and_a_paper_preset_conflict(tmp_path):
    path = tmp_path / "p.yaml"
    doc = _set(_set(_base(), "paper_beta", 0.01), "presets", {"paper": {"alpha": 0.1, "beta": 0.02, "tap_layer": 2}})
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"p.yaml: paper_beta and presets.paper both set the paper trial"):
        load_space(path)


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
    monkeypatch.setattr(evaluation, "run_evaluation", lambda *a, generation, **kw: seen.append(generation.batch_size)
                        or evaluation.EvaluationRun(samples=[], results=[], summary={}))
    reporter = object.__new__(tt._RungReporter)
    reporter.setup, reporter.rank = {"resources": {"cpus_per_worker": 1}, "seed": 0}, 0
    reporter.task_counts, reporter.prompt_format = {}, "auto"
    reporter._evaluate("val", bench, [], None, None)
    reporter._evaluate("val", {k: v for k, v in bench.items() if k != "batch_size"}, [], None, None)
    assert seen == [220, 40]  # a setup saved before the field existed decodes 40 at a time, as it did


def test_prompt_format_is_a_data_option_the_paper_spaces_set_to_official(tmp_path, monkeypatch):
    """data.prompt_format mirrors DataConfig, reaches the trial's TrainConfig and its validation/test generation."""
    import dataclasses

    import trainables.evaluation as evaluation
    import trainables.tune_trainable as tt
    from search.space import DataSection
    from search.tuner import trial_setup
    from trainables.train.config import PROMPT_FORMATS, DataConfig, TrainConfig

    assert set(DataSection.model_fields) == {f.name for f in dataclasses.fields(DataConfig)}
    assert DataSection.model_fields["prompt_format"].annotation.__args__ == PROMPT_FORMATS
    assert DataSection().prompt_format == DataConfig().prompt_format == "auto"
    assert DataSection().append_eos is DataConfig().append_eos is True
    formats = {p.stem: load_space(p).data.prompt_format for p in SPACES}
    assert formats["origen"] == formats["evol-codealpaca"] == "official"
    assert all(f == "auto" for name, f in formats.items() if name.startswith("smollm2") or name == "smoke")

    space = load_space(ROOT / "spaces" / "origen.yaml")
    setup = trial_setup(space, Path("/tmp/run"))
    cfg = TrainConfig.from_dict(tt.train_config_dict(setup, space.paper_params(), output_dir="/tmp/x", optuna_trial=1))
    assert (cfg.data.prompt_format, cfg.data.append_eos) == ("official", True)

    seen = []
    monkeypatch.setattr(evaluation, "run_evaluation", lambda *a, prompt_format, **kw: seen.append(prompt_format)
                        or evaluation.EvaluationRun(samples=[], results=[], summary={}))
    reporter = object.__new__(tt._RungReporter)
    reporter.setup, reporter.rank, reporter.task_counts = {"resources": {"cpus_per_worker": 1}, "seed": 0}, 0, {}
    reporter.prompt_format = cfg.data.prompt_format
    reporter._evaluate("val", setup["validation"], [], None, None)
    assert seen == ["official"]

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_set(_base(), "data.prompt_format", "alpaca"), sort_keys=False))
    with pytest.raises(ConfigError, match=r"data\.prompt_format.*'alpaca'"):
        load_space(path)


def _space_with(tmp_path: Path, **sections):
    doc = _base()
    for dotted, value in sections.items():
        _set(doc, dotted.replace("__", "."), value)
    path = tmp_path / "ib.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_space(path)


def test_kl_reduction_and_encoder_input_are_fixed_by_default_and_may_be_searched(tmp_path):
    from search.optuna_bridge import preset_trials
    from search.space import TRIAL_PARAMS
    from search.tuner import _sampler

    space = load_space(ROOT / "spaces" / "smoke.yaml")
    assert (space.params.kl_reduction, space.params.encoder_input) == ("mean", "raw")  # the official code's
    assert space.fixed_params()["kl_reduction"] == "mean" and space.fixed_params()["encoder_input"] == "raw"
    assert not {"kl_reduction", "encoder_input"} & set(space.params.domains())
    assert all({"kl_reduction", "encoder_input"} <= set(values) for _, values in preset_trials(space))
    assert TRIAL_PARAMS[-2:] == ("kl_reduction", "encoder_input")

    space = _space_with(tmp_path, params__kl_reduction={"choices": ["mean", "sum"]}, params__encoder_input="rms_norm")
    assert space.params.domains()["kl_reduction"] == Domain(choices=["mean", "sum"])
    assert "encoder_input" not in space.params.domains() and space.fixed_params()["encoder_input"] == "rms_norm"
    assert "kl_reduction" not in space.fixed_params()
    # Presets: the space's fixed value, the default where the parameter is searched, or their own.
    presets = {"own": {"alpha": 0.5, "beta": 0.01, "tap_layer": 1, "kl_reduction": "sum", "encoder_input": "raw"},
               "plain": {"alpha": 0.5, "beta": 0.01, "tap_layer": 1}}
    space = _space_with(tmp_path, params__kl_reduction={"choices": ["mean", "sum"]}, params__encoder_input="rms_norm",
                        presets=presets)
    by_role = dict(preset_trials(space))
    for role in ("baseline", "paper", "plain"):
        assert (by_role[role]["kl_reduction"], by_role[role]["encoder_input"]) == ("mean", "rms_norm"), role
    assert (by_role["own"]["kl_reduction"], by_role["own"]["encoder_input"]) == ("sum", "raw")

    # The grid sampler takes them as categorical grid axes.
    grid = _space_with(tmp_path, sampler="grid", params__alpha={"choices": [0.1]}, params__beta=0.01,
                       params__kl_reduction={"choices": ["mean", "sum"]},
                       params__encoder_input={"choices": ["raw", "rms_norm"]})
    assert _sampler(grid)._search_space["kl_reduction"] == ["mean", "sum"]
    assert _sampler(grid)._search_space["encoder_input"] == ["raw", "rms_norm"]


def test_trial_ib_semantics_reach_the_train_config_and_old_trial_configs_keep_legacy(tmp_path):
    import trainables.tune_trainable as tt
    from search.tuner import trial_setup
    from trainables.ib.config import LEGACY_SEMANTICS
    from trainables.train.config import TrainConfig

    space = load_space(ROOT / "spaces" / "smoke.yaml")
    setup = trial_setup(space, Path("/tmp/run"))
    params = {**space.paper_params(), "kl_reduction": "sum", "encoder_input": "rms_norm"}
    cfg = TrainConfig.from_dict(tt.train_config_dict(setup, params, output_dir="/tmp/x", optuna_trial=1))
    assert (cfg.ib.kl_reduction, cfg.ib.encoder_input) == ("sum", "rms_norm")
    cfg = TrainConfig.from_dict(tt.train_config_dict(setup, space.paper_params(), output_dir="/tmp/x", optuna_trial=1))
    assert (cfg.ib.kl_reduction, cfg.ib.encoder_input) == ("mean", "raw")
    # A trial config proposed before the two keys existed (an old run resumed) trains with what it started with.
    old = {k: v for k, v in space.paper_params().items() if k not in LEGACY_SEMANTICS}
    assert {k: tt.trial_params(old)[k] for k in LEGACY_SEMANTICS} == LEGACY_SEMANTICS
    cfg = TrainConfig.from_dict(tt.train_config_dict(setup, old, output_dir="/tmp/x", optuna_trial=1))
    assert (cfg.ib.kl_reduction, cfg.ib.encoder_input) == ("sum", "rms_norm")
    with pytest.raises(KeyError):
        tt.trial_params({k: v for k, v in old.items() if k != "alpha"})  # only those two have a fallback


def test_a_fresh_run_records_its_ib_semantics_and_an_old_run_resumes_with_legacy(tmp_path):
    import json
    import pickle

    from search.space import IB_SEMANTICS_FILE, SearchedParams
    from search.tuner import TUNE_DIR, load_run_space, prepare_run_dir
    from trainables.ib.config import LEGACY_SEMANTICS

    run_dir = tmp_path / "runs" / "fresh"
    prepare_run_dir(ROOT / "spaces" / "smoke.yaml", run_dir)
    assert json.loads((run_dir / IB_SEMANTICS_FILE).read_text()) == {"kl_reduction": "mean", "encoder_input": "raw"}
    (run_dir / TUNE_DIR).mkdir()
    space = load_run_space(run_dir)
    assert (space.params.kl_reduction, space.params.encoder_input) == ("mean", "raw")

    # A run started before the record: its space file cannot set the two, and its trials trained with legacy.
    (run_dir / IB_SEMANTICS_FILE).unlink()
    space = load_run_space(run_dir)
    assert {k: getattr(space.params, k) for k in LEGACY_SEMANTICS} == LEGACY_SEMANTICS
    assert space.fixed_params()["kl_reduction"] == "sum" and space.paper_params()["encoder_input"] == "rms_norm"
    # What a space file sets explicitly stands either way.
    searched = _set(_base(), "params.kl_reduction", {"choices": ["mean", "sum"]})
    (run_dir / "space.yaml").write_text(yaml.safe_dump(searched))
    space = load_run_space(run_dir)
    assert space.params.kl_reduction == Domain(choices=["mean", "sum"]) and space.params.encoder_input == "rms_norm"
    (run_dir / IB_SEMANTICS_FILE).write_text('{"kl_reduction": "avg"}')
    with pytest.raises(ConfigError, match=r"ib_semantics.json: expected"):
        load_run_space(run_dir)

    # Tune keeps the searcher, space included, pickled in RUN_DIR/tune: one pickled before the two fields
    # existed unpickles with the legacy semantics (what it kept proposing), not today's defaults.
    state = SearchedParams().__getstate__()
    state["__dict__"] = {k: v for k, v in state["__dict__"].items() if k not in LEGACY_SEMANTICS}
    old = SearchedParams.__new__(SearchedParams)
    old.__setstate__(state)
    assert (old.kl_reduction, old.encoder_input) == ("sum", "rms_norm")
    assert pickle.loads(pickle.dumps(SearchedParams(kl_reduction="mean"))).kl_reduction == "mean"
