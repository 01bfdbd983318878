"""GAN losses on raw discriminator logits: non-saturating (BCE), least squares and hinge.

"nsgan" (Goodfellow et al. 2014), "lsgan" (Mao et al. 2017) and "hinge" (Lim & Ye 2017 /
Miyato et al. 2018), the three kinds EdgeConnect offers, for the methods of this project that
train a discriminator. Definitions, sources and the departures (logits, never probabilities):
docs/methods.md, section "losses/adversarial.py".

In: logits of any shape and dtype (bf16 under the training loop's autocast). Out: a float32
scalar mean. Halving a discriminator loss, (real + fake) / 2, is the method's choice, not
this module's.
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
