"""Shards as a Ray Data dataset of decoded, tensor-ready columns for the training loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from components import storage
from components.data.decode import decode_columns


def shard_dataset(shard_uris: Sequence[str], split: str, columns: Sequence[str]) -> Any:
    """Only `columns` (PNG) come out, decoded to float32 NCHW: iter_torch_batches rejects strings."""
    import ray.data

    if not shard_uris:
        raise ValueError("no shards to read")
    filesystem, _ = storage.resolve(shard_uris[0])
    paths = [storage.resolve(uri)[1] for uri in shard_uris]
    dataset = ray.data.read_parquet(paths, filesystem=filesystem, columns=["split", *columns])
    dataset = dataset.filter(expr=f"split == '{split}'")
    return dataset.map_batches(decode_columns, fn_kwargs={"columns": list(columns)}, batch_format="numpy")
