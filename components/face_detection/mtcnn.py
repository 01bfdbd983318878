"""MTCNN face detector: the box, score and 5 landmarks of every face in RGB photos, in plain torch.

In: uint8 RGB photos, H x W x 3 numpy arrays of any size (what `components.data.sources.read_photo`
returns). Out: per photo, a list of `Face` (box, O-Net probability, 5 landmarks), best score first.

Method: MTCNN (K. Zhang, Z. Zhang, Z. Li, Y. Qiao, "Joint Face Detection and Alignment Using Multitask
Cascaded Convolutional Networks", IEEE Signal Processing Letters 2016). A fully convolutional proposal
net (P-Net) scores every 12 x 12 window of an image pyramid; a refine net (R-Net, 24 px crops) and an
output net (O-Net, 48 px crops, which also places the landmarks) reject and correct the survivors, with
non-maximum suppression (NMS) after each stage.

Weights: the P-, R- and O-Net state dicts that facenet-pytorch 2.6.0 (Tim Esler, MIT licence) ships as
package data (data/pnet.pt, rnet.pt, onet.pt), ported from the authors' Caffe models. The package is
located with importlib and never imported (its import needs torchvision): install it with
`pip install --no-deps facenet-pytorch==2.6.0`, or give the detector a folder holding the three files.

The stages follow facenet-pytorch's `detect_face` (same scales, thresholds, box arithmetic, crops and
layout: the nets take N x 3 x H x W images; the transposed training images of the original are folded
into the ported weights and the width-first flattening before the dense layers). Departures, all
documented in docs/methods.md ("Face detection (MTCNN)"): crops that cross the photo's border are
zero-padded as in the original MTCNN instead of clipped and stretched; photos longer than `max_side`
are detected on a shrunk copy; NMS and crop resizing are written here (no torchvision).

Coordinates: continuous pixel coordinates, pixel (row i, column j) covering x in [j, j + 1) and
y in [i, i + 1). Face.box is the outer edge of the face's pixels; landmarks are facenet-pytorch's.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.weight_files import check_state, read_state_dict

INSTALL_HINT = "pip install --no-deps facenet-pytorch==2.6.0"
OVERRIDE_HINT = ("or pass a folder holding pnet.pt, rnet.pt and onet.pt "
                 "(FaceDetector(weights_dir=...), --detector-weights DIR)")
WEIGHT_FILES = {"pnet.pt": "P-Net", "rnet.pt": "R-Net", "onet.pt": "O-Net"}

PNET_STRIDE = 2  # P-Net pools once, so neighbouring output cells are 2 input pixels apart
PNET_WINDOW = 12  # and each cell sees a 12 x 12 window
RNET_INPUT, ONET_INPUT = 24, 48
PER_SCALE_NMS, PROPOSAL_NMS, REFINE_NMS, OUTPUT_NMS = 0.5, 0.7, 0.7, 0.7
CROPS_PER_BATCH = 256  # bounds memory when a busy photo yields thousands of candidates


class MissingDetectorWeights(FileNotFoundError):
    """The MTCNN weight files are not where the detector looks for them."""


@dataclass(frozen=True)
class Face:
    """One detected face.

    box: x1, y1, x2, y2 in the photo's pixel coordinates (outer edges of the face's pixels).
    score: O-Net's face probability.
    landmarks: (5, 2) float32 x, y: left eye, right eye, nose tip, left mouth corner, right mouth
    corner, "left" meaning as seen in the image (smaller x), the order of the FFHQ template in
    components/data/faces.py.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray


# ---- the three networks; attribute names are the keys of facenet-pytorch's state dicts ----


def _flatten_width_first(x: Tensor) -> Tensor:
    # The dense weights came from nets that saw transposed images: flatten as (width, height, channel).
    return x.permute(0, 3, 2, 1).flatten(1)


class ProposalNet(nn.Module):
    """P-Net: for each 12 x 12 window (stride 2), 4 box offsets and the face probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)  # Caffe rounds pooled sizes up
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # not-face / face logits
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(1)[:, 1]


class RefineNet(nn.Module):
    """R-Net: for each 24 x 24 crop, 4 box offsets and the face probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_width_first(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), self.dense5_1(x).softmax(1)[:, 1]


