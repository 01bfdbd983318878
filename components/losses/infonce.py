"""InfoNCE: the contrastive loss of MoCo, one positive key against a bank of negatives.

    L_q = -log( exp(q . k+ / T) / (exp(q . k+ / T) + sum_i exp(q . k_i / T)) )

(van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding", eq. 4;
He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning", eq. 1.)
It is the cross-entropy of a (1 + K)-way classification whose right answer is the positive
key, placed at index 0, as facebookresearch/moco (moco/builder.py `MoCo.forward`) builds its
logits; the loss is the mean over the queries of the batch.

Used by the degradation representation encoder (components/models/dre.py, Panini-Net's DRE):
the query and its positive are two different faces given the same degradation; the negatives
are the queue of earlier keys.

Tensors: `query` and `positive_key` (N, C), `negatives` (K, C), every row L2-normalised by
the caller (the dot products are then cosine similarities in [-1, 1]). Computed in float32
whatever the inputs' dtype (bf16 under the training loop's autocast is too coarse for a
softmax over thousands of logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(query: Tensor, positive_key: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """Scalar float32 mean InfoNCE of `query` against `positive_key` (index 0) and `negatives`."""
    if query.ndim != 2 or positive_key.shape != query.shape or negatives.ndim != 2 \
            or negatives.shape[1] != query.shape[1]:
        raise ValueError(f"info_nce needs query and positive_key (N, C) and negatives (K, C), got "
                         f"{tuple(query.shape)}, {tuple(positive_key.shape)} and {tuple(negatives.shape)}")
    if not temperature > 0:
        raise ValueError(f"info_nce temperature must be > 0, got {temperature}")
    logits = contrastive_logits(query, positive_key, negatives) / temperature
    target = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target)


def contrastive_logits(query: Tensor, positive_key: Tensor, negatives: Tensor) -> Tensor:
    """(N, 1 + K) float32 similarities: column 0 = q . k+, then q . k_i for each negative."""
    query, positive_key, negatives = query.float(), positive_key.float(), negatives.float()
    positive = (query * positive_key).sum(dim=1, keepdim=True)
    return torch.cat([positive, query @ negatives.T], dim=1)
