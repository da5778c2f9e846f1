"""The memorization gap in the search: the space's memorization section, what a finished trial measures and
reports (on a real tiny LoRA model), trials.csv and pareto.json, and the report's columns, statement and figure."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import report_run_fixture as fixture

from search.space import load_space, parse_space
from trainables.errors import ConfigError
from trainables.memorization import search_metrics as names

ROOT = Path(__file__).resolve().parents[1]


def _smoke() -> dict:
    return yaml.safe_load((ROOT / "spaces" / "smoke.yaml").read_text())


def _error(data: dict, tmp_path: Path) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


# --- the space file ----------------------------------------------------------------------------------


def test_memorization_is_off_by_default_and_its_section_parses():
    data = _smoke()
    data.pop("memorization", None)
    assert parse_space(data).memorization.enabled is False
    section = parse_space({**data, "memorization": {"enabled": True, "k": 0.1, "quantile": 0.25, "max_examples": 16,
                                                    "batch_size": 2, "tap_layer": -1}}).memorization
    assert (section.enabled, section.k, section.quantile, section.max_examples, section.batch_size, section.tap_layer) == (
        True, 0.1, 0.25, 16, 2, -1
    )
    assert parse_space({**data, "memorization": {"enabled": True}}).memorization.max_examples == 64


def test_shipped_smoke_space_measures_memorization():
    space = load_space(ROOT / "spaces" / "smoke.yaml")
    assert space.memorization.enabled and space.memorization.max_examples == 32


@pytest.mark.parametrize(
    "section,fragments",
    [
        ({"enabled": True, "k": 0}, ["memorization.k", "greater than 0", "got 0"]),
        ({"enabled": True, "k": 1.5}, ["memorization.k", "less than or equal to 1", "got 1.5"]),
        ({"enabled": True, "quantile": 0.6}, ["memorization.quantile", "0.5"]),
        ({"enabled": True, "max_examples": 3}, ["memorization.max_examples", "greater than or equal to 4"]),
        ({"enabled": True, "batch_size": 0}, ["memorization.batch_size"]),
        ({"enabled": True, "tap_layer": 1.5}, ["memorization.tap_layer", "fraction in (0, 1)"]),
        ({"enabled": True, "tap_layer": 9}, ["memorization.tap_layer 9", "4-layer model"]),
        ({"enabled": True, "K": 0.2}, ["memorization", "unknown field 'K'", "allowed: enabled, k, quantile"]),
        ({"enabled": True, "max_examples": 8}, ["memorization.quantile 0.2 of 8 examples gives groups of 1"]),
    ],
)
def test_bad_memorization_settings_give_one_line_errors(tmp_path, section, fragments):
    message = _error({**_smoke(), "memorization": section}, tmp_path)
    for fragment in fragments:
        assert fragment in message, message


def test_groups_are_checked_against_the_training_examples_there_are(tmp_path):
    data = _smoke()
    data["data"]["max_examples"] = 9
    message = _error({**data, "memorization": {"enabled": True, "max_examples": 64}}, tmp_path)
    assert "of 9 examples gives groups of 1" in message and "raise data.max_examples" in message


def test_a_memorization_objective_needs_memorization_enabled(tmp_path):
    data = _smoke()
    third = {"metric": "memorization/gap", "mode": "min"}
    data["objectives"].append(third)
    message = _error({**data, "memorization": {"enabled": False}}, tmp_path)
    assert "objectives[2].metric 'memorization/gap'" in message and "memorization.enabled: true" in message
    space = parse_space({**data, "memorization": {"enabled": True}})
    assert [(o.metric, o.mode) for o in space.objectives][-1] == ("memorization/gap", "min")
    for metric in names.OBJECTIVE_METRICS:
        data["objectives"][-1] = {"metric": metric, "mode": "min"}
        parse_space({**data, "memorization": {"enabled": True}})


def test_memorization_objectives_are_minimised_and_asha_stays_on_validation(tmp_path):
    data = {**_smoke(), "memorization": {"enabled": True}}
    data["objectives"] = data["objectives"] + [{"metric": "memorization/gap"}]  # mode defaults to max
    message = _error(data, tmp_path)
    assert "objectives[2].mode" in message and "must be min" in message
    data["objectives"][-1] = {"metric": "memorization/tap_index", "mode": "min"}
    assert "is not reported; allowed:" in _error(data, tmp_path)
    data["objectives"].pop()
    data["asha"] = {**data["asha"], "metric": "memorization/gap"}
    message = _error(data, tmp_path)
    assert "asha.metric 'memorization/gap' is not reported" in message and "val/pass@2(2)" in message


def test_trial_setup_carries_the_memorization_settings(tmp_path):
    from search.tuner import trial_setup

    space = parse_space({**_smoke(), "memorization": {"enabled": True, "max_examples": 16, "k": 0.3}})
    setup = json.loads(json.dumps(trial_setup(space, tmp_path)))  # plain data, as Tune hands it to a trial
    assert setup["memorization"] == {"enabled": True, "k": 0.3, "quantile": 0.2, "max_examples": 16,
                                     "batch_size": 8, "tap_layer": None}


# --- what a trial measures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_trial():
    """The smoke space's setup and a tiny 4-layer LoRA model whose adapter is not the identity."""
    from search.tuner import trial_setup
    from trainables.models import apply_lora, load_model_and_tokenizer
    from trainables.train.config import LoraSettings, ModelConfig

    space = load_space(ROOT / "spaces" / "smoke.yaml")
    model, tokenizer = load_model_and_tokenizer(
        ModelConfig(name_or_path="tiny-random-llama", tiny_overrides=dict(space.model.tiny_overrides))
    )
    model = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.1), seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=gen)
    setup = json.loads(json.dumps(trial_setup(space, Path("/tmp/unused"))))
    setup["memorization"].update(max_examples=12, quantile=0.25)  # a few examples: groups of 3
    return model, tokenizer, setup


