"""The moving average of a network's weights, one update: StyleGAN2's `g_ema` and the training
loop's EMA of every generator (components/training/ema.py) both take it."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def accumulate(average: nn.Module, live: nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * live for parameters; buffers copied."""
    for mean, param in zip(average.parameters(), live.parameters(), strict=True):
        mean.lerp_(param.detach().to(mean.dtype), 1.0 - decay)
    for mean, buffer in zip(average.buffers(), live.buffers(), strict=True):
        mean.copy_(buffer)
