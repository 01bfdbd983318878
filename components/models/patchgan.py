"""EdgeConnect's 70x70 PatchGAN discriminator with spectral normalisation.

Paper: Nazeri, Ng, Joseph, Qureshi, Ebrahimi 2019, "EdgeConnect: Generative Image Inpainting
with Adversarial Edge Learning", section 3.1 and appendix; the discriminator follows the 70x70
PatchGAN of Isola et al. 2017 ("Image-to-Image Translation with Conditional Adversarial
Networks"), with spectral normalisation (Miyato et al. 2018) on every layer.

Layout (knazeri/edge-connect, src/networks.py `Discriminator`): five 4x4 convs, padding 1,
widths 64-128-256-512-1 (here `width` x 1, 2, 4, 8, then 1), strides 2, 2, 2, 1, 1, a
LeakyReLU(0.2) after each of the first four, no activation after the last; no normalisation
layer; conv bias only without spectral norm (a bias is redundant beside a normalised weight,
as in the official code). Weights drawn from N(0, 0.02), biases zero (src/networks.py
`BaseNetwork.init_weights`, defaults `normal`, gain 0.02).

In: (N, in_channels, H, W), any H, W >= 24. Out: (logits (N, 1, H/8 - 2, W/8 - 2), features):
raw logits, one per 70x70 receptive field; `features` is the list of the five layers'
activations (the last is the logits), what `feature_matching_loss` compares.
At 256 px: 30x30 logits; 32 px: 2x2; 64 px: 6x6.

Departures from the official code:
- no sigmoid: EdgeConnect squashes the output for its nsgan/lsgan losses; here
  `components.losses.adversarial.AdversarialLoss` takes logits (numerically stable BCE).
- LeakyReLU not in place, so no returned feature map is ever overwritten.
- spectral norm from `torch.nn.utils.parametrizations.spectral_norm` rather than the older
  `torch.nn.utils.spectral_norm` hook (one power iteration per training forward in both).
  The parametrization clones its power-iteration vectors before using them, so two forwards
  (real, then fake) before one backward work under DDP, whose buffer broadcast rewrites those
  vectors in place at each forward; tests/unit/test_models_patchgan.py checks it on 2 ranks.

Parameters at width 64: 2,763,776 with 3 input channels (EdgeConnect's inpainting
discriminator, RGB) and 2,762,752 with 2 (its edge discriminator, grayscale + edge); spectral
norm adds none, only its power-iteration buffers. The paper states no count.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

KERNEL = 4
MIN_SIZE = 24  # three halvings and two 4x4 stride-1 convs leave one logit
LEAKY_SLOPE = 0.2
INIT_STD = 0.02
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
            conv = nn.Conv2d(channels[i], channels[i + 1], KERNEL, stride=stride, padding=1,
                             bias=not spectral_norm)
            nn.init.normal_(conv.weight, 0.0, INIT_STD)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            if spectral_norm:
                conv = apply_spectral_norm(conv)
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
