"""The geometry of restoring photos: procedural faces pasted into larger backgrounds at a known
rotation, scale and offset are cut back out onto the template, and pasted back without a trace."""

import cv2
import numpy as np
import pytest

from components.data.faces import render_face
from components.data.occlusion_masks import template_landmarks
from components.models import build_method
from components.restore.alignment import crop_face, face_region, feather_mask, paste_face
from components.restore.model import Restorer
from components.restore.photos import PhotoRestorer, RestoreOptions

SIDE = 96


def placed(seed: int, degrees: float, scale: float, offset: tuple[float, float], shape=(360, 480)):
    """A procedural face rotated by `degrees`, scaled by `scale` and put at `offset` on a noisy
    background; the photo, the face's landmarks in it, and the face itself."""
    face = render_face(seed, SIDE)
    centre = (SIDE / 2 - 0.5, SIDE / 2 - 0.5)
    transform = cv2.getRotationMatrix2D(centre, degrees, scale)
    transform[:, 2] += np.asarray(offset) - centre
    background = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    size = shape[1::-1]
    warped = cv2.warpAffine(face.image, transform, size, flags=cv2.INTER_CUBIC)
    inside = cv2.warpAffine(np.ones((SIDE, SIDE), np.uint8), transform, size, flags=cv2.INTER_NEAREST)
    photo = np.where(inside[..., None].astype(bool), warped, background)
    points = np.c_[face.landmarks, np.ones(5)] @ transform.T
    return photo, points, face


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize(("degrees", "scale", "offset"), [(0, 1.0, (120, 100)), (25, 2.0, (240, 180)),
                                                          (-40, 0.7, (400, 90)), (90, 1.5, (200, 250))])
def test_a_placed_face_is_cut_back_onto_the_template(degrees, scale, offset):
    photo, points, face = placed(3, degrees, scale, offset)
    region = face_region(points, SIDE, photo.shape)
    # the landmarks land where they land when the face itself is aligned: on the template,
    # up to the face's own jitter around it
    direct = face_region(face.landmarks, SIDE, face.image.shape)
    in_crop = np.c_[points, np.ones(5)] @ region.to_crop.T
    in_direct = np.c_[face.landmarks, np.ones(5)] @ direct.to_crop.T
    assert np.abs(in_crop - in_direct).max() < 0.5
    assert np.abs(in_crop - template_landmarks(SIDE)).mean() < 0.05 * SIDE
    assert region.scale == pytest.approx(scale * direct.scale, rel=0.01)
    # and the pixels are the face's: the crop of the placed face is the crop of the face itself
    cut, reference = crop_face(photo, region), crop_face(face.image, direct)
    middle = slice(SIDE // 4, 3 * SIDE // 4)
    assert psnr(cut[middle, middle], reference[middle, middle]) > 30  # 3 px off: under 20


@pytest.mark.parametrize(("degrees", "scale"), [(0, 1.0), (30, 3.0), (-15, 0.8)])
def test_pasting_back_the_photos_own_crop_changes_nothing_beyond_resampling_and_nothing_outside(degrees, scale):
    photo, points, _ = placed(5, degrees, scale, (240, 180))
    region = face_region(points, 256, photo.shape)  # a crop at least as sharp as the face
    out = photo.copy()
    paste_face(out, crop_face(photo, region), region)
    x0, y0, x1, y1 = region.box
    outside = np.ones(photo.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], photo[outside])
    face_area = cv2.warpAffine(feather_mask(256, region.scale), region.to_photo, photo.shape[1::-1]) > 0.99
    assert psnr(out[face_area], photo[face_area]) > 38


def test_the_feathered_mask_is_one_inside_and_falls_to_zero_at_the_border():
    mask = feather_mask(128, 1.0)
    assert mask[64, 64] == 1.0 and mask[0, 64] < 0.1 and mask[64, -1] < 0.1
    assert np.all(np.diff(mask[:64, 64]) >= 0)  # no step inside the band: no visible seam


class StubDetector:
    def __init__(self, faces):
        self.faces = faces

    def detect(self, photos):
        return [self.faces for _ in photos]


class Found:
    def __init__(self, points):
        self.landmarks = np.asarray(points)
        low, high = self.landmarks.min(0), self.landmarks.max(0)
        self.box = (*(low - 20), *(high + 20))
        self.score = 0.99


@pytest.fixture
def identity_restorer():
    method = build_method("baseline", {"width": 8, "depth": 2})
    method.restore = lambda batch: batch["lq"]  # a model that changes nothing
    return Restorer(method, SIDE)


def test_an_identity_model_changes_no_pixel_outside_the_faces_of_a_photo_with_two(identity_restorer, tmp_path):
    from components.data.schema import encode_png

    photo, first, _ = placed(7, 20, 1.2, (120, 150))
    second_photo, second, _ = placed(8, -10, 0.9, (360, 200))
    photo[:, 300:] = second_photo[:, 300:]
    (tmp_path / "two.png").write_bytes(encode_png(photo))
    detector = StubDetector([Found(first), Found(second)])
    [(_, result)] = PhotoRestorer(identity_restorer, RestoreOptions(min_face=8), detector).restore([str(tmp_path / "two.png")])
    assert result.status == "restored" and len(result.faces) == 2
    changed = np.any(result.image != photo, axis=2)
    inside = np.zeros(photo.shape[:2], bool)
    for points in (first, second):
        region = face_region(points, SIDE, photo.shape)
        x0, y0, x1, y1 = region.box
        inside[y0:y1, x0:x1] = True
    assert changed.any() and not changed[~inside].any()
    assert psnr(result.image, photo) > 30


def test_only_the_centre_face_and_too_small_faces_are_said(identity_restorer, tmp_path):
    from components.data.schema import encode_png

    photo, near_centre, _ = placed(7, 0, 1.0, (240, 180))
    _, corner, _ = placed(8, 0, 1.0, (60, 60))
    (tmp_path / "p.png").write_bytes(encode_png(photo))
    tiny = template_landmarks(12) + 300
    detector = StubDetector([Found(corner), Found(near_centre), Found(tiny)])
    detector.faces[2].box = (300, 300, 312, 312)
    options = RestoreOptions(only_center_face=True, min_face=24)
    [(_, result)] = PhotoRestorer(identity_restorer, options, detector).restore([str(tmp_path / "p.png")])
    assert len(result.faces) == 1 and "1 face(s) under --min-face 24 px" in result.reason
    region = face_region(near_centre, SIDE, photo.shape)
    assert np.array_equal(result.faces[0].cropped, crop_face(photo, region))
