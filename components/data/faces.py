"""Procedural faces: the embedded default source, so the demo and tests need no download.

Each seed gives one face: background, head, skin, hair, ears, eyes, brows, nose, mouth,
optional glasses, clothes and a directional light, all drawn with OpenCV's anti-aliased
primitives at 4x the requested size and shrunk with INTER_AREA, so edges stay smooth at
32-64 px.

The faces are aligned like aligned FFHQ: the mean landmark positions are the 5-point
template that GFPGAN / facexlib warp FFHQ faces to (`face_template` for 512 px:
eyes (192.98, 239.95) and (318.90, 240.19), nose (256.63, 314.02), mouth corners
(201.26, 371.41) and (313.09, 371.15)), divided by 512; so the eyes sit about 47% down.
Each seed jitters them by a few percent of the image size.

Coordinates below are "unit" coordinates: (0, 0) is the top-left corner of the image and
(1, 1) its bottom-right corner; landmarks come back in pixel-index coordinates (the centre
of pixel (i, j) is at x=j, y=i), the convention of facexlib's landmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SUPERSAMPLE = 4
# cv2 drawing takes fixed-point coordinates with this many fractional bits.
_SHIFT = 4
_ONE = 1 << _SHIFT

# FFHQ 5-point template of GFPGAN / facexlib (512 px), in unit coordinates.
FFHQ_TEMPLATE = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
) / 512.0

# Anchors from light to dark skin (RGB); a face mixes two neighbours.
_SKIN = np.array(
    [
        [255, 225, 200], [241, 196, 165], [226, 172, 132], [199, 139, 100],
        [163, 106, 72], [121, 78, 52], [86, 56, 40],
    ],
    dtype=np.float64,
)
_HAIR = np.array(
    [
        [28, 24, 24], [58, 40, 30], [98, 66, 42], [140, 76, 40], [190, 150, 95],
        [222, 196, 140], [160, 158, 155], [226, 224, 218],
    ],
    dtype=np.float64,
)
_IRIS = np.array(
    [[70, 45, 25], [110, 70, 35], [60, 110, 160], [80, 120, 80], [130, 110, 60], [115, 125, 135]],
    dtype=np.float64,
)
_HAIR_STYLES = ("short", "long", "bob", "none")
_HAIR_STYLE_P = (0.4, 0.3, 0.2, 0.1)


@dataclass(frozen=True)
class Face:
    """One rendered face: RGB uint8 image (H x W x 3) and its 5 landmarks (5 x 2, x y)."""

    image: np.ndarray
    landmarks: np.ndarray


@dataclass(frozen=True)
class _Colours:
    background: tuple[np.ndarray, np.ndarray]
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lips: np.ndarray
    clothes: np.ndarray
    glasses: np.ndarray


@dataclass(frozen=True)
class _Shape:
    landmarks: np.ndarray  # 5 x 2, unit coordinates
    centre: tuple[float, float]
    axes: tuple[float, float]
    eye_axes: tuple[float, float]
    gaze: float
    brow_lift: float
    brow_width: float
    brow_tilt: float
    hairline: float
    fringe: float
    hair_style: str
    part_angle: float
    lip_heights: tuple[float, float]
    glasses: bool
    background_angle: float
    light_angle: float
    light_strength: float


def render_face(seed: int, size: int) -> Face:
    """Draw the face of `seed` at `size` x `size` pixels; all randomness comes from the seed."""
    if size < 8:
        raise ValueError(f"render_face: size must be at least 8 pixels, got {size}")
    rng = np.random.default_rng(seed)
    colours = _sample_colours(rng)
    shape = _sample_shape(rng)
    canvas = _Canvas(size * SUPERSAMPLE)
    _draw_background(canvas, colours, shape)
    _draw_body(canvas, colours, shape)
    _draw_head(canvas, colours, shape)
    _draw_eyes(canvas, colours, shape)
    _draw_brows(canvas, colours, shape)
    _draw_nose(canvas, colours, shape)
    _draw_mouth(canvas, colours, shape)
    if shape.glasses:
        _draw_glasses(canvas, colours, shape)
    image = cv2.resize(canvas.image, (size, size), interpolation=cv2.INTER_AREA)
    image = _light(image, shape)
    landmarks = (shape.landmarks * size - 0.5).astype(np.float32)
    return Face(image=image, landmarks=landmarks)


def _sample_colours(rng: np.random.Generator) -> _Colours:
    skin = _mix_neighbours(rng, _SKIN)
    hair = _mix_neighbours(rng, _HAIR)
    lips = skin * np.array([0.82, 0.55, 0.55]) + np.array([30.0, 0.0, 5.0])
    return _Colours(
        background=(_random_colour(rng), _random_colour(rng)),
        skin=skin,
        hair=hair,
        iris=_IRIS[rng.integers(len(_IRIS))] * rng.uniform(0.8, 1.2),
        lips=lips * rng.uniform(0.85, 1.1),
        clothes=_random_colour(rng),
        glasses=np.full(3, rng.uniform(10, 120)),
    )


def _mix_neighbours(rng: np.random.Generator, anchors: np.ndarray) -> np.ndarray:
    i = rng.integers(len(anchors) - 1)
    t = rng.uniform()
    return (1 - t) * anchors[i] + t * anchors[i + 1]


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    # Pull towards grey so backgrounds look like photos, not test patterns.
    grey = rng.uniform(40, 220)
    return grey + rng.uniform(0.2, 0.8) * (rng.uniform(0, 255, 3) - grey)


def _sample_shape(rng: np.random.Generator) -> _Shape:
    landmarks = _sample_landmarks(rng)
    eye_y = float(landmarks[:2, 1].mean())
    eye_w = rng.uniform(0.05, 0.065)
    return _Shape(
        landmarks=landmarks,
        centre=(float(landmarks[2, 0]), eye_y + rng.uniform(0.06, 0.09)),
        axes=(rng.uniform(0.25, 0.31), rng.uniform(0.33, 0.39)),
        eye_axes=(eye_w, eye_w * rng.uniform(0.45, 0.65)),
        gaze=rng.uniform(-0.2, 0.2),
        brow_lift=rng.uniform(0.045, 0.065),
        brow_width=rng.uniform(0.008, 0.018),
        brow_tilt=rng.uniform(-8, 8),
        hairline=eye_y - rng.uniform(0.12, 0.19),
        fringe=rng.uniform(0.005, 0.05),
        hair_style=str(rng.choice(_HAIR_STYLES, p=_HAIR_STYLE_P)),
        part_angle=rng.uniform(-12, 12),
        lip_heights=(rng.uniform(0.012, 0.022), rng.uniform(0.015, 0.03)),
        glasses=bool(rng.uniform() < 0.25),
        background_angle=rng.uniform(0, 2 * np.pi),
        light_angle=rng.uniform(0, 2 * np.pi),
        light_strength=rng.uniform(0.0, 0.3),
    )


def _sample_landmarks(rng: np.random.Generator) -> np.ndarray:
    points = FFHQ_TEMPLATE.copy()
    centre_x = points[:, 0].mean()
    eye_spread = rng.uniform(0.92, 1.08)
    mouth_spread = rng.uniform(0.85, 1.15)
    points[:2, 0] = centre_x + (points[:2, 0] - centre_x) * eye_spread
    points[3:, 0] = centre_x + (points[3:, 0] - centre_x) * mouth_spread
    points[:2, 1] += rng.uniform(-0.02, 0.02)
    points[2, 1] += rng.uniform(-0.02, 0.02)
    points[3:, 1] += rng.uniform(-0.02, 0.02)
    # Alignment is never perfect in FFHQ either: a small shift of the whole face.
    return points + rng.uniform(-0.015, 0.015, size=2)


class _Canvas:
    """An RGB image drawn on in unit coordinates, with OpenCV's anti-aliased primitives."""

    def __init__(self, side: int):
        self.side = side
        self.image = np.zeros((side, side, 3), np.uint8)

    def point(self, x: float, y: float) -> tuple[int, int]:
        # Unit (x, y) -> pixel-index coordinates of the supersampled image, in fixed point.
        return (round((x * self.side - 0.5) * _ONE), round((y * self.side - 0.5) * _ONE))

    def length(self, value: float) -> int:
        return max(1, round(value * self.side * _ONE))

    def width(self, value: float) -> int:
        return max(1, round(value * self.side))

    def ellipse(self, centre, axes, colour, angle=0.0, start=0.0, end=360.0, thickness=-1.0):
        cv2.ellipse(
            self.image, self.point(*centre), (self.length(axes[0]), self.length(axes[1])),
            angle, start, end, _rgb(colour), _thickness(self, thickness), cv2.LINE_AA, _SHIFT,
        )

    def circle(self, centre, radius, colour, thickness=-1.0):
        cv2.circle(
            self.image, self.point(*centre), self.length(radius), _rgb(colour),
            _thickness(self, thickness), cv2.LINE_AA, _SHIFT,
        )

    def line(self, start, end, colour, thickness):
        cv2.line(
            self.image, self.point(*start), self.point(*end), _rgb(colour),
            _thickness(self, thickness), cv2.LINE_AA, _SHIFT,
        )

    def polygon(self, points, colour):
        fixed = np.array([self.point(x, y) for x, y in points], np.int32)
        cv2.fillPoly(self.image, [fixed], _rgb(colour), cv2.LINE_AA, _SHIFT)


