"""CAFIN's generator: a U-Net with a dual upsampler, then cross-attention refinement at 1/4 resolution.

Li et al. 2024; every number the paper's text does not fix comes from the nearest public code,
cited with the departures in docs/methods.md, section "cafin". `CAFINGenerator`: (N, 4, H, W),
the hole-filled image and the mask -> (coarse, refined), each (N, 3, H, W), not clamped; H and W
divisible by max(2**depth, 4). Stage 1 `CoarseUNet` (components/networks/unet.py's skeleton,
PixelShuffle and interpolation side by side); stage 2 `CrossAttentionRefiner` (spatial and
channel cross-attention between the stage-1 result and the masked input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.networks.blocks import LEAKY_SLOPE, ConvBlock, conv3x3, leaky_relu
from components.networks.unet import IN_CHANNELS, OUT_CHANNELS, ResidualUNet

MAX_WIDTH_MULTIPLIER = 8  # pix2pix UnetGenerator: ngf * 8 at most
REFINE_SCALE = 4  # stage 2 works at 1/4 resolution: EdgeConnect's two stride-2 convs
# A 4x4 cell more than half hole is no context to borrow from (see SpatialCrossAttention).
HOLE_KEY_THRESHOLD = 0.5
# Finite, so a query whose every key is a hole gets uniform attention instead of NaN.
EXCLUDED_KEY_LOGIT = -1e4


class DualUpsample(nn.Module):
    """x2 up by sub-pixel conv and by bilinear interpolation side by side, merged with the skip.

    Each branch gives half of the c_out upsampled channels; together they take the place of a
    plain U-Net's single upsampler, concatenated with the skip and merged by a conv pair.
    (N, c_in, h, w), skip (N, c_out, 2h, 2w) -> (N, c_out, 2h, 2w); c_out must be even.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        half = c_out // 2
        self.subpixel = conv3x3(c_in, 4 * half)
        self._icnr(self.subpixel, c_in, half)
        self.shuffle = nn.PixelShuffle(2)
        self.interpolated = conv3x3(c_in, c_out - half)
        self.merge = ConvBlock(2 * c_out, c_out)

    @staticmethod
    def _icnr(conv: nn.Conv2d, c_in: int, c_out: int) -> None:
        """Each group of 4 output channels that PixelShuffle spreads over a 2x2 block gets one kernel."""
        with torch.no_grad():
            fresh = conv3x3(c_in, c_out)
            conv.weight.copy_(fresh.weight.repeat_interleave(4, dim=0))
            conv.bias.copy_(fresh.bias.repeat_interleave(4, dim=0))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        sub = self.shuffle(self.subpixel(x))
        interpolated = self.interpolated(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        upsampled = F.leaky_relu(torch.cat([sub, interpolated], dim=1), LEAKY_SLOPE)
        return self.merge(torch.cat([upsampled, skip], dim=1))


class CoarseUNet(ResidualUNet):
    """Stage 1: the residual U-Net with `DualUpsample` decoder blocks and widths capped at 8 x width;
    (N, 4, H, W) -> (N, 3, H, W) = x[:, :3] + correction."""

    def __init__(self, width: int = 64, depth: int = 4):
        super().__init__([width * min(2**level, MAX_WIDTH_MULTIPLIER) for level in range(depth + 1)], DualUpsample)


class Encoder(nn.Sequential):
    """EdgeConnect's encoder layout without instance norm: (N, 4, H, W) -> (N, 4 * width, H/4, W/4)."""

    def __init__(self, width: int):
        super().__init__(
            nn.Conv2d(IN_CHANNELS, width, kernel_size=7, padding=3), leaky_relu(),
            nn.Conv2d(width, 2 * width, kernel_size=4, stride=2, padding=1), leaky_relu(),
            nn.Conv2d(2 * width, 4 * width, kernel_size=4, stride=2, padding=1), leaky_relu())


class ResidualBlock(nn.Module):
    """EdgeConnect's dilated (2) residual block, without instance norm."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv3x3(channels, channels, dilation=2), leaky_relu(), conv3x3(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SpatialCrossAttention(nn.Module):
    """Each stage-1 position attends over the input's known positions; (N, C, h, w) x2 + key mask -> (N, C, h, w)."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(channels // 8, 1)
        self.query = nn.Conv2d(channels, inner, kernel_size=1)
        self.key = nn.Conv2d(channels, inner, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.scale = inner**-0.5

    def forward(self, coarse: Tensor, context: Tensor, hole: Tensor) -> Tensor:
        n, c, h, w = coarse.shape
        q = self.query(coarse).flatten(2).transpose(1, 2)  # (N, hw, inner)
        k = self.key(context).flatten(2)  # (N, inner, hw)
        v = self.value(context).flatten(2).transpose(1, 2)  # (N, hw, C)
        logits = torch.bmm(q, k) * self.scale
        excluded = (hole.flatten(2) > HOLE_KEY_THRESHOLD).to(logits.dtype) * EXCLUDED_KEY_LOGIT  # (N, 1, hw)
        weights = torch.softmax(logits.float() + excluded.float(), dim=-1).to(v.dtype)
        return torch.bmm(weights, v).transpose(1, 2).reshape(n, c, h, w)


class ChannelCrossAttention(nn.Module):
    """Restormer-style transposed attention across channels, stage-1 queries vs input keys; -> (N, C, h, w)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Conv2d(channels, channels, kernel_size=1)
        self.key = nn.Conv2d(channels, channels, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.project = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, coarse: Tensor, context: Tensor, hole: Tensor) -> Tensor:
        n, c, h, w = coarse.shape
        known = 1.0 - hole.to(coarse.dtype)
        split = (n, self.heads, c // self.heads, h * w)
        q = F.normalize((self.query(coarse) * known).reshape(split).float(), dim=-1)
        k = F.normalize((self.key(context) * known).reshape(split).float(), dim=-1)
        v = self.value(coarse).reshape(split)
        weights = torch.softmax(q @ k.transpose(-2, -1) * self.temperature.float(), dim=-1)  # (N, heads, C/h, C/h)
        return self.project((weights.to(v.dtype) @ v).reshape(n, c, h, w))


class CrossAttentionRefiner(nn.Module):
    """Stage 2: (coarse composite + mask, un-restored input + mask), each (N, 4, H, W) -> (N, 3, H, W)."""

    def __init__(self, width: int = 64, residual_blocks: int = 8, heads: int = 4):
        super().__init__()
        channels = REFINE_SCALE * width
        self.coarse_encoder = Encoder(width)
        self.input_encoder = Encoder(width)
        self.spatial = SpatialCrossAttention(channels)
        self.channel = ChannelCrossAttention(channels, heads)
        self.fuse = nn.Sequential(nn.Conv2d(3 * channels, channels, kernel_size=1), leaky_relu())
        self.middle = nn.Sequential(*(ResidualBlock(channels) for _ in range(residual_blocks)))
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False), conv3x3(channels, 2 * width), leaky_relu(),
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False), conv3x3(2 * width, width), leaky_relu())
        self.head = conv3x3(width, OUT_CHANNELS)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, coarse: Tensor, masked: Tensor) -> Tensor:
        hole = F.avg_pool2d(masked[:, OUT_CHANNELS:], REFINE_SCALE)  # fraction of each 4x4 cell that is hole
        coarse_features = self.coarse_encoder(coarse)
        context = self.input_encoder(masked)
        attended = torch.cat([coarse_features, self.spatial(coarse_features, context, hole),
                              self.channel(coarse_features, context, hole)], dim=1)
        features = self.middle(self.fuse(attended))
        return coarse[:, :OUT_CHANNELS] + self.head(self.decoder(features))


class CAFINGenerator(nn.Module):
    """Both stages, trained end to end: (N, 4, H, W) hole-filled image + mask -> (coarse, refined), (N, 3, H, W) each.

    Stage 2 sees the stage-1 output with the known pixels put back, so it refines only what stage 1
    invented; the gradient of stage 2's losses flows back through it into stage 1. Outputs are not
    clamped (the losses see raw values, so their gradients never vanish at 0 or 1).
    """

    def __init__(self, width: int = 64, depth: int = 4, refine_width: int = 64, residual_blocks: int = 8,
                 heads: int = 4):
        super().__init__()
        self.factor = max(2**depth, REFINE_SCALE)
        self.coarse = CoarseUNet(width, depth)
        self.refine = CrossAttentionRefiner(refine_width, residual_blocks, heads)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim != 4 or x.shape[1] != IN_CHANNELS or x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(f"CAFINGenerator needs (N, {IN_CHANNELS}, H, W) with H and W divisible by "
                             f"{self.factor}, got {tuple(x.shape)}")
        image, mask = x[:, :OUT_CHANNELS], x[:, OUT_CHANNELS:]
        coarse = self.coarse(x)
        composite = torch.where(mask.bool(), coarse, image.to(coarse.dtype))
        refined = self.refine(torch.cat([composite, mask.to(composite.dtype)], dim=1), x)
        return coarse, refined
