"""CUT's ResNet generator with a feature attention module: the network of unpaired masked-face inpainting.

Wan et al. 2024 build on CUT (Park et al. 2020), whose layer sizes these are; the feature
attention (squeeze-and-excitation, then SAGAN's non-local attention) is ours. Sources and
departures: docs/methods.md, section "contrastive_inpaint". `AttentionResnetGenerator`:
(N, 4, H, W) = hole-filled RGB + mask, H and W divisible by 4 -> (N, 3, H, W) =
x[:, :3] + correction, not clamped; with `taps`, the encoder features PatchNCE compares.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.networks.blocks import ResnetBlock, squeeze_excitation

IN_CHANNELS = 4  # hole-filled RGB + mask
OUT_CHANNELS = 3
DOWNSAMPLINGS = 2  # fixed in CUT's ResnetGenerator
LAYERS_BEFORE_BLOCKS = 12  # CUT's Sequential: pad, conv, norm, relu, then 2 x (conv, norm, relu, blur-pool)
INIT_GAIN = 0.02  # CUT base_options.py --init_gain (xavier)


def init_xavier(module: nn.Module) -> None:
    """CUT's `init_weights(init_type='xavier', init_gain=0.02)` on every conv and linear layer."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(layer.weight, gain=INIT_GAIN)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def conv_norm_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.InstanceNorm2d(c_out), nn.ReLU()]


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect-pad 1, depthwise [1, 2, 1] x [1, 2, 1] / 16 blur, stride 2.

    CUT networks.py `Downsample` (filt_size 3), after Zhang 2019, "Making Convolutional
    Networks Shift-Invariant Again". The filter is a constant, not a parameter or saved state.
    """

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps) / 16.0
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.kernel.to(x.dtype), stride=2,
                        groups=x.shape[1])


class Upsample2x(nn.Module):
    """x2 bilinear upsampling: CUT's anti-aliased `Upsample` (filt_size 4) computes exactly this."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class FeatureAttention(nn.Module):
    """Channel attention (squeeze-and-excitation), then non-local self-attention over all positions.

    Args:
        channels: C of the feature map.
        reduction: SE bottleneck is C / reduction (Hu et al. 2018 use 16).
        key_ratio: query / key width is C / key_ratio (SAGAN uses 8).

    Shapes: (N, C, H, W) -> (N, C, H, W). Attention is an (HW x HW) softmax per image, computed
    by `scaled_dot_product_attention` with scale 1 (SAGAN does not scale its logits), which
    runs as a memory-efficient kernel on GPU.
    """

    def __init__(self, channels: int, reduction: int = 16, key_ratio: int = 8):
        super().__init__()
        key_width = max(1, channels // key_ratio)
        self.excite = squeeze_excitation(channels, reduction)
        self.query = nn.Conv2d(channels, key_width, 1)
        self.key = nn.Conv2d(channels, key_width, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        # SAGAN: the block starts as the identity and learns how much non-local evidence to mix in.
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.excite(x)
        n, c, h, w = x.shape

        def tokens(conv: nn.Conv2d) -> Tensor:  # (N, 1, HW, C') for scaled_dot_product_attention
            return conv(x).flatten(2).transpose(1, 2).unsqueeze(1)

        attended = F.scaled_dot_product_attention(tokens(self.query), tokens(self.key), tokens(self.value), scale=1.0)
        return x + self.gamma * attended.squeeze(1).transpose(1, 2).reshape(n, c, h, w)


class AttentionResnetGenerator(nn.Module):
    """CUT's ResNet generator with a feature attention module after its residual blocks.

    Args:
        width: channels at full resolution (CUT --ngf); the blocks run at 4 x width.
        n_blocks: residual blocks (CUT resnet_9blocks: 9).
        attention_reduction: SE reduction of the feature attention module.

    forward(x) with x (N, 4, H, W) = hole-filled RGB + mask, H and W divisible by 4 ->
    (N, 3, H, W) = x[:, :3] + correction (not clamped). forward(x, taps) -> the list of the
    features after each layer index in `taps` (CUT's encode_only), stopping at the last one.
    """

    def __init__(self, width: int = 64, n_blocks: int = 9, attention_reduction: int = 16):
        super().__init__()
        inner = width * 2**DOWNSAMPLINGS
        encoder: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(IN_CHANNELS, width, 7), nn.InstanceNorm2d(width),
                                    nn.ReLU()]
        for level in range(DOWNSAMPLINGS):
            c_in = width * 2**level
            encoder += [*conv_norm_relu(c_in, 2 * c_in), BlurPool(2 * c_in)]
        encoder += [ResnetBlock(inner) for _ in range(n_blocks)]
        self.encoder = nn.Sequential(*encoder)
        self.attention = FeatureAttention(inner, attention_reduction)
        decoder: list[nn.Module] = []
        for level in reversed(range(DOWNSAMPLINGS)):
            c_out = width * 2**level
            decoder += [Upsample2x(), *conv_norm_relu(2 * c_out, c_out)]
        decoder += [nn.ReflectionPad2d(3), nn.Conv2d(width, OUT_CHANNELS, 7)]
        self.decoder = nn.Sequential(*decoder)
        self.encoder_channels = self._channels_after_each_encoder_layer()
        init_xavier(self)
        head = self.decoder[-1]
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)

    def _channels_after_each_encoder_layer(self) -> list[int]:
        channels, current = [], IN_CHANNELS
        for layer in self.encoder:
            if isinstance(layer, nn.Conv2d):
                current = layer.out_channels
            channels.append(current)
        return channels

    def forward(self, x: Tensor, taps: Sequence[int] = ()) -> Tensor | list[Tensor]:
        factor = 2**DOWNSAMPLINGS
        if x.ndim != 4 or x.shape[1] != IN_CHANNELS or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"AttentionResnetGenerator needs (N, {IN_CHANNELS}, H, W) with H and W divisible by "
                             f"{factor}, got {tuple(x.shape)}")
        if taps:
            return self._encode(x, taps)
        features = self.attention(self.encoder(x))
        return x[:, :OUT_CHANNELS] + self.decoder(features)

    def _encode(self, x: Tensor, taps: Sequence[int]) -> list[Tensor]:
        if max(taps) >= len(self.encoder):
            raise ValueError(f"encoder layer {max(taps)} does not exist: the encoder has {len(self.encoder)} layers")
        features = []
        for index, layer in enumerate(self.encoder):
            x = layer(x)
            if index in taps:
                features.append(x)
            if index == max(taps):
                break
        return features
