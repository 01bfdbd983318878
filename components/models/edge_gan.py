"""Stage 1 of the two-stage face inpainter: an edge GAN that draws the edges missing in the holes.

Liu, Wei, Deng 2022, stage 1, which follows EdgeConnect's edge model (Nazeri et al. 2019);
every number comes from the official EdgeConnect code. Sources, departures and the measured
rim fill: docs/methods.md, section "edge_gan".

Task "edges". Training reads `hq` (N, 3, H, W), `mask` (N, 1, H, W), 1 = missing, and `edge`
(N, 1, H, W) in {0, 1}, the Canny edges of `hq`. `restore` reads the photo `lq` and `mask` and
returns an edge map (N, 1, H, W) in [0, 1]: the photo's own Canny edges where it is known, the
generator's prediction in the holes (`predict_edges`). H and W must be divisible by 4 and
above 4 x dilation; training needs at least 24 (one discriminator patch).

Networks: "g" (`EdgeGenerator`: the grey image, the edge map and the mask, (N, 3, H, W), in;
an edge map (N, 1, H, W) out) and "d" (`PatchDiscriminator(in_channels=2)` on (grey image,
edge map) pairs, returning logits). Losses: adversarial (nsgan) plus feature matching on the
discriminator's layers; no L1 on the edges.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.data.edges import GREY_WEIGHTS, canny_edges_batch
from components.losses.adversarial import AdversarialLoss
from components.losses.feature_matching import feature_matching_loss
from components.metrics.edges import edge_scores
from components.models.base import MethodBase, MethodConfig, Upstream
from components.models.inputs import fill_holes
from components.models.patchgan import PatchDiscriminator

GENERATOR_IN_CHANNELS = 3  # masked grey, masked edges, mask
DISCRIMINATOR_IN_CHANNELS = 2  # grey, edges
DOWNSAMPLES = 2  # EdgeGenerator's two stride-2 convs: H and W must divide by 4
INIT_STD = 0.02  # BaseNetwork.init_weights gain
# Pixels around a hole whose computed edges are dropped and predicted (skimage's canny erodes its mask by 1).
FILL_RIM = 1


class EdgeGANConfig(MethodConfig):
    """EdgeConnect's edge model settings (knazeri/edge-connect config.yml.example, src/networks.py)."""

    lr: float = Field(1e-4, gt=0, description="generator Adam learning rate (LR)")
    betas: tuple[float, float] = Field((0.0, 0.9), description="Adam betas of both networks (BETA1, BETA2)")
    d2g_lr: float = Field(0.1, gt=0, description="discriminator learning rate as a multiple of lr (D2G_LR)")
    width: int = Field(64, gt=0, description="generator channels at full resolution; x2 and x4 after each downsample")
    residual_blocks: int = Field(8, ge=0, description="dilated residual blocks in the generator's middle")
    dilation: int = Field(2, ge=1, description="dilation of the first conv of each residual block")
    spectral_norm: bool = Field(True, description="spectral norm on the generator's convs (all but the last)")
    d_width: int = Field(64, gt=0, description="PatchGAN discriminator's first-layer width")
    gan_loss: Literal["nsgan", "lsgan", "hinge"] = Field("nsgan", description="adversarial loss (GAN_LOSS)")
    adv_weight: float = Field(1.0, ge=0, description="generator adversarial loss weight")
    fm_weight: float = Field(10.0, ge=0, description="feature matching loss weight (FM_LOSS_WEIGHT)")

    @model_validator(mode="after")
    def _generator_has_a_loss(self) -> EdgeGANConfig:
        if self.adv_weight == 0 and self.fm_weight == 0:
            raise ValueError("adv_weight and fm_weight are both 0: the generator would get no gradient")
        return self


def _normalised(module: nn.Module, on: bool) -> nn.Module:
    nn.init.normal_(module.weight, 0.0, INIT_STD)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return nn.utils.parametrizations.spectral_norm(module) if on else module


