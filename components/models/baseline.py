"""The learned baseline every later method is compared against: a plain residual U-Net.

A U-Net (Ronneberger et al. 2015) with the usual restoration departures: padded 3x3 convs,
stride-2 convs and bilinear upsampling, no normalisation, LeakyReLU(0.2), and a residual
output whose last conv starts at zero (the network: components/networks/unet.py). Sources,
reasons and widths: docs/methods.md, section "baseline".

Task "restoration". In: the degraded image `lq` with holes where `mask` is 1. The network sees
`model_input(batch)`: the hole-filled RGB image and the mask, (N, 4, H, W); it returns
(N, 3, H, W). H and W must be divisible by 2**depth. Trained with L1 to `hq`. `restore`
returns the network output clamped to [0, 1] and does not paste known pixels back: for blind
restoration every pixel of `lq` is degraded, so none can be kept as is.

Network "g": base `width` 32 doubling per level over `depth` 3 levels, about 2 M parameters.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.optim import Optimizer

from components.models.base import Method, MethodConfig
from components.networks.inputs import model_input
from components.networks.unet import BaselineUNet


class BaselineConfig(MethodConfig):
    width: int = Field(32, gt=0, description="channels at full resolution; doubled at each level down")
    depth: int = Field(3, ge=1, le=6, description="number of stride-2 levels; H and W must divide by 2**depth")


class Baseline(Method):
    """The learned baseline: BaselineUNet trained with L1 to `hq`, one network "g", one Adam."""

    name: ClassVar[str] = "baseline"
    task: ClassVar[str] = "restoration"
    inputs: ClassVar[tuple[str, ...]] = ("hq", "lq", "mask")
    Config: ClassVar[type[BaselineConfig]] = BaselineConfig
    cfg: BaselineConfig

    def build_networks(self) -> dict[str, nn.Module]:
        return {"g": BaselineUNet(self.cfg.width, self.cfg.depth)}

    def build_optimizers(self) -> dict[str, Optimizer]:
        return {"g": self.adam("g")}

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        opt = self.opts["g"]
        opt.zero_grad(set_to_none=True)
        out = self.nets["g"](model_input(batch))
        # float32 loss: under bf16 autocast the output is bf16, too coarse to sum over a batch.
        loss = F.l1_loss(out.float(), batch["hq"].float())
        loss.backward()
        opt.step()
        value = loss.item()
        return {"loss": value, "l1": value}

    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        """(N, 3, H, W) in [0, 1] on the method's device; no compositing of known pixels."""
        device = self.device
        inputs = {key: batch[key].to(device) for key in ("lq", "mask")}
        with self.evaluating():
            return self.nets["g"](model_input(inputs)).float().clamp(0.0, 1.0)
