"""The Task contract: what a method of one task is fed in training, evaluation and inference.

A task is one frozen object (the six are in components/tasks/__init__.py); the train stage,
the evaluate stage, `facerestore restore` and the MLflow pyfunc model read these fields and
never compare a task's name. Every tensor is float32 NCHW in [0, 1]; `mask` is (N, 1, H, W)
with 1 = missing pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from components.models.base import Method, MethodConfig, NotARestorer

Batch = dict[str, Tensor]
# What `Method.restore` gets as `mask` at inference: none at all; an all-zero one unless a mask
# is given (a blind restorer may also take holes); the user's holes, required.
MaskUse = Literal["none", "zeros", "holes"]


@dataclass(frozen=True)
class Scoring:
    """How the evaluate stage scores a task's methods on a shard split."""

    columns: tuple[str, ...]  # shard columns the scoring reads
    method_batch: Callable[[Batch], Batch]  # what Method.restore is given, from the split's columns
    target: Callable[[Batch], Tensor]
    score: Callable[[Tensor, Batch], dict[str, Tensor]]  # per-image values, (N,) each
    baselines: dict[str, Callable[[Batch], Tensor]] = field(default_factory=dict)
    breakdown: str | None = None  # per-sample group the report splits the scores by (`metrics.scoring.sample_groups`)
    learned_metrics: bool = True  # LPIPS / FID / identity apply: the outputs are face images

    def restore(self, method: Method, data: Batch, batch_size: int) -> Tensor:
        """`method`'s outputs on the whole split, `batch_size` samples at a time, clamped to [0, 1],
        on the device of `data`."""
        batch = self.method_batch(data)
        count = len(next(iter(batch.values())))
        outs = [method.restore({k: v[start:start + batch_size] for k, v in batch.items()}).float().to(batch_device(data))
                for start in range(0, count, batch_size)]
        return torch.cat(outs).clamp(0, 1)


def batch_device(data: Batch) -> torch.device:
    return next(iter(data.values())).device


@dataclass(frozen=True, eq=False)  # eq=False: compared and hashed by identity, one object per task
class Task:
    name: str  # what Method.task and config.json's "task" hold
    # Training: the shard columns every method of the task reads, and those a method may add
    # (declared in its `inputs`).
    train_columns: tuple[str, ...]
    optional_columns: tuple[str, ...] = ()
    # Inference: the batch key the photo goes into (None: the task takes no image, its
    # models are upstream material), what `mask` is, and what the output is.
    image_input: str | None = None
    mask: MaskUse = "none"
    keeps_known: bool = False  # the output is the photo's known pixels with only the holes filled
    scales: bool = False  # the output is config.json `data.sr_factor` times larger than the input
    restores_photos: bool = False  # `facerestore restore` accepts its models
    scoring: Scoring | None = None  # None: not scored as images by the evaluate stage
    # The validation score `select: best` picks a model's weights by, unless the stage names one.
    selected_by: str | None = None
    # The scoring protocol of the papers of this task (components/metrics/protocols.py), which the
    # evaluate stage scores the task by beside the project's own; a method may name its own
    # (`Method.paper_protocol`). None: no paper protocol (the task's outputs are not images).
    paper_protocol: str | None = None

    def __repr__(self) -> str:
        return f"Task({self.name!r})"

    @property
    def needs_mask(self) -> bool:
        return self.mask == "holes"

    def training_columns(self, method: type[Method], cfg: MethodConfig) -> tuple[str, ...]:
        """The shard columns `method` (a class) trains on with `cfg`: its own `columns(cfg)`,
        checked against this task, so a method cannot silently train on another task's data."""
        columns = tuple(method.columns(cfg))
        missing = [c for c in self.train_columns if c not in columns]
        foreign = [c for c in columns if c not in (*self.train_columns, *self.optional_columns)]
        if missing or foreign:
            raise ValueError(
                f"method '{method.name}' (task '{self.name}') reads columns {list(columns)}: a {self.name} "
                f"method reads {list(self.train_columns)} and may add {list(self.optional_columns)}"
                + (f"; missing {missing}" if missing else "") + (f"; not of this task {foreign}" if foreign else ""))
        return columns

    def inference_batch(self, image: Tensor, holes: Tensor | None = None) -> Batch:
        """What `Method.restore` gets at inference from an image (N, 3, h, w) and, for a task that
        takes holes, the holes (N, 1, h, w)."""
        if self.image_input is None:
            raise NotARestorer(f"a '{self.name}' model takes no image: it is upstream material for another method")
        batch = {self.image_input: image}
        if self.mask == "holes":
            if holes is None:
                raise ValueError(f"a '{self.name}' model needs the holes: give a 'mask' (N, 1, H, W), 1 = missing")
            batch["mask"] = holes
        elif self.mask == "zeros":
            n, _, height, width = image.shape
            batch["mask"] = holes if holes is not None else torch.zeros(n, 1, height, width)
        return batch
