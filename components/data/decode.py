"""Turn shard rows into arrays a model can take: float32, NCHW, in [0, 1].

`decode_columns` is what a Ray Data `map_batches` runs before `iter_torch_batches`, which
rejects string columns: only the requested columns come back, so id / split / source are
dropped there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from components.data.schema import DEGRADATION_FIELDS, IMAGE_CHANNELS, decode_mask, decode_png


def decode_columns(batch: dict[str, np.ndarray], columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Decode the requested columns of a numpy batch (each image an entry of PNG bytes).

    Images -> N x 3 x H x W (hq, lq) or N x 1 x H x W (edge); mask -> N x 1 x H x W with
    1 = missing; degradation -> N x 7 in the schema's field order; mask_ratio -> N.
    """
    return {name: _decode_column(name, _column(batch, name)) for name in columns}


def table_to_arrays(table: pa.Table, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """`decode_columns` over a whole pyarrow table, for evaluation."""
    batch = {name: _column(table, name).to_numpy(zero_copy_only=False) for name in columns}
    return decode_columns(batch, columns)


def _column(batch, name: str):
    names = batch.column_names if isinstance(batch, pa.Table) else batch.keys()
    if name not in names:
        raise KeyError(f"column {name!r} is not in the batch; it has {sorted(names)}")
    return batch[name]


def _decode_column(name: str, values: np.ndarray) -> np.ndarray:
    if name == "mask":
        return _stack(name, values, lambda data: decode_mask(data)[None].astype(np.float32))
    if name in IMAGE_CHANNELS:
        return _stack(name, values, lambda data: _chw(decode_png(data), IMAGE_CHANNELS[name], name))
    if name == "degradation":
        return _degradation_matrix(values)
    if name == "mask_ratio":
        return np.asarray(values, dtype=np.float32)
    decodable = sorted([*IMAGE_CHANNELS, "degradation", "mask_ratio"])
    raise ValueError(f"column {name!r} cannot become a tensor; decodable columns are {decodable}")


def _stack(name: str, values: np.ndarray, decode_one) -> np.ndarray:
    missing = [i for i, data in enumerate(values) if data is None]
    if missing:
        raise ValueError(f"column {name!r} is null in rows {missing[:10]} of the batch")
    return np.stack([decode_one(data) for data in values])


def _chw(image: np.ndarray, channels: int, name: str) -> np.ndarray:
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] != channels:
        raise ValueError(
            f"column {name!r} holds {image.shape[2]}-channel images, expected {channels}"
        )
    return image.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)


def _degradation_matrix(values: np.ndarray) -> np.ndarray:
    rows = []
    for i, entry in enumerate(values):
        if entry is None:
            raise ValueError(f"column 'degradation' is null in row {i} of the batch")
        rows.append([entry[field] for field in DEGRADATION_FIELDS])
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(DEGRADATION_FIELDS))
