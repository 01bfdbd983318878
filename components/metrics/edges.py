"""How well a predicted edge map matches the target edges inside the holes: precision, recall, F1.

EdgeConnect (Nazeri et al. 2019, Table 1 / src/metrics.py EdgeAccuracy) scores its edge
generator by precision and recall of the binarised prediction (threshold 0.5) against the
Canny edges of the ground truth; scored here only where the mask is 1, since the known
region's edges are given to the generator. Per image, (N,) each; an image with no target and
no predicted edge in its holes scores precision = recall = F1 = 1 (nothing was missed or
invented), one with edges on one side only scores 0 where undefined.
"""

from __future__ import annotations

import torch
from torch import Tensor

EDGE_THRESHOLD = 0.5  # EdgeConnect's EdgeAccuracy threshold


def edge_scores(pred: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """{"precision", "recall", "f1"}: (N,) each, over the pixels where `mask` is 1."""
    if pred.shape != target.shape or pred.shape[1] != 1 or mask.shape != pred.shape:
        raise ValueError(f"edge_scores needs pred, target and mask of one (N, 1, H, W) shape, got "
                         f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}")
    inside = mask > 0.5
    predicted = (pred > EDGE_THRESHOLD) & inside
    actual = (target > EDGE_THRESHOLD) & inside
    hits = (predicted & actual).sum(dim=(1, 2, 3)).float()
    n_predicted = predicted.sum(dim=(1, 2, 3)).float()
    n_actual = actual.sum(dim=(1, 2, 3)).float()
    both_empty = (n_predicted == 0) & (n_actual == 0)
    precision = torch.where(n_predicted > 0, hits / n_predicted.clamp_min(1), both_empty.float())
    recall = torch.where(n_actual > 0, hits / n_actual.clamp_min(1), both_empty.float())
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                     torch.zeros_like(precision))
    return {"precision": precision, "recall": recall, "f1": f1}
