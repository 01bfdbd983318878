"""PatchNCE: the patch-wise contrastive loss of CUT, with its patch sampler and projection head.

Park, Efros, Zhang, Zhu 2020 (CUT), section 3.2: a patch of the output should match the patch
at the same location of the input and no other sampled patch of that image, an InfoNCE over
`P` candidates per query at several encoder layers. The facts taken from the official code and
the departures: docs/methods.md, section "losses/patchnce.py".

Shapes: `loss(query, positive_key)`, both (N, P, C), L2-normalised along C; returns the
scalar float32 mean over the N * P queries. The sampler draws `num_patches` = 256 locations
per layer, shared by every image of the batch; each layer has its own 2-layer MLP head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INIT_GAIN = 0.02  # CUT base_options.py --init_gain, with --init_type xavier


class PatchNCELoss(nn.Module):
    """Cross-entropy of each query over its own location's key (positive) and the other P-1 keys."""

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"PatchNCE temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, query: Tensor, positive_key: Tensor) -> Tensor:
        if query.ndim != 3 or query.shape != positive_key.shape:
            raise ValueError(f"PatchNCELoss needs query and key of one shape (N, P, C), got "
                             f"{tuple(query.shape)} and {tuple(positive_key.shape)}")
        query = query.float()
        key = positive_key.detach().float()  # the input's patches are targets, as in CUT
        logits = torch.bmm(query, key.transpose(1, 2)) / self.temperature  # (N, P, P): row i = query i
        n, p, _ = logits.shape
        own_location = torch.arange(p, device=logits.device).repeat(n)
        return F.cross_entropy(logits.reshape(n * p, p), own_location)

    def loss(self, query: Tensor, positive_key: Tensor) -> Tensor:
        """The same as calling the module."""
        return self(query, positive_key)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def sample_locations(features: Sequence[Tensor], num_patches: int) -> list[Tensor]:
    """Per feature map, up to `num_patches` distinct flat positions (h * W + w) drawn at random.

    Draw them once from the key maps and reuse them for the query maps, so a query and its
    positive come from the same location. The draw is on the CPU generator (CUT draws with
    numpy for the same reason: CUDA's randperm misbehaved for them), then moved to the map's device.
    """
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    locations = []
    for feature in features:
        positions = feature.shape[2] * feature.shape[3]
        locations.append(torch.randperm(positions)[:min(num_patches, positions)].to(feature.device))
    return locations


def gather_patches(feature: Tensor, locations: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, P, C): the feature vectors at the given flat positions."""
    return feature.flatten(2).transpose(1, 2)[:, locations, :]


class PatchProjection(nn.Module):
    """CUT's `PatchSampleF` head: one Linear-ReLU-Linear per layer, outputs L2-normalised.

    Args:
        channels: the channel count of each encoder layer's features, in order.
        dim: embedding size (CUT `--netF_nc` 256).

    forward(features, locations) -> list of (N, P, dim) float32 unit vectors, one per layer.
    """

    def __init__(self, channels: Sequence[int], dim: int = 256):
        super().__init__()
        if not channels or any(c < 1 for c in channels) or dim < 1:
            raise ValueError(f"PatchProjection needs positive channel counts and dim, got {list(channels)}, {dim}")
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(c, dim), nn.ReLU(), nn.Linear(dim, dim)) for c in channels)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight, gain=INIT_GAIN)
                nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[Tensor], locations: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.mlps) or len(locations) != len(self.mlps):
            raise ValueError(f"PatchProjection has {len(self.mlps)} layers, got {len(features)} feature maps and "
                             f"{len(locations)} location sets")
        return [F.normalize(mlp(gather_patches(feature, where)).float(), dim=-1)
                for mlp, feature, where in zip(self.mlps, features, locations)]
