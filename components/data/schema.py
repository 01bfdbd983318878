"""The versioned shard schema, the PNG coding of its image columns, and the 8-bit rounding of images.

One row per sample. Images are PNG bytes (lossless, so `hq` is exactly the target and
`lq` exactly what the degradation produced); `mask` is an 8-bit grayscale PNG holding
0 (known) or 255 (missing), so it can be looked at with any viewer. Bump SCHEMA_VERSION
on any change a reader must know about; manifests record it. `to_uint8` is the one rule by
which a float image in [0, 1] becomes the 8-bit image a user would save.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from torch import Tensor

SCHEMA_VERSION = 2  # 2: mask_kind, mask_bucket, landmarks, lr, sr_factor
LANDMARK_VALUES = 10  # 5 points (x, y): left eye, right eye, nose tip, left / right mouth corner

# Field order matches DegradationParams, which fills it with `to_row()`.
DEGRADATION_TYPE = pa.struct(
    [
        pa.field("kernel_size", pa.int32()),
        pa.field("sigma_x", pa.float32()),
        pa.field("sigma_y", pa.float32()),
        pa.field("theta", pa.float32()),
        pa.field("scale", pa.float32()),
        pa.field("noise_sigma", pa.float32()),
        pa.field("jpeg_quality", pa.int32()),
    ]
)
DEGRADATION_FIELDS = tuple(field.name for field in DEGRADATION_TYPE)

SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("hq", pa.binary(), nullable=False),
        pa.field("lq", pa.binary(), nullable=False),
        pa.field("mask", pa.binary(), nullable=False),
        pa.field("edge", pa.binary()),
        # Nullable: a real low-quality photo has no known degradation.
        pa.field("degradation", DEGRADATION_TYPE),
        pa.field("mask_ratio", pa.float32(), nullable=False),
        pa.field("mask_kind", pa.string(), nullable=False),  # free_form, box, surgical_mask, sunglasses, hand
        pa.field("mask_bucket", pa.string(), nullable=False),  # "10-20%": the reporting bucket of mask_ratio
        # Pixel (x, y) of the 5 points: exact for procedural faces, the FFHQ alignment
        # template for real aligned faces (whose points are not measured).
        pa.field("landmarks", pa.list_(pa.float32(), LANDMARK_VALUES), nullable=False),
        # Super-resolution input: `hq` shrunk by `sr_factor` (antialiased bicubic); null
        # when the dataset was made without super-resolution pairs.
        pa.field("lr", pa.binary()),
        pa.field("sr_factor", pa.int32()),
        pa.field("source", pa.string(), nullable=False),
    ],
    metadata={"facerestore.schema_version": str(SCHEMA_VERSION)},
)

# Columns holding PNG images, and how many channels each decodes to.
IMAGE_CHANNELS = {"hq": 3, "lq": 3, "lr": 3, "mask": 1, "edge": 1}


def to_uint8(images: Tensor) -> Tensor:
    """The uint8 levels of float images in [0, 1], any layout: clamped, times 255, rounded to the
    nearest level. What a model's output is once saved as PNG, so the report's grids, the paper
    protocols (components/metrics/protocols.py) and saved outputs all see the same 8-bit image."""
    return (images.detach().float().clamp(0, 1) * 255).round().byte()


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 H x W x 3 image or a grayscale uint8 H x W image."""
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8, got {array.dtype} of shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    elif array.ndim != 2:
        raise ValueError(f"encode_png expects H x W x 3 or H x W, got shape {array.shape}")
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {array.shape}")
    return encoded.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """RGB uint8 H x W x 3 for colour PNGs (alpha dropped), uint8 H x W for grayscale ones."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if image is None:
        raise ValueError(f"cannot decode PNG: {len(data)} bytes starting {bytes(data[:8])!r}")
    if image.dtype != np.uint8:
        raise ValueError(f"decode_png expects an 8-bit PNG, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_mask(mask: np.ndarray) -> bytes:
    """PNG of a {0, 1} mask (1 = missing), stored as 0 / 255."""
    return encode_png((mask > 0).astype(np.uint8) * 255)


def decode_mask(data: bytes) -> np.ndarray:
    """The {0, 1} uint8 mask (1 = missing) of a PNG written by `encode_mask`."""
    image = decode_png(data)
    if image.ndim != 2:
        raise ValueError(f"mask PNG must be grayscale, got shape {image.shape}")
    return holes_of_mask_image(image)


def holes_of_mask_image(image: np.ndarray) -> np.ndarray:
    """The {0, 1} uint8 H x W holes (1 = missing) of a mask picture, uint8 H x W or H x W x 3: a
    pixel is a hole where its grey value is above 127 (white), the convention of the shards'
    masks and of LaMa's and OpenCV's inpainting masks."""
    grey = image.mean(axis=2) if image.ndim == 3 else image
    return (grey > 127).astype(np.uint8)