class OutputNet(nn.Module):
    """O-Net: for each 48 x 48 crop, 4 box offsets, 10 landmark values (5 x then 5 y, as fractions
    of the crop) and the face probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_width_first(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(1)[:, 1]


# ---- weights ----


def default_weights_dir() -> Path:
    """facenet-pytorch's package data folder, found without importing the package."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDetectorWeights(
            f"the MTCNN face detector needs the weights that facenet-pytorch ships, and it is not installed: "
            f"{INSTALL_HINT} (no torchvision needed), {OVERRIDE_HINT}")
    return Path(spec.submodule_search_locations[0]) / "data"


def load_weights(nets: dict[str, nn.Module], weights_dir: Path) -> None:
    """Each net's state dict from its file in `weights_dir`, checked key by key and shape by shape."""
    missing = [name for name in nets if not (weights_dir / name).is_file()]
    if missing:
        raise MissingDetectorWeights(
            f"MTCNN weights folder {weights_dir} lacks {', '.join(missing)}: {INSTALL_HINT}, {OVERRIDE_HINT}")
    for name, net in nets.items():
        path, owner = weights_dir / name, f"MTCNN {WEIGHT_FILES[name]}"
        state = read_state_dict(path, owner)
        net.load_state_dict(check_state(path, owner, state, net.state_dict(),
                                        layout=f"facenet-pytorch 2.6.0's {WEIGHT_FILES[name]}"))


# ---- box arithmetic; boxes are MTCNN's inclusive 1-based pixel boxes until `_to_faces` ----


def box_overlap(box: Tensor, others: Tensor, mode: str = "union", pixel_areas: bool = False) -> Tensor:
    """Overlap of one box (4,) with each of `others` (N, 4): intersection over union ("union") or over
    the smaller box ("min"). pixel_areas: a box spans x2 - x1 + 1 columns (MTCNN's own NMS), else
    x2 - x1 (torchvision's)."""
    extra = 1.0 if pixel_areas else 0.0
    inter_w = (torch.minimum(box[2], others[:, 2]) - torch.maximum(box[0], others[:, 0]) + extra).clamp(min=0)
    inter_h = (torch.minimum(box[3], others[:, 3]) - torch.maximum(box[1], others[:, 1]) + extra).clamp(min=0)
    inter = inter_w * inter_h
    area = (box[2] - box[0] + extra) * (box[3] - box[1] + extra)
    areas = (others[:, 2] - others[:, 0] + extra) * (others[:, 3] - others[:, 1] + extra)
    if mode == "min":
        return inter / torch.minimum(area, areas)
    if mode == "union":
        return inter / (area + areas - inter)
    raise ValueError(f"NMS mode must be 'union' or 'min', got {mode!r}")


def nms(boxes: Tensor, scores: Tensor, threshold: float, mode: str = "union", groups: Tensor | None = None,
        pixel_areas: bool = False) -> Tensor:
    """Greedy non-maximum suppression: indices of the boxes kept, best score first.

    Going down the scores, a box is dropped when its `box_overlap` (`mode`, `pixel_areas`) with an
    already kept box exceeds `threshold`. Boxes of different `groups` (one integer per box) never
    suppress each other, so one call does the per-scale NMS of a whole pyramid. Costs one vector step
    per kept box, not an N x N matrix, so thousands of candidates stay cheap in memory.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"NMS mode must be 'union' or 'min', got {mode!r}")
    remaining = torch.argsort(scores, descending=True, stable=True)
    kept = []
    while remaining.numel():
        best, rest = remaining[0], remaining[1:]
        kept.append(best)
        suppressed = box_overlap(boxes[best], boxes[rest], mode, pixel_areas) > threshold
        if groups is not None:
            suppressed &= groups[rest] == groups[best]
        remaining = rest[~suppressed]
    return torch.stack(kept) if kept else torch.zeros(0, dtype=torch.long, device=boxes.device)


def apply_offsets(boxes: Tensor, offsets: Tensor, count_pixels: bool) -> Tensor:
    """MTCNN's box calibration: each side moves by its offset times the box's width or height.
    The proposal stage measures the size as x2 - x1, the later stages as x2 - x1 + 1 (as the original)."""
    extra = 1.0 if count_pixels else 0.0
    width = boxes[:, 2] - boxes[:, 0] + extra
    height = boxes[:, 3] - boxes[:, 1] + extra
    return boxes + offsets * torch.stack([width, height, width, height], dim=1)


def to_squares(boxes: Tensor) -> Tensor:
    """Each box grown to a square around its centre: the R- and O-Net take square crops."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(width, height)
    x1 = boxes[:, 0] + (width - side) * 0.5
    y1 = boxes[:, 1] + (height - side) * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def pyramid_scales(height: int, width: int, min_face: int, scale_factor: float) -> list[float]:
    """Image scales at which a `min_face` face fills P-Net's 12 px window, down to the scale at which
    the photo's shorter side is 12 px."""
    scale = PNET_WINDOW / min_face
    shorter = min(height, width) * scale
    scales = []
    while shorter >= PNET_WINDOW:
        scales.append(scale)
        scale *= scale_factor
        shorter *= scale_factor
    return scales


