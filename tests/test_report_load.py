"""`ibft report` on a run directory written the way a search writes it: finished, running, crashed, locked,
only stopped or errored trials; what the page and summary state, the reproduce configs, the CLI."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import report_run_fixture as fixture

from search.report import write_report
from search.report.analysis import analyse
from search.report.html import PLOT_IDS
from search.report.load import COMPLETE, ERROR, PRUNED, UNFINISHED, load_run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return fixture.write_run(tmp_path_factory.mktemp("finished"))


@pytest.fixture(scope="module")
def finished_report(finished_run, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    return out, write_report(finished_run, out, png=False)


def test_finished_run_joins_every_source(finished_run):
    run = load_run(finished_run)
    assert run.finished and run.notes == []
    assert [t.number for t in run.trials] == list(range(7))
    assert [t.state for t in run.trials] == [COMPLETE] * 5 + [PRUNED, ERROR]
    assert [t.role for t in run.trials[:3]] == ["baseline", "paper", "search"]
    assert run.trials[5].last_rung == 1 and run.trials[5].steps == 10
    assert run.trials[6].error == fixture.ERROR_LINE
    # The fixture's trial configs carry no kl_reduction / encoder_input: proposed before they existed, so
    # trials.csv records the legacy semantics they trained with.
    assert run.trials[2].params == {"alpha": 0.05, "beta": 0.01, "tap_layer": 1, "prior": "mog",
                                    "prior_options": {"components": 2}, "kl_reduction": "sum",
                                    "encoder_input": "rms_norm"}
    assert run.trials[1].metrics["test/pass@10(10)"] == 0.13
    assert [r["rung"] for r in run.trials[0].rungs] == [1, 2, 3]
    assert run.trials[0].train_config["ib"]["alpha"] == 0.0
    assert run.trials[6].train_config is None  # errored before its first checkpoint
    assert run.trials[1].extra["memorization_gap"] == 9.75
    assert run.study is not None and run.has_test and (run.rung_steps, run.max_steps) == (10, 30)


@pytest.mark.parametrize("id_format", ["1234567{number}", "0000000{number}", "1e34567{number}"])
def test_trial_ids_that_look_like_numbers_join_as_one_trial_each(tmp_path, id_format):
    # Tune's trial ids are 8 random hex digits: about one search in ten draws an id that parses as an int or a
    # float. trials.csv must read them back as text, or the report shows such a trial twice (a CI run did).
    run = load_run(fixture.write_run(tmp_path, trial_id_format=id_format))
    assert [t.number for t in run.trials] == list(range(7))
    assert [t.trial_id for t in run.trials] == [id_format.format(number=n) for n in range(7)]
    assert [t.label for t in analyse(run).front] == ["#1", "#2", "#3"]


def test_table_cells_keep_digit_groups_and_ids_as_text():
    from search.table_cells import parse_cell

    assert [parse_cell(v) for v in ("3", "0.25", "1e-3", "", "mog")] == [3, 0.25, 0.001, None, "mog"]
    assert parse_cell("12345_678") == "12345_678"  # int() would accept it as 12345678


def test_facts_of_the_finished_run_by_hand(finished_run):
    facts = analyse(load_run(finished_run))
    assert [t.label for t in facts.front] == ["#1", "#2", "#3"]
    assert sorted(t.label for t in facts.dominated) == ["#0", "#4"]  # the baseline is beaten by the paper trial
    assert facts.reference == [0.0, 0.0]
    assert facts.hypervolume == pytest.approx(0.049)  # see test_report_pareto's staircase
    assert [round(p.hypervolume, 9) for p in facts.progress if p.completed] == [0.03, 0.0408, 0.044, 0.049, 0.049]
    s = facts.savings
    # 6 trials ran (the errored one reported nothing): 5 x 30 + 10 = 160 steps of 6 x 30 = 180.
    assert (s.trials_run, s.trials_stopped, s.steps_spent, s.steps_without_stopping) == (6, 1, 160, 180)
    assert s.seconds_saved_estimate == pytest.approx(fixture.SECONDS_PER_STEP * 20)
    assert set(facts.importances) == {"val/pass@1", "val/pass@10(10)"}
    for scores in facts.importances.values():
        assert set(scores) == {"alpha", "beta", "tap_layer", "prior"}
        assert sum(scores.values()) == pytest.approx(1.0)


def test_page_is_self_contained_and_states_the_answers(finished_report):
    out, result = finished_report
    page = (out / "index.html").read_text()
    assert page.count("plotly.js v") == 1  # inlined once, reused by every figure
    assert "<script src=" not in page and "cdn.plot.ly/plotly" not in page
    for div_id in PLOT_IDS:
        assert f'id="{div_id}"' in page, div_id
    assert 'id="no-completed"' not in page
    assert "#0, dominated by #1" in page
    assert "of 4 validation gain(s) over the baseline, 4 hold on test" in page
    assert "20 saved (11%)" in page
    assert "memorization_gap" in page and "9.75" in page
    assert fixture.ERROR_LINE in page
    assert f"<code>ibft train --config {out / 'configs' / 'trial-2.yaml'}</code>" in page
    assert result["front"] == ["#1", "#2", "#3"] and result["hypervolume"] == pytest.approx(0.049)
    summary = (out / "summary.md").read_text()
    assert "| #2 | search | on the front |" in summary
    assert f"`ibft train --config {out / 'configs' / 'trial-2.yaml'}`" in summary


def test_reproduce_config_is_the_trials_exact_train_config(finished_run, finished_report):
    from trainables.commands.train import build_config

    out, result = finished_report
    assert set(result["configs"]) == {"#0", "#1", "#2", "#3"}  # the front plus the baseline
    trial = load_run(finished_run).trials[2]
    rebuilt = build_config(result["configs"]["#2"]).to_dict()
    assert rebuilt["output_dir"] == str((finished_run / "reproduce" / "trial-2").resolve())
    expected = dict(trial.train_config, output_dir=rebuilt["output_dir"])
    assert json.loads(json.dumps(rebuilt)) == expected  # JSON turns the config's tuples into lists


def test_reproducing_a_trial_trained_before_the_loss_options_keeps_its_old_loss(tmp_path):
    """A checkpointed train config without ib.kl_reduction / ib.encoder_input (written before they existed) is
    reproduced with the semantics it trained with (sum over dims, RMS-normalised input), not today's defaults."""
    from trainables.commands.train import build_config

    run_dir = fixture.write_run(tmp_path)
    for path in run_dir.glob("trials/*/**/train_config.json"):
        config = json.loads(path.read_text())
        for key in ("kl_reduction", "encoder_input"):
            config["ib"].pop(key, None)
        path.write_text(json.dumps(config))
    result = write_report(run_dir, png=False)
    rebuilt = build_config(result["configs"]["#2"])
    assert (rebuilt.ib.kl_reduction, rebuilt.ib.encoder_input) == ("sum", "rms_norm")


