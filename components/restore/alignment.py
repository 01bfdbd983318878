"""Warp a face of a photo to the FFHQ 5-point template, and paste a restored crop back.

A face found in a photo (5 landmarks: eye centres, nose tip, mouth corners) is mapped to the
template GFPGAN and facexlib align FFHQ to (`template_landmarks`, the template the project's
faces and masks already use) by a similarity transform: rotation, one scale, shift, fitted
to the 5 point pairs by least median of squares, so one badly placed landmark does not tilt
the face. The crop is `size` x `size`, the model's input side.

Paste-back warps the restored crop with the inverse transform and blends it into the photo
through a feathered mask: 1 inside the face, falling to 0 over a band of about 1/20 of the
face's side at the crop's border, so the seam does not show. Both directions work on the
photo's region under the face only (`FaceRegion`), never on a photo-sized array: a
50-megapixel photo costs no more per face than a small one.

Coordinates are pixel-index coordinates (the centre of pixel (i, j) is x = j, y = i), the
convention of the landmarks and of OpenCV's warpAffine.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from components.data.occlusion_masks import template_landmarks

FEATHER_FRACTION = 0.05  # of the face's side in the photo: the blend band at the crop's border
# The grey facexlib fills outside the photo with, so a face at the photo's edge is framed
# by something a restorer has seen more of than black
BORDER_VALUE = (135, 133, 132)


@dataclass(frozen=True)
class FaceRegion:
    """Where an aligned crop sits in a photo: the crop -> photo transform and the photo's
    rectangle it covers (x0, y0, x1, y1, exclusive ends), clipped to the photo."""

    to_crop: np.ndarray    # 2 x 3: photo -> crop
    to_photo: np.ndarray   # 2 x 3: crop -> photo
    size: int              # the crop's side
    box: tuple[int, int, int, int]

    @property
    def scale(self) -> float:
        """Photo pixels per crop pixel."""
        return float(np.sqrt(abs(np.linalg.det(self.to_photo[:, :2]))))


def face_region(landmarks: np.ndarray, size: int, photo_shape: tuple[int, ...], scale: float = 1.0) -> FaceRegion:
    """The region of the face with `landmarks` ((5, 2) x, y in photo pixels) aligned to a `size`
    crop. `scale`: the photo the region is for is this many times the landmarks' photo (an SR
    model's output photo); its shape is `photo_shape`."""
    # pixel centres: x in the photo is at (x + 0.5) * scale - 0.5 in a photo `scale` times larger
    points = (np.asarray(landmarks, dtype=np.float64).reshape(5, 2) + 0.5) * scale - 0.5
    to_crop, _ = cv2.estimateAffinePartial2D(points, template_landmarks(size), method=cv2.LMEDS)
    if to_crop is None:
        raise ValueError(f"no similarity transform maps the landmarks {points.round(1).tolist()} to the template")
    to_photo = cv2.invertAffineTransform(to_crop)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64) @ to_photo.T
    height, width = photo_shape[:2]
    x0, y0 = (max(0, int(np.floor(v))) for v in corners.min(axis=0))
    x1 = min(width, int(np.ceil(corners[:, 0].max())) + 1)
    y1 = min(height, int(np.ceil(corners[:, 1].max())) + 1)
    return FaceRegion(to_crop, to_photo, size, (x0, y0, max(x0, x1), max(y0, y1)))


def crop_face(photo: np.ndarray, region: FaceRegion, nearest: bool = False) -> np.ndarray:
    """The aligned `size` x `size` crop of `photo` (H x W x C or H x W); `nearest` for masks."""
    x0, y0, x1, y1 = region.box
    window = photo[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else photo[:1, :1]
    shift = _shifted(region.to_crop, x0, y0, into_window=False)
    shrink = region.scale
    if not nearest and shrink > 1.5:  # warpAffine samples, it does not average: shrink by area first
        small = (max(1, round(window.shape[1] / shrink)), max(1, round(window.shape[0] / shrink)))
        factors = (small[0] / window.shape[1], small[1] / window.shape[0])
        window = cv2.resize(np.ascontiguousarray(window), small, interpolation=cv2.INTER_AREA)
        # window pixel x' = (x + 0.5) * f - 0.5: undo it before the photo -> crop map
        shift = shift @ np.array([[1 / factors[0], 0, 0.5 / factors[0] - 0.5],
                                  [0, 1 / factors[1], 0.5 / factors[1] - 0.5], [0, 0, 1]])
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    border = 0 if nearest or photo.ndim == 2 else BORDER_VALUE
    return cv2.warpAffine(np.ascontiguousarray(window), shift, (region.size, region.size), flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def paste_face(photo: np.ndarray, crop: np.ndarray, region: FaceRegion, where: np.ndarray | None = None) -> None:
    """Blend the restored `crop` (size x size x 3, uint8) into `photo` in place, feathered at the
    crop's border. `where` (size x size, {0, 1}): only these crop pixels may change (an
    inpainting model's holes); the rest of the photo keeps its pixels exactly."""
    x0, y0, x1, y1 = region.box
    if x1 <= x0 or y1 <= y0:
        return
    into = _shifted(region.to_photo, x0, y0, into_window=True)
    window = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(crop, into, window, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    weight = cv2.warpAffine(feather_mask(region.size, region.scale), into, window, flags=cv2.INTER_LINEAR)
    if where is not None:
        weight *= cv2.warpAffine(where.astype(np.float32), into, window, flags=cv2.INTER_NEAREST)
    weight = weight[..., None]
    target = photo[y0:y1, x0:x1]
    target[...] = np.rint(face * weight + target * (1.0 - weight)).clip(0, 255).astype(np.uint8)


def feather_mask(size: int, scale: float) -> np.ndarray:
    """float32 size x size: 1 inside, ramping to 0 over the band of FEATHER_FRACTION of the face's
    side at the crop's border (the band measured in photo pixels, so it stays visible-free
    whether the face is shrunk or enlarged on the way back)."""
    band = max(1.0, FEATHER_FRACTION * size)
    if scale < 1.0:  # the crop is enlarged in the photo's pixels: a band of at least 2 photo pixels
        band = max(band, 2.0 / scale)
    index = np.arange(size, dtype=np.float32)
    distance = np.minimum(index + 0.5, size - index - 0.5)  # to the nearest border, in crop pixels
    ramp = np.clip(distance / band, 0.0, 1.0)
    return np.minimum(ramp[:, None], ramp[None, :])


def _shifted(transform: np.ndarray, x0: int, y0: int, into_window: bool) -> np.ndarray:
    """`transform` for a window of the photo whose top-left corner is (x0, y0): photo -> crop
    maps window pixels (add the corner first); crop -> photo maps into window pixels."""
    shifted = transform.astype(np.float64).copy()
    if into_window:
        shifted[:, 2] -= (x0, y0)
    else:
        shifted[:, 2] += shifted[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return shifted