def test_trial_memorization_on_a_tiny_model_is_finite_and_batch_size_free(tiny_trial):
    from trainables.tune_trainable import trial_memorization

    model, tokenizer, setup = tiny_trial
    model.train()
    results = {}
    for batch_size in (2, 4):
        setup["memorization"]["batch_size"] = batch_size
        results[batch_size] = trial_memorization(model, tokenizer, setup, tap_layer=0.5)
    assert model.training and all(m.training for m in model.modules())  # the mode comes back
    two, four = results[2], results[4]
    assert set(two) == set(names.REPORTED_METRICS)
    assert all(isinstance(v, float) and math.isfinite(v) for v in two.values()), two
    assert two[names.TAP_INDEX] == 2.0 and two[names.N_SCORED] == 12.0  # 0.5 of 4 layers
    assert two[names.GAP] >= 0 and two[names.GAP_CHANGE] == pytest.approx(two[names.GAP] - two[names.GAP_BASE])
    assert two[names.GAP] != pytest.approx(two[names.GAP_BASE])  # the adapter changed the representations
    for key in set(two) - {names.SECONDS}:
        assert four[key] == pytest.approx(two[key], rel=1e-4, abs=1e-6), key


def test_trial_memorization_reads_the_trials_training_data_at_the_chosen_layer(tiny_trial):
    from trainables.data import load_examples
    from trainables.memorization import measure_memorization
    from trainables.train.config import DataConfig
    from trainables.tune_trainable import trial_memorization

    model, tokenizer, setup = tiny_trial
    setup = json.loads(json.dumps(setup))
    setup["memorization"].update(batch_size=4, tap_layer=-1)  # fixed depth: the trial's own tap layer is ignored
    got = trial_memorization(model, tokenizer, setup, tap_layer=1)
    examples = load_examples(DataConfig(**setup["data"]), setup["seed"])[:12]
    expected = measure_memorization(model, tokenizer, examples, k=0.2, quantile=0.25, tap_layer=-1, batch_size=4,
                                    max_length=setup["data"]["max_length"])
    assert got[names.TAP_INDEX] == 4.0
    assert got[names.GAP] == pytest.approx(expected["memorization_gap"], rel=1e-9)
    assert got[names.MIN_K_MEAN] == pytest.approx(expected["min_k_mean"], rel=1e-9)


