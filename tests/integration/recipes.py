"""The recipe YAMLs under pipelines/configs at test size: 32 px, a few hundred faces, a few dozen steps."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.config import apply_settings

CONFIGS = Path(__file__).parents[2] / "pipelines" / "configs"


def write_tiny_recipe(name: str, directory: Path, settings: dict) -> Path:
    """`pipelines/configs/<name>.yaml` with `settings` (dotted keys, as a preset) applied and its
    store in `directory`; every train stage shrunk to `steps` of small batches on one worker."""
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    raw.pop("presets", None)
    raw["name"] = f"tiny-{name}"
    raw["store"] = str(directory / "store")
    raw = apply_settings(raw, settings)
    clamp_validation(raw)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train_settings(stages: list[str], steps: int = 30, batch_size: int = 8) -> dict:
    settings = {}
    for stage in stages:
        settings.update({f"{stage}.steps": steps, f"{stage}.batch_size": batch_size, f"{stage}.workers": 1,
                         f"{stage}.checkpoint_every": steps, f"{stage}.log_every": 10})
    return settings


def clamp_validation(raw: dict) -> None:
    """A stage's `val_every` cut to its (test-size) `steps`: validation still runs, at the end."""
    for stage in raw["stages"].values():
        if stage.get("val_every") and stage.get("steps"):
            stage["val_every"] = min(stage["val_every"], stage["steps"])
