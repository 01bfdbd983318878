"""The residual U-Net: the baseline's network, and the skeleton CAFIN's stage 1 fills with its own upsampler.

A U-Net (Ronneberger et al. 2015) with padded 3x3 convs, stride-2 convs, no normalisation,
LeakyReLU(0.2) and a residual output whose last conv starts at zero. In: (N, 4, H, W), the
hole-filled RGB image and the mask; out: (N, 3, H, W) = x[:, :3] + correction, not clamped;
H and W divisible by 2**depth. Sources and widths: docs/methods.md, section "baseline".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.networks.blocks import ConvBlock, Down, conv3x3, leaky_relu

IN_CHANNELS = 4  # RGB hole-filled image + mask
OUT_CHANNELS = 3


class Up(nn.Module):
    """Bilinear x2 + conv3x3 to the skip's width, concatenated with the skip, then a ConvBlock."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.reduce = nn.Sequential(conv3x3(c_in, c_out), leaky_relu())
        self.block = ConvBlock(2 * c_out, c_out)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([self.reduce(x), skip], dim=1))


class ResidualUNet(nn.Module):
    """stem ConvBlock, a `Down` per level, `up(c_in, c_out)` blocks back up with the skips, zero-init 1x1 head.

    `widths[i]` is level i's channels (len(widths) = depth + 1). forward(x (N, 4, H, W)) ->
    x[:, :3] + head(features), (N, 3, H, W).
    """

    def __init__(self, widths: Sequence[int], up: Callable[[int, int], nn.Module]):
        super().__init__()
        self.depth = depth = len(widths) - 1
        self.stem = ConvBlock(IN_CHANNELS, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], OUT_CHANNELS, kernel_size=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        factor = 2**self.depth
        if x.ndim != 4 or x.shape[1] != IN_CHANNELS or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"{type(self).__name__}(depth={self.depth}) needs (N, {IN_CHANNELS}, H, W) with H and W "
                             f"divisible by {factor}, got {tuple(x.shape)}")
        features = self.stem(x)
        skips = []
        for down in self.downs:
            skips.append(features)
            features = down(features)
        for up, skip in zip(self.ups, reversed(skips)):
            features = up(features, skip)
        return x[:, :OUT_CHANNELS] + self.head(features)


class BaselineUNet(ResidualUNet):
    """The baseline's residual U-Net: level i has width * 2**i channels, bilinear `Up` blocks.

    Args:
        width: channels at full resolution.
        depth: number of stride-2 levels; inputs need H and W divisible by 2**depth.
    """

    def __init__(self, width: int = 32, depth: int = 3):
        super().__init__([width * 2**level for level in range(depth + 1)], Up)
