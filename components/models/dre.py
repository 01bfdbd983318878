"""Panini-Net's degradation representation encoder (DRE), pretrained with MoCo and InfoNCE.

Wang, Hu, Zhang 2022 (AAAI), section "Unsupervised Degradation Representation Learning";
official code jianzhangcs/panini `moco/`; MoCo (He et al. 2020); the encoder is DASR's. The
source of every layer, MoCo setting and recipe number, the distributed details and the
parameter count: docs/methods.md, section "dre".

Task "representation", an upstream model for Panini-Net (`restore` raises). Reads only `hq`
(N, 3, H, W) in [0, 1]. Each step draws one set of degradation parameters per pair and applies
it to two DIFFERENT faces (query and key: the positive pair); the queue of earlier keys are the
negatives; the loss is InfoNCE (`components.losses.infonce`). The draws are seeded by (config
seed, step, rank), so a resumed run draws what the first run drew.

`represent(lq)` -> (N, 4 * width) = (N, 256): the query encoder's pooled feature before the
MLP head, not normalised, in eval mode: what Panini-Net's DAFI blocks take. Networks
(components/networks/dre.py): "encoder" (the query encoder, trained) and "key_encoder"
(`MomentumKeyEncoder`: the momentum copy, never wrapped in DDP, plus the queue (K, dim) and its
pointer as buffers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.optim import Optimizer

from components.data.degrade import DegradationConfig, DegradationParams, sample_degradation
from components.data.degrade_gpu import degrade_batch
from components.losses.infonce import contrastive_logits, info_nce
from components.metrics.knn import knn_accuracy
from components.models.base import Method, MethodConfig, NotARestorer
from components.networks.dre import DegradationEncoder, MomentumKeyEncoder


VALIDATION_BATCH = 32


class DREConfig(MethodConfig):
    lr: float = Field(0.03, gt=0, description="learning rate; 0.03 is main_moco.py's SGD lr (README 'Train Moco')")
    optimizer: Literal["sgd", "adam"] = Field(
        "sgd", description="'sgd' (the official recipe: momentum, weight decay) or 'adam' (lr and betas)")
    sgd_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (main_moco.py --momentum)")
    weight_decay: float = Field(1e-4, ge=0, description="SGD weight decay (main_moco.py --wd)")
    width: int = Field(64, gt=0, description="first conv's channels; the six convs have 1, 1, 2, 2, 4, 4 x width")
    dim: int = Field(256, gt=0, description="MoCo feature dimension: the MLP head's output (builder.py dim)")
    queue_size: int = Field(8192, gt=0, description="negatives kept in the queue (builder.py K = 32 * 256)")
    momentum: float = Field(0.999, description="key encoder momentum m in k = m k + (1 - m) q (builder.py m)")
    temperature: float = Field(0.07, gt=0, description="InfoNCE temperature T (builder.py T)")
    input_size: int | None = Field(
        256, gt=0, description="images are average-pooled to this square size first (panini.py); None keeps them")
    degradation: DegradationConfig = Field(
        default_factory=DegradationConfig, description="ranges each pair's degradation is drawn from")
    seed: int = Field(0, description="seed of the degradations drawn in training_step (with the step and rank)")

    @field_validator("momentum")
    @classmethod
    def _momentum_in_unit_interval(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"momentum must lie in [0, 1) (1 would freeze the key encoder), got {value}")
        return value


@dataclass(frozen=True)
class DegradedPairs:
    """One step's pairs: `queries[i]` is face i, `keys[i]` is face `partner[i]`, both degraded
    with `params[i]`; float32 (N, 3, H, W) in [0, 1]."""

    queries: Tensor
    keys: Tensor
    params: list[DegradationParams]
    partner: list[int]


class DRE(Method):
    """Panini-Net's degradation representation encoder, pretrained with MoCo (see the module docstring)."""

    name: ClassVar[str] = "dre"
    task: ClassVar[str] = "representation"
    inputs: ClassVar[tuple[str, ...]] = ("hq",)
    averaged: ClassVar[tuple[str, ...]] = ()  # the key encoder is already MoCo's momentum average
    validation_columns: ClassVar[tuple[str, ...]] = ("lq",)
    Config: ClassVar[type[DREConfig]] = DREConfig
    cfg: DREConfig
    _replicas_synced: bool = False  # set per instance once rank 0's key side is broadcast

    def build_networks(self) -> dict[str, nn.Module]:
        cfg = self.cfg
        query = DegradationEncoder(cfg.width, cfg.dim, cfg.input_size)
        key = DegradationEncoder(cfg.width, cfg.dim, cfg.input_size)
        key.load_state_dict(query.state_dict())  # builder.py: the key encoder starts as a copy
        return {"encoder": query, "key_encoder": MomentumKeyEncoder(key, cfg.queue_size, cfg.dim)}

    def build_optimizers(self) -> dict[str, Optimizer]:
        if self.cfg.optimizer == "adam":
            return {"encoder": self.adam("encoder")}
        return {"encoder": torch.optim.SGD(self.nets["encoder"].parameters(), lr=self.cfg.lr,
                                           momentum=self.cfg.sgd_momentum, weight_decay=self.cfg.weight_decay)}

    # -- training ------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        self._sync_replicas_once()
        pairs = self.degraded_pairs(batch["hq"].to(self.device), step)
        key_side: MomentumKeyEncoder = self.nets["key_encoder"]
        opt = self.opts["encoder"]
        opt.zero_grad(set_to_none=True)
        query = F.normalize(self.nets["encoder"](pairs.queries)[1].float(), dim=1)
        with torch.no_grad():
            key_side.momentum_update(self.unwrapped("encoder"), self.cfg.momentum)
            keys = self._encode_keys(pairs.keys)
        negatives = key_side.queue.clone()
        loss = info_nce(query, keys, negatives, self.cfg.temperature)
        loss.backward()
        opt.step()
        key_side.enqueue(_gather_from_all_ranks(keys))
        with torch.no_grad():
            top1 = (contrastive_logits(query, keys, negatives).argmax(dim=1) == 0).float().mean()
        value = loss.item()
        return {"loss": value, "infonce": value, "positive_top1": top1.item()}

    def degraded_pairs(self, hq: Tensor, step: int) -> DegradedPairs:
        """Face i and face partner[i] (partner a derangement) degraded with the same fresh params[i].

        Drawn from numpy / torch generators seeded by (cfg.seed, step, rank): the same step gives
        the same pairs on a resumed run; each rank draws its own. Degraded in float32 (autocast
        off: bf16 would coarsen the 0-255 blur sums).
        """
        n = hq.shape[0]
        if n < 2:
            raise ValueError(f"dre pairs two different faces of a batch, so it needs batch_size >= 2, got {n}")
        rng = np.random.default_rng([self.cfg.seed, step, _rank()])
        params = [sample_degradation(rng, self.cfg.degradation) for _ in range(n)]
        partner = derangement(n, rng)
        noise = torch.Generator(device=hq.device).manual_seed(int(rng.integers(2**62)))
        with torch.autocast(hq.device.type, enabled=False):
            faces = torch.cat([hq, hq[partner]]).float() * 255.0
            degraded = degrade_batch(faces, params + params, noise).float() / 255.0
        return DegradedPairs(degraded[:n], degraded[n:], params, partner)

    def _encode_keys(self, images: Tensor) -> Tensor:
        """(N, dim) normalised keys of this rank's images; across ranks, with MoCo's shuffle BN
        (builder.py `_batch_shuffle_ddp` / `_batch_unshuffle_ddp`)."""
        key_side = self.nets["key_encoder"]
        if not _distributed():
            return key_side(images)
        world, rank = dist.get_world_size(), dist.get_rank()
        everything = _gather_from_all_ranks(images)
        order = torch.randperm(everything.shape[0]).to(images.device)
        dist.broadcast(order, src=0)
        mine = order.view(world, -1)[rank]
        keys = _gather_from_all_ranks(key_side(everything[mine]))
        return keys[torch.argsort(order).view(world, -1)[rank]]

    def _sync_replicas_once(self) -> None:
        """Rank 0's key encoder and queue on every rank (each built its own random copy)."""
        if self._replicas_synced or not _distributed():
            return
        key_side = self.unwrapped("key_encoder")
        for tensor in [*key_side.parameters(), *key_side.buffers()]:
            dist.broadcast(tensor.data, src=0)
        self._replicas_synced = True

    # -- inference -----------------------------------------------------------------------
    def represent(self, lq: Tensor) -> Tensor:
        """(N, 4 * width) float32 degradation vector of `lq` (N, 3, H, W) in [0, 1]: the query
        encoder's pooled feature in eval mode, NOT L2-normalised (what Panini-Net consumes)."""
        with self.evaluating():
            return self.unwrapped("encoder").represent(lq.to(self.device)).float()

    def validation_scores(self, data: dict[str, Tensor], groups: Mapping[str, list[str]]) -> dict[str, float]:
        """`knn_accuracy`: the degraded faces' vectors, labelled by their degradation level (the
        shards' own degradation parameters), classified by their 5 nearest neighbours."""
        vectors = torch.cat([self.represent(chunk) for chunk in data["lq"].split(VALIDATION_BATCH)])
        return {"knn_accuracy": knn_accuracy(vectors, groups["degradation_level"], k=5)}

    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotARestorer(
            "method 'dre' is a degradation representation encoder (task 'representation'), not an image "
            "restorer: call DRE.represent(lq) for the (N, 4 * width) degradation vector Panini-Net consumes")


def derangement(n: int, rng: np.random.Generator) -> list[int]:
    """A random permutation with no fixed point (n >= 2): a random n-cycle, so no face is its own partner."""
    order = rng.permutation(n)
    partner = [0] * n
    for i in range(n):
        partner[order[i]] = int(order[(i + 1) % n])
    return partner


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def _gather_from_all_ranks(tensor: Tensor) -> Tensor:
    """Every rank's `tensor` concatenated in rank order (builder.py `concat_all_gather`); no gradient."""
    if not _distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
