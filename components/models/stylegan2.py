"""StyleGAN2: the GAN prior Panini-Net builds on, trainable here and able to import FFHQ checkpoints.

Karras et al. 2020 (CVPR), configuration F, in the layouts of its PyTorch ports
rosinality/stylegan2-pytorch and XPixelGroup/BasicSR. Every number's source (mapping network,
channel table, R1, path length, Adam, EMA), the import key maps, the departures and the
parameter counts: docs/methods.md, section "stylegan2".

Task "prior". Trained on `hq` (N, 3, R, R) in [0, 1] (mapped to [-1, 1]), R = `resolution`
(at most 1024). `generate(n, seed)` -> (n, 3, R, R) in [0, 1]; `restore` raises (a prior
restores nothing). Networks: "g" (trained), "d" (trained) and "g_ema" (the moving average of
g, every parameter requires_grad=False, so the training loop never wraps it in DDP); g_ema is
the prior Panini-Net uses. `Generator.synthesize` runs the generator layer by layer from w+
(N, n_latent, style_dim), n_latent = 2 log2(R) - 2, for a caller that fuses its own features
into the 4-64 px maps. `pretrained` + `pretrained_layout` ("rosinality" or "basicsr") import a
published generator state dict (`import_state_dict`); export writes `pretrained` as None.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.losses.adversarial import AdversarialLoss
from components.models.base import MethodBase, MethodConfig, NotARestorer, Upstream

Layout = Literal["rosinality", "basicsr"]
LAYOUTS: tuple[str, ...] = ("rosinality", "basicsr")
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)  # the [1, 3, 3, 1] binomial filter of every resampling (paper sec. 2; ProGAN)
LEAKY_SLOPE = 0.2
ACTIVATION_GAIN = math.sqrt(2.0)  # keeps a leaky ReLU layer's output variance ~1 (He init gain)
MAX_RESOLUTION = 1024
STDDEV_GROUP = 4
SAMPLE_SEED = 0  # `samples`: the same faces after every training, so logged grids compare
SAMPLE_COUNT = 16
FuseHook = Callable[[int, Tensor], Tensor]


def channel_table(channel_multiplier: int = 2, width_scale: float = 1.0) -> dict[int, int]:
    """Channels per resolution (4 .. 1024): rosinality / BasicSR's table, times `width_scale`, truncated."""
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
            256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {res: int(c * width_scale) for res, c in base.items()}


class StyleGAN2Config(MethodConfig):
    lr: float = Field(0.002, gt=0, description="Adam lr before the lazy-regularisation correction (official 0.002)")
    betas: tuple[float, float] = Field((0.0, 0.99), description="Adam betas before the lazy correction (official)")
    resolution: int = Field(1024, description="output size R, a power of 2 in [8, 1024]; FFHQ config F is 1024")
    style_dim: int = Field(512, gt=0, description="z and w size (official 512)")
    n_mlp: int = Field(8, ge=1, description="mapping network depth (official 8)")
    lr_mlp: float = Field(0.01, gt=0, description="learning-rate multiplier of the mapping network (official 0.01)")
    channel_multiplier: int = Field(2, ge=1, description="widens 64+ px layers; 2 = config F, 1 = configs A-E")
    width_scale: float = Field(1.0, gt=0, le=1, description="multiplies every channel count (BasicSR's `narrow`)")
    r1_gamma: float = Field(10.0, ge=0, description="R1 weight gamma (official 10 for FFHQ); 0 disables R1")
    d_reg_every: int = Field(16, ge=1, description="lazy R1 interval in D steps (official 16)")
    pl_weight: float = Field(2.0, ge=0, description="path-length weight (official 2); 0 disables it")
    g_reg_every: int = Field(4, ge=1, description="lazy path-length interval in G steps (official 4)")
    pl_batch_shrink: int = Field(2, ge=1, description="path-length batch = batch // this (official 2)")
    pl_decay: float = Field(0.01, gt=0, le=1, description="decay of the path-length running mean (official 0.01)")
    mixing_prob: float = Field(0.9, ge=0, le=1, description="style-mixing probability (official 0.9)")
    ema_kimg: float = Field(10.0, gt=0, description="g_ema half-life in thousands of images (official 10)")
    pretrained: str | None = Field(None, description="local .pt/.pth generator checkpoint loaded into g and g_ema")
    pretrained_layout: Layout = Field("rosinality", description="key layout of `pretrained`: rosinality or basicsr")

    @field_validator("resolution")
    @classmethod
    def _resolution_is_a_power_of_two(cls, resolution: int) -> int:
        if resolution < 8 or resolution > MAX_RESOLUTION or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of 2 in [8, {MAX_RESOLUTION}], got {resolution}")
        return resolution

    @model_validator(mode="after")
    def _every_layer_keeps_a_channel(self) -> StyleGAN2Config:
        table = {res: c for res, c in channel_table(self.channel_multiplier, self.width_scale).items()
                 if res <= self.resolution}
        if min(table.values()) < 1:
            raise ValueError(f"width_scale {self.width_scale} leaves a layer with no channel "
                             f"(channels {table}); raise width_scale")
        return self


