"""What a restoration network sees: the degraded image with its holes filled, plus the mask.

Holes are filled with the mean colour of each image's known pixels, per channel, so the
network never sees the arbitrary value the degradation left there. The filled image is also
the "untouched degraded input" that the evaluate stage scores as the floor every method
must beat, which is why it lives here, shared (with the baselines, components/baselines.py).

Tensors: float32 NCHW in [0, 1]; `lq` (N, 3, H, W), `mask` (N, 1, H, W) with 1 = missing pixel.
"""

from __future__ import annotations

import torch
from torch import Tensor

# An image with no known pixel has no colour to borrow: mid-grey is the least-wrong guess.
ALL_MISSING_FILL = 0.5


def fill_holes(lq: Tensor, mask: Tensor) -> Tensor:
    """`lq` with every masked pixel replaced by the per-image, per-channel mean of its known pixels."""
    if lq.ndim != 4 or mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != lq.shape[0] \
            or mask.shape[2:] != lq.shape[2:]:
        raise ValueError(f"fill_holes needs lq (N, C, H, W) and mask (N, 1, H, W), got {tuple(lq.shape)} "
                         f"and {tuple(mask.shape)}")
    mask = mask.to(lq.dtype)
    known = 1.0 - mask
    count = known.sum(dim=(2, 3), keepdim=True)
    total = (lq * known).sum(dim=(2, 3), keepdim=True)
    mean = torch.where(count > 0, total / count.clamp_min(1.0), torch.full_like(total, ALL_MISSING_FILL))
    return lq * known + mean * mask


def model_input(batch: dict[str, Tensor]) -> Tensor:
    """(N, 4, H, W): the hole-filled RGB image, then the mask."""
    lq, mask = batch["lq"], batch["mask"]
    return torch.cat([fill_holes(lq, mask), mask.to(lq.dtype)], dim=1)


def paste_known(output: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """An inpainting result: `image`'s known pixels exactly, `output` only inside the holes (mask 1)."""
    if output.shape != image.shape or mask.shape[1] != 1 or mask.shape[2:] != image.shape[2:]:
        raise ValueError(f"paste_known needs output and image of one shape and a (N, 1, H, W) mask, got "
                         f"{tuple(output.shape)}, {tuple(image.shape)} and {tuple(mask.shape)}")
    return torch.where(mask.bool(), output.to(image.dtype), image)
