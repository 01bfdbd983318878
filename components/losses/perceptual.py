"""VGG19 perceptual (content) and style losses, with EdgeConnect's layers and weights.

Perceptual loss (Johnson et al. 2016): L1 between VGG19 activations at relu1_1 .. relu5_1;
style loss (Gatys et al. 2016): L1 between their Gram matrices at relu2_2, relu3_4, relu4_4 and
relu5_2. The layers' and weights' source, the weights file and the departures: docs/methods.md,
section "losses/perceptual.py".

In: prediction and target (N, 3, H, W) in [0, 1] (ImageNet-normalised inside). Out: a float32
scalar. `VGG19Features` loads torchvision's ImageNet `vgg19-dcbb9e9d.pth` (keys
`features.<i>.weight`) or a safetensors file with those keys, a user's download named by a
method's `vgg_weights`; with no file the network is random, so methods turn these terms off.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.weight_files import check_state, read_state_dict

# torchvision's VGG19 configuration "E": conv widths, "M" = 2x2 max pool.
VGG19_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                       512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PERCEPTUAL_LAYER_WEIGHTS: dict[str, float] = {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0,
                                              "relu4_1": 1.0, "relu5_1": 1.0}
STYLE_LAYERS: tuple[str, ...] = ("relu2_2", "relu3_4", "relu4_4", "relu5_2")


def _vgg19_layers() -> tuple[nn.Sequential, dict[str, int]]:
    """torchvision's `vgg19().features` layout and the index of each named ReLU in it."""
    layers: list[nn.Module] = []
    relu_index: dict[str, int] = {}
    block, conv_in_block, channels = 1, 0, 3
    for item in VGG19_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            block, conv_in_block = block + 1, 0
            continue
        layers.append(nn.Conv2d(channels, int(item), kernel_size=3, padding=1))
        conv_in_block += 1
        relu_index[f"relu{block}_{conv_in_block}"] = len(layers)
        layers.append(nn.ReLU())
        channels = int(item)
    return nn.Sequential(*layers), relu_index


class VGG19Features(nn.Module):
    """Frozen VGG19 feature extractor: [0, 1] RGB (N, 3, H, W) -> {"relu1_1": ..., "relu5_4": ...}.

    `weights`: a torchvision VGG19 state dict as `.pth` (read with `torch.load(weights_only=True)`)
    or `.safetensors`; keys may carry torchvision's `features.` prefix, and the classifier's keys
    of a whole-model file are ignored. None: random init (tests only).
    """

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        self.layers, self.relu_index = _vgg19_layers()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights is not None:
            self.layers.load_state_dict(read_vgg19_state(weights, self.layers.state_dict()))
        self.requires_grad_(False)
        self.eval()

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self.relu_index)

    def check_layers(self, names: Iterable[str]) -> None:
        unknown = sorted(set(names) - set(self.relu_index))
        if unknown:
            raise ValueError(f"unknown VGG19 layer(s) {', '.join(unknown)}; known: {', '.join(self.relu_index)}")

    def train(self, mode: bool = True) -> VGG19Features:
        # Frozen: a method's `.train()` on its modules must not change this network.
        return super().train(False)

    def forward(self, x: Tensor, layers: Iterable[str] | None = None) -> dict[str, Tensor]:
        """The named ReLU activations, all 16 or only `layers` (the forward stops at the deepest)."""
        wanted = set(self.relu_index if layers is None else layers)
        self.check_layers(wanted)
        last = max(self.relu_index[name] for name in wanted)
        by_index = {self.relu_index[name]: name for name in wanted}
        out: dict[str, Tensor] = {}
        with torch.autocast(x.device.type, enabled=False):
            h = (x.float() - self.mean) / self.std
            for i, layer in enumerate(self.layers[: last + 1]):
                h = layer(h)
                if i in by_index:
                    out[by_index[i]] = h
        return out


def read_vgg19_state(path: str | Path, expected: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The VGG19 feature weights in `path`, keys and shapes checked against `expected`."""
    state = _feature_keys(read_state_dict(path, "VGG19", "weights"))
    checked = check_state(Path(path), "VGG19", state, expected, layout="torchvision's vgg19().features layout")
    return {k: v.float() for k, v in checked.items()}


def _feature_keys(raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys as `layers` names them: torchvision's `features.` stripped, its `classifier.` dropped."""
    if not any(k.startswith("features.") for k in raw):
        return dict(raw)
    return {k.removeprefix("features."): v for k, v in raw.items() if not k.startswith("classifier.")}


def gram_matrix(features: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, C): F F^T / (C H W), EdgeConnect's normalisation (src/loss.py)."""
    n, c, h, w = features.shape
    flat = features.float().reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


class PerceptualLoss(nn.Module):
    """sum over layers of weight x L1(VGG(pred), VGG(target)); EdgeConnect's layers, weights 1."""

    def __init__(self, features: VGG19Features, layer_weights: Mapping[str, float] = PERCEPTUAL_LAYER_WEIGHTS):
        super().__init__()
        features.check_layers(layer_weights)
        if not layer_weights:
            raise ValueError("PerceptualLoss needs at least one layer in layer_weights")
        self.features = features
        self.layer_weights = dict(layer_weights)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred_f = self.features(pred, self.layer_weights)
        with torch.no_grad():
            target_f = self.features(target, self.layer_weights)
        terms = [w * F.l1_loss(pred_f[name], target_f[name]) for name, w in self.layer_weights.items()]
        return sum(terms[1:], terms[0])


class StyleLoss(nn.Module):
    """sum over layers of L1(Gram(VGG(pred)), Gram(VGG(target))); EdgeConnect's four layers."""

    def __init__(self, features: VGG19Features, layers: Iterable[str] = STYLE_LAYERS):
        super().__init__()
        self.layers = tuple(layers)
        if not self.layers:
            raise ValueError("StyleLoss needs at least one layer")
        features.check_layers(self.layers)
        self.features = features

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred_f = self.features(pred, self.layers)
        with torch.no_grad():
            target_f = self.features(target, self.layers)
        terms = [F.l1_loss(gram_matrix(pred_f[name]), gram_matrix(target_f[name])) for name in self.layers]
        return sum(terms[1:], terms[0])
