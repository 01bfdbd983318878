"""Panini-Net's degradation representation encoder (DASR's) and MoCo's momentum key side.

Wang, Hu, Zhang 2022 (official jianzhangcs/panini `moco/`), MoCo (He et al. 2020); layers and
parameter counts: docs/methods.md, section "dre". `DegradationEncoder`: (N, 3, H, W) in [0, 1]
-> (feature (N, 4 * width), projection (N, dim)); `represent` gives the feature alone, what
Panini-Net's DAFI blocks take. `MomentumKeyEncoder`: its frozen momentum copy and the queue of
past keys (K, dim).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAKY_SLOPE = 0.1  # deg_encoder.py: LeakyReLU(0.1) after every conv and in the head
CHANNEL_MULTIPLIERS = (1, 1, 2, 2, 4, 4)  # deg_encoder.py: 64, 64, 128, 128, 256, 256
STRIDES = (1, 1, 2, 1, 2, 1)


class DegradationEncoder(nn.Module):
    """DASR / Panini-Net degradation encoder: conv backbone + global pooling + MLP head.

    Args:
        width: channels of the first conv; the six convs have (1, 1, 2, 2, 4, 4) x width.
        dim: output of the MLP head (the vector MoCo contrasts).
        input_size: images are adaptive-average-pooled to input_size x input_size first; None keeps them.

    Shapes: x (N, 3, H, W) in [0, 1] -> (feature (N, 4 * width), projection (N, dim)), neither
    normalised. The attribute names `E` and `mlp` and their layer order are the official ones.
    """

    def __init__(self, width: int = 64, dim: int = 256, input_size: int | None = 256):
        super().__init__()
        self.input_size = input_size
        layers: list[nn.Module] = []
        c_in = 3
        for multiplier, stride in zip(CHANNEL_MULTIPLIERS, STRIDES):
            c_out = width * multiplier
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1), nn.BatchNorm2d(c_out),
                       nn.LeakyReLU(LEAKY_SLOPE)]
            c_in = c_out
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.E = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(c_in, c_in), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(c_in, dim))
        self.feature_dim = c_in

    def represent(self, x: Tensor) -> Tensor:
        """(N, 4 * width): the pooled backbone feature Panini-Net consumes (not normalised)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"DegradationEncoder needs (N, 3, H, W) images in [0, 1], got {tuple(x.shape)}")
        if self.input_size is not None and tuple(x.shape[2:]) != (self.input_size, self.input_size):
            x = F.adaptive_avg_pool2d(x, self.input_size)
        return self.E(x * 2.0 - 1.0).flatten(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature = self.represent(x)
        return feature, self.mlp(feature)


class MomentumKeyEncoder(nn.Module):
    """MoCo's key side: a momentum copy of the query encoder plus the queue of past keys.

    Every parameter is frozen from construction (requires_grad False), so the training loop
    never wraps it in DDP; it changes only by `momentum_update` and `enqueue`. Buffers:
    `queue` (K, dim) of L2-normalised keys, one per row, initialised to random unit vectors
    (builder.py), and `queue_ptr`, the row the next key is written to.
    """

    def __init__(self, encoder: DegradationEncoder, queue_size: int, dim: int):
        super().__init__()
        self.encoder = encoder
        self.encoder.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        """(N, dim) L2-normalised float32 keys."""
        return F.normalize(self.encoder(x)[1].float(), dim=1)

    @torch.no_grad()
    def momentum_update(self, query_encoder: nn.Module, momentum: float) -> None:
        """Every parameter k <- m * k + (1 - m) * q (builder.py `_momentum_update_key_encoder`;
        BatchNorm running statistics are buffers, each encoder keeps its own)."""
        for key, query in zip(self.encoder.parameters(), query_encoder.parameters(), strict=True):
            key.mul_(momentum).add_(query.detach() * (1.0 - momentum))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Writes `keys` (n, dim) over the oldest rows from `queue_ptr` on, wrapping around the end,
        and moves the pointer n rows on; of a batch longer than the queue only its last K keys stay."""
        size, count, start = self.queue.shape[0], keys.shape[0], int(self.queue_ptr)
        kept = keys.detach().to(self.queue.dtype)[-size:]
        # where the kept keys land when all `count` are written one after another from `start`
        first = start + count - kept.shape[0]
        self.queue[(first + torch.arange(kept.shape[0], device=self.queue.device)) % size] = kept
        self.queue_ptr[0] = (start + count) % size
