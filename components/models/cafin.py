"""CAFIN: a two-stage face inpainting network with cross-attention and an HSV colour loss.

Li et al. 2024. No official code is public: every number the paper's text does not fix comes
from the nearest public code (U-Net / pix2pix, ESPCN, EdgeConnect, SAGAN, Restormer, DeepFill),
cited item by item with the departures in docs/methods.md, section "cafin".

Task "inpainting". The generator sees `model_input`: the image with its holes filled by the
mean colour of its known pixels, plus the mask, (N, 4, H, W) -> (coarse, refined), each
(N, 3, H, W); H and W must be divisible by max(2**depth, 4). Training reads `hq` and `mask`
(the holes are the only damage); `restore` reads `lq` and `mask` and returns
`paste_known(refined, lq, mask)`: the photo's known pixels exactly, the network only in the holes.

Networks: "g" (`CAFINGenerator`: stage 1 `CoarseUNet`, a U-Net upsampling by PixelShuffle and
interpolation side by side; stage 2 `CrossAttentionRefiner`, spatial and channel
cross-attention between the stage-1 result and the masked input) and "d" (the spectral-norm
PatchGAN, components/models/patchgan.py). Losses: L1 on both stages, the HSV colour loss
(components/losses/hsv_colour.py) and the adversarial loss.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.losses.adversarial import AdversarialLoss
from components.losses.hsv_colour import hsv_colour_loss
from components.models.base import MethodBase, MethodConfig, Upstream
from components.models.inputs import model_input, paste_known
from components.models.patchgan import PatchDiscriminator

IN_CHANNELS = 4  # RGB hole-filled image + mask
OUT_CHANNELS = 3
LEAKY_SLOPE = 0.2
MAX_WIDTH_MULTIPLIER = 8  # pix2pix UnetGenerator: ngf * 8 at most
REFINE_SCALE = 4  # stage 2 works at 1/4 resolution: EdgeConnect's two stride-2 convs
# A 4x4 cell more than half hole is no context to borrow from (see SpatialCrossAttention in the docstring).
HOLE_KEY_THRESHOLD = 0.5
# Finite, so a query whose every key is a hole gets uniform attention instead of NaN.
EXCLUDED_KEY_LOGIT = -1e4


class CAFINConfig(MethodConfig):
    lr: float = Field(1e-4, gt=0, description="generator Adam learning rate (EdgeConnect LR)")
    betas: tuple[float, float] = Field((0.0, 0.9), description="Adam betas (EdgeConnect BETA1, BETA2)")
    d_lr_ratio: float = Field(0.1, gt=0, description="discriminator lr / generator lr (EdgeConnect D2G_LR)")
    width: int = Field(64, gt=0, description="stage-1 U-Net channels at full resolution; doubled per level, "
                                             "capped at 8x")
    depth: int = Field(4, ge=1, le=6, description="stage-1 stride-2 levels; H and W must divide by 2**depth")
    refine_width: int = Field(64, gt=0, description="stage-2 encoder width at full resolution; 4x at the "
                                                    "1/4-resolution attention")
    residual_blocks: int = Field(8, ge=0, description="stage-2 dilated residual blocks (EdgeConnect: 8)")
    attention_heads: int = Field(4, ge=1, description="channel cross-attention heads; must divide 4 * "
                                                      "refine_width")
    d_width: int = Field(64, gt=0, description="PatchGAN discriminator base width")
    gan_loss: Literal["nsgan", "lsgan", "hinge"] = Field("nsgan", description="adversarial loss kind")
    l1_weight: float = Field(1.0, ge=0, description="L1 of the refined output")
    coarse_l1_weight: float = Field(1.0, ge=0, description="L1 of the stage-1 output")
    adversarial_weight: float = Field(0.1, ge=0, description="generator GAN loss weight")
    hsv_weight: float = Field(1.0, ge=0, description="HSV colour loss weight")
    hsv_channel_weights: tuple[float, float, float] = Field(
        (1.0, 1.0, 1.0), description="HSV colour loss weights of hue, saturation, value")

    @field_validator("width")
    @classmethod
    def _even_width(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"width must be even (each decoder level splits its channels between the sub-pixel "
                             f"and the interpolation branch), got {value}")
        return value

    @field_validator("hsv_channel_weights")
    @classmethod
    def _non_negative_channel_weights(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(w < 0 for w in value):
            raise ValueError(f"hsv_channel_weights must be non-negative (hue, saturation, value), got {value}")
        return value

    @model_validator(mode="after")
    def _heads_divide_the_attention_width(self) -> CAFINConfig:
        channels = REFINE_SCALE * self.refine_width
        if channels % self.attention_heads:
            raise ValueError(f"attention_heads ({self.attention_heads}) must divide 4 * refine_width ({channels})")
        return self


def conv3x3(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=dilation, dilation=dilation)


def act() -> nn.LeakyReLU:
    return nn.LeakyReLU(LEAKY_SLOPE)


class ConvPair(nn.Sequential):
    """Two conv3x3 + LeakyReLU at one resolution."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(conv3x3(c_in, c_out), act(), conv3x3(c_out, c_out), act())


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
        self.merge = ConvPair(2 * c_out, c_out)

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


