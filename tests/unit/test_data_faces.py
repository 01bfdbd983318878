import numpy as np
import pytest

from components.data.faces import FFHQ_TEMPLATE, render_face


def test_same_seed_gives_identical_face():
    first, second = render_face(7, 64), render_face(7, 64)
    assert np.array_equal(first.image, second.image)
    assert np.array_equal(first.landmarks, second.landmarks)


def test_different_seeds_give_different_faces():
    images = [render_face(seed, 64).image for seed in range(8)]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i].astype(int) - images[j].astype(int)).mean() > 5


def test_face_is_rgb_uint8_with_five_float32_landmarks():
    face = render_face(0, 64)
    assert face.image.shape == (64, 64, 3) and face.image.dtype == np.uint8
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_landmarks_lie_inside_the_image_at_every_size(size):
    for seed in range(20):
        face = render_face(seed, size)
        assert face.image.shape == (size, size, 3)
        assert (face.landmarks >= 0).all() and (face.landmarks <= size - 1).all()


def test_eyes_are_above_nose_and_nose_above_mouth():
    for seed in range(50):
        (lex, ley), (rex, rey), (_, ny), (lmx, lmy), (rmx, rmy) = render_face(seed, 64).landmarks
        assert max(ley, rey) < ny < min(lmy, rmy)
        assert lex < rex and lmx < rmx


def test_landmarks_stay_near_the_ffhq_template():
    landmarks = np.stack([render_face(seed, 128).landmarks for seed in range(50)])
    mean = (landmarks.mean(axis=0) + 0.5) / 128
    assert np.abs(mean - FFHQ_TEMPLATE).max() < 0.02


def test_landmarks_scale_with_the_size():
    small, large = render_face(3, 32).landmarks, render_face(3, 128).landmarks
    assert np.allclose((small + 0.5) * 4, large + 0.5, atol=1e-3)


def test_eye_landmark_sits_on_a_dark_pupil_region():
    # The pupil is drawn at the eye landmark (shifted by the gaze): some pixel near it is dark.
    for seed in range(10):
        face = render_face(seed, 128)
        for x, y in face.landmarks[:2]:
            patch = face.image[int(y) - 3 : int(y) + 4, int(x) - 4 : int(x) + 5]
            assert patch.min() < 80


def test_tiny_sizes_are_refused_with_the_size_named():
    with pytest.raises(ValueError, match="4"):
        render_face(0, 4)
