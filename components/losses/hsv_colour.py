"""HSV-space colour loss: per-channel weighted L1 between two RGB images in hue, saturation, value.

Used by CAFIN (Li et al. 2024) so a filled region matches the face's skin tone. Where the
channel weights come from, the hue-angle error and the chroma weighting of grey pixels (and
why): docs/methods.md, section "losses/hsv_colour.py".

In: prediction and target (N, 3, H, W), clamped to [0, 1] before kornia.color.rgb_to_hsv;
`mask` (N, 1, H, W), 1 = pixel to score, restricts every mean to the masked pixels (an all-zero
mask gives a zero loss). Out: w_h * mean(hue error) + w_s * mean(|ds|) + w_v * mean(|dv|), a
float32 scalar whatever the input dtype; each per-pixel error lies in [0, 1].
"""

from __future__ import annotations

import math

import torch
from kornia.color import rgb_to_hsv
from torch import Tensor


def hsv_colour_loss(pred: Tensor, target: Tensor, weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                    mask: Tensor | None = None) -> Tensor:
    """Weighted HSV L1 between RGB images `pred` and `target` (N, 3, H, W) in [0, 1]; see the module doc."""
    if pred.ndim != 4 or pred.shape[1] != 3 or pred.shape != target.shape:
        raise ValueError(f"hsv_colour_loss needs pred and target of one (N, 3, H, W) shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if len(weights) != 3 or any(w < 0 for w in weights):
        raise ValueError(f"hsv_colour_loss weights must be three non-negative numbers (h, s, v), got {weights}")
    if mask is not None and (mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != pred.shape[0]
                             or mask.shape[2:] != pred.shape[2:]):
        raise ValueError(f"hsv_colour_loss mask must be (N, 1, H, W) matching {tuple(pred.shape)}, "
                         f"got {tuple(mask.shape)}")
    hue_p, sat_p, val_p = rgb_to_hsv(pred.float().clamp(0.0, 1.0)).unbind(dim=1)
    hue_t, sat_t, val_t = rgb_to_hsv(target.float().clamp(0.0, 1.0)).unbind(dim=1)
    turn = (hue_p - hue_t).abs()
    hue_error = torch.minimum(turn, 2.0 * math.pi - turn) / math.pi
    chroma = torch.minimum(sat_p * val_p, sat_t * val_t).detach()
    errors = (chroma * hue_error, (sat_p - sat_t).abs(), (val_p - val_t).abs())
    total = pred.new_zeros((), dtype=torch.float32)
    for weight, error in zip(weights, errors):
        total = total + weight * _masked_mean(error, mask)
    return total


def _masked_mean(error: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of (N, H, W) `error` over all pixels, or over those where `mask` is 1."""
    if mask is None:
        return error.mean()
    weights = mask[:, 0].float()
    return (error * weights).sum() / weights.sum().clamp_min(1.0)
