"""Validation while training: rank 0 scores a bounded slice of the `val` split every `val_every`
steps, and keeps the best weights by one named metric for `select: best`.

The scores are the task's own (components/tasks: PSNR, SSIM, L1; the in-hole PSNR / L1 for
inpainting; edge precision / recall / F1 for the edge GAN), or a method's own where its task
scores no images (`Method.validation_scores`: the DRE's k-NN accuracy). They are computed on
the weights that would be exported (the EMA, components/training/ema.py), in fp32, with the
first `val_images` samples of the split, the same ones each time, in batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from components.metrics.report import LOWER_IS_BETTER
from components.metrics.scoring import mean_scores, read_scored_split
from components.models.base import Method


@dataclass(frozen=True)
class ValidationSpec:
    every: int
    images: int
    shard_uris: tuple[str, ...]
    batch_size: int = 16
    split: str = "val"


def validation_columns(method: Method) -> tuple[str, ...]:
    """The shard columns `method`'s validation reads."""
    from components.tasks import task_of

    if method.validation_columns:
        return method.validation_columns
    scoring = task_of(method).scoring
    if scoring is None:
        raise ValueError(f"method '{method.name}' (task '{method.task}') has no validation scores: "
                         "its task scores no images and the method defines none")
    return scoring.columns


class Validator:
    """Rank 0's slice of the val split, on the training device, and how to score a method on it."""

    def __init__(self, spec: ValidationSpec, method: Method, device: torch.device):
        self.spec = spec
        data, self.groups = read_scored_split(list(spec.shard_uris), spec.split, validation_columns(method),
                                              limit=spec.images, where="the training stage's shards")
        self.data = {key: value.to(device) for key, value in data.items()}

    def due(self, step: int, steps: int) -> bool:
        return step % self.spec.every == 0 or step == steps

    def score(self, method: Method) -> dict[str, float]:
        from components.tasks import task_of

        with method.evaluating():
            own = method.validation_scores(self.data, self.groups)
            if own is not None:
                return own
            scoring = task_of(method).scoring
            out = scoring.restore(method, self.data, self.spec.batch_size)
            return mean_scores(scoring.score(out, self.data))


def is_better(metric: str, score: float, best: float | None) -> bool:
    if best is None or best != best:  # none yet, or NaN
        return score == score
    return score < best if metric in LOWER_IS_BETTER else score > best


@dataclass
class BestWeights:
    """The best validation so far by `metric`, with the weights it was scored on (CPU copies):
    `nets`, every network as it would be exported; `raw`, the live weights of the averaged ones."""

    metric: str
    step: int = 0
    score: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    nets: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def offer(self, step: int, scores: dict[str, float], exported: Method, live: Method, averaged: tuple[str, ...]) -> bool:
        """Keeps these weights if `scores[metric]` beats the best so far; whether it did."""
        if self.metric not in scores:
            raise KeyError(f"select metric '{self.metric}' is not among the validation scores "
                           f"({', '.join(sorted(scores))})")
        if not is_better(self.metric, scores[self.metric], self.score):
            return False
        self.step, self.score, self.scores = step, scores[self.metric], dict(scores)
        self.nets = {name: cpu_copy(exported.unwrapped(name).state_dict()) for name in exported.networks()}
        self.raw = {name: cpu_copy(live.unwrapped(name).state_dict()) for name in averaged}
        return True

    def state(self) -> dict[str, Any]:
        return {"metric": self.metric, "step": self.step, "score": self.score, "scores": self.scores,
                "nets": self.nets, "raw": self.raw}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BestWeights:
        return cls(**state)


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def can_validate(method: type[Method], cfg: Any) -> bool:
    """Whether a method class with config `cfg` has validation scores: its task's, or its own."""
    from components.tasks import task_named

    return bool(method.validation_columns) or task_named(method.task_for(cfg)).scoring is not None
