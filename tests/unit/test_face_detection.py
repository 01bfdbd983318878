"""MTCNN face detector (components/face_detection/mtcnn.py) on real photos bundled with scikit-image.

The reference numbers for the astronaut were measured once by running facenet-pytorch 2.6.0's own
`detect_face` (its torchvision calls replaced by a brute-force NMS) with the same weights; boxes here are
its boxes with x1, y1 moved 1 px left/up (MTCNN's 1-based inclusive boxes as outer pixel edges).
"""

import itertools
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skimage_data  # a dev dependency: real photos, bundled, no download

from components.face_detection import FaceDetector, MissingDetectorWeights, mtcnn, nms

ASTRONAUT_BOX = np.array([180.051, 61.156, 267.747, 172.050])
ASTRONAUT_SCORE = 0.9999977
ASTRONAUT_LANDMARKS = np.array([[205.011, 101.727], [246.763, 103.714], [224.671, 128.965],
                                [201.716, 139.246], [245.265, 141.857]])
LEFT_EYE, RIGHT_EYE, NOSE, LEFT_MOUTH, RIGHT_MOUTH = range(5)


def weights_dir():
    return mtcnn.default_weights_dir()  # `make` installs facenet-pytorch: its absence is a failure here


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(weights_dir())


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()


def only_face(faces):
    assert len(faces) == 1, [f.box for f in faces]
    return faces[0]


def assert_plausible_landmarks(face):
    points, (x1, y1, x2, y2) = face.landmarks, face.box
    assert points.shape == (5, 2) and points.dtype == np.float32
    assert points[LEFT_EYE, 0] < points[RIGHT_EYE, 0] and points[LEFT_MOUTH, 0] < points[RIGHT_MOUTH, 0]
    assert max(points[LEFT_EYE, 1], points[RIGHT_EYE, 1]) < points[NOSE, 1]
    assert points[NOSE, 1] < min(points[LEFT_MOUTH, 1], points[RIGHT_MOUTH, 1])
    assert points[LEFT_EYE, 0] < points[NOSE, 0] < points[RIGHT_EYE, 0]
    assert np.all((points[:, 0] > x1) & (points[:, 0] < x2) & (points[:, 1] > y1) & (points[:, 1] < y2))


# ---- real photos ----


def test_astronaut_has_one_face_where_facenet_pytorch_finds_it(detector, astronaut):
    face = only_face(detector.detect([astronaut])[0])
    assert face.score > 0.95
    np.testing.assert_allclose(face.box, ASTRONAUT_BOX, atol=0.5)
    np.testing.assert_allclose(face.landmarks, ASTRONAUT_LANDMARKS, atol=0.5)
    assert face.score == pytest.approx(ASTRONAUT_SCORE, abs=1e-4)
    assert_plausible_landmarks(face)
    x1, y1, x2, y2 = face.box  # by eye: the face spans about x 180-268, y 60-175 (hairline to chin)
    assert 170 < x1 < 190 and 258 < x2 < 278 and 50 < y1 < 72 and 162 < y2 < 185


def test_mirrored_photo_gives_the_mirrored_face(detector, astronaut):
    width = astronaut.shape[1]
    face = only_face(detector.detect([astronaut[:, ::-1]])[0])
    x1, y1, x2, y2 = face.box
    np.testing.assert_allclose([width - x2, y1, width - x1, y2], ASTRONAUT_BOX, atol=6)
    mirrored = face.landmarks[[RIGHT_EYE, LEFT_EYE, NOSE, RIGHT_MOUTH, LEFT_MOUTH]] * [-1, 1] + [width, 0]
    np.testing.assert_allclose(mirrored, ASTRONAUT_LANDMARKS, atol=3)
    assert_plausible_landmarks(face)


def test_two_pasted_heads_give_two_faces_best_first(detector, astronaut):
    top, left, width = 20, 110, 250
    head = astronaut[top:top + 300, left:left + width]
    faces = detector.detect([np.concatenate([head, head], axis=1)])[0]
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score > 0.95
    expected = [ASTRONAUT_BOX - [left, top, left, top] + [shift, 0, shift, 0] for shift in (0, width)]
    found = sorted((np.array(f.box) for f in faces), key=lambda box: box[0])
    for box, want in zip(found, expected):
        np.testing.assert_allclose(box, want, atol=8)
    for face in faces:
        assert_plausible_landmarks(face)


def test_photos_without_faces_give_empty_lists(detector):
    noise = np.random.default_rng(0).normal(128, 20, (240, 320, 3)).clip(0, 255).astype(np.uint8)
    assert detector.detect([skimage_data.coffee(), noise]) == [[], []]


def test_photo_too_small_for_the_pyramid_gives_no_faces(detector):
    assert detector.detect([np.zeros((10, 30, 3), np.uint8)]) == [[]]


def test_photos_of_different_sizes_in_one_call(detector, astronaut):
    results = detector.detect([astronaut, np.full((100, 60, 3), 128, np.uint8), astronaut[:300, 100:400]])
    assert [len(faces) for faces in results] == [1, 0, 1]
    np.testing.assert_allclose(results[2][0].box, ASTRONAUT_BOX - [100, 0, 100, 0], atol=6)


def test_large_photo_is_detected_on_a_shrunk_copy_in_photo_coordinates(detector, astronaut):
    big = np.repeat(np.repeat(astronaut, 4, axis=0), 4, axis=1)  # 2048 x 2048
    shrinking = FaceDetector(weights_dir(), max_side=1000)
    face = only_face(shrinking.detect([big])[0])
    assert face.score > 0.95
    np.testing.assert_allclose(np.array(face.box) / 4, ASTRONAUT_BOX, atol=4)
    np.testing.assert_allclose(face.landmarks / 4, ASTRONAUT_LANDMARKS, atol=2)


