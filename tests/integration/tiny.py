"""A demo pipeline at test size: 32 px faces, a few dozen steps; what its training has checkpointed."""

from __future__ import annotations

from pathlib import Path

import yaml

from components import storage
from pipelines.store import Store

DEMO = Path(__file__).parents[2] / "pipelines" / "configs" / "demo.yaml"


def write_tiny_config(directory: Path, steps: int = 60, **train) -> Path:
    raw = yaml.safe_load(DEMO.read_text())
    raw["name"] = "tiny"
    raw["store"] = str(directory / "store")
    raw["stages"]["synthesize"].update(source={"kind": "procedural", "count": 320}, shard_size=80, resolution=32)
    raw["stages"]["train_baseline"].update(steps=steps, batch_size=16, checkpoint_every=20, log_every=5,
                                           method_config={"width": 16, "depth": 2, "lr": 1.0e-3}, **train)
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def registered_checkpoint(store: Store, run_name: str) -> int:
    """The step of the latest checkpoint Ray Train's controller has registered for `run_name` in
    `store` (local or S3); 0: none yet.

    A checkpoint directory appears before its report reaches the controller; only a registered one
    is what a restarted worker group or a rerun gets back, so a fault waits for this one.
    """
    uri = storage.join(store.train_storage(), run_name, "checkpoint_manager_snapshot.json")
    try:
        latest = storage.read_json(uri).get("latest_checkpoint_result") or {}
    except (OSError, ValueError):
        return 0  # not written yet, or being replaced
    return int(latest.get("metrics", {}).get("step", 0))
