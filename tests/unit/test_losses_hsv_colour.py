import math

import pytest
import torch
from kornia.color import hsv_to_rgb

from components.losses.hsv_colour import hsv_colour_loss


def pixel(hue_turns: float, saturation: float, value: float) -> torch.Tensor:
    """A 1x1 RGB image of the given HSV colour (hue in turns, 0..1)."""
    hsv = torch.tensor([2 * math.pi * hue_turns, saturation, value]).view(1, 3, 1, 1)
    return hsv_to_rgb(hsv)


def test_identical_images_have_zero_loss():
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert hsv_colour_loss(image, image.clone(), weights=(2.0, 3.0, 4.0)).item() == 0.0


def test_hue_wraps_around_so_099_and_001_are_close():
    across_red = hsv_colour_loss(pixel(0.99, 1.0, 1.0), pixel(0.01, 1.0, 1.0), weights=(1.0, 0.0, 0.0))
    straight = hsv_colour_loss(pixel(0.49, 1.0, 1.0), pixel(0.51, 1.0, 1.0), weights=(1.0, 0.0, 0.0))
    opposite = hsv_colour_loss(pixel(0.0, 1.0, 1.0), pixel(0.5, 1.0, 1.0), weights=(1.0, 0.0, 0.0))
    # 0.02 turn apart = 0.04 of the half-circle, the same as two hues 0.02 apart far from the seam.
    assert across_red.item() == pytest.approx(0.04, abs=1e-4)
    assert across_red.item() == pytest.approx(straight.item(), abs=1e-4)
    assert opposite.item() == pytest.approx(1.0, abs=1e-4)


def test_per_channel_weights_are_applied_as_hand_computed_on_one_pixel():
    pred = pixel(0.10, 0.8, 0.9)  # chroma 0.72
    target = pixel(0.20, 0.5, 0.6)  # chroma 0.30
    hue_error = 0.30 * (0.10 / 0.5)  # min chroma x (0.1 turn / half a turn)
    sat_error, val_error = 0.3, 0.3
    weights = (2.0, 0.5, 3.0)
    expected = 2.0 * hue_error + 0.5 * sat_error + 3.0 * val_error
    assert hsv_colour_loss(pred, target, weights=weights).item() == pytest.approx(expected, abs=1e-4)
    for channel, single in enumerate((hue_error, sat_error, val_error)):
        only = [0.0, 0.0, 0.0]
        only[channel] = 1.0
        assert hsv_colour_loss(pred, target, weights=tuple(only)).item() == pytest.approx(single, abs=1e-4)


def test_grey_pixels_carry_no_hue_error_only_saturation_and_value():
    grey = torch.full((1, 3, 1, 1), 0.5)
    red = pixel(0.0, 1.0, 0.5)
    assert hsv_colour_loss(grey, red, weights=(1.0, 0.0, 0.0)).item() == 0.0
    assert hsv_colour_loss(grey, red, weights=(0.0, 1.0, 0.0)).item() == pytest.approx(1.0, abs=1e-5)


def test_mask_restricts_the_loss_to_the_masked_pixels():
    target = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    pred = target.clone()
    pred[..., 0, 0] = 1.0 - pred[..., 0, 0]  # one pixel wrong
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:, :] = 1.0  # row 0 not scored
    assert hsv_colour_loss(pred, target, mask=mask).item() == 0.0
    mask[..., 0, 0] = 1.0
    assert hsv_colour_loss(pred, target, mask=mask).item() > 0.0
    assert hsv_colour_loss(pred, target, mask=torch.zeros(1, 1, 4, 4)).item() == 0.0


def test_gradients_are_finite_on_grey_black_and_out_of_range_pixels_under_bf16():
    pred = torch.tensor([[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [1.2, -0.1, 0.3], [0.9, 0.2, 0.2]])
    pred = pred.T.reshape(1, 3, 2, 2).to(torch.bfloat16).requires_grad_(True)
    target = torch.rand(1, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    loss = hsv_colour_loss(pred, target)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(pred.grad.float()).all() and pred.grad.abs().sum() > 0


def test_descending_the_loss_moves_a_colour_towards_the_target():
    target = pixel(0.05, 0.6, 0.8).expand(1, 3, 4, 4).contiguous()
    pred = pixel(0.45, 0.3, 0.4).expand(1, 3, 4, 4).contiguous().requires_grad_(True)
    optimiser = torch.optim.Adam([pred], lr=0.02)
    first = hsv_colour_loss(pred, target).item()
    for _ in range(150):
        optimiser.zero_grad()
        hsv_colour_loss(pred, target).backward()
        optimiser.step()
    assert hsv_colour_loss(pred, target).item() < 0.2 * first


def test_bad_weights_and_shapes_are_rejected_with_their_names():
    image = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="weights"):
        hsv_colour_loss(image, image, weights=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="mask"):
        hsv_colour_loss(image, image, mask=torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        hsv_colour_loss(image, torch.rand(1, 3, 4, 5))
