"""synthesize: source faces -> degraded, masked (and SR, edge) samples in Parquet shards.

The driver lists the source (cheap: names, no pixels) and cuts the list into shards; one
Ray task per shard loads its images one at a time, degrades them, encodes and writes the
shard. A task holds one shard in memory, and Ray runs as many tasks as there are CPUs, so
memory stays bounded by a few shards whatever the dataset size.

A shard that already exists is complete (written under a temporary name and renamed), so a
rerun after a kill writes only the missing shards. A source image that cannot be used is
skipped, and the shard records why in its own metadata; the manifest lists every skip.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

import ray
from pydantic import Field

from components.data.samples import SampleConfig
from components.data.sources import ImageLimits, ProceduralSource, SourceConfig, SourceItem
from pipelines.context import StageContext, StageOutput

CODE_VERSION = "2"


class Config(SampleConfig):
    source: SourceConfig = Field(default_factory=lambda: ProceduralSource(count=96),
                                 description="procedural (the default), folder, ffhq, celebahq or parquet")
    limit: int | None = Field(None, gt=0, description="use only the first N source images (sorted by id)")
    limits: ImageLimits = Field(default_factory=ImageLimits, description="when a source image is skipped")
    shard_size: int = Field(256, gt=0, description="rows per shard")
    seed: int = 0


def resources(cfg: Config) -> dict[str, float]:
    """One shard task's CPU: the stage starts with one and Ray gives its other tasks whatever is free."""
    return {"CPU": 1.0}


def run(ctx: StageContext, cfg: Config, inputs: dict) -> StageOutput:
    from components.data.sources import list_items

    items = list_items(cfg.source)[: cfg.limit]
    shards = math.ceil(len(items) / cfg.shard_size)
    task = make_shard.options(num_gpus=1) if cfg.engine == "gpu" and _cluster_has_gpus() else make_shard
    pending = {}
    for index in range(shards):
        chunk = items[index * cfg.shard_size:(index + 1) * cfg.shard_size]
        pending[task.remote(chunk, cfg.seed, cfg, cfg.limits, ctx.path(shard_path(index)), ctx.progress)] = index
    infos: dict[int, Any] = {}
    done = 0
    ctx.progress.update(done=0, total=len(items), unit="samples")
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        info = ray.get(ready[0])
        infos[pending.pop(ready[0])] = info
        done += info.rows + len(info.skipped)
        ctx.progress.update(done=done, total=len(items), unit="samples", skipped=sum(len(i.skipped) for i in infos.values()))
    entries = [{**asdict(infos[i]), "path": shard_path(i)} for i in range(shards)]
    skipped = [record for entry in entries for record in entry.pop("skipped")]
    splits: dict[str, int] = {}
    for entry in entries:
        for split, n in entry["split_counts"].items():
            splits[split] = splits.get(split, 0) + n
    rows = sum(entry["rows"] for entry in entries)
    return StageOutput(
        artifact="shards",
        count=rows,
        metrics={"samples": rows, "skipped": len(skipped), **{f"samples_{k}": v for k, v in splits.items()}},
        details={"shards": entries, "splits": splits, "resolution": cfg.resolution, "source": cfg.source.kind,
                 "sr_factor": cfg.super_resolution.factor if cfg.super_resolution else None,
                 "schema_version": schema_version(), "skipped": skipped, "created_at": time.time()},
    )


@ray.remote(num_cpus=1, max_retries=3)
def make_shard(items: list[SourceItem], seed: int, cfg: SampleConfig, limits: ImageLimits, uri: str, progress: Any = None):
    import cv2

    from components.data.samples import make_rows
    from components.data.shards import describe_shard, shard_exists, write_shard

    # One CPU per task: OpenCV's own thread pool would otherwise oversubscribe the cores
    # the other tasks hold (Ray's OMP_NUM_THREADS does not reach it).
    cv2.setNumThreads(1)
    if progress is not None:
        progress.ran_on_this_node()
    if shard_exists(uri):
        return describe_shard(uri)
    images, skipped = source_images(items, seed, cfg.resolution, limits)
    return write_shard(make_rows(images, seed, cfg), uri, skipped=skipped)


def source_images(items: list[SourceItem], seed: int, resolution: int, limits: ImageLimits):
    """The shard's HQ images as SourceImages, and a record of each item skipped."""
    from components.data.occlusion_masks import template_landmarks
    from components.data.samples import SourceImage, id_key, procedural_image
    from components.data.sources import SkippedImage, iter_images

    procedural = [item for item in items if item.index is not None]
    if procedural:
        return [procedural_image(item.index, seed, resolution) for item in procedural], []
    images, skipped = [], []
    landmarks = template_landmarks(resolution)  # real faces are aligned to the FFHQ template
    for item, result in iter_images(items, resolution, limits):
        if isinstance(result, SkippedImage):
            skipped.append(result.as_record())
        else:
            images.append(SourceImage(item.id, id_key(item.id), result, landmarks, item.kind))
    return images, skipped


def _cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def shard_path(index: int) -> str:
    """Relative to the stage output, so the artifact can move between stores."""
    return f"shards/shard-{index:05d}.parquet"


def schema_version() -> int:
    from components.data.schema import SCHEMA_VERSION

    return SCHEMA_VERSION
