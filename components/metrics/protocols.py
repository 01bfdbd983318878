"""Scoring protocols: the project's own metrics, and the scoring code of each paper it reproduces,
so a figure of ours can stand beside a paper's table.

A protocol turns predictions and targets, NCHW RGB, into per-image values {metric: (N,)}:
- `project`: PSNR, SSIM, L1 on RGB floats in [0, 1] (components/metrics/scoring.py); with a
  mask, also PSNR and L1 inside its holes. What the evaluate stage reports for every task.
- `ctcnet` (IVIPLab/CTCNet psnr_ssim.py): the luma of MATLAB's rgb2ycbcr,
  Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on 8-bit RGB, truncated to uint8; PSNR over
  Y with peak 255; SSIM on Y as scikit-image computes it with a Gaussian window (sigma 1.5, 11
  taps), population covariance and the uint8 data range 255.
- `edgeconnect` (knazeri/edge-connect scripts/metrics.py, scikit-image 0.14): grey =
  0.2125 R + 0.7154 G + 0.0721 B of the image in [0, 1], in float32; PSNR with data range 1;
  SSIM with a 51 x 51 uniform window, sample covariance, K1 0.01, K2 0.03, data range 1; and
  its "MAE", sum |a - b| / sum (a + b) over the grey image (a normalised error, not a mean).
  The whole image is scored: the script scores the saved composite, holes and known pixels.
- `panini` (jianzhangcs/panini, its mmediting's mmedit/core/evaluation/metrics.py `psnr`, with
  the configs' `crop_border=0`): PSNR over every RGB value of the 8-bit images, peak 255.

The papers scored saved 8-bit images, so a paper protocol scores uint8 values: it takes uint8
images as they are (files) and rounds float ones in [0, 1] (model outputs) to 8 bits first, as
PNG writing rounds (`components.data.schema.to_uint8`). It repeats its official code's
arithmetic, dtypes included (float32 where that code computes in float32), so its values agree
with that code to rounding. As there, identical images score +inf dB. An image smaller than
an SSIM window gets NaN SSIM, where the official code raises; `available_means` reports such a
metric as unavailable. A mask changes nothing under a paper protocol. The sources, file and
line: docs/methods.md, "Scoring protocols".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from components.data.edges import GREY_WEIGHTS
from components.data.schema import to_uint8
from components.metrics.report import PROJECT as PROJECT_NAME
from components.metrics.scoring import image_scores, inpainting_scores, mean_scores

PerImage = dict[str, Tensor]

# Wang et al. 2004's constants, scikit-image's defaults (K1, K2) and Gaussian window: sigma 1.5
# truncated at 3.5 sigma, i.e. radius int(3.5 * 1.5 + 0.5) = 5, 11 taps.
SSIM_K1, SSIM_K2 = 0.01, 0.03
GAUSSIAN_SIGMA, GAUSSIAN_TRUNCATE = 1.5, 3.5
GAUSSIAN_WINDOW = 2 * int(GAUSSIAN_TRUNCATE * GAUSSIAN_SIGMA + 0.5) + 1
EDGECONNECT_WINDOW = 51  # scripts/metrics.py: compare_ssim(..., win_size=51)

# MATLAB rgb2ycbcr's Y row on 8-bit values, written as psnr_ssim.py `rgb2y_matlab` writes it
# (the same float64 division and matmul, so the values truncated to uint8 are the same).
CTCNET_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
# scikit-image rgb2gray's weights (the edge maps' too), in the dtype of the float32 image
# edge-connect hands it.
EDGECONNECT_GREY_WEIGHTS = np.array(GREY_WEIGHTS, dtype=np.float32)


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str  # what it computes and whose code it repeats, for the report's notes
    eight_bit: bool  # scores the 8-bit images (a paper protocol) rather than floats in [0, 1]
    per_image: Callable[[Tensor, Tensor, Tensor | None], PerImage]

    def score(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> PerImage:
        """Per-image values of pred against target, NCHW RGB, uint8 or float in [0, 1]; `mask`
        (N, 1, H, W), 1 = hole, adds the project protocol's in-hole metrics."""
        _check_images(pred, target)
        if self.eight_bit:
            return self.per_image(as_uint8(pred), as_uint8(target), mask)
        return self.per_image(as_unit_float(pred), as_unit_float(target), mask)


