"""Identity similarity: cosine similarity of ArcFace embeddings of two faces, (N,3,H,W) x2 -> (N,).

Wan et al. 2024 evaluate masked-face inpainting by whether a face recogniser still sees the
same person; each (restored, ground-truth) pair is scored by the cosine similarity of their
ArcFace (Deng et al. 2019) IResNet embeddings: range [-1, 1], higher is better. The network
layout, the input normalisation and the caveat on FFHQ-style crops: docs/methods.md, section
"metrics/identity.py". Without ArcFace weights the evaluate stage embeds faces with dlib's
face recognition ResNet instead (components/metrics/dlib_identity.py).

`id_accuracy`, Wan et al.'s face-recognition accuracy, is one number per set: the share of
restored faces whose nearest ground-truth face of the set (by the recogniser's distance:
Euclidean for dlib, cosine for ArcFace) is their own. A tie with another face counts as a miss,
so a recogniser that cannot tell faces apart scores 0, not 1.

In: faces in [0, 1], resized to 112 x 112 (bilinear, antialiased when shrinking). Out: (N,).
Weights: insightface's released `backbone.pth` (e.g. ms1mv3_arcface_r50_fp16), loaded key for
key by `IdentityNet.from_file(path, depth=50)`; `from_file(None)` raises MetricUnavailable.
`width` and `embedding_dim` shrink the network for tests only.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.metrics.weights import MetricUnavailable, read_weights
from components.weight_files import check_state

ARCFACE_INPUT = 112  # insightface arcface_torch: 112 x 112 aligned faces
ARCFACE_EMBEDDING = 512  # iresnet num_features
ARCFACE_WIDTH = 64  # iresnet inplanes: stages of 64, 128, 256, 512
BN_EPS = 1e-5  # iresnet.py, every BatchNorm
# iresnet.py: iresnet18 / 34 / 50 / 100 blocks per stage.
IRESNET_LAYOUTS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3),
}

__all__ = ["IdentityNet", "MetricUnavailable", "available", "embedding_similarity", "id_accuracy",
           "identity_similarity"]


def available(weights: str | Path | None) -> bool:
    """True when a weights file is named: identity similarity can then be computed (or fail loudly)."""
    return weights is not None


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN, conv3x3, BN, PReLU, conv3x3 (stride), BN, + shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels, eps=BN_EPS))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IdentityNet(nn.Module):
    """Frozen ArcFace IResNet: [0, 1] RGB faces (N, 3, H, W) -> embeddings (N, embedding_dim), float32."""

    distance = "cosine"  # what id_accuracy ranks faces by: ArcFace's angular metric

    def __init__(self, depth: int = 50, width: int = ARCFACE_WIDTH, embedding_dim: int = ARCFACE_EMBEDDING):
        super().__init__()
        if depth not in IRESNET_LAYOUTS:
            raise ValueError(f"IdentityNet depth must be one of {sorted(IRESNET_LAYOUTS)} (insightface's "
                             f"iresnet layouts), got {depth}")
        if width < 1 or embedding_dim < 1:
            raise ValueError(f"IdentityNet width and embedding_dim must be positive, got {width}, {embedding_dim}")
        self.depth = depth
        self.name = f"arcface_iresnet{depth}"
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=BN_EPS)
        self.prelu = nn.PReLU(width)
        channels = width
        for stage, blocks in enumerate(IRESNET_LAYOUTS[depth]):
            out = width * 2**stage
            layer = [IBasicBlock(channels, out, stride=2)]
            layer += [IBasicBlock(out, out, stride=1) for _ in range(blocks - 1)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layer))
            channels = out
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        spatial = ARCFACE_INPUT // 16  # four stride-2 stages: 112 -> 7
        self.fc = nn.Linear(channels * spatial * spatial, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=BN_EPS)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path | None, depth: int = 50, width: int = ARCFACE_WIDTH,
                  embedding_dim: int = ARCFACE_EMBEDDING) -> IdentityNet:
        """The network with insightface's arcface_torch `backbone.pth` (or a safetensors copy) of `depth`.

        Raises MetricUnavailable when `path` is None; FileNotFoundError / ValueError naming the
        file when it is absent or its keys and shapes are not those of iresnet`depth`.
        """
        model = cls(depth, width, embedding_dim)
        file, raw = read_weights(path, "identity similarity", f"ArcFace iresnet{depth} weights")
        state = {k.removeprefix("module."): v for k, v in raw.items()}  # a DDP-saved file
        model.load_state_dict(check_state(file, f"identity similarity (iresnet{depth})", state, model.state_dict()))
        return model

    def train(self, mode: bool = True) -> IdentityNet:
        # Frozen: BatchNorm must keep its running statistics.
        return super().train(False)

    def forward(self, faces: Tensor) -> Tensor:
        if faces.ndim != 4 or faces.shape[1] != 3:
            raise ValueError(f"IdentityNet needs (N, 3, H, W) RGB faces, got {tuple(faces.shape)}")
        device = self.conv1.weight.device
        with torch.autocast(device.type, enabled=False):
            x = _resize(faces.to(device).float(), ARCFACE_INPUT)
            x = (x - 0.5) / 0.5
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = torch.flatten(self.bn2(x), 1)
            return self.features(self.fc(x))


def identity_similarity(pred: Tensor, target: Tensor, net: IdentityNet) -> Tensor:
    """Per-pair cosine similarity of ArcFace embeddings, (N,), in [-1, 1]; 1 for identical faces."""
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(f"identity similarity needs pred and target of one NCHW shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    with torch.no_grad():
        return embedding_similarity(net(pred), net(target))


def embedding_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Per-row cosine similarity of two (N, D) embeddings, (N,), in [-1, 1]."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"identity similarity needs two (N, D) embeddings of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    return F.cosine_similarity(a.float(), b.float(), dim=1).clamp(-1.0, 1.0)


def id_accuracy(restored: Tensor, targets: Tensor, distance: str = "euclidean") -> float:
    """The share of restored embeddings (N, D) whose nearest of all N target embeddings is their own row,
    nearer than every other (ties are misses); `distance` "euclidean" or "cosine"."""
    if restored.ndim != 2 or restored.shape != targets.shape:
        raise ValueError(f"id_accuracy needs restored and target embeddings of one (N, D) shape, got "
                         f"{tuple(restored.shape)} and {tuple(targets.shape)}")
    distances = pairwise_distances(restored.double(), targets.double(), distance)  # row i: restored i to each target
    own = distances.diagonal()
    others = distances + torch.diag(torch.full_like(own, float("inf")))
    return (own < others.min(dim=1).values).double().mean().item()


def pairwise_distances(a: Tensor, b: Tensor, distance: str) -> Tensor:
    if distance == "euclidean":
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")  # exact: a face to itself is 0
    if distance == "cosine":
        return 1 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    raise ValueError(f"unknown embedding distance {distance!r}: 'euclidean' or 'cosine'")


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-2:] == (size, size):
        return x
    shrinking = min(x.shape[-2:]) > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)
