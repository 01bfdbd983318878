import cv2
import numpy as np
import pytest
import torch

from components.data.edges import canny_edges, canny_edges_batch
from components.data.faces import render_face


def white_square(size: int = 64, left: int = 20, right: int = 44) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    image[left:right, left:right] = 255
    return image


def step(contrast: int, size: int = 48) -> np.ndarray:
    image = np.full((size, size, 3), 100, np.uint8)
    image[:, size // 2 :] += np.uint8(contrast)
    return image


def as_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def distance_to_square_border(size: int, left: int, right: int) -> np.ndarray:
    # Distance in pixels from each pixel centre to the step between pixel rows/columns.
    inside = np.zeros((size, size), np.uint8)
    inside[left:right, left:right] = 1
    outside_distance = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)
    inside_distance = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    return np.maximum(outside_distance, inside_distance) - 0.5


def tolerant_f1(first: np.ndarray, second: np.ndarray) -> float:
    """F1 of two edge maps where an edge pixel counts if the other has one within 1 px."""
    kernel = np.ones((3, 3), np.uint8)
    precision = (first & cv2.dilate(second, kernel)).sum() / first.sum()
    recall = (second & cv2.dilate(first, kernel)).sum() / second.sum()
    return 2 * precision * recall / (precision + recall)


def iou(first: np.ndarray, second: np.ndarray) -> float:
    return (first & second).sum() / (first | second).sum()


def test_edges_are_a_binary_uint8_map_of_the_image_size():
    edges = canny_edges(render_face(0, 48).image)
    assert edges.shape == (48, 48) and edges.dtype == np.uint8
    assert set(np.unique(edges)) == {0, 1}


def test_batch_edges_are_n_by_1_by_h_by_w_of_zeros_and_ones():
    batch = as_batch([white_square(), white_square()])
    edges = canny_edges_batch(batch)
    assert edges.shape == (2, 1, 64, 64) and edges.dtype == batch.dtype
    assert set(edges.unique().tolist()) == {0.0, 1.0}


def test_a_white_square_gives_edges_along_its_border_and_none_in_flat_regions():
    distance = distance_to_square_border(64, 20, 44)
    for edges in (canny_edges(white_square()), canny_edges_batch(as_batch([white_square()]))[0, 0]):
        edges = np.asarray(edges, np.uint8)
        # Edges sit on the pixels either side of the step; at the corners, one diagonal
        # pixel in. Nothing farther out: the flat inside and outside have none.
        assert distance[edges == 1].max() <= 1.5
        # Every pixel next to the step has an edge within a pixel, corners (rounded by the
        # blur) aside.
        near = (distance <= 0.5) & (np.abs(np.indices((64, 64)) - 31.5).min(axis=0) < 8)
        assert cv2.dilate(edges, np.ones((3, 3), np.uint8))[near].all()


def test_a_flat_image_has_no_edges():
    flat = np.full((32, 32, 3), 77, np.uint8)
    assert not canny_edges(flat).any()
    assert not canny_edges_batch(as_batch([flat])).any()


def test_thresholds_are_absolute_like_skimages():
    # After the sigma-2 blur a step of height h (on [0, 1]) has a Sobel magnitude of about
    # 1.6 h: 20 grey levels stay under the high threshold 0.2, 60 clear it.
    assert not canny_edges(step(20)).any()
    assert canny_edges(step(60)).any()
    assert not canny_edges_batch(as_batch([step(20)])).any()
    assert canny_edges_batch(as_batch([step(60)])).any()


def test_more_smoothing_gives_fewer_edges():
    image = render_face(3, 64).image
    assert canny_edges(image, sigma=1.0).sum() > canny_edges(image, sigma=3.0).sum()


def test_opencv_and_kornia_paths_agree_on_rendered_faces():
    # Measured on rendered faces at 32-256 px: exact IoU >= 0.99, 1-px tolerant F1 = 1.0;
    # the two differ only in ties of non-maximum suppression.
    images = [render_face(seed, 48).image for seed in range(4)]
    batch = canny_edges_batch(as_batch(images))[:, 0].numpy().astype(np.uint8)
    for image, kornia_edges in zip(images, batch):
        opencv_edges = canny_edges(image)
        assert opencv_edges.sum() > 0
        assert iou(opencv_edges, kornia_edges) >= 0.97
        assert tolerant_f1(opencv_edges, kornia_edges) >= 0.99


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        canny_edges(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="sigma"):
        canny_edges(white_square(), sigma=0.0)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        canny_edges_batch(torch.zeros(1, 1, 8, 8))
