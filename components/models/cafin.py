"""CAFIN: a two-stage face inpainting network with cross-attention and an HSV colour loss.

Li et al. 2024. No official code is public: every number the paper's text does not fix comes
from the nearest public code (U-Net / pix2pix, ESPCN, EdgeConnect, SAGAN, Restormer, DeepFill),
cited item by item with the departures in docs/methods.md, section "cafin".

Task "inpainting". The generator sees `model_input`: the image with its holes filled by the
mean colour of its known pixels, plus the mask, (N, 4, H, W) -> (coarse, refined), each
(N, 3, H, W); H and W must be divisible by max(2**depth, 4). Training reads `hq` and `mask`
(the holes are the only damage); `restore` reads `lq` and `mask` and returns
`paste_known(refined, lq, mask)`: the photo's known pixels exactly, the network only in the holes.

Networks: "g" (`CAFINGenerator`, components/networks/cafin.py: stage 1 a U-Net upsampling by
PixelShuffle and interpolation side by side, stage 2 spatial and channel cross-attention) and
"d" (the PatchGAN, components/networks/patchgan.py; its step: components/models/adversarial.py).
Losses: L1 on both stages, the HSV colour loss (components/losses/hsv_colour.py) and the
adversarial loss.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.losses.adversarial import AdversarialLoss
from components.losses.hsv_colour import hsv_colour_loss
from components.models.adversarial import (
    AdversarialConfig,
    discriminator_adam,
    discriminator_step,
    generator_adversarial,
)
from components.models.base import Method, Upstream
from components.networks.cafin import REFINE_SCALE, CAFINGenerator
from components.networks.inputs import model_input, paste_known
from components.networks.patchgan import PatchDiscriminator
from components.networks.unet import OUT_CHANNELS


class CAFINConfig(AdversarialConfig):
    """lr, betas, d_lr_ratio, d_width, gan_loss, adversarial_weight: AdversarialConfig's (EdgeConnect's)."""

    width: int = Field(64, gt=0, description="stage-1 U-Net channels at full resolution; doubled per level, "
                                             "capped at 8x")
    depth: int = Field(4, ge=1, le=6, description="stage-1 stride-2 levels; H and W must divide by 2**depth")
    refine_width: int = Field(64, gt=0, description="stage-2 encoder width at full resolution; 4x at the "
                                                    "1/4-resolution attention")
    residual_blocks: int = Field(8, ge=0, description="stage-2 dilated residual blocks (EdgeConnect: 8)")
    attention_heads: int = Field(4, ge=1, description="channel cross-attention heads; must divide 4 * "
                                                      "refine_width")
    l1_weight: float = Field(1.0, ge=0, description="L1 of the refined output")
    coarse_l1_weight: float = Field(1.0, ge=0, description="L1 of the stage-1 output")
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


class CAFIN(Method):
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
        cfg = self.cfg
        return {"g": self.adam("g"), "d": discriminator_adam(self.nets["d"].parameters(), cfg.lr, cfg.d_lr_ratio,
                                                             cfg.betas)}

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        device = self.device
        hq, mask = batch["hq"].to(device).float(), batch["mask"].to(device).float()
        coarse, refined = self.nets["g"](model_input({"lq": hq, "mask": mask}))
        composite = paste_known(refined.float(), hq, mask)

        d_loss = discriminator_step(self.nets["d"], self.opts["d"], self.adversarial, hq, composite.detach())

        # Generator; its backward also leaves gradients in "d", which the next step's zero_grad discards.
        opt_g = self.opts["g"]
        opt_g.zero_grad(set_to_none=True)
        g_adv = generator_adversarial(self.nets["d"], self.adversarial, composite)
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
