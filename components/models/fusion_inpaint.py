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

Networks: "g" (`FusionGenerator`: texture and structure encoders, gated fusion at three scales,
dense residual blocks with CBAM, a decoder with U-Net skips), "d" (the spectral-norm PatchGAN,
components/models/patchgan.py) and "edge" (the frozen edge generator).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.losses.adversarial import AdversarialLoss
from components.losses.perceptual import PerceptualLoss, StyleLoss, VGG19Features
from components.models.base import MethodBase, MethodConfig, Upstream
from components.models.files import load_upstream
from components.models.inputs import fill_holes, paste_known
from components.models.patchgan import PatchDiscriminator

EDGE_METHOD = "edge_gan"
TEXTURE_CHANNELS = 4  # hole-filled RGB + mask
STRUCTURE_CHANNELS = 2  # edge map + mask
OUT_CHANNELS = 3
INIT_STD = 0.02  # EdgeConnect BaseNetwork.init_weights, normal, gain 0.02
MIDDLE_DILATION = 2  # EdgeConnect ResnetBlock(256, 2)
SPATIAL_ATTENTION_KERNEL = 7  # CBAM section 3, spatial attention
DOWNSAMPLING = 4  # two stride-2 convs
# The filled input's logit is taken of values clamped to [eps, 1 - eps], so 0 and 1 stay finite;
# 1e-3 is within a quarter of an 8-bit level of both ends.
LOGIT_EPS = 1e-3


class FusionInpaintConfig(MethodConfig):
    lr: float = Field(1e-4, gt=0, description="generator Adam lr (EdgeConnect config.yml.example LR)")
    betas: tuple[float, float] = Field((0.0, 0.9), description="Adam betas (EdgeConnect BETA1, BETA2)")
    d_lr_ratio: float = Field(0.1, gt=0, description="discriminator lr / generator lr (EdgeConnect D2G_LR)")
    width: int = Field(64, gt=0, description="generator channels at full resolution; 2x and 4x below")
    residual_blocks: int = Field(8, ge=1, description="dense residual blocks in the middle (EdgeConnect: 8)")
    dense_layers: int = Field(4, ge=1, description="densely connected convs per dense residual block")
    growth: int = Field(64, gt=0, description="channels each dense layer adds (RDN growth rate G)")
    attention_reduction: int = Field(16, ge=1, description="CBAM channel-attention MLP reduction ratio")
    d_width: int = Field(64, gt=0, description="PatchGAN discriminator base width (EdgeConnect: 64)")
    gan_loss: Literal["nsgan", "lsgan", "hinge"] = Field("nsgan", description="EdgeConnect GAN_LOSS")
    l1_weight: float = Field(1.0, ge=0, description="EdgeConnect section 3.2, lambda_l1")
    adversarial_weight: float = Field(0.1, ge=0, description="EdgeConnect section 3.2, lambda_adv")
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


def conv_init_(module: nn.Module) -> None:
    """EdgeConnect's init: conv weights N(0, 0.02), biases zero."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, INIT_STD)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def norm_relu(channels: int) -> list[nn.Module]:
    return [nn.InstanceNorm2d(channels, track_running_stats=False), nn.ReLU()]


class Encoder(nn.Module):
    """EdgeConnect's encoder, keeping each scale: 7x7 conv -> w, 4x4/2 -> 2w, 4x4/2 -> 4w."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, width, 7), *norm_relu(width)),
            nn.Sequential(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), *norm_relu(2 * width)),
            nn.Sequential(nn.Conv2d(2 * width, 4 * width, 4, stride=2, padding=1), *norm_relu(4 * width)),
        ])

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class TextureStructureFusion(nn.Module):
    """Each branch gated by the other (sigmoid of a 3x3 conv on both), then a 1x1 conv merging the pair.

    (N, C, H, W) texture and structure -> (N, C, H, W) fused.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.texture_gate = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.structure_gate = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.merge = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.ReLU())

    def forward(self, texture: Tensor, structure: Tensor) -> Tensor:
        both = torch.cat([texture, structure], dim=1)
        texture_in = texture + torch.sigmoid(self.texture_gate(both)) * structure
        structure_in = structure + torch.sigmoid(self.structure_gate(both)) * texture
        return self.merge(torch.cat([texture_in, structure_in], dim=1))


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool) + MLP(maxpool)) scales each channel."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(7x7 conv of the channel-wise mean and max) scales each pixel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, SPATIAL_ATTENTION_KERNEL, padding=SPATIAL_ATTENTION_KERNEL // 2)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class DenseResidualBlock(nn.Module):
    """RDN's residual dense block with CBAM before the local residual.

    Layer i sees the block input and every earlier layer's output (channels + i * growth), adds
    `growth` channels; a 1x1 conv fuses them back to `channels`; channel then spatial attention;
    plus the input. (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, growth: int, layers: int, reduction: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels + i * growth, growth, 3, padding=MIDDLE_DILATION,
                                    dilation=MIDDLE_DILATION), nn.ReLU())
            for i in range(layers))
        self.fuse = nn.Conv2d(channels + layers * growth, channels, 1)
        self.attention = nn.Sequential(ChannelAttention(channels, reduction), SpatialAttention())

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return x + self.attention(self.fuse(torch.cat(features, dim=1)))


