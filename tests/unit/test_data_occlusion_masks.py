import numpy as np
import pytest

from components.data.faces import FFHQ_TEMPLATE, render_face
from components.data.masks import mask_ratio
from components.data.occlusion_masks import (
    FFHQ_TEMPLATE_5PT,
    OCCLUSION_KINDS,
    occlusion_mask,
    template_landmarks,
)

EYES, NOSE, MOUTH = [0, 1], [2], [3, 4]
SIZES = (32, 64, 256)


def covered(mask: np.ndarray, landmarks: np.ndarray, which: list[int]) -> list[bool]:
    return [bool(mask[int(round(y)), int(round(x))]) for x, y in landmarks[which]]


def rotated(landmarks: np.ndarray, size: int, degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = (size - 1) / 2
    return (landmarks - centre) @ rotation.T + centre


def test_template_is_facexlibs_512_px_face_template_scaled_to_the_size():
    assert template_landmarks(512) == pytest.approx(FFHQ_TEMPLATE_5PT)
    assert template_landmarks(64) == pytest.approx(FFHQ_TEMPLATE_5PT / 8)
    assert FFHQ_TEMPLATE_5PT[0] == pytest.approx([192.98138, 239.94708])
    # The procedural faces are aligned to the same template.
    assert FFHQ_TEMPLATE_5PT == pytest.approx(FFHQ_TEMPLATE * 512)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", OCCLUSION_KINDS)
def test_masks_are_binary_uint8_of_the_requested_size(kind, size):
    for seed in range(10):
        mask = occlusion_mask(np.random.default_rng(seed), size, template_landmarks(size), kind)
        assert mask.shape == (size, size) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1}


@pytest.mark.parametrize("size", SIZES)
def test_sunglasses_cover_both_eyes_and_not_the_mouth_corners(size):
    for seed in range(30):
        landmarks = template_landmarks(size)
        mask = occlusion_mask(np.random.default_rng(seed), size, landmarks, "sunglasses")
        assert all(covered(mask, landmarks, EYES)), seed
        assert not any(covered(mask, landmarks, MOUTH)), seed


@pytest.mark.parametrize("size", SIZES)
def test_surgical_mask_covers_nose_tip_and_mouth_corners_but_not_the_eyes(size):
    for seed in range(30):
        landmarks = template_landmarks(size)
        mask = occlusion_mask(np.random.default_rng(seed), size, landmarks, "surgical_mask")
        assert all(covered(mask, landmarks, NOSE + MOUTH)), seed
        assert not any(covered(mask, landmarks, EYES)), seed


@pytest.mark.parametrize("size", SIZES)
def test_hand_is_non_empty_and_lies_over_the_face(size):
    landmarks = template_landmarks(size)
    iod = landmarks[1, 0] - landmarks[0, 0]
    left, top = np.floor(landmarks.min(axis=0) - 0.5 * iod).astype(int)
    right, bottom = np.ceil(landmarks.max(axis=0) + 0.5 * iod).astype(int)
    for seed in range(30):
        mask = occlusion_mask(np.random.default_rng(seed), size, landmarks, "hand")
        assert mask.any(), seed
        assert mask[top : bottom + 1, left : right + 1].any(), seed


def test_masks_follow_the_landmarks_of_rendered_faces():
    for seed in range(12):
        face = render_face(seed, 64)
        rng = np.random.default_rng(seed)
        glasses = occlusion_mask(rng, 64, face.landmarks, "sunglasses")
        surgical = occlusion_mask(rng, 64, face.landmarks, "surgical_mask")
        assert all(covered(glasses, face.landmarks, EYES))
        assert not any(covered(glasses, face.landmarks, MOUTH))
        assert all(covered(surgical, face.landmarks, NOSE + MOUTH))
        assert not any(covered(surgical, face.landmarks, EYES))


def test_masks_turn_with_a_rolled_face():
    for degrees in (-30.0, 25.0):
        landmarks = rotated(template_landmarks(128), 128, degrees)
        for seed in range(10):
            glasses = occlusion_mask(np.random.default_rng(seed), 128, landmarks, "sunglasses")
            surgical = occlusion_mask(np.random.default_rng(seed), 128, landmarks, "surgical_mask")
            assert all(covered(glasses, landmarks, EYES))
            assert not any(covered(glasses, landmarks, MOUTH))
            assert all(covered(surgical, landmarks, NOSE + MOUTH))
            assert not any(covered(surgical, landmarks, EYES))


@pytest.mark.parametrize("kind", OCCLUSION_KINDS)
def test_same_rng_seed_gives_identical_mask(kind):
    landmarks = template_landmarks(64)
    first = occlusion_mask(np.random.default_rng(7), 64, landmarks, kind)
    second = occlusion_mask(np.random.default_rng(7), 64, landmarks, kind)
    assert np.array_equal(first, second)


@pytest.mark.parametrize("kind", OCCLUSION_KINDS)
def test_different_seeds_give_different_masks(kind):
    landmarks = template_landmarks(64)
    masks = [occlusion_mask(np.random.default_rng(seed), 64, landmarks, kind) for seed in range(10)]
    assert len({mask.tobytes() for mask in masks}) == 10


# Measured at 64 px on the template over 500 seeds: surgical mask 13-21%, sunglasses 5-10%,
# hand 13-27%; the bounds leave room around those.
@pytest.mark.parametrize(
    "kind, low, high",
    [("surgical_mask", 0.10, 0.45), ("sunglasses", 0.02, 0.20), ("hand", 0.05, 0.45)],
)
def test_hole_ratios_at_the_template_are_plausible(kind, low, high):
    landmarks = template_landmarks(64)
    for seed in range(100):
        ratio = mask_ratio(occlusion_mask(np.random.default_rng(seed), 64, landmarks, kind))
        assert low <= ratio <= high, (seed, ratio)


def test_bad_landmarks_and_unknown_kinds_are_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        occlusion_mask(rng, 64, np.zeros((68, 2)), "hand")
    with pytest.raises(ValueError, match="eyes coincide"):
        occlusion_mask(rng, 64, np.zeros((5, 2)), "hand")
    with pytest.raises(ValueError, match="scarf"):
        occlusion_mask(rng, 64, template_landmarks(64), "scarf")
    with pytest.raises(ValueError, match="size"):
        occlusion_mask(rng, 0, template_landmarks(64), "hand")
