"""The one training loop (a Ray Train `train_func`): every method trains through it.

It owns device placement, DDP wrapping of `method.networks()`, bf16 autocast on GPU,
checkpoint save / resume (`ray.train.get_checkpoint()`), `ray.train.report`, MLflow
metrics from rank 0 and live progress. A method owns only its maths (`training_step`).

Rank 0's MLflow metrics go through a background sender (components/tracking/buffered.py):
a tracking server that is down never stalls or fails training; the last report carries
`tracking_sent`, `tracking_dropped` and `tracking_unreachable_s`.

bf16 needs no gradient scaler (its exponent range is fp32's), so none is used; fp16 is not
offered.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch.nn.parallel import DistributedDataParallel

from components.models import build_method
from components.models.base import Method
from components.training import checkpoint
from components.training.spec import TrainSpec

# The unpaired stream's shuffle seeds are far from the paired stream's (seed + epoch).
UNPAIRED_SEED_OFFSET = 1_000_003


def train_loop(config: dict[str, Any]) -> None:
    spec: TrainSpec = config["spec"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if spec.progress is not None:
        spec.progress.ran_on_this_node()
    torch.manual_seed(spec.seed * 1000 + rank)
    device = ray.train.torch.get_device()
    method = build_method(spec.method, spec.method_config, spec.upstream)
    place_networks(method, device)
    start = resume(method)
    wrap_for_ddp(method, device, world)
    logger = MetricLogger(spec) if rank == 0 else None
    if logger and start:
        logger.progress(start, {}, resumed_from=start)
    batches = endless_batches(ray.train.get_dataset_shard("train"), spec, device)
    if getattr(method, "unpaired", ()):
        unpaired = endless_batches(ray.train.get_dataset_shard("unpaired"), spec, device, seed_offset=UNPAIRED_SEED_OFFSET)
        batches = with_unpaired(batches, unpaired)
    metrics: dict[str, float] = {}
    step = start
    while step < spec.steps:
        batch, epoch = next(batches)
        step += 1
        with autocast(device):
            metrics = method.training_step(batch, step)
        if logger:
            logger.add(metrics)
            if step % spec.log_every == 0 or step == spec.steps:
                logger.log(step, epoch=epoch, resumed_from=start)
        if step % spec.checkpoint_every == 0 or step == spec.steps:
            # The last report waits for rank 0's queued metrics (bounded), so its counts are final.
            last = step == spec.steps and logger is not None
            report(method, step, metrics, start, rank, logger.finish() if last else None)
    if step == start:  # resumed after the last step: hand the final checkpoint back again
        report(method, step, metrics, start, rank, logger.finish() if logger else None)


def place_networks(method: Method, device: torch.device) -> None:
    for net in method.networks().values():
        net.to(device)


def resume(method: Method) -> int:
    saved = ray.train.get_checkpoint()
    if saved is None:
        return 0
    with saved.as_directory() as directory:
        return checkpoint.apply(method, checkpoint.load(directory))


def wrap_for_ddp(method: Method, device: torch.device, world: int) -> None:
    """Replaces each trainable network by its DDP wrapper in the method's live dict."""
    if world < 2:
        return
    nets = method.networks()
    for name, net in list(nets.items()):
        if any(p.requires_grad for p in net.parameters()):
            ids = [device.index] if device.type == "cuda" else None
            nets[name] = DistributedDataParallel(net, device_ids=ids)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def endless_batches(shard: Any, spec: TrainSpec, device: torch.device,
                    seed_offset: int = 0) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
    """Epoch after epoch of this worker's shard; a fresh local shuffle each epoch."""
    epoch = 0
    while True:
        empty = True
        for batch in shard.iter_torch_batches(batch_size=spec.batch_size, drop_last=True, device=device,
                                              local_shuffle_buffer_size=spec.shuffle_buffer,
                                              local_shuffle_seed=spec.seed + seed_offset + epoch):
            empty = False
            yield batch, epoch
        if empty:
            raise ValueError(f"the training split yields no batch of {spec.batch_size} on this worker: "
                             "lower batch_size or synthesize more samples")
        epoch += 1


def with_unpaired(batches: Iterator[tuple[dict[str, torch.Tensor], int]],
                  unpaired: Iterator[tuple[dict[str, torch.Tensor], int]]) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
    """Each batch plus `unpaired_<column>` from a second, independently shuffled stream.

    For methods trained without paired ground truth (`Method.unpaired`): the real faces a
    discriminator sees must not be the faces whose masked copies the generator gets.
    """
    for (batch, epoch), (other, _) in zip(batches, unpaired):
        yield {**batch, **{f"unpaired_{key}": value for key, value in other.items()}}, epoch


def report(method: Method, step: int, metrics: dict[str, float], start: int, rank: int,
           tracking: dict[str, float] | None = None) -> None:
    """All ranks report (Ray Train expects it); only rank 0 writes the checkpoint. `tracking`: the
    MLflow sender's counts, in the report only (the checkpoint's metrics are the losses)."""
    values = {**metrics, **(tracking or {}), "step": step, "resumed_from": start}
    with tempfile.TemporaryDirectory() as directory:
        saved = None
        if rank == 0:
            checkpoint.save(checkpoint.capture(method, step, metrics), directory)
            saved = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(values, checkpoint=saved)


class MetricLogger:
    """Rank 0's MLflow metrics and live progress, every `log_every` steps.

    Each logged value is the mean over the steps since the last log (one minibatch's loss
    is too noisy to read a trend from; Lightning's progress bar shows a running mean for the same reason).
    """

    def __init__(self, spec: TrainSpec):
        self.spec = spec
        self.sums: dict[str, float] = {}
        self.count = 0
        self.sender = None
        if spec.tracking_uri and spec.mlflow_run_id:
            from components.tracking.buffered import flush_timeout_s, sender_for_run

            self.flush_s = flush_timeout_s()  # read now: a bad value fails the start, not the end, of training
            self.sender = sender_for_run(spec.tracking_uri, spec.mlflow_run_id)

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def log(self, step: int, **extra: Any) -> None:
        means = {key: total / max(self.count, 1) for key, total in self.sums.items()}
        self.sums, self.count = {}, 0
        if self.sender is not None:
            self.sender.put(means, step)  # queued: a server that is down costs training nothing
        self.progress(step, means, **extra)

    def finish(self) -> dict[str, float]:
        """Waits (FACERESTORE_TRACKING_FLUSH_S, 120 s by default) for the queued metrics to reach the
        server; the sender's counts, for the stage's metrics. Idempotent."""
        if self.sender is None:
            return {}
        waited = []

        def waiting(pending: int, unreachable_s: float) -> None:
            waited.append(pending)
            if self.spec.progress is not None:
                self.spec.progress.update(message=f"sending {pending} queued metrics to MLflow "
                                                  f"(unreachable for {unreachable_s:.0f} s)")

        sent = self.sender.close(self.flush_s, on_wait=waiting)
        if waited and self.spec.progress is not None:  # replace the waiting line with its outcome
            self.spec.progress.update(message=f"MLflow metrics: {sent.sent} sent, {sent.dropped} dropped")
        return sent.metrics()

    def progress(self, step: int, metrics: dict[str, float], **extra: Any) -> None:
        if self.spec.progress is not None:
            self.spec.progress.update(done=step, total=self.spec.steps, unit="steps", **metrics, **extra)
