"""Seconds per epoch of the training input: a small split kept in Ray's object store vs read
from its Parquet files every epoch.

The training loop reads its split through `components.data.ray_dataset.shard_dataset`, split
between two consumers as Ray Train's two workers split it (`streaming_split`), and iterated as
torch batches. Ours keeps a split that fits (the demo's, a few MB) after the first read; the
baseline is the same dataset with keeping turned off, so every epoch reads the files again.
Both are timed in one run, alternating, after one warm-up epoch each; medians over the epochs.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

COLUMNS = ["hq", "lq", "mask"]


def run(quick: bool) -> list[dict]:
    import ray

    faces, resolution, shard_size, epochs = (160, 32, 40, 2) if quick else (640, 64, 80, 6)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            uris = write_shards(Path(tmp), faces, resolution, shard_size)
            kept, streamed = dataset(uris, keep=True), dataset(uris, keep=False)
            times: dict[str, list[float]] = {"kept": [], "streamed": []}
            for consumers in (kept, streamed):
                epoch_seconds(consumers)  # warm-up: the first read, worker start-up
            for _ in range(epochs):
                times["kept"].append(epoch_seconds(kept))
                times["streamed"].append(epoch_seconds(streamed))
    finally:
        if started_here:
            ray.shutdown()
    ours, baseline = statistics.median(times["kept"]), statistics.median(times["streamed"])
    return [{"measure": f"s per epoch, train split of {faces} faces at {resolution} px, 2 consumers",
             "ours": ours, "baseline": baseline, "ratio": baseline / ours,
             "target": "> 1: kept split skips the per-epoch file read", "unit": "s"}]


def write_shards(directory: Path, faces: int, resolution: int, shard_size: int) -> list[str]:
    from components.data.samples import SampleConfig, make_procedural_rows
    from components.data.shards import write_shard

    config = SampleConfig(resolution=resolution)
    uris = []
    for start in range(0, faces, shard_size):
        uri = str(directory / f"shard-{start // shard_size:05d}.parquet")
        write_shard(make_procedural_rows(range(start, min(start + shard_size, faces)), 0, config), uri)
        uris.append(uri)
    return uris


def dataset(uris: list[str], keep: bool) -> Any:
    from components.data.ray_dataset import shard_dataset

    return shard_dataset(uris, "train", COLUMNS, keep=keep).streaming_split(2, equal=True)


def epoch_seconds(consumers: list[Any]) -> float:
    """One epoch drained by both consumers at once, as two train workers drain it."""
    started = time.perf_counter()
    threads = [threading.Thread(target=drain, args=(consumer,)) for consumer in consumers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def drain(consumer: Any) -> None:
    for _ in consumer.iter_torch_batches(batch_size=8, drop_last=True):
        pass
