"""The scores and breakdown groups the tasks are judged by (components/tasks says which task uses which).

- `image_scores`: PSNR, SSIM, L1 on the whole image against `hq`;
- `inpainting_scores`: those plus PSNR, L1 inside the holes (`psnr_hole`, `l1_hole`);
- `edge_map_scores`: edge precision / recall / F1 inside the holes against `edge`;
- `sample_groups`: each shard row's mask bucket, degradation level and SR factor, the groups a
  task's breakdown splits its scores by; `grouped_means`, `mean_scores` average them;
- `read_scored_split`: a split's decoded columns and groups, what the evaluate stage and
  validation while training score on.
Metrics are on RGB in [0, 1] (components/metrics/image_quality.py states the conventions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from components.metrics.edges import edge_scores
from components.metrics.image_quality import l1, psnr, ssim

Batch = dict[str, Tensor]


def image_scores(out: Tensor, data: Batch) -> dict[str, Tensor]:
    return {"psnr": psnr(out, data["hq"]), "ssim": ssim(out, data["hq"]), "l1": l1(out, data["hq"])}


def inpainting_scores(out: Tensor, data: Batch) -> dict[str, Tensor]:
    return {**image_scores(out, data), "psnr_hole": psnr(out, data["hq"], mask=data["mask"]),
            "l1_hole": l1(out, data["hq"], mask=data["mask"])}


def edge_map_scores(out: Tensor, data: Batch) -> dict[str, Tensor]:
    return edge_scores(out, data["edge"], data["mask"])


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


def mean_scores(per_image: dict[str, Tensor]) -> dict[str, float]:
    """Per-image values averaged in float64 (a paper protocol's float64 values keep their digits);
    NaN (an image with an empty hole) left out."""
    return {name: float(torch.nanmean(values.double())) for name, values in per_image.items()}


def read_scored_split(shard_uris: list[str], split: str, columns: Sequence[str], limit: int | None = None,
                      where: str = "the shards") -> tuple[Batch, dict[str, list[str]]]:
    """The split's decoded `columns` as CPU tensors (its first `limit` rows), and each row's breakdown groups."""
    from components.data.decode import table_to_arrays
    from components.data.shards import read_shards

    table = read_shards(shard_uris, split=split, columns=sorted({*columns, "mask_bucket", "degradation", "sr_factor"}))
    if limit is not None:
        table = table.slice(0, limit)
    if table.num_rows == 0:
        raise ValueError(f"{where} hold no '{split}' samples to score on")
    for column in columns:
        if table.column(column).null_count:
            raise ValueError(f"{where} have no '{column}' column values, which scoring needs "
                             f"(for 'lr', set the synthesize stage's super_resolution; for 'edge', its edges)")
    data = {k: torch.from_numpy(v) for k, v in table_to_arrays(table, list(columns)).items()}
    return data, sample_groups(table)