def windows_to_boxes(offsets: Tensor, probability: Tensor, scale: float, threshold: float) -> Tensor:
    """P-Net cells at or above `threshold` as rows (x1, y1, x2, y2, score, 4 offsets) in photo pixels."""
    rows, cols = torch.nonzero(probability >= threshold, as_tuple=True)
    x, y = cols.to(offsets.dtype), rows.to(offsets.dtype)
    boxes = torch.stack([
        torch.floor((PNET_STRIDE * x + 1) / scale), torch.floor((PNET_STRIDE * y + 1) / scale),
        torch.floor((PNET_STRIDE * x + PNET_WINDOW) / scale), torch.floor((PNET_STRIDE * y + PNET_WINDOW) / scale),
    ], dim=1)
    return torch.cat([boxes, probability[rows, cols, None], offsets[:, rows, cols].T], dim=1)


# ---- crops ----


def integral_image(image: Tensor) -> Tensor:
    """(3, H + 1, W + 1) int64 running sums of a uint8 (3, H, W) image, with a zero first row and
    column: any rectangle's sum from 4 lookups, exactly."""
    sums = image.to(torch.int64).cumsum(1).cumsum(2)
    return F.pad(sums, (1, 0, 1, 0))


def _bin_edges(start: Tensor, length: Tensor, size: int) -> tuple[Tensor, Tensor]:
    # torch's "area" resize is adaptive average pooling: bin i spans [floor(i L / s), ceil((i + 1) L / s)).
    i = torch.arange(size, device=start.device)
    low = start[:, None] + torch.div(i * length[:, None], size, rounding_mode="floor")
    high = start[:, None] - torch.div(-(i + 1) * length[:, None], size, rounding_mode="floor")
    return low, high


def crop_resize(integral: Tensor, spans: Tensor, size: int) -> Tensor:
    """Crops (N, 3, size, size) float32, each the pixel span x0 <= x < x1, y0 <= y < y1 of `spans` (N, 4
    int64) shrunk or grown to size x size as F.interpolate(mode="area") would; pixels outside the image
    count as 0 (black), as the original MTCNN pads its crops."""
    _, rows, cols = integral.shape
    x0, y0, x1, y1 = spans.unbind(1)
    col_low, col_high = _bin_edges(x0, x1 - x0, size)
    row_low, row_high = _bin_edges(y0, y1 - y0, size)
    bin_area = (row_high - row_low)[:, :, None] * (col_high - col_low)[:, None, :]
    # Outside pixels add nothing to a sum, so clamping the bins to the image keeps each sum exact.
    col_low, col_high = col_low.clamp(0, cols - 1), col_high.clamp(0, cols - 1)
    row_low, row_high = row_low.clamp(0, rows - 1), row_high.clamp(0, rows - 1)
    flat = integral.flatten(1)

    def corner(r: Tensor, c: Tensor) -> Tensor:
        return flat[:, (r[:, :, None] * cols + c[:, None, :])]

    sums = corner(row_high, col_high) - corner(row_low, col_high) - corner(row_high, col_low) + corner(row_low, col_low)
    return (sums.to(torch.float32) / bin_area.to(torch.float32)).permute(1, 0, 2, 3)


def pixel_spans(boxes: Tensor) -> Tensor:
    """The 0-based half-open pixel spans (x0, y0, x1, y1) that facenet-pytorch crops for MTCNN's
    1-based inclusive boxes: columns floor(x1) - 1 to floor(x2) - 1."""
    corners = torch.floor(boxes).to(torch.int64)
    return torch.stack([corners[:, 0] - 1, corners[:, 1] - 1, corners[:, 2], corners[:, 3]], dim=1)


