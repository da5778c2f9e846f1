"""End to end on a real local Ray cluster: the smoke space searched with Ray Train + Tune + Optuna + ASHA.

One search (the session fixture `smoke_run` of conftest.py, shared with the report's browser test) answers
most questions; it includes a trial forced to a NaN loss and logs to W&B offline. A second search is SIGKILLed
mid-way and resumed; a third is stopped with Ctrl-C (SIGINT) and resumed, a fourth likewise with SIGTERM (`ray job
stop`). Each takes a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.results import read_trials_csv

from smoke_search import NAN_TRIAL, finish_tune, kill_group, smoke_space_file, start_tune

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _study(run_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'optuna.db'}")


def test_search_finishes_and_prints_the_front(smoke_run):
    assert smoke_run["code"] == 0, smoke_run["err"][-3000:]
    summary = json.loads(smoke_run["out"].strip().splitlines()[-1])
    assert summary["interrupted"] is False and summary["run_dir"] == str(smoke_run["run_dir"])
    assert "Pareto front" in smoke_run["err"]
    assert "ASHA " in smoke_run["err"]  # one line per ASHA decision
    # Ray Train's PlacementGroupCleaner polls the State API, which this minimal Ray install does not serve:
    # left in, it printed this once a second per trial and outlived every trial ASHA stopped.
    workers_log = smoke_run["run_dir"] / "logs" / "workers.log"  # where worker output goes (search.console)
    assert "Failed to query Ray Train Controller" not in smoke_run["err"] + workers_log.read_text()
    for name in ("optuna.db", "trials.csv", "pareto.json", "tune", "space.yaml"):
        assert (smoke_run["run_dir"] / name).exists(), name


def test_default_console_has_the_search_lines_and_sends_the_rest_to_log_files(smoke_run):
    """Without --verbose: no W&B banner, no Ray Train or worker lines on the console, but the trial start/end lines,
    the ASHA decisions, the error and progress lines; the rest is in RUN_DIR/logs/, whose paths are printed."""
    err, run_dir = smoke_run["err"], smoke_run["run_dir"]
    assert smoke_run["code"] == 0, err[-3000:]
    logs = run_dir / "logs"
    assert f"logs: Ray worker output -> {logs / 'workers.log'}; W&B -> {logs / 'wandb.log'}" in err
    for noise in ("wandb:", "W&B syncing is set to", "Setting up process group", "Checkpoint successfully created",
                  "Reporting training result", "Loading weights", "FutureWarning", "Trial task failed for trial",
                  "Token authentication is enabled", "A new study created"):
        assert noise not in err, noise
    assert not re.search(r"\((?:\w+ )?pid=\d+", err), "a Ray worker's line on the console"
    assert "W&B syncing is set to `offline`" in (logs / "wandb.log").read_text()
    assert "Trial task failed for trial" in (logs / "driver.log").read_text()  # the whole traceback, kept

    rows = read_trials_csv(run_dir / "trials.csv")
    ends = {"COMPLETE": "finished at rung 2/2", "PRUNED": "stopped at rung 1/2", "ERROR": "ERROR after rung"}
    for r in rows:
        label = f"trial {r['trial_id']} (#{r['optuna_trial']}, {r['role']})"
        assert f"{label} started: alpha=" in err, label
        assert f"{label} {ends[r['state']]}" in err, (label, r["state"])
    error = next(line for line in err.splitlines() if " ERROR after rung " in line)
    assert "NonFiniteTrialError: non-finite loss" in error
    assert Path(re.search(r"\[traceback: (.+)\]$", error).group(1)).is_file(), error
    assert re.search(r"^ASHA \S+ rung 1/2: .* -> (CONTINUE|STOP)$", err, re.M)
    assert re.search(r"^progress: 5/5 trials ended \(\d+ finished, \d+ stopped, 1 errored\), 0 running \| "
                     r"budget \d+/20 steps \(\d+%\), \d+/10 trial-rungs \| front \d+ trial\(s\), hypervolume ", err, re.M)


def test_wandb_offline_writes_one_run_per_trial_grouped_by_the_search(smoke_run):
    rows = read_trials_csv(smoke_run["run_dir"] / "trials.csv")
    files = sorted((smoke_run["run_dir"] / "wandb").rglob("offline-run-*/run-*.wandb"))
    runs = {}
    for path in files:
        records = _wandb_records(path)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert path.name == f"run-{run.run_id}.wandb"
        history = {tuple(i.nested_key) or (i.key,) for r in records if r.WhichOneof("record_type") == "history"
                   for i in r.history.item}
        ended = any(r.WhichOneof("record_type") == "exit" for r in records)
        runs[run.run_id] = (run.run_group, run.project, history, ended)
    assert len(runs) == len(files) == len(rows)  # one W&B run per trial, none twice
    assert set(runs) == {r["trial_id"] for r in rows}
    assert {(group, project) for group, project, _, _ in runs.values()} == {("smoke", "ibft-search")}
    assert all(ended for *_, ended in runs.values())  # every run was closed, the errored trial's too
    for row in rows:
        if row["state"] in ("COMPLETE", "PRUNED"):  # reported at least one rung: its metrics are in the run
            assert {("val/pass@2(2)",), ("train/kl_loss",)} <= runs[row["trial_id"]][2], row["trial_id"]


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file: a 7-byte W&B header, then LevelDB's log format (32 KiB
    blocks of chunks, each a 7-byte header: crc32, little-endian length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_optuna_study_holds_presets_pruned_failed_and_complete_trials(smoke_run):
    trials = _study(smoke_run["run_dir"], "smoke").get_trials(deepcopy=False)
    assert len(trials) == 5
    roles = [t.user_attrs.get("role") for t in trials]
    assert roles[:2] == ["baseline", "paper"]
    assert trials[0].user_attrs["preset"]["alpha"] == 0.0
    assert trials[1].params["alpha"] == 0.1
    states = [t.state for t in trials]
    assert TrialState.PRUNED in states, states  # ASHA stopped at least one trial, and Optuna knows it
    assert states[NAN_TRIAL] == TrialState.FAIL
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.values) == 2 for t in complete)
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert t.values is None and t.user_attrs["rung"] < 2
        assert t.state != TrialState.RUNNING


def test_trials_csv_matches_the_study(smoke_run):
    rows = read_trials_csv(smoke_run["run_dir"] / "trials.csv")
    study = {t.number: t for t in _study(smoke_run["run_dir"], "smoke").get_trials(deepcopy=False)}
    assert sorted(r["optuna_trial"] for r in rows) == sorted(study)
    names = {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED", TrialState.FAIL: "ERROR"}
    for row in rows:
        trial = study[row["optuna_trial"]]
        assert row["state"] == names[trial.state]
        assert row["trial_id"] == trial.user_attrs["ray_trial_id"]
        if row["state"] == "COMPLETE":
            assert [row["val/pass@1"], row["val/pass@2(2)"]] == trial.values
            assert row["last_rung"] == 2 and row["checkpoint_path"]
            # spaces/smoke.yaml asks for the memorization gap of every finished trial.
            assert math.isfinite(row["memorization/gap"]) and 0 < row["memorization/n_scored"] <= 32
    nan_row = next(r for r in rows if r["optuna_trial"] == NAN_TRIAL)
    assert "non-finite" in nan_row["error"]


def test_every_trial_checkpoint_records_its_per_task_counts(smoke_run):
    """Each trial's last rung checkpoint holds task_counts.json, and its counts reproduce the reported validation
    rates: what `ibft report` bootstraps its intervals from."""
    from search.report.load import COMPLETE, PRUNED, load_run
    from trainables.metrics import mean_pass_at_k

    ran = [t for t in load_run(smoke_run["run_dir"]).trials if t.state in (COMPLETE, PRUNED)]
    assert ran
    for trial in ran:
        counts = trial.task_counts["val"]
        assert len(counts) == 2 and all(n == 2 for n, _ in counts.values()), (trial.label, counts)
        ns, cs = [n for n, _ in counts.values()], [c for _, c in counts.values()]
        assert mean_pass_at_k(ns, cs, 1) == pytest.approx(trial.metrics["val/pass@1"], abs=1e-9)
        assert mean_pass_at_k(ns, cs, 2, 2) == pytest.approx(trial.metrics["val/pass@2(2)"], abs=1e-9)


def test_pareto_json_is_the_non_dominated_set_of_trials_csv(smoke_run):
    rows = [r for r in read_trials_csv(smoke_run["run_dir"] / "trials.csv") if r["state"] == "COMPLETE"]
    keys = ("val/pass@1", "val/pass@2(2)")

    def beaten(r):  # written out here rather than calling search.pareto, as an independent check
        return any(
            all(o[k] >= r[k] for k in keys) and any(o[k] > r[k] for k in keys) for o in rows if o is not r
        )

    expected = sorted(r["trial_id"] for r in rows if not beaten(r))
    saved = json.loads((smoke_run["run_dir"] / "pareto.json").read_text())
    assert sorted(t["trial_id"] for t in saved["trials"]) == expected
    assert expected


def test_killed_driver_resumes_without_losing_or_duplicating_trials(tmp_path):
    space = smoke_space_file(tmp_path, num_samples=4)
    run_dir = tmp_path / "runs" / "killed"
    proc = start_tune([str(space), "--name", "killed", "--storage-path", str(tmp_path / "runs")])
    db = run_dir / "optuna.db"
    before: dict[int, tuple] = {}
    deadline = time.time() + 900
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(3)
            finished = _finished_trials(db)
            if finished:
                break
        if proc.poll() is not None:
            pytest.fail(f"the search ended (exit {proc.returncode}) before it could be killed:\n{proc.stderr.read()[-3000:]}")
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, mid-search
        proc.wait(timeout=60)
    finally:
        kill_group(proc)  # then the Ray processes it had started
    before = _finished_trials(db)
    assert before
    stopped = {
        t.user_attrs["ray_trial_id"]: _rungs_reported(run_dir, t.user_attrs["ray_trial_id"])
        for t in _study(run_dir, "killed").get_trials(deepcopy=False)
        if t.state == TrialState.PRUNED and "ray_trial_id" in t.user_attrs
    }

    workers_log = run_dir / "logs" / "workers.log"
    logged = workers_log.read_text() if workers_log.exists() else ""
    resumed = start_tune(["--resume", str(run_dir), "--verbose"])  # --verbose: Ray's output as Ray prints it
    code, out, err = finish_tune(resumed, timeout=1500)
    assert code == 0, err[-3000:]
    assert "logs: Ray worker output" not in err and (workers_log.read_text() if workers_log.exists() else "") == logged
    assert re.search(r"^trial \S+ \(#\d+, \w+\) (finished|stopped) at rung", err, re.M)  # printed either way
    # ASHA's rungs come back from the recorded results, and a trial it stopped never trains again.
    assert "rung record(s) restored from the recorded results" in err
    assert {t: _rungs_reported(run_dir, t) for t in stopped} == stopped
    everything = _study(run_dir, "killed").get_trials(deepcopy=False)
    # The restored sampler replays its draws from the last searcher checkpoint, so a proposal may repeat a
    # configuration already run or running: it is answered from that run (counted in the study's `repeats`
    # user attribute), never run itself, and adds no study trial.
    trials = {t.number: t for t in everything}
    assert len(trials) == 4  # nothing asked twice, no copies
    assert len({t.user_attrs["ray_trial_id"] for t in trials.values()}) == 4
    assert all(t.state.is_finished() for t in everything)
    assert all(int(n) in trials for n in (_study(run_dir, "killed").user_attrs.get("repeats") or {}))
    by_number = {t.number: t for t in everything}
    for number, (state, values) in before.items():
        assert (by_number[number].state.name, by_number[number].values) == (state, values)  # nothing lost or redone
    rows = read_trials_csv(run_dir / "trials.csv")
    assert sorted(r["optuna_trial"] for r in rows) == sorted(trials)


def _rungs_reported(run_dir: Path, trial_id: str) -> list:
    """The rungs a Tune trial reported, from its result.json."""
    out = []
    for path in (run_dir / "tune").glob(f"*{trial_id}*/result.json"):
        out += [json.loads(line).get("rung") for line in path.read_text().splitlines() if line.strip()]
    return out


def test_ctrl_c_lists_cut_off_trials_as_unfinished_and_resume_finishes_them(tmp_path):
    """Ctrl-C stops the running trials and Tune marks them TERMINATED, like the ones ASHA stopped; the tables
    must still say they were cut off (not pruned), and --resume must finish them. Seen on a GPU search."""
    _interrupt_then_resume(tmp_path, signal.SIGINT, "ctrlc")


def test_sigterm_stops_like_ctrl_c_and_resume_finishes_it(tmp_path):
    """`ray job stop` and plain `kill` send SIGTERM, which ray.init alone turns into a bare exit 15 (no tables,
    no "continue with" line): the search must stop as on Ctrl-C."""
    _interrupt_then_resume(tmp_path, signal.SIGTERM, "sigterm")


def _interrupt_then_resume(tmp_path: Path, sig: signal.Signals, name: str) -> None:
    space = smoke_space_file(tmp_path, num_samples=4)
    run_dir = tmp_path / "runs" / name
    log = (tmp_path / "stderr.log").open("w")  # a file, not a pipe nobody reads while the search runs
    proc = start_tune([str(space), "--name", name, "--storage-path", str(tmp_path / "runs")], stderr=log)
    deadline = time.time() + 900
    try:
        while time.time() < deadline and proc.poll() is None and not _one_ended_one_running(run_dir, name):
            time.sleep(2)
        if proc.poll() is not None:
            pytest.fail(f"the search ended (exit {proc.returncode}) before it could be interrupted:\n{log_text(tmp_path)}")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=300)
    finally:
        kill_group(proc)
        log.close()
    err = (tmp_path / "stderr.log").read_text()
    assert proc.returncode == 130, err[-3000:]
    assert f"continue with: ibft tune --resume {run_dir}" in err
    assert json.loads(out.strip().splitlines()[-1])["interrupted"] is True
    cut_off = {t.user_attrs["ray_trial_id"] for t in _study(run_dir, name).get_trials(states=(TrialState.RUNNING,))}
    rows = {r["trial_id"]: r for r in read_trials_csv(run_dir / "trials.csv")}
    assert cut_off and cut_off <= set(rows)
    assert all(rows[t]["state"] == "UNFINISHED" for t in cut_off), rows
    assert all(r["state"] != "UNFINISHED" for t, r in rows.items() if t not in cut_off)
    ended = {t.number: (t.state, t.values) for t in _study(run_dir, name).get_trials() if t.state.is_finished()}

    code, out, err = finish_tune(start_tune(["--resume", str(run_dir)]), timeout=1500)
    assert code == 0, err[-3000:]
    rows = {r["trial_id"]: r for r in read_trials_csv(run_dir / "trials.csv")}
    assert cut_off <= set(rows) and all(r["state"] in ("COMPLETE", "PRUNED", "ERROR") for r in rows.values()), rows
    trials = _study(run_dir, name).get_trials()
    assert all(t.state.is_finished() for t in trials)
    assert {t.number: (t.state, t.values) for t in trials if t.number in ended} == ended  # nothing lost or redone


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "stderr.log").read_text()[-3000:]


def _one_ended_one_running(run_dir: Path, name: str) -> bool:
    """A trial has ended and another is running (so Ctrl-C now cuts one off mid-way)."""
    if not (run_dir / "optuna.db").exists():
        return False
    try:
        states = [t.state for t in _study(run_dir, name).get_trials(deepcopy=False)]
    except Exception:  # the study is being created, or SQLite is busy
        return False
    return TrialState.RUNNING in states and any(state.is_finished() for state in states)


def _finished_trials(db: Path) -> dict[int, tuple]:
    if not db.exists():
        return {}
    try:
        study = optuna.load_study(study_name="killed", storage=f"sqlite:///{db}")
        return {t.number: (t.state.name, t.values) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    except (KeyError, sqlite3.OperationalError, Exception):
        return {}


def test_a_finite_space_ends_once_every_combination_ran(tmp_path):
    """num_samples above what a choices-only space holds: every distinct configuration trains once, then the
    search ends (a repeat would only reproduce a result: every trial trains with the space's seed)."""
    from search.space import load_space

    paper = load_space(smoke_space_file(tmp_path)).paper_params()
    # alpha 0.1 with the paper's other values is the paper trial itself; alpha 0.3 is the one other configuration.
    params = {"alpha": {"choices": [0.1, 0.3]}, "beta": paper["beta"], "tap_layer": paper["tap_layer"], "prior": paper["prior"]}
    space = smoke_space_file(tmp_path, num_samples=6, params=params)
    proc = start_tune([str(space), "--name", "finite", "--storage-path", str(tmp_path / "runs")])
    code, out, err = finish_tune(proc, timeout=1500)
    assert code == 0, err[-3000:]
    assert "every parameter combination of the space ran, so the search ended after 3 of num_samples 6 trials" in err
    assert json.loads(out.strip().splitlines()[-1])["exhausted"] is True
    rows = read_trials_csv(tmp_path / "runs" / "finite" / "trials.csv")
    assert sorted((r["role"], r["alpha"]) for r in rows) == [("baseline", 0.0), ("paper", 0.1), ("search", 0.3)]
    trials = _study(tmp_path / "runs" / "finite", "finite").get_trials(deepcopy=False)
    assert sum("ray_trial_id" in t.user_attrs for t in trials) == 3


def test_memorization_gap_as_a_third_objective_runs_to_the_end(tmp_path):
    """memorization/gap is measured only at a trial's final rung: as a third objective it must not stop the
    search at the first rung (Tune's strict metric check), and the study gets it as the third value of every
    COMPLETE trial, the one in trials.csv; a trial stopped before its final rung is PRUNED, with no made-up gap."""
    objectives = [
        {"metric": "val/pass@1", "mode": "max"},
        {"metric": "val/pass@2(2)", "mode": "max"},
        {"metric": "memorization/gap", "mode": "min"},
    ]
    space = smoke_space_file(tmp_path, num_samples=3, objectives=objectives)
    proc = start_tune([str(space), "--name", "gap", "--storage-path", str(tmp_path / "runs")])
    code, out, err = finish_tune(proc, timeout=1500)
    assert code == 0, err[-3000:]
    assert "SearchGenerator expects" not in err
    rows = {r["optuna_trial"]: r for r in read_trials_csv(tmp_path / "runs" / "gap" / "trials.csv")}
    trials = _study(tmp_path / "runs" / "gap", "gap").get_trials(deepcopy=False)
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert complete, [t.state for t in trials]
    for t in complete:
        assert len(t.values) == 3 and t.values[2] == pytest.approx(rows[t.number]["memorization/gap"])
    for t in trials:
        if t.state.name == "PRUNED":
            assert rows[t.number].get("memorization/gap") in (None, "")
