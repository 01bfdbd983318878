"""Build the rows of one shard: a face, its degraded copy, a mask, per sample.

Every sample's randomness comes from `sample_seed(dataset_seed, key)` alone (key = the
procedural sample number, or a stable hash of a real image's id), so the same sample gives
byte-identical rows whichever shard, task or machine makes it, and a rerun reproduces a
dataset bit for bit. Independent streams per purpose keep a sample's mask unchanged when
only the degradation ranges change.

Engines: "cpu" degrades each image with OpenCV (`degrade.py`); "gpu" degrades the shard as
one batch with kornia (`degrade_gpu.py`) on CUDA when there is one. The parameters drawn are
the same; the pixels agree to a small tolerance (JPEG codecs differ; the noise comes from a
torch generator), so a dataset is reproducible per engine, not across engines.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.data.degrade import DegradationConfig, DegradationParams, degrade, sample_degradation
from components.data.edges import canny_edges
from components.data.faces import render_face
from components.data.mask_buckets import mask_bucket
from components.data.masks import MaskConfig, mask_ratio, sample_mask
from components.data.schema import SHARD_SCHEMA, encode_mask, encode_png
from components.data.super_resolution import SuperResolutionConfig, bicubic_downscale

# Independent random streams of one sample; a procedural face uses the sample seed itself.
_DEGRADATION_STREAM = 1
_MASK_STREAM = 2
_SPLIT_STREAM = 3


@dataclass(frozen=True)
class SourceImage:
    """One HQ image to turn into a row: aligned, resolution x resolution, uint8 RGB."""

    id: str
    key: int  # what its seed derives from: stable across runs and shard layouts
    image: np.ndarray
    landmarks: np.ndarray  # (5, 2) float pixel (x, y)
    source: str


class SampleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resolution: int = 64
    engine: Literal["cpu", "gpu"] = "cpu"
    degradation: DegradationConfig = Field(default_factory=DegradationConfig)
    super_resolution: SuperResolutionConfig | None = Field(
        None, description="also write `lr` = hq shrunk by this factor (bicubic), for super-resolution")
    masks: MaskConfig = Field(default_factory=MaskConfig)
    edges: bool = Field(True, description="write `edge`: Canny of hq (sigma 2), the edge GAN's target")
    splits: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1}
    )

    @field_validator("resolution")
    @classmethod
    def _positive_resolution(cls, value: int) -> int:
        if value < 8:
            raise ValueError(f"resolution must be at least 8 pixels, got {value}")
        return value

    @model_validator(mode="after")
    def _resolution_divides_by_the_sr_factor(self) -> "SampleConfig":
        factor = self.super_resolution.factor if self.super_resolution else 1
        if self.resolution % factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by super_resolution.factor {factor}")
        return self

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


def sample_seed(dataset_seed: int, key: int) -> int:
    """A 64-bit seed for one sample, the same in every process and on every platform."""
    state = np.random.SeedSequence([dataset_seed, key]).generate_state(1, dtype=np.uint64)
    return int(state[0])


def id_key(sample_id: str) -> int:
    """A stable 63-bit integer of a real image's id (Python's hash() changes per process)."""
    return int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") >> 1


def assign_split(dataset_seed: int, key: int, splits: dict[str, float]) -> str:
    """The split of one sample: a uniform draw from its own stream against the fractions.

    Splits are taken in sorted name order, so reordering the YAML keys changes nothing.
    """
    rng = np.random.default_rng([sample_seed(dataset_seed, key), _SPLIT_STREAM])
    u = rng.uniform()
    names = sorted(splits)
    cumulative = 0.0
    for name in names:
        cumulative += splits[name]
        if u < cumulative:
            return name
    # Rounding can leave the fractions summing to just under 1.
    return next(name for name in reversed(names) if splits[name] > 0)


def procedural_image(number: int, dataset_seed: int, resolution: int) -> SourceImage:
    face = render_face(sample_seed(dataset_seed, number), resolution)
    return SourceImage(f"proc-{number:08d}", number, face.image, face.landmarks, "procedural")


def make_procedural_rows(numbers: range, dataset_seed: int, cfg: SampleConfig) -> pa.Table:
    """One shard's rows of procedural faces number `numbers`."""
    return make_rows([procedural_image(n, dataset_seed, cfg.resolution) for n in numbers], dataset_seed, cfg)


def make_rows(images: Sequence[SourceImage], dataset_seed: int, cfg: SampleConfig) -> pa.Table:
    """One shard's rows (SHARD_SCHEMA): degraded copy, mask, edges, SR input of each image."""
    if cfg.engine == "cpu":
        degraded = [_degrade_on_cpu(img, dataset_seed, cfg.degradation) for img in images]
    else:
        params = [sample_degradation(_rng(dataset_seed, img.key, _DEGRADATION_STREAM), cfg.degradation)
                  for img in images]
        degraded = list(zip(params, _degrade_on_gpu(images, params, dataset_seed)))
    rows = [_row(img, params, lq, dataset_seed, cfg) for img, (params, lq) in zip(images, degraded)]
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)


def _rng(dataset_seed: int, key: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([sample_seed(dataset_seed, key), stream])


def _degrade_on_cpu(img: SourceImage, dataset_seed: int, cfg: DegradationConfig) -> tuple[DegradationParams, np.ndarray]:
    # The noise continues the stream the parameters came from, as GFPGAN draws both in turn.
    rng = _rng(dataset_seed, img.key, _DEGRADATION_STREAM)
    params = sample_degradation(rng, cfg)
    return params, degrade(img.image, params, rng)


def _degrade_on_gpu(images: Sequence[SourceImage], params: list[DegradationParams], dataset_seed: int) -> list[np.ndarray]:
    import torch

    from components.data.degrade_gpu import degrade_batch

    if not images:
        return []
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = torch.from_numpy(np.stack([img.image for img in images])).permute(0, 3, 1, 2).to(device)
    # One generator per shard, seeded by its first sample: a shard is reproducible on one device type.
    generator = torch.Generator(device=device).manual_seed(sample_seed(dataset_seed, images[0].key) % 2**63)
    out = degrade_batch(batch, params, generator)
    return list(out.permute(0, 2, 3, 1).contiguous().cpu().numpy())


def _row(img: SourceImage, params: DegradationParams, lq: np.ndarray, dataset_seed: int, cfg: SampleConfig) -> dict:
    mask, kind = sample_mask(_rng(dataset_seed, img.key, _MASK_STREAM), cfg.resolution, cfg.masks, img.landmarks)
    ratio = mask_ratio(mask)
    sr = cfg.super_resolution
    return {
        "id": img.id,
        "split": assign_split(dataset_seed, img.key, cfg.splits),
        "hq": encode_png(img.image),
        "lq": encode_png(lq),
        "mask": encode_mask(mask),
        "edge": encode_mask(canny_edges(img.image)) if cfg.edges else None,
        "degradation": params.to_row(),
        "mask_ratio": ratio,
        "mask_kind": kind,
        "mask_bucket": mask_bucket(ratio),
        "landmarks": np.asarray(img.landmarks, np.float32).reshape(-1).tolist(),
        "lr": encode_png(bicubic_downscale(img.image, sr.factor)) if sr else None,
        "sr_factor": sr.factor if sr else None,
        "source": img.source,
    }
