"""The batched kornia / torch degradation against the OpenCV engine, one operation at a time.

Tolerances are mean absolute differences on the 0-255 scale, with margin over what was
measured (see `components/data/degrade_gpu.py`).
"""

import cv2
import numpy as np
import pytest
import torch

from components.data import degrade_gpu
from components.data.degrade import (
    DegradationConfig,
    DegradationParams,
    degrade,
    gaussian_kernel,
    sample_degradation,
)
from components.data.faces import render_face


def _params(**overrides) -> DegradationParams:
    fields = dict(
        kernel_size=41, sigma_x=2.5, sigma_y=1.2, theta=0.6, scale=2.0, noise_sigma=0.0, jpeg_quality=90
    )
    return DegradationParams(**{**fields, **overrides})


def _batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _image(batch: torch.Tensor, index: int = 0) -> np.ndarray:
    return batch[index].permute(1, 2, 0).numpy()


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def _opencv_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    _, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _noise_free(params: DegradationParams, **overrides) -> DegradationParams:
    return DegradationParams(**{**params.to_row(), "noise_sigma": 0.0, **overrides})


@pytest.mark.parametrize("height, width", [(64, 48), (8, 13)])
def test_blur_matches_cv2_filter2d_with_reflect101_border(height, width):
    # 8 x 13 is smaller than the 41 px kernel's half-width: the border must reflect repeatedly.
    image = cv2.resize(render_face(0, 64).image, (width, height), interpolation=cv2.INTER_AREA)
    params = [_params(), _params(sigma_x=0.7, sigma_y=0.7, theta=0.0)]
    ours = degrade_gpu.blur(_batch(image, image).float(), params)
    for i, p in enumerate(params):
        kernel = gaussian_kernel(p.kernel_size, p.sigma_x, p.sigma_y, p.theta)
        assert _mad(_image(ours, i), cv2.filter2D(image.astype(np.float32), -1, kernel)) < 0.01


def test_blur_with_mixed_kernel_sizes_filters_each_with_its_own():
    image = render_face(1, 48).image.astype(np.float32)
    params = [_params(kernel_size=41), _params(kernel_size=7)]
    ours = degrade_gpu.blur(_batch(image, image), params)
    for i, p in enumerate(params):
        kernel = gaussian_kernel(p.kernel_size, p.sigma_x, p.sigma_y, p.theta)
        assert _mad(_image(ours, i), cv2.filter2D(image, -1, kernel)) < 0.01


