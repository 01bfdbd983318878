"""Face-occlusion masks placed from the 5 landmarks: surgical mask, sunglasses, hand (1 = missing).

Each occluder is drawn in a frame fixed to the face: origin at the midpoint of the eyes, one
axis along the eye line, the other towards the mouth, and one unit = the inter-ocular distance
(IOD), so the mask follows the face's size, position and roll. Where the shape ranges and the
landmark template come from: docs/methods.md, section "data/occlusion_masks.py".

Landmarks are (5, 2) float pixel coordinates (x, y) in the order left eye, right eye, nose
tip, left mouth corner, right mouth corner ("left" = smaller x in the image), in pixel-index
coordinates (the centre of pixel (i, j) is at x=j, y=i), as `faces.render_face` returns
them and as facexlib's detectors give them. `occlusion_mask` returns a size x size uint8 mask
of {0, 1}; `template_landmarks` gives the FFHQ 5-point template for a real aligned image
that has no landmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import cv2
import numpy as np

from components.data.faces import FFHQ_TEMPLATE

OcclusionKind = Literal["surgical_mask", "sunglasses", "hand"]
OCCLUSION_KINDS: tuple[str, ...] = get_args(OcclusionKind)

# facexlib FaceRestoreHelper.face_template (512 px): left eye, right eye, nose tip,
# left mouth corner, right mouth corner; the procedural faces are drawn to the same one.
FFHQ_TEMPLATE_5PT = FFHQ_TEMPLATE * 512.0
_TEMPLATE_SIZE = 512

# cv2 drawing takes fixed-point coordinates with this many fractional bits: shapes keep
# sub-pixel positions at 32 px, where one IOD is 8 pixels.
_SHIFT = 4
_ONE = 1 << _SHIFT
_CURVE_POINTS = 48


@dataclass(frozen=True)
class _FaceFrame:
    """Face coordinates (u along the eye line, v towards the mouth, in IODs) to pixels."""

    origin: np.ndarray
    right: np.ndarray
    down: np.ndarray
    iod: float

    def to_pixels(self, uv: np.ndarray) -> np.ndarray:
        return self.origin + self.iod * (uv[:, :1] * self.right + uv[:, 1:] * self.down)

    def to_face(self, xy: np.ndarray) -> np.ndarray:
        offset = (np.atleast_2d(xy) - self.origin) / self.iod
        return np.stack([offset @ self.right, offset @ self.down], axis=1)


@dataclass(frozen=True)
class _Placement:
    """Turn face coordinates by `angle` about `pivot`, shift them, and map them to pixels."""

    frame: _FaceFrame
    pivot: np.ndarray
    angle: float
    shift: np.ndarray

    def __call__(self, uv: np.ndarray) -> np.ndarray:
        return self.frame.to_pixels(_rotate(uv, self.pivot, self.angle) + self.shift)


def template_landmarks(size: int) -> np.ndarray:
    """The FFHQ 5-point template for a size x size aligned face, (5, 2) float64 pixels."""
    if size < 1:
        raise ValueError(f"template_landmarks: size must be positive, got {size}")
    return FFHQ_TEMPLATE_5PT * (size / _TEMPLATE_SIZE)


def occlusion_mask(
    rng: np.random.Generator, size: int, landmarks: np.ndarray, kind: OcclusionKind
) -> np.ndarray:
    """A size x size uint8 mask of {0, 1}, 1 = missing, of one occluder placed on the face.

    All randomness (shape, size, angle and position jitter) comes from `rng`, so the same
    rng state gives the same mask.
    """
    if size < 1:
        raise ValueError(f"occlusion_mask: size must be positive, got {size}")
    if kind not in _DRAWERS:
        raise ValueError(f"occlusion_mask: unknown kind {kind!r}, expected {OCCLUSION_KINDS}")
    frame = _face_frame(landmarks)
    mask = np.zeros((size, size), np.uint8)
    _DRAWERS[kind](rng, mask, frame, frame.to_face(np.asarray(landmarks, np.float64)))
    return mask


def _face_frame(landmarks: np.ndarray) -> _FaceFrame:
    points = np.asarray(landmarks, np.float64)
    if points.shape != (5, 2) or not np.all(np.isfinite(points)):
        raise ValueError(
            f"landmarks must be a finite (5, 2) array of (x, y) pixels, got shape {points.shape}"
        )
    eye_line = points[1] - points[0]
    iod = float(np.hypot(*eye_line))
    if iod < 1e-6:
        raise ValueError(f"landmarks: the two eyes coincide at {points[0].tolist()}")
    right = eye_line / iod
    # Image y points down, so turning the eye line by +90 degrees points at the mouth.
    down = np.array([-right[1], right[0]])
    return _FaceFrame(origin=(points[0] + points[1]) / 2, right=right, down=down, iod=iod)


def _surgical_mask(
    rng: np.random.Generator, mask: np.ndarray, frame: _FaceFrame, face: np.ndarray
) -> None:
    """From the nose bridge, across the cheeks, to under the chin; ear loops half the time."""
    nose_v = float(face[2, 1])
    mouth_v = float(face[3:, 1].mean())
    mouth_half = float(np.abs(face[3:, 0]).max())
    top = nose_v * rng.uniform(0.5, 0.65)  # the bridge: well under the eyes, over the nose tip
    drop = rng.uniform(0.05, 0.2)  # the top edge falls towards the cheeks
    half_width = max(rng.uniform(0.95, 1.15), mouth_half + 0.3)
    bottom = mouth_v + rng.uniform(0.6, 0.9)  # under the chin
    right_half = np.array(
        [
            [0.0, top],
            [0.45 * half_width, top + 0.5 * drop],
            [half_width, top + drop],
            [0.92 * half_width, bottom - 0.45],
            [0.6 * half_width, bottom - 0.12],
            [0.0, bottom],
        ]
    )
    outline = np.concatenate([right_half, _mirror(right_half[-2:0:-1])])
    # A small turn about the nose tip and a shift: masks are never put on exactly straight.
    angle = np.radians(rng.uniform(-5.0, 5.0))
    place = _Placement(frame, face[2], angle, rng.uniform(-0.04, 0.04, 2))
    _fill(mask, place(outline))
    if rng.uniform() < 0.5:
        ear = np.array([half_width + 0.22, 0.45])
        for side in (np.array([1.0, 1.0]), np.array([-1.0, 1.0])):
            for corner in right_half[[2, 3]] * side:
                _line(mask, place(np.stack([corner, ear * side])), 0.04 * frame.iod)


def _sunglasses(
    rng: np.random.Generator, mask: np.ndarray, frame: _FaceFrame, face: np.ndarray
) -> None:
    """Two lenses over the eyes, from ellipses to rounded rectangles, a bridge and arms."""
    eye_u = float(np.abs(face[:2, 0]).mean())
    half_width = rng.uniform(0.36, 0.46)
    half_height = half_width * rng.uniform(0.7, 0.95)
    squareness = rng.uniform(2.0, 5.0)  # superellipse exponent: 2 = ellipse, 5 ~ rounded box
    centre_u = eye_u + rng.uniform(0.0, 0.08)
    centre_v = rng.uniform(-0.02, 0.08)
    angle = np.radians(rng.uniform(-4.0, 4.0))
    place = _Placement(frame, np.zeros(2), angle, rng.uniform(-0.03, 0.03, 2))
    for side in (-1.0, 1.0):
        lens = _superellipse(half_width, half_height, squareness) + [side * centre_u, centre_v]
        _fill(mask, place(lens))
    frame_width = rng.uniform(0.04, 0.08) * frame.iod
    bridge_v = centre_v - 0.4 * half_height
    inner = centre_u - half_width + 0.05
    _line(mask, place(np.array([[-inner, bridge_v], [inner, bridge_v]])), frame_width)
    if rng.uniform() < 0.7:
        outer = centre_u + half_width - 0.05
        temple = rng.uniform(1.05, 1.2)
        for side in (-1.0, 1.0):
            arm = np.array([[side * outer, bridge_v], [side * temple, centre_v + 0.05]])
            _line(mask, place(arm), frame_width)


def _hand(
    rng: np.random.Generator, mask: np.ndarray, frame: _FaceFrame, face: np.ndarray
) -> None:
    """A hand at any angle over the mouth or the eyes, half the time each."""
    shapes, anchor = _hand_shapes(rng)
    over_mouth = rng.uniform() < 0.5
    target = face[3:].mean(axis=0) if over_mouth else face[:2].mean(axis=0)
    target = target + rng.uniform(-0.35, 0.35, size=2)
    place = _Placement(frame, np.zeros(2), rng.uniform(0.0, 2 * np.pi), target)
    for shape in shapes:
        _fill(mask, place(shape - anchor))


def _hand_shapes(rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """A palm and 4 fingers (a thumb too, 60% of the time) in the hand's own frame, where
    the fingers point to -y and run index to little finger along x; and the point between
    palm and fingers, near the hand's centroid, that goes on the target."""
    scale = rng.uniform(0.85, 1.15)
    palm = np.array([0.62, 0.78]) * scale  # half-width across, half-length along the fingers
    finger_length = 1.15 * scale * rng.uniform(0.9, 1.1)
    finger_radius = 0.135 * scale
    splay = rng.uniform(0.0, 0.12)  # radians between neighbouring fingers
    handedness = 1.0 if rng.uniform() < 0.5 else -1.0
    shapes = [_superellipse(palm[0], palm[1], 2.0)]
    for i, relative in enumerate((0.85, 1.0, 0.95, 0.75)):
        base = np.array([handedness * palm[0] * (-0.72 + 0.48 * i), -0.8 * palm[1]])
        tip = base + finger_length * relative * _heading((i - 1.5) * splay * handedness)
        shapes.append(_capsule(base, tip, finger_radius))
    if rng.uniform() < 0.6:
        base = np.array([-handedness * 0.8 * palm[0], 0.1 * palm[1]])
        tip = base + 0.7 * finger_length * _heading(-handedness * np.radians(rng.uniform(40, 70)))
        shapes.append(_capsule(base, tip, 1.15 * finger_radius))
    return shapes, np.array([0.0, -0.65 * palm[1]])