def normalise(pixels: Tensor) -> Tensor:
    """0-255 values to the nets' input range, (v - 127.5) / 128."""
    return (pixels - 127.5) * 0.0078125


def place_landmarks(boxes: Tensor, points: Tensor) -> Tensor:
    """O-Net's landmark fractions (N, 10: 5 x then 5 y) as (N, 5, 2) photo coordinates, measured from
    the crop's top-left corner (x1 - 1, y1 - 1) in units of its pixel width and height."""
    width = boxes[:, 2] - boxes[:, 0] + 1
    height = boxes[:, 3] - boxes[:, 1] + 1
    xs = boxes[:, :1] - 1 + points[:, :5] * width[:, None]
    ys = boxes[:, 1:2] - 1 + points[:, 5:] * height[:, None]
    return torch.stack([xs, ys], dim=2)


# ---- input ----


def check_photo(photo: object, index: int) -> np.ndarray:
    if not isinstance(photo, np.ndarray):
        raise ValueError(f"photo {index} is a {type(photo).__name__}; want a uint8 RGB numpy array H x W x 3")
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"photo {index} is a {photo.dtype} array of shape {photo.shape}; "
                         f"want uint8 RGB H x W x 3 (convert greyscale or RGBA first)")
    return photo


def shrink_to(photo: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float, float]:
    """The photo shrunk (INTER_AREA) so its longer side is at most `max_side`, and the x and y factors
    that map the copy's coordinates back to the photo's."""
    height, width = photo.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return photo, 1.0, 1.0
    ratio = max_side / max(height, width)
    new_width, new_height = max(1, round(width * ratio)), max(1, round(height * ratio))
    small = cv2.resize(np.ascontiguousarray(photo), (new_width, new_height), interpolation=cv2.INTER_AREA)
    return small, width / new_width, height / new_height


# ---- the detector ----