@pytest.mark.parametrize("scale", [0.8, 1.0, 1.7, 2.0, 3.3, 7.9])
def test_downsample_and_resize_back_match_cv2_inter_linear(scale):
    image = render_face(2, 64).image.astype(np.float32)
    height, width = degrade_gpu.downscaled_size(64, 64, scale)
    small = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    assert _mad(_image(degrade_gpu.downsample(_batch(image), (height, width))), small) < 0.01
    back = cv2.resize(small, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert _mad(_image(degrade_gpu.resize_back(_batch(small), (64, 64))), back) < 0.01


def test_downscaled_size_floors_and_keeps_at_least_one_pixel():
    assert degrade_gpu.downscaled_size(64, 48, 3.3) == (19, 14)
    # Python's float floor division, as `degrade` uses: 0.8 is stored a hair above 0.8.
    assert degrade_gpu.downscaled_size(64, 48, 0.8) == (79, 59)
    assert degrade_gpu.downscaled_size(4, 4, 8.0) == (1, 1)


@pytest.mark.parametrize("quality", [60, 80, 95])
def test_jpeg_costs_within_1_5_db_of_opencv(quality):
    for seed, size in [(3, 64), (4, 48), (5, 16)]:
        image = render_face(seed, size).image
        ours = _image(degrade_gpu.jpeg(_batch(image).float(), [quality]))
        theirs = _opencv_jpeg(image, quality)
        assert abs(_psnr(image, ours) - _psnr(image, theirs)) < 1.5, (seed, size, quality)
        assert np.array_equal(ours, np.round(ours)) and ours.min() >= 0 and ours.max() <= 255


def test_jpeg_applies_each_samples_own_quality():
    image = render_face(6, 64).image
    out = degrade_gpu.jpeg(_batch(image, image).float(), [20, 100])
    assert _psnr(image, _image(out, 0)) < _psnr(image, _image(out, 1)) - 3


@pytest.mark.parametrize("sigma", [5.0, 15.0])
def test_noise_std_matches_sigma(sigma):
    grey = torch.full((4, 3, 64, 64), 128.0)  # far from 0 and 255, so clipping stays negligible
    generator = torch.Generator().manual_seed(0)
    noisy = degrade_gpu.add_noise(grey, [sigma] * 4, generator)
    assert (noisy - grey).std().item() == pytest.approx(sigma, rel=0.03)
    assert abs((noisy - grey).mean().item()) < 0.1 * sigma


def test_noise_is_per_sample_and_clipped():
    images = torch.full((2, 3, 32, 32), 250.0)
    noisy = degrade_gpu.add_noise(images, [0.0, 20.0], torch.Generator().manual_seed(0))
    assert torch.equal(noisy[0], images[0])
    assert noisy.max().item() <= 255 and (noisy[1] != images[1]).any()


def test_degrade_batch_without_noise_matches_degrade():
    rng = np.random.default_rng(0)
    cfg = DegradationConfig(scale=(1.0, 4.0))
    images = [render_face(seed, 64).image for seed in range(6)]
    params = [_noise_free(sample_degradation(rng, cfg)) for _ in images]
    ours = degrade_gpu.degrade_batch(_batch(*images), params)
    diffs = [
        _mad(_image(ours, i), degrade(image, p, np.random.default_rng(0)))
        for i, (image, p) in enumerate(zip(images, params))
    ]
    # Measured: mean 1.3, worst 2.6 over 30 faces; all of it is the JPEG codec.
    assert np.mean(diffs) < 2.0 and max(diffs) < 4.0, diffs


def test_degrade_batch_without_noise_or_jpeg_loss_matches_degrade_closely():
    rng = np.random.default_rng(1)
    images = [render_face(seed, 64).image for seed in range(4)]
    params = [_noise_free(sample_degradation(rng, DegradationConfig()), jpeg_quality=100) for _ in images]
    ours = degrade_gpu.degrade_batch(_batch(*images), params)
    for i, (image, p) in enumerate(zip(images, params)):
        # Measured worst 1.0 at 64 px: the codec's chroma upsampling and soft rounding.
        assert _mad(_image(ours, i), degrade(image, p, np.random.default_rng(0))) < 1.5


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_degrade_batch_returns_uint8_of_the_input_shape(dtype):
    images = _batch(render_face(7, 48).image, render_face(8, 48).image).to(dtype)
    params = [_params(scale=1.5, noise_sigma=10.0), _params(scale=5.0, jpeg_quality=60)]
    out = degrade_gpu.degrade_batch(images, params, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.device == images.device


def test_degrade_batch_is_deterministic_with_a_seeded_generator():
    images = _batch(*[render_face(seed, 32).image for seed in range(3)])
    params = [_params(noise_sigma=10.0, scale=s) for s in (1.0, 2.0, 2.0)]

    def run(seed: int) -> torch.Tensor:
        return degrade_gpu.degrade_batch(images, params, torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_batch_equals_its_samples_degraded_one_by_one_from_the_same_generator():
    images = _batch(*[render_face(seed, 32).image for seed in range(3)])
    settings = [(1.0, 70), (3.0, 90), (1.0, 80)]
    params = [_params(noise_sigma=8.0, scale=s, jpeg_quality=q) for s, q in settings]
    batched = degrade_gpu.degrade_batch(images, params, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    one_by_one = torch.cat(
        [degrade_gpu.degrade_batch(images[i : i + 1], [p], generator) for i, p in enumerate(params)]
    )
    assert (batched.int() - one_by_one.int()).abs().max().item() <= 1


def test_degrade_batch_rejects_a_params_count_that_does_not_match():
    with pytest.raises(ValueError, match="2 images but 1 params"):
        degrade_gpu.degrade_batch(torch.zeros(2, 3, 32, 32), [_params()])


def test_degrade_batch_rejects_channels_last_input():
    with pytest.raises(ValueError, match=r"\(1, 32, 32, 3\)"):
        degrade_gpu.degrade_batch(torch.zeros(1, 32, 32, 3), [_params()])
