"""The GFPGAN blind degradation model, batched on tensors with kornia / torch.

    y = [(x * k_sigma) downsample_r + n_delta]_JPEG_q, then resized back  (GFPGAN eq. 1)

This is the twin of `degrade.degrade` (the OpenCV engine) for a batch on any device: the
same `DegradationParams` give the same kernel (`degrade.gaussian_kernel`), the same sizes
and, up to float error and the JPEG codec, the same image. Steps: blur with
`kornia.filters.filter2d` on a reflect-101 padded input, bilinear downsample and resize back,
Gaussian noise from a `torch.Generator`, and `kornia.enhance.jpeg_codec_differentiable`
(close to OpenCV's libjpeg, not equal).

`degrade_batch`: N x 3 x H x W RGB (uint8, or float on 0-255) and one `DegradationParams` per
image in; uint8 N x 3 x H x W on the input's device out. What matches what step by step, and
the differences measured against the OpenCV path: docs/methods.md, section
"data/degrade_gpu.py".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import filter2d

from components.data.degrade import DegradationParams, gaussian_kernel


def degrade_batch(
    images: torch.Tensor,
    params: Sequence[DegradationParams],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Degrade N x 3 x H x W RGB images (uint8, or float on 0-255) with one params each.

    Returns uint8 N x 3 x H x W on the input's device. `generator` (on that device) draws
    only the noise, one sample after another in batch order, so the same generator state
    gives the same bytes, and a batch gives what its samples give one by one (up to a
    level of float rounding). Samples whose downscaled sizes agree are compressed and
    resized back together.
    """
    work = _as_float_batch(images)
    if len(params) != work.shape[0]:
        raise ValueError(f"degrade_batch got {work.shape[0]} images but {len(params)} params")
    if not params:
        return work.to(torch.uint8)
    height, width = work.shape[-2:]
    work = blur(work, params)
    sizes = [downscaled_size(height, width, p.scale) for p in params]
    noisy = [
        add_noise(downsample(work[i : i + 1], size), [p.noise_sigma], generator)
        for i, (p, size) in enumerate(zip(params, sizes))
    ]
    out = torch.empty_like(work)
    for size in dict.fromkeys(sizes):
        index = [i for i, s in enumerate(sizes) if s == size]
        group = torch.cat([noisy[i] for i in index])
        group = jpeg(group, [params[i].jpeg_quality for i in index])
        out[index] = resize_back(group, (height, width))
    return out.round().clamp(0, 255).to(torch.uint8)


def blur(images: torch.Tensor, params: Sequence[DegradationParams]) -> torch.Tensor:
    """Filter each float image with its own `gaussian_kernel`, borders reflect-101."""
    kernels = _kernel_stack(params, images.device)
    pad = kernels.shape[-1] // 2
    return filter2d(_pad_reflect101(images, pad), kernels, padding="valid")


def downscaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(h, w) after downscaling by `scale`, floored and at least 1, exactly as `degrade` does."""
    return max(1, int(height // scale)), max(1, int(width // scale))


def downsample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize to (h, w), no antialiasing: `cv2.resize(..., INTER_LINEAR)`."""
    return _bilinear(images, size)


def add_noise(
    images: torch.Tensor, sigmas: Sequence[float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add Gaussian noise of per-sample std `sigmas` (0-255 scale), then clip to [0, 255]."""
    sigma = torch.as_tensor(sigmas, dtype=images.dtype, device=images.device).view(-1, 1, 1, 1)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return (images + noise * sigma).clamp(0, 255)


def jpeg(images: torch.Tensor, qualities: Sequence[int]) -> torch.Tensor:
    """JPEG-compress and decode float 0-255 images at per-sample quality; whole levels out.

    Like `degrade`, which encodes uint8, the input is rounded first; the decoded image is
    rounded back to whole levels as libjpeg's uint8 output is.
    """
    quality = torch.as_tensor(qualities, dtype=torch.float32, device=images.device)
    unit = images.round().clamp(0, 255).float() / 255.0
    decoded = jpeg_codec_differentiable(unit, quality)
    return (decoded * 255.0).round().clamp(0, 255).to(images.dtype)


def resize_back(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize up to the original (H, W), like `degrade`'s final INTER_LINEAR resize."""
    return _bilinear(images, size)


def _bilinear(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images  # cv2.resize to the same size copies
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=False)


def _as_float_batch(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"degrade_batch expects N x 3 x H x W, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"degrade_batch expects uint8 or float on 0-255, got {images.dtype}")
    return images.float()


def _kernel_stack(params: Sequence[DegradationParams], device: torch.device) -> torch.Tensor:
    """(N, k, k) kernels; smaller ones are zero-padded to the largest, which filters the same."""
    size = max(p.kernel_size for p in params)
    stack = np.zeros((len(params), size, size), dtype=np.float32)
    for i, p in enumerate(params):
        start = (size - p.kernel_size) // 2
        end = start + p.kernel_size
        stack[i, start:end, start:end] = gaussian_kernel(p.kernel_size, p.sigma_x, p.sigma_y, p.theta)
    return torch.from_numpy(stack).to(device)


def _pad_reflect101(images: torch.Tensor, pad: int) -> torch.Tensor:
    rows = _reflect101_index(images.shape[-2], pad, images.device)
    cols = _reflect101_index(images.shape[-1], pad, images.device)
    return images.index_select(-2, rows).index_select(-1, cols)


def _reflect101_index(length: int, pad: int, device: torch.device) -> torch.Tensor:
    """Source index of each padded position, mirrored about the edge pixels (OpenCV's
    BORDER_REFLECT_101, `gfedcb|abcdefgh|gfedcba`), repeating when pad exceeds the length."""
    position = torch.arange(-pad, length + pad, device=device)
    if length == 1:
        return torch.zeros_like(position)
    period = 2 * (length - 1)
    folded = position.remainder(period)
    return torch.where(folded < length, folded, period - folded)