class CoarseUNet(nn.Module):
    """Stage 1: U-Net with `DualUpsample` decoder blocks; (N, 4, H, W) -> (N, 3, H, W) = x[:, :3] + correction."""

    def __init__(self, width: int = 64, depth: int = 4):
        super().__init__()
        widths = [width * min(2**level, MAX_WIDTH_MULTIPLIER) for level in range(depth + 1)]
        self.stem = ConvPair(IN_CHANNELS, widths[0])
        self.downs = nn.ModuleList(
            nn.Sequential(conv3x3(widths[i], widths[i + 1], stride=2), act(), ConvPair(widths[i + 1], widths[i + 1]))
            for i in range(depth))
        self.ups = nn.ModuleList(DualUpsample(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], OUT_CHANNELS, kernel_size=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        features = self.stem(x)
        skips = []
        for down in self.downs:
            skips.append(features)
            features = down(features)
        for up, skip in zip(self.ups, reversed(skips)):
            features = up(features, skip)
        return x[:, :OUT_CHANNELS] + self.head(features)


class Encoder(nn.Sequential):
    """EdgeConnect's encoder layout without instance norm: (N, 4, H, W) -> (N, 4 * width, H/4, W/4)."""

    def __init__(self, width: int):
        super().__init__(
            nn.Conv2d(IN_CHANNELS, width, kernel_size=7, padding=3), act(),
            nn.Conv2d(width, 2 * width, kernel_size=4, stride=2, padding=1), act(),
            nn.Conv2d(2 * width, 4 * width, kernel_size=4, stride=2, padding=1), act())


class ResidualBlock(nn.Module):
    """EdgeConnect's dilated (2) residual block, without instance norm."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv3x3(channels, channels, dilation=2), act(), conv3x3(channels, channels))

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
        self.fuse = nn.Sequential(nn.Conv2d(3 * channels, channels, kernel_size=1), act())
        self.middle = nn.Sequential(*(ResidualBlock(channels) for _ in range(residual_blocks)))
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False), conv3x3(channels, 2 * width), act(),
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False), conv3x3(2 * width, width), act())
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


class CAFIN(MethodBase):
    """CAFIN: generator "g" (both stages) and PatchGAN "d", one Adam each; G/D alternate in each step."""

    name: ClassVar[str] = "cafin"
    task: ClassVar[str] = "inpainting"
    inputs: ClassVar[tuple[str, ...]] = ("hq", "mask")
    Config: ClassVar[type[CAFINConfig]] = CAFINConfig
    cfg: CAFINConfig

    def __init__(self, cfg: CAFINConfig, upstream: Upstream | None = None) -> None:
        super().__init__(cfg, upstream)
        self.adversarial = AdversarialLoss(cfg.gan_loss)

    def build_networks(self) -> dict[str, nn.Module]:
        cfg = self.cfg
        return {"g": CAFINGenerator(cfg.width, cfg.depth, cfg.refine_width, cfg.residual_blocks, cfg.attention_heads),
                "d": PatchDiscriminator(OUT_CHANNELS, cfg.d_width, spectral_norm=True)}

    def build_optimizers(self) -> dict[str, Optimizer]:
        d_lr = self.cfg.lr * self.cfg.d_lr_ratio
        return {"g": self.adam("g"),
                "d": torch.optim.Adam(self.nets["d"].parameters(), lr=d_lr, betas=self.cfg.betas)}

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        device = self.device
        hq, mask = batch["hq"].to(device).float(), batch["mask"].to(device).float()
        coarse, refined = self.nets["g"](model_input({"lq": hq, "mask": mask}))
        composite = paste_known(refined.float(), hq, mask)

        # Discriminator: reals and detached fakes in one forward (one spectral-norm update, one DDP pass).
        opt_d = self.opts["d"]
        opt_d.zero_grad(set_to_none=True)
        logits, _ = self.nets["d"](torch.cat([hq, composite.detach()]))
        real, fake = logits.float().chunk(2)
        d_loss = (self.adversarial(real, True) + self.adversarial(fake, False)) / 2
        d_loss.backward()
        opt_d.step()

        # Generator; its backward also leaves gradients in "d", which the next step's zero_grad discards.
        opt_g = self.opts["g"]
        opt_g.zero_grad(set_to_none=True)
        g_logits, _ = self.nets["d"](composite)
        g_adv = self.adversarial(g_logits.float(), True, for_discriminator=False)
        l1 = hole_l1(refined.float(), hq, mask)
        l1_coarse = hole_l1(coarse.float(), hq, mask)
        cfg = self.cfg
        hsv = hsv_colour_loss(refined.float(), hq, cfg.hsv_channel_weights, mask=mask)
        g_loss = (cfg.l1_weight * l1 + cfg.coarse_l1_weight * l1_coarse + cfg.hsv_weight * hsv
                  + cfg.adversarial_weight * g_adv)
        g_loss.backward()
        opt_g.step()
        return {"loss": g_loss.item(), "l1": l1.item(), "l1_coarse": l1_coarse.item(), "hsv": hsv.item(),
                "g_adv": g_adv.item(), "d": d_loss.item()}

    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        """(N, 3, H, W) in [0, 1] on the method's device: `lq`'s known pixels exactly, the refined
        output in the holes."""
        device = self.device
        lq, mask = batch["lq"].to(device).float(), batch["mask"].to(device).float()
        with self.evaluating():
            _, refined = self.nets["g"](model_input({"lq": lq, "mask": mask}))
            return paste_known(refined.float().clamp(0.0, 1.0), lq, mask)


def hole_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over the hole pixels (mask 1) and channels; 0 when there is no hole."""
    weights = mask.expand_as(pred)
    return ((pred - target).abs() * weights).sum() / weights.sum().clamp_min(1.0)