def test_running_search_without_tables(tmp_path):
    run_dir = fixture.write_run(tmp_path, finished=False, only=[0, 1, 2, 3, 4])
    run = load_run(run_dir)
    assert not run.finished
    assert run.trials[-1].state == UNFINISHED and run.trials[-1].last_rung == 2  # 2 of its 3 rungs so far
    assert [t.state for t in run.trials[:4]] == [COMPLETE] * 4  # told to Optuna, no trials.csv yet
    result = write_report(run_dir, png=False)
    page = Path(result["html"]).read_text()
    assert "not finished: 1 trial(s) running or left by an interrupted search" in page
    assert (run_dir / "report" / "summary.md").is_file()


def test_crashed_search_with_a_half_written_result_line_and_no_experiment_state(tmp_path):
    run_dir = fixture.write_run(tmp_path, finished=False, only=[0, 1, 2, 3, 4])
    for state in (run_dir / "tune").glob("experiment_state-*.json"):
        state.unlink()
    result_file = next((run_dir / "tune").glob("run_trial_0000abcd_*")) / "result.json"
    with result_file.open("a") as f:
        f.write('{"rung": 4, "step": 4')  # the driver died mid-write
    run = load_run(run_dir)
    assert [r["rung"] for r in run.trials[0].rungs] == [1, 2, 3]
    assert any("experiment state" in n for n in run.notes)
    assert write_report(run_dir, png=False)["states"][COMPLETE] == 4


def test_study_is_read_while_a_writer_holds_it_and_never_modified(tmp_path):
    run_dir = fixture.write_run(tmp_path)
    db = run_dir / "optuna.db"
    before = db.read_bytes()
    writer = sqlite3.connect(db)
    writer.execute("BEGIN IMMEDIATE")  # a search in the middle of a write transaction
    try:
        run = load_run(run_dir)
    finally:
        writer.rollback()
        writer.close()
    assert run.study is not None and len(run.study.get_trials(deepcopy=False)) == 7
    assert db.read_bytes() == before