# -- equalized-lr layers and the [1, 3, 3, 1] resampling ---------------------------------------
def scaled_leaky_relu(x: Tensor, bias: Tensor | None = None) -> Tensor:
    """bias add, leaky ReLU(0.2), times sqrt(2): rosinality's / BasicSR's FusedLeakyReLU without a kernel."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, LEAKY_SLOPE) * ACTIVATION_GAIN


def blur_kernel(gain: float = 1.0) -> Tensor:
    """The normalised 4x4 outer product of [1, 3, 3, 1], times `gain` (4 after a x2 zero-insertion)."""
    taps = torch.tensor(BLUR_TAPS)
    kernel = taps[:, None] * taps[None, :]
    return kernel / kernel.sum() * gain


class Blur(nn.Module):
    """Pads by (pad0, pad1) on each axis and filters each channel with the [1, 3, 3, 1] kernel.

    This is upfirdn2d with up = down = 1 (the kernel is symmetric, so convolution and correlation
    agree). The kernel is a plain attribute, not a buffer: DDP rewrites buffers in place at each
    forward, which would break the graph of a discriminator run twice before one backward.
    """

    def __init__(self, pad: tuple[int, int], gain: float = 1.0):
        super().__init__()
        self.pad = pad
        self.kernel = blur_kernel(gain)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        weight = self.kernel.to(x.device, x.dtype).expand(channels, 1, 4, 4)
        x = F.pad(x, (self.pad[0], self.pad[1], self.pad[0], self.pad[1]))
        return F.conv2d(x, weight, groups=channels)


class Upsample(nn.Module):
    """x2 upsampling of the RGB skip: upfirdn2d(up=2, pad=(2, 1)) with the [1, 3, 3, 1] kernel x 4,
    written as one depthwise stride-2 transposed conv (padding 1 gives the same alignment)."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = blur_kernel(gain=4.0)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        weight = self.kernel.to(x.device, x.dtype).expand(channels, 1, 4, 4)
        return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=channels)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized lr: weight ~ N(0, 1) / lr_mul, used as weight * lr_mul / sqrt(in)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        if self.activate:
            return scaled_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """Conv with equalized lr: weight ~ N(0, 1), used as weight / sqrt(in * k * k)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale = 1.0 / math.sqrt(c_in * kernel_size**2)
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


# -- generator --------------------------------------------------------------------------------
class ModulatedConv2d(nn.Module):
    """Modulated (and optionally demodulated) conv, paper sec. 2.2 eq. 1-3.

    The style s = A(w) (an equalized FC, bias initialised to 1) scales the weight's input
    channels per sample; demodulation divides each output channel by the L2 norm of its scaled
    weights, so unit-variance inputs give roughly unit-variance outputs. Run as one grouped conv
    over the batch (one group per sample). `upsample`: stride-2 transposed conv then the blur,
    as rosinality / BasicSR do.

    Shapes: x (N, c_in, H, W), w (N, style_dim) -> (N, c_out, H, W), or (N, c_out, 2H, 2W).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False):
        super().__init__()
        self.c_in, self.c_out, self.kernel_size = c_in, c_out, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, c_in, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(c_in * kernel_size**2)
        self.padding = kernel_size // 2
        if upsample:
            # upfirdn2d pads of rosinality ModulatedConv2d(upsample=True) for a 4-tap filter and a 3x3 conv.
            slack = (len(BLUR_TAPS) - 2) - (kernel_size - 1)
            self.blur = Blur(((slack + 1) // 2 + 1, slack // 2 + 1), gain=4.0)

    def modulated_weight(self, w: Tensor) -> Tensor:
        """(N, c_out, c_in, k, k): the per-sample weight, demodulated when `demodulate`."""
        style = self.modulation(w).view(-1, 1, self.c_in, 1, 1)
        weight = self.scale * self.weight.unsqueeze(0) * style
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        return weight

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        n, _, height, width = x.shape
        weight = self.modulated_weight(w)
        x = x.reshape(1, n * self.c_in, height, width)
        k = self.kernel_size
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * self.c_in, self.c_out, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=n)
            return self.blur(out.view(n, self.c_out, *out.shape[2:]))
        out = F.conv2d(x, weight.reshape(n * self.c_out, self.c_in, k, k), padding=self.padding, groups=n)
        return out.view(n, self.c_out, *out.shape[2:])


class StyledConv(nn.Module):
    """Modulated 3x3 conv, + learned-strength per-pixel noise, + bias, scaled leaky ReLU.

    `fixed_noise` (1, 1, r, r) is the layer's stored noise image (rosinality `noises.noise_i`),
    used when the caller asks for deterministic noise.
    """

    def __init__(self, c_in: int, c_out: int, style_dim: int, resolution: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, 3, style_dim, upsample=upsample)
        self.noise_strength = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("fixed_noise", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None = None) -> Tensor:
        out = self.conv(x, w)
        if noise is None:
            noise = torch.randn(out.shape[0], 1, *out.shape[2:], device=out.device, dtype=out.dtype)
        return scaled_leaky_relu(out + self.noise_strength * noise, self.bias)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation) + bias, plus the previous RGB upsampled x2."""

    def __init__(self, c_in: int, style_dim: int, upsample: bool):
        super().__init__()
        self.conv = ModulatedConv2d(c_in, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))
        self.upsample = Upsample() if upsample else None

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, w) + self.bias.view(1, 3, 1, 1)
        if skip is not None:
            out = out + (self.upsample(skip) if self.upsample is not None else skip)
        return out


class MappingNetwork(nn.Module):
    """z (N, style_dim) -> w (N, style_dim): pixel norm, then `n_mlp` equalized FC + scaled leaky ReLU."""

    def __init__(self, style_dim: int, n_mlp: int, lr_mul: float):
        super().__init__()
        self.layers = nn.ModuleList(EqualLinear(style_dim, style_dim, lr_mul=lr_mul, activate=True)
                                    for _ in range(n_mlp))

    def forward(self, z: Tensor) -> Tensor:
        x = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        for layer in self.layers:
            x = layer(x)
        return x


class SynthesisBlock(nn.Module):
    """One resolution: (4 px) conv + ToRGB, or (8+ px) upsampling conv, conv, ToRGB with the skip."""

    def __init__(self, c_in: int, c_out: int, style_dim: int, resolution: int):
        super().__init__()
        self.resolution = resolution
        first = resolution == 4
        self.up_conv = None if first else StyledConv(c_in, c_out, style_dim, resolution, upsample=True)
        self.conv = StyledConv(c_out, c_out, style_dim, resolution)
        self.to_rgb = ToRGB(c_out, style_dim, upsample=not first)

    def convs(self) -> list[StyledConv]:
        return [self.conv] if self.up_conv is None else [self.up_conv, self.conv]


class Generator(nn.Module):
    """StyleGAN2 config-F generator: mapping network, constant input, modulated convs, ToRGB skips.

    Args:
        resolution: output size R (power of 2, 8 .. 1024).
        style_dim: size of z and w.
        n_mlp: mapping depth.
        channels: channels per resolution (`channel_table`).
        lr_mlp: mapping learning-rate multiplier.

    `forward(z, ...)` -> (image (N, 3, R, R), roughly [-1, 1], unclamped; w+ (N, n_latent, style_dim)).
    `synthesize(w_plus, ...)` runs the synthesis network alone from per-layer latents and also
    returns the feature map at each resolution (what Panini-Net fuses into).
    """

    def __init__(self, resolution: int, style_dim: int, n_mlp: int, channels: Mapping[int, int],
                 lr_mlp: float = 0.01):
        super().__init__()
        self.resolution, self.style_dim = resolution, style_dim
        self.log_size = int(math.log2(resolution))
        self.n_latent = 2 * self.log_size - 2
        self.num_layers = 2 * self.log_size - 3  # styled convs = noise inputs
        self.channels = {res: channels[res] for res in (2**i for i in range(2, self.log_size + 1))}
        self.mapping = MappingNetwork(style_dim, n_mlp, lr_mlp)
        self.const = nn.Parameter(torch.randn(1, self.channels[4], 4, 4))
        resolutions = list(self.channels)
        self.blocks = nn.ModuleList(
            SynthesisBlock(self.channels[res // 2] if res > 4 else self.channels[4], self.channels[res], style_dim, res)
            for res in resolutions)
        self.register_buffer("path_length_mean", torch.zeros(()))

    def styled_convs(self) -> list[StyledConv]:
        """The `num_layers` styled convs in latent / noise order."""
        return [conv for block in self.blocks for conv in block.convs()]

    def fixed_noise(self) -> list[Tensor]:
        return [conv.fixed_noise for conv in self.styled_convs()]

    def make_noise(self, batch: int = 1, generator: torch.Generator | None = None) -> list[Tensor]:
        """One fresh noise image (batch, 1, r, r) per styled conv, drawn from `generator` on CPU."""
        device = self.const.device
        return [torch.randn(batch, 1, *conv.fixed_noise.shape[2:], generator=generator).to(device)
                for conv in self.styled_convs()]

    @torch.no_grad()
    def mean_latent(self, n_samples: int = 4096, seed: int = 0) -> Tensor:
        """(1, style_dim): the mean w of `n_samples` seeded z, the truncation centre (rosinality / BasicSR)."""
        z = torch.randn(n_samples, self.style_dim, generator=torch.Generator().manual_seed(seed))
        return self.mapping(z.to(self.const.device)).float().mean(dim=0, keepdim=True)

    def w_plus(self, z: Tensor, z_mix: Tensor | None = None, mix_cutoff: int | None = None,
               truncation: float = 1.0, truncation_latent: Tensor | None = None) -> Tensor:
        """(N, n_latent, style_dim): w = mapping(z) on every layer, w of `z_mix` from `mix_cutoff` on."""
        ws = [self.mapping(z)] + ([self.mapping(z_mix)] if z_mix is not None else [])
        if truncation != 1.0:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (Generator.mean_latent())")
            ws = [truncation_latent + truncation * (w - truncation_latent) for w in ws]
        if len(ws) == 1:
            return ws[0].unsqueeze(1).expand(-1, self.n_latent, -1)
        cutoff = self.n_latent // 2 if mix_cutoff is None else mix_cutoff
        if not 1 <= cutoff < self.n_latent:
            raise ValueError(f"mix_cutoff must lie in [1, {self.n_latent - 1}], got {cutoff}")
        return torch.cat([ws[0].unsqueeze(1).expand(-1, cutoff, -1),
                          ws[1].unsqueeze(1).expand(-1, self.n_latent - cutoff, -1)], dim=1)

    def forward(self, z: Tensor, z_mix: Tensor | None = None, mix_cutoff: int | None = None,
                truncation: float = 1.0, truncation_latent: Tensor | None = None,
                noise: Sequence[Tensor] | None = None, randomize_noise: bool = True) -> tuple[Tensor, Tensor]:
        latents = self.w_plus(z, z_mix, mix_cutoff, truncation, truncation_latent)
        image, _ = self.synthesize(latents, noise=noise, randomize_noise=randomize_noise)
        return image, latents

    def synthesize(self, w_plus: Tensor, noise: Sequence[Tensor] | None = None, randomize_noise: bool = True,
                   fuse: FuseHook | None = None) -> tuple[Tensor, dict[int, Tensor]]:
        """Runs the synthesis network from per-layer latents.

        Args:
            w_plus: (N, n_latent, style_dim).
            noise: one (N or 1, 1, r, r) image per styled conv (`num_layers`), or None.
            randomize_noise: with `noise` None, fresh Gaussian noise (True) or the stored
                `fixed_noise` of each layer (False).
            fuse: called as `fuse(resolution, features)` after each resolution's ToRGB; what it
                returns feeds the next resolution's upsampling conv (Panini-Net's DAFI fusion point).

        Returns: (image (N, 3, R, R), {resolution: that resolution's features as the block
        produced them, before `fuse`}).
        """
        n = w_plus.shape[0]
        if w_plus.ndim != 3 or w_plus.shape[1:] != (self.n_latent, self.style_dim):
            raise ValueError(f"w_plus must be (N, {self.n_latent}, {self.style_dim}), got {tuple(w_plus.shape)}")
        if noise is None:
            noise = [None] * self.num_layers if randomize_noise else self.fixed_noise()
        if len(noise) != self.num_layers:
            raise ValueError(f"noise needs {self.num_layers} images (one per styled conv), got {len(noise)}")
        features: dict[int, Tensor] = {}
        out = self.const.expand(n, -1, -1, -1)
        skip = None
        layer = 0
        for block in self.blocks:
            for conv in block.convs():
                out = conv(out, w_plus[:, layer], noise[layer])
                layer += 1
            skip = block.to_rgb(out, w_plus[:, layer], skip)
            features[block.resolution] = out
            if fuse is not None:
                out = fuse(block.resolution, out)
        return skip, features


# -- discriminator ----------------------------------------------------------------------------
class ConvLayer(nn.Sequential):
    """Optional blur + stride-2 downsampling, equalized conv, optional bias + scaled leaky ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, downsample: bool = False, bias: bool = True,
                 activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            slack = (len(BLUR_TAPS) - 2) + (kernel_size - 1)
            layers.append(Blur(((slack + 1) // 2, slack // 2)))
        layers.append(EqualConv2d(c_in, c_out, kernel_size, stride=2 if downsample else 1,
                                  padding=0 if downsample else kernel_size // 2, bias=bias and not activate))
        if activate:
            layers.append(BiasedScaledLeakyReLU(c_out, bias))
        super().__init__(*layers)


class BiasedScaledLeakyReLU(nn.Module):
    def __init__(self, channels: int, bias: bool = True):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return scaled_leaky_relu(x, self.bias)


class ResBlock(nn.Module):
    """3x3 conv, 3x3 downsampling conv, plus a 1x1 downsampling skip; the sum over sqrt(2)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = ConvLayer(c_in, c_in, 3)
        self.conv2 = ConvLayer(c_in, c_out, 3, downsample=True)
        self.skip = ConvLayer(c_in, c_out, 1, downsample=True, bias=False, activate=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator: (N, 3, R, R) in [-1, 1] -> (N, 1) raw logits."""

    def __init__(self, resolution: int, channels: Mapping[int, int]):
        super().__init__()
        log_size = int(math.log2(resolution))
        body: list[nn.Module] = [ConvLayer(3, channels[resolution], 1)]
        for i in range(log_size, 2, -1):
            body.append(ResBlock(channels[2**i], channels[2 ** (i - 1)]))
        self.body = nn.Sequential(*body)
        self.final_conv = ConvLayer(channels[4] + 1, channels[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(channels[4] * 16, channels[4], activate=True),
                                          EqualLinear(channels[4], 1))

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        out = torch.cat([out, minibatch_stddev(out)], dim=1)
        return self.final_linear(self.final_conv(out).flatten(1))


def minibatch_stddev(x: Tensor, group_size: int = STDDEV_GROUP) -> Tensor:
    """(N, 1, H, W): per group of samples, the std over the group averaged over channels and pixels.

    Groups interleave as in the official code (sample i joins the samples i + k N/G). The group is
    the largest divisor of N that is <= `group_size` (official code requires N divisible)."""
    n, c, h, w = x.shape
    group = next(g for g in range(min(group_size, n), 0, -1) if n % g == 0)
    y = x.float().view(group, -1, c, h, w)
    std = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))
    return std.view(-1, 1, 1, 1).repeat(group, 1, h, w).to(x.dtype)


# -- the training maths --------------------------------------------------------------------------
def r1_penalty(real_logits: Tensor, real: Tensor) -> Tensor:
    """E ||d D(x) / d x||^2 over reals (Mescheder et al. 2018), with the graph kept for its backward."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(dim=1).mean()


def path_lengths(image: Tensor, w_plus: Tensor) -> Tensor:
    """(N,) ||J_w^T y||: the Jacobian of the image w.r.t. w+ applied to unit-variance random images y
    scaled by 1 / sqrt(H W), the norm taken over style_dim and averaged over layers (paper sec. 3.2)."""
    y = torch.randn_like(image) / math.sqrt(image.shape[2] * image.shape[3])
    (grad,) = torch.autograd.grad((image.float() * y).sum(), w_plus, create_graph=True)
    return grad.float().pow(2).sum(dim=2).mean(dim=1).sqrt()


def lazy_adam(params, lr: float, betas: tuple[float, float], interval: int | None) -> torch.optim.Adam:
    """Adam with the lazy-regularisation correction for a term run every `interval` steps (None: none)."""
    ratio = interval / (interval + 1) if interval else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(betas[0] ** ratio, betas[1] ** ratio), eps=1e-8)


@torch.no_grad()
def accumulate(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers copied."""
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param.detach().to(ema_param.dtype), 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


class StyleGAN2(MethodBase):
    """The StyleGAN2 prior: networks "g", "d", "g_ema"; see the module docstring."""

    name: ClassVar[str] = "stylegan2"
    task: ClassVar[str] = "prior"
    inputs: ClassVar[tuple[str, ...]] = ("hq",)
    Config: ClassVar[type[StyleGAN2Config]] = StyleGAN2Config
    cfg: StyleGAN2Config

    def __init__(self, cfg: StyleGAN2Config, upstream: Upstream | None = None) -> None:
        super().__init__(cfg, upstream)
        self.adversarial = AdversarialLoss("nsgan")
        # The lazy terms are logged at every step with their last value, as rosinality does.
        self.last_r1 = self.last_path = self.last_path_length = 0.0
        self._replicas_synced = False

    def build_networks(self) -> dict[str, nn.Module]:
        cfg = self.cfg
        channels = channel_table(cfg.channel_multiplier, cfg.width_scale)
        g = Generator(cfg.resolution, cfg.style_dim, cfg.n_mlp, channels, cfg.lr_mlp)
        if cfg.pretrained is not None:
            g.load_state_dict(load_pretrained(cfg.pretrained, cfg.pretrained_layout, g), strict=True)
        g_ema = deepcopy(g).eval().requires_grad_(False)
        return {"g": g, "d": Discriminator(cfg.resolution, channels), "g_ema": g_ema}

    def build_optimizers(self) -> dict[str, Optimizer]:
        cfg = self.cfg
        g_interval = cfg.g_reg_every if cfg.pl_weight > 0 else None
        d_interval = cfg.d_reg_every if cfg.r1_gamma > 0 else None
        return {"g": lazy_adam(self.nets["g"].parameters(), cfg.lr, cfg.betas, g_interval),
                "d": lazy_adam(self.nets["d"].parameters(), cfg.lr, cfg.betas, d_interval)}

    # -- what Panini-Net and users call -------------------------------------------------------
    @property
    def prior(self) -> Generator:
        """The EMA generator (the bare module): per-layer structure, `synthesize`, `channels`."""
        return self.unwrapped("g_ema")

    @property
    def n_latent(self) -> int:
        return self.prior.n_latent

    def mean_latent(self, n_samples: int = 4096, seed: int = 0) -> Tensor:
        """(1, style_dim) mean w of g_ema, the truncation centre."""
        return self.prior.mean_latent(n_samples, seed)

    def generate(self, n: int, seed: int = 0, truncation: float = 1.0) -> Tensor:
        """(n, 3, R, R) float32 faces in [0, 1] from g_ema; z and noise drawn from `seed` alone."""
        generator = torch.Generator().manual_seed(seed)
        prior = self.prior
        with self.evaluating():
            z = torch.randn(n, prior.style_dim, generator=generator).to(self.device)
            noise = prior.make_noise(n, generator)
            centre = self.mean_latent(seed=seed) if truncation != 1.0 else None
            image, _ = prior(z, truncation=truncation, truncation_latent=centre, noise=noise)
        return to_unit_range(image)

    def samples(self) -> Tensor:
        """SAMPLE_COUNT faces of g_ema from fixed z and noise: the grid the train stage logs."""
        return self.generate(SAMPLE_COUNT, seed=SAMPLE_SEED)

    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotARestorer(
            "method 'stylegan2' is a GAN prior (task 'prior'), not an image restorer: call "
            "StyleGAN2.generate(n, seed) for samples, or use it as Panini-Net's upstream prior")

    def export(self) -> tuple[dict[str, Tensor], dict]:
        """As MethodBase, with `pretrained` None: the exported weights already hold the checkpoint."""
        state, config = super().export()
        config["config"]["pretrained"] = None
        return state, config

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        cfg = self.cfg
        self._sync_replicas_once()
        real = batch["hq"].to(self.device, torch.float32) * 2.0 - 1.0
        if real.shape[1:] != (3, cfg.resolution, cfg.resolution):
            raise ValueError(f"stylegan2 with resolution {cfg.resolution} needs hq (N, 3, {cfg.resolution}, "
                             f"{cfg.resolution}), got {tuple(real.shape)}")
        n = real.shape[0]
        losses = self._discriminator_step(real, n)
        if cfg.r1_gamma > 0 and step % cfg.d_reg_every == 0:
            self.last_r1 = self._r1_step(real)
        losses["g"] = self._generator_step(n)
        if cfg.pl_weight > 0 and step % cfg.g_reg_every == 0:
            self.last_path, self.last_path_length = self._path_length_step(max(1, n // cfg.pl_batch_shrink))
        accumulate(self.unwrapped("g_ema"), self.unwrapped("g"), self.ema_decay(n))
        return {**losses, "r1": self.last_r1, "path": self.last_path, "path_length": self.last_path_length}

    def ema_decay(self, batch_size: int) -> float:
        """0.5 ** (global batch / (ema_kimg * 1000)): g_ema's half-life is ema_kimg thousand images."""
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        return 0.5 ** (batch_size * world / (self.cfg.ema_kimg * 1000.0))

    def _latents(self, n: int) -> dict[str, Tensor | int | None]:
        """z, and with probability `mixing_prob` a second z and a random crossover layer (style mixing)."""
        style_dim, n_latent = self.cfg.style_dim, self.prior.n_latent
        z = torch.randn(n, style_dim, device=self.device)
        if torch.rand(()) >= self.cfg.mixing_prob:
            return {"z": z}
        cutoff = int(torch.randint(1, n_latent, ()))
        return {"z": z, "z_mix": torch.randn(n, style_dim, device=self.device), "mix_cutoff": cutoff}

    def _discriminator_step(self, real: Tensor, n: int) -> dict[str, float]:
        g, d, opt = self.nets["g"], self.nets["d"], self.opts["d"]
        with torch.no_grad():  # no graph into g: DDP must not expect a backward through it
            fake, _ = g(**self._latents(n))
        fake_logits, real_logits = d(fake.detach()), d(real)
        loss = self.adversarial(real_logits, True) + self.adversarial(fake_logits, False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"d": loss.item(), "real_score": real_logits.float().mean().item(),
                "fake_score": fake_logits.float().mean().item()}

    def _r1_step(self, real: Tensor) -> float:
        d, opt = self.nets["d"], self.opts["d"]
        with torch.autocast(self.device.type, enabled=False):
            real = real.detach().requires_grad_(True)
            logits = d(real)
            penalty = r1_penalty(logits, real)
            # "+ 0 * logits": every D parameter stays in the graph (the last bias has no R1 gradient; DDP needs all).
            loss = self.cfg.r1_gamma / 2 * penalty * self.cfg.d_reg_every + 0.0 * logits.float()[0, 0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return penalty.item()

    def _generator_step(self, n: int) -> float:
        g, d, opt = self.nets["g"], self.nets["d"], self.opts["g"]
        fake, _ = g(**self._latents(n))
        loss = self.adversarial(d(fake), True, for_discriminator=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # D's parameters get gradients too; the D step zeroes them before its own backward
        opt.step()
        return loss.item()

    def _path_length_step(self, n: int) -> tuple[float, float]:
        cfg, g, opt = self.cfg, self.nets["g"], self.opts["g"]
        mean_buffer = self.unwrapped("g").path_length_mean
        with torch.autocast(self.device.type, enabled=False):
            fake, latents = g(**self._latents(n))
            lengths = path_lengths(fake, latents)
            running_mean = mean_buffer.detach().clone() + cfg.pl_decay * (lengths.mean().detach() - mean_buffer)
            penalty = (lengths - running_mean).pow(2).mean()
            # "+ 0 * fake": keeps every g parameter (the last ToRGB bias has no path-length gradient) in the graph.
            loss = cfg.pl_weight * cfg.g_reg_every * penalty + 0.0 * fake.float()[0, 0, 0, 0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            mean_buffer.copy_(running_mean)
        return penalty.item(), lengths.mean().item()

    def _sync_replicas_once(self) -> None:
        """Rank 0's g_ema on every rank: each rank built its own random copy, and DDP syncs only g and d."""
        if self._replicas_synced:
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            g_ema = self.unwrapped("g_ema")
            for tensor in [*g_ema.parameters(), *g_ema.buffers()]:
                dist.broadcast(tensor.data, src=0)
        self._replicas_synced = True


def to_unit_range(image: Tensor) -> Tensor:
    """[-1, 1] generator output -> float32 [0, 1], clamped."""
    return ((image.float() + 1.0) / 2.0).clamp(0.0, 1.0)


# -- official checkpoints -----------------------------------------------------------------------
# Per styled conv: (rosinality suffix, BasicSR suffix, our suffix); None = no such key in that layout.
_STYLED_CONV_KEYS = (
    ("conv.weight", "modulated_conv.weight", "conv.weight"),
    ("conv.modulation.weight", "modulated_conv.modulation.weight", "conv.modulation.weight"),
    ("conv.modulation.bias", "modulated_conv.modulation.bias", "conv.modulation.bias"),
    ("noise.weight", "weight", "noise_strength"),
    ("activate.bias", "activate.bias", "bias"),
)
_TO_RGB_KEYS = (
    ("conv.weight", "modulated_conv.weight", "conv.weight"),
    ("conv.modulation.weight", "modulated_conv.modulation.weight", "conv.modulation.weight"),
    ("conv.modulation.bias", "modulated_conv.modulation.bias", "conv.modulation.bias"),
    ("bias", "bias", "bias"),
)
_NAMES = {  # per layout: mapping prefix, constant, first conv, conv list, noise key format
    "rosinality": ("style", "input.input", "conv1", "convs", "noises.noise_{}"),
    "basicsr": ("style_mlp", "constant_input.weight", "style_conv1", "style_convs", "noises.noise{}"),
}
# rosinality registers its blur kernels as buffers, so its state dicts carry them.
_ROSINALITY_KERNEL_SUFFIXES = ("conv.blur.kernel", "upsample.kernel")


def official_key_map(layout: Layout, n_mlp: int, resolution: int) -> dict[str, str]:
    """{their key: our key} for a generator of `resolution` with `n_mlp` mapping layers, every
    learned tensor and fixed-noise image (not rosinality's blur kernels, not our path-length mean)."""
    if layout not in _NAMES:
        raise ValueError(f"unknown checkpoint layout {layout!r}; known: {', '.join(LAYOUTS)}")
    column = LAYOUTS.index(layout)
    mlp, const, conv1, convs, noise = _NAMES[layout]
    keys = {f"{mlp}.{i + 1}.{p}": f"mapping.layers.{i}.{p}" for i in range(n_mlp) for p in ("weight", "bias")}
    keys[const] = "const"
    log_size = int(math.log2(resolution))
    theirs_convs = [conv1] + [f"{convs}.{i}" for i in range(2 * (log_size - 2))]
    ours_convs = ["blocks.0.conv"] + [f"blocks.{b}.{name}" for b in range(1, log_size - 1)
                                      for name in ("up_conv", "conv")]
    for layer, (theirs, ours) in enumerate(zip(theirs_convs, ours_convs, strict=True)):
        keys.update({f"{theirs}.{row[column]}": f"{ours}.{row[2]}" for row in _STYLED_CONV_KEYS})
        keys[noise.format(layer)] = f"{ours}.fixed_noise"
    theirs_rgb = ["to_rgb1"] + [f"to_rgbs.{i}" for i in range(log_size - 2)]
    for block, theirs in enumerate(theirs_rgb):
        keys.update({f"{theirs}.{row[column]}": f"blocks.{block}.to_rgb.{row[2]}" for row in _TO_RGB_KEYS})
    return keys


def _structure_of(state: Mapping[str, Tensor], layout: Layout) -> tuple[int, int]:
    """(n_mlp, resolution) read off an official state dict's keys."""
    mlp, const, _, _, _ = _NAMES[layout]
    if const not in state:
        raise KeyError(f"not a {layout} StyleGAN2 generator state dict: no '{const}' "
                       f"(keys start {sorted(state)[:4]})")
    n_mlp = len({key.split(".")[1] for key in state if key.startswith(f"{mlp}.")})
    n_rgbs = len({key.split(".")[1] for key in state if key.startswith("to_rgbs.")})
    return n_mlp, 2 ** (n_rgbs + 2)


def import_state_dict(state: Mapping[str, Tensor], layout: Layout) -> dict[str, Tensor]:
    """Our g / g_ema state dict from a rosinality or BasicSR generator state dict.

    Equalized-lr weights are stored unscaled in all three, so values carry over; only shapes
    change (modulated-conv weights drop their leading 1, ToRGB biases flatten). Raises on a key
    neither mapped nor expected, and on a missing key, naming them.
    """
    n_mlp, resolution = _structure_of(state, layout)
    key_map = official_key_map(layout, n_mlp, resolution)
    leftover = set(state) - set(key_map)
    if layout == "rosinality":
        for key in sorted(k for k in leftover if k.endswith(_ROSINALITY_KERNEL_SUFFIXES)):
            if not torch.allclose(state[key].float(), blur_kernel(gain=4.0)):
                raise ValueError(f"{key} is not the [1, 3, 3, 1] blur kernel x 4 this generator uses")
            leftover.discard(key)
    missing = sorted(set(key_map) - set(state))
    if leftover or missing:
        raise KeyError(f"{layout} generator state dict does not match StyleGAN2 at {resolution} px with "
                       f"{n_mlp} mapping layers: unexpected {sorted(leftover)[:5]}, missing {missing[:5]}")
    ours: dict[str, Tensor] = {}
    for theirs, our_key in key_map.items():
        value = state[theirs]
        if our_key.endswith("conv.weight") and value.ndim == 5:
            value = value.squeeze(0)
        elif our_key.endswith("to_rgb.bias"):
            value = value.reshape(3)
        ours[our_key] = value
    ours["path_length_mean"] = torch.zeros(())
    return ours


def export_state_dict(state: Mapping[str, Tensor], layout: Layout, n_mlp: int, resolution: int) -> dict[str, Tensor]:
    """The inverse of `import_state_dict`: our generator state dict in a rosinality / BasicSR layout
    (rosinality's blur-kernel buffers included), loadable by their `Generator.load_state_dict`."""
    theirs: dict[str, Tensor] = {}
    for their_key, our_key in official_key_map(layout, n_mlp, resolution).items():
        value = state[our_key]
        if our_key.endswith("conv.weight"):
            value = value.unsqueeze(0)
        elif our_key.endswith("to_rgb.bias"):
            value = value.reshape(1, 3, 1, 1)
        theirs[their_key] = value.clone()
    if layout == "rosinality":
        log_size = int(math.log2(resolution))
        kernel = blur_kernel(gain=4.0)
        theirs.update({f"convs.{2 * i}.conv.blur.kernel": kernel.clone() for i in range(log_size - 2)})
        theirs.update({f"to_rgbs.{i}.upsample.kernel": kernel.clone() for i in range(log_size - 2)})
    return theirs


_CHECKPOINT_KEYS = {"rosinality": ("g_ema",), "basicsr": ("params_ema", "params")}


def load_pretrained(path: str | Path, layout: Layout, generator: Generator | None = None) -> dict[str, Tensor]:
    """Our generator state dict from a local checkpoint file (torch.load with weights_only=True).

    The generator weights are taken from the checkpoint's "g_ema" (rosinality) or "params_ema" /
    "params" (BasicSR) entry, or the file is the state dict itself. With `generator`, the
    imported shapes are checked against it and a mismatch names the config keys to fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stylegan2 `pretrained` checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as error:  # what weights_only raises on a non-tensor object
        raise ValueError(f"stylegan2 `pretrained` {path} cannot be loaded with weights_only=True ({error}); "
                         f"save just the generator state dict (e.g. torch.save(ckpt['g_ema'], ...))") from error
    state = _generator_state(checkpoint, layout, path)
    ours = import_state_dict(state, layout)
    if generator is not None:
        expected = generator.state_dict()
        wrong = [f"{k} {tuple(v.shape)} vs ours {tuple(expected[k].shape)}" for k, v in ours.items()
                 if k in expected and v.shape != expected[k].shape]
        unmatched = sorted(set(ours) ^ set(expected))
        if wrong or unmatched:
            raise ValueError(f"stylegan2 `pretrained` {path} does not fit the config (check resolution, style_dim, "
                             f"n_mlp, channel_multiplier, width_scale): {(wrong + unmatched)[:4]}")
    return ours


def _generator_state(checkpoint: object, layout: Layout, path: Path) -> Mapping[str, Tensor]:
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"stylegan2 `pretrained` {path} holds a {type(checkpoint).__name__}, not a state dict")
    for key in _CHECKPOINT_KEYS[layout]:
        if key in checkpoint:
            return checkpoint[key]
    if _NAMES[layout][1] in checkpoint:
        return checkpoint
    raise KeyError(f"stylegan2 `pretrained` {path}: no {' / '.join(_CHECKPOINT_KEYS[layout])} entry and not a "
                   f"{layout} generator state dict (top-level keys: {sorted(checkpoint)[:6]})")
