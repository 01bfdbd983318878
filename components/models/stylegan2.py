"""StyleGAN2: the GAN prior Panini-Net builds on, trainable here and able to import FFHQ checkpoints.

Karras et al. 2020 (CVPR), configuration F, in the layouts of its PyTorch ports
rosinality/stylegan2-pytorch and XPixelGroup/BasicSR. Every number's source (mapping network,
channel table, R1, path length, Adam, EMA), the import key maps, the departures and the
parameter counts: docs/methods.md, section "stylegan2".

Task "prior". Trained on `hq` (N, 3, R, R) in [0, 1] (mapped to [-1, 1]), R = `resolution`
(at most 1024). `generate(n, seed)` -> (n, 3, R, R) in [0, 1]; `restore` raises (a prior
restores nothing). Networks (components/networks/stylegan2.py): "g" (trained), "d" (trained)
and "g_ema" (the moving average of g, every parameter requires_grad=False, so the training loop
never wraps it in DDP); g_ema is the prior Panini-Net uses. `pretrained` + `pretrained_layout`
("rosinality" or "basicsr") import a published generator state dict
(components/networks/stylegan2_convert.py); export writes `pretrained` as None. Here: the
config, R1, path length, the lazy-regularisation Adam, the EMA and the G/D alternation.
"""

from __future__ import annotations

import math
from copy import deepcopy
from typing import ClassVar

import torch
import torch.distributed as dist
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.losses.adversarial import AdversarialLoss
from components.models.base import Method, MethodConfig, NotARestorer, Upstream
from components.networks.moving_average import accumulate
from components.networks.stylegan2 import Discriminator, Generator, channel_table
from components.networks.stylegan2_convert import Layout, load_pretrained

MAX_RESOLUTION = 1024
SAMPLE_SEED = 0  # `samples`: the same faces after every training, so logged grids compare
SAMPLE_COUNT = 16


class StyleGAN2Config(MethodConfig):
    lr: float = Field(0.002, gt=0, description="Adam lr before the lazy-regularisation correction (official 0.002)")
    betas: tuple[float, float] = Field((0.0, 0.99), description="Adam betas before the lazy correction (official)")
    resolution: int = Field(1024, description="output size R, a power of 2 in [8, 1024]; FFHQ config F is 1024")
    style_dim: int = Field(512, gt=0, description="z and w size (official 512)")
    n_mlp: int = Field(8, ge=1, description="mapping network depth (official 8)")
    lr_mlp: float = Field(0.01, gt=0, description="learning-rate multiplier of the mapping network (official 0.01)")
    channel_multiplier: int = Field(2, ge=1, description="widens 64+ px layers; 2 = config F, 1 = configs A-E")
    width_scale: float = Field(1.0, gt=0, le=1, description="multiplies every channel count (BasicSR's `narrow`)")
    r1_gamma: float = Field(10.0, ge=0, description="R1 weight gamma (official 10 for FFHQ); 0 disables R1")
    d_reg_every: int = Field(16, ge=1, description="lazy R1 interval in D steps (official 16)")
    pl_weight: float = Field(2.0, ge=0, description="path-length weight (official 2); 0 disables it")
    g_reg_every: int = Field(4, ge=1, description="lazy path-length interval in G steps (official 4)")
    pl_batch_shrink: int = Field(2, ge=1, description="path-length batch = batch // this (official 2)")
    pl_decay: float = Field(0.01, gt=0, le=1, description="decay of the path-length running mean (official 0.01)")
    mixing_prob: float = Field(0.9, ge=0, le=1, description="style-mixing probability (official 0.9)")
    ema_kimg: float = Field(10.0, gt=0, description="g_ema half-life in thousands of images (official 10)")
    pretrained: str | None = Field(None, description="local .pt/.pth generator checkpoint loaded into g and g_ema")
    pretrained_layout: Layout = Field("rosinality", description="key layout of `pretrained`: rosinality or basicsr")

    @field_validator("resolution")
    @classmethod
    def _resolution_is_a_power_of_two(cls, resolution: int) -> int:
        if resolution < 8 or resolution > MAX_RESOLUTION or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of 2 in [8, {MAX_RESOLUTION}], got {resolution}")
        return resolution

    @model_validator(mode="after")
    def _every_layer_keeps_a_channel(self) -> StyleGAN2Config:
        table = {res: c for res, c in channel_table(self.channel_multiplier, self.width_scale).items()
                 if res <= self.resolution}
        if min(table.values()) < 1:
            raise ValueError(f"width_scale {self.width_scale} leaves a layer with no channel "
                             f"(channels {table}); raise width_scale")
        return self

