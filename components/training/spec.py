"""What one training run needs, passed from the driver to every Ray Train worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainSpec:
    method: str  # registry key in components.models.METHODS
    method_config: dict[str, Any]
    steps: int
    batch_size: int
    checkpoint_every: int
    log_every: int
    seed: int = 0
    upstream: dict[str, str] = field(default_factory=dict)  # upstream model dirs (edge GAN, DRE, prior)
    tracking_uri: str | None = None  # rank 0 logs metrics per step to this MLflow run
    mlflow_run_id: str | None = None
    progress: Any = None  # a components.progress.StageProgress, or None
    shuffle_buffer: int = 256
    ema_decay: float = 0.0  # 0: no moving average (components/training/ema.py)
    schedule: Any = None  # a components.training.schedule.ScheduleConfig; None: constant
    validation: Any = None  # a components.training.validation.ValidationSpec; None: no validation
    select: str = "last"  # "best": also keep the weights of the best validation by `select_metric`
    select_metric: str = "psnr"
    init_from: str | None = None  # a model directory URI the networks start from (fine-tuning)


CHECKPOINT_FILE = "checkpoint.pt"
