"""Inpainting masks: free-form strokes, boxes and face occluders (1 = missing pixel).

Free-form strokes are random-walk polylines drawn with a round brush, as in DeepFill v2
(Yu et al. 2019, Algorithm 1) and LaMa's irregular masks (Suvorov et al. 2022,
saicinpainting/training/data/masks.py `make_random_irregular_mask`). Stroke counts,
lengths and widths are LaMa's mask-generation settings at 256 px, scaled to the image:
"thick" = configs/data_gen/random_thick_256.yaml (1-5 strokes, length < 200, width < 100),
"thin" = random_thin_256.yaml (4-50 strokes, length < 40, width < 10). Boxes follow LaMa's
`make_random_rectangle_mask` at 256 px: 1-4 boxes, sides 30-150, margin 10. Face occluders
(surgical mask, sunglasses, hand) are placed from the sample's 5 landmarks
(`occlusion_masks.py`). Each kind in `kinds` is drawn with equal probability.
"""

from __future__ import annotations

from typing import Literal, get_args

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from components.data.occlusion_masks import OCCLUSION_KINDS, occlusion_mask

# LaMa's settings are in pixels of a 256 px image.
_REFERENCE_SIZE = 256
_STROKES = {
    "thick": {"times": (1, 5), "max_len": 200, "max_width": 100},
    "thin": {"times": (4, 50), "max_len": 40, "max_width": 10},
}
_BOXES = {"times": (1, 4), "min_side": 30, "max_side": 150, "margin": 10}
# LaMa's walk turns by at most `max_angle` = 4 radians per vertex.
_MAX_ANGLE = 4.0
_MAX_VERTICES = 5
_ATTEMPTS = 32


MaskKind = Literal["free_form", "box", "surgical_mask", "sunglasses", "hand"]
MASK_KINDS: tuple[str, ...] = get_args(MaskKind)


class MaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kinds: list[MaskKind] = ["free_form", "box"]
    max_ratio: float = 0.5

    @field_validator("kinds")
    @classmethod
    def _some_kind(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"kinds must name at least one mask kind of {', '.join(MASK_KINDS)}")
        return value

    @field_validator("max_ratio")
    @classmethod
    def _ratio_in_unit_interval(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"max_ratio must be in (0, 1], got {value}")
        return value


def sample_mask(rng: np.random.Generator, size: int, cfg: MaskConfig,
                landmarks: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """A size x size uint8 mask of {0, 1}, 1 = missing, whose hole ratio is in (0, max_ratio], and its kind.

    Draws are repeated until the ratio fits, as LaMa's `hole_range`; if none fits within
    a fixed number of attempts, one box of the largest allowed area is returned (kind "box"),
    so the result stays a deterministic function of the rng. Occluder kinds need the
    sample's (5, 2) `landmarks`.
    """
    for _ in range(_ATTEMPTS):
        kind = cfg.kinds[int(rng.integers(len(cfg.kinds)))]
        mask = _draw(rng, size, kind, landmarks)
        if 0.0 < mask_ratio(mask) <= cfg.max_ratio:
            return mask, kind
    return _fallback_box(rng, size, cfg.max_ratio), "box"


def _draw(rng: np.random.Generator, size: int, kind: str, landmarks: np.ndarray | None) -> np.ndarray:
    if kind == "free_form":
        return _draw_strokes(rng, size)
    if kind == "box":
        return _draw_boxes(rng, size)
    if kind in OCCLUSION_KINDS:
        if landmarks is None:
            raise ValueError(f"mask kind '{kind}' is placed from landmarks, and none were given")
        return occlusion_mask(rng, size, landmarks, kind)
    raise ValueError(f"unknown mask kind '{kind}' (known: {', '.join(MASK_KINDS)})")


def mask_ratio(mask: np.ndarray) -> float:
    """Fraction of missing pixels."""
    return float(np.count_nonzero(mask)) / mask.size


def _draw_strokes(rng: np.random.Generator, size: int) -> np.ndarray:
    stroke = _STROKES["thick" if rng.uniform() < 0.5 else "thin"]
    unit = size / _REFERENCE_SIZE
    mask = np.zeros((size, size), np.uint8)
    for i in range(int(rng.integers(stroke["times"][0], stroke["times"][1] + 1))):
        x, y = rng.uniform(0, size, 2)
        width = max(1, round((5 + rng.uniform(0, stroke["max_width"])) * unit))
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(1 + int(rng.integers(_MAX_VERTICES))):
            # Alternate turn direction between strokes, as LaMa does, so walks do not curl.
            angle += (1 if i % 2 == 0 else -1) * rng.uniform(0, _MAX_ANGLE)
            length = (10 + rng.uniform(0, stroke["max_len"])) * unit
            end_x = float(np.clip(x + length * np.cos(angle), 0, size - 1))
            end_y = float(np.clip(y + length * np.sin(angle), 0, size - 1))
            cv2.line(mask, _pixel(x, y), _pixel(end_x, end_y), 1, width)
            # A disc at each vertex rounds the joints: DeepFill v2's brush.
            cv2.circle(mask, _pixel(end_x, end_y), width // 2, 1, -1)
            x, y = end_x, end_y
    return mask


def _draw_boxes(rng: np.random.Generator, size: int) -> np.ndarray:
    unit = size / _REFERENCE_SIZE
    margin = round(_BOXES["margin"] * unit)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(_BOXES["times"][0], _BOXES["times"][1] + 1))):
        width, height = (_box_side(rng, size, margin, unit) for _ in range(2))
        left = int(rng.integers(margin, size - margin - width + 1))
        top = int(rng.integers(margin, size - margin - height + 1))
        mask[top : top + height, left : left + width] = 1
    return mask


def _box_side(rng: np.random.Generator, size: int, margin: int, unit: float) -> int:
    side = round(rng.uniform(_BOXES["min_side"], _BOXES["max_side"]) * unit)
    return max(1, min(size - 2 * margin, side))


def _fallback_box(rng: np.random.Generator, size: int, max_ratio: float) -> np.ndarray:
    side = max(1, int(np.floor(np.sqrt(max_ratio) * size)))
    left, top = (int(rng.integers(0, size - side + 1)) for _ in range(2))
    mask = np.zeros((size, size), np.uint8)
    mask[top : top + side, left : left + side] = 1
    return mask


def _pixel(x: float, y: float) -> tuple[int, int]:
    return (int(round(x)), int(round(y)))