# -- the training maths --------------------------------------------------------------------------
def r1_penalty(real_logits: Tensor, real: Tensor) -> Tensor:
    """E ||d D(x) / d x||^2 over reals (Mescheder et al. 2018), with the graph kept for its backward."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(dim=1).mean()


def path_lengths(image: Tensor, w_plus: Tensor) -> Tensor:
    """(N,) ||J_w^T y||: the Jacobian of the image w.r.t. w+ applied to unit-variance random images y
    scaled by 1 / sqrt(H W), the norm taken over style_dim and averaged over layers (paper sec. 3.2)."""
    y = torch.randn_like(image) / math.sqrt(image.shape[2] * image.shape[3])
    (grad,) = torch.autograd.grad((image.float() * y).sum(), w_plus, create_graph=True)
    return grad.float().pow(2).sum(dim=2).mean(dim=1).sqrt()


def lazy_adam(params, lr: float, betas: tuple[float, float], interval: int | None) -> torch.optim.Adam:
    """Adam with the lazy-regularisation correction for a term run every `interval` steps (None: none)."""
    ratio = interval / (interval + 1) if interval else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(betas[0] ** ratio, betas[1] ** ratio), eps=1e-8)


class StyleGAN2(Method):
    """The StyleGAN2 prior: networks "g", "d", "g_ema"; see the module docstring."""

    name: ClassVar[str] = "stylegan2"
    task: ClassVar[str] = "prior"
    inputs: ClassVar[tuple[str, ...]] = ("hq",)
    averaged: ClassVar[tuple[str, ...]] = ()  # g_ema is its own, at the paper's half-life (`ema_kimg`)
    Config: ClassVar[type[StyleGAN2Config]] = StyleGAN2Config
    cfg: StyleGAN2Config

    def __init__(self, cfg: StyleGAN2Config, upstream: Upstream | None = None) -> None:
        super().__init__(cfg, upstream)
        self.adversarial = AdversarialLoss("nsgan")
        # The lazy terms are logged at every step with their last value, as rosinality does.
        self.last_r1 = self.last_path = self.last_path_length = 0.0
        self._replicas_synced = False

    def build_networks(self) -> dict[str, nn.Module]:
        cfg = self.cfg
        channels = channel_table(cfg.channel_multiplier, cfg.width_scale)
        g = Generator(cfg.resolution, cfg.style_dim, cfg.n_mlp, channels, cfg.lr_mlp)
        if cfg.pretrained is not None:
            g.load_state_dict(load_pretrained(cfg.pretrained, cfg.pretrained_layout, g), strict=True)
        g_ema = deepcopy(g).eval().requires_grad_(False)
        return {"g": g, "d": Discriminator(cfg.resolution, channels), "g_ema": g_ema}

    def build_optimizers(self) -> dict[str, Optimizer]:
        cfg = self.cfg
        g_interval = cfg.g_reg_every if cfg.pl_weight > 0 else None
        d_interval = cfg.d_reg_every if cfg.r1_gamma > 0 else None
        return {"g": lazy_adam(self.nets["g"].parameters(), cfg.lr, cfg.betas, g_interval),
                "d": lazy_adam(self.nets["d"].parameters(), cfg.lr, cfg.betas, d_interval)}

    # -- what Panini-Net and users call -------------------------------------------------------
    @property
    def prior(self) -> Generator:
        """The EMA generator (the bare module): per-layer structure, `synthesize`, `channels`."""
        return self.unwrapped("g_ema")

    @property
    def n_latent(self) -> int:
        return self.prior.n_latent

    def mean_latent(self, n_samples: int = 4096, seed: int = 0) -> Tensor:
        """(1, style_dim) mean w of g_ema, the truncation centre."""
        return self.prior.mean_latent(n_samples, seed)

    def generate(self, n: int, seed: int = 0, truncation: float = 1.0) -> Tensor:
        """(n, 3, R, R) float32 faces in [0, 1] from g_ema; z and noise drawn from `seed` alone."""
        generator = torch.Generator().manual_seed(seed)
        prior = self.prior
        with self.evaluating():
            z = torch.randn(n, prior.style_dim, generator=generator).to(self.device)
            noise = prior.make_noise(n, generator)
            centre = self.mean_latent(seed=seed) if truncation != 1.0 else None
            image, _ = prior(z, truncation=truncation, truncation_latent=centre, noise=noise)
        return to_unit_range(image)

    def samples(self) -> Tensor:
        """SAMPLE_COUNT faces of g_ema from fixed z and noise: the grid the train stage logs."""
        return self.generate(SAMPLE_COUNT, seed=SAMPLE_SEED)

    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotARestorer(
            "method 'stylegan2' is a GAN prior (task 'prior'), not an image restorer: call "
            "StyleGAN2.generate(n, seed) for samples, or use it as Panini-Net's upstream prior")

    def export(self) -> tuple[dict[str, Tensor], dict]:
        """As Method, with `pretrained` None: the exported weights already hold the checkpoint."""
        state, config = super().export()
        config["config"]["pretrained"] = None
        return state, config

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        cfg = self.cfg
        self._sync_replicas_once()
        real = batch["hq"].to(self.device, torch.float32) * 2.0 - 1.0
        if real.shape[1:] != (3, cfg.resolution, cfg.resolution):
            raise ValueError(f"stylegan2 with resolution {cfg.resolution} needs hq (N, 3, {cfg.resolution}, "
                             f"{cfg.resolution}), got {tuple(real.shape)}")
        n = real.shape[0]
        losses = self._discriminator_step(real, n)
        if cfg.r1_gamma > 0 and step % cfg.d_reg_every == 0:
            self.last_r1 = self._r1_step(real)
        losses["g"] = self._generator_step(n)
        if cfg.pl_weight > 0 and step % cfg.g_reg_every == 0:
            self.last_path, self.last_path_length = self._path_length_step(max(1, n // cfg.pl_batch_shrink))
        accumulate(self.unwrapped("g_ema"), self.unwrapped("g"), self.ema_decay(n))
        return {**losses, "r1": self.last_r1, "path": self.last_path, "path_length": self.last_path_length}

    def ema_decay(self, batch_size: int) -> float:
        """0.5 ** (global batch / (ema_kimg * 1000)): g_ema's half-life is ema_kimg thousand images."""
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        return 0.5 ** (batch_size * world / (self.cfg.ema_kimg * 1000.0))

    def _latents(self, n: int) -> dict[str, Tensor | int | None]:
        """z, and with probability `mixing_prob` a second z and a random crossover layer (style mixing)."""
        style_dim, n_latent = self.cfg.style_dim, self.prior.n_latent
        z = torch.randn(n, style_dim, device=self.device)
        if torch.rand(()) >= self.cfg.mixing_prob:
            return {"z": z}
        cutoff = int(torch.randint(1, n_latent, ()))
        return {"z": z, "z_mix": torch.randn(n, style_dim, device=self.device), "mix_cutoff": cutoff}

    def _discriminator_step(self, real: Tensor, n: int) -> dict[str, float]:
        g, d, opt = self.nets["g"], self.nets["d"], self.opts["d"]
        with torch.no_grad():  # no graph into g: DDP must not expect a backward through it
            fake, _ = g(**self._latents(n))
        fake_logits, real_logits = d(fake.detach()), d(real)
        loss = self.adversarial(real_logits, True) + self.adversarial(fake_logits, False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"d": loss.item(), "real_score": real_logits.float().mean().item(),
                "fake_score": fake_logits.float().mean().item()}

    def _r1_step(self, real: Tensor) -> float:
        d, opt = self.nets["d"], self.opts["d"]
        with torch.autocast(self.device.type, enabled=False):
            real = real.detach().requires_grad_(True)
            logits = d(real)
            penalty = r1_penalty(logits, real)
            # "+ 0 * logits": every D parameter stays in the graph (the last bias has no R1 gradient; DDP needs all).
            loss = self.cfg.r1_gamma / 2 * penalty * self.cfg.d_reg_every + 0.0 * logits.float()[0, 0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return penalty.item()

    def _generator_step(self, n: int) -> float:
        g, d, opt = self.nets["g"], self.nets["d"], self.opts["g"]
        fake, _ = g(**self._latents(n))
        loss = self.adversarial(d(fake), True, for_discriminator=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # D's parameters get gradients too; the D step zeroes them before its own backward
        opt.step()
        return loss.item()

    def _path_length_step(self, n: int) -> tuple[float, float]:
        cfg, g, opt = self.cfg, self.nets["g"], self.opts["g"]
        mean_buffer = self.unwrapped("g").path_length_mean
        with torch.autocast(self.device.type, enabled=False):
            fake, latents = g(**self._latents(n))
            lengths = path_lengths(fake, latents)
            running_mean = mean_buffer.detach().clone() + cfg.pl_decay * (lengths.mean().detach() - mean_buffer)
            penalty = (lengths - running_mean).pow(2).mean()
            # "+ 0 * fake": keeps every g parameter (the last ToRGB bias has no path-length gradient) in the graph.
            loss = cfg.pl_weight * cfg.g_reg_every * penalty + 0.0 * fake.float()[0, 0, 0, 0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            mean_buffer.copy_(running_mean)
        return penalty.item(), lengths.mean().item()

    def _sync_replicas_once(self) -> None:
        """Rank 0's g_ema on every rank: each rank built its own random copy, and DDP syncs only g and d."""
        if self._replicas_synced:
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            g_ema = self.unwrapped("g_ema")
            for tensor in [*g_ema.parameters(), *g_ema.buffers()]:
                dist.broadcast(tensor.data, src=0)
        self._replicas_synced = True

def to_unit_range(image: Tensor) -> Tensor:
    """[-1, 1] generator output -> float32 [0, 1], clamped."""
    return ((image.float() + 1.0) / 2.0).clamp(0.0, 1.0)
