"""The Ray side of an object-store RUN_DIR (search.storage): keeping the URI in step during a search, and checking
before any trial starts that every node can write there.
"""
from __future__ import annotations

import sys
import time
import zlib
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from search import storage
from trainables import storage as fs
from trainables.errors import ConfigError


class RunSync(Callback):
    """Tune callback of a search whose RUN_DIR is a URI: uploads a consistent snapshot of the Optuna study after
    every change of it (checked at the end of each step of Tune's loop, which is where the searcher asks and tells,
    and at every trial end), and the offline W&B runs when a trial ends and when the experiment ends.

    A change is seen from the file's size and mtime, and, while the file is younger than a second (two commits in
    one mtime tick of the same size), from its checksum.
    """

    def __init__(self, run_dir: Path) -> None:
        self._run_dir = Path(run_dir)
        self._seen: Optional[tuple] = None
        self._failures = 0

    def __getstate__(self) -> dict:  # pickled into Tune's tuner.pkl: the next resume uploads again at once
        return {"_run_dir": self._run_dir, "_seen": None, "_failures": 0}

    def _fingerprint(self) -> Optional[tuple]:
        db = self._run_dir / "optuna.db"
        try:
            st = db.stat()
        except FileNotFoundError:
            return None
        key: tuple = (st.st_mtime_ns, st.st_size)
        if time.time() - st.st_mtime < 1.0:
            key += (zlib.crc32(db.read_bytes()),)
        return key

    def sync_study(self, force: bool = False) -> None:
        key = self._fingerprint()
        if key is None or (key == self._seen and not force):
            return
        try:
            storage.upload_study(self._run_dir)
        except Exception as e:  # a transient store error must not stop the search: it is retried at the next step
            self._failures += 1
            if self._failures in (1, 10, 100):
                print(f"warning: uploading the Optuna study to {storage.location(self._run_dir)} failed "
                      f"({storage.one_line(e)}); retrying", file=sys.stderr, flush=True)
            return
        self._failures = 0
        self._seen = key

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.sync_study()

    # No on_trial_result: it uploaded a snapshot of the whole study for every result, inside Tune's per-result
    # processing; the searcher's writes for a result (ask/tell, intermediate values) happen in the same step of
    # Tune's loop, and on_step_end uploads them right after, once for all the step's results.

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sync_study()
        self._wandb()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sync_study()
        self._wandb()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.sync_study(force=True)
        self._wandb()

    def _wandb(self) -> None:
        # Only the files that changed since this callback last uploaded them (size, mtime): storage.upload_wandb
        # copies the whole wandb/ tree, every run of the search so far, and this runs at every trial end, so the
        # driver's uploads per trial grew with the number of trials (O(trials^2) over a search).
        uri = storage.remote_of(self._run_dir)
        root = self._run_dir / "wandb"
        if uri is None or not root.is_dir():
            return
        uploaded = self.__dict__.setdefault("_wandb_uploaded", {})  # (setdefault: not in tuner.pkl's state)
        now: dict[str, tuple] = {}

        def skip(rel: str) -> bool:
            if rel.endswith(".lock"):
                return True
            try:
                st = (root / rel).stat()
            except OSError:
                return True  # gone since it was listed
            now[rel] = (st.st_mtime_ns, st.st_size)
            return uploaded.get(rel) == now[rel]

        try:
            fs.upload_tree(root, fs.join(uri, "wandb"), skip=skip)
        except Exception as e:  # nothing recorded: the next call uploads the changed files again
            print(f"warning: uploading W&B runs failed ({storage.one_line(e)})", file=sys.stderr, flush=True)
            return
        uploaded.update(now)


PROBE_TIMEOUT_S = 120.0


def _probe(target: str) -> Optional[str]:
    """Run on one node: write, read back and delete `target`; None, or why it failed."""
    try:
        fs.write_text(target, "ok")
        if fs.read_text(target) != "ok":
            return "the probe file written there reads back differently"
        fs.remove(target)
        return None
    except Exception as e:
        return storage.one_line(e)


def _probe_shared(target: str) -> Optional[str]:
    """Run on one node of a search on a local path: the driver's probe file must be visible (a shared mount)."""
    try:
        if fs.read_text(target) != "ok":
            return "not the driver's filesystem: a file the driver wrote there is missing (mount a shared filesystem on every node, or use an object-store URI)"
        return None
    except Exception as e:
        return storage.one_line(e)


def check_nodes_can_write(run_dir: Path, address: Optional[str]) -> None:
    """Before any trial: every alive node of the cluster can write the run's storage (a URI), or sees the driver's run
    directory (a local path on a multi-node cluster). Raises one-line ConfigError naming the path and the node."""
    import socket
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    uri = storage.remote_of(run_dir)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if uri is None and (address is None or len(nodes) <= 1):
        return  # this machine's private cluster, or one node: the driver's own directory is every trial's
    token = uuid.uuid4().hex[:8]
    base = uri if uri is not None else str(run_dir.resolve())
    probe_dir = fs.join(base, ".ibft-probe")
    shared_file = None
    if uri is None:
        shared_file = fs.join(probe_dir, f"driver-{token}")
        fs.write_text(shared_file, "ok")
    remote_probe = ray.remote(num_cpus=0)(_probe if uri is not None else _probe_shared)
    refs = []
    for node in nodes:
        target = fs.join(probe_dir, f"node-{node['NodeID'][:12]}-{token}") if uri is not None else shared_file
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        refs.append((node, remote_probe.options(scheduling_strategy=strategy).remote(target)))
    try:
        for node, ref in refs:
            try:
                error = ray.get(ref, timeout=PROBE_TIMEOUT_S)
            except Exception as e:
                error = f"the probe task did not run there ({storage.one_line(e)})"
            if error:
                where = node.get("NodeManagerAddress") or node.get("NodeManagerHostname") or "?"
                ray.shutdown()
                raise ConfigError(
                    f"--storage-path {storage.location(run_dir)}: node {where} ({node['NodeID'][:12]}) cannot "
                    f"{'write' if uri is not None else 'see'} it: {error}"
                )
    finally:
        if shared_file is not None:
            try:
                fs.remove(shared_file)
                Path(probe_dir).rmdir()  # only if empty: another search's probe may be there
            except OSError:
                pass
    verb = "can write" if uri is not None else "see"
    print(f"storage: all {len(nodes)} node(s) {verb} {storage.location(run_dir)}", file=sys.stderr, flush=True)
