"""The discriminator side the EdgeConnect-style GAN methods share (edge_gan, fusion_inpaint, cafin).

Their knobs have one name each: `d_lr_ratio`, the discriminator's learning rate as a multiple
of the generator's (EdgeConnect's D2G_LR), and `adversarial_weight`, the generator's weight on
its adversarial term. The discriminator's Adam has the generator's betas. A D step sees the
reals and the detached fakes stacked in one forward (one spectral-norm power iteration, one DDP
pass) and takes (real term + fake term) / 2; the generator's term then goes through the updated
D. `d` returns (logits, features), as components/networks/patchgan.py does; logits are raw and
the loss (components/losses/adversarial.py) applies the sigmoid. Sources: docs/methods.md,
section "edge_gan" (losses, optimisers, the first departure).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pydantic import Field
from torch import Tensor, nn

from components.losses.adversarial import AdversarialLoss, Kind
from components.models.base import MethodConfig


class AdversarialConfig(MethodConfig):
    """The knobs every method that trains with this D step has, at EdgeConnect's settings
    (config.yml.example; section 3.2); a method's Config subclasses it and may change a default."""

    lr: float = Field(1e-4, gt=0, description="generator Adam lr (EdgeConnect LR)")
    betas: tuple[float, float] = Field((0.0, 0.9), description="Adam betas of G and D (EdgeConnect BETA1, BETA2)")
    d_lr_ratio: float = Field(0.1, gt=0, description="discriminator lr / generator lr (EdgeConnect D2G_LR)")
    d_width: int = Field(64, gt=0, description="PatchGAN discriminator base width (EdgeConnect: 64)")
    gan_loss: Kind = Field("nsgan", description="adversarial loss kind (EdgeConnect GAN_LOSS)")
    adversarial_weight: float = Field(0.1, ge=0, description="generator adversarial loss weight "
                                                             "(EdgeConnect section 3.2, lambda_adv)")


def discriminator_adam(params: Iterable[nn.Parameter], lr: float, d_lr_ratio: float,
                       betas: tuple[float, float]) -> torch.optim.Adam:
    """The discriminator's Adam: lr * d_lr_ratio, the generator's betas."""
    return torch.optim.Adam(params, lr=lr * d_lr_ratio, betas=betas)


def discriminator_step(d: nn.Module, opt: torch.optim.Optimizer, adversarial: AdversarialLoss, real: Tensor,
                       fake: Tensor) -> Tensor:
    """One update of `d` on `real` and `fake` (detached by the caller), (N, C, H, W) each; returns the
    detached loss (real + fake) / 2. Zeroing D's gradients first also drops what the previous
    generator backward left in it."""
    opt.zero_grad(set_to_none=True)
    logits, _ = d(torch.cat([real, fake], dim=0))
    real_logits, fake_logits = logits.float().chunk(2)
    loss = (adversarial(real_logits, True) + adversarial(fake_logits, False)) / 2
    loss.backward()
    opt.step()
    return loss.detach()


def generator_adversarial(d: nn.Module, adversarial: AdversarialLoss, fake: Tensor) -> Tensor:
    """The generator's adversarial term: `fake` judged real by `d` (a float32 scalar with its graph)."""
    logits, _ = d(fake)
    return adversarial(logits, True, for_discriminator=False)
