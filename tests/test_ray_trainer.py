"""trainables/ray_trainer.py on a real local Ray cluster: this project's minimal Ray install runs no dashboard,
so the State API is down and the trainer leaves Ray Train's PlacementGroupCleaner out (Ray's own keeps it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["RAY_TRAIN_V2_ENABLED"] = "1"  # before ray.train is imported, as the search sets it
    import ray
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer
    from trainables.ray_trainer import IBTorchTrainer, state_api_available

    def names(cls):
        trainer = cls(lambda config: None, scaling_config=ScalingConfig(num_workers=1))
        return sorted(type(c).__name__ for c in trainer._create_default_callbacks())

    print(json.dumps({"state_api": state_api_available(), "ray": names(TorchTrainer), "ours": names(IBTorchTrainer)}))
    ray.shutdown()
    """
)


def test_cleaner_is_left_out_where_the_state_api_is_down():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["state_api"] is False
    assert "PlacementGroupCleanerCallback" in seen["ray"]
    assert seen["ours"] == [n for n in seen["ray"] if n != "PlacementGroupCleanerCallback"]