class FaceDetector:
    """MTCNN over a list of photos; see the module docstring.

    min_face: the smallest face side in pixels searched for (in the shrunk copy when `max_side` applies,
    so in the photo it is min_face times the shrink factor). thresholds: the P-, R- and O-Net
    probabilities a candidate must pass. scale_factor: the ratio between pyramid levels. max_side: a
    photo whose longer side exceeds it is detected on a copy shrunk to that side (INTER_AREA), with
    boxes and landmarks mapped back; this bounds time and memory for huge photos (None: never shrink).
    """

    def __init__(self, weights_dir: str | Path | None = None, min_face: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), scale_factor: float = 0.709,
                 device: str | torch.device = "cpu", max_side: int | None = 1600) -> None:
        if min_face < 1:
            raise ValueError(f"min_face must be at least 1 pixel, got {min_face}")
        if len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
            raise ValueError(f"thresholds must be 3 probabilities (P-, R-, O-Net), got {thresholds}")
        if not 0 < scale_factor < 1:
            raise ValueError(f"scale_factor must lie strictly between 0 and 1, got {scale_factor}")
        if max_side is not None and max_side < PNET_WINDOW:
            raise ValueError(f"max_side must be at least {PNET_WINDOW} pixels or None, got {max_side}")
        self.min_face, self.thresholds = min_face, tuple(float(t) for t in thresholds)
        self.scale_factor, self.max_side, self.device = scale_factor, max_side, torch.device(device)
        self.pnet, self.rnet, self.onet = ProposalNet(), RefineNet(), OutputNet()
        folder = Path(weights_dir) if weights_dir is not None else default_weights_dir()
        load_weights({"pnet.pt": self.pnet, "rnet.pt": self.rnet, "onet.pt": self.onet}, folder)
        for net in (self.pnet, self.rnet, self.onet):
            net.to(self.device).eval().requires_grad_(False)

    def detect(self, photos: Sequence[np.ndarray]) -> list[list[Face]]:
        """The faces of each photo (photos may differ in size), best score first."""
        if isinstance(photos, np.ndarray) and photos.ndim != 4:
            raise ValueError(f"detect takes a list of photos (or an N x H x W x 3 array), got an array of shape "
                             f"{photos.shape}; for one photo use detect_one(photo) or detect([photo])")
        return [self.detect_one(check_photo(photo, i)) for i, photo in enumerate(photos)]

    @torch.no_grad()
    def detect_one(self, photo: np.ndarray) -> list[Face]:
        """The faces of one photo, best score first."""
        small, x_factor, y_factor = shrink_to(check_photo(photo, 0), self.max_side)
        image = torch.from_numpy(np.ascontiguousarray(small)).to(self.device).permute(2, 0, 1)
        boxes, scores, landmarks = self._cascade(image)
        return _to_faces(boxes, scores, landmarks, x_factor, y_factor)

    def _cascade(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """MTCNN's three stages on a uint8 (3, H, W) image: boxes (N, 4), scores (N,), landmarks (N, 5, 2)."""
        nothing = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 5, 2))
        boxes = self._propose(image)
        if not len(boxes):
            return nothing
        integral = integral_image(image)
        offsets, scores = self._run_on_crops(self.rnet, integral, boxes, RNET_INPUT)
        passed = scores > self.thresholds[1]
        boxes, offsets, scores = boxes[passed], offsets[passed], scores[passed]
        pick = nms(boxes, scores, REFINE_NMS)
        boxes = _drop_empty(to_squares(apply_offsets(boxes[pick], offsets[pick], count_pixels=True)))
        if not len(boxes):
            return nothing
        offsets, points, scores = self._run_on_crops(self.onet, integral, boxes, ONET_INPUT)
        passed = scores > self.thresholds[2]
        boxes, offsets, points, scores = boxes[passed], offsets[passed], points[passed], scores[passed]
        landmarks = place_landmarks(boxes, points)  # relative to the crop O-Net saw, before calibration
        boxes = apply_offsets(boxes, offsets, count_pixels=True)
        # "min" drops a small box lying inside a bigger, better one, which "union" would keep.
        pick = nms(boxes, scores, OUTPUT_NMS, mode="min", pixel_areas=True)
        return boxes[pick].cpu(), scores[pick].cpu(), landmarks[pick].cpu()

    def _propose(self, image: Tensor) -> Tensor:
        """Stage 1: P-Net over the pyramid; the surviving windows, calibrated and squared (N, 4)."""
        height, width = image.shape[1:]
        pixels = image[None].to(torch.float32)
        found, levels = [], []
        for level, scale in enumerate(pyramid_scales(height, width, self.min_face, self.scale_factor)):
            resized = F.interpolate(pixels, size=(int(height * scale + 1), int(width * scale + 1)), mode="area")
            offsets, probability = self.pnet(normalise(resized))
            windows = windows_to_boxes(offsets[0], probability[0], scale, self.thresholds[0])
            found.append(windows)
            levels.append(torch.full((len(windows),), level, device=self.device))
        if not found:  # a photo under 12 px on its shorter side at the first scale
            return torch.zeros(0, 4, device=self.device)
        windows, levels = torch.cat(found), torch.cat(levels)
        windows = windows[nms(windows[:, :4], windows[:, 4], PER_SCALE_NMS, groups=levels)]
        windows = windows[nms(windows[:, :4], windows[:, 4], PROPOSAL_NMS)]
        boxes = apply_offsets(windows[:, :4], windows[:, 5:], count_pixels=False)
        return _drop_empty(to_squares(boxes))

    def _run_on_crops(self, net: nn.Module, integral: Tensor, boxes: Tensor, size: int) -> tuple[Tensor, ...]:
        """`net`'s outputs for the size x size crops of `boxes`, a batch at a time."""
        spans = pixel_spans(boxes)
        outputs = [net(normalise(crop_resize(integral, spans[start:start + CROPS_PER_BATCH], size)))
                   for start in range(0, len(spans), CROPS_PER_BATCH)]
        return tuple(torch.cat(parts) for parts in zip(*outputs))


def _drop_empty(boxes: Tensor) -> Tensor:
    # A calibration that flips a box inside out leaves nothing to crop.
    return boxes[(boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])]


def _to_faces(boxes: Tensor, scores: Tensor, landmarks: Tensor, x_factor: float, y_factor: float) -> list[Face]:
    """MTCNN's 1-based inclusive boxes as outer pixel edges, everything scaled back to the photo."""
    edges = torch.stack([boxes[:, 0] - 1, boxes[:, 1] - 1, boxes[:, 2], boxes[:, 3]], dim=1)
    scale = torch.tensor([x_factor, y_factor], dtype=torch.float32)
    edges = (edges.view(-1, 2, 2) * scale).view(-1, 4)
    landmarks = landmarks * scale
    return [Face(box=tuple(float(v) for v in box), score=float(score), landmarks=points.numpy().astype(np.float32))
            for box, score, points in zip(edges, scores, landmarks)]