def test_trial_memorization_errors_name_the_section(tiny_trial):
    from trainables.tune_trainable import trial_memorization

    model, tokenizer, setup = tiny_trial
    setup = json.loads(json.dumps(setup))
    setup["memorization"].update(max_examples=4, quantile=0.25)
    with pytest.raises(ConfigError, match="^memorization: quantile 0.25 of 4 scored examples"):
        trial_memorization(model, tokenizer, setup, tap_layer=0.5)


def test_the_final_rung_reports_memorization_and_earlier_rungs_do_not(tiny_trial, tmp_path, monkeypatch):
    import trainables.tune_trainable as tt

    model, tokenizer, setup = tiny_trial
    reports = []

    class Side:  # where a rung's report goes (tt.TrainWorkerSide, tt.InTrialSide), recorded here
        rank, world, local_rank, trial_root = 0, 1, 0, str(tmp_path)

        def publish(self, report, checkpoint_dir):
            reports.append(report)

    reporter = object.__new__(tt._RungReporter)
    reporter.setup, reporter.tap_layer, reporter.logs = setup, 0.5, []
    reporter.side, reporter.clock, reporter.rank, reporter.world = Side(), None, 0, 1
    reporter.val_problems, reporter.test_problems = [], None
    reporter._evaluate = lambda prefix, *args: {f"{prefix}/pass@1": 0.0}  # generation is tested elsewhere
    rung_steps = setup["training"]["rung_steps"]
    for rung in range(1, setup["num_rungs"] + 1):
        checkpoint = tmp_path / f"rung{rung}"
        checkpoint.mkdir()
        reporter.on_rung(rung * rung_steps, model, tokenizer, str(checkpoint))
    assert not any(k.startswith(names.METRIC_PREFIX) for k in reports[0])
    assert set(names.REPORTED_METRICS) <= set(reports[-1])
    saved = json.loads((tmp_path / f"rung{setup['num_rungs']}" / tt.RUNG_METRICS_FILE).read_text())
    assert saved[names.GAP] == reports[-1][names.GAP]  # a resumed finished trial re-reports it


# --- trials.csv and pareto.json ----------------------------------------------------------------------


def test_trials_csv_and_pareto_json_carry_the_memorization_metrics(tmp_path):
    from search.results import read_trials_csv, trial_row, write_pareto_json, write_trials_csv

    objectives = [{"metric": "val/pass@1", "mode": "max"}, {"metric": names.GAP, "mode": "min"}]
    records = []
    for number, (val, gap) in enumerate([(0.5, 10.0), (0.4, 8.0), (0.3, 9.0)]):
        result = {"rung": 2, "val/pass@1": val, "train/loss": 1.0, **fixture.memorization_results(0)}
        result[names.GAP] = gap
        records.append({"trial_id": f"t{number}", "config": {"optuna_trial": number, "role": "search"},
                        "last_result": result, "finished": True, "errored": False, "error": None})
    rows = [trial_row(r, num_rungs=2, objectives=[o["metric"] for o in objectives]) for r in records]
    write_trials_csv(rows, tmp_path / "trials.csv")
    with (tmp_path / "trials.csv").open() as f:
        header = next(csv.reader(f))
    memorization = [c for c in header if c.startswith(names.METRIC_PREFIX)]
    assert set(memorization) == set(names.REPORTED_METRICS) and "train/loss" not in header
    assert header.index("val/pass@1") < header.index(memorization[0])  # after the pass rates
    assert [r[names.GAP] for r in read_trials_csv(tmp_path / "trials.csv")] == [10.0, 8.0, 9.0]
    front = write_pareto_json(rows, objectives, tmp_path / "pareto.json")
    assert sorted(t["trial_id"] for t in front) == ["t0", "t1"]  # t2 is beaten by t1 on the gap, t0 on val
    assert json.loads((tmp_path / "pareto.json").read_text())["trials"][0]["metrics"][names.GAP] == 10.0


