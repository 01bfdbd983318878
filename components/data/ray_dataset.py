"""Shards as a Ray Data dataset of decoded, tensor-ready columns for the training loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from components import storage
from components.data.decode import decode_columns

# A split is kept in Ray's object store (still PNG-encoded) when its shard files take at most
# this share of the store; a larger one streams from the files every epoch.
KEEP_IN_MEMORY_SHARE = 0.1


def shard_dataset(shard_uris: Sequence[str], split: str, columns: Sequence[str], keep: bool | None = None) -> Any:
    """Only `columns` (PNG) come out, decoded to float32 NCHW: iter_torch_batches rejects strings.
    `keep`: hold the split in the object store after one read; None keeps it when it fits.

    Why small splits are kept: every execution of a Parquet read lists its files again, and
    Ray Data 2.60 starts a pool of footer-reading actors to do it, ~2 s per epoch whatever the
    split's size. A demo-sized split (a few MB) spent most of its training time there; reading
    it once and keeping the encoded rows makes the later epochs cost only the decode.
    """
    import ray.data

    if not shard_uris:
        raise ValueError("no shards to read")
    filesystem, _ = storage.resolve(shard_uris[0])
    paths = [storage.resolve(uri)[1] for uri in shard_uris]
    dataset = ray.data.read_parquet(paths, filesystem=filesystem).select_columns(["split", *columns])
    dataset = dataset.filter(expr=f"split == '{split}'")
    if keep is None:
        keep = fits_in_object_store(sum(info.size for info in filesystem.get_file_info(paths)))
    if keep:
        dataset = dataset.materialize()
    return dataset.map_batches(decode_columns, fn_kwargs={"columns": list(columns)}, batch_format="numpy")


def fits_in_object_store(nbytes: int) -> bool:
    import ray

    return nbytes <= KEEP_IN_MEMORY_SHARE * ray.cluster_resources().get("object_store_memory", 0)
