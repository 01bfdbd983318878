"""Seconds per training step of the one training loop on Ray Train (one worker) against a bare
PyTorch loop of the same method, on the same samples, in one run; and what Ray Train costs
before the first step and after the last.

Ours is what a training stage runs: `components.training.trainer.fit` with a `TrainSpec`, one
Ray Train worker of one CPU, the split read through `components.data.ray_dataset.shard_dataset`
(kept in the object store PNG-encoded, decoded by Ray Data each epoch). The baseline is the
plain loop one would write without Ray: `build_method` and `method.training_step` in this
process, on the same split read from the same Parquet shards and decoded once, reshuffled each
epoch, the same batch size and the same torch thread count as the Ray worker had (Ray gives a
1-CPU worker one thread; on two threads the bare loop would win by using both cores). The runs
alternate, bare first and last (bare, Ray Train, bare with --quick; two Ray Train runs without):
each ratio is a Ray Train run's figure over the mean of the bare runs either side of it, so load
that drifts over the run cancels out, and the median of those; the bare runs' own spread, in
the note, says how far the machine's load moved. The Ray started here runs its workers at nice 0, as this process runs (Ray's default, 15,
would hand the worker's CPU to any other job on a shared machine and time that instead).

The spec is `TrainSpec`'s defaults beyond the sizes: no moving average, no validation, a
constant lr. Those are the loop's own work, which a bare loop with the same features would do
too (a stage's default `ema_decay`, 0.999, adds one weight update to each step: not Ray's cost).

Both loops report each step to the same sink through the loop's own progress hook
(`TrainSpec.progress`, called every `log_every` = 1 steps on rank 0): it stamps the wall-clock
time at the end of each step and sends it, fire-and-forget, to a small actor, so both pay the
same for being timed. Per step: (t_N - t_WARMUP) / (N - WARMUP), lazy initialisation and Ray
Data's first read left out, epoch starts counted (row "epoch start s": what the first step of
an epoch takes over the median step, each); the median step is beside it. "CPU s/step": the
same window in CPU seconds of the training process (all its threads: Ray's own and Ray Data's
iterator ones too, not the decode tasks' processes; the bare side's holds this driver's Ray
threads), which other work on the machine moves less than the wall clock but still moves
(measured 1.02-1.26 under a load of 20-60 on 2 cores, 0.94-1.02 quiet). Checkpoints: only the
last step's, so the per-step figure has none and each shut-down has one. Start-up: from the
`fit()` call (bare: from building the method) to the end of step 1. Shut-down: from the end of
the last step to `fit()` returning with the final checkpoint loaded (bare: the same checkpoint
saved and read back). Ratio: Ray Train's s per step over the bare loop's; target <= 1.05.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

RESOLUTION, BATCH, SHARD_SIZE = 64, 8, 160
WARMUP = 20  # steps left out of the per-step figure, in both loops
TARGET = 1.05  # the bound on ray / bare per step
# method -> its method_config: the demo's baseline at 64 px, and CAFIN as pipelines/configs/inpaint.yaml trains it
METHODS: dict[str, dict[str, Any]] = {
    "baseline": {"width": 24, "depth": 2, "lr": 1.0e-3},
    "cafin": {"width": 16, "depth": 3, "refine_width": 16, "residual_blocks": 2, "attention_heads": 2,
              "d_width": 16, "lr": 1.0e-3},
}


def run(quick: bool) -> list[dict]:
    faces, steps, rounds = (320, 40, 1) if quick else (640, 160, 2)
    started_here = not ray.is_initialized()
    if started_here:  # as pipelines/runner.connect_ray starts a local Ray, its workers at this process's nice 0
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _system_config={"worker_niceness": 0})
        quiet_ray_data()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            from benchmarks.bench_training_input import write_shards

            uris = write_shards(Path(tmp) / "shards", faces, RESOLUTION, SHARD_SIZE)
            threads = ray_worker_threads()
            for name, config in METHODS.items():
                # bare, Ray Train, bare, ...: each Ray Train run is compared with the bare runs either side of it
                bares, rays = [bare_loop(name, config, uris, steps, threads)], []
                for round_ in range(rounds):
                    rays.append(ray_train(name, config, uris, steps, Path(tmp) / "ray_train", f"{name}-{round_}"))
                    if rays[-1]["threads"] != threads:
                        raise RuntimeError(f"the Ray Train worker ran {rays[-1]['threads']} torch threads, a 1-CPU "
                                           f"Ray task {threads}: the bare loop would not match it")
                    bares.append(bare_loop(name, config, uris, steps, threads))
                rows += result_rows(name, steps, rays, bares)
    finally:
        if started_here:
            ray.shutdown()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    rows.append({"method": "all", "note": f"load avg {load} on {os.cpu_count()} CPUs at the end"})
    return rows


def ray_worker_threads() -> int:
    """The torch threads of a 1-CPU Ray worker (Ray sets OMP_NUM_THREADS to its CPUs): the bare
    loop's, checked against the Ray Train worker's own count after its run."""
    return ray.get(ray.remote(num_cpus=1)(torch_threads).remote())


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def quiet_ray_data() -> None:
    import logging

    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


@ray.remote(num_cpus=0)
class StepTimes:
    """Where `StepClock` sends its stamps: step -> wall-clock time at its end, and its epoch."""

    def __init__(self) -> None:
        self.stamps: dict[int, float] = {}
        self.cpu: dict[int, float] = {}  # the training process's CPU seconds (all its threads) so far
        self.epochs: dict[int, int] = {}
        self.threads = self.nice = 0

    def record(self, step: int, at: float, cpu: float, epoch: int | None) -> None:
        self.stamps[step], self.cpu[step] = at, cpu  # a step logged twice (validation, then losses): its last
        if epoch is not None:
            self.epochs[step] = epoch

    def ran_with(self, threads: int, nice: int) -> None:
        self.threads, self.nice = threads, nice

    def read(self) -> dict[str, Any]:
        return {"stamps": self.stamps, "cpu": self.cpu, "epochs": self.epochs, "threads": self.threads, "nice": self.nice}


class StepClock:
    """A `TrainSpec.progress` sink: stamps each logged step here, sends it without waiting."""

    def __init__(self, times: Any):
        self.times = times

    def update(self, **fields: Any) -> None:
        if "done" in fields:
            self.times.record.remote(int(fields["done"]), time.time(), time.process_time(), fields.get("epoch"))

    def ran_on_this_node(self) -> None:
        import torch

        self.times.ran_with.remote(torch.get_num_threads(), os.nice(0))


def ray_train(name: str, config: dict, uris: list[str], steps: int, storage_path: Path, run_name: str) -> dict[str, Any]:
    """One fit() of `steps` steps under a fresh run name (the same name would resume the last run)."""
    import torch

    from components.data.ray_dataset import shard_dataset
    from components.training.spec import TrainSpec
    from components.training.trainer import Placement, fit

    times = StepTimes.remote()
    spec = TrainSpec(method=name, method_config=config, steps=steps, batch_size=BATCH, checkpoint_every=steps,
                     log_every=1, progress=StepClock(times))
    datasets = {"train": shard_dataset(uris, "train", columns_of(name, config))}
    gpu = torch.cuda.is_available()
    called = time.time()
    fit(spec, datasets, str(storage_path), f"overhead-{run_name}", Placement(workers=1, use_gpu=gpu, max_failures=0))
    returned = time.time()
    read = wait_for_stamps(times, steps)
    ray.kill(times)
    return {**read, "called": called, "returned": returned}


def wait_for_stamps(times: Any, steps: int, timeout: float = 30) -> dict[str, Any]:
    """What `times` holds once it has all `steps` (the worker's last sends may land after fit() returns)."""
    deadline = time.time() + timeout
    while True:
        read = ray.get(times.read.remote())
        if len(read["stamps"]) >= steps or time.time() > deadline:
            missing = sorted(set(range(1, steps + 1)) - set(read["stamps"]))
            if missing:
                raise RuntimeError(f"no time stamp of steps {missing[:10]} from the training loop")
            return read
        time.sleep(0.1)


def bare_loop(name: str, config: dict, uris: list[str], steps: int, threads: int) -> dict[str, Any]:
    """The same method on the same split, in this process, on `threads` torch threads."""
    import torch

    from components.models import build_method

    arrays = split_arrays(uris, columns_of(name, config))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    times = StepTimes.remote()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        called = time.time()
        torch.manual_seed(0)
        method = build_method(name, config, {})
        for net in method.networks().values():
            net.to(device)
        step, metrics = bare_steps(method, arrays, steps, StepClock(times), device)
        with tempfile.TemporaryDirectory() as directory:  # what fit() ends with: the final checkpoint, read back
            save_and_load(method, step, metrics, Path(directory) / "checkpoint.pt")
        returned = time.time()
    finally:
        torch.set_num_threads(before)
    read = wait_for_stamps(times, steps)
    ray.kill(times)
    return {**read, "called": called, "returned": returned, "threads": threads}


def bare_steps(method: Any, arrays: dict[str, Any], steps: int, clock: Any, device: Any,
               batch_size: int = BATCH) -> tuple[int, dict[str, float]]:
    """`steps` training steps on `arrays` (decoded once), reshuffled each epoch, the last partial
    batch dropped as the loop drops it; each step reported to `clock` as the loop reports it.
    Returns (steps taken, the last step's metrics)."""
    import contextlib

    import torch

    count = len(next(iter(arrays.values())))
    if count < batch_size:
        raise ValueError(f"{count} samples make no batch of {batch_size}")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    order = torch.Generator().manual_seed(0)
    step, epoch, metrics = 0, 0, {}
    while step < steps:
        permutation = torch.randperm(count, generator=order)
        for start in range(0, min(count - batch_size + 1, (steps - step) * batch_size), batch_size):
            batch = {key: value[permutation[start:start + batch_size]].to(device) for key, value in arrays.items()}
            step += 1
            with autocast:
                metrics = method.training_step(batch, step)
            clock.update(done=step, total=steps, unit="steps", **metrics, epoch=epoch, resumed_from=0)
        epoch += 1
    return step, metrics


def save_and_load(method: Any, step: int, metrics: dict, path: Path) -> None:
    """A checkpoint as the loop writes one (networks, optimisers, step, RNG, losses), read back."""
    import torch

    torch.save({"step": step, "nets": {name: net.state_dict() for name, net in method.networks().items()},
                "opts": {name: opt.state_dict() for name, opt in method.optimizers().items()},
                "torch_rng": torch.get_rng_state(), "metrics": dict(metrics)}, path)
    torch.load(path, map_location="cpu", weights_only=True)


def split_arrays(uris: list[str], columns: list[str]) -> dict[str, Any]:
    """The train split's `columns` as tensors, decoded as the training input decodes them."""
    import torch

    from components.data.decode import table_to_arrays
    from components.data.shards import read_shards

    table = read_shards(uris, split="train", columns=columns)
    return {key: torch.from_numpy(value) for key, value in table_to_arrays(table, columns).items()}


def columns_of(name: str, config: dict) -> list[str]:
    from components.models import method_class
    from components.tasks import training_columns

    method = method_class(name)
    if getattr(method, "unpaired", ()):
        raise ValueError(f"{name} trains on an unpaired second stream, which this benchmark does not build")
    return list(training_columns(method, method.Config.model_validate(config)))


def result_rows(name: str, steps: int, rays: list[dict], bares: list[dict]) -> list[dict]:
    """`rays[i]` ran between `bares[i]` and `bares[i + 1]`: each figure's ratio is that of a Ray
    Train run to the mean of its two neighbours (load that drifts during the run cancels out),
    the median over the runs; "ours" and "baseline" are the medians of each side's runs."""
    def paired(figure: Any) -> tuple[float, float, list[float]]:
        ratios = [figure(run) / statistics.mean([figure(bares[i]), figure(bares[i + 1])]) for i, run in enumerate(rays)]
        return (statistics.median(figure(run) for run in rays), statistics.median(figure(run) for run in bares),
                ratios)

    def row(measure: str, figure: Any, with_ratio: bool, note: str = "", target: str = "") -> dict:
        ours, baseline, ratios = paired(figure)
        out = {"method": name, "px": RESOLUTION, "batch": BATCH, "measure": measure, "ours": ours, "baseline": baseline}
        if with_ratio:
            out.update(ratio=statistics.median(ratios), target=target)
            note = "; ".join(filter(None, [note, "runs " + " ".join(f"{r:.3f}" for r in ratios) if len(ratios) > 1 else ""]))
        return {**out, "note": note}

    first = rays[0]
    bare_steps_s = " / ".join(f"{per_step(run['stamps'], steps):.3g}" for run in bares)
    return [
        row(f"s/step {WARMUP}..{steps}", lambda run: per_step(run["stamps"], steps), True,
            f"{first['threads']} thread, nice {first['nice']}; bare runs {bare_steps_s} s", f"<= {TARGET}"),
        row("CPU s/step", lambda run: per_step(run["cpu"], steps), True, "the training process's own"),
        row("median s/step", lambda run: median_step(run["stamps"]), True),
        row("epoch start s", epoch_start, False, f"{len(epoch_starts(first['epochs']))} timed, each, over the median"),
        row("start-up s", lambda run: run["stamps"][1] - run["called"], False, "call to end of step 1"),
        row("shut-down s", lambda run: run["returned"] - run["stamps"][steps], False, "last step to return"),
    ]


def per_step(stamps: dict[int, float], steps: int) -> float:
    return (stamps[steps] - stamps[WARMUP]) / (steps - WARMUP)


def median_step(stamps: dict[int, float]) -> float:
    last = max(stamps)
    return statistics.median(stamps[s] - stamps[s - 1] for s in range(WARMUP + 1, last + 1))


def epoch_starts(epochs: dict[int, int]) -> list[int]:
    """The timed steps (after WARMUP) that start an epoch: a fresh pass over the split."""
    return [s for s in sorted(epochs) if s > WARMUP and s - 1 in epochs and epochs[s] != epochs[s - 1]]


def epoch_start(run: dict[str, Any]) -> float:
    """Mean seconds an epoch's first step takes beyond the median step (0: none timed)."""
    starts = epoch_starts(run["epochs"])
    if not starts:
        return 0.0
    return statistics.mean(run["stamps"][s] - run["stamps"][s - 1] for s in starts) - median_step(run["stamps"])