def as_uint8(images: Tensor) -> Tensor:
    """uint8 images as they are; float ones in [0, 1] rounded to the 8-bit image saving writes."""
    return images if images.dtype == torch.uint8 else to_uint8(images)


def as_unit_float(images: Tensor) -> Tensor:
    """float images as they are; uint8 ones as floats in [0, 1] (the shards' decoding, /255)."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


def available_means(per_image: PerImage) -> dict[str, float | None]:
    """Each metric's mean over the images it scored; None (unavailable) where it scored none."""
    return {metric: None if math.isnan(value) else value for metric, value in mean_scores(per_image).items()}


# ---------------------------------------------------------------------------- project


def _project_per_image(pred: Tensor, target: Tensor, mask: Tensor | None) -> PerImage:
    if mask is None:
        return image_scores(pred, {"hq": target})
    return inpainting_scores(pred, {"hq": target, "mask": mask})


# ---------------------------------------------------------------------------- the papers'


def _each_image(score_one: Callable[[np.ndarray, np.ndarray], dict[str, float]]):
    """A protocol's per_image from a function of one uint8 H x W x 3 RGB pair: its values as
    float64 tensors; the mask is not used (the papers score the whole image)."""

    def per_image(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> PerImage:
        rows = [score_one(_hwc(p), _hwc(t)) for p, t in zip(pred, target)]
        metrics = rows[0] if rows else {}
        return {metric: torch.tensor([row[metric] for row in rows], dtype=torch.float64) for metric in metrics}

    return per_image


def _hwc(image: Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.detach().cpu().permute(1, 2, 0).numpy())


def ctcnet_y(rgb: np.ndarray) -> np.ndarray:
    """uint8 H x W: the Y of a uint8 H x W x 3 RGB image, truncated to uint8 as `rgb2y_matlab`
    does (`astype(np.uint8)`), not rounded."""
    return (16 + np.matmul(rgb, CTCNET_Y_WEIGHTS)).astype(np.uint8)


def ctcnet_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    pred_y, target_y = ctcnet_y(pred), ctcnet_y(target)
    mse = float(np.mean(np.square(pred_y.astype(np.float64) - target_y.astype(np.float64))))
    # SSIM of uint8 images: scikit-image takes the data range from the dtype, 255.
    return {"psnr": _psnr(mse, 255.0),
            "ssim": ssim_like_skimage(pred_y, target_y, data_range=255.0, window=GAUSSIAN_WINDOW, gaussian=True,
                                      sample_covariance=False)}


def edgeconnect_grey(rgb: np.ndarray) -> np.ndarray:
    """float32 H x W: scikit-image's rgb2gray of the image read as edge-connect reads it,
    `(imread / 255.0).astype(np.float32)`."""
    return (rgb / 255.0).astype(np.float32) @ EDGECONNECT_GREY_WEIGHTS


def edgeconnect_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    pred_grey, target_grey = edgeconnect_grey(pred), edgeconnect_grey(target)
    # compare_psnr: float32 differences, their squares averaged in float64.
    mse = float(np.mean(np.square(target_grey - pred_grey), dtype=np.float64))
    # compare_mae: float32 sums, as the script's own function computes them.
    mae = np.sum(np.abs(target_grey - pred_grey)) / np.sum(target_grey + pred_grey)
    return {"psnr": _psnr(mse, 1.0),
            "ssim": ssim_like_skimage(pred_grey, target_grey, data_range=1.0, window=EDGECONNECT_WINDOW,
                                      gaussian=False, sample_covariance=True),
            "mae": float(mae)}


def panini_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    # mmediting's tensor2img hands `psnr` H x W x 3 BGR uint8; `psnr` casts to float32 and averages
    # the squared errors in float32, so the values are summed in that memory order.
    pred_bgr, target_bgr = (np.ascontiguousarray(image[..., ::-1]).astype(np.float32) for image in (pred, target))
    mse = np.mean((pred_bgr - target_bgr) ** 2)
    if mse == 0:
        return {"psnr": math.inf}
    # 20 log10(255 / sqrt(mse)): the root in float32, the rest in float64 (NumPy 1.x promotion of
    # a float32 scalar divided into a Python float, the NumPy of the official code).
    return {"psnr": float(20.0 * np.log10(255.0 / np.float64(np.sqrt(mse))))}


def _psnr(mse: float, peak: float) -> float:
    return math.inf if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


def ssim_like_skimage(x: np.ndarray, y: np.ndarray, data_range: float, window: int, gaussian: bool,
                      sample_covariance: bool) -> float:
    """Mean SSIM of two H x W images computed as scikit-image does: in float64; local means,
    variances and covariance from a Gaussian filter (sigma 1.5, truncate 3.5) or a `window` x
    `window` uniform filter, both with 'reflect' borders; variances scaled by n / (n - 1) with
    `sample_covariance` (n = window^2); the SSIM map averaged after cutting (window - 1) / 2
    pixels off every side. NaN when a side is shorter than the window (scikit-image raises)."""
    from scipy.ndimage import gaussian_filter, uniform_filter

    if min(x.shape) < window:
        return math.nan
    if gaussian:
        local_mean = functools.partial(gaussian_filter, sigma=GAUSSIAN_SIGMA, truncate=GAUSSIAN_TRUNCATE, mode="reflect")
    else:
        local_mean = functools.partial(uniform_filter, size=window, mode="reflect")
    x, y = x.astype(np.float64), y.astype(np.float64)
    points = window**x.ndim
    covariance_scale = points / (points - 1) if sample_covariance else 1.0
    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = covariance_scale * (local_mean(x * x) - mean_x * mean_x)
    var_y = covariance_scale * (local_mean(y * y) - mean_y * mean_y)
    cov_xy = covariance_scale * (local_mean(x * y) - mean_x * mean_y)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    border = (window - 1) // 2
    inside = tuple(slice(border, side - border) for side in ssim_map.shape)
    return float(ssim_map[inside].mean(dtype=np.float64))


def _check_images(pred: Tensor, target: Tensor) -> None:
    if pred.ndim != 4 or pred.shape[1] != 3 or pred.shape != target.shape:
        raise ValueError(f"a protocol scores RGB images of one (N, 3, H, W) shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")


PROJECT = Protocol(
    PROJECT_NAME, "the project's PSNR / SSIM / L1 on RGB floats in [0, 1] (and in the holes)", eight_bit=False,
    per_image=_project_per_image)
CTCNET = Protocol(
    "ctcnet", "IVIPLab/CTCNet psnr_ssim.py: PSNR and SSIM (Gaussian 11x11, sigma 1.5) on the 8-bit BT.601 Y, "
    "truncated to uint8", eight_bit=True, per_image=_each_image(ctcnet_scores))
EDGECONNECT = Protocol(
    "edgeconnect", "knazeri/edge-connect scripts/metrics.py: PSNR, SSIM (51x51 uniform window) and "
    "MAE = sum|a-b| / sum(a+b) on the grey image in [0, 1], whole image; SSIM needs 51 px sides",
    eight_bit=True, per_image=_each_image(edgeconnect_scores))
PANINI = Protocol(
    "panini", "jianzhangcs/panini (mmediting metrics.py psnr, crop_border 0): PSNR over the 8-bit RGB values",
    eight_bit=True, per_image=_each_image(panini_scores))

PROTOCOLS: dict[str, Protocol] = {protocol.name: protocol for protocol in (PROJECT, CTCNET, EDGECONNECT, PANINI)}


def protocol_named(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown scoring protocol '{name}' (known: {', '.join(PROTOCOLS)})")
    return PROTOCOLS[name]