def test_only_stopped_and_errored_trials_still_render_and_say_so(tmp_path):
    run_dir = fixture.write_run(tmp_path, only=[5, 6])
    result = write_report(run_dir, png=False)
    assert result["front"] == [] and result["states"] == {COMPLETE: 0, PRUNED: 1, ERROR: 1, UNFINISHED: 0}
    page = Path(result["html"]).read_text()
    assert 'id="no-completed"' in page and "No trial has completed: 1 stopped by ASHA, 1 errored" in page
    assert 'id="pareto"' in page and page.count("plotly.js v") == 1
    assert "Parameter importances unavailable" in page
    assert "no trial has completed" in Path(result["summary"]).read_text().lower()


def test_missing_study_and_space_degrade_to_notes(tmp_path):
    run_dir = fixture.write_run(tmp_path)
    (run_dir / "optuna.db").unlink()
    (run_dir / "space.yaml").unlink()
    run = load_run(run_dir)  # objectives from pareto.json, states from trials.csv
    assert [o["metric"] for o in run.objectives] == ["val/pass@1", "val/pass@10(10)"]
    assert any("optuna.db is missing" in n for n in run.notes) and any("space.yaml" in n for n in run.notes)
    assert [t.label for t in analyse(run).front] == ["#1", "#2", "#3"]


def test_cli_writes_the_report_without_torch_or_ray(finished_run, tmp_path):
    code = (
        "import sys; from search.cli import main; rc = main(['report', sys.argv[1], '--out', sys.argv[2], '--no-png']);"
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, 'ray': 'ray' in sys.modules}), file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", "import json;" + code, str(finished_run), str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["front"] == ["#1", "#2", "#3"]
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"rc": 0, "torch": False, "ray": False}
    assert (tmp_path / "r" / "index.html").is_file()


def test_cli_rejects_a_directory_that_is_no_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "search", "report", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ibft report: error: RUN_DIR {tmp_path}: not a search run directory (none of space.yaml, optuna.db, tune, "
        f"trials.csv)"
    )
    assert "Traceback" not in proc.stderr


def test_ray_results_alone_tell_which_trials_reported_their_last_rung(tmp_path):
    run_dir = fixture.write_run(tmp_path)
    for name in ("trials.csv", "pareto.json", "optuna.db"):
        (run_dir / name).unlink()
    for state in (run_dir / "tune").glob("experiment_state-*.json"):
        state.unlink()
    run = load_run(run_dir)
    # Reporting the last rung completes a trial by the search's rule; the stopped one cannot be told from a
    # trial still running without the experiment state, and the errored one reported nothing.
    assert [t.state for t in run.trials] == [COMPLETE] * 5 + [UNFINISHED] * 2
    assert [t.label for t in analyse(run).front] == ["#1", "#2", "#3"]


