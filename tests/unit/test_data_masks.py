import numpy as np
import pytest
from pydantic import ValidationError

from components.data.masks import MASK_KINDS, MaskConfig, mask_ratio, sample_mask
from components.data.occlusion_masks import template_landmarks

LANDMARKS = template_landmarks(64)


@pytest.mark.parametrize("kinds", [["free_form"], ["box"], ["free_form", "box"], ["surgical_mask", "hand"]])
def test_masks_are_binary_with_hole_ratio_in_range(kinds):
    cfg = MaskConfig(kinds=kinds, max_ratio=0.4)
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask, kind = sample_mask(rng, 64, cfg, LANDMARKS)
        assert kind in kinds
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        assert 0.0 < mask_ratio(mask) <= 0.4


def test_same_rng_seed_gives_identical_mask():
    cfg = MaskConfig()
    first, _ = sample_mask(np.random.default_rng(3), 64, cfg)
    second, _ = sample_mask(np.random.default_rng(3), 64, cfg)
    assert np.array_equal(first, second)


def test_different_seeds_give_different_masks():
    cfg = MaskConfig()
    masks = [sample_mask(np.random.default_rng(seed), 64, cfg)[0] for seed in range(10)]
    assert len({mask.tobytes() for mask in masks}) == 10


def test_a_tight_max_ratio_is_still_met():
    cfg = MaskConfig(max_ratio=0.02)
    rng = np.random.default_rng(1)
    for _ in range(50):
        assert 0.0 < mask_ratio(sample_mask(rng, 32, cfg)[0]) <= 0.02


def test_every_kind_appears_when_all_are_allowed():
    cfg = MaskConfig(kinds=list(MASK_KINDS), max_ratio=0.6)
    rng = np.random.default_rng(2)
    assert {sample_mask(rng, 64, cfg, LANDMARKS)[1] for _ in range(100)} == set(MASK_KINDS)


def test_an_occluder_without_landmarks_is_an_error_naming_the_kind():
    with pytest.raises(ValueError, match="'sunglasses' is placed from landmarks"):
        sample_mask(np.random.default_rng(0), 64, MaskConfig(kinds=["sunglasses"]))


def test_mask_ratio_is_the_fraction_of_missing_pixels():
    mask = np.zeros((10, 10), np.uint8)
    mask[:5, :2] = 1
    assert mask_ratio(mask) == pytest.approx(0.1)


def test_config_rejects_unknown_kinds_and_bad_ratios():
    with pytest.raises(ValidationError):
        MaskConfig(kinds=["blob"])
    with pytest.raises(ValidationError, match="max_ratio"):
        MaskConfig(max_ratio=0.0)
    with pytest.raises(ValidationError):
        MaskConfig(holes=3)
