"""Per-image full-reference metrics: PSNR, SSIM, L1.

Convention: `pred` and `target` are float NCHW RGB tensors with data range 1 ([0, 1]); each
function returns a 1-D float32 tensor of N values, one per image, so the evaluate stage can
average, compare per sample, or take a median. Metrics are computed on RGB, not on the Y
channel some super-resolution papers report.

- PSNR = 10 log10(data_range^2 / MSE) per image; MSE is floored at 1e-10 * data_range^2, so
  identical images score 100 dB and a test-set mean stays finite.
- SSIM (Wang et al. 2004) with the paper's window and constants, via kornia.metrics.ssim.
- L1 = mean absolute error per image.

`mask` (N, 1, H, W), 1 = pixel to score, restricts PSNR and L1 to the masked pixels (the
holes of inpainting). An image whose mask is empty has nothing to score and gives NaN;
average such results with torch.nanmean. The settings, and where they differ from kornia's
own reductions: docs/methods.md, section "metrics/image_quality.py".
"""

from __future__ import annotations

import kornia
import torch
from torch import Tensor

SSIM_WINDOW = 11  # Wang et al. 2004, with sigma 1.5 fixed inside kornia.metrics.ssim
MSE_FLOOR = 1e-10  # relative to data_range^2: caps PSNR at 100 dB


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Per-image PSNR in dB, (N,); over the masked pixels only when `mask` is given."""
    _check_pair(pred, target)
    mse = _per_image_mean((pred.float() - target.float()) ** 2, pred, target, mask)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(MSE_FLOOR * data_range**2))


def ssim(pred: Tensor, target: Tensor, window: int = SSIM_WINDOW, data_range: float = 1.0) -> Tensor:
    """Per-image mean SSIM, (N,); 1 for identical images."""
    _check_pair(pred, target)
    if window % 2 == 0 or window < 1:
        raise ValueError(f"SSIM window must be a positive odd number of taps, got {window}")
    if min(pred.shape[2:]) <= window // 2:
        raise ValueError(f"SSIM with window {window} needs H and W above {window // 2}, got {tuple(pred.shape[2:])}")
    ssim_map = kornia.metrics.ssim(pred.float(), target.float(), window, max_val=data_range, eps=0.0)
    return ssim_map.mean(dim=(1, 2, 3))


def l1(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-image mean absolute error, (N,); over the masked pixels only when `mask` is given."""
    _check_pair(pred, target)
    return _per_image_mean((pred.float() - target.float()).abs(), pred, target, mask)


def _per_image_mean(values: Tensor, pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return values.mean(dim=(1, 2, 3))
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:]:
        raise ValueError(f"mask must be (N, 1, H, W) matching {tuple(pred.shape)}, got {tuple(mask.shape)}")
    weights = mask.to(values.dtype).expand_as(values)
    count = weights.sum(dim=(1, 2, 3))
    total = (values * weights).sum(dim=(1, 2, 3))
    return torch.where(count > 0, total / count.clamp_min(1.0), torch.full_like(total, float("nan")))


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(f"metrics need pred and target of one NCHW shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
