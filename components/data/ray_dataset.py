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
    it once and keeping the encoded rows makes the later epochs cost only the decode. A kept
    split comes out without the `split` column (every row is of the split asked for).
    """
    import ray.data

    if not shard_uris:
        raise ValueError("no shards to read")
    filesystem, _ = storage.resolve(shard_uris[0])
    paths = [storage.resolve(uri)[1] for uri in shard_uris]
    if keep is None:
        keep = fits_in_object_store(sum(info.size for info in filesystem.get_file_info(paths)))
    if keep:
        dataset = ray.data.from_arrow(read_split(filesystem, paths, split, columns))
    else:
        dataset = ray.data.read_parquet(paths, filesystem=filesystem).select_columns(["split", *columns])
        dataset = dataset.filter(expr=f"split == '{split}'")
    return dataset.map_batches(decode_columns, fn_kwargs={"columns": list(columns)}, batch_format="numpy")


def read_split(filesystem: Any, paths: Sequence[str], split: str, columns: Sequence[str]) -> list[Any]:
    """The split's rows, one Arrow table per shard, read here and put into the object store from
    this process. Not `Dataset.materialize()`: its blocks land on whichever nodes ran the read
    tasks, and when such a node is lost Ray must re-run a read task to rebuild its block, which
    waits forever for a CPU if the trainers' placement group holds every CPU that is left. Put
    from here, the blocks live on this (the driver's) node and outlive any other node."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tables = []
    for path in paths:
        table = pq.read_table(path, filesystem=filesystem, columns=["split", *columns])
        tables.append(table.filter(pc.equal(table["split"], split)).select(list(columns)))
    return tables


def fits_in_object_store(nbytes: int) -> bool:
    import ray

    return nbytes <= KEEP_IN_MEMORY_SHARE * ray.cluster_resources().get("object_store_memory", 0)
