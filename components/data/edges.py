"""Canny edge maps of the HQ image: the target of the edge-GAN stage.

EdgeConnect's recipe, `skimage.feature.canny(rgb2gray(img), sigma=2)` with skimage's default
thresholds, rebuilt step by step without skimage (skimage's grey weights `GREY_WEIGHTS`,
Gaussian blur, Sobel magnitude, absolute thresholds 0.1 / 0.2, non-maximum suppression,
hysteresis). Each step's source and where it differs from skimage: docs/methods.md, section
"data/edges.py".

The OpenCV path (`canny_edges`: H x W x 3 uint8 RGB -> H x W uint8 {0, 1}) runs in the CPU
data tasks; the kornia path (`canny_edges_batch`: N x 3 x H x W float RGB in [0, 1] ->
N x 1 x H x W {0, 1}) does a batch on any device. The tests measure how far they agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

# skimage.color.rgb2gray
GREY_WEIGHTS = (0.2125, 0.7154, 0.0721)
# skimage.feature.canny defaults, on the Sobel magnitude of a [0, 1] image.
LOW_THRESHOLD = 0.1
HIGH_THRESHOLD = 0.2
# skimage.filters.gaussian's default truncate, in sigmas.
_TRUNCATE = 4.0
# cv2.Canny takes int16 gradients: a [0, 1] image's Sobel components are at most 4 in size,
# so 4096 per unit keeps them under 2**14 with 1/4096 resolution (the low threshold is 410).
_FIXED_POINT = 4096.0


def canny_edges(image: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """The H x W uint8 {0, 1} Canny edge map of an H x W x 3 uint8 RGB image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"canny_edges expects an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}"
        )
    _check_sigma(sigma)
    grey = image.astype(np.float32) @ np.array(GREY_WEIGHTS, np.float32) / 255.0
    side = 2 * _radius(sigma, image.shape[:2]) + 1
    blurred = cv2.GaussianBlur(grey, (side, side), sigma, borderType=cv2.BORDER_REFLECT_101)
    dx, dy = (
        cv2.Sobel(blurred, cv2.CV_32F, *order, ksize=3, borderType=cv2.BORDER_REPLICATE)
        for order in ((1, 0), (0, 1))
    )
    dx, dy = (np.round(d * _FIXED_POINT).astype(np.int16) for d in (dx, dy))
    edges = cv2.Canny(
        dx, dy, LOW_THRESHOLD * _FIXED_POINT, HIGH_THRESHOLD * _FIXED_POINT, L2gradient=True
    )
    return _clear_border((edges > 0).astype(np.uint8))


def canny_edges_batch(images: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """N x 1 x H x W Canny edge maps ({0, 1}, input dtype) of N x 3 x H x W RGB in [0, 1]."""
    import kornia.filters  # torch and kornia load only when a batch is processed on tensors

    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"canny_edges_batch expects N x 3 x H x W float RGB in [0, 1], "
            f"got {images.dtype} {tuple(images.shape)}"
        )
    _check_sigma(sigma)
    weights = images.new_tensor(GREY_WEIGHTS).view(1, 3, 1, 1)
    grey = (images * weights).sum(dim=1, keepdim=True)
    side = 2 * _radius(sigma, tuple(images.shape[-2:])) + 1
    _, edges = kornia.filters.canny(
        grey, LOW_THRESHOLD, HIGH_THRESHOLD, kernel_size=(side, side), sigma=(sigma, sigma)
    )
    return _clear_border(edges)


def _check_sigma(sigma: float) -> None:
    if not sigma > 0:
        raise ValueError(f"canny sigma must be positive, got {sigma}")


def _radius(sigma: float, shape: tuple[int, int]) -> int:
    # Reflect padding needs the radius under the image side; tiny images get a cut kernel.
    return max(0, min(int(_TRUNCATE * sigma + 0.5), min(shape) - 1))


def _clear_border(edges):
    edges[..., 0, :] = 0
    edges[..., -1, :] = 0
    edges[..., :, 0] = 0
    edges[..., :, -1] = 0
    return edges
