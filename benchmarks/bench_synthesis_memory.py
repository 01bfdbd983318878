"""Peak memory of the synthesize stage: it must stream, holding a few shards at most.

Runs the real stage (Ray tasks, Parquet) on procedural faces and samples the resident
memory of the driver and of every Ray worker process twice a second. The baseline is the
size of the data itself: if the stage held the dataset, its peak would grow with it; a
streaming stage peaks at about (concurrent tasks x one shard) whatever the dataset size.
"""

from __future__ import annotations

import io
import tempfile
import threading
from pathlib import Path

import psutil
import yaml


def run(quick: bool) -> list[dict]:
    resolution, shard_size, counts = (128, 50, (100, 400)) if quick else (256, 256, (1250, 5000))
    (small, _), (large, dataset_mb) = (measure(count, resolution, shard_size) for count in counts)
    return [
        {"measure": f"peak RSS, {counts[1]} vs {counts[0]} images at {resolution} px (driver + Ray workers)",
         "ours": large["total"], "baseline": small["total"], "ratio": large["total"] / small["total"],
         "target": "~1: flat in dataset size", "unit": "MB"},
        {"measure": f"peak RSS against the {counts[1]}-image dataset's size on disk", "ours": large["total"],
         "baseline": dataset_mb, "ratio": large["total"] / dataset_mb, "target": "falls as the dataset grows",
         "unit": "MB"},
        {"measure": "peak RSS of the largest Ray worker", "ours": large["worker"], "baseline": small["worker"],
         "ratio": large["worker"] / small["worker"], "target": "~1: one shard at a time", "unit": "MB"},
    ]


def measure(count: int, resolution: int, shard_size: int) -> tuple[dict[str, float], float]:
    import ray
    from rich.console import Console

    from pipelines.config import load_config
    from pipelines.runner import Runner

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "memory.yaml")
        config.write_text(yaml.safe_dump({"name": "memory", "store": str(Path(tmp, "store")), "stages": {
            "synthesize": {"source": {"kind": "procedural", "count": count}, "resolution": resolution,
                           "shard_size": shard_size}}}))
        stop, peak = threading.Event(), {"total": 0.0, "worker": 0.0}
        sampler = threading.Thread(target=sample_rss, args=(stop, peak), daemon=True)
        sampler.start()
        try:
            Runner(load_config(config), console=Console(file=io.StringIO())).run()
        finally:
            stop.set()
            sampler.join()
        dataset_mb = sum(f.stat().st_size for f in Path(tmp, "store", "stages").rglob("*.parquet")) / 2**20
    if ray.is_initialized():
        ray.shutdown()
    return peak, dataset_mb


def sample_rss(stop: threading.Event, peak: dict[str, float]) -> None:
    me = psutil.Process()
    while not stop.wait(0.5):
        # Ray retitles its worker processes "ray::<task or actor>".
        workers = [p for p in psutil.process_iter(["cmdline", "memory_info"])
                   if (p.info["cmdline"] or [""])[0].startswith("ray::")]
        sizes = [p.info["memory_info"].rss / 2**20 for p in workers if p.info["memory_info"]]
        peak["worker"] = max(peak["worker"], max(sizes, default=0.0))
        peak["total"] = max(peak["total"], me.memory_info().rss / 2**20 + sum(sizes))
