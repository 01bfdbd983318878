"""SR pairs: antialiased bicubic downscaling on CPU (numpy) and GPU (torch), and their config."""

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from components.data.faces import render_face
from components.data.super_resolution import (
    SuperResolutionConfig,
    bicubic_downscale,
    bicubic_downscale_batch,
)


def _batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _gpu_path(image: np.ndarray, factor: int) -> np.ndarray:
    return bicubic_downscale_batch(_batch(image), factor)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("factor", [4, 8, 16])
def test_downscale_divides_each_side_by_the_factor_and_stays_uint8(factor):
    image = render_face(0, 64).image[:, :48]
    small = bicubic_downscale(image, factor)
    assert small.shape == (64 // factor, 48 // factor, 3) and small.dtype == np.uint8
    batch = bicubic_downscale_batch(_batch(image, image), factor)
    assert batch.shape == (2, 3, 64 // factor, 48 // factor) and batch.dtype == torch.uint8


@pytest.mark.parametrize("factor", [4, 8, 16])
def test_cpu_and_gpu_paths_agree_within_one_level(factor):
    # Measured: identical bytes with torch on CPU; CUDA may round a .5 the other way.
    rng = np.random.default_rng(factor)
    noise = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    images = [render_face(1, 64).image, render_face(2, 128).image, noise]
    for image in images:
        cpu = bicubic_downscale(image, factor).astype(int)
        gpu = _gpu_path(image, factor).astype(int)
        assert np.abs(cpu - gpu).max() <= 1 and (cpu != gpu).mean() <= 0.01


def test_gpu_path_takes_float_input_on_the_0_255_scale():
    image = render_face(3, 64).image
    as_float = bicubic_downscale_batch(_batch(image).float(), 8)
    assert torch.equal(as_float, bicubic_downscale_batch(_batch(image), 8))


@pytest.mark.parametrize("factor", [4, 8, 16])
def test_downscale_matches_pil_bicubic_as_ctcnet_makes_its_lr_faces(factor):
    Image = pytest.importorskip("PIL.Image")
    image = render_face(4, 128).image
    size = 128 // factor
    pil = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)).astype(int)
    diff = np.abs(bicubic_downscale(image, factor).astype(int) - pil)
    # Same kernel; PIL rounds and clips to uint8 between its two passes. Measured: mean
    # 0.08-0.15, and more than 1 level only where its first pass overshot 255.
    assert diff.mean() < 0.2 and (diff > 1).mean() < 0.01


@pytest.mark.parametrize("factor", [4, 8, 16])
def test_downscale_low_passes_noise_where_inter_cubic_aliases_it(factor):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    size = 64 // factor
    # Measured std: ours 15 / 7.7 / 3.8 at x4 / x8 / x16; INTER_CUBIC 55 at every factor,
    # since its 4 taps do not widen when shrinking.
    assert bicubic_downscale(noise, factor).std() < 20
    assert cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC).std() > 40


def test_downscale_keeps_a_flat_image_flat():
    flat = np.full((32, 32, 3), 77, dtype=np.uint8)
    assert (bicubic_downscale(flat, 4) == 77).all()
    assert (bicubic_downscale_batch(_batch(flat), 4) == 77).all()


def test_size_not_divisible_by_the_factor_is_rejected_naming_both():
    image = np.zeros((60, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"60 x 64 .* factor 8"):
        bicubic_downscale(image, 8)
    with pytest.raises(ValueError, match=r"60 x 64 .* factor 8"):
        bicubic_downscale_batch(_batch(image), 8)


def test_downscale_rejects_a_non_uint8_rgb_image():
    with pytest.raises(ValueError, match="float32"):
        bicubic_downscale(np.zeros((64, 64, 3), dtype=np.float32), 4)


def test_config_defaults_to_x8_and_accepts_only_4_8_16():
    assert SuperResolutionConfig().factor == 8
    assert SuperResolutionConfig(factor=16).factor == 16
    with pytest.raises(ValidationError):
        SuperResolutionConfig(factor=2)


def test_config_rejects_an_unknown_key():
    with pytest.raises(ValidationError, match="scale"):
        SuperResolutionConfig(scale=4)
