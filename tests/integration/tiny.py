"""A demo pipeline at test size: 32 px faces, a few dozen steps."""

from __future__ import annotations

from pathlib import Path

import yaml

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
