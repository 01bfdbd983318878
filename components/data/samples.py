"""Build the rows of one shard: a face, its degraded copy, a mask, per sample id.

Every sample's randomness comes from `sample_seed(dataset_seed, sample_id)` alone, so the
same id gives byte-identical rows whichever shard, task or machine makes it, and a rerun
reproduces a dataset bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from components.data.degrade import DegradationConfig, degrade, sample_degradation
from components.data.faces import render_face
from components.data.masks import MaskConfig, mask_ratio, sample_mask
from components.data.schema import SHARD_SCHEMA, encode_mask, encode_png

# Independent random streams of one sample; the face uses the sample seed itself.
# Separate streams keep a sample's mask unchanged when only the degradation ranges change.
_DEGRADATION_STREAM = 1
_MASK_STREAM = 2
_SPLIT_STREAM = 3


class SampleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resolution: int = 64
    degradation: DegradationConfig = Field(default_factory=DegradationConfig)
    masks: MaskConfig = Field(default_factory=MaskConfig)
    splits: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1}
    )

    @field_validator("resolution")
    @classmethod
    def _positive_resolution(cls, value: int) -> int:
        if value < 8:
            raise ValueError(f"resolution must be at least 8 pixels, got {value}")
        return value

    @field_validator("splits")
    @classmethod
    def _fractions_sum_to_one(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("splits must name at least one split")
        negative = {name: f for name, f in value.items() if f < 0}
        if negative:
            raise ValueError(f"split fractions must be >= 0, got {negative}")
        total = sum(value.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must sum to 1, got {total} from {value}")
        return value


def sample_seed(dataset_seed: int, sample_id: int) -> int:
    """A 64-bit seed for one sample, the same in every process and on every platform."""
    state = np.random.SeedSequence([dataset_seed, sample_id]).generate_state(1, dtype=np.uint64)
    return int(state[0])


def assign_split(dataset_seed: int, sample_id: int, splits: dict[str, float]) -> str:
    """The split of one sample: a uniform draw from its own stream against the fractions.

    Splits are taken in sorted name order, so reordering the YAML keys changes nothing.
    """
    rng = np.random.default_rng([sample_seed(dataset_seed, sample_id), _SPLIT_STREAM])
    u = rng.uniform()
    names = sorted(splits)
    cumulative = 0.0
    for name in names:
        cumulative += splits[name]
        if u < cumulative:
            return name
    # Rounding can leave the fractions summing to just under 1.
    return next(name for name in reversed(names) if splits[name] > 0)


def make_procedural_rows(ids: range, dataset_seed: int, cfg: SampleConfig) -> pa.Table:
    """One shard's rows (SHARD_SCHEMA) of procedural faces for the given sample ids."""
    rows = [_procedural_row(sample_id, dataset_seed, cfg) for sample_id in ids]
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)


def _procedural_row(sample_id: int, dataset_seed: int, cfg: SampleConfig) -> dict:
    seed = sample_seed(dataset_seed, sample_id)
    face = render_face(seed, cfg.resolution)
    degradation_rng = np.random.default_rng([seed, _DEGRADATION_STREAM])
    params = sample_degradation(degradation_rng, cfg.degradation)
    lq = degrade(face.image, params, degradation_rng)
    mask = sample_mask(np.random.default_rng([seed, _MASK_STREAM]), cfg.resolution, cfg.masks)
    return {
        "id": f"proc-{sample_id:08d}",
        "split": assign_split(dataset_seed, sample_id, cfg.splits),
        "hq": encode_png(face.image),
        "lq": encode_png(lq),
        "mask": encode_mask(mask),
        "edge": None,
        "degradation": params.to_row(),
        "mask_ratio": mask_ratio(mask),
        "source": "procedural",
    }
