"""Unpaired masked-face inpainting with patch-wise contrastive learning and feature attention.

Paper: Wan, Chen, Yao, Zhang 2024, "Unsupervised masked face inpainting based on contrastive
learning and attention mechanism", Multimedia Systems (doi 10.1007/s00530-024-01411-y). Its
abstract names the three parts built here: (1) a contrastive framework that compares patches
of the inpainted face with patches of the masked input face, so no paired ground truth is
needed; (2) a feature attention module that focuses on significant features and models
long-range dependencies; (3) a PatchGAN discriminator with spectral normalisation judging
realism against unpaired real faces. The full text is behind a paywall and no official code
is public, so every layer size and loss weight below is that of the framework the paper
builds on, CUT (Park, Efros, Zhang, Zhu 2020, "Contrastive Learning for Unpaired
Image-to-Image Translation"; taesungp/contrastive-unpaired-translation), cited file by file.

Task: inpainting, trained unpaired. The generator sees the masked face only:
`model_input` of hq * (1 - mask), i.e. the known pixels with each hole filled by the mean
colour of the image's known pixels, plus the mask: (N, 4, H, W) -> (N, 3, H, W), H and W
divisible by 4. The clean `hq` builds that masked input and nothing else: no loss reads it
(a test replaces hq inside the holes by noise and sees identical losses and gradients). The
discriminator's real faces are `unpaired_hq`, a second, independently shuffled stream of the
dataset (`unpaired = ("hq",)`; the training loop adds the column). `restore` reads `lq` and
`mask` and returns `paste_known(output, lq, mask)`: known pixels exact, holes from the network.

Losses, per step (CUT models/cut_model.py, CUT mode; defaults here = its option defaults):
- D: least-squares GAN (`--gan_mode lsgan`, train_options.py), (real + fake) / 2, real =
  `unpaired_hq`, fake = the completed image (network output inside the holes, known pixels
  outside; the usual inpainting choice, so the discriminator judges the fill).
- G: lambda_GAN (1) x LSGAN on the completed image + lambda_NCE (1) x PatchNCE between the
  raw output and the masked input, encoded by the generator's own encoder at `nce_layers`
  (0, 4, 8, 12, 16), 256 patches per layer, temperature 0.07, 2-layer 256-unit MLP heads
  (components/losses/patchnce.py gives the file-level sources). With `nce_idt` (on in CUT
  mode) the PatchNCE is also applied to G(real face, empty mask) against that face and the two
  NCE terms are averaged, CUT's identity regulariser on the target domain: it uses only the
  unpaired real faces. Because the raw output's known region is contrasted with the input's,
  PatchNCE is also the (unpaired) reconstruction of the known pixels; plus the known-pixel
  self-supervision below (ours).
- Optimisers: Adam, lr 2e-4, betas (0.5, 0.999) for G, D and the projection head F
  (train_options.py `--lr`, `--beta1`, `--beta2`). CUT's linear decay over the last 200
  epochs is a schedule, left to the training loop.

Generator (CUT models/networks.py `ResnetGenerator`, `--netG resnet_9blocks`, `--ngf 64`,
`--normG instance`, no dropout, anti-aliased resampling): reflection-pad 3, 7x7 conv to
`width`, two downsampling steps (3x3 conv doubling the width, then a [1, 2, 1] blur-pool with
stride 2, Zhang 2019), `n_blocks` = 9 residual blocks at 4 x `width` (reflection pad, 3x3 conv,
instance norm, ReLU, twice), two upsampling steps (x2 upsampling, 3x3 conv halving the width),
reflection-pad 3, 7x7 conv to RGB. Layer indices match CUT's Sequential, so `nce_layers` means
what CUT's `--nce_layers` means: 0 = the padded input, 4 and 8 = the two downsampling convs, 12
and 16 = the outputs of residual blocks 1 and 5. Instance norm everywhere but the last conv,
ReLU activations; weights Xavier-normal with gain 0.02, biases zero (`--init_type xavier`,
`--init_gain 0.02`). The feature attention module sits after the residual blocks, at 1/4
resolution (the paper's Fig. 2 is not public; after the bottleneck, before decoding, is where
self-attention modules usually go in inpainting generators).

Feature attention (ours: the paper's module is described only in its abstract): channel
attention, squeeze-and-excitation with reduction 16 (Hu et al. 2018, "Squeeze-and-Excitation
Networks"), for "focus on significant features", then non-local self-attention over all
positions (Zhang, Goodfellow, Metaxas, Odena 2019, "Self-Attention GANs": 1x1 query/key convs
to C/8, value to C, softmax over positions, residual scale gamma initialised at 0), for the
long-range dependencies.

Discriminator: components/models/patchgan.py, EdgeConnect's 70x70 spectral-norm PatchGAN,
width 64 (CUT `--ndf 64`; its `--netD basic` is the same 70x70 receptive field, with instance
norm where the paper puts spectral norm).

Departures:
- The mask is a fourth input channel and the holes are mean-filled (`inputs.model_input`,
  shared by every method of this project); the paper feeds the masked photo alone.
- Residual output: the last 7x7 conv predicts a correction to the hole-filled RGB input and
  starts at zero (as in components/models/baseline.py), instead of CUT's tanh image in [-1, 1].
  The untrained generator then returns the masked input exactly, so the contrastive positives
  agree from the first step and only the holes have to be learned; images stay in [0, 1].
- CUT's anti-aliased upsampling (a fixed [1, 3, 3, 1] transposed filter on a replicate-padded
  map) is written as bilinear x2 upsampling, which it equals exactly.
- CUT trains at batch size 1; the batch size is the training loop's. Patch locations are
  shared by the images of a batch, as in CUT.

Known-pixel self-supervision (ours, `lambda_known`, default 100): each step the generator
also gets the masked face with MORE of it hidden - another image's holes, flipped upside down,
drawn over known pixels (`known_pixels_to_hide`) - and is scored by L1 on exactly those hidden
pixels, whose values the masked input holds. It is the masked-prediction idea of Noise2Self
(Batson, Royer 2019) and MAE (He et al. 2022): hide part of what you know and learn to predict
it, so it needs no ground truth behind the real holes and keeps the method unpaired. Its weight
is pix2pix's L1 weight against a GAN weight of 1 (Isola et al. 2017, lambda = 100).
Why it is here: the paper's full text is not public and its abstract names no pixel loss.
Measured (tests/unit/test_models_contrastive_inpaint.py setting: 32 px procedural faces,
width 8, 2 blocks, batch 4, 16 training faces, 8 held-out faces, ~39% of pixels missing; PSNR
inside the holes, mean fill 17.4 dB): with the paper's losses alone (lambda_known = 0) the
fill is 13.2 / 15.9 / 13.7 dB after 100 / 200 / 300 steps (the GAN paints blotches; PatchNCE
alone stays at 17.3 dB); with lambda_known 10, 17.3-17.8 dB; with 100, 18.4-18.7 dB from step
50 to 200. `lambda_known: 0` gives the paper's objective as far as it is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.losses.adversarial import AdversarialLoss
from components.losses.patchnce import PatchNCELoss, PatchProjection, sample_locations
from components.models.base import MethodBase, MethodConfig
from components.models.inputs import model_input, paste_known
from components.models.patchgan import PatchDiscriminator

IN_CHANNELS = 4  # hole-filled RGB + mask
OUT_CHANNELS = 3
DOWNSAMPLINGS = 2  # fixed in CUT's ResnetGenerator
LAYERS_BEFORE_BLOCKS = 12  # CUT's Sequential: pad, conv, norm, relu, then 2 x (conv, norm, relu, blur-pool)
INIT_GAIN = 0.02  # CUT base_options.py --init_gain (xavier)


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


def init_xavier(module: nn.Module) -> None:
    """CUT's `init_weights(init_type='xavier', init_gain=0.02)` on every conv and linear layer."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(layer.weight, gain=INIT_GAIN)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def conv_norm_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.InstanceNorm2d(c_out), nn.ReLU()]


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect-pad 1, depthwise [1, 2, 1] x [1, 2, 1] / 16 blur, stride 2.

    CUT networks.py `Downsample` (filt_size 3), after Zhang 2019, "Making Convolutional
    Networks Shift-Invariant Again". The filter is a constant, not a parameter or saved state.
    """

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps) / 16.0
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.kernel.to(x.dtype), stride=2,
                        groups=x.shape[1])


class Upsample2x(nn.Module):
    """x2 bilinear upsampling: CUT's anti-aliased `Upsample` (filt_size 4) computes exactly this."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class ResnetBlock(nn.Module):
    """x + [reflect-pad 1, 3x3 conv, instance norm, ReLU, reflect-pad 1, 3x3 conv, instance norm](x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class FeatureAttention(nn.Module):
    """Channel attention (squeeze-and-excitation), then non-local self-attention over all positions.

    Args:
        channels: C of the feature map.
        reduction: SE bottleneck is C / reduction (Hu et al. 2018 use 16).
        key_ratio: query / key width is C / key_ratio (SAGAN uses 8).

    Shapes: (N, C, H, W) -> (N, C, H, W). Attention is an (HW x HW) softmax per image, computed
    by `scaled_dot_product_attention` with scale 1 (SAGAN does not scale its logits), which
    runs as a memory-efficient kernel on GPU.
    """

    def __init__(self, channels: int, reduction: int = 16, key_ratio: int = 8):
        super().__init__()
        hidden, key_width = max(1, channels // reduction), max(1, channels // key_ratio)
        self.excite = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(),
                                    nn.Conv2d(hidden, channels, 1), nn.Sigmoid())
        self.query = nn.Conv2d(channels, key_width, 1)
        self.key = nn.Conv2d(channels, key_width, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        # SAGAN: the block starts as the identity and learns how much non-local evidence to mix in.
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.excite(x)
        n, c, h, w = x.shape

        def tokens(conv: nn.Conv2d) -> Tensor:  # (N, 1, HW, C') for scaled_dot_product_attention
            return conv(x).flatten(2).transpose(1, 2).unsqueeze(1)

        attended = F.scaled_dot_product_attention(tokens(self.query), tokens(self.key), tokens(self.value), scale=1.0)
        return x + self.gamma * attended.squeeze(1).transpose(1, 2).reshape(n, c, h, w)


class AttentionResnetGenerator(nn.Module):
    """CUT's ResNet generator with a feature attention module after its residual blocks.

    Args:
        width: channels at full resolution (CUT --ngf); the blocks run at 4 x width.
        n_blocks: residual blocks (CUT resnet_9blocks: 9).
        attention_reduction: SE reduction of the feature attention module.

    forward(x) with x (N, 4, H, W) = hole-filled RGB + mask, H and W divisible by 4 ->
    (N, 3, H, W) = x[:, :3] + correction (not clamped). forward(x, taps) -> the list of the
    features after each layer index in `taps` (CUT's encode_only), stopping at the last one.
    """

    def __init__(self, width: int = 64, n_blocks: int = 9, attention_reduction: int = 16):
        super().__init__()
        inner = width * 2**DOWNSAMPLINGS
        encoder: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(IN_CHANNELS, width, 7), nn.InstanceNorm2d(width),
                                    nn.ReLU()]
        for level in range(DOWNSAMPLINGS):
            c_in = width * 2**level
            encoder += [*conv_norm_relu(c_in, 2 * c_in), BlurPool(2 * c_in)]
        encoder += [ResnetBlock(inner) for _ in range(n_blocks)]
        self.encoder = nn.Sequential(*encoder)
        self.attention = FeatureAttention(inner, attention_reduction)
        decoder: list[nn.Module] = []
        for level in reversed(range(DOWNSAMPLINGS)):
            c_out = width * 2**level
            decoder += [Upsample2x(), *conv_norm_relu(2 * c_out, c_out)]
        decoder += [nn.ReflectionPad2d(3), nn.Conv2d(width, OUT_CHANNELS, 7)]
        self.decoder = nn.Sequential(*decoder)
        self.encoder_channels = self._channels_after_each_encoder_layer()
        init_xavier(self)
        head = self.decoder[-1]
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)

    def _channels_after_each_encoder_layer(self) -> list[int]:
        channels, current = [], IN_CHANNELS
        for layer in self.encoder:
            if isinstance(layer, nn.Conv2d):
                current = layer.out_channels
            channels.append(current)
        return channels

    def forward(self, x: Tensor, taps: Sequence[int] = ()) -> Tensor | list[Tensor]:
        factor = 2**DOWNSAMPLINGS
        if x.ndim != 4 or x.shape[1] != IN_CHANNELS or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"AttentionResnetGenerator needs (N, {IN_CHANNELS}, H, W) with H and W divisible by "
                             f"{factor}, got {tuple(x.shape)}")
        if taps:
            return self._encode(x, taps)
        features = self.attention(self.encoder(x))
        return x[:, :OUT_CHANNELS] + self.decoder(features)

    def _encode(self, x: Tensor, taps: Sequence[int]) -> list[Tensor]:
        if max(taps) >= len(self.encoder):
            raise ValueError(f"encoder layer {max(taps)} does not exist: the encoder has {len(self.encoder)} layers")
        features = []
        for index, layer in enumerate(self.encoder):
            x = layer(x)
            if index in taps:
                features.append(x)
            if index == max(taps):
                break
        return features


class ContrastiveInpaint(MethodBase):
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
