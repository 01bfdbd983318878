"""CTCNet: a CNN-Transformer cooperation network for face super-resolution.

Gao, Xu, Li, Yang, Zeng, Qi 2023 (IEEE TIP); official code IVIPLab/CTCNet. Where every width,
count and loss weight comes from, the parameter count and the departures: docs/methods.md,
section "ctcnet".

Task "super_resolution". In: `lr` (N, 3, h, w) in [0, 1]. Out: (N, 3, h * scale, w * scale);
`restore` clamps it to [0, 1]. Trained against `hq` with L1. `scale` may be 4, 8 or 16 (the
paper's setting is x8, 16 -> 128 px); h * scale and w * scale must be multiples of 8 and at
least 16. The generator upsamples `lr` with bicubic itself (`classical.bicubic`), maps it to
[-1, 1] and predicts the correction to it (a global residual), as the official network does
on the bicubic-enlarged input its data loader makes.

Network "g" (`CTCNetGenerator`, components/networks/ctcnet.py): a head conv, a three-level
encoder of LGCMs (FSAU + Restormer Transformer blocks), four FRMs at the H/8 bottleneck, a
decoder of transposed convs, MFFUs and LGCMs, and a tail conv plus the bicubic input. `width`
scales every width, so tests run narrow copies.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.models.base import Method, MethodConfig
from components.networks.ctcnet import CTCNetGenerator


class CTCNetConfig(MethodConfig):
    scale: Literal[4, 8, 16] = Field(8, description="upscaling factor: hq is lr x scale (paper: 8, 16 -> 128 px)")
    width: int = Field(32, ge=2, description="channels at the HR level; levels have width x (1, 2, 4), the "
                                             "hourglass 2 x width (official: 32)")
    encoder_blocks: tuple[int, int, int] = Field(
        (4, 6, 6), description="Transformer blocks in the LGCM of each encoder level, H to H/4; the decoder "
                               "mirrors them (official: 4, 6, 6)")
    heads: tuple[int, int, int] = Field((1, 2, 4),
                                        description="attention heads per level, H to H/4 (official: 1, 2, 4)")
    refinement_blocks: int = Field(4, ge=1, description="FRMs at the bottleneck (official: 4)")
    fsau_depth: int = Field(4, ge=1, description="hourglass depth of the FSAU inside each LGCM (official: 4)")
    frm_fsau_depth: int = Field(2, ge=1, description="hourglass depth of the FSAU inside each FRM (official: 2)")
    ffn_expansion: float = Field(2.66, gt=0, description="Transformer feed-forward expansion (Restormer's 2.66)")

    @model_validator(mode="after")
    def _widths_split_into_heads(self) -> CTCNetConfig:
        if self.width % 2:
            raise ValueError(f"width must be even (the local feature blocks halve it), got {self.width}")
        if any(blocks < 1 for blocks in self.encoder_blocks):
            raise ValueError(f"encoder_blocks must all be >= 1, got {self.encoder_blocks}")
        for level, heads in enumerate(self.heads):
            channels = self.width * 2**level
            if heads < 1 or channels % heads:
                raise ValueError(f"heads[{level}] = {heads} must be >= 1 and divide that level's width "
                                 f"{channels} (width {self.width} x {2**level})")
        return self


def check_pair_sizes(lr: Tensor, hq: Tensor, scale: int) -> None:
    """Raises ValueError unless hq is exactly lr x scale."""
    expected = (lr.shape[-2] * scale, lr.shape[-1] * scale)
    if tuple(hq.shape[-2:]) != expected:
        raise ValueError(f"ctcnet with scale {scale} needs hq = lr x {scale}: lr is {lr.shape[-2]}x{lr.shape[-1]}, "
                         f"so hq should be {expected[0]}x{expected[1]}, but hq is {hq.shape[-2]}x{hq.shape[-1]}")


class CTCNet(Method):
    """CTCNet trained with L1 to `hq`: one network "g" (CTCNetGenerator), one Adam."""

    name: ClassVar[str] = "ctcnet"
    task: ClassVar[str] = "super_resolution"
    inputs: ClassVar[tuple[str, ...]] = ("hq", "lr")
    Config: ClassVar[type[CTCNetConfig]] = CTCNetConfig
    cfg: CTCNetConfig

    def build_networks(self) -> dict[str, nn.Module]:
        cfg = self.cfg
        return {"g": CTCNetGenerator(cfg.scale, cfg.width, cfg.encoder_blocks, cfg.heads, cfg.refinement_blocks,
                                     cfg.fsau_depth, cfg.frm_fsau_depth, cfg.ffn_expansion)}

    def build_optimizers(self) -> dict[str, Optimizer]:
        return {"g": self.adam("g")}

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        lr, hq = batch["lr"], batch["hq"]
        check_pair_sizes(lr, hq, self.cfg.scale)
        opt = self.opts["g"]
        opt.zero_grad(set_to_none=True)
        # float32 loss: under bf16 autocast the output is bf16.
        loss = F.l1_loss(self.nets["g"](lr).float(), hq.float())
        loss.backward()
        opt.step()
        value = loss.item()
        return {"loss": value, "l1": value}

    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        """(N, 3, h * scale, w * scale) in [0, 1] on the method's device, from `lr` alone."""
        lr = batch["lr"].to(self.device)
        with self.evaluating():
            return self.nets["g"](lr).float().clamp(0.0, 1.0)
