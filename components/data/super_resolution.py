"""Super-resolution pairs: the LR face is the HR face shrunk by antialiased bicubic.

Which bicubic. Face SR papers make their LR inputs with an antialiased bicubic
(Keys cubic, a = -0.5, its support stretched by the factor so that it low-passes):
CTCNet (Gao et al., TIP 2023; IVIPLab/CTCNet `data/celeba_dataset.py`, and its 16 px test
inputs in `train.py`) and SPARNet, whose code CTCNet builds on, call PIL's
`Image.resize(..., Image.BICUBIC)`; BasicSR makes its bicubic LR sets with MATLAB's
`imresize` (`scripts/data_preparation/generate_bicubic_img.py` ->
`basicsr/utils/matlab_functions.imresize`), the same kernel and support. They differ only
at the border: PIL renormalises the taps that fall outside the image, MATLAB mirrors the
image. OpenCV has neither: INTER_CUBIC does not widen its kernel when shrinking, so at x8
an output pixel sees 4 x 4 of the 8 x 8 pixels it stands for and aliases; INTER_AREA is a
box filter, a different LR. So OpenCV is not used here.

CPU: `bicubic_downscale` builds each axis' resampling matrix with PIL's convention (output
pixel i centred at (i + 0.5) * factor, taps within 2 * factor, weights renormalised at the
border) and applies it in float64. GPU: `bicubic_downscale_batch` is torch's
`F.interpolate(mode="bicubic", antialias=True)`, whose antialiased path follows PIL's.

Measured on rendered 64 and 128 px faces and on uniform noise at x4 / x8 / x16: the CPU
path and the GPU path run by torch on CPU gave identical bytes; on CUDA, float rounding at
.5 may move a pixel by 1 level, which the tests allow. Against PIL the kernel and taps are
the same: rounding and clipping to uint8 between the passes as PIL does gives its bytes but
for 1 level in ~2% of pixels (its fixed-point weights). Without that, the mean abs
difference is 0.08-0.15 per image, up to 4 levels where PIL's first pass overshoots 255.
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
