"""GAN losses on raw discriminator logits: non-saturating (BCE), least squares and hinge.

The three kinds EdgeConnect offers (Nazeri et al. 2019, "EdgeConnect: Generative Image
Inpainting with Adversarial Edge Learning"; knazeri/edge-connect, src/loss.py `AdversarialLoss`,
`type = nsgan | lsgan | hinge`), for the methods of this project that train a discriminator:
- "nsgan": Goodfellow et al. 2014's non-saturating loss, binary cross-entropy against 1 (real)
  or 0 (fake); the generator's loss is the same BCE against 1 on its fakes.
- "lsgan": Mao et al. 2017, "Least Squares Generative Adversarial Networks": mean squared
  distance to 1 (real) or 0 (fake); the generator's loss is the distance of its fakes to 1.
- "hinge": Lim & Ye 2017 / Miyato et al. 2018: the discriminator pays relu(1 - D(x)) on reals and
  relu(1 + D(x)) on fakes; the generator's loss is -mean(D(fake)).

Departures from EdgeConnect, both about where the sigmoid lives:
- EdgeConnect's discriminator ends in a sigmoid for nsgan and lsgan, and its nsgan loss is
  `BCELoss` on probabilities. Here the discriminator always returns raw logits, and nsgan uses
  `binary_cross_entropy_with_logits`: the same value, but without the log(0) overflow of a
  saturated sigmoid, and safe under autocast (PyTorch refuses plain BCE on bf16/fp16).
- lsgan here regresses the raw logits onto 1 / 0, Mao et al.'s formulation, where EdgeConnect
  squares the distance of sigmoid outputs.

Every loss is computed in float32 whatever the logits' dtype (bf16 under the training loop's
autocast) and returned as a scalar mean. EdgeConnect also halves its discriminator loss,
(real + fake) / 2; that weighting is the method's, not this module's.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Kind = Literal["nsgan", "lsgan", "hinge"]
KINDS: tuple[str, ...] = get_args(Kind)


class AdversarialLoss(nn.Module):
    """`loss(logits, target_is_real, for_discriminator=True)`: the scalar float32 GAN loss of `kind`.

    `target_is_real` says which label the logits should be pushed to; the generator's term is
    `loss(d_fake, target_is_real=True, for_discriminator=False)`. `for_discriminator` matters
    only for "hinge", whose generator loss is -mean(logits) rather than a hinge.
    """

    def __init__(self, kind: Kind = "nsgan"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"adversarial loss kind must be one of {', '.join(KINDS)}; got {kind!r}")
        self.kind = kind

    def forward(self, logits: Tensor, target_is_real: bool, for_discriminator: bool = True) -> Tensor:
        logits = logits.float()
        if self.kind == "hinge":
            return _hinge(logits, target_is_real, for_discriminator)
        target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
        if self.kind == "nsgan":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(logits, target)

    def loss(self, logits: Tensor, target_is_real: bool, for_discriminator: bool = True) -> Tensor:
        """The same as calling the module."""
        return self(logits, target_is_real, for_discriminator)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def _hinge(logits: Tensor, target_is_real: bool, for_discriminator: bool) -> Tensor:
    if not for_discriminator:
        if not target_is_real:
            raise ValueError("the hinge generator loss pushes fakes towards real: "
                             "call it with target_is_real=True")
        return -logits.mean()
    margin = 1.0 - logits if target_is_real else 1.0 + logits
    return F.relu(margin).mean()
