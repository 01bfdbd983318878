import numpy as np
import pytest
from pydantic import ValidationError

from components.data.degrade import (
    DegradationConfig,
    DegradationParams,
    degrade,
    gaussian_kernel,
    sample_degradation,
)
from components.data.faces import render_face
from components.data.schema import DEGRADATION_FIELDS


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def _params(sigma: float, **overrides) -> DegradationParams:
    fields = dict(
        kernel_size=41, sigma_x=sigma, sigma_y=sigma, theta=0.0, scale=1.0, noise_sigma=0.0, jpeg_quality=100
    )
    return DegradationParams(**{**fields, **overrides})


def test_degrade_keeps_shape_and_dtype():
    image = render_face(0, 64).image
    rng = np.random.default_rng(0)
    out = degrade(image, sample_degradation(rng, DegradationConfig()), rng)
    assert out.shape == image.shape and out.dtype == np.uint8


def test_psnr_falls_as_blur_sigma_grows():
    image = render_face(1, 64).image
    psnrs = [
        _psnr(image, degrade(image, _params(sigma), np.random.default_rng(0))) for sigma in (0.3, 1.0, 2.0, 4.0)
    ]
    assert all(a > b for a, b in zip(psnrs, psnrs[1:])), psnrs


def test_psnr_falls_as_noise_and_downsampling_grow():
    image = render_face(2, 64).image
    clean = _psnr(image, degrade(image, _params(0.3, noise_sigma=2.0), np.random.default_rng(0)))
    noisy = _psnr(image, degrade(image, _params(0.3, noise_sigma=20.0), np.random.default_rng(0)))
    small = _psnr(image, degrade(image, _params(0.3, scale=4.0), np.random.default_rng(0)))
    assert noisy < clean and small < clean


def test_same_params_and_rng_seed_give_identical_bytes():
    image = render_face(3, 64).image
    params = sample_degradation(np.random.default_rng(5), DegradationConfig())
    first = degrade(image, params, np.random.default_rng(9))
    second = degrade(image, params, np.random.default_rng(9))
    assert np.array_equal(first, second)


def test_sampled_params_stay_inside_the_configured_ranges():
    cfg = DegradationConfig()
    rng = np.random.default_rng(0)
    params = [sample_degradation(rng, cfg) for _ in range(500)]
    for p in params:
        assert cfg.sigma[0] <= min(p.sigma_x, p.sigma_y)
        assert max(p.sigma_x, p.sigma_y) <= cfg.sigma[1]
        assert cfg.scale[0] <= p.scale <= cfg.scale[1]
        assert cfg.noise[0] <= p.noise_sigma <= cfg.noise[1]
        assert cfg.jpeg_quality[0] <= p.jpeg_quality <= cfg.jpeg_quality[1]
        assert -np.pi <= p.theta <= np.pi
    anisotropic = sum(p.sigma_x != p.sigma_y for p in params) / len(params)
    assert 0.4 < anisotropic < 0.6


def test_defaults_are_gfpgan_v1_training_ranges():
    cfg = DegradationConfig()
    assert cfg.kernel_size == 41 and cfg.sigma == (0.1, 10.0) and cfg.scale == (0.8, 8.0)
    assert cfg.noise == (0.0, 20.0) and cfg.jpeg_quality == (60, 100)


def test_kernel_sums_to_one_and_rotating_by_half_pi_swaps_its_axes():
    kernel = gaussian_kernel(21, 3.0, 1.0, 0.0)
    rotated = gaussian_kernel(21, 3.0, 1.0, np.pi / 2)
    assert kernel.shape == (21, 21) and np.isclose(kernel.sum(), 1.0, atol=1e-5)
    assert np.allclose(kernel, rotated.T, atol=1e-6)


def test_params_row_names_every_field():
    row = _params(1.0).to_row()
    assert list(row) == list(DEGRADATION_FIELDS)


def test_config_rejects_unknown_keys_and_reversed_ranges():
    with pytest.raises(ValidationError, match="blur"):
        DegradationConfig(blur=3)
    with pytest.raises(ValidationError, match="sigma"):
        DegradationConfig(sigma=(5.0, 1.0))
    with pytest.raises(ValidationError, match="kernel_size"):
        DegradationConfig(kernel_size=40)
