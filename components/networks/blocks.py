"""Layers more than one network builds from: convs, channel and spatial attention, residual blocks, U-Net pieces.

Every block keeps the attribute names and layer order of the networks it came from, so their
state-dict keys and their seeded initialisation are what they were. Shapes: NCHW; a block
that keeps the resolution maps (N, C, H, W) -> (N, C', H, W). Sources: docs/methods.md, the
section of each method that uses a block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

LEAKY_SLOPE = 0.2  # LeakyReLU of BasicSR's restoration networks (baseline, CAFIN, CTCNet)
INIT_STD = 0.02  # EdgeConnect BaseNetwork.init_weights / pix2pix: N(0, 0.02)
CBAM_SPATIAL_KERNEL = 7  # CBAM section 3, spatial attention


def conv3x3(c_in: int, c_out: int, stride: int = 1, dilation: int = 1, bias: bool = True,
            padding_mode: str = "zeros") -> nn.Conv2d:
    """3x3 conv padded to keep the size (at stride 1): padding = dilation."""
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=bias,
                     padding_mode=padding_mode)


def conv1x1(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, bias=bias)


def leaky_relu() -> nn.LeakyReLU:
    return nn.LeakyReLU(LEAKY_SLOPE)


def init_normal_(module: nn.Module, std: float = INIT_STD) -> None:
    """Every conv (and transposed conv) weight ~ N(0, std), bias 0; BatchNorm weight ~ N(1, std), bias 0;
    in `module.modules()` order (EdgeConnect's init_weights "normal", and CTCNet's)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, std)
            nn.init.zeros_(layer.bias)


def spectral_normal(conv: nn.Module, spectral_norm: bool = True) -> nn.Module:
    """`conv` with weight ~ N(0, 0.02) and bias 0, under spectral norm (Miyato et al. 2018) when asked."""
    nn.init.normal_(conv.weight, 0.0, INIT_STD)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return nn.utils.parametrizations.spectral_norm(conv) if spectral_norm else conv


# -- attention ------------------------------------------------------------------------------------
def squeeze_excitation(channels: int, reduction: int) -> nn.Sequential:
    """The squeeze-excitation gate (Hu et al. 2018; RCAN's CALayer): mean -> 1x1 -> ReLU -> 1x1 -> sigmoid,
    (N, C, H, W) -> (N, C, 1, 1); C / reduction hidden channels, at least 1."""
    hidden = max(1, channels // reduction)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), conv1x1(channels, hidden), nn.ReLU(), conv1x1(hidden, channels),
                         nn.Sigmoid())


class SqueezeExcitation(nn.Module):
    """x times its squeeze-excitation gate (`squeeze_excitation`)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.weights = squeeze_excitation(channels, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weights(x)


class CBAMChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al. 2018): sigmoid(MLP(avgpool) + MLP(maxpool)) scales each channel."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + peak)


class CBAMSpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(7x7 conv of the channel-wise mean and max) scales each pixel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, CBAM_SPATIAL_KERNEL, padding=CBAM_SPATIAL_KERNEL // 2)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


# -- residual blocks ------------------------------------------------------------------------------
class ResnetBlock(nn.Module):
    """pix2pix / EdgeConnect's residual block: x + [reflect-pad d, 3x3 conv (dilation d), instance norm, ReLU,
    reflect-pad 1, 3x3 conv, instance norm](x); no activation after the sum.

    `wrap` is applied to each conv as it is built (EdgeConnect: init and spectral norm).
    """

    def __init__(self, channels: int, dilation: int = 1, bias: bool = True,
                 wrap: Callable[[nn.Module], nn.Module] | None = None):
        super().__init__()
        wrap = wrap or (lambda conv: conv)
        self.body = nn.Sequential(
            nn.ReflectionPad2d(dilation),
            wrap(nn.Conv2d(channels, channels, 3, dilation=dilation, bias=bias)),
            nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1),
            wrap(nn.Conv2d(channels, channels, 3, bias=bias)),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


# -- U-Net pieces ---------------------------------------------------------------------------------
class ConvBlock(nn.Sequential):
    """Two conv3x3 + LeakyReLU(0.2) at one resolution."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(conv3x3(c_in, c_out), leaky_relu(), conv3x3(c_out, c_out), leaky_relu())


class Down(nn.Sequential):
    """Halves the resolution with a stride-2 conv3x3 + LeakyReLU, then a ConvBlock at the new width."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(conv3x3(c_in, c_out, stride=2), leaky_relu(), ConvBlock(c_out, c_out))