class DenseResidualMiddle(nn.Module):
    """RDN's body: dense residual blocks, global feature fusion of every block's output, global residual."""

    def __init__(self, channels: int, blocks: int, growth: int, layers: int, reduction: int):
        super().__init__()
        self.blocks = nn.ModuleList(DenseResidualBlock(channels, growth, layers, reduction) for _ in range(blocks))
        self.global_fusion = nn.Sequential(nn.Conv2d(blocks * channels, channels, 1),
                                           nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        outputs, h = [], x
        for block in self.blocks:
            h = block(h)
            outputs.append(h)
        return x + self.global_fusion(torch.cat(outputs, dim=1))


class Up(nn.Module):
    """EdgeConnect's 4x4/2 transposed conv, then the fused encoder skip: concat, 3x3 conv, IN, ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), *norm_relu(c_out))
        self.merge = nn.Sequential(nn.Conv2d(2 * c_out, c_out, 3, padding=1), *norm_relu(c_out))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.merge(torch.cat([self.up(x), skip], dim=1))


class FusionGenerator(nn.Module):
    """Texture-structure fusion inpainting generator with dense residual blocks and CBAM attention.

    Args:
        width: channels at full resolution (w, 2w, 4w over the three scales); EdgeConnect 64.
        residual_blocks: dense residual blocks at 4w; EdgeConnect 8.
        dense_layers: convs per dense block; growth: channels each adds (RDN's G).
        attention_reduction: CBAM channel-attention reduction ratio; 16.

    forward(image (N, 3, H, W), edges (N, 1, H, W), mask (N, 1, H, W)) -> (N, 3, H, W) in [0, 1],
    H and W divisible by 4: the image's known pixels exactly, the prediction in the holes. Pixels
    under the mask never reach the network, whatever the caller passes there.
    """

    def __init__(self, width: int = 64, residual_blocks: int = 8, dense_layers: int = 4, growth: int = 64,
                 attention_reduction: int = 16):
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.texture = Encoder(TEXTURE_CHANNELS, width)
        self.structure = Encoder(STRUCTURE_CHANNELS, width)
        self.fusions = nn.ModuleList(TextureStructureFusion(c) for c in widths)
        self.middle = DenseResidualMiddle(widths[2], residual_blocks, growth, dense_layers, attention_reduction)
        self.ups = nn.ModuleList([Up(widths[2], widths[1]), Up(widths[1], widths[0])])
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(width, OUT_CHANNELS, 7))
        conv_init_(self)
        nn.init.zeros_(self.head[1].weight)  # the untrained generator returns its hole-filled input

    def forward(self, image: Tensor, edges: Tensor, mask: Tensor) -> Tensor:
        n, _, h, w = image.shape
        if image.shape[1] != 3 or edges.shape != (n, 1, h, w) or mask.shape != (n, 1, h, w) \
                or h % DOWNSAMPLING or w % DOWNSAMPLING:
            raise ValueError(f"FusionGenerator needs image (N, 3, H, W), edges and mask (N, 1, H, W), H and W "
                             f"divisible by {DOWNSAMPLING}; got {tuple(image.shape)}, {tuple(edges.shape)}, "
                             f"{tuple(mask.shape)}")
        mask = mask.to(image.dtype)
        filled = fill_holes(image, mask)
        textures = self.texture(torch.cat([filled, mask], dim=1))
        structures = self.structure(torch.cat([edges.to(image.dtype), mask], dim=1))
        fused = [fusion(t, s) for fusion, t, s in zip(self.fusions, textures, structures)]
        x = self.middle(fused[2])
        x = self.ups[0](x, fused[1])
        x = self.ups[1](x, fused[0])
        # EdgeConnect's (tanh(y) + 1) / 2 is sigmoid(2 y); its argument is offset by the filled input's logit.
        holes = torch.sigmoid(2.0 * self.head(x) + torch.logit(filled, eps=LOGIT_EPS))
        return filled + mask * (holes - filled)


class FusionInpaint(MethodBase):
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
        d_lr = self.cfg.lr * self.cfg.d_lr_ratio
        return {"g": self.adam("g"),
                "d": torch.optim.Adam(self.nets["d"].parameters(), lr=d_lr, betas=self.cfg.betas)}

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

        # Discriminator first, on real and (detached) fake in one forward; its grads zeroed right
        # before its own backward, which also drops what the last generator step leaked into it.
        opt_d = self.opts["d"]
        opt_d.zero_grad(set_to_none=True)
        logits, _ = self.nets["d"](torch.cat([hq, out.detach()], dim=0))
        d_real, d_fake = logits.float().chunk(2, dim=0)
        d_loss = (self.adversarial(d_real, True) + self.adversarial(d_fake, False)) / 2
        d_loss.backward()
        opt_d.step()

        opt_g = self.opts["g"]
        opt_g.zero_grad(set_to_none=True)
        out32 = out.float()
        g_logits, _ = self.nets["d"](out)
        adv = self.adversarial(g_logits, True, for_discriminator=False)
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
