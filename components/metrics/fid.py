"""FID, the Frechet Inception Distance between two image sets, in the pytorch-fid / TTUR convention.

Heusel et al. 2017 (NeurIPS): FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between
Gaussians fitted to the Inception-v3 pool3 features of the two sets. Features, weights and
statistics follow mseitzer/pytorch-fid; the details, and the graph differences from
torchvision's Inception-v3 rebuilt here: docs/methods.md, section "metrics/fid.py".

In: two sets of [0, 1] RGB images (N, 3, H, W), resized to 299 x 299; 2048 features per image.
Out: one number per *set*, not per image; lower is closer; biased upwards for small sets
(report the set size with it). Weights: `pt_inception-2015-12-05-6726825d.pth`, loaded key for
key by `InceptionFeatures.from_file(path)`; `from_file(None)` raises MetricUnavailable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.metrics.weights import MetricUnavailable, read_weights
from components.weight_files import check_state

FID_INPUT_SIZE = 299  # pytorch-fid InceptionV3(resize_input=True)
FID_FEATURES = 2048  # pool3, pytorch-fid DEFAULT_BLOCK_INDEX = 3
SINGULAR_EPS = 1e-6  # pytorch-fid calculate_frechet_distance(eps)
IMAGINARY_TOLERANCE = 1e-3  # pytorch-fid: tolerated imaginary part on the root's diagonal

__all__ = ["InceptionFeatures", "MetricUnavailable", "available", "feature_statistics", "fid", "fid_from_features",
           "frechet_distance", "inception_features"]


def available(weights: str | Path | None) -> bool:
    """True when a weights file is named: FID can then be computed (or fail loudly)."""
    return weights is not None


class BasicConv(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3) + ReLU: torchvision's BasicConv2d, keys `conv`, `bn`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TensorFlow's 3x3 SAME average pool divides by the valid pixels only.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool_same(x: Tensor) -> Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class MixedA(nn.Module):
    """35 x 35 block (Mixed_5b-5d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1 -> 224 + pool_features."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1)
        self.branch_pool = BasicConv(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_tf_avg_pool(x)),
        ], dim=1)


class MixedB(nn.Module):
    """35 -> 17 reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | max pool/2 -> 480 + in_channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class MixedC(nn.Module):
    """17 x 17 block (Mixed_6b-6e) with factorised 1x7 / 7x1 convs of width `c7` -> 768."""

    def __init__(self, in_channels: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        double = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = conv(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_tf_avg_pool(x)),
        ], dim=1)


class MixedD(nn.Module):
    """17 -> 8 reduction (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2 -> 512 + in_channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        tower = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            tower = conv(tower)
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            tower,
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class MixedE(nn.Module):
    """8 x 8 block (Mixed_7b, 7c) with split 1x3 / 3x1 convs -> 2048; `pool` is the FID graph's branch pool."""

    def __init__(self, in_channels: int, pool: Callable[[Tensor], Tensor]):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(self.pool(x)),
        ], dim=1)


class InceptionFeatures(nn.Module):
    """Frozen FID Inception-v3: [0, 1] RGB (N, 3, H, W) -> pool3 features (N, 2048), float32.

    Module names are torchvision's / pytorch-fid's (`Conv2d_1a_3x3.conv.weight`,
    `Mixed_7c.branch_pool.bn.running_var`, ...). Random init without `from_file`: tests only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3)
        self.Mixed_5b = MixedA(192, pool_features=32)
        self.Mixed_5c = MixedA(256, pool_features=64)
        self.Mixed_5d = MixedA(288, pool_features=64)
        self.Mixed_6a = MixedB(288)
        self.Mixed_6b = MixedC(768, c7=128)
        self.Mixed_6c = MixedC(768, c7=160)
        self.Mixed_6d = MixedC(768, c7=160)
        self.Mixed_6e = MixedC(768, c7=192)
        self.Mixed_7a = MixedD(768)
        self.Mixed_7b = MixedE(1280, pool=_tf_avg_pool)
        self.Mixed_7c = MixedE(2048, pool=_max_pool_same)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path | None) -> InceptionFeatures:
        """The network with pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (or a safetensors copy).

        Raises MetricUnavailable when `path` is None; FileNotFoundError / ValueError naming the
        file when it is absent or its keys and shapes are not pytorch-fid's.
        """
        model = cls()
        file, raw = read_weights(path, "FID", "Inception weights")
        state = {k: v for k, v in raw.items() if not k.startswith("fc.")}
        model.load_state_dict(check_state(file, "FID Inception", state, model.state_dict()))
        return model

    def train(self, mode: bool = True) -> InceptionFeatures:
        # Frozen: BatchNorm must keep its running statistics.
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatures needs (N, 3, H, W) RGB images, got {tuple(images.shape)}")
        device = self.Conv2d_1a_3x3.conv.weight.device
        with torch.autocast(device.type, enabled=False):
            x = F.interpolate(images.to(device).float(), size=(FID_INPUT_SIZE, FID_INPUT_SIZE),
                              mode="bilinear", align_corners=False)
            x = 2.0 * x - 1.0
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                          self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                          self.Mixed_7c):
                x = block(x)
            return x.mean(dim=(2, 3))


def inception_features(images: Tensor, net: InceptionFeatures, batch_size: int = 50) -> np.ndarray:
    """Pool3 features of `images` ([0, 1] RGB, N x 3 x H x W) as an (N, 2048) float64 array."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chunks = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            chunks.append(net(images[start:start + batch_size]).cpu().double().numpy())
    return np.concatenate(chunks, axis=0)


def feature_statistics(features: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, float64."""
    array = _as_float64(features)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"FID statistics need an (N, D) feature array with N >= 2, got shape {array.shape}")
    return array.mean(axis=0), np.cov(array, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = SINGULAR_EPS) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), as pytorch-fid computes it."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(_as_float64(mu1)), np.atleast_1d(_as_float64(mu2))
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1)), np.atleast_2d(_as_float64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"Frechet distance needs means of one length D and D x D covariances, got "
                         f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    root = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = np.eye(sigma1.shape[0]) * eps
        root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=IMAGINARY_TOLERANCE):
            raise ValueError(f"Frechet distance: the covariance product's square root has an imaginary part "
                             f"of {np.abs(root.imag).max():.3g}; the feature sets are too small or degenerate")
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))


def fid_from_features(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> float:
    """FID between two (N, D) feature sets (N may differ between them)."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def fid(pred: Tensor, target: Tensor, net: InceptionFeatures, batch_size: int = 50) -> float:
    """FID between two image sets ([0, 1] RGB); one number for the sets, not per image."""
    return fid_from_features(inception_features(pred, net, batch_size), inception_features(target, net, batch_size))


def _as_float64(values: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)