# --- the report --------------------------------------------------------------------------------------


def test_report_shows_reported_memorization_in_tables_statement_and_figure(tmp_path):
    from search.report import write_report
    from search.report.analysis import analyse, memorization_gap
    from search.report.figures import memorization_figure
    from search.report.findings import front_table, glance, trials_table
    from search.report.load import load_run

    run_dir = fixture.write_run(tmp_path)
    run = load_run(run_dir)
    assert run.measures_memorization
    assert [memorization_gap(t) for t in run.trials] == [12.0, 8.5, 10.0, 9.0, 13.0, None, None]
    assert run.trials[2].extra["memorization_gap"] == 10.25  # a column added after the search stays its own
    facts = analyse(run)
    headers, rows = front_table(facts, {}, commands=False)
    assert headers.count(names.GAP) == 1 and names.ANGULAR_DISPARITY in headers and "memorization_gap" in headers
    paper = next(r for r in rows if r[1] == "paper")
    assert paper[headers.index(names.GAP)] == "8.5" and paper[headers.index(names.ANGULAR_DISPARITY)] == "38.5"
    t_headers, t_rows = trials_table(facts)
    assert t_rows[5][t_headers.index(names.GAP)] == "–"  # stopped by ASHA: never measured
    statement = dict(glance(facts))["Memorization gap"]
    assert "baseline 12; paper 8.5 (-3.5 vs baseline)" in statement and "lowest of all 8.5 (#1)" in statement
    fig = memorization_figure(facts)
    xs = sorted(x for trace in fig.data for x in trace.x)
    assert xs == [8.5, 9.0, 10.0, 12.0, 13.0]
    assert any(getattr(shape, "x0", None) == fixture.MEMORIZATION_BASE_GAP for shape in fig.layout.shapes)
    write_report(run_dir, tmp_path / "report", png=False)
    page = (tmp_path / "report" / "index.html").read_text()
    assert 'id="memorization"' in page and "<h2>Memorization</h2>" in page
    assert "| memorization/gap |" in (tmp_path / "report" / "summary.md").read_text()


def test_report_with_the_gap_as_third_objective(tmp_path):
    from search.report import write_report
    from search.report.analysis import analyse
    from search.report.findings import front_table
    from search.report.load import load_run

    run_dir = fixture.write_run(tmp_path, memorization_objective=True)
    facts = analyse(load_run(run_dir))
    assert [o["metric"] for o in facts.run.objectives][-1] == names.GAP
    # By hand: #1 has the lowest gap, #2 the best pass@1, #3 the best pass@10(10); #1 beats #0 and #4 on all three.
    assert [t.label for t in facts.front] == ["#1", "#2", "#3"]
    assert len(facts.reference) == 3 and facts.reference[2] == 13.0  # worst gap seen
    headers, _ = front_table(facts, {}, commands=False)
    assert len(headers) == len(set(headers)) and "test/gap" not in " ".join(headers)
    assert f"Δ{names.GAP} vs baseline" in headers
    result = write_report(run_dir, tmp_path / "report", png=False)
    assert result["front"] == ["#1", "#2", "#3"] and set(facts.importances) <= {o["metric"] for o in facts.run.objectives}


def test_report_without_memorization_has_no_memorization_section(tmp_path):
    from search.report.html import render_page
    from search.report.analysis import analyse
    from search.report.load import load_run

    run_dir = fixture.write_run(tmp_path, only=[5, 6])  # no trial finished: nothing measured
    space = yaml.safe_load((run_dir / "space.yaml").read_text())
    page = render_page(analyse(load_run(run_dir)), {})
    assert "<h2>Memorization</h2>" in page and "No finished trial has a memorization gap" in page
    space.pop("memorization")
    (run_dir / "space.yaml").write_text(yaml.safe_dump(space))
    page = render_page(analyse(load_run(run_dir)), {})
    assert "<h2>Memorization</h2>" not in page and 'id="memorization"' not in page
