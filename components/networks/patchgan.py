"""EdgeConnect's 70x70 PatchGAN discriminator with spectral normalisation.

Nazeri et al. 2019 (EdgeConnect), after the 70x70 PatchGAN of Isola et al. 2017, with spectral
normalisation (Miyato et al. 2018) on every layer. The layout's source, the departures and the
parameter counts: docs/methods.md, section "patchgan".

In: (N, in_channels, H, W), any H, W >= 24. Out: (logits (N, 1, H/8 - 2, W/8 - 2), features):
raw logits (no sigmoid), one per 70x70 receptive field; `features` is the list of the five
layers' activations (the last is the logits), what `feature_matching_loss` compares.
At 256 px: 30x30 logits; 32 px: 2x2; 64 px: 6x6. Two forwards (real, then fake) before one
backward work under DDP (tests/unit/test_models_patchgan.py checks it on 2 ranks).
Used by edge_gan, fusion_inpaint, cafin and contrastive_inpaint.
"""

from __future__ import annotations

from torch import Tensor, nn

from components.networks.blocks import spectral_normal

KERNEL = 4
MIN_SIZE = 24  # three halvings and two 4x4 stride-1 convs leave one logit
LEAKY_SLOPE = 0.2
WIDTH_MULTIPLIERS = (1, 2, 4, 8)
STRIDES = (2, 2, 2, 1, 1)


class PatchDiscriminator(nn.Module):
    """EdgeConnect's five-conv spectral-norm PatchGAN; forward(x) -> (logits, [five activations])."""

    def __init__(self, in_channels: int, width: int = 64, spectral_norm: bool = True):
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"PatchDiscriminator needs in_channels >= 1 and width >= 1; "
                             f"got in_channels={in_channels}, width={width}")
        channels = [in_channels, *(width * m for m in WIDTH_MULTIPLIERS), 1]
        self.layers = nn.ModuleList()
        for i, stride in enumerate(STRIDES):
            conv = spectral_normal(nn.Conv2d(channels[i], channels[i + 1], KERNEL, stride=stride, padding=1,
                                             bias=not spectral_norm), spectral_norm)
            is_last = i == len(STRIDES) - 1
            self.layers.append(conv if is_last else nn.Sequential(conv, nn.LeakyReLU(LEAKY_SLOPE)))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"PatchDiscriminator needs inputs of at least {MIN_SIZE}x{MIN_SIZE} pixels; "
                             f"got {tuple(x.shape[-2:])}")
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return x, features
