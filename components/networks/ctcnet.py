"""CTCNet's network: a CNN-Transformer cooperation network for face super-resolution.

Gao et al. 2023 (IEEE TIP), official code IVIPLab/CTCNet; widths, counts and departures:
docs/methods.md, section "ctcnet". `CTCNetGenerator`: lr (N, 3, h, w) in [0, 1] ->
(N, 3, h * scale, w * scale), not clamped; h * scale and w * scale multiples of 8 and at least
16. A head conv, a three-level encoder of LGCMs (FSAU + Restormer Transformer blocks), FRMs at
the H/8 bottleneck, a decoder of transposed convs, MFFUs and LGCMs, and a tail conv plus the
bicubic input (a global residual on the [-1, 1] scale the official network sees).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.networks.blocks import LEAKY_SLOPE, SqueezeExcitation, conv1x1, conv3x3, init_normal_
from components.networks.classical import bicubic

LEVELS = 3  # encoder levels at H, H/2, H/4; the bottleneck is at H/8
ATTENTION_REDUCTION = 16  # squeeze-excitation reduction of every channel attention (`CALayer(..., 16)`)


class ScaledResidualConv(nn.Module):
    """a * x + b * conv(PReLU(conv(x))), the inner conv at half width; a, b learned, init 1 (`one_conv`)."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(conv3x3(channels, half), nn.PReLU(half), conv3x3(half, channels))
        self.mix = nn.Parameter(torch.ones(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.mix[0] * x + self.mix[1] * self.branch(x)


class LocalFeatureBlock(nn.Module):
    """Two scaled residual convs, both outputs merged (1x1 conv + ReLU), channel attention, 3x3 conv + ReLU,
    added to the input with learned scalar weights (`one_module`). (N, C, H, W) -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.first = ScaledResidualConv(channels)
        self.second = ScaledResidualConv(channels)
        self.merge = nn.Sequential(conv1x1(2 * channels, channels, bias=False), nn.ReLU())
        self.attention = SqueezeExcitation(channels, ATTENTION_REDUCTION)
        self.refine = nn.Sequential(conv3x3(channels, channels, bias=False), nn.ReLU())
        self.mix = nn.Parameter(torch.ones(4))  # second, first, input, refined

    def forward(self, x: Tensor) -> Tensor:
        first = self.first(x)
        second = self.second(first)
        merged = self.merge(torch.cat([self.mix[0] * second, self.mix[1] * first], dim=1))
        return self.mix[2] * x + self.mix[3] * self.refine(self.attention(merged))


class ConvNormPReLU(nn.Sequential):
    """3x3 conv (no bias, replicate padding) + BatchNorm + PReLU: the hourglass's layer (`ConvLayer`, norm 'bn')."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__(conv3x3(c_in, c_out, stride, bias=False, padding_mode="replicate"),
                         nn.BatchNorm2d(c_out), nn.PReLU(c_out))


class HourglassAttention(nn.Module):
    """SPARNet's hourglass spatial attention as CTCNet uses it inside the FSAU.

    Each of `depth` levels keeps a full-size branch and a stride-2 branch that recurses; the
    coarse result is enlarged (nearest) and convolved, then added to the kept branch. The
    result gets channel attention, a skip of the input (1x1 conv when `channels` != `hidden`),
    and a 3x3 conv + sigmoid to a one-channel map that multiplies the input.
    (N, channels, H, W) -> same.
    """

    def __init__(self, channels: int, hidden: int, depth: int):
        super().__init__()
        widths_in = [channels] + [hidden] * (depth - 1)
        self.keep = nn.ModuleList(ConvNormPReLU(c, hidden) for c in widths_in)
        self.down = nn.ModuleList(ConvNormPReLU(c, hidden, stride=2) for c in widths_in)
        self.center = ConvNormPReLU(hidden, hidden)
        self.up = nn.ModuleList(ConvNormPReLU(hidden, hidden) for _ in widths_in)
        self.attention = SqueezeExcitation(hidden, ATTENTION_REDUCTION)
        self.skip = nn.Identity() if channels == hidden else conv1x1(channels, hidden)
        self.to_map = conv3x3(hidden, 1, padding_mode="replicate")

    def forward(self, x: Tensor) -> Tensor:
        features = self.attention(self._level(0, x)) + self.skip(x)
        return x * torch.sigmoid(self.to_map(features))

    def _level(self, level: int, x: Tensor) -> Tensor:
        kept = self.keep[level](x)
        coarse = self.down[level](x)
        coarse = self._level(level + 1, coarse) if level + 1 < len(self.keep) else self.center(coarse)
        return kept + self.up[level](F.interpolate(coarse, size=kept.shape[-2:], mode="nearest"))


class FSAU(nn.Module):
    """Facial Structure Attention Unit: local feature block -> hourglass attention -> local feature block."""

    def __init__(self, channels: int, hidden: int, depth: int):
        super().__init__()
        self.local_in = LocalFeatureBlock(channels)
        self.attention = HourglassAttention(channels, hidden, depth)
        self.local_out = LocalFeatureBlock(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.local_out(self.attention(self.local_in(x)))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel (Restormer's 'WithBias' LayerNorm on NCHW)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TransposedAttention(nn.Module):
    """Multi-Dconv head transposed attention (Restormer): q, k, v from a 1x1 then a depthwise 3x3 conv;
    attention between channels (C/heads x C/heads per head) of L2-normalised q and k, scaled by a
    learned temperature per head."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Sequential(conv1x1(channels, 3 * channels, bias=False),
                                 nn.Conv2d(3 * channels, 3 * channels, 3, padding=1, groups=3 * channels, bias=False))
        self.project = conv1x1(channels, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = (t.reshape(n, self.heads, c // self.heads, h * w) for t in self.qkv(x).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attention = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project((attention @ v).reshape(n, c, h, w))


class GatedFeedForward(nn.Module):
    """Gated-Dconv feed-forward (Restormer): 1x1 to 2 x hidden, depthwise 3x3, GELU(one half) x other half, 1x1 back."""

    def __init__(self, channels: int, expansion: float):
        super().__init__()
        hidden = int(channels * expansion)
        self.expand = nn.Sequential(conv1x1(channels, 2 * hidden, bias=False),
                                    nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False))
        self.project = conv1x1(hidden, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.expand(x).chunk(2, dim=1)
        return self.project(F.gelu(gate) * value)


class TransformerBlock(nn.Module):
    """Pre-norm residual attention then feed-forward. (N, C, H, W) -> same."""

    def __init__(self, channels: int, heads: int, expansion: float):
        super().__init__()
        self.norm_attention = ChannelLayerNorm(channels)
        self.attention = TransposedAttention(channels, heads)
        self.norm_feed_forward = ChannelLayerNorm(channels)
        self.feed_forward = GatedFeedForward(channels, expansion)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm_attention(x))
        return x + self.feed_forward(self.norm_feed_forward(x))


class LGCM(nn.Module):
    """Local-Global Feature Cooperation Module: x + Transformer blocks(FSAU(x))."""

    def __init__(self, channels: int, hidden: int, depth: int, blocks: int, heads: int, expansion: float):
        super().__init__()
        self.fsau = FSAU(channels, hidden, depth)
        self.transformer = nn.Sequential(*(TransformerBlock(channels, heads, expansion) for _ in range(blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.transformer(self.fsau(x))


class FRM(nn.Module):
    """Feature Refinement Module: an FSAU, then low- and high-frequency branches crossed and fused
    (see the module docstring). (N, C, H, W) -> same; H, W >= 2."""

    def __init__(self, channels: int, hidden: int, depth: int):
        super().__init__()
        self.fsau = FSAU(channels, hidden, depth)
        self.low = LocalFeatureBlock(channels)
        self.high = LocalFeatureBlock(channels)
        self.cross = conv1x1(2 * channels, channels)
        self.merge = nn.Sequential(conv1x1(2 * channels, channels, bias=False), nn.ReLU())
        self.gate = conv1x1(channels, channels)
        self.branch_weights = nn.Parameter(torch.full((2,), 0.5))  # official `Scale(0.5)` x 2

    def forward(self, x: Tensor) -> Tensor:
        features = self.fsau(x)
        size = features.shape[-2:]
        low = F.avg_pool2d(features, 2)
        high = features - _enlarge(low, size)
        low, high = self.low(low), self.high(high)
        first, second = self.branch_weights[0], self.branch_weights[1]
        high = self.high(self.cross(torch.cat([first * _enlarge(low, size), second * high], dim=1)))
        low = _enlarge(self.low(low), size)
        # The official code weights the branches the other way round in this second fusion.
        fused = self.merge(torch.cat([second * low, first * high], dim=1)) + features * self.gate(features)
        return x + self.fsau.local_out(fused)


def _enlarge(x: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class MFFU(nn.Module):
    """Multi-scale Feature Fusion Unit: features already at this level's size, concatenated -> 3x3 conv ->
    channel attention."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.fuse = conv3x3(c_in, c_out)
        self.attention = SqueezeExcitation(c_out, ATTENTION_REDUCTION)

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.attention(self.fuse(torch.cat(features, dim=1)))


def downsampling(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(c_in, c_out, stride=2, bias=False), nn.LeakyReLU(LEAKY_SLOPE),
                         conv3x3(c_out, c_out, bias=False), nn.LeakyReLU(LEAKY_SLOPE))


def upsampling(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 6, stride=2, padding=2, bias=False), nn.LeakyReLU(LEAKY_SLOPE),
                         conv3x3(c_out, c_out, bias=False), nn.LeakyReLU(LEAKY_SLOPE))


def enlarger(channels: int, doublings: int) -> nn.ConvTranspose2d:
    """A transposed conv that doubles the size: 8x8 kernel when used once, 6x6 when applied repeatedly (official)."""
    kernel, padding = (8, 3) if doublings == 1 else (6, 2)
    return nn.ConvTranspose2d(channels, channels, kernel, stride=2, padding=padding)


class CTCNetGenerator(nn.Module):
    """The CTCNet network: LR image in, SR image out.

    Args: as CTCNetConfig (scale, width, encoder_blocks, heads, refinement_blocks, fsau_depth,
    frm_fsau_depth, ffn_expansion).

    Shapes: lr (N, 3, h, w) -> (N, 3, h * scale, w * scale), not clamped (the loss sees the raw
    output); h * scale and w * scale must be multiples of 8 and at least 16.
    """

    def __init__(self, scale: int = 8, width: int = 32, encoder_blocks: tuple[int, ...] = (4, 6, 6),
                 heads: tuple[int, ...] = (1, 2, 4), refinement_blocks: int = 4, fsau_depth: int = 4,
                 frm_fsau_depth: int = 2, ffn_expansion: float = 2.66):
        super().__init__()
        self.scale = scale
        widths = [width * 2**level for level in range(LEVELS)]
        hidden = 2 * width
        self.head = conv3x3(3, width)
        self.encoders = nn.ModuleList(LGCM(widths[i], hidden, fsau_depth, encoder_blocks[i], heads[i], ffn_expansion)
                                      for i in range(LEVELS))
        # The bottleneck (H/8) keeps the last level's width (official: 128 -> 128).
        self.downs = nn.ModuleList(downsampling(widths[i], widths[min(i + 1, LEVELS - 1)]) for i in range(LEVELS))
        self.refinement = nn.Sequential(*(FRM(widths[-1], hidden, frm_fsau_depth) for _ in range(refinement_blocks)))
        # Decoder modules indexed by level (0 = HR), run from the coarsest level up.
        self.ups = nn.ModuleList(upsampling(widths[min(i + 1, LEVELS - 1)], widths[i]) for i in range(LEVELS))
        self.fusions = nn.ModuleList(MFFU(widths[i] + sum(widths), widths[i]) for i in range(LEVELS))
        self.decoders = nn.ModuleList(LGCM(widths[i], hidden, fsau_depth, encoder_blocks[i], heads[i], ffn_expansion)
                                      for i in range(LEVELS))
        # MFFU resamplers: one shrinking conv per source level, shared by every target and every halving.
        self.shrink = nn.ModuleList(conv3x3(widths[i], widths[i], stride=2) for i in range(LEVELS - 1))
        self.enlarge = nn.ModuleDict({f"{src}to{dst}": enlarger(widths[src], src - dst)
                                      for src in range(1, LEVELS) for dst in range(src)})
        self.tail = conv3x3(width, 3)
        init_normal_(self)
        nn.init.zeros_(self.tail.weight)

    def forward(self, lr: Tensor) -> Tensor:
        step = 2**LEVELS
        sizes = [side * self.scale for side in lr.shape[-2:]] if lr.ndim == 4 else []
        if lr.ndim != 4 or lr.shape[1] != 3 or any(side % step or side < 2 * step for side in sizes):
            raise ValueError(f"CTCNetGenerator(scale={self.scale}) needs lr (N, 3, h, w) with h and w x {self.scale} "
                             f"multiples of {step} and at least {2 * step}, got {tuple(lr.shape)}")
        upsampled = bicubic(lr, self.scale)
        features = self.head(upsampled * 2.0 - 1.0)  # the official network sees [-1, 1]
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            features = encoder(features)
            skips.append(features)
            features = down(features)
        features = self.refinement(features)
        for level in reversed(range(LEVELS)):
            features = self.ups[level](features)
            resized = [self._resize(skips[src], src, level) for src in range(LEVELS)]
            features = self.decoders[level](self.fusions[level]([features, *resized]))
        # Residual to the bicubic input on the [-1, 1] scale, mapped back to [0, 1].
        return upsampled + 0.5 * self.tail(features)

    def _resize(self, x: Tensor, src: int, dst: int) -> Tensor:
        if src < dst:
            for _ in range(dst - src):
                x = self.shrink[src](x)
        elif src > dst:
            grow = self.enlarge[f"{src}to{dst}"]
            for _ in range(src - dst):
                x = grow(x)
        return x
