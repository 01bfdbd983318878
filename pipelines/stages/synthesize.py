"""synthesize: procedural faces -> degraded + masked pairs in Parquet shards (Ray tasks).

One Ray task per shard. A shard that already exists is complete (written under a temporary
name and renamed), so a rerun after a kill writes only the missing shards.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Literal

import ray
from pydantic import Field

from components.data.samples import SampleConfig
from pipelines.context import StageContext, StageOutput

CODE_VERSION = "1"


class Config(SampleConfig):
    source: Literal["procedural"] = "procedural"
    count: int = Field(96, gt=0, description="samples to synthesize")
    shard_size: int = Field(256, gt=0, description="rows per shard")
    seed: int = 0


def run(ctx: StageContext, cfg: Config, inputs: dict) -> StageOutput:
    sample_cfg = SampleConfig.model_validate(cfg.model_dump(include=set(SampleConfig.model_fields)))
    shards = math.ceil(cfg.count / cfg.shard_size)
    pending = {}
    for index in range(shards):
        ids = range(index * cfg.shard_size, min(cfg.count, (index + 1) * cfg.shard_size))
        uri = ctx.path(shard_path(index))
        pending[make_shard.remote(ids.start, ids.stop, cfg.seed, sample_cfg, uri)] = index
    infos, done = {}, 0
    ctx.progress.update(done=0, total=cfg.count, unit="samples")
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        info = ray.get(ready[0])
        infos[pending.pop(ready[0])] = info
        done += info.rows
        ctx.progress.update(done=done, total=cfg.count, unit="samples")
    entries = [{**asdict(infos[i]), "path": shard_path(i)} for i in range(shards)]
    splits: dict[str, int] = {}
    for entry in entries:
        for split, n in entry["split_counts"].items():
            splits[split] = splits.get(split, 0) + n
    return StageOutput(
        artifact="shards",
        count=done,
        metrics={"samples": done, **{f"samples_{k}": v for k, v in splits.items()}},
        details={"shards": entries, "splits": splits, "resolution": cfg.resolution, "source": cfg.source,
                 "schema_version": schema_version(), "skipped": [], "created_at": time.time()},
    )


@ray.remote(num_cpus=1, max_retries=3)
def make_shard(start: int, stop: int, seed: int, cfg: SampleConfig, uri: str):
    from components.data.samples import make_procedural_rows
    from components.data.shards import describe_shard, shard_exists, write_shard

    if shard_exists(uri):
        return describe_shard(uri)
    return write_shard(make_procedural_rows(range(start, stop), seed, cfg), uri)


def shard_path(index: int) -> str:
    """Relative to the stage output, so the artifact can move between stores."""
    return f"shards/shard-{index:05d}.parquet"


def schema_version() -> int:
    from components.data.schema import SCHEMA_VERSION

    return SCHEMA_VERSION