def test_face_cut_by_the_border_keeps_its_landmarks(detector, astronaut):
    # Crops over the border are zero-padded (original MTCNN), not stretched (facenet-pytorch, whose
    # landmarks land 20-40 px off here), so the visible features stay where they are.
    cut = 95
    face = only_face(detector.detect([astronaut[cut:]])[0])
    truth = ASTRONAUT_LANDMARKS - [0, cut]
    np.testing.assert_allclose(face.landmarks, truth, atol=3)


# ---- input checks and weights ----


@pytest.mark.parametrize("photo", [
    np.zeros((64, 64, 3), np.float32), np.zeros((64, 64), np.uint8), np.zeros((64, 64, 4), np.uint8), [[1, 2, 3]],
])
def test_photos_other_than_uint8_rgb_are_refused(detector, photo):
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect([photo])


def test_a_bare_photo_instead_of_a_list_is_refused(detector, astronaut):
    with pytest.raises(ValueError, match="list of photos"):
        detector.detect(astronaut)
    assert len(detector.detect_one(astronaut)) == 1


def copy_weights(tmp_path, names=("pnet.pt", "rnet.pt", "onet.pt")):
    for name in names:
        shutil.copy(weights_dir() / name, tmp_path / name)
    return tmp_path


def test_missing_weight_file_is_named_with_the_fix(tmp_path):
    copy_weights(tmp_path, ("pnet.pt", "rnet.pt"))
    with pytest.raises(MissingDetectorWeights, match="onet.pt") as err:
        FaceDetector(tmp_path)
    message = str(err.value)
    assert "lacks onet.pt:" in message and str(tmp_path) in message
    assert "--detector-weights" in message and "pip install --no-deps facenet-pytorch==2.6.0" in message


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(mtcnn.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDetectorWeights, match="pip install --no-deps facenet-pytorch==2.6.0"):
        FaceDetector()


def test_weight_file_with_wrong_keys_is_named_with_its_keys(tmp_path):
    copy_weights(tmp_path)
    torch.save({"conv1.weight": torch.zeros(28, 3, 3, 3), "fc.weight": torch.zeros(2, 2)}, tmp_path / "rnet.pt")
    with pytest.raises(ValueError) as err:
        FaceDetector(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "rnet.pt") in message and "R-Net" in message
    assert "conv1.bias" in message and "fc.weight" in message


def test_weight_file_with_wrong_shapes_is_named(tmp_path):
    copy_weights(tmp_path)
    state = torch.load(tmp_path / "pnet.pt", weights_only=True)
    state["conv1.weight"] = torch.zeros(10, 3, 5, 5)
    torch.save(state, tmp_path / "pnet.pt")
    with pytest.raises(ValueError, match=r"pnet\.pt.*conv1\.weight"):
        FaceDetector(tmp_path)


# ---- the parts: NMS and crops ----


def brute_force_nms(boxes, scores, threshold, mode, groups, pixel_areas):
    extra = 1.0 if pixel_areas else 0.0

    def area(b):
        return (b[2] - b[0] + extra) * (b[3] - b[1] + extra)

    def overlap(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + extra)
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + extra)
        inter = w * h
        return inter / (min(area(a), area(b)) if mode == "min" else area(a) + area(b) - inter)

    kept = []
    for i in sorted(range(len(boxes)), key=lambda i: -scores[i]):
        if all(groups[i] != groups[k] or overlap(boxes[k], boxes[i]) <= threshold for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("mode, pixel_areas, grouped",
                         list(itertools.product(["union", "min"], [False, True], [False, True])))
def test_nms_equals_brute_force(mode, pixel_areas, grouped):
    rng = np.random.default_rng(3)
    for threshold in (0.3, 0.5, 0.7):
        corners = rng.uniform(0, 100, (200, 2))
        boxes = np.concatenate([corners, corners + rng.uniform(1, 40, (200, 2))], axis=1)
        scores = rng.permutation(200) / 200.0
        groups = rng.integers(0, 3, 200) if grouped else np.zeros(200, int)
        kept = nms(torch.tensor(boxes, dtype=torch.float64), torch.tensor(scores), threshold, mode,
                   torch.tensor(groups) if grouped else None, pixel_areas)
        assert kept.tolist() == brute_force_nms(boxes.tolist(), scores.tolist(), threshold, mode, groups, pixel_areas)


def test_nms_of_nothing_and_of_a_bad_mode():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match="union"):
        nms(torch.zeros(1, 4), torch.zeros(1), 0.5, mode="max")


@pytest.mark.parametrize("size", [24, 48])
def test_crops_equal_area_resize_with_zero_padding(size):
    image = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (3, 40, 50), dtype=np.uint8))
    padded = F.pad(image.to(torch.float32), (30, 30, 30, 30))  # 0 outside, as MTCNN pads
    spans = torch.tensor([[0, 0, 50, 40], [5, 7, 31, 33], [-10, -4, 20, 26], [35, 20, 70, 55], [10, 10, 13, 13]])
    crops = mtcnn.crop_resize(mtcnn.integral_image(image), spans, size)
    for crop, (x0, y0, x1, y1) in zip(crops, spans.tolist()):
        region = padded[None, :, y0 + 30:y1 + 30, x0 + 30:x1 + 30]
        expected = F.interpolate(region, size=(size, size), mode="area")[0]
        np.testing.assert_allclose(crop.numpy(), expected.numpy(), atol=1e-3, rtol=1e-5)
