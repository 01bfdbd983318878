"""Restore photos with a pulled or local model: files and folders, any size, a mask for inpainting.

Sizes: a model is trained on square faces of one resolution (config.json `data.resolution`),
and some networks only take that size (a StyleGAN prior has a fixed output). So a photo is
resized to the model's resolution, restored, and resized back to its own size, not tiled:
these are aligned face crops, and tiling a face would cut it into pieces that each look
like no face. Inpainting keeps every known pixel of the photo at full resolution: only the
holes take the (resized-back) network output. A super-resolution model treats the photo as
its low-resolution input and writes an image `sr_factor` times larger.

Masks: any image the size of the photo; a pixel is a hole where it is not black (value > 127
in grey), the convention of LaMa's and OpenCV's inpainting masks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from components.data.schema import encode_png
from components.data.sources import SkippedImage, read_photo
from components.models.base import Method
from components.tasks import Task, task_of

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class RestoreError(ValueError):
    """A model or input that cannot be restored; the message names the file."""


@dataclass(frozen=True)
class Restorer:
    method: Method
    resolution: int
    sr_factor: int = 1

    @property
    def task(self) -> Task:
        return task_of(self.method)


@dataclass
class RestoreReport:
    written: list[tuple[Path, Path]] = field(default_factory=list)  # (photo, restored file)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (photo, reason)


def load_restorer(model_dir: str | Path) -> Restorer:
    from components.models.files import load_model_dir, read_model_config

    directory = str(model_dir)
    try:
        _, config = read_model_config(directory)
        method = load_model_dir(directory)
    except FileNotFoundError as err:
        raise RestoreError(f"no model at {directory}: {err}") from None
    task = task_of(method)
    if not task.restores_photos:
        raise RestoreError(f"model at {directory} is a '{method.name}' ({task.name}): it does not restore photos")
    data = config.get("data") or {}
    if "resolution" not in data:
        raise RestoreError(f"model at {directory} does not record its training resolution (config.json data.resolution)")
    sr_factor = int(data.get("sr_factor") or 1) if task.scales else 1
    return Restorer(method, int(data["resolution"]), sr_factor)


def restore_photo(restorer: Restorer, photo: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB H x W x 3 (x sr_factor for super-resolution) from uint8 RGB H x W x 3."""
    import torch

    task = restorer.task
    if task.needs_mask and mask is None:
        raise RestoreError(f"'{restorer.method.name}' is an {task.name} model: it needs a mask of the holes")
    height, width = photo.shape[:2]
    side = restorer.resolution // restorer.sr_factor
    holes = None
    if task.needs_mask:
        holes = torch.from_numpy(_resize(mask.astype(np.uint8), side, side, nearest=True).astype(np.float32))[None, None]
    out = _to_image(restorer.method.restore(task.inference_batch(_to_tensor(_resize(photo, side, side)), holes)))
    out = _resize(out, width * restorer.sr_factor, height * restorer.sr_factor)
    if task.keeps_known:  # every known pixel at the photo's full resolution, only the holes from the network
        out = np.where(mask[..., None].astype(bool), out, photo)
    return out


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """{0, 1} H x W (1 = hole) of a mask image that must be `size` (height, width)."""
    try:
        grey = read_photo(str(path)).mean(axis=2)
    except SkippedImage as err:
        raise RestoreError(f"mask {path}: {err.reason}") from None
    if grey.shape != size:
        raise RestoreError(f"mask {path} is {grey.shape[1]}x{grey.shape[0]} but the photo is {size[1]}x{size[0]}")
    return (grey > 127).astype(np.uint8)


def restore_paths(restorer: Restorer, inputs: Sequence[Path], out: Path, mask: Path | None = None) -> RestoreReport:
    """Each photo (folders searched recursively) restored to `out` as PNG; a bad file is listed, the rest go on."""
    if restorer.task.needs_mask and mask is None:
        raise RestoreError(f"'{restorer.method.name}' is an {restorer.task.name} model: give the holes with --mask")
    report = RestoreReport()
    for photo_path, relative in _photos(inputs, report):
        target = (out / relative).with_suffix(".png")
        try:
            photo = read_photo(str(photo_path))
            holes = read_mask(mask, photo.shape[:2]) if restorer.task.needs_mask else None
            restored = restore_photo(restorer, photo, holes)
        except SkippedImage as err:
            report.failed.append((photo_path, err.reason))
            continue
        except RestoreError as err:
            report.failed.append((photo_path, str(err)))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode_png(restored))
        report.written.append((photo_path, target))
    return report


def _photos(inputs: Iterable[Path], report: RestoreReport) -> Iterable[tuple[Path, Path]]:
    """(photo, its path relative to the output folder): a folder's files keep their sub-folders."""
    for path in inputs:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                yield file, Path(path.name) / file.relative_to(path)
        elif path.exists():
            yield path, Path(path.name)
        else:
            report.failed.append((path, "no such file or folder"))


def _resize(image: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width * height < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _to_tensor(image: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div(255.0)[None]


def _to_image(tensor) -> np.ndarray:
    return (tensor[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
