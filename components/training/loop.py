"""The one training loop (a Ray Train `train_func`): every method trains through it.

It owns device placement, DDP wrapping of `method.networks()`, bf16 autocast on GPU, the
learning-rate schedule, the moving average of the weights, validation and the best weights
(rank 0), fine-tuning's start, checkpoint save / resume (`ray.train.get_checkpoint()`),
`ray.train.report`, MLflow metrics from rank 0 and live progress. A method owns only its
maths (`training_step`).

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
from components.training import checkpoint, finetune
from components.training.ema import WeightAverage
from components.training.schedule import LrSchedule, ScheduleConfig
from components.training.spec import TrainSpec
from components.training.validation import BestWeights, Validator

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
    schedule = LrSchedule(spec.schedule or ScheduleConfig(), spec.steps, method.optimizers())
    saved = saved_checkpoint()
    source = None
    if saved is None and spec.init_from is not None:
        source = finetune.read_source(spec.init_from)
        finetune.start_from(method, source)
    start = checkpoint.apply(method, saved) if saved is not None else 0
    # Rank 0 alone averages, validates and keeps the best: it alone writes the checkpoint.
    keeper = Keeper(spec, method, device, saved, source) if rank == 0 and Keeper.needed(spec) else None
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
        lr_factor = schedule.apply(step)
        with autocast(device):
            metrics = method.training_step(batch, step)
        if keeper:
            keeper.average.update()
            scores = keeper.validate(step)
            if scores:
                logger.log_now(step, {f"val/{key}": value for key, value in scores.items()}, val=keeper.summary(scores, step))
        if logger:
            logger.add({**metrics, "lr_factor": lr_factor})
            if step % spec.log_every == 0 or step == spec.steps:
                logger.log(step, epoch=epoch, resumed_from=start)
        if step % spec.checkpoint_every == 0 or step == spec.steps:
            # The last report waits for rank 0's queued metrics (bounded), so its counts are final.
            last = step == spec.steps and logger is not None
            report(method, step, metrics, start, rank, keeper, logger.finish() if last else None)
    if step == start:  # resumed after the last step: hand the final checkpoint back again
        report(method, step, metrics, start, rank, keeper, logger.finish() if logger else None)


def saved_checkpoint() -> dict[str, Any] | None:
    saved = ray.train.get_checkpoint()
    if saved is None:
        return None
    with saved.as_directory() as directory:
        return checkpoint.load(directory)


class Keeper:
    """Rank 0's moving average of the weights, its validation and the best weights so far; all
    three go into the checkpoint, so a resumed run keeps them."""

    def __init__(self, spec: TrainSpec, method: Method, device: torch.device, saved: dict[str, Any] | None,
                 source: finetune.SourceWeights | None):
        self.spec, self.method = spec, method
        with torch.random.fork_rng(devices=[]):  # the copy's random init must not move the training's RNG
            shadow = build_method(spec.method, spec.method_config, spec.upstream)
        place_networks(shadow, device)
        self.average = WeightAverage(method, shadow, spec.ema_decay)
        self.validator = Validator(spec.validation, method, device) if spec.validation is not None else None
        self.best = BestWeights(spec.select_metric) if spec.select == "best" else None
        self.history: list[dict[str, Any]] = []
        if saved is not None:
            self.average.load(saved.get("ema", {"updates": 0, "nets": {}}))
            self.history = list(saved.get("val_history", []))
            if self.best is not None and saved.get("best"):
                self.best = BestWeights.from_state(saved["best"])
        elif source is not None:
            for name, state in finetune.averaged_start(source, self.average.names).items():
                shadow.nets[name].load_state_dict(state)

    @staticmethod
    def needed(spec: TrainSpec) -> bool:
        return spec.ema_decay > 0 or spec.validation is not None

    def validate(self, step: int) -> dict[str, float] | None:
        if self.validator is None or not self.validator.due(step, self.spec.steps):
            return None
        exported = self.average.sync()
        scores = self.validator.score(exported)
        self.history.append({"step": step, **scores})
        if self.best is not None:
            self.best.offer(step, scores, exported, self.method, self.average.names)
        return scores

    def summary(self, scores: dict[str, float], step: int) -> str:
        """The live view's line: the score that selects the weights (else the first), at which step."""
        metric = self.spec.select_metric if self.spec.select_metric in scores else next(iter(scores))
        best = f", best {self.best.score:.4g} @ {self.best.step}" if self.best is not None and self.best.score is not None else ""
        return f"{metric} {scores[metric]:.4g} @ {step}{best}"

    def state(self) -> dict[str, Any]:
        return {"ema": self.average.state(), "val_history": self.history,
                "best": self.best.state() if self.best is not None and self.best.score is not None else None}


def place_networks(method: Method, device: torch.device) -> None:
    for net in method.networks().values():
        net.to(device)


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


def report(method: Method, step: int, metrics: dict[str, float], start: int, rank: int, keeper: Keeper | None,
           tracking: dict[str, float] | None = None) -> None:
    """All ranks report (Ray Train expects it); only rank 0 writes the checkpoint, with its
    keeper's average, validation history and best weights. `tracking`: the MLflow sender's
    counts, in the report only (the checkpoint's metrics are the losses)."""
    values = {**metrics, **(tracking or {}), "step": step, "resumed_from": start}
    with tempfile.TemporaryDirectory() as directory:
        saved = None
        if rank == 0:
            checkpoint.save(checkpoint.capture(method, step, metrics, keeper.state() if keeper else None), directory)
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
        self.log_now(step, means, **extra)

    def log_now(self, step: int, values: dict[str, float], **extra: Any) -> None:
        """`values` as they are (validation scores): to MLflow at `step` and into the live view."""
        if self.sender is not None:
            self.sender.put(values, step)  # queued: a server that is down costs training nothing
        self.progress(step, values, **extra)

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