def _heading(angle: float) -> np.ndarray:
    """Unit vector turned by angle from -y (the fingers' direction) towards +x."""
    return np.array([np.sin(angle), -np.cos(angle)])


_Drawer = Callable[[np.random.Generator, np.ndarray, _FaceFrame, np.ndarray], None]
_DRAWERS: dict[str, _Drawer] = {
    "surgical_mask": _surgical_mask,
    "sunglasses": _sunglasses,
    "hand": _hand,
}


def _superellipse(half_width: float, half_height: float, exponent: float) -> np.ndarray:
    """Outline of |x/a|^n + |y/b|^n = 1 about the origin: n = 2 an ellipse, larger n squarer."""
    t = np.linspace(0.0, 2 * np.pi, _CURVE_POINTS, endpoint=False)
    cos, sin = np.cos(t), np.sin(t)
    power = 2.0 / exponent
    x = half_width * np.sign(cos) * np.abs(cos) ** power
    y = half_height * np.sign(sin) * np.abs(sin) ** power
    return np.stack([x, y], axis=1)


def _capsule(start: np.ndarray, end: np.ndarray, radius: float) -> np.ndarray:
    """Outline of the segment start-end thickened by radius, with round caps."""
    along = end - start
    heading = float(np.arctan2(along[1], along[0]))
    half = _CURVE_POINTS // 2
    cap = np.linspace(-np.pi / 2, np.pi / 2, half)
    end_cap = end + radius * np.stack([np.cos(heading + cap), np.sin(heading + cap)], axis=1)
    start_cap = start + radius * np.stack(
        [np.cos(heading + np.pi + cap), np.sin(heading + np.pi + cap)], axis=1
    )
    return np.concatenate([end_cap, start_cap])


def _rotate(points: np.ndarray, pivot: np.ndarray, angle: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    return (points - pivot) @ rotation.T + pivot


def _mirror(points: np.ndarray) -> np.ndarray:
    return points * np.array([-1.0, 1.0])


def _fill(mask: np.ndarray, polygon: np.ndarray) -> None:
    cv2.fillPoly(mask, [_fixed(polygon)], 1, cv2.LINE_8, _SHIFT)


def _line(mask: np.ndarray, ends: np.ndarray, width: float) -> None:
    # Strings and frames stay at least one pixel wide, so they do not vanish at 32 px.
    start, end = _fixed(ends)
    thickness = max(1, round(width))
    start_xy, end_xy = (int(start[0]), int(start[1])), (int(end[0]), int(end[1]))
    cv2.line(mask, start_xy, end_xy, 1, thickness, cv2.LINE_8, _SHIFT)


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * _ONE).astype(np.int32)
