"""Bicubic upsampling: the classical start CTCNet and Panini (input 'lr') build their
super-resolution output on, here because those networks compute with it.

The classical baselines the evaluate stage scores methods against (this same bicubic
among them) are in components/baselines.py: they are not methods.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def bicubic(lr: Tensor, factor: int) -> Tensor:
    """(N, 3, h*factor, w*factor), clamped to [0, 1] (bicubic overshoots at edges); PyTorch's a = -0.75.
    `factor` may be computed from a shape: int() keeps it a constant in a traced graph (the ONNX export)."""
    return F.interpolate(lr.float(), scale_factor=int(factor), mode="bicubic", align_corners=False).clamp(0.0, 1.0)
