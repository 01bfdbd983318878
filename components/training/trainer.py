"""Starts the one training loop on Ray Train and hands back its final state.

The run name is chosen by the caller (the pipeline derives it from the stage fingerprint):
the same `RunConfig(storage_path, name)` after a crash makes Ray Train V2 hand the latest
checkpoint to `ray.train.get_checkpoint()`, so the run continues instead of starting over.
`storage_path` is any store URI; Ray Train gets the filesystem `components.storage` builds for
it, so checkpoints reach the same S3-compatible endpoint as the rest of the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components import storage
from components.training import checkpoint
from components.training.loop import train_loop
from components.training.spec import TrainSpec


@dataclass(frozen=True)
class Placement:
    workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    max_failures: int = 2  # worker-group restarts from the last checkpoint before giving up


@dataclass(frozen=True)
class FitResult:
    state: dict[str, Any]  # the final checkpoint (see components.training.checkpoint)
    metrics: dict[str, Any]  # the last report: losses, step, resumed_from


def fit(spec: TrainSpec, datasets: dict[str, Any], storage_path: str, run_name: str, placement: Placement) -> FitResult:
    """`datasets`: "train" (and "unpaired" for a method with `unpaired` columns), Ray Data datasets."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    filesystem, path = storage.resolve(storage_path)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(num_workers=placement.workers, use_gpu=placement.use_gpu,
                                     resources_per_worker={"CPU": placement.cpus_per_worker}),
        datasets=datasets,
        run_config=RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=placement.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run '{run_name}' finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        state = checkpoint.load(directory)
    return FitResult(state=state, metrics=dict(result.metrics or {}))