class DilatedResidualBlock(nn.Module):
    """x + (pad, dilated 3x3 conv, IN, ReLU, pad, 3x3 conv, IN); no activation after the sum."""

    def __init__(self, channels: int, dilation: int, spectral_norm: bool):
        super().__init__()
        bias = not spectral_norm
        self.body = nn.Sequential(
            nn.ReflectionPad2d(dilation),
            _normalised(nn.Conv2d(channels, channels, 3, dilation=dilation, bias=bias), spectral_norm),
            nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1),
            _normalised(nn.Conv2d(channels, channels, 3, bias=bias), spectral_norm),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class EdgeGenerator(nn.Module):
    """EdgeConnect's edge generator.

    Args:
        width: channels of the first conv; 2 x and 4 x after the two downsamples.
        residual_blocks: dilated residual blocks at 4 x width, quarter resolution.
        dilation: dilation of each block's first conv; needs H / 4 > dilation.
        spectral_norm: on every conv but the output conv.

    Shapes: x (N, 3, H, W) = masked grey, masked edges, mask -> (N, 1, H, W) edge probabilities.
    """

    def __init__(self, width: int = 64, residual_blocks: int = 8, dilation: int = 2, spectral_norm: bool = True):
        super().__init__()
        self.dilation = dilation
        w1, w2, w4 = width, 2 * width, 4 * width

        def stage(conv: nn.Module, channels: int) -> list[nn.Module]:
            return [_normalised(conv, spectral_norm), nn.InstanceNorm2d(channels), nn.ReLU()]

        self.encoder = nn.Sequential(
            nn.ReflectionPad2d(3), *stage(nn.Conv2d(GENERATOR_IN_CHANNELS, w1, 7), w1),
            *stage(nn.Conv2d(w1, w2, 4, stride=2, padding=1), w2),
            *stage(nn.Conv2d(w2, w4, 4, stride=2, padding=1), w4),
        )
        self.middle = nn.Sequential(*(DilatedResidualBlock(w4, dilation, spectral_norm)
                                      for _ in range(residual_blocks)))
        self.decoder = nn.Sequential(
            *stage(nn.ConvTranspose2d(w4, w2, 4, stride=2, padding=1), w2),
            *stage(nn.ConvTranspose2d(w2, w1, 4, stride=2, padding=1), w1),
            nn.ReflectionPad2d(3), _normalised(nn.Conv2d(w1, 1, 7), on=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        factor = 2**DOWNSAMPLES
        if x.ndim != 4 or x.shape[1] != GENERATOR_IN_CHANNELS or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"EdgeGenerator needs (N, {GENERATOR_IN_CHANNELS}, H, W) with H and W divisible by "
                             f"{factor}, got {tuple(x.shape)}")
        if min(x.shape[2:]) // factor <= self.dilation:
            raise ValueError(f"EdgeGenerator(dilation={self.dilation}) needs H and W above {factor * self.dilation} "
                             f"(reflection padding at quarter resolution), got {tuple(x.shape)}")
        return torch.sigmoid(self.decoder(self.middle(self.encoder(x))))


def build_edge_generator(cfg: EdgeGANConfig) -> nn.Module:
    """The edge generator a config describes (also used by fusion_inpaint to rebuild stage 1)."""
    return EdgeGenerator(cfg.width, cfg.residual_blocks, cfg.dilation, cfg.spectral_norm)


def to_grey(image: Tensor) -> Tensor:
    """(N, 1, H, W) grey of (N, 3, H, W) RGB with the weights the shards' Canny edges use."""
    return (image * image.new_tensor(GREY_WEIGHTS).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def generator_input(grey: Tensor, edges: Tensor, mask: Tensor) -> Tensor:
    """(N, 3, H, W): grey with white holes, edges with empty holes, mask (EdgeModel.forward)."""
    mask = mask.to(grey.dtype)
    known = 1.0 - mask
    return torch.cat([grey * known + mask, edges.to(grey.dtype) * known, mask], dim=1)


def smooth_fill(image: Tensor, mask: Tensor) -> Tensor:
    """`image` with its holes (mask 1) filled from the surrounding known pixels, with no step at the rim.

    Push-pull: the known pixels are averaged down a 2x pyramid until every coarse pixel has
    some, then each level's holes take the bilinear upsampling of the level below. An image with
    no known pixel gets `fill_holes`' mid-grey.
    """
    known = 1.0 - mask
    if min(image.shape[2:]) <= 1:
        return fill_holes(image, mask)
    weight = F.avg_pool2d(known, 2, ceil_mode=True)
    coarse = F.avg_pool2d(image * known, 2, ceil_mode=True) / weight.clamp_min(1e-6)
    coarse = smooth_fill(coarse, (weight == 0).to(image.dtype))
    up = F.interpolate(coarse, size=image.shape[2:], mode="bilinear", align_corners=False)
    return image * known + up * mask


def known_region_edges(image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(edges, hole): Canny edges of the smoothly filled image outside `hole`, where `hole` is
    `mask` grown by FILL_RIM pixels, the rim whose edges the fill still disturbs most."""
    hole = F.max_pool2d(mask, 2 * FILL_RIM + 1, stride=1, padding=FILL_RIM)
    edges = canny_edges_batch(smooth_fill(image, mask)) * (1.0 - hole)
    return edges, hole


def predict_edges(generator: nn.Module, image: Tensor, mask: Tensor, known_edges: Tensor | None = None) -> Tensor:
    """(N, 1, H, W) in [0, 1]: the known region's edges exactly, the generator's edges in the holes.

    image: (N, 3, H, W) RGB in [0, 1]; what lies under the mask is ignored. mask: (N, 1, H, W),
    1 = missing. known_edges: the Canny edges of the known region if the caller has them (the
    shard's `edge` column); else they are computed here (`known_region_edges`), and the
    pixels within FILL_RIM of a hole count as missing (see the module docstring). Runs under
    the caller's grad mode and the generator's own train / eval mode.
    """
    if image.ndim != 4 or image.shape[1] != 3 or mask.shape != (image.shape[0], 1, *image.shape[2:]):
        raise ValueError(f"predict_edges needs image (N, 3, H, W) and mask (N, 1, H, W), got "
                         f"{tuple(image.shape)} and {tuple(mask.shape)}")
    mask = mask.to(image.dtype)
    if known_edges is None:
        known_edges, hole = known_region_edges(image, mask)
    else:
        if known_edges.shape != mask.shape:
            raise ValueError(f"known_edges must be (N, 1, H, W) like the mask {tuple(mask.shape)}, "
                             f"got {tuple(known_edges.shape)}")
        known_edges, hole = known_edges.to(image.dtype), mask
    predicted = generator(generator_input(to_grey(image), known_edges, hole)).float()
    return torch.where(hole.bool(), predicted.to(image.dtype), known_edges)


class EdgeGAN(MethodBase):
    """EdgeConnect's edge model: generator "g", PatchGAN "d", adversarial + feature matching losses."""

    name: ClassVar[str] = "edge_gan"
    task: ClassVar[str] = "edges"
    inputs: ClassVar[tuple[str, ...]] = ("hq", "mask", "edge")
    Config: ClassVar[type[EdgeGANConfig]] = EdgeGANConfig
    cfg: EdgeGANConfig

    def __init__(self, cfg: EdgeGANConfig, upstream: Upstream | None = None) -> None:
        super().__init__(cfg, upstream)
        self.adversarial = AdversarialLoss(cfg.gan_loss)

    def build_networks(self) -> dict[str, nn.Module]:
        return {"g": build_edge_generator(self.cfg),
                "d": PatchDiscriminator(DISCRIMINATOR_IN_CHANNELS, width=self.cfg.d_width, spectral_norm=True)}

    def build_optimizers(self) -> dict[str, Optimizer]:
        d_lr = self.cfg.lr * self.cfg.d2g_lr
        return {"g": self.adam("g"),
                "d": torch.optim.Adam(self.nets["d"].parameters(), lr=d_lr, betas=self.cfg.betas)}

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        hq, mask, edge = (batch[key].float() for key in ("hq", "mask", "edge"))
        grey = to_grey(hq)
        fake = self.nets["g"](generator_input(grey, edge, mask)).float()
        real_pair = torch.cat([grey, edge], dim=1)

        d_loss = self._discriminator_step(real_pair, torch.cat([grey, fake.detach()], dim=1))
        g_adv, fm = self._generator_losses(real_pair, torch.cat([grey, fake], dim=1))
        g_loss = self.cfg.adv_weight * g_adv + self.cfg.fm_weight * fm
        self.opts["g"].zero_grad(set_to_none=True)
        g_loss.backward()
        self.opts["g"].step()

        scores = edge_scores(fake.detach(), edge, mask)
        return {"loss": g_loss.item(), "g_adv": g_adv.item(), "fm": fm.item(), "d": d_loss,
                "precision": scores["precision"].mean().item(), "recall": scores["recall"].mean().item()}

    def _discriminator_step(self, real_pair: Tensor, fake_pair: Tensor) -> float:
        """One D update on real and fake pairs in one forward; returns the mean of the two terms."""
        opt = self.opts["d"]
        opt.zero_grad(set_to_none=True)  # also drops what the last generator loss left in D
        logits, _ = self.nets["d"](torch.cat([real_pair, fake_pair], dim=0))
        real_logits, fake_logits = logits.float().chunk(2)
        loss = (self.adversarial.loss(real_logits, True, for_discriminator=True)
                + self.adversarial.loss(fake_logits, False, for_discriminator=True)) / 2
        loss.backward()
        opt.step()
        return loss.item()

    def _generator_losses(self, real_pair: Tensor, fake_pair: Tensor) -> tuple[Tensor, Tensor]:
        """(adversarial, feature matching summed over D's layers) through the updated D."""
        logits, features = self.nets["d"](torch.cat([real_pair, fake_pair], dim=0))
        _, fake_logits = logits.float().chunk(2)
        halves = [f.float().chunk(2) for f in features]
        real_features = [real.detach() for real, _ in halves]
        fake_features = [fake for _, fake in halves]
        fm = feature_matching_loss(real_features, fake_features, reduction="sum")
        return self.adversarial.loss(fake_logits, True, for_discriminator=False), fm

    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        """(N, 1, H, W) in [0, 1] on the method's device: the photo `lq`'s edges, holes predicted."""
        device = self.device
        image, mask = batch["lq"].to(device).float(), batch["mask"].to(device).float()
        with self.evaluating():
            return predict_edges(self.nets["g"], image, mask)
