"""EdgeConnect's edge generator: completes the Canny edge map inside the holes.

Nazeri et al. 2019, knazeri/edge-connect src/networks.py `EdgeGenerator`; the layout, its
sources and the parameter counts: docs/methods.md, section "edge_gan". In: (N, 3, H, W), the
grey image with white holes, the edge map with empty holes and the mask; out: (N, 1, H, W)
edge probabilities. H and W divisible by 4 and above 4 x dilation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from components.networks.blocks import ResnetBlock, spectral_normal

GENERATOR_IN_CHANNELS = 3  # masked grey, masked edges, mask
DOWNSAMPLES = 2  # EdgeGenerator's two stride-2 convs: H and W must divide by 4


class EdgeGenerator(nn.Module):
    """EdgeConnect's edge generator.

    Args:
        width: channels of the first conv; 2 x and 4 x after the two downsamples.
        residual_blocks: dilated residual blocks at 4 x width, quarter resolution.
        dilation: dilation of each block's first conv; needs H / 4 > dilation.
        spectral_norm: on every conv but the output conv.

    Shapes: x (N, 3, H, W) = masked grey, masked edges, mask -> (N, 1, H, W) edge probabilities.
    """

    def __init__(self, width: int = 64, residual_blocks: int = 8, dilation: int = 2, spectral_norm: bool = True):
        super().__init__()
        self.dilation = dilation
        w1, w2, w4 = width, 2 * width, 4 * width

        def normalised(conv: nn.Module) -> nn.Module:
            return spectral_normal(conv, spectral_norm)

        def stage(conv: nn.Module, channels: int) -> list[nn.Module]:
            return [normalised(conv), nn.InstanceNorm2d(channels), nn.ReLU()]

        self.encoder = nn.Sequential(
            nn.ReflectionPad2d(3), *stage(nn.Conv2d(GENERATOR_IN_CHANNELS, w1, 7), w1),
            *stage(nn.Conv2d(w1, w2, 4, stride=2, padding=1), w2),
            *stage(nn.Conv2d(w2, w4, 4, stride=2, padding=1), w4),
        )
        # Convs without bias under spectral norm (EdgeConnect ResnetBlock: bias=not use_spectral_norm).
        self.middle = nn.Sequential(*(ResnetBlock(w4, dilation, bias=not spectral_norm, wrap=normalised)
                                      for _ in range(residual_blocks)))
        self.decoder = nn.Sequential(
            *stage(nn.ConvTranspose2d(w4, w2, 4, stride=2, padding=1), w2),
            *stage(nn.ConvTranspose2d(w2, w1, 4, stride=2, padding=1), w1),
            nn.ReflectionPad2d(3), spectral_normal(nn.Conv2d(w1, 1, 7), spectral_norm=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        factor = 2**DOWNSAMPLES
        if x.ndim != 4 or x.shape[1] != GENERATOR_IN_CHANNELS or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"EdgeGenerator needs (N, {GENERATOR_IN_CHANNELS}, H, W) with H and W divisible by "
                             f"{factor}, got {tuple(x.shape)}")
        if min(x.shape[2:]) // factor <= self.dilation:
            raise ValueError(f"EdgeGenerator(dilation={self.dilation}) needs H and W above {factor * self.dilation} "
                             f"(reflection padding at quarter resolution), got {tuple(x.shape)}")
        return torch.sigmoid(self.decoder(self.middle(self.encoder(x))))
