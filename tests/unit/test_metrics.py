import math

import pytest
import torch

from components.metrics.image_quality import l1, psnr, ssim


def images(n=2, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator)


def test_psnr_of_identical_images_is_large_and_finite():
    x = images()
    values = psnr(x, x.clone())
    assert values.shape == (2,)
    assert torch.isfinite(values).all() and (values >= 99.9).all()


def test_psnr_of_a_constant_offset_of_0_1_is_20_db():
    target = images() * 0.9
    assert torch.allclose(psnr(target + 0.1, target), torch.full((2,), 20.0), atol=1e-3)


def test_psnr_is_per_image_not_of_the_pooled_batch_mse():
    target = torch.zeros(2, 3, 16, 16)
    pred = target.clone()
    pred[0] += 0.1
    pred[1] += 0.01
    assert torch.allclose(psnr(pred, target), torch.tensor([20.0, 40.0]), atol=1e-3)


def test_psnr_respects_the_data_range():
    target = images() * 200
    assert torch.allclose(psnr(target + 25.5, target, data_range=255.0), torch.full((2,), 20.0), atol=1e-3)


def test_ssim_of_identical_images_is_one():
    x = images()
    assert torch.allclose(ssim(x, x.clone()), torch.ones(2), atol=1e-5)


def test_ssim_drops_as_noise_grows():
    x = images(size=48)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=generator)
    scores = [ssim((x + sigma * noise).clamp(0, 1), x) for sigma in (0.0, 0.05, 0.2)]
    assert (scores[0] > scores[1]).all() and (scores[1] > scores[2]).all()
    assert scores[1].shape == (2,)


def test_ssim_rejects_an_even_window():
    x = images()
    with pytest.raises(ValueError, match="odd"):
        ssim(x, x, window=10)


def test_l1_is_the_per_image_mean_absolute_error():
    target = torch.zeros(2, 3, 4, 4)
    pred = target.clone()
    pred[0, 0] = 0.3  # one channel of three -> 0.1
    pred[1] = -0.2
    assert torch.allclose(l1(pred, target), torch.tensor([0.1, 0.2]), atol=1e-6)


def test_masked_l1_and_psnr_count_only_masked_pixels():
    target = torch.zeros(1, 3, 8, 8)
    pred = target.clone()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1.0
    pred[..., :4, :] = 0.1  # error only inside the mask
    pred[..., 4:, :] = 0.0
    assert torch.allclose(l1(pred, target, mask=mask), torch.tensor([0.1]), atol=1e-6)
    assert torch.allclose(psnr(pred, target, mask=mask), torch.tensor([20.0]), atol=1e-3)
    assert torch.allclose(l1(pred, target), torch.tensor([0.05]), atol=1e-6)


def test_masked_metrics_ignore_errors_outside_the_mask():
    target = torch.zeros(1, 3, 8, 8)
    pred = torch.full_like(target, 0.5)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 0, 0] = 1.0
    pred[..., 0, 0] = 0.0
    assert l1(pred, target, mask=mask).item() == 0.0
    assert psnr(pred, target, mask=mask).item() >= 99.9


def test_an_empty_mask_gives_nan_for_that_image_only():
    pred, target = images(), images(seed=1)
    mask = torch.ones(2, 1, 32, 32)
    mask[1] = 0.0
    values = l1(pred, target, mask=mask)
    assert not math.isnan(values[0].item()) and math.isnan(values[1].item())
    assert math.isnan(psnr(pred, target, mask=mask)[1].item())


def test_mismatched_shapes_are_rejected_naming_both():
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\).*\(1, 3, 8, 9\)"):
        l1(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
