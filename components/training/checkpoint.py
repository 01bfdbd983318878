"""Training checkpoints: networks + optimizers + step + RNG, plus rank 0's moving average,
validation history and best weights; written by us, loaded pickle-free.

Saved with torch.save but only ever loaded with `weights_only=True`: the file holds tensors,
numbers and strings, nothing that needs unpickling arbitrary classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.models.base import Method
from components.training.spec import CHECKPOINT_FILE


def unwrap(module: nn.Module) -> nn.Module:
    """The bare module under a DistributedDataParallel wrapper."""
    return getattr(module, "module", module)


def capture(method: Method, step: int, metrics: dict[str, float], kept: dict[str, Any] | None = None) -> dict[str, Any]:
    """`kept`: the training loop's Keeper state (`ema`, `val_history`, `best`); none off rank 0."""
    return {
        **(kept or {}),
        "step": step,
        "nets": {name: unwrap(net).state_dict() for name, net in method.networks().items()},
        "opts": {name: opt.state_dict() for name, opt in method.optimizers().items()},
        "torch_rng": torch.get_rng_state(),
        "metrics": dict(metrics),
    }


def save(state: dict[str, Any], directory: str | Path) -> Path:
    path = Path(directory, CHECKPOINT_FILE)
    torch.save(state, path)
    return path


def load(directory: str | Path) -> dict[str, Any]:
    return torch.load(Path(directory, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


def apply(method: Method, state: dict[str, Any]) -> int:
    """Loads a checkpoint into a method whose networks are already on their device; returns the step."""
    for name, net in method.networks().items():
        unwrap(net).load_state_dict(state["nets"][name])
    for name, opt in method.optimizers().items():
        opt.load_state_dict(state["opts"][name])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def exported_weights(state: dict[str, Any], select: str) -> tuple[dict[str, dict], dict[str, dict], int, dict[str, float]]:
    """From a final checkpoint: (every network as it is exported, the live weights of the averaged
    networks, the step they are from, their validation scores). `select` "best": the best
    validation's weights when there was one; else the last step's, averaged networks replaced
    by their moving average."""
    best = state.get("best")
    if select == "best" and best:
        return best["nets"], best["raw"], int(best["step"]), dict(best["scores"])
    averaged = (state.get("ema") or {}).get("nets", {})
    nets = {**state["nets"], **averaged}
    history = state.get("val_history") or []
    last_scores = {k: v for k, v in history[-1].items() if k != "step"} if history and history[-1]["step"] == state["step"] else {}
    return nets, {name: state["nets"][name] for name in averaged}, int(state["step"]), last_scores
