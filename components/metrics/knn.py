"""k-NN accuracy of a representation: how often a sample's nearest neighbours share its label.

Leave-one-out over one set: each sample is classified by the majority label of its `k` nearest
others by cosine similarity (ties go to the nearest neighbour's label), the usual check of a
self-supervised encoder without training a classifier (InstDisc / MoCo's k-NN monitor).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor


def knn_accuracy(features: Tensor, labels: Sequence[str], k: int = 5) -> float:
    """features (N, D); the share of samples whose k-NN vote (among the other N - 1) is their label."""
    n = len(labels)
    if features.shape[0] != n or n < 2:
        raise ValueError(f"k-NN accuracy needs at least 2 samples with one label each, got {features.shape[0]} "
                         f"features and {n} labels")
    unit = F.normalize(features.float(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-float("inf"))
    neighbours = similarity.topk(min(k, n - 1), dim=1).indices.tolist()
    correct = 0
    for i, row in enumerate(neighbours):
        votes = Counter(labels[j] for j in row)
        top = max(votes.values())
        winner = next(labels[j] for j in row if votes[labels[j]] == top)  # nearest of the tied labels
        correct += winner == labels[i]
    return correct / n
