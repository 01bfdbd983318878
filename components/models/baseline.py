"""The learned baseline every later method is compared against: a plain residual U-Net.

A U-Net (Ronneberger et al. 2015) with the usual restoration departures: padded 3x3 convs,
stride-2 convs and bilinear upsampling, no normalisation, LeakyReLU(0.2), and a residual
output whose last conv starts at zero. Sources, reasons and widths: docs/methods.md, section
"baseline".

Task "restoration". In: the degraded image `lq` with holes where `mask` is 1. The network sees
`model_input(batch)`: the hole-filled RGB image and the mask, (N, 4, H, W); it returns
(N, 3, H, W). H and W must be divisible by 2**depth. Trained with L1 to `hq`. `restore`
returns the network output clamped to [0, 1] and does not paste known pixels back: for blind
restoration every pixel of `lq` is degraded, so none can be kept as is.

Network "g": base `width` 32 doubling per level over `depth` 3 levels, about 2 M parameters.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.optim import Optimizer

from components.models.base import MethodBase, MethodConfig
from components.models.inputs import model_input

IN_CHANNELS = 4  # RGB hole-filled image + mask
OUT_CHANNELS = 3
LEAKY_SLOPE = 0.2


class BaselineConfig(MethodConfig):
    width: int = Field(32, gt=0, description="channels at full resolution; doubled at each level down")
    depth: int = Field(3, ge=1, le=6, description="number of stride-2 levels; H and W must divide by 2**depth")


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)


class ConvBlock(nn.Sequential):
    """Two conv3x3 + LeakyReLU at one resolution."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(conv3x3(c_in, c_out), nn.LeakyReLU(LEAKY_SLOPE),
                         conv3x3(c_out, c_out), nn.LeakyReLU(LEAKY_SLOPE))


class Down(nn.Sequential):
    """Halves the resolution with a stride-2 conv, then a ConvBlock at the new width."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(conv3x3(c_in, c_out, stride=2), nn.LeakyReLU(LEAKY_SLOPE), ConvBlock(c_out, c_out))


class Up(nn.Module):
    """Bilinear x2 + conv3x3 to the skip's width, concatenated with the skip, then a ConvBlock."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.reduce = nn.Sequential(conv3x3(c_in, c_out), nn.LeakyReLU(LEAKY_SLOPE))
        self.block = ConvBlock(2 * c_out, c_out)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([self.reduce(x), skip], dim=1))


class BaselineUNet(nn.Module):
    """Residual U-Net restorer.

    Args:
        width: channels at full resolution (level i has width * 2**i).
        depth: number of stride-2 levels; inputs need H and W divisible by 2**depth.

    Shapes: x (N, 4, H, W) = hole-filled RGB + mask -> (N, 3, H, W) = x[:, :3] + correction,
    not clamped (the loss sees the raw output so its gradient never vanishes at 0 or 1).
    """

    def __init__(self, width: int = 32, depth: int = 3):
        super().__init__()
        self.depth = depth
        widths = [width * 2**level for level in range(depth + 1)]
        self.stem = ConvBlock(IN_CHANNELS, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], OUT_CHANNELS, kernel_size=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        factor = 2**self.depth
        if x.ndim != 4 or x.shape[1] != IN_CHANNELS or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"BaselineUNet(depth={self.depth}) needs (N, {IN_CHANNELS}, H, W) with H and W "
                             f"divisible by {factor}, got {tuple(x.shape)}")
        features = self.stem(x)
        skips = []
        for down in self.downs:
            skips.append(features)
            features = down(features)
        for up, skip in zip(self.ups, reversed(skips)):
            features = up(features, skip)
        return x[:, :OUT_CHANNELS] + self.head(features)


class Baseline(MethodBase):
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
