"""Super-resolution pairs: the LR face is the HR face shrunk by antialiased bicubic.

Face SR papers make their LR inputs with an antialiased bicubic (Keys cubic, a = -0.5, its
support stretched by the factor): PIL's `Image.resize(..., Image.BICUBIC)` in CTCNet and
SPARNet, MATLAB's `imresize` in BasicSR. OpenCV's INTER_CUBIC does not widen its kernel when
shrinking and aliases, so OpenCV is not used here. The sources and the measured agreement:
docs/methods.md, section "data/super_resolution.py".

CPU: `bicubic_downscale`, uint8 H x W x 3 -> (H/factor) x (W/factor) x 3, builds each axis'
resampling matrix with PIL's convention and applies it in float64. GPU:
`bicubic_downscale_batch`, N x 3 x H x W (uint8, or float on 0-255) -> uint8, is torch's
`F.interpolate(mode="bicubic", antialias=True)`, whose antialiased path follows PIL's.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

# Keys' cubic convolution parameter used by PIL, MATLAB's imresize and torch's antialiased
# bicubic (OpenCV's and torch's plain bicubic use -0.75).
KEYS_A = -0.5


class SuperResolutionConfig(BaseModel):
    """How far the HR face is shrunk for its LR input: x4, x8 (CTCNet's 128 -> 16) or x16."""

    model_config = ConfigDict(extra="forbid")

    factor: Literal[4, 8, 16] = 8


def bicubic_downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Shrink an RGB uint8 H x W x 3 image by `factor` with antialiased bicubic.

    H and W must be multiples of `factor`; the result is uint8 (H/factor) x (W/factor) x 3.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"bicubic_downscale expects uint8 H x W x 3, got {image.dtype} {image.shape}"
        )
    height, width = image.shape[:2]
    _check_divisible(height, width, factor)
    rows = _resample_matrix(height, factor)
    cols = _resample_matrix(width, factor)
    small = np.einsum("ih,hwc,jw->ijc", rows, image.astype(np.float64), cols)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def bicubic_downscale_batch(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Shrink N x 3 x H x W images (uint8, or float on 0-255) by `factor`; uint8 out, same device."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"bicubic_downscale_batch expects N x 3 x H x W, got shape {tuple(images.shape)}"
        )
    height, width = images.shape[-2:]
    _check_divisible(height, width, factor)
    small = F.interpolate(
        images.float(),
        size=(height // factor, width // factor),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    )
    return small.round().clamp(0, 255).to(torch.uint8)


def _check_divisible(height: int, width: int, factor: int) -> None:
    if factor < 1:
        raise ValueError(f"super-resolution factor must be a positive integer, got {factor}")
    if height % factor or width % factor:
        raise ValueError(
            f"image size {height} x {width} is not divisible by the super-resolution factor {factor}"
        )


def _resample_matrix(length: int, factor: int) -> np.ndarray:
    """(length / factor, length) weights: row i low-passes and samples around (i + 0.5) * factor."""
    centres = (np.arange(length // factor) + 0.5) * factor
    pixels = np.arange(length) + 0.5
    weights = _keys_cubic((pixels[None, :] - centres[:, None]) / factor)
    # Taps beyond the border are dropped, so the kept ones are renormalised (PIL's border).
    return weights / weights.sum(axis=1, keepdims=True)


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys (1981) cubic convolution kernel with a = KEYS_A; zero beyond |x| = 2."""
    x = np.abs(x)
    a = KEYS_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))
