"""Score a folder of restored images against a folder of their targets under one protocol: what
`facerestore score` runs, so the outputs of another tool (GFPGAN, a paper's released results)
can be set in the same table as ours (components/metrics/protocols.py).

Pairs are matched by file stem, the name without its extension: `a.png` in one folder matches
`a.jpg` in the other (GFPGAN writes .png for .jpg inputs). Only image files count (.jpg, .jpeg,
.png, .webp, any case); hidden files and sub-folders are passed over. An image is read as
`facerestore restore` reads photos (components/data/sources.py `read_photo`: uint8 RGB; grey,
16-bit, alpha on white, CMYK and EXIF orientation handled). Masks (`mask_dir`) match the targets'
stems the same way, a hole where a pixel's grey value is above 127 (white); they feed the project
protocol's in-hole metrics (psnr_hole, l1_hole); a paper protocol does not read them, as its code
scores the whole image. Never scored, each listed as a problem with its file name: a stem found
in one folder only, a stem two files of one folder share (a.jpg and a.png), an unreadable file,
a prediction whose size is not its target's, a missing or mis-sized mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from components import storage
from components.data.schema import holes_of_mask_image
from components.data.sources import SkippedImage, images_by_stem, read_photo
from components.metrics.protocols import PROJECT_NAME, available_means, protocol_named


@dataclass(frozen=True)
class Problem:
    name: str  # the file(s) concerned
    reason: str


@dataclass(frozen=True)
class ScoredImage:
    stem: str
    pred: str  # file names
    target: str
    values: dict[str, float]  # metric -> value; NaN: not scored (an SSIM window over the image)


@dataclass
class FolderScores:
    protocol: str
    pred_dir: str
    target_dir: str
    mask_dir: str | None
    images: list[ScoredImage] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def means(self) -> dict[str, float | None]:
        """Each metric's mean over the scored images; None where no image could be scored."""
        if not self.images:
            return {}
        return available_means({metric: torch.tensor([image.values[metric] for image in self.images],
                                                     dtype=torch.float64) for metric in self.images[0].values})

    def as_json(self) -> dict[str, Any]:
        """The same figures as plain JSON: unscored values null, identical images' PSNR "inf"."""
        return {"protocol": self.protocol, "pred_dir": self.pred_dir, "target_dir": self.target_dir,
                "mask_dir": self.mask_dir, "scored": len(self.images),
                "mean": {metric: _json_number(value) for metric, value in self.means().items()},
                "images": [{"name": image.stem, "pred": image.pred, "target": image.target,
                            **{metric: _json_number(value) for metric, value in image.values.items()}}
                           for image in self.images],
                "problems": [{"name": problem.name, "problem": problem.reason} for problem in self.problems],
                "notes": list(self.notes)}


def score_folders(pred_dir: str, target_dir: str, protocol: str, mask_dir: str | None = None) -> FolderScores:
    """Every matched pair of the two folders scored under `protocol`; FileNotFoundError for a
    folder that is not there, ValueError for an unknown protocol."""
    scorer = protocol_named(protocol)
    result = FolderScores(protocol, pred_dir, target_dir, mask_dir)
    uses_masks = mask_dir is not None and scorer.name == PROJECT_NAME
    if mask_dir is not None and not uses_masks:
        result.notes.append(f"--mask-dir is not read: the {scorer.name} protocol scores the whole image, as its "
                            f"paper's code does; the project protocol uses masks for psnr_hole and l1_hole")
    preds, ambiguous = _images_by_stem(pred_dir, "predictions", result.problems)
    targets, ambiguous_targets = _images_by_stem(target_dir, "targets", result.problems)
    masks = _images_by_stem(mask_dir, "masks", result.problems)[0] if uses_masks else {}
    ambiguous |= ambiguous_targets  # listed once, as ambiguous, not again as unmatched
    result.problems += [Problem(preds[stem], f"no target named {stem}.* in {target_dir}")
                        for stem in sorted(preds.keys() - targets.keys() - ambiguous)]
    result.problems += [Problem(targets[stem], f"no prediction named {stem}.* in {pred_dir}")
                        for stem in sorted(targets.keys() - preds.keys() - ambiguous)]
    for stem in sorted(preds.keys() & targets.keys()):
        try:
            pred, target = _read(pred_dir, preds[stem]), _read(target_dir, targets[stem])
            if pred.shape != target.shape:
                raise _Unscored(f"size mismatch: prediction {_size(pred)}, target {_size(target)}")
            mask = _mask(mask_dir, masks, stem, target) if uses_masks else None
            values = scorer.score(_batch(pred), _batch(target), mask)
        except _Unscored as err:
            result.problems.append(Problem(f"{preds[stem]} / {targets[stem]}", str(err)))
            continue
        except ValueError as err:  # a metric that cannot take this image (too small for the project SSIM)
            result.problems.append(Problem(f"{preds[stem]} / {targets[stem]}", f"cannot score: {err}"))
            continue
        result.images.append(ScoredImage(stem, preds[stem], targets[stem],
                                         {metric: float(value[0]) for metric, value in values.items()}))
    return result


class _Unscored(Exception):
    """A pair that cannot be scored, and why."""


def _images_by_stem(folder: str, role: str, problems: list[Problem]) -> tuple[dict[str, str], set[str]]:
    """(stem -> file name of the folder's images, the stems two files share); each of those goes
    to `problems`."""
    try:
        unique, shared = images_by_stem(folder)
    except FileNotFoundError:
        raise FileNotFoundError(f"{role} folder {folder} does not exist or is not a folder") from None
    for stem, names in shared.items():
        problems.append(Problem(", ".join(names), f"{len(names)} {role} share the name {stem}: which one to score is ambiguous"))
    return unique, set(shared)


def _read(folder: str, name: str) -> np.ndarray:
    try:
        return read_photo(storage.join(folder, name))
    except SkippedImage as err:
        raise _Unscored(f"cannot read {name}: {err.reason}") from None


def _mask(mask_dir: str, masks: dict[str, str], stem: str, target: np.ndarray) -> torch.Tensor:
    if stem not in masks:
        raise _Unscored(f"no mask named {stem}.* in {mask_dir}")
    holes = holes_of_mask_image(_read(mask_dir, masks[stem]))
    if holes.shape != target.shape[:2]:
        raise _Unscored(f"size mismatch: mask {masks[stem]} {holes.shape[1]}x{holes.shape[0]}, target {_size(target)}")
    return torch.from_numpy(holes).float()[None, None]


def _batch(image: np.ndarray) -> torch.Tensor:
    """uint8 (1, 3, H, W) of a uint8 H x W x 3 image."""
    return torch.from_numpy(image).permute(2, 0, 1)[None]


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]}"


def _json_number(value: float | None) -> float | str | None:
    if value is None or math.isnan(value):
        return None
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