def _thickness(canvas: _Canvas, value: float) -> int:
    return -1 if value < 0 else canvas.width(value)


def _rgb(colour) -> tuple[float, float, float]:
    c = np.clip(colour, 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def _draw_background(canvas: _Canvas, colours: _Colours, shape: _Shape) -> None:
    axis = (np.arange(canvas.side, dtype=np.float32) + 0.5) / canvas.side - 0.5
    angle = shape.background_angle
    t = np.cos(angle) * axis[None, :] + np.sin(angle) * axis[:, None]
    t = (t + 0.75) / 1.5  # in [0, 1] for every direction
    first, second = (c.astype(np.float32) for c in colours.background)
    gradient = first + t[..., None] * (second - first)
    canvas.image[...] = np.clip(gradient + 0.5, 0, 255).astype(np.uint8)


def _draw_body(canvas: _Canvas, colours: _Colours, shape: _Shape) -> None:
    cx, cy = shape.centre
    a, b = shape.axes
    if shape.hair_style == "long":
        canvas.ellipse((cx, cy + 0.12), (a * 1.28, b * 1.2), colours.hair * 0.9)
    canvas.ellipse((cx, 1.08), (a * 1.9, 0.2), colours.clothes)
    top, bottom = cy + b * 0.4, 1.02
    neck = [(cx - a * 0.55, top), (cx + a * 0.55, top), (cx + a * 0.6, bottom), (cx - a * 0.6, bottom)]
    canvas.polygon(neck, colours.skin * 0.78)


def _draw_head(canvas: _Canvas, colours: _Colours, shape: _Shape) -> None:
    cx, cy = shape.centre
    a, b = shape.axes
    hair = colours.hair
    if shape.hair_style == "short":
        canvas.ellipse((cx, cy - 0.06), (a * 1.08, b * 0.98), hair)
    elif shape.hair_style == "bob":
        # Ends above the chin, so no rim of hair shows under the jaw.
        canvas.ellipse((cx, cy - 0.04), (a * 1.18, b), hair)
    ear_y = float(shape.landmarks[:2, 1].mean()) + 0.05
    for side in (-1, 1):
        canvas.ellipse((cx + side * a * 0.97, ear_y), (0.04, 0.07), colours.skin * 0.9)
    canvas.ellipse((cx, cy), (a, b), colours.skin)
    if shape.hair_style != "none":
        _draw_fringe(canvas, hair, shape)


def _draw_fringe(canvas: _Canvas, hair: np.ndarray, shape: _Shape) -> None:
    # The crown: the upper half of an ellipse whose chord lies above the hairline; then
    # a flat ellipse under the chord rounds the fringe off down to the hairline.
    cx, cy = shape.centre
    a, b = shape.axes
    chord = shape.hairline - shape.fringe
    depth = chord - (cy - b) + 0.03
    canvas.ellipse((cx, chord), (a * 1.04, depth), hair, angle=shape.part_angle, start=180, end=360)
    canvas.ellipse((cx, chord), (a * 0.98, shape.fringe), hair, angle=shape.part_angle)


def _draw_eyes(canvas: _Canvas, colours: _Colours, shape: _Shape) -> None:
    w, h = shape.eye_axes
    for x, y in shape.landmarks[:2]:
        canvas.ellipse((x, y), (w, h), (238, 236, 230))
        iris_x = x + shape.gaze * w
        canvas.circle((iris_x, y), h * 0.92, colours.iris)
        canvas.circle((iris_x, y), h * 0.42, (15, 12, 12))
        canvas.circle((iris_x + h * 0.25, y - h * 0.3), h * 0.15, (250, 250, 250))
        canvas.ellipse((x, y), (w, h), colours.skin * 0.35, start=180, end=360, thickness=0.008)


def _draw_brows(canvas: _Canvas, colours: _Colours, shape: _Shape) -> None:
    w, _ = shape.eye_axes
    for side, (x, y) in zip((-1, 1), shape.landmarks[:2]):
        canvas.ellipse(
            (x, y - shape.brow_lift + 0.025), (w * 1.35, 0.03), colours.hair * 0.7,
            angle=side * shape.brow_tilt, start=200, end=340, thickness=shape.brow_width,
        )


def _draw_nose(canvas: _Canvas, colours: _Colours, shape: _Shape) -> None:
    x, y = shape.landmarks[2]
    eye_y = float(shape.landmarks[:2, 1].mean())
    shadow = colours.skin * 0.72
    canvas.line((x - 0.012, eye_y + 0.04), (x - 0.022, y - 0.015), colours.skin * 0.85, 0.008)
    for side in (-1, 1):
        canvas.ellipse((x + side * 0.025, y + 0.004), (0.012, 0.007), shadow)
    canvas.ellipse((x, y - 0.01), (0.035, 0.02), shadow, start=20, end=160, thickness=0.006)


def _draw_mouth(canvas: _Canvas, colours: _Colours, shape: _Shape) -> None:
    left, right = shape.landmarks[3], shape.landmarks[4]
    centre = (left + right) / 2
    half = float(np.linalg.norm(right - left)) / 2
    angle = float(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0])))
    upper, lower = shape.lip_heights
    canvas.ellipse(centre, (half, upper), colours.lips * 0.9, angle=angle, start=180, end=360)
    canvas.ellipse(centre, (half * 0.92, lower), colours.lips, angle=angle, start=0, end=180)
    canvas.line(left, right, colours.lips * 0.45, 0.006)


def _draw_glasses(canvas: _Canvas, colours: _Colours, shape: _Shape) -> None:
    w, _ = shape.eye_axes
    (lx, ly), (rx, ry) = shape.landmarks[:2]
    radius = w * 1.45
    for x, y in ((lx, ly), (rx, ry)):
        canvas.circle((x, y), radius, colours.glasses, thickness=0.01)
    canvas.line((lx + radius, ly), (rx - radius, ry), colours.glasses, 0.01)
    cx = shape.centre[0]
    a = shape.axes[0]
    canvas.line((lx - radius, ly), (cx - a * 0.97, ly + 0.02), colours.glasses, 0.01)
    canvas.line((rx + radius, ry), (cx + a * 0.97, ry + 0.02), colours.glasses, 0.01)


def _light(image: np.ndarray, shape: _Shape) -> np.ndarray:
    """A smooth linear brightness ramp across the image: light from one side."""
    size = image.shape[0]
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    ramp = np.cos(shape.light_angle) * axis[None, :] + np.sin(shape.light_angle) * axis[:, None]
    gain = 1.0 + 2.0 * shape.light_strength * ramp
    lit = image.astype(np.float32) * gain[..., None]
    return np.clip(lit + 0.5, 0, 255).astype(np.uint8)
