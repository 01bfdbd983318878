"""Panini-Net: blind face restoration (and 16x face SR) by degradation-aware feature interpolation.

Wang, Hu, Zhang 2022 (AAAI); official code jianzhangcs/panini. The source of every width, loss
weight and schedule, the departures and the measured runs: docs/methods.md, section "panini".

Task "restoration" (`input` "lq", the default): `lq` (N, 3, R, R) in [0, 1] in, the restored
face (N, 3, R, R) in [0, 1] out, R = the StyleGAN2 prior's resolution, which must equal the
`hq` size. With `input` "lr" the task is "super_resolution": `lr` (N, 3, R/f, R/f) is bicubic-
upsampled to R x R and fed to the same network. `columns(cfg)` is ("hq", cfg.input).

Networks (components/networks/panini.py): "g" (`PaniniEncoder`: RRDB trunk, CBAM, strided
convs to w+ (N, n_latent, style_dim), and the learned half of the DAFI blocks), "prior"
(`FusedPrior`: the upstream StyleGAN2 generator, whose features at 4 .. min(64, R/2) px the DAFI
interpolation F = m_prior * F_GAN + m_image * conv(F_image) replaces), "dre" (the upstream DRE's
query encoder: v = its pooled 256-d feature; absent with condition "learned") and "d"
(StyleGAN2's discriminator; absent when `gan_weight` 0). Upstream: `load_upstream(upstream, "stylegan2")`
and, with condition "dre", `load_upstream(upstream, "dre")`; their configs are recorded, so
`load_exported` rebuilds every network from the config alone.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.losses.adversarial import AdversarialLoss
from components.losses.perceptual import PerceptualLoss, VGG19Features
from components.models.base import Method, MethodConfig, Upstream
from components.models.dre import DREConfig
from components.models.files import load_upstream
from components.models.stylegan2 import StyleGAN2Config
from components.networks import classical
from components.networks.panini import (
    LEARNED_CONDITION_DIM,
    DRERepresentation,
    FusedPrior,
    ImageFeatureExtractor,
    PaniniEncoder,
    fused_resolutions,
)
from components.networks.stylegan2 import Discriminator, channel_table

PERCEPTUAL_LAYER = "relu4_4"  # stands in for VGG16 conv4_3 (configs/panini_*.py layer '21')


class PaniniConfig(MethodConfig):
    lr: float = Field(1e-4, gt=0, description="Adam lr of every trained network (configs/panini_mfr.py)")
    input: Literal["lq", "lr"] = Field(
        "lq", description="'lq': blind restoration; 'lr': super-resolution from the bicubic-upsampled `lr`")
    condition: Literal["dre", "learned"] | None = Field(
        None, description="what drives the DAFI masks: the DRE vector or a learned vector (Panini_SR); "
                          "None = 'dre' for input 'lq', 'learned' for 'lr'")
    finetune_prior: bool = Field(True, description="train the StyleGAN2 prior with the rest (official: True)")
    finetune_dre: bool = Field(True, description="train the DRE with the rest (official: True)")
    rrdb_channels: int = Field(8, gt=0, description="RRDB trunk width (Panini_MFR 8; Panini_SR 64)")
    num_rrdbs: int = Field(2, ge=1, description="RRDB blocks in the trunk (Panini_MFR 2; Panini_SR 23)")
    growth_channels: int = Field(32, gt=0, description="dense-block growth (mmediting RRDB default 32)")
    cbam_reduction: int = Field(2, ge=1, description="CBAM channel-gate reduction (Panini_MFR 2; Panini_SR 8)")
    stem_width: int = Field(32, gt=0, description="width of the full-size conv after CBAM (official 32)")
    fuse_max_resolution: int = Field(64, description="highest resolution a DAFI block fuses at (official 64)")
    l1_weight: float = Field(1.0, ge=0, description="pixel L1 weight (official 1)")
    perceptual_weight: float = Field(1e-2, ge=0, description="perceptual weight (official 1e-2)")
    gan_weight: float = Field(1e-2, ge=0, description="generator adversarial weight (official 1e-2); 0 = no D")
    vgg_weights: str | None = Field(None, description="torchvision VGG19 weights file; None turns the "
                                                      "perceptual term off")
    dre: dict[str, Any] | None = Field(None, description="the upstream DRE's config, recorded at build")
    prior: dict[str, Any] | None = Field(None, description="the upstream StyleGAN2's config, recorded at build")

    @field_validator("fuse_max_resolution")
    @classmethod
    def _fuse_resolution_is_a_power_of_two(cls, value: int) -> int:
        if value < 4 or value & (value - 1):
            raise ValueError(f"fuse_max_resolution must be a power of 2 >= 4, got {value}")
        return value

    @field_validator("prior")
    @classmethod
    def _prior_is_a_stylegan2_config(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            StyleGAN2Config.model_validate(value)
        return value

    @field_validator("dre")
    @classmethod
    def _dre_is_a_dre_config(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            DREConfig.model_validate(value)
        return value

    @model_validator(mode="after")
    def _resolve_and_check(self) -> PaniniConfig:
        if self.condition is None:
            self.condition = "dre" if self.input == "lq" else "learned"
        if self.rrdb_channels // self.cbam_reduction < 1:
            raise ValueError(f"cbam_reduction {self.cbam_reduction} leaves no channel of rrdb_channels "
                             f"{self.rrdb_channels} in the CBAM channel gate")
        perceptual_on = self.vgg_weights is not None and self.perceptual_weight > 0
        if self.l1_weight == 0 and self.gan_weight == 0 and not perceptual_on:
            raise ValueError("l1_weight and gan_weight are 0 and the perceptual term is off (vgg_weights unset "
                             "or perceptual_weight 0): the generator would get no gradient")
        return self

# -- the method ----------------------------------------------------------------------------------
class Panini(Method):
    """Panini-Net: networks "g", "dre" (condition "dre"), "prior", "d" (gan_weight > 0); see the module docstring."""

    name: ClassVar[str] = "panini"
    inputs: ClassVar[tuple[str, ...]] = ("hq", "lq")  # `columns(cfg)`: ("hq", "lr") for SR
    # Both tasks as the official code scores them (test_cfg PSNR, crop_border 0), x16 SR included.
    paper_protocol: ClassVar[str | None] = "panini"
    Config: ClassVar[type[PaniniConfig]] = PaniniConfig
    cfg: PaniniConfig

    def __init__(self, cfg: PaniniConfig, upstream: Upstream | None = None) -> None:
        self._upstream_models: dict[str, Any] = {}
        if isinstance(cfg, PaniniConfig):
            cfg = self._record_upstream(cfg, dict(upstream or {}))
        super().__init__(cfg, upstream)
        self._upstream_models = {}  # weights copied: the upstream methods are not kept
        self.adversarial = AdversarialLoss("nsgan")
        # Not in self.nets: VGG19 is a fixed loss network, neither trained nor exported.
        self.perceptual: PerceptualLoss | None = None
        if cfg.vgg_weights is not None and cfg.perceptual_weight > 0:
            self.perceptual = PerceptualLoss(VGG19Features(cfg.vgg_weights), {PERCEPTUAL_LAYER: 1.0})

    @property
    def task(self) -> str:  # type: ignore[override]
        """'restoration' from `lq`, 'super_resolution' from `lr` (the export and evaluate read it)."""
        return "super_resolution" if self.cfg.input == "lr" else "restoration"

    @classmethod
    def columns(cls, cfg: MethodConfig) -> tuple[str, ...]:
        return ("hq", cfg.input) if isinstance(cfg, PaniniConfig) else cls.inputs

    @property
    def resolution(self) -> int:
        return self.unwrapped("prior").resolution

    def _record_upstream(self, cfg: PaniniConfig, upstream: dict[str, Any]) -> PaniniConfig:
        """cfg with the upstream prior's (and DRE's) config recorded; their loaded methods kept for build."""
        updates: dict[str, Any] = {}
        if upstream:
            prior = self._upstream_models["prior"] = load_upstream(upstream, "stylegan2")
            updates["prior"] = prior.cfg.model_copy(update={"pretrained": None}).model_dump(mode="json")
            if cfg.condition == "dre":
                dre = self._upstream_models["dre"] = load_upstream(upstream, "dre")
                updates["dre"] = dre.cfg.model_dump(mode="json")
        cfg = cfg.model_copy(update=updates)
        if cfg.prior is None:
            raise ValueError("method 'panini' needs its StyleGAN2 prior: an upstream 'stylegan2' model (the prior's "
                             "training stage) or a recorded `prior` config (an exported panini model)")
        if cfg.condition == "dre" and cfg.dre is None:
            raise ValueError("method 'panini' with condition 'dre' needs its degradation representation encoder: an "
                             "upstream 'dre' model (the DRE pretraining stage) or a recorded `dre` config")
        return cfg

    def build_networks(self) -> dict[str, nn.Module]:
        cfg = self.cfg
        prior_cfg = StyleGAN2Config.model_validate(cfg.prior)
        channels = channel_table(prior_cfg.channel_multiplier, prior_cfg.width_scale)
        resolution = prior_cfg.resolution
        fused = fused_resolutions(resolution, cfg.fuse_max_resolution)
        prior = FusedPrior(resolution, prior_cfg.style_dim, prior_cfg.n_mlp, channels, prior_cfg.lr_mlp, fused=fused)
        dre = self._build_dre() if cfg.condition == "dre" else None
        extractor = ImageFeatureExtractor(resolution, channels, fused, prior.n_latent, prior_cfg.style_dim,
                                          cfg.rrdb_channels, cfg.num_rrdbs, cfg.growth_channels, cfg.cbam_reduction,
                                          cfg.stem_width)
        condition_dim = dre.feature_dim if dre is not None else LEARNED_CONDITION_DIM
        nets: dict[str, nn.Module] = {
            "g": PaniniEncoder(extractor, channels, fused, condition_dim, learned_condition=dre is None)}
        if dre is not None:
            nets["dre"] = dre
        upstream_prior = self._upstream_models.get("prior")
        if upstream_prior is not None:
            prior.load_state_dict(upstream_prior.unwrapped("g_ema").state_dict())
        if not cfg.finetune_prior:
            prior.requires_grad_(False)
        nets["prior"] = prior
        if cfg.gan_weight > 0:
            d = Discriminator(resolution, channels)
            if upstream_prior is not None:
                d.load_state_dict(upstream_prior.unwrapped("d").state_dict())
            nets["d"] = d
        return nets

    def _build_dre(self) -> DRERepresentation:
        dre_cfg = DREConfig.model_validate(self.cfg.dre)
        dre = DRERepresentation(dre_cfg.width, dre_cfg.dim, dre_cfg.input_size)
        if "dre" in self._upstream_models:
            dre.encoder.load_state_dict(self._upstream_models["dre"].unwrapped("encoder").state_dict())
        if not self.cfg.finetune_dre:
            dre.requires_grad_(False)
        return dre

    def build_optimizers(self) -> dict[str, Optimizer]:
        """One Adam per network with trainable parameters (frozen ones have none and get none)."""
        opts: dict[str, Optimizer] = {}
        for net_name, net in self.nets.items():
            params = [p for p in net.parameters() if p.requires_grad]
            if params:
                opts[net_name] = torch.optim.Adam(params, lr=self.cfg.lr, betas=self.cfg.betas)
        return opts

    # -- the forward both training and restore run --------------------------------------------
    def degraded_input(self, batch: dict[str, Tensor]) -> Tensor:
        """The network's input in [0, 1] at the prior's resolution, on the method's device:
        `lq`, or `lr` bicubic-upsampled (input 'lr')."""
        resolution = self.resolution
        if self.cfg.input == "lr":
            lr = batch["lr"].to(self.device, torch.float32).contiguous()
            factor = resolution // lr.shape[-1]
            if lr.ndim != 4 or lr.shape[-1] * factor != resolution or lr.shape[-2] * factor != resolution:
                raise ValueError(f"panini (input 'lr') with a {resolution} px prior needs lr (N, 3, h, h) with h "
                                 f"dividing {resolution}, got {tuple(lr.shape)}")
            return classical.bicubic(lr, factor)
        # decoded batches arrive channels-last in memory (transposed HWC arrays): one NCHW layout from here on
        lq = batch["lq"].to(self.device, torch.float32).contiguous()
        if lq.ndim != 4 or tuple(lq.shape[1:]) != (3, resolution, resolution):
            raise ValueError(f"panini with a {resolution} px prior needs lq (N, 3, {resolution}, {resolution}) "
                             f"(the prior's resolution must equal the face size), got {tuple(lq.shape)}")
        return lq

    def generate(self, degraded: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(RGB (N, 3, R, R) in about [-1, 1], the DAFI masks) from the degraded input in [0, 1]."""
        condition = self.nets["dre"](degraded) if self.cfg.condition == "dre" else None
        w_plus, image_features, masks = self.nets["g"](degraded * 2.0 - 1.0, condition)
        return self.nets["prior"](w_plus, image_features, masks), masks

    # -- training --------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        cfg = self.cfg
        degraded = self.degraded_input(batch)
        hq = batch["hq"].to(self.device, torch.float32).contiguous()
        if tuple(hq.shape[1:]) != (3, self.resolution, self.resolution):
            raise ValueError(f"panini's prior makes {self.resolution} px faces: hq must be (N, 3, {self.resolution}, "
                             f"{self.resolution}) (set the prior's resolution to the face size), got {tuple(hq.shape)}")
        real = hq * 2.0 - 1.0
        fake, masks = self.generate(degraded)
        fake32 = fake.float()
        l1 = F.l1_loss(fake32, real)
        g_loss = cfg.l1_weight * l1
        logs = {"l1": l1.item()}
        if self.perceptual is not None:
            self.perceptual.to(hq.device)
            perceptual = self.perceptual((fake32 + 1.0) / 2.0, hq)
            g_loss = g_loss + cfg.perceptual_weight * perceptual
            logs["perceptual"] = perceptual.item()
        if "d" in self.nets:
            gan = self.adversarial(self.nets["d"](fake), True, for_discriminator=False)
            g_loss = g_loss + cfg.gan_weight * gan
            logs["gan"] = gan.item()
        generator_side = [name for name in ("g", "dre", "prior") if name in self.opts]
        for name in generator_side:
            self.opts[name].zero_grad(set_to_none=True)
        g_loss.backward()  # D's parameters get gradients too; the D step zeroes them before its own backward
        for name in generator_side:
            self.opts[name].step()
        if "d" in self.nets:
            logs["d"] = self._discriminator_step(real, fake.detach())
        prior_weight = torch.stack([mask[:, 0].mean() for mask in masks]).mean()
        return {"loss": g_loss.item(), **logs, "prior_weight": prior_weight.item()}

    def _discriminator_step(self, real: Tensor, fake: Tensor) -> float:
        d, opt = self.nets["d"], self.opts["d"]
        loss = self.adversarial(d(real), True) + self.adversarial(d(fake), False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    # -- inference -------------------------------------------------------------------------------
    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        """(N, 3, R, R) in [0, 1] on the method's device, from `lq` (or `lr`, input 'lr')."""
        with self.evaluating():
            fake, _ = self.generate(self.degraded_input(batch))
            return ((fake.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def prior_weights(self, batch: dict[str, Tensor]) -> Tensor:
        """(N, blocks): per image and DAFI block (4 px first), the mean weight on the GAN-prior features."""
        with self.evaluating():
            degraded = self.degraded_input(batch)
            condition = self.nets["dre"](degraded) if self.cfg.condition == "dre" else None
            _, _, masks = self.nets["g"](degraded * 2.0 - 1.0, condition)
            return torch.stack([mask[:, 0].mean(dim=1) for mask in masks], dim=1)
