"""StyleGAN2's layers, generator and discriminator (configuration F), in rosinality's / BasicSR's layout.

Karras et al. 2020 (CVPR), as its PyTorch ports rosinality/stylegan2-pytorch and
XPixelGroup/BasicSR build it; every number's source and the parameter counts: docs/methods.md,
section "stylegan2". `Generator`: z (N, style_dim) -> (image (N, 3, R, R), roughly [-1, 1],
unclamped; w+ (N, n_latent, style_dim)), n_latent = 2 log2(R) - 2; `Generator.synthesize`
runs the synthesis network alone from w+, for a caller that fuses its own features into the
maps (Panini-Net). `Discriminator`: (N, 3, R, R) in [-1, 1] -> (N, 1) raw logits. The official
checkpoint layouts: components/networks/stylegan2_convert.py.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)  # the [1, 3, 3, 1] binomial filter of every resampling (paper sec. 2; ProGAN)
LEAKY_SLOPE = 0.2
ACTIVATION_GAIN = math.sqrt(2.0)  # keeps a leaky ReLU layer's output variance ~1 (He init gain)
STDDEV_GROUP = 4
FuseHook = Callable[[int, Tensor], Tensor]


def channel_table(channel_multiplier: int = 2, width_scale: float = 1.0) -> dict[int, int]:
    """Channels per resolution (4 .. 1024): rosinality / BasicSR's table, times `width_scale`, truncated."""
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
            256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {res: int(c * width_scale) for res, c in base.items()}



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
        channels = int(x.shape[1])  # int: a traced graph (the ONNX export) needs the kernel's shape fixed
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
        channels = int(x.shape[1])  # as Blur's
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

    `per_sample_weights` False runs the same maths in the order of StyleGAN2's non-fused path:
    the input scaled by the style, one conv with the shared weight, the output times the
    demodulation coefficients. A grouped conv's group count is the batch size, which a traced
    graph (the ONNX export) would fix; this form has no batch-sized constant
    (`shared_weight_convs` switches a network to it while it is exported).

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
        self.per_sample_weights = True
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
        if not self.per_sample_weights:
            return self.shared_weight_forward(x, w)
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

    def shared_weight_forward(self, x: Tensor, w: Tensor) -> Tensor:
        """`forward` without a per-sample weight: style on the input, shared conv, demodulation on the output."""
        style = self.modulation(w)
        weight = self.scale * self.weight
        x = x * style[:, :, None, None]
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum over c_in, k, k of (weight * style)^2, per sample and output channel
            energy = style.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t()
            out = out * torch.rsqrt(energy + 1e-8)[:, :, None, None]
        return self.blur(out) if self.upsample else out


@contextlib.contextmanager
def shared_weight_convs(network: nn.Module) -> Iterator[None]:
    """Every ModulatedConv2d in `network` in its shared-weight form (`per_sample_weights` False)
    inside the block, as it was afterwards."""
    convs = [m for m in network.modules() if isinstance(m, ModulatedConv2d)]
    before = [conv.per_sample_weights for conv in convs]
    try:
        for conv in convs:
            conv.per_sample_weights = False
        yield
    finally:
        for conv, mode in zip(convs, before):
            conv.per_sample_weights = mode


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
