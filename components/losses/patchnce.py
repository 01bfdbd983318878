"""PatchNCE: the patch-wise contrastive loss of CUT, with its patch sampler and projection head.

Paper: Park, Efros, Zhang, Zhu 2020, "Contrastive Learning for Unpaired Image-to-Image
Translation" (CUT), ECCV, section 3.2. A patch of the output should be most similar to the
patch at the same location of the input (the positive) and unlike the input's patches at the
other sampled locations of the same image (the negatives): an InfoNCE cross-entropy over
`P` candidates per query, at several layers of the generator's encoder.

Facts taken from the official code (taesungp/contrastive-unpaired-translation):
- models/patchnce.py `PatchNCELoss`: logits are dot products of L2-normalised embeddings
  divided by the temperature `nce_T` = 0.07 (models/cut_model.py option default); the key
  (input) side is detached; negatives come from the same image only
  (`nce_includes_all_negatives_from_minibatch` False for CUT); the positive is the query's own
  location.
- models/networks.py `PatchSampleF` (`--netF mlp_sample`): the same random locations are
  drawn for the query and the key feature maps, shared by every image of the batch,
  `num_patches` = 256 per layer (fewer when the map has fewer positions); each layer has its
  own 2-layer MLP, Linear(C, 256) - ReLU - Linear(256, 256) (`netF_nc` = 256), applied before
  L2 normalisation; weights Xavier-normal with gain 0.02, biases zero (base_options.py
  `init_type xavier`, `init_gain 0.02`).

Departures from the official code:
- The self-comparison (a query against its own key, which is the positive) is not repeated
  among the negatives: CUT fills that diagonal entry with -10 before dividing by 0.07, which
  leaves it a weight of exp(-143), i.e. none. The logits here are the full query-key matrix
  of one image with the positive on its diagonal: exactly `P - 1` negatives.
- L2 normalisation through `F.normalize` (norm clamped at 1e-12) in float32, where CUT
  divides by (norm + 1e-7): equal but for vectors of near-zero norm.
- The MLPs are built from the known channel counts instead of lazily at the first forward.

Shapes: `loss(query, positive_key)`, both (N, P, C), L2-normalised along C; returns the
scalar float32 mean over the N * P queries.
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
