"""LPIPS, the learned perceptual image patch similarity, VGG16 variant: (N,3,H,W) x2 -> (N,).

Zhang et al. 2018 (CVPR), version 0.1 of richzhang/PerceptualSimilarity, `net='vgg'` (what
restoration papers and BasicSR report). The four steps with their constants, the two weights
files' key layouts and the departures: docs/methods.md, section "metrics/lpips.py".

In: x0, x1 float NCHW RGB in [0, 1], of any size the VGG's four pools accept. Out: (N,)
distances; LPIPS(x, x) = 0 and LPIPS is symmetric. Weights: torchvision's ImageNet VGG16
(`vgg16-397923af.pth`) and the official `weights/v0.1/vgg.pth` heads, both a user's download;
`.pth` read with `torch.load(weights_only=True)`, `.safetensors` with the same keys too.
Without either file `LPIPS.from_files` raises MetricUnavailable.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from components.metrics.weights import MetricUnavailable, read_weights
from components.weight_files import check_state

# torchvision's VGG16 configuration "D" up to relu5_3: conv widths, "M" = 2x2 max pool.
VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512)
# Indices in `vgg16().features` of the ReLUs LPIPS reads (pretrained_networks.py, vgg16 slices).
LPIPS_TAPS: tuple[int, ...] = (3, 8, 15, 22, 29)
LPIPS_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
# lpips.py ScalingLayer, in the [-1, 1] input range.
SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10  # lpips.normalize_tensor

__all__ = ["LPIPS", "MetricUnavailable", "VGG16Features", "available", "lpips"]


def available(backbone: str | Path | None, heads: str | Path | None) -> bool:
    """True when both weight files are named: LPIPS can then be computed (or fail loudly)."""
    return backbone is not None and heads is not None


class VGG16Features(nn.Module):
    """VGG16 convolutions in torchvision's `vgg16().features` layout: x -> [relu1_2, ..., relu5_3]."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(item)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        taps: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in LPIPS_TAPS:
                taps.append(x)
        return taps


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG16: `lpips_net(pred, target)` -> (N,) distances for [0, 1] RGB images."""

    def __init__(self) -> None:
        super().__init__()
        self.net = VGG16Features()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(SCALING_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALING_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, backbone: str | Path | None, heads: str | Path | None) -> LPIPS:
        """LPIPS with torchvision's VGG16 weights (`backbone`) and the official v0.1 `vgg.pth` heads.

        Raises MetricUnavailable when either path is None; FileNotFoundError / ValueError naming
        the file when it is absent or does not hold the expected keys and shapes.
        """
        model = cls()
        backbone_path, backbone_raw = read_weights(backbone, "LPIPS", "VGG16 backbone")
        heads_path, heads_raw = read_weights(heads, "LPIPS", "linear heads")
        expected_backbone = {f"features.{k}": v for k, v in model.net.layers.state_dict().items()}
        backbone_state = check_state(backbone_path, "LPIPS VGG16 backbone", _backbone_keys(backbone_raw),
                                     expected_backbone)
        model.net.layers.load_state_dict({k.removeprefix("features."): v for k, v in backbone_state.items()})
        expected = {_official_head_key(k): head.weight for k, head in enumerate(model.heads)}
        head_state = check_state(heads_path, "LPIPS linear heads", _head_keys(heads_raw), expected)
        negative = [k for k, v in head_state.items() if (v < 0).any()]
        if negative:
            raise ValueError(f"LPIPS linear heads file {heads_path} has negative weights in {', '.join(negative)}; "
                             f"LPIPS heads are non-negative")
        model.heads.load_state_dict({f"{k}.weight": head_state[_official_head_key(k)] for k in range(len(model.heads))})
        return model

    def train(self, mode: bool = True) -> LPIPS:
        # Frozen: a caller's `.train()` must not switch anything on.
        return super().train(False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.ndim != 4 or pred.shape != target.shape or pred.shape[1] != 3:
            raise ValueError(f"LPIPS needs pred and target of one (N, 3, H, W) shape, got {tuple(pred.shape)} "
                             f"and {tuple(target.shape)}")
        device = self.shift.device
        with torch.autocast(device.type, enabled=False):
            n = pred.shape[0]
            both = self.net(self._scaled(torch.cat([pred.to(device), target.to(device)])))
            total = torch.zeros(n, dtype=torch.float32, device=device)
            for head, features in zip(self.heads, both, strict=True):
                diff = (_unit(features[:n]) - _unit(features[n:])) ** 2
                total = total + head(diff).mean(dim=(1, 2, 3))
        return total

    def _scaled(self, images: Tensor) -> Tensor:
        return (images.float() * 2.0 - 1.0 - self.shift) / self.scale


def lpips(pred: Tensor, target: Tensor, net: LPIPS) -> Tensor:
    """Per-image LPIPS, (N,), of [0, 1] RGB images; 0 for identical images, lower is closer."""
    with torch.no_grad():
        return net(pred, target)


def _unit(features: Tensor) -> Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + NORM_EPS)


def _backbone_keys(raw: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys in torchvision's `features.<i>.` naming, from its own, a bare, or an LPIPS checkpoint's layout."""
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if key.startswith(("classifier.", "lin", "scaling_layer.")):
            continue  # a whole torchvision model or LPIPS checkpoint: only the convolutions are read here
        key = re.sub(r"^net\.slice\d+\.", "", key)  # LPIPS slices keep torchvision's indices
        state[key if key.startswith("features.") else f"features.{key}"] = value
    return state


def _official_head_key(layer: int) -> str:
    return f"lin{layer}.model.1.weight"


def _head_keys(raw: dict[str, Tensor]) -> dict[str, Tensor]:
    """The heads in the official layout with dropout (`lin<k>.model.1.weight`); `.model.0.` (no dropout) renamed."""
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if key.startswith(("net.", "scaling_layer.")):
            continue  # the rest of an LPIPS training checkpoint
        match = re.fullmatch(r"lin(\d+)\.model\.0\.weight", key)
        state[_official_head_key(int(match.group(1))) if match else key] = value
    return state
