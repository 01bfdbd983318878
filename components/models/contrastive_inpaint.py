"""Unpaired masked-face inpainting with patch-wise contrastive learning and feature attention.

Wan, Chen, Yao, Zhang 2024 (Multimedia Systems). Its full text and code are not public, so
every layer size and loss weight is that of CUT (Park et al. 2020), which it builds on. The
sources, the feature attention module (ours), the departures and the known-pixel
self-supervision with its measurements: docs/methods.md, section "contrastive_inpaint".

Task "inpainting", trained unpaired. The generator sees the masked face only: `model_input`
of hq * (1 - mask) (holes mean-filled) plus the mask, (N, 4, H, W) -> (N, 3, H, W), H and W
divisible by 4; no loss reads `hq` beyond building that input. The discriminator's real faces
are `unpaired_hq`, a second, independently shuffled stream (`unpaired = ("hq",)`). `restore`
reads `lq` and `mask` and returns `paste_known(output, lq, mask)`: known pixels exact, holes
from the network.

Networks: "g" (CUT's ResNet generator with the feature attention after its residual blocks,
components/networks/contrastive_inpaint.py), "f" (the PatchNCE projection heads,
components/losses/patchnce.py) and "d" (the spectral-norm PatchGAN, components/networks/patchgan.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.losses.adversarial import AdversarialLoss
from components.losses.patchnce import PatchNCELoss, PatchProjection, sample_locations
from components.models.base import Method, MethodConfig
from components.networks.contrastive_inpaint import LAYERS_BEFORE_BLOCKS, OUT_CHANNELS, AttentionResnetGenerator
from components.networks.inputs import model_input, paste_known
from components.networks.patchgan import PatchDiscriminator


def known_pixels_to_hide(mask: Tensor) -> Tensor:
    """(N, 1, H, W): known pixels of each image to hide from the generator, to be predicted.

    Another image's holes, flipped upside down (so a batch of one, or two images with the same
    occluder, still hides something), minus the image's own holes: hole shapes of the data
    itself, drawn over pixels whose values the masked input does hold.
    """
    return mask.roll(1, dims=0).flip(-2) * (1.0 - mask)


def masked_l1(output: Tensor, target: Tensor, where: Tensor) -> Tensor:
    """Mean absolute error over the pixels where `where` is 1 (0 when there are none)."""
    weights = where.expand_as(output)
    return ((output - target).abs() * weights).sum() / weights.sum().clamp_min(1.0)


class ContrastiveInpaintConfig(MethodConfig):
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of G, D and F (CUT --beta1, --beta2)")
    width: int = Field(64, gt=0, description="generator channels at full resolution (CUT --ngf)")
    n_blocks: int = Field(9, ge=1, description="residual blocks at 1/4 resolution (CUT resnet_9blocks)")
    disc_width: int = Field(64, gt=0, description="PatchGAN width (CUT --ndf)")
    attention_reduction: int = Field(16, ge=1, description="squeeze-and-excitation reduction (Hu et al. 2018)")
    nce_layers: tuple[int, ...] = Field((0, 4, 8, 12, 16), description="generator layers PatchNCE compares "
                                        "(CUT --nce_layers; indices into CUT's ResnetGenerator Sequential)")
    nce_temperature: float = Field(0.07, gt=0, description="PatchNCE temperature (CUT --nce_T)")
    num_patches: int = Field(256, ge=2, description="patch locations sampled per layer (CUT --num_patches)")
    projection_dim: int = Field(256, gt=0, description="MLP projection head width (CUT --netF_nc)")
    lambda_nce: float = Field(1.0, ge=0, description="PatchNCE weight (CUT --lambda_NCE)")
    lambda_gan: float = Field(1.0, ge=0, description="adversarial weight (CUT --lambda_GAN)")
    nce_idt: bool = Field(True, description="also PatchNCE on G(real face) vs the face (CUT mode --nce_idt)")
    gan_kind: Literal["nsgan", "lsgan", "hinge"] = Field("lsgan", description="GAN loss (CUT --gan_mode lsgan)")
    lambda_known: float = Field(100.0, ge=0, description="weight of the known-pixel self-supervision (ours, see the "
                                "docstring; 0 = the paper's losses only)")

    @model_validator(mode="after")
    def _nce_layers_lie_in_the_encoder(self) -> ContrastiveInpaintConfig:
        last = LAYERS_BEFORE_BLOCKS + self.n_blocks - 1
        layers = self.nce_layers
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] > last:
            raise ValueError(f"nce_layers must be distinct increasing encoder layer indices in [0, {last}] "
                             f"(n_blocks={self.n_blocks}), got {list(layers)}")
        if self.lambda_nce == 0 and self.lambda_gan == 0:
            raise ValueError("lambda_nce and lambda_gan are both 0: the generator would have no loss")
        return self


class ContrastiveInpaint(Method):
    """Unpaired inpainting: generator "g", projection head "f", spectral-norm PatchGAN "d"."""

    name: ClassVar[str] = "contrastive_inpaint"
    task: ClassVar[str] = "inpainting"
    inputs: ClassVar[tuple[str, ...]] = ("hq", "mask")
    unpaired: ClassVar[tuple[str, ...]] = ("hq",)
    Config: ClassVar[type[ContrastiveInpaintConfig]] = ContrastiveInpaintConfig
    cfg: ContrastiveInpaintConfig

    def __init__(self, cfg: MethodConfig, upstream: dict | None = None) -> None:
        super().__init__(cfg, upstream)
        self.adversarial = AdversarialLoss(self.cfg.gan_kind)
        self.patch_nce = PatchNCELoss(self.cfg.nce_temperature)

    def build_networks(self) -> dict[str, nn.Module]:
        cfg = self.cfg
        generator = AttentionResnetGenerator(cfg.width, cfg.n_blocks, cfg.attention_reduction)
        channels = [generator.encoder_channels[i] for i in cfg.nce_layers]
        return {"g": generator, "f": PatchProjection(channels, cfg.projection_dim),
                "d": PatchDiscriminator(OUT_CHANNELS, cfg.disc_width, spectral_norm=True)}

    def build_optimizers(self) -> dict[str, Optimizer]:
        return {name: self.adam(name) for name in ("g", "f", "d")}

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        if "unpaired_hq" not in batch:
            raise KeyError("contrastive_inpaint needs batch['unpaired_hq'] (real faces from the unpaired stream) for "
                           "its discriminator; the training loop adds it for methods with `unpaired = ('hq',)`")
        mask = batch["mask"].float()
        masked = batch["hq"].float() * (1.0 - mask)  # the only use of hq: its holes are gone from here on
        real = batch["unpaired_hq"].float()
        source = model_input({"lq": masked, "mask": mask})
        sources = [source]
        if self.cfg.nce_idt:
            sources.append(model_input({"lq": real, "mask": torch.zeros_like(mask)}))
        hidden = known_pixels_to_hide(mask)
        remasked = model_input({"lq": masked, "mask": torch.maximum(mask, hidden)})
        *outputs, remasked_output = self.nets["g"](torch.cat([*sources, remasked])).float().split(len(mask))
        output = outputs[0]
        completed = output * mask + masked * (1.0 - mask)

        d_losses = self._discriminator_step(completed.detach(), real)
        known = masked_l1(remasked_output, masked, hidden)
        g_losses = self._generator_step(completed, sources, outputs, known)
        return {**g_losses, **d_losses}

    def _discriminator_step(self, fake: Tensor, real: Tensor) -> dict[str, float]:
        opt = self.opts["d"]
        opt.zero_grad(set_to_none=True)
        # one forward for both halves: one power iteration of spectral norm per step, one DDP forward
        logits = self.nets["d"](torch.cat([fake, real]))[0].float()
        fake_logits, real_logits = logits.split(len(fake))
        d_fake = self.adversarial.loss(fake_logits, target_is_real=False)
        d_real = self.adversarial.loss(real_logits, target_is_real=True)
        loss = 0.5 * (d_fake + d_real)  # CUT compute_D_loss
        loss.backward()
        opt.step()
        return {"loss_d": loss.item(), "d_real": d_real.item(), "d_fake": d_fake.item()}

    def _generator_step(self, completed: Tensor, sources: list[Tensor], outputs: Sequence[Tensor],
                        known: Tensor) -> dict[str, float]:
        cfg = self.cfg
        opt_g, opt_f = self.opts["g"], self.opts["f"]
        # zeroed here, after the discriminator step, so nothing leaked into them earlier survives
        opt_g.zero_grad(set_to_none=True)
        opt_f.zero_grad(set_to_none=True)
        g_gan = self.adversarial.loss(self.nets["d"](completed)[0], target_is_real=True, for_discriminator=False)
        nce_terms = [self._patch_nce(source, output) for source, output in zip(sources, outputs)]
        nce = sum(nce_terms) / len(nce_terms)  # CUT averages NCE(X) and NCE_idt(Y)
        loss = cfg.lambda_gan * g_gan + cfg.lambda_nce * nce + cfg.lambda_known * known
        loss.backward()
        opt_g.step()
        opt_f.step()
        losses = {"loss_g": loss.item(), "g_gan": g_gan.item(), "nce": nce_terms[0].item(), "known_l1": known.item()}
        if cfg.nce_idt:
            losses["nce_idt"] = nce_terms[1].item()
        return losses

    def _patch_nce(self, source: Tensor, output: Tensor) -> Tensor:
        """PatchNCE between G's encoding of `output` (queries) and of its input `source` (keys),
        averaged over `nce_layers` (CUT calculate_NCE_loss); the mask channel is the source's."""
        generator, layers = self.nets["g"], self.cfg.nce_layers
        query_image = torch.cat([output, source[:, OUT_CHANNELS:]], dim=1)
        with torch.no_grad():  # keys are targets: CUT detaches them
            key_features = generator(source, layers)
        query_features = generator(query_image, layers)
        locations = sample_locations(key_features, self.cfg.num_patches)
        keys = self.nets["f"](key_features, locations)
        queries = self.nets["f"](query_features, locations)
        return sum(self.patch_nce.loss(q, k) for q, k in zip(queries, keys)) / len(layers)

    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        """(N, 3, H, W) in [0, 1] on the method's device: `lq`'s known pixels exactly, holes from G."""
        device = self.device
        lq, mask = batch["lq"].to(device).float(), batch["mask"].to(device).float()
        with self.evaluating():
            output = self.nets["g"](model_input({"lq": lq, "mask": mask})).float().clamp(0.0, 1.0)
        return paste_known(output, lq, mask)
