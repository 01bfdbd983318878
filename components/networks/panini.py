"""Panini-Net's networks: the degraded-face encoder with its DAFI blocks, and the StyleGAN2 prior it fuses into.

Wang, Hu, Zhang 2022 (AAAI), official jianzhangcs/panini; every width and the departures:
docs/methods.md, section "panini". `PaniniEncoder` ("g"): x (N, 3, R, R) in [-1, 1] and the
degradation vector (N, d) -> (w+ (N, n_latent, style_dim), one image feature map and one DAFI
mask (N, 2, C_r) per fused resolution 4 .. min(64, R/2)). `FusedPrior` ("prior"): the StyleGAN2
generator run from that w+ with F = m_prior * F_GAN + m_image * conv(F_image) at each fused
resolution -> RGB (N, 3, R, R), roughly [-1, 1]. `DRERepresentation` ("dre"): the DRE's query
encoder, lq in [0, 1] -> (N, 4 * width).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.networks.blocks import conv3x3
from components.networks.dre import DegradationEncoder
from components.networks.stylegan2 import Generator

LEAKY_SLOPE = 0.2  # panini.py encoder and mmediting RRDB: LeakyReLU(0.2)
MASK_LEAKY_SLOPE = 0.1  # panini.py AdaptiveFeatureSelect_maskgen: LeakyReLU(0.1)
RESIDUAL_SCALE = 0.2  # ESRGAN / mmediting RRDB residual scaling
RRDB_INIT_SCALE = 0.1  # mmediting ResidualDenseBlock.init_weights: Kaiming normal x 0.1
SPATIAL_GATE_KERNEL = 7  # panini.py SpatialGate: 7x7
SPATIAL_GATE_BN_MOMENTUM = 0.01  # panini.py BasicConv: BatchNorm2d(momentum=0.01)
LEARNED_CONDITION_DIM = 256  # panini.py Panini_SR: choice_vector (1, 256)


def fused_resolutions(resolution: int, fuse_max_resolution: int) -> list[int]:
    """The resolutions a DAFI block fuses at, ascending: 4 .. min(fuse_max, R / 2) (official 4-64)."""
    top = min(fuse_max_resolution, resolution // 2)
    return [2**i for i in range(2, int(math.log2(top)) + 1)]



# -- image feature extraction -------------------------------------------------------------------
class ResidualDenseBlock(nn.Module):
    """ESRGAN dense block: five 3x3 convs, each seeing every earlier output; x + 0.2 * conv5."""

    def __init__(self, channels: int, growth: int):
        super().__init__()
        self.convs = nn.ModuleList(
            conv3x3(channels + i * growth, channels if i == 4 else growth) for i in range(5))
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(RRDB_INIT_SCALE)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for conv in self.convs[:-1]:
            features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), LEAKY_SLOPE))
        return x + RESIDUAL_SCALE * self.convs[-1](torch.cat(features, dim=1))


class RRDB(nn.Sequential):
    """Residual-in-residual dense block: three dense blocks, x + 0.2 * their output."""

    def __init__(self, channels: int, growth: int):
        super().__init__(*(ResidualDenseBlock(channels, growth) for _ in range(3)))

    def forward(self, x: Tensor) -> Tensor:
        return x + RESIDUAL_SCALE * super().forward(x)


class RRDBTrunk(nn.Module):
    """ESRGAN without its upsampler (mmediting `RRDBFeatureExtractor`): conv, RRDBs, conv, + skip."""

    def __init__(self, channels: int, num_blocks: int, growth: int):
        super().__init__()
        self.conv_first = he_init(conv3x3(3, channels), None)
        self.body = nn.Sequential(*(RRDB(channels, growth) for _ in range(num_blocks)))
        self.conv_body = he_init(conv3x3(channels, channels), None)

    def forward(self, x: Tensor) -> Tensor:
        features = self.conv_first(x)
        return features + self.conv_body(self.body(features))


class CBAM(nn.Module):
    """Channel then spatial attention (Woo et al. 2018) as panini.py's `CBAM` computes it.

    One 3x3 pre-conv is applied before the channel gate and again (same weights) before the
    spatial gate. Channel gate: shared MLP (C -> C / reduction -> C, ReLU) on the average- and
    max-pooled map, summed, sigmoid. Spatial gate: channel max and mean, 7x7 conv (no bias) +
    BatchNorm, sigmoid.
    """

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.pre = he_init(conv3x3(channels, channels), None)
        self.channel_mlp = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(),
                                         nn.Linear(channels // reduction, channels))
        self.spatial = nn.Sequential(
            nn.Conv2d(2, 1, SPATIAL_GATE_KERNEL, padding=SPATIAL_GATE_KERNEL // 2, bias=False),
            nn.BatchNorm2d(1, momentum=SPATIAL_GATE_BN_MOMENTUM))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pre(x)
        gate = self.channel_mlp(x.mean(dim=(2, 3))) + self.channel_mlp(x.amax(dim=(2, 3)))
        x = self.pre(x * torch.sigmoid(gate)[:, :, None, None])
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


def he_init(conv: nn.Conv2d, slope: float | None = LEAKY_SLOPE) -> nn.Conv2d:
    """Kaiming normal (fan-in, the following activation's gain; None = linear), zero bias."""
    if slope is None:
        nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
    else:
        nn.init.kaiming_normal_(conv.weight, a=slope, nonlinearity="leaky_relu")
    nn.init.zeros_(conv.bias)
    return conv


def conv_lrelu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(he_init(conv3x3(c_in, c_out, stride)), nn.LeakyReLU(LEAKY_SLOPE))


class ImageFeatureExtractor(nn.Module):
    """The degraded face -> w+ for the prior and one feature map per fused resolution.

    Args:
        resolution: input size R (the prior's).
        channels: the prior's channels per resolution (`channel_table`).
        fused: the fused resolutions, ascending (`fused_resolutions`).
        n_latent, style_dim: the prior's w+ shape.
        rrdb_channels, num_rrdbs, growth, cbam_reduction, stem_width: see PaniniConfig.

    Shapes: x (N, 3, R, R) in [-1, 1] -> (w+ (N, n_latent, style_dim), {r: (N, channels[r], r, r)}).
    """

    def __init__(self, resolution: int, channels: dict[int, int], fused: list[int], n_latent: int,
                 style_dim: int, rrdb_channels: int, num_rrdbs: int, growth: int, cbam_reduction: int,
                 stem_width: int):
        super().__init__()
        top = fused[-1]
        stem: list[nn.Module] = [RRDBTrunk(rrdb_channels, num_rrdbs, growth), CBAM(rrdb_channels, cbam_reduction),
                                 conv_lrelu(rrdb_channels, stem_width)]
        width, size = stem_width, resolution
        while size > top:
            size //= 2
            out = channels[top] if size == top else width * 2
            stem.append(conv_lrelu(width, out, stride=2))
            width = out
        self.stem = nn.Sequential(*stem)
        self.downs = nn.ModuleList(conv_lrelu(channels[r * 2], channels[r], stride=2) for r in reversed(fused[:-1]))
        head_width = max(1, channels[4] // 2)
        self.to_latent = nn.Sequential(conv_lrelu(channels[4], head_width), nn.Flatten(),
                                       nn.Linear(16 * head_width, n_latent * style_dim))
        self.n_latent, self.style_dim, self.top = n_latent, style_dim, top

    def forward(self, x: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        features = {self.top: self.stem(x)}
        current, size = features[self.top], self.top
        for down in self.downs:
            size //= 2
            current = features[size] = down(current)
        w_plus = self.to_latent(current).view(x.shape[0], self.n_latent, self.style_dim)
        return w_plus, features


# -- DAFI -------------------------------------------------------------------------------------
class DAFIMasks(nn.Module):
    """Degradation vector (N, d) -> per fused block a channel-wise mask (N, 2, C_r): softmax over
    (GAN prior, image), so the two weights of every channel sum to one (panini.py
    `AdaptiveFeatureSelect_maskgen`; the flat output is laid out block, source, channel, as its view)."""

    def __init__(self, condition_dim: int, block_channels: list[int]):
        super().__init__()
        self.block_channels = list(block_channels)
        self.mlp = nn.Sequential(nn.Linear(condition_dim, condition_dim), nn.LeakyReLU(MASK_LEAKY_SLOPE),
                                 nn.Linear(condition_dim, 2 * sum(block_channels)))

    def forward(self, condition: Tensor) -> list[Tensor]:
        logits = self.mlp(condition).float()
        chunks = torch.split(logits, [2 * c for c in self.block_channels], dim=1)
        return [chunk.view(-1, 2, c).softmax(dim=1) for chunk, c in zip(chunks, self.block_channels)]


def interpolate(prior_features: Tensor, image_features: Tensor, mask: Tensor) -> Tensor:
    """DAFI: mask[:, 0] * prior + mask[:, 1] * image, per channel; mask (N, 2, C) from `DAFIMasks`."""
    return mask[:, 0, :, None, None] * prior_features + mask[:, 1, :, None, None] * image_features


class PaniniEncoder(nn.Module):
    """Network "g": image feature extraction + the DAFI masks and per-block feature convs.

    forward(x (N, 3, R, R) in [-1, 1], condition (N, d) or None when a learned vector is used) ->
    (w+ (N, n_latent, style_dim), [image feature per fused resolution, ascending, after its DAFI
    conv], [mask (N, 2, C_r) per fused resolution, ascending]).
    """

    def __init__(self, extractor: ImageFeatureExtractor, channels: dict[int, int], fused: list[int],
                 condition_dim: int, learned_condition: bool):
        super().__init__()
        self.extractor = extractor
        self.fused = list(fused)
        self.fusion = nn.ModuleList(he_init(conv3x3(channels[r], channels[r]), None) for r in fused)
        self.masks = DAFIMasks(condition_dim, [channels[r] for r in fused])
        self.choice_vector = nn.Parameter(torch.randn(1, condition_dim)) if learned_condition else None

    def forward(self, x: Tensor, condition: Tensor | None = None) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        if condition is None:
            if self.choice_vector is None:
                raise ValueError("PaniniEncoder built for the DRE vector needs `condition` (N, d)")
            condition = self.choice_vector.expand(x.shape[0], -1)
        w_plus, features = self.extractor(x)
        image_features = [conv(features[r]) for conv, r in zip(self.fusion, self.fused)]
        return w_plus, image_features, self.masks(condition)


class FusedPrior(Generator):
    """Network "prior": the StyleGAN2 generator, its state dict as g_ema's, run from w+ with the
    DAFI interpolation after each fused resolution and its stored noise images.

    forward(w+ (N, n_latent, style_dim), image_features, masks (ascending fused resolutions)) ->
    RGB (N, 3, R, R), roughly [-1, 1], unclamped.
    """

    def __init__(self, *args: Any, fused: list[int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fused = list(fused)
        # w+ comes from the encoder: the mapping network never runs, and frozen it is no DDP parameter.
        self.mapping.requires_grad_(False)

    def forward(self, w_plus: Tensor, image_features: list[Tensor],  # type: ignore[override]
                masks: list[Tensor]) -> Tensor:
        by_resolution = {r: (f, m) for r, f, m in zip(self.fused, image_features, masks, strict=True)}

        def fuse(resolution: int, features: Tensor) -> Tensor:
            if resolution not in by_resolution:
                return features
            image, mask = by_resolution[resolution]
            return interpolate(features, image, mask)

        image, _ = self.synthesize(w_plus, randomize_noise=False, fuse=fuse)
        return image


class DRERepresentation(nn.Module):
    """Network "dre": the DRE's query encoder; forward(lq in [0, 1]) -> (N, 4 * width) vector v.
    Its MoCo head never runs here, so it is frozen from construction (no DDP parameter)."""

    def __init__(self, width: int, dim: int, input_size: int | None):
        super().__init__()
        self.encoder = DegradationEncoder(width, dim, input_size)
        self.encoder.mlp.requires_grad_(False)
        self.feature_dim = self.encoder.feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder.represent(x)
