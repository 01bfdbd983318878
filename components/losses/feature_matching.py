"""Discriminator feature matching: L1 between the discriminator's activations on real and fake.

Salimans et al. 2016 ("Improved Techniques for Training GANs") and pix2pixHD (Wang et al. 2018)
match intermediate discriminator features; EdgeConnect (Nazeri et al. 2019, eq. 3; knazeri/
edge-connect, src/models.py `EdgeModel.process`) uses it for its edge generator: L1 between the
features of every discriminator layer on the fake and on the (detached) real input, times
FM_LOSS_WEIGHT = 10 (config.yml.example).

Reduction: "mean" over the layers by default (the project's agreed interface), so the loss's
scale does not depend on the discriminator's depth. EdgeConnect *sums* its five layers' L1
terms; `reduction="sum"` reproduces its values exactly, so a method can keep EdgeConnect's
weight of 10 unchanged. Each layer's L1 is itself a mean over its elements, as in EdgeConnect.

The real features are detached: the loss trains the generator only, never the discriminator.
Computed in float32 whatever the features' dtype (bf16 under autocast).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor


def feature_matching_loss(real_features: Sequence[Tensor], fake_features: Sequence[Tensor],
                          reduction: Literal["mean", "sum"] = "mean") -> Tensor:
    """Mean (or sum) over layers of the L1 distance between fake and detached real features."""
    if len(real_features) != len(fake_features) or not real_features:
        raise ValueError(f"feature matching needs the same, non-zero number of real and fake feature maps; "
                         f"got {len(real_features)} real and {len(fake_features)} fake")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"feature matching reduction must be 'mean' or 'sum'; got {reduction!r}")
    terms = [F.l1_loss(fake.float(), real.detach().float()) for real, fake in zip(real_features, fake_features)]
    total = sum(terms[1:], terms[0])
    return total / len(terms) if reduction == "mean" else total
