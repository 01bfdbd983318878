"""Learning-rate schedules: the factor each optimiser's configured lr is multiplied by at a step.

The factor is a pure function of (step, steps), so a resumed run continues its schedule where
it stopped with nothing of its own to checkpoint: the loop sets every parameter group's lr to
`base_lr * factor(step)` before each step, `base_lr` being the lr the method built it with.

Points in the schedule (`milestones`, `decay_from`) are fractions of the stage's `steps`, so
one schedule fits a CPU run of 300 steps and a GPU run of 200,000 alike.

- constant: 1 (EdgeConnect, StyleGAN2);
- cosine: from 1 down to `min_lr_ratio` over the steps after the warm-up (BasicSR's
  CosineAnnealingRestartLR with one period; Panini-Net);
- multistep: times `gamma` at each milestone (MoCo's lr / 10 at epochs 120 and 160 of 200);
- linear: 1 until `decay_from`, then straight down to `min_lr_ratio` at the last step
  (pix2pix / CUT / CTCNet's `lr_policy linear`).
A linear warm-up (`warmup_steps`) multiplies any of them, from 1 / warmup_steps up to 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:  # the train stage's config imports ScheduleConfig: no torch for a config load
    from torch.optim import Optimizer


class ScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["constant", "cosine", "multistep", "linear"] = "constant"
    warmup_steps: int = Field(0, ge=0, description="steps of linear warm-up from lr / warmup_steps to lr")
    milestones: list[float] = Field(default_factory=list,
                                    description="multistep: fractions of steps where the lr is multiplied by gamma")
    gamma: float = Field(0.1, gt=0, le=1, description="multistep: the factor at each milestone")
    decay_from: float = Field(0.5, ge=0, lt=1, description="linear: fraction of steps at full lr before the decay")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine, linear: the last step's lr / lr")

    @field_validator("milestones")
    @classmethod
    def _fractions_in_order(cls, milestones: list[float]) -> list[float]:
        if any(not 0 < m < 1 for m in milestones) or milestones != sorted(milestones):
            raise ValueError(f"milestones are fractions of steps in (0, 1), in increasing order; got {milestones}")
        return milestones

    @model_validator(mode="after")
    def _milestones_for_multistep(self) -> ScheduleConfig:
        if self.kind == "multistep" and not self.milestones:
            raise ValueError("a multistep schedule needs milestones (fractions of steps, e.g. [0.6, 0.8])")
        return self


def lr_factor(schedule: ScheduleConfig, step: int, steps: int) -> float:
    """The factor for the `step`-th step (1-based) of a run of `steps` steps."""
    warmup = min(1.0, step / schedule.warmup_steps) if schedule.warmup_steps else 1.0
    start = min(schedule.warmup_steps, steps)
    progress = 0.0 if steps <= start else min(1.0, max(0.0, (step - start) / (steps - start)))
    floor = schedule.min_lr_ratio
    if schedule.kind == "cosine":
        main = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule.kind == "multistep":
        main = schedule.gamma ** sum(step >= m * steps for m in schedule.milestones)
    elif schedule.kind == "linear":
        decay_start = schedule.decay_from * steps
        fraction = 0.0 if step <= decay_start else (step - decay_start) / max(steps - decay_start, 1)
        main = 1 - (1 - floor) * min(fraction, 1.0)
    else:
        main = 1.0
    return warmup * main


class LrSchedule:
    """Sets each optimiser's parameter groups to their built lr times the schedule's factor."""

    def __init__(self, schedule: ScheduleConfig, steps: int, optimizers: Mapping[str, Optimizer]):
        self.schedule, self.steps = schedule, steps
        self.optimizers = dict(optimizers)
        # Read before a checkpoint is loaded: the saved param groups hold an already scaled lr.
        self.base = {name: [group["lr"] for group in opt.param_groups] for name, opt in self.optimizers.items()}

    def apply(self, step: int) -> float:
        factor = lr_factor(self.schedule, step, self.steps)
        for name, opt in self.optimizers.items():
            for group, base in zip(opt.param_groups, self.base[name], strict=True):
                group["lr"] = base * factor
        return factor
