"""The exact `ibft train` command of a trial: its checkpointed TrainConfig written as a YAML file.

The trial's own train_config.json (written by the training loop into every checkpoint) is the source, so
the file holds every field the trial trained with, not a re-derivation from the space. Only output_dir
changes, to RUN_DIR/reproduce/trial-N, so a reproduction never writes over the trial's checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from search.report.load import RunData, TrialRecord
from trainables.train.config import with_saved_ib_semantics


@dataclass
class Reproduction:
    """How to re-run one trial outside the search."""

    config_path: Path
    """The YAML TrainConfig written for it."""
    command: str
    """The shell command that trains it again."""
    note: Optional[str] = None
    """What differs from the search's run (data-parallel workers), if anything."""


def config_name(trial: TrialRecord) -> str:
    """File stem of a trial's reproduction config."""
    return f"trial-{trial.number}" if trial.number is not None else f"trial-{trial.trial_id}"


def write_reproductions(run: RunData, trials: list[TrialRecord], out_dir: Path) -> dict[str, Reproduction]:
    """Write out_dir/configs/<trial>.yaml for each trial with a checkpointed config; label -> Reproduction."""
    import yaml

    out: dict[str, Reproduction] = {}
    for trial in trials:
        if trial.train_config is None or trial.label in out:
            continue
        # A trial trained before ib.kl_reduction / ib.encoder_input existed gets them written out with the
        # values it trained with, so today's defaults cannot change what the command reproduces.
        config = with_saved_ib_semantics(dict(trial.train_config))
        config["output_dir"] = str((run.run_dir / "reproduce" / config_name(trial)).resolve())
        path = out_dir / "configs" / f"{config_name(trial)}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (
            f"# TrainConfig of trial {trial.label} ({trial.role}) of search {run.name}, from its checkpoint;\n"
            f"# only output_dir differs. Run: ibft train --config {path}\n"
        )
        path.write_text(header + yaml.safe_dump(config, sort_keys=True))
        note = None
        if run.workers > 1:
            grad_accum = int((config.get("optim") or {}).get("grad_accum") or 1)
            note = (
                f"the trial trained on {run.workers} data-parallel workers; one `ibft train` process matches its "
                f"global batch with --set optim.grad_accum={grad_accum * run.workers}"
            )
        out[trial.label] = Reproduction(config_path=path, command=f"ibft train --config {path}", note=note)
    return out
