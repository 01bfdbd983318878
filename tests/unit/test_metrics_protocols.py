"""Each paper protocol against its official scoring code, written out here from the source
(docs/methods.md, "Scoring protocols"), with scikit-image where that code calls scikit-image."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage.color import rgb2gray
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from components.data.schema import to_uint8
from components.metrics.protocols import (CTCNET, EDGECONNECT, PANINI, PROJECT, PROTOCOLS, available_means,
                                          protocol_named)
from components.metrics.scoring import image_scores, inpainting_scores


def fixed_pairs():
    """(pred, target) uint8 H x W x 3 pairs: noise on a smooth face-like gradient, a strong and a
    mild error, 56 x 64 px (above edge-connect's 51 px SSIM window)."""
    rng = np.random.default_rng(19)
    ys, xs = np.mgrid[0:56, 0:64]
    smooth = np.stack([120 + 80 * np.sin(xs / 9.0), 90 + 60 * np.cos(ys / 7.0), 60 + xs + ys / 2], axis=-1)
    pairs = []
    for noise in (25, 6):
        target = np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)
        pred = np.clip(target + rng.normal(0, noise, target.shape), 0, 255).astype(np.uint8)
        pairs.append((pred, target))
    return pairs


def batch(images):
    """uint8 (N, 3, H, W) of uint8 H x W x 3 images."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def scored(protocol, pairs):
    return protocol.score(batch([p for p, _ in pairs]), batch([t for _, t in pairs]))


# ---------------------------------------------------------------------------- the official code, written out


def ctcnet_y(rgb, rounding=False):
    """psnr_ssim.py rgb2y_matlab: K = [65.481, 128.553, 24.966] / 255; Y = 16 + x @ K; astype(uint8)."""
    y = 16 + np.matmul(rgb, np.array([65.481, 128.553, 24.966]) / 255.0)
    return (np.round(y) if rounding else y).astype(np.uint8)


def ctcnet_reference(pred, target, rounding=False):
    """psnr_ssim.py PSNR (use_y_channel) and SSIM of skimage.metrics.structural_similarity."""
    pred_y, target_y = ctcnet_y(pred, rounding), ctcnet_y(target, rounding)
    mse = np.mean(np.square(pred_y.astype(np.float64) - target_y.astype(np.float64)))
    ssim = structural_similarity(target_y, pred_y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    return {"psnr": 10 * np.log10(255**2 / mse), "ssim": ssim}


def edgeconnect_reference(pred, target):
    """scripts/metrics.py: imread / 255.0 as float32, rgb2gray, compare_psnr(data_range=1),
    compare_ssim(data_range=1, win_size=51) and compare_mae, with scikit-image 0.14."""
    grey_gt = rgb2gray((target / 255.0).astype(np.float32))
    grey_pred = rgb2gray((pred / 255.0).astype(np.float32))
    assert grey_gt.dtype == np.float32
    # scikit-image 0.14's compare_ssim cast its inputs to float64 before filtering (today's keeps
    # float32), and had today's other defaults: uniform window, sample covariance, K1, K2.
    ssim = structural_similarity(grey_gt.astype(np.float64), grey_pred.astype(np.float64), data_range=1, win_size=51,
                                 gaussian_weights=False, use_sample_covariance=True, K1=0.01, K2=0.03)
    mae = np.sum(np.abs(grey_gt - grey_pred)) / np.sum(grey_gt + grey_pred)
    return {"psnr": peak_signal_noise_ratio(grey_gt, grey_pred, data_range=1), "ssim": ssim, "mae": float(mae)}


def panini_reference(pred, target):
    """mmediting metrics.py psnr(img1, img2, crop_border=0) of tensor2img's H x W x 3 BGR uint8:
    float32 images, float32 mean of the squared error, 20 log10(255 / sqrt(mse))."""
    img1, img2 = pred[..., ::-1].astype(np.float32), target[..., ::-1].astype(np.float32)
    mse_value = np.mean((img1 - img2) ** 2)
    # NumPy 1.x, the official code's, divides a Python float by the float32 root in float64.
    return {"psnr": 20.0 * np.log10(255.0 / np.float64(np.sqrt(mse_value)))}


def assert_agree(got, reference, count):
    assert set(got) == set(reference[0])
    for metric, values in got.items():
        assert values.dtype == torch.float64 and values.shape == (count,)
        for value, expected in zip(values.tolist(), (r[metric] for r in reference)):
            assert abs(value - expected) < 1e-6, (metric, value, expected)


# ---------------------------------------------------------------------------- each protocol


def test_ctcnet_is_psnr_and_ssim_on_the_truncated_bt601_y():
    pairs = fixed_pairs()
    assert_agree(scored(CTCNET, pairs), [ctcnet_reference(p, t) for p, t in pairs], len(pairs))


def test_ctcnet_truncates_y_and_that_is_seen_in_its_scores():
    pred, target = fixed_pairs()[1]
    assert (ctcnet_y(target) != ctcnet_y(target, rounding=True)).mean() > 0.3  # the two really differ here
    got = {metric: values.item() for metric, values in scored(CTCNET, [(pred, target)]).items()}
    truncated, rounded = ctcnet_reference(pred, target), ctcnet_reference(pred, target, rounding=True)
    for metric in ("psnr", "ssim"):
        assert abs(got[metric] - truncated[metric]) < 1e-6
    assert abs(got["psnr"] - rounded["psnr"]) > 1e-3 and abs(got["ssim"] - rounded["ssim"]) > 1e-6


def test_edgeconnect_is_grey_psnr_ssim_with_a_51_px_window_and_its_normalised_mae():
    pairs = fixed_pairs()
    assert_agree(scored(EDGECONNECT, pairs), [edgeconnect_reference(p, t) for p, t in pairs], len(pairs))


def test_edgeconnect_scores_the_whole_image_whatever_the_mask():
    pairs = fixed_pairs()
    holes = torch.zeros(len(pairs), 1, 56, 64)
    holes[:, :, 10:30, 10:40] = 1
    preds, targets = batch([p for p, _ in pairs]), batch([t for _, t in pairs])
    with_mask, without = EDGECONNECT.score(preds, targets, holes), EDGECONNECT.score(preds, targets)
    assert set(with_mask) == {"psnr", "ssim", "mae"} and all(torch.equal(with_mask[m], without[m]) for m in without)


def test_panini_is_psnr_over_the_8_bit_rgb_values():
    pairs = fixed_pairs()
    assert_agree(scored(PANINI, pairs), [panini_reference(p, t) for p, t in pairs], len(pairs))
    # the same figure as the plain float64 formula, to float32 rounding
    pred, target = pairs[0]
    exact = 10 * np.log10(255**2 / np.mean((pred.astype(np.float64) - target) ** 2))
    assert abs(scored(PANINI, pairs[:1])["psnr"].item() - exact) < 1e-6


def test_a_paper_protocol_scores_the_8_bit_image_a_float_output_is_saved_as():
    pred, target = fixed_pairs()[0]
    # off the 8-bit levels by up to 0.45 of a level either way: saving rounds them back
    offset = torch.from_numpy(np.random.default_rng(1).uniform(-0.45, 0.45, (1, 3, 56, 64))).float()
    floats = ((batch([pred]).float() + offset) / 255.0).clamp(0, 1)
    assert torch.equal(to_uint8(floats), batch([pred]))
    for protocol in (CTCNET, EDGECONNECT, PANINI):
        from_floats = protocol.score(floats, batch([target]).float() / 255.0)
        from_files = protocol.score(batch([pred]), batch([target]))
        assert all(torch.equal(from_floats[m], from_files[m]) for m in from_files), protocol.name


def test_identical_images_score_infinite_psnr_as_the_official_code_does():
    _, target = fixed_pairs()[0]
    for protocol in (CTCNET, EDGECONNECT, PANINI):
        values = scored(protocol, [(target, target)])
        assert values["psnr"].item() == math.inf, protocol.name
    assert scored(CTCNET, [(target, target)])["ssim"].item() == pytest.approx(1.0)


def test_an_image_smaller_than_the_51_px_window_has_no_edgeconnect_ssim():
    pred, target = fixed_pairs()[0]
    values = scored(EDGECONNECT, [(pred[:40, :40].copy(), target[:40, :40].copy())])
    assert math.isnan(values["ssim"].item()) and not math.isnan(values["psnr"].item())
    means = available_means(values)
    assert means["ssim"] is None and means["psnr"] == pytest.approx(values["psnr"].item())


def test_the_project_protocol_is_the_projects_scores_on_floats_uint8_read_as_levels_over_255():
    pred, target = fixed_pairs()[0]
    preds, targets = batch([pred]).float() / 255.0, batch([target]).float() / 255.0
    holes = torch.zeros(1, 1, 56, 64)
    holes[:, :, 5:20, 5:50] = 1
    from_levels, expected = PROJECT.score(batch([pred]), batch([target])), image_scores(preds, {"hq": targets})
    assert set(from_levels) == {"psnr", "ssim", "l1"} and all(torch.equal(from_levels[m], expected[m]) for m in expected)
    with_holes = PROJECT.score(preds, targets, holes)
    expected = inpainting_scores(preds, {"hq": targets, "mask": holes})
    assert set(with_holes) == {"psnr", "ssim", "l1", "psnr_hole", "l1_hole"}
    assert all(torch.equal(with_holes[m], expected[m]) for m in expected)


def test_protocols_take_rgb_nchw_pairs_of_one_shape():
    pred, target = fixed_pairs()[0]
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        CTCNET.score(batch([pred])[:, :1], batch([target])[:, :1])
    with pytest.raises(ValueError, match="one"):
        PANINI.score(batch([pred]), batch([target])[:, :, :50])


# ---------------------------------------------------------------------------- registry


def test_an_unknown_protocol_is_named_with_the_known_ones():
    assert protocol_named("ctcnet") is CTCNET
    with pytest.raises(ValueError, match="unknown scoring protocol 'psnr' .known: project, ctcnet, edgeconnect, panini"):
        protocol_named("psnr")


def test_every_task_and_method_names_a_known_paper_protocol():
    from components.models import METHODS, method_class
    from components.tasks import TASKS, paper_protocol_of

    assert {name: task.paper_protocol for name, task in TASKS.items()} == {
        "restoration": "panini", "inpainting": "edgeconnect", "super_resolution": "ctcnet", "edges": None,
        "representation": None, "prior": None}
    overrides = {name: method_class(name).paper_protocol for name in METHODS}
    assert {name: value for name, value in overrides.items() if value} == {"panini": "panini"}
    # Panini's x16 SR is a super-resolution model scored as Panini-Net scores it, not as CTCNet does
    panini_sr = SimpleNamespace(paper_protocol="panini", task="super_resolution")
    ctcnet = SimpleNamespace(paper_protocol=method_class("ctcnet").paper_protocol, task="super_resolution")
    cafin = SimpleNamespace(paper_protocol=method_class("cafin").paper_protocol, task="inpainting")
    assert [paper_protocol_of(m) for m in (panini_sr, ctcnet, cafin)] == ["panini", "ctcnet", "edgeconnect"]
    assert all(task.paper_protocol in (None, *PROTOCOLS) for task in TASKS.values())
