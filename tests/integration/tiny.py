"""A demo pipeline at test size: 32 px faces, a few dozen steps; what its training has checkpointed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import yaml

from components import storage
from pipelines.store import Store
from tests.integration.recipes import clamp_validation

DEMO = Path(__file__).parents[2] / "pipelines" / "configs" / "demo.yaml"


def write_tiny_config(directory: Path, steps: int = 60, **train) -> Path:
    raw = yaml.safe_load(DEMO.read_text())
    raw["name"] = "tiny"
    raw["store"] = str(directory / "store")
    raw["stages"]["synthesize"].update(source={"kind": "procedural", "count": 320}, shard_size=80, resolution=32)
    raw["stages"]["train_baseline"].update(steps=steps, batch_size=16, checkpoint_every=20, log_every=5,
                                           method_config={"width": 16, "depth": 2, "lr": 1.0e-3}, **train)
    clamp_validation(raw)
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


def wait_for_checkpoint(store: Store, run_name: str, every: int, steps: int, running: Callable[[], bool],
                        log: Callable[[], str] = lambda: "", timeout: float = 300) -> int:
    """The step of the first registered checkpoint (>= `every`) of a training of `steps` steps, to land
    a fault on; fails if the run ends first, reaches its last step first, or `timeout` passes. `log`:
    the run's output so far, shown with a failure."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        step = registered_checkpoint(store, run_name)
        if step >= every:
            assert step < steps, f"training reached its last step ({step}) before the fault: raise its steps"
            return step
        assert running(), f"the run ended before its first checkpoint:\n{log()[-4000:]}"
        time.sleep(0.3)
    raise AssertionError(f"no registered checkpoint of {run_name} in {store.train_storage()} within {timeout}s:\n{log()[-4000:]}")
