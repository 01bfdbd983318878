"""Stage 1 of the two-stage face inpainter: an edge GAN that draws the edges missing in the holes.

Liu, Wei, Deng 2022, stage 1, which follows EdgeConnect's edge model (Nazeri et al. 2019);
every number comes from the official EdgeConnect code. Sources, departures and the measured
rim fill: docs/methods.md, section "edge_gan".

Task "edges". Training reads `hq` (N, 3, H, W), `mask` (N, 1, H, W), 1 = missing, and `edge`
(N, 1, H, W) in {0, 1}, the Canny edges of `hq`. `restore` reads the photo `lq` and `mask` and
returns an edge map (N, 1, H, W) in [0, 1]: the photo's own Canny edges where it is known, the
generator's prediction in the holes (`predict_edges`). H and W must be divisible by 4 and
above 4 x dilation; training needs at least 24 (one discriminator patch).

Networks: "g" (`EdgeGenerator`, components/networks/edge_gan.py: the grey image, the edge map
and the mask, (N, 3, H, W), in; an edge map (N, 1, H, W) out) and "d" (`PatchDiscriminator(
in_channels=2)` on (grey image, edge map) pairs). Losses: adversarial (nsgan; the D step and
the knobs `d_lr_ratio`, `adversarial_weight`: components/models/adversarial.py) plus feature
matching on the discriminator's layers; no L1 on the edges.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.data.edges import GREY_WEIGHTS, canny_edges_batch
from components.losses.adversarial import AdversarialLoss
from components.losses.feature_matching import feature_matching_loss
from components.metrics.edges import edge_scores
from components.models.adversarial import AdversarialConfig, discriminator_adam, discriminator_step
from components.models.base import Method, Upstream
from components.networks.edge_gan import EdgeGenerator
from components.networks.inputs import fill_holes
from components.networks.patchgan import PatchDiscriminator

DISCRIMINATOR_IN_CHANNELS = 2  # grey, edges
# Pixels around a hole whose computed edges are dropped and predicted (skimage's canny erodes its mask by 1).
FILL_RIM = 1
# Old config keys, accepted with a FutureWarning for one release: {old: new}.
RENAMED_KEYS = {"d2g_lr": "d_lr_ratio", "adv_weight": "adversarial_weight"}


class EdgeGANConfig(AdversarialConfig):
    """EdgeConnect's edge model settings (knazeri/edge-connect config.yml.example, src/networks.py); lr, betas,
    d_lr_ratio, d_width, gan_loss: AdversarialConfig's."""

    width: int = Field(64, gt=0, description="generator channels at full resolution; x2 and x4 after each downsample")
    residual_blocks: int = Field(8, ge=0, description="dilated residual blocks in the generator's middle")
    dilation: int = Field(2, ge=1, description="dilation of the first conv of each residual block")
    spectral_norm: bool = Field(True, description="spectral norm on the generator's convs (all but the last)")
    adversarial_weight: float = Field(1.0, ge=0, description="generator adversarial loss weight (EdgeModel adds "
                                                             "it unweighted)")
    fm_weight: float = Field(10.0, ge=0, description="feature matching loss weight (FM_LOSS_WEIGHT)")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        """`d2g_lr` and `adv_weight` (the names before the GAN methods shared theirs) become the new keys."""
        if not isinstance(data, dict) or not any(old in data for old in RENAMED_KEYS):
            return data
        data = dict(data)
        for old, new in RENAMED_KEYS.items():
            if old not in data:
                continue
            if new in data:
                raise ValueError(f"edge_gan: '{old}' is the old name of '{new}'; give only '{new}'")
            warnings.warn(f"edge_gan: '{old}' is deprecated, use '{new}'", FutureWarning, stacklevel=2)
            data[new] = data.pop(old)
        return data

    @model_validator(mode="after")
    def _generator_has_a_loss(self) -> EdgeGANConfig:
        if self.adversarial_weight == 0 and self.fm_weight == 0:
            raise ValueError("adversarial_weight and fm_weight are both 0: the generator would get no gradient")
        return self


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


class EdgeGAN(Method):
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
        cfg = self.cfg
        return {"g": self.adam("g"), "d": discriminator_adam(self.nets["d"].parameters(), cfg.lr, cfg.d_lr_ratio,
                                                             cfg.betas)}

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        hq, mask, edge = (batch[key].float() for key in ("hq", "mask", "edge"))
        grey = to_grey(hq)
        fake = self.nets["g"](generator_input(grey, edge, mask)).float()
        real_pair = torch.cat([grey, edge], dim=1)

        d_loss = discriminator_step(self.nets["d"], self.opts["d"], self.adversarial, real_pair,
                                    torch.cat([grey, fake.detach()], dim=1))
        g_adv, fm = self._generator_losses(real_pair, torch.cat([grey, fake], dim=1))
        g_loss = self.cfg.adversarial_weight * g_adv + self.cfg.fm_weight * fm
        self.opts["g"].zero_grad(set_to_none=True)
        g_loss.backward()
        self.opts["g"].step()

        scores = edge_scores(fake.detach(), edge, mask)
        return {"loss": g_loss.item(), "g_adv": g_adv.item(), "fm": fm.item(), "d": d_loss.item(),
                "precision": scores["precision"].mean().item(), "recall": scores["recall"].mean().item()}

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
