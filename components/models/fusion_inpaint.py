"""Stage 2 of edge-guided face inpainting: a texture-structure fusion generator with attention.

Liu, Wei, Deng 2022, stage 2 (stage 1 is components/models/edge_gan.py). Its text and code were
not at hand, so every number comes from the works it builds on (EdgeConnect, RDN, CBAM), each
cited, with the departures and their measurements, in docs/methods.md, section "fusion_inpaint".

Task "inpainting". Trained on the clean `hq` with the holes of `mask` (1 = missing), guided by
the edges the frozen stage-1 generator PREDICTS (network "edge", loaded from the upstream
edge_gan model), never the ground-truth Canny edges. In: image (N, 3, H, W) in [0, 1], edges
(N, 1, H, W) in [0, 1], mask (N, 1, H, W); H and W divisible by 4. Out: (N, 3, H, W) in
[0, 1]. `restore` reads the photo from `lq`, predicts its edges and returns the photo's known
pixels exactly (`inputs.paste_known`).

Networks: "g" (`FusionGenerator`, components/networks/fusion_inpaint.py: texture and structure
encoders, gated fusion at three scales, dense residual blocks with CBAM, a decoder with U-Net
skips), "d" (the PatchGAN, components/networks/patchgan.py; its step and the knobs `d_lr_ratio`,
`adversarial_weight`: components/models/adversarial.py) and "edge" (the frozen edge generator).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.losses.adversarial import AdversarialLoss
from components.losses.perceptual import PerceptualLoss, StyleLoss, VGG19Features
from components.models.adversarial import (
    AdversarialConfig,
    discriminator_adam,
    discriminator_step,
    generator_adversarial,
)
from components.models.base import Method, Upstream
from components.models.files import load_upstream
from components.networks.fusion_inpaint import OUT_CHANNELS, FusionGenerator
from components.networks.inputs import paste_known
from components.networks.patchgan import PatchDiscriminator

EDGE_METHOD = "edge_gan"


class FusionInpaintConfig(AdversarialConfig):
    """lr, betas, d_lr_ratio, d_width, gan_loss, adversarial_weight: AdversarialConfig's (EdgeConnect's)."""

    width: int = Field(64, gt=0, description="generator channels at full resolution; 2x and 4x below")
    residual_blocks: int = Field(8, ge=1, description="dense residual blocks in the middle (EdgeConnect: 8)")
    dense_layers: int = Field(4, ge=1, description="densely connected convs per dense residual block")
    growth: int = Field(64, gt=0, description="channels each dense layer adds (RDN growth rate G)")
    attention_reduction: int = Field(16, ge=1, description="CBAM channel-attention MLP reduction ratio")
    l1_weight: float = Field(1.0, ge=0, description="EdgeConnect section 3.2, lambda_l1")
    perceptual_weight: float = Field(0.1, ge=0, description="EdgeConnect section 3.2, lambda_p")
    style_weight: float = Field(250.0, ge=0, description="EdgeConnect section 3.2, lambda_s")
    vgg_weights: str | None = Field(None, description="torchvision VGG19 weights file; None turns the "
                                                      "perceptual and style terms off")
    edge: dict[str, Any] | None = Field(None, description="the stage-1 edge_gan model's config; filled from "
                                                          "the upstream model, so an export rebuilds alone")

    @model_validator(mode="after")
    def _generator_has_a_loss(self) -> FusionInpaintConfig:
        vgg_terms = self.vgg_weights is not None and (self.perceptual_weight > 0 or self.style_weight > 0)
        if self.l1_weight == 0 and self.adversarial_weight == 0 and not vgg_terms:
            raise ValueError("l1_weight and adversarial_weight are both 0 and no perceptual or style term is on "
                             "(vgg_weights unset or their weights 0): the generator would get no gradient")
        return self

    @field_validator("edge")
    @classmethod
    def _edge_is_an_edge_gan_config(cls, edge: dict[str, Any] | None) -> dict[str, Any] | None:
        if edge is None:
            return None
        from components.models.edge_gan import EdgeGANConfig

        try:
            return EdgeGANConfig.model_validate(edge).model_dump(mode="json")
        except ValueError as err:
            raise ValueError(f"'edge' is not a valid edge_gan config: {err}") from err


class FusionInpaint(Method):
    """Stage-2 inpainting: FusionGenerator "g" guided by the frozen upstream edge generator "edge", PatchGAN "d"."""

    name: ClassVar[str] = "fusion_inpaint"
    task: ClassVar[str] = "inpainting"
    inputs: ClassVar[tuple[str, ...]] = ("hq", "mask", "edge")
    Config: ClassVar[type[FusionInpaintConfig]] = FusionInpaintConfig
    cfg: FusionInpaintConfig

    def __init__(self, cfg: FusionInpaintConfig, upstream: Upstream | None = None) -> None:
        super().__init__(cfg, upstream)
        self.adversarial = AdversarialLoss(cfg.gan_loss)
        # Not in self.nets: VGG19 is a fixed loss network, neither trained nor exported.
        self.perceptual_loss: PerceptualLoss | None = None
        self.style_loss: StyleLoss | None = None
        if cfg.vgg_weights is not None:
            features = VGG19Features(cfg.vgg_weights)
            self.perceptual_loss, self.style_loss = PerceptualLoss(features), StyleLoss(features)

    def build_networks(self) -> dict[str, nn.Module]:
        cfg = self.cfg
        return {
            "g": FusionGenerator(cfg.width, cfg.residual_blocks, cfg.dense_layers, cfg.growth, cfg.attention_reduction),
            "d": PatchDiscriminator(OUT_CHANNELS, cfg.d_width, spectral_norm=True),
            "edge": self._edge_generator(),
        }

    def _edge_generator(self) -> nn.Module:
        """The stage-1 generator, frozen: loaded from the upstream edge_gan model, or rebuilt from cfg.edge
        (an export's config; its weights then come from the export's state)."""
        from components.models.edge_gan import EdgeGANConfig, build_edge_generator

        if self.upstream:
            edge_model = load_upstream(self.upstream, EDGE_METHOD)
            self.cfg = self.cfg.model_copy(update={"edge": edge_model.cfg.model_dump(mode="json")})
            generator = edge_model.unwrapped("g")
        elif self.cfg.edge is not None:
            generator = build_edge_generator(EdgeGANConfig.model_validate(self.cfg.edge))
        else:
            raise ValueError(f"method '{self.name}' needs the upstream '{EDGE_METHOD}' model (stage 1's edge "
                             "generator): give an upstream edge_gan model directory, or a config with 'edge' set")
        generator.requires_grad_(False)
        return generator.eval()

    def build_optimizers(self) -> dict[str, Optimizer]:
        cfg = self.cfg
        return {"g": self.adam("g"), "d": discriminator_adam(self.nets["d"].parameters(), cfg.lr, cfg.d_lr_ratio,
                                                             cfg.betas)}

    def predicted_edges(self, image: Tensor, mask: Tensor, known_edges: Tensor | None) -> Tensor:
        """The frozen edge generator's (N, 1, H, W) map for `image` with holes `mask`, float32, no graph."""
        from components.models.edge_gan import predict_edges

        edge_net = self.nets["edge"]
        edge_net.eval()  # frozen: a loop's .train() must not switch its spectral norm to power iterations
        with torch.no_grad():
            return predict_edges(edge_net, image, mask, known_edges).float()

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        cfg = self.cfg
        hq = batch["hq"].float()
        mask = batch["mask"].to(hq.dtype)
        edges = self.predicted_edges(hq, mask, batch["edge"])
        out = self.nets["g"](hq, edges, mask)

        # Discriminator first, on real and (detached) fake in one forward.
        d_loss = discriminator_step(self.nets["d"], self.opts["d"], self.adversarial, hq, out.detach())

        opt_g = self.opts["g"]
        opt_g.zero_grad(set_to_none=True)
        out32 = out.float()
        adv = generator_adversarial(self.nets["d"], self.adversarial, out)
        hole_fraction = mask.mean().clamp_min(1.0 / mask.numel())  # no hole: 0 / (one pixel), not 0 / 0
        l1 = F.l1_loss(out32, hq) / hole_fraction
        g_loss = cfg.l1_weight * l1 + cfg.adversarial_weight * adv
        logs = {"l1": l1.item(), "adv_g": adv.item(), "d": d_loss.item()}
        if self.perceptual_loss is not None and self.style_loss is not None:
            self.perceptual_loss.to(hq.device)
            perceptual = self.perceptual_loss(out32, hq)
            style = self.style_loss(out32 * mask, hq * mask)
            g_loss = g_loss + cfg.perceptual_weight * perceptual + cfg.style_weight * style
            logs |= {"perceptual": perceptual.item(), "style": style.item()}
        g_loss.backward()
        opt_g.step()
        return {"loss": g_loss.item(), **logs}

    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        """(N, 3, H, W) in [0, 1]: `lq`'s known pixels exactly, the generator's output in the holes."""
        device = self.device
        lq = batch["lq"].to(device).float()
        mask = batch["mask"].to(device).to(lq.dtype)
        with self.evaluating():
            edges = self.predicted_edges(lq, mask, None)
            out = self.nets["g"](lq, edges, mask).float().clamp(0.0, 1.0)
        return paste_known(out, lq, mask)
