"""How each task is scored: what a method is given, which classical baselines it faces, which metrics.

One `TaskScoring` per `Method.task` the evaluate stage scores (components/models/base.py
describes the tasks):
- restoration: the method gets `lq` + `mask`; the baseline is the untouched input with its
  holes filled by the mean colour ("input"); PSNR, SSIM, L1 on the whole image.
- inpainting: the method gets the clean `hq` with the holes of `mask` as its photo (`lq = hq`:
  the holes are the only damage, the papers' protocol); baselines mean-fill, OpenCV Telea and
  Navier-Stokes; PSNR, SSIM, L1 on the whole image and PSNR, L1 inside the holes
  (`psnr_hole`, `l1_hole`: the whole-image figures are inflated by the known pixels every
  method keeps).
- super_resolution: the method gets `lr`; the baseline is bicubic upsampling; PSNR, SSIM, L1.
- edges: the edge GAN gets the photo with holes; scored by edge precision / recall / F1 inside
  the holes against the Canny edges of `hq`; no baseline.
Metrics are on RGB in [0, 1] (components/metrics/image_quality.py states the conventions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from components.metrics.edges import edge_scores
from components.metrics.image_quality import l1, psnr, ssim
from components.models import classical

Batch = dict[str, Tensor]


@dataclass(frozen=True)
class TaskScoring:
    columns: tuple[str, ...]  # shard columns the scoring reads
    method_batch: Callable[[Batch], Batch]  # what Method.restore is given
    target: Callable[[Batch], Tensor]
    score: Callable[[Tensor, Batch], dict[str, Tensor]]  # per-image values, (N,) each
    baselines: dict[str, Callable[[Batch], Tensor]] = field(default_factory=dict)
    breakdown: str | None = None  # per-sample group the report splits the scores by (`sample_groups`)


def image_scores(out: Tensor, data: Batch) -> dict[str, Tensor]:
    return {"psnr": psnr(out, data["hq"]), "ssim": ssim(out, data["hq"]), "l1": l1(out, data["hq"])}


def inpainting_scores(out: Tensor, data: Batch) -> dict[str, Tensor]:
    return {**image_scores(out, data), "psnr_hole": psnr(out, data["hq"], mask=data["mask"]),
            "l1_hole": l1(out, data["hq"], mask=data["mask"])}


def edge_map_scores(out: Tensor, data: Batch) -> dict[str, Tensor]:
    return edge_scores(out, data["edge"], data["mask"])


def _sr_factor(data: Batch) -> int:
    factor = data["hq"].shape[-1] // data["lr"].shape[-1]
    if data["lr"].shape[-1] * factor != data["hq"].shape[-1]:
        raise ValueError(f"lr width {data['lr'].shape[-1]} does not divide hq width {data['hq'].shape[-1]}")
    return factor


TASKS: dict[str, TaskScoring] = {
    "restoration": TaskScoring(
        breakdown="degradation_level",
        columns=("hq", "lq", "mask"),
        method_batch=lambda data: {"lq": data["lq"], "mask": data["mask"]},
        target=lambda data: data["hq"],
        score=image_scores,
        baselines={"input": lambda data: classical.mean_fill(data["lq"], data["mask"])},
    ),
    "inpainting": TaskScoring(
        breakdown="mask_bucket",
        columns=("hq", "mask"),
        method_batch=lambda data: {"lq": data["hq"], "mask": data["mask"]},
        target=lambda data: data["hq"],
        score=inpainting_scores,
        baselines={
            "mean_fill": lambda data: classical.mean_fill(data["hq"], data["mask"]),
            "telea": lambda data: classical.telea(data["hq"], data["mask"]),
            "navier_stokes": lambda data: classical.navier_stokes(data["hq"], data["mask"]),
        },
    ),
    "super_resolution": TaskScoring(
        breakdown="sr_factor",
        columns=("hq", "lr"),
        method_batch=lambda data: {"lr": data["lr"]},
        target=lambda data: data["hq"],
        score=image_scores,
        baselines={"bicubic": lambda data: classical.bicubic(data["lr"], _sr_factor(data))},
    ),
    "edges": TaskScoring(
        breakdown="mask_bucket",
        columns=("hq", "mask", "edge"),
        method_batch=lambda data: {"lq": data["hq"], "mask": data["mask"]},
        target=lambda data: data["edge"],
        score=edge_map_scores,
    ),
}


# Blind-restoration severity by the downsampling factor, the parameter that hurts a face most
# (GFPGAN's range 0.8-8 split where the face loses, then keeps losing, its features).
DEGRADATION_LEVELS = ((2.0, "mild (scale < 2)"), (4.0, "moderate (scale 2-4)"), (float("inf"), "severe (scale >= 4)"))


def degradation_level(scale: float) -> str:
    return next(name for upper, name in DEGRADATION_LEVELS if scale < upper)


def sample_groups(table) -> dict[str, list[str]]:
    """The breakdown groups of each row of a shard table: mask bucket, degradation level, SR factor."""
    groups = {"mask_bucket": [str(b) for b in table.column("mask_bucket").to_pylist()]}
    groups["degradation_level"] = [degradation_level(d["scale"]) if d else "none"
                                   for d in table.column("degradation").to_pylist()]
    groups["sr_factor"] = [f"x{f}" if f else "none" for f in table.column("sr_factor").to_pylist()]
    return groups


def grouped_means(per_image: dict[str, dict[str, Tensor]], groups: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{group: {name: {metric: mean over that group's samples}}}, groups in sorted order."""
    index: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        index.setdefault(group, []).append(i)
    return {group: {name: mean_scores({metric: values[rows] for metric, values in metrics.items()})
                    for name, metrics in per_image.items()}
            for group, rows in sorted(index.items())}


def task_scoring(task: str) -> TaskScoring | None:
    """The scoring of `task`, or None for tasks that are not scored as images (representation, prior)."""
    return TASKS.get(task)


def mean_scores(per_image: dict[str, Tensor]) -> dict[str, float]:
    """Per-image values averaged; NaN (an image with an empty hole) left out."""
    return {name: float(torch.nanmean(values.float())) for name, values in per_image.items()}
