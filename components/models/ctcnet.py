"""CTCNet: a CNN-Transformer cooperation network for face super-resolution.

Paper: Guangwei Gao, Zixiang Xu, Juncheng Li, Jian Yang, Tieyong Zeng, Guo-Jun Qi 2023,
"CTCNet: A CNN-Transformer Cooperation Network for Face Image Super-Resolution", IEEE TIP
(arXiv 2204.08696). Official code: IVIPLab/CTCNet; every number below comes from its
`models/ctcnet.py` (the network), `models/ctcnet_model.py` (the loss and optimiser),
`data/celeba_dataset.py` (the input) and `train.sh` (the recipe) unless said otherwise.

Task: face super-resolution ("super_resolution"). In: `lr` (N, 3, h, w) in [0, 1]. Out:
(N, 3, h * scale, w * scale); `restore` clamps it to [0, 1]. Trained against `hq`. The
paper's setting is x8, 16 -> 128 px (CelebA); `scale` may be 4, 8 or 16. h * scale and
w * scale must be multiples of 8 (three stride-2 levels) and at least 16.

How the LR face enters: like the official code, the network never sees the LR grid. The
data loader of the official code shrinks the HR face with bicubic and enlarges it back
to the HR size with bicubic before the network (`celeba_dataset.py`: `lr_img.resize(
(hr_size, hr_size), BICUBIC)`), and the network ends with a global residual to that input
(`out = out + input`): it predicts the correction to the bicubic upsampling. Here the
generator does the upsampling itself (torch bicubic, clamped to [0, 1] as PIL's 8-bit
output is; `components.models.classical.bicubic`, the evaluate stage's baseline), so
`restore` takes the LR image as the shards store it. The official code feeds the network
images normalised to [-1, 1] (`Normalize((0.5,)*3, (0.5,)*3)`); the generator does the same
inside, so the residual is predicted on that scale.

Architecture (the paper's method section names the modules; widths and counts from `models/ctcnet.py`), with
`width` = 32 and the level widths (32, 64, 128):
- head: 3x3 conv 3 -> 32 at the HR size.
- encoder: three levels at H, H/2, H/4; each runs one LGCM, then a downsampling
  (3x3 stride-2 conv + LeakyReLU(0.2) + 3x3 conv + LeakyReLU, no bias) to the next level;
  the third downsampling keeps 128 channels, so the bottleneck is 128 wide at H/8.
- LGCM, Local-Global Feature Cooperation Module = FSAU + Transformer blocks, with a residual
  around both. Transformer blocks per encoder level (4, 6, 6), heads (1, 2, 4); the
  decoder mirrors them, (6, 6, 4) from H/4 back to H (`ResidualBlock*_en/_de`,
  `res_layers_back`).
- FSAU, Facial Structure Attention Unit: a local feature block, an hourglass that predicts
  a one-channel spatial attention map (sigmoid) which multiplies the features, and a second
  local feature block. The hourglass (from SPARNet, Chen et al. 2020, whose code CTCNet builds
  on) has depth 4 in the LGCMs and 2 in the FRMs and runs at 64 (= 2 x `width`) channels;
  its 3x3 convs carry BatchNorm + PReLU; channel attention (squeeze-excitation, reduction
  16) acts on its output before the sigmoid head, with a 1x1 conv skip where the input
  width differs from 64 (`HourGlassBlock`, `HourGlassBlock2`, `HourGlassBlock32`).
- local feature block (`one_module`): two scaled residual convs (c -> c/2 -> c, PReLU),
  their outputs concatenated and merged by a 1x1 conv, channel attention, a 3x3 conv, all
  added to the input with learned scalar weights (init 1).
- Transformer block: Restormer's (Zamir et al. 2022): channel LayerNorm, multi-Dconv head
  transposed attention (attention across channels, so linear in the pixel count), gated
  depthwise-conv feed-forward with expansion 2.66, no biases (`TransformerBlock`).
- FRM, Feature Refinement Module, four at the bottleneck (`ResidualBlock_res`, `range(4)`):
  an FSAU, then a split into a low-frequency branch (2x2 average pool) and a high-frequency
  branch (the features minus the re-enlarged pool), each a local feature block; the branches
  are crossed (1x1 conv of both), passed through their blocks again (the official code
  reuses the same two blocks), merged by a 1x1 conv and added to the features gated by a
  1x1 conv of themselves; the FSAU's second block runs once more, plus a residual.
- decoder: at each level a 6x6 stride-2 transposed conv + LeakyReLU + 3x3 conv + LeakyReLU
  (no bias) upsamples, then the MFFU, then an LGCM.
- MFFU, Multi-scale Feature Fusion Unit: the upsampled decoder features are concatenated
  with the three encoder levels' outputs resized to this level (stride-2 3x3 convs to
  shrink, one shared conv per source level applied once per halving; transposed convs to
  enlarge, 8x8 kernels for one doubling and one shared 6x6 kernel applied twice for two),
  fused by a 3x3 conv to the level width and reweighted by channel attention: 352, 288
  and 256 channels in at H/4, H/2 and H.
- tail: 3x3 conv 32 -> 3, plus the bicubic input (global residual).

Loss: L1 between the output and `hq`, weight 1 (`ctcnet_model.py`: `lambda_pix` 1.0). The
paper's GAN variant (CTCGAN in the official README) adds perceptual and adversarial losses
to that; it is not implemented here. The official L1 is on [-1, 1] images, twice this one
on [0, 1]; Adam's steps do not depend on that factor. Optimiser: Adam, lr 2e-4, betas (0.9, 0.99) (`train.sh --lr 0.0002
--beta1 0.9`, beta2 in `ctcnet_model.py`): MethodConfig's defaults. Batch 10 and 100 epochs
with linear decay in the official recipe belong to the training stage, not here.
Initialisation: every conv weight from N(0, 0.02), biases zero, BatchNorm weights from
N(1, 0.02) (`networks.define_network` -> `init_weights('normal', 0.02)`).

Parameters: 22,407,699 at the defaults, exactly what the official `CTCNet()` reaches in its
forward pass (measured by running it at 128 px and counting the parameters that receive a
gradient). The official module constructs 24,404,917: it also builds layers its forward
never calls (a Swin block pair, two convs and a channel attention in each FRM, twelve
scale factors, two input stems), which are left out here. Checked once against the
official code (not vendored, so not a test): with its weights copied in, reflection
padding and float64, this generator's output matched the official network's to 3e-11
relative at 16 -> 128 px.

Departures from the official code, and why:
- replicate padding instead of reflection padding in the hourglass: reflection needs a map
  larger than the padding, and at the tests' 32-64 px the hourglass's innermost maps are
  1 px; the two differ only in the border values they pad with.
- the hourglass upsamples with nearest-neighbour straight to the matching skip's size
  (the official doubles, then resizes on a mismatch): the same at even sizes.
- the tail conv starts at zero (the rest as above), so the untrained network returns the
  bicubic upsampling exactly and training only learns the correction; the same choice as
  the project's baseline (components/models/baseline.py).
- the scalar weights of the unused first residual of each local feature block are left out.
- `width` scales every width (level widths width x (1, 2, 4), hourglass 2 x width) so the
  tests can run narrow copies; the official widths are fixed.
- module names, and the channel order of each MFFU's concatenation (decoder features, then
  levels H, H/2, H/4), are this file's own: the official checkpoints need a key and channel
  mapping to load.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.models.base import MethodBase, MethodConfig
from components.models.classical import bicubic

LEVELS = 3  # encoder levels at H, H/2, H/4; the bottleneck is at H/8
LEAKY_SLOPE = 0.2
ATTENTION_REDUCTION = 16  # squeeze-excitation reduction of every channel attention (`CALayer(..., 16)`)
INIT_STD = 0.02


class CTCNetConfig(MethodConfig):
    scale: Literal[4, 8, 16] = Field(8, description="upscaling factor: hq is lr x scale (paper: 8, 16 -> 128 px)")
    width: int = Field(32, ge=2, description="channels at the HR level; levels have width x (1, 2, 4), the "
                                             "hourglass 2 x width (official: 32)")
    encoder_blocks: tuple[int, int, int] = Field(
        (4, 6, 6), description="Transformer blocks in the LGCM of each encoder level, H to H/4; the decoder "
                               "mirrors them (official: 4, 6, 6)")
    heads: tuple[int, int, int] = Field((1, 2, 4),
                                        description="attention heads per level, H to H/4 (official: 1, 2, 4)")
    refinement_blocks: int = Field(4, ge=1, description="FRMs at the bottleneck (official: 4)")
    fsau_depth: int = Field(4, ge=1, description="hourglass depth of the FSAU inside each LGCM (official: 4)")
    frm_fsau_depth: int = Field(2, ge=1, description="hourglass depth of the FSAU inside each FRM (official: 2)")
    ffn_expansion: float = Field(2.66, gt=0, description="Transformer feed-forward expansion (Restormer's 2.66)")

    @model_validator(mode="after")
    def _widths_split_into_heads(self) -> CTCNetConfig:
        if self.width % 2:
            raise ValueError(f"width must be even (the local feature blocks halve it), got {self.width}")
        if any(blocks < 1 for blocks in self.encoder_blocks):
            raise ValueError(f"encoder_blocks must all be >= 1, got {self.encoder_blocks}")
        for level, heads in enumerate(self.heads):
            channels = self.width * 2**level
            if heads < 1 or channels % heads:
                raise ValueError(f"heads[{level}] = {heads} must be >= 1 and divide that level's width "
                                 f"{channels} (width {self.width} x {2**level})")
        return self


def conv3x3(c_in: int, c_out: int, stride: int = 1, bias: bool = True, padding_mode: str = "zeros") -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias, padding_mode=padding_mode)


def conv1x1(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, bias=bias)


class ChannelAttention(nn.Module):
    """Squeeze-excitation (Hu et al. 2018, as in RCAN): mean -> 1x1 down -> ReLU -> 1x1 up -> sigmoid, x input."""

    def __init__(self, channels: int, reduction: int = ATTENTION_REDUCTION):
        super().__init__()
        hidden = max(1, channels // reduction)  # narrow test widths would otherwise get 0 channels
        self.weights = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv1x1(channels, hidden), nn.ReLU(),
                                     conv1x1(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weights(x)


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
        self.attention = ChannelAttention(channels)
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
        self.attention = ChannelAttention(hidden)
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
        self.attention = ChannelAttention(c_out)

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
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(module.weight, 0.0, INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, INIT_STD)
                nn.init.zeros_(module.bias)
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


def check_pair_sizes(lr: Tensor, hq: Tensor, scale: int) -> None:
    """Raises ValueError unless hq is exactly lr x scale."""
    expected = (lr.shape[-2] * scale, lr.shape[-1] * scale)
    if tuple(hq.shape[-2:]) != expected:
        raise ValueError(f"ctcnet with scale {scale} needs hq = lr x {scale}: lr is {lr.shape[-2]}x{lr.shape[-1]}, "
                         f"so hq should be {expected[0]}x{expected[1]}, but hq is {hq.shape[-2]}x{hq.shape[-1]}")


class CTCNet(MethodBase):
    """CTCNet trained with L1 to `hq`: one network "g" (CTCNetGenerator), one Adam."""

    name: ClassVar[str] = "ctcnet"
    task: ClassVar[str] = "super_resolution"
    inputs: ClassVar[tuple[str, ...]] = ("hq", "lr")
    Config: ClassVar[type[CTCNetConfig]] = CTCNetConfig
    cfg: CTCNetConfig

    def build_networks(self) -> dict[str, nn.Module]:
        cfg = self.cfg
        return {"g": CTCNetGenerator(cfg.scale, cfg.width, cfg.encoder_blocks, cfg.heads, cfg.refinement_blocks,
                                     cfg.fsau_depth, cfg.frm_fsau_depth, cfg.ffn_expansion)}

    def build_optimizers(self) -> dict[str, Optimizer]:
        return {"g": self.adam("g")}

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        lr, hq = batch["lr"], batch["hq"]
        check_pair_sizes(lr, hq, self.cfg.scale)
        opt = self.opts["g"]
        opt.zero_grad(set_to_none=True)
        # float32 loss: under bf16 autocast the output is bf16.
        loss = F.l1_loss(self.nets["g"](lr).float(), hq.float())
        loss.backward()
        opt.step()
        value = loss.item()
        return {"loss": value, "l1": value}

    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        """(N, 3, h * scale, w * scale) in [0, 1] on the method's device, from `lr` alone."""
        lr = batch["lr"].to(self.device)
        with self.evaluating():
            return self.nets["g"](lr).float().clamp(0.0, 1.0)
