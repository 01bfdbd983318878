"""The classical baselines every learned method is scored against, on the same held-out split.

- inpainting: the mean colour of the known pixels (`inputs.fill_holes`, what a network sees
  before it learns anything), OpenCV's Telea (fast marching, Telea 2004) and Navier-Stokes
  (Bertalmio, Bertozzi, Sapiro 2001) inpainting, both with OpenCV's usual radius of 3 px;
- super-resolution: bicubic upsampling (PyTorch's, a = -0.75, as CTCNet's and most SR
  papers' "Bicubic" rows): `networks.classical.bicubic`, the very function CTCNet and Panini
  start their output from, so the baseline is exactly the methods' own starting point;
- blind restoration: the degraded input itself, its holes mean-filled.

Not methods: nothing here is trained or registered. Which task faces which baseline is the
task's (components/tasks). This module imports of the methods' code only the shared input
helpers in components/networks (docs/architecture.md, "Arrows").

Tensors: float32 NCHW in [0, 1]; `mask` (N, 1, H, W), 1 = missing. Every baseline keeps the
known pixels of an inpainting input exactly, as the learned methods do.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from components.networks.classical import bicubic
from components.networks.inputs import fill_holes, paste_known

__all__ = ["INPAINT_RADIUS", "bicubic", "mean_fill", "navier_stokes", "telea"]

INPAINT_RADIUS = 3  # px; OpenCV's documented example value, the one inpainting papers' "Telea" rows use


def mean_fill(image: Tensor, mask: Tensor) -> Tensor:
    return fill_holes(image, mask)


def telea(image: Tensor, mask: Tensor) -> Tensor:
    return _opencv_inpaint(image, mask, cv2.INPAINT_TELEA)


def navier_stokes(image: Tensor, mask: Tensor) -> Tensor:
    return _opencv_inpaint(image, mask, cv2.INPAINT_NS)


def _opencv_inpaint(image: Tensor, mask: Tensor, algorithm: int) -> Tensor:
    """cv2.inpaint on 8-bit images (all it takes), one image at a time; known pixels kept at full precision.

    The holes are blanked first: OpenCV's implementations read some pixels under the mask, and
    evaluated on `lq = hq` they would otherwise see the ground truth they are meant to invent.
    """
    image_with_holes = image * (1 - mask.to(image.dtype))
    pixels = (image_with_holes.detach().cpu().permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    holes = (mask.detach().cpu()[:, 0] > 0.5).to(torch.uint8).numpy()
    filled = np.stack([cv2.inpaint(np.ascontiguousarray(p), h, INPAINT_RADIUS, algorithm) for p, h in zip(pixels, holes)])
    out = torch.from_numpy(filled).permute(0, 3, 1, 2).to(image.dtype).div(255.0).to(image.device)
    return paste_known(out, image, mask)