def test_repeats_answered_from_earlier_runs_are_counted_not_shown_as_trials(tmp_path):
    import optuna

    from search.optuna_bridge import ask_untrained, tell_as_duplicate, twin_of

    run_dir = fixture.write_run(tmp_path / "run")
    before_run = load_run(run_dir)
    before = analyse(before_run)
    study = optuna.load_study(study_name="fixture", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    twin_number = before.front[-1].number  # a completed search trial on the front
    twin = study.get_trials(deepcopy=False)[twin_number]
    trials_before = len(study.get_trials(deepcopy=False))

    # Today's searcher: the repeat proposal is answered from the twin and adds no study trial.
    class Repeating(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):
            return twin.params[name]

    study.sampler = Repeating(seed=0)
    define = lambda t: {n: t._suggest(n, d) for n, d in twin.distributions.items()}  # noqa: E731
    assert ask_untrained(study, define, max_asks=1) is None
    assert len(study.get_trials(deepcopy=False)) == trials_before and study.user_attrs["repeats"] == {str(twin_number): 1}
    # A run recorded before that kept its repeat as a trial marked duplicate_of.
    study.enqueue_trial(twin.params)
    repeat = study.ask(twin.distributions)
    tell_as_duplicate(study, repeat, twin_of(study, repeat))

    after_run = load_run(run_dir)
    after = analyse(after_run)
    assert [(t.trial_id, t.state) for t in after_run.trials] == [(t.trial_id, t.state) for t in before_run.trials]
    assert after.savings.repeats_answered == 2 and before.savings.repeats_answered == 0
    assert after.importances == before.importances  # the repeat's values do not count twice
    write_report(run_dir, tmp_path / "report", png=False)
    assert "2 proposal(s) of an already-run configuration were answered" in (tmp_path / "report" / "summary.md").read_text()


def test_a_space_preset_is_marked_and_labelled_like_the_baseline_and_paper(tmp_path, monkeypatch):
    """A trial of a space's own preset (role = its name) is named in the glance, listed with the front
    configurations (its own row class), gets a reproduce config and its own marker on the Pareto figure."""
    import csv

    from search.report import figures
    from search.report.html import render_page

    trials = [dict(t) for t in fixture.TRIALS]
    trials[4]["role"] = "official"  # a dominated trial
    monkeypatch.setattr(fixture, "TRIALS", trials)
    run_dir = fixture.write_run(tmp_path)
    with (run_dir / "trials.csv").open() as f:
        assert [row["role"] for row in csv.DictReader(f)][:5] == ["baseline", "paper", "search", "search", "official"]
    facts = analyse(load_run(run_dir))
    assert [t.label for t in facts.presets] == ["#4"] and [t.label for t in facts.marked] == ["#0", "#1", "#4"]
    page = render_page(facts, {})
    assert "<dt>Preset official</dt><dd>#4, dominated by" in page
    assert '<tr class="preset"><td>#4</td><td>official</td>' in page
    names = [trace.name for trace in figures.pareto_figure(facts).data]
    assert "official (#4, complete)" in names and "paper (#1, complete)" in names
    assert figures.trial_name(facts.presets[0]) == "#4 official"
    result = write_report(run_dir, tmp_path / "report", png=False)
    assert set(result["configs"]) == {"#0", "#1", "#2", "#3", "#4"}  # the front, baseline and the preset


def test_trials_csv_records_kl_reduction_and_encoder_input(tmp_path):
    from search.results import PARAM_COLUMNS, read_trials_csv, trial_row, write_trials_csv

    params = {"alpha": 0.1, "beta": 0.01, "tap_layer": 2, "prior": "standard_normal", "prior_options": {}}
    records = [
        {"trial_id": "new", "config": {**params, "kl_reduction": "sum", "encoder_input": "raw", "optuna_trial": 0}},
        {"trial_id": "old", "config": {**params, "optuna_trial": 1}},  # proposed before the two keys existed
        {"trial_id": "none", "config": {}},  # nothing known about it
    ]
    rows = [trial_row(r, num_rungs=3, objectives=["val/pass@1"]) for r in records]
    write_trials_csv(rows, tmp_path / "trials.csv")
    header = (tmp_path / "trials.csv").read_text().splitlines()[0].split(",")
    assert header[3:3 + len(PARAM_COLUMNS)] == [
        "alpha", "beta", "tap_layer", "prior", "kl_reduction", "encoder_input", "prior_options"
    ]
    read = {r["trial_id"]: r for r in read_trials_csv(tmp_path / "trials.csv")}
    assert (read["new"]["kl_reduction"], read["new"]["encoder_input"]) == ("sum", "raw")
    assert (read["old"]["kl_reduction"], read["old"]["encoder_input"]) == ("sum", "rms_norm")
    assert read["none"]["kl_reduction"] is None


def test_an_old_run_without_the_columns_or_the_record_reads_as_legacy_a_new_one_as_recorded(tmp_path):
    import csv
    import shutil

    from search.space import IB_SEMANTICS_FILE

    run_dir = fixture.write_run(tmp_path)
    # A run made before kl_reduction / encoder_input: no such trials.csv columns, checkpoints without the keys.
    with (run_dir / "trials.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c not in ("kl_reduction", "encoder_input")]
    with (run_dir / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    for path in (run_dir / "trials").glob("*/checkpoint_*/train_config.json"):
        config = json.loads(path.read_text())
        for key in ("kl_reduction", "encoder_input"):
            del config["ib"][key]
        path.write_text(json.dumps(config))
    run = load_run(run_dir)
    assert run.notes == []
    assert all((t.params["kl_reduction"], t.params["encoder_input"]) == ("sum", "rms_norm") for t in run.trials)
    result = write_report(run_dir, tmp_path / "old-report", png=False)
    page = Path(result["html"]).read_text()
    assert "KL / encoder input" in page and "sum / rms_norm" in page
    assert "| sum / rms_norm |" in Path(result["summary"]).read_text()

    # A run whose record says mean/raw: trials known from the study alone (no Ray results, no trials.csv, no
    # checkpoint) take the space's value, since the space fixes both.
    (run_dir / IB_SEMANTICS_FILE).write_text(json.dumps({"kl_reduction": "mean", "encoder_input": "raw"}))
    for name in ("trials.csv", "pareto.json"):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / "tune")
    shutil.rmtree(run_dir / "trials")
    (run_dir / "tune").mkdir()
    run = load_run(run_dir)
    told = [t for t in run.trials if t.params]
    assert told and all((t.params["kl_reduction"], t.params["encoder_input"]) == ("mean", "raw") for t in told)
