"""Write and read Parquet shards through pyarrow.fs: local paths and s3:// / gs:// URIs alike.

A shard is written to `<uri>.tmp-<random>` and renamed to `<uri>` only when complete, so
a killed write never leaves a file at `<uri>` that looks whole; leftover temporary files
do not end in `.parquet` and are never listed as shards.

The source images a shard skipped (undecodable, too small, ...) are listed in the shard's
own Parquet metadata, so the shard and its skips land together, atomically, and a rerun
that finds the shard already written still knows what it skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from components import storage
from components.data.schema import SCHEMA_VERSION, SHARD_SCHEMA

SHARD_SUFFIX = ".parquet"
_VERSION_KEY = b"facerestore.schema_version"
SKIPPED_KEY = b"facerestore.skipped"


@dataclass(frozen=True)
class ShardInfo:
    """What a manifest records about one written shard."""

    path: str
    rows: int
    split_counts: dict[str, int]
    sha256: str
    bytes: int
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"id", "path", "reason"} per source image


def write_shard(table: pa.Table, uri: str, row_group_size: int = 256,
                skipped: list[dict[str, str]] | None = None) -> ShardInfo:
    """Write `table` (cast to SHARD_SCHEMA) as Parquet at `uri`, atomically, with its skips."""
    skipped = list(skipped or [])
    table = _conform(table, uri)
    table = table.replace_schema_metadata({**table.schema.metadata, SKIPPED_KEY: json.dumps(skipped).encode()})
    buffer = _parquet_bytes(table, row_group_size)
    storage.write_bytes_atomic(uri, buffer.to_pybytes())
    return ShardInfo(
        path=storage.normalize(uri),
        rows=table.num_rows,
        split_counts=count_splits(table),
        sha256=hashlib.sha256(memoryview(buffer)).hexdigest(),
        bytes=buffer.size,
        skipped=skipped,
    )


def describe_shard(uri: str) -> ShardInfo:
    """The ShardInfo of a shard already written, e.g. by a run that was killed after it."""
    sha256, size = storage.checksum(uri)
    splits = _read_one(uri, ["split"], None)
    return ShardInfo(
        path=storage.normalize(uri),
        rows=splits.num_rows,
        split_counts=count_splits(splits),
        sha256=sha256,
        bytes=size,
        skipped=json.loads((splits.schema.metadata or {}).get(SKIPPED_KEY, b"[]")),
    )


def read_shards(
    uris: list[str], split: str | None = None, columns: list[str] | None = None
) -> pa.Table:
    """The rows of the given shards, in order, optionally of one split and some columns."""
    schema = SHARD_SCHEMA if columns is None else _select_schema(columns)
    filters = None if split is None else pc.field("split") == split
    tables = [_read_one(uri, columns, filters) for uri in uris]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def shard_exists(uri: str) -> bool:
    """Whether a complete shard is at `uri` (a leftover temporary file does not count)."""
    fs, path = storage.resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def list_shards(directory_uri: str) -> list[str]:
    """URIs of the complete shards directly under a directory, sorted by name."""
    fs, path = storage.resolve(directory_uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = sorted(
        info.base_name for info in infos if info.is_file and info.base_name.endswith(SHARD_SUFFIX)
    )
    return [f"{storage.normalize(directory_uri).rstrip('/')}/{name}" for name in names]


def count_splits(table: pa.Table) -> dict[str, int]:
    counts = pc.value_counts(table.column("split")).to_pylist()
    return {entry["values"]: entry["counts"] for entry in sorted(counts, key=lambda e: e["values"])}


def _conform(table: pa.Table, uri: str) -> pa.Table:
    missing = [name for name in SHARD_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ValueError(f"shard {uri}: table lacks columns {missing} of the shard schema")
    try:
        return table.select(SHARD_SCHEMA.names).cast(SHARD_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as error:
        raise ValueError(f"shard {uri}: table does not fit the shard schema: {error}") from error


def _parquet_bytes(table: pa.Table, row_group_size: int) -> pa.Buffer:
    # Built in memory first so its checksum costs no second read of the file.
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


def _read_one(uri: str, columns: list[str] | None, filters) -> pa.Table:
    fs, path = storage.resolve(uri)
    try:
        table = pq.read_table(path, filesystem=fs, columns=columns, filters=filters)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"shard not found: {uri}") from error
    except pa.ArrowInvalid as error:
        raise ValueError(f"cannot read shard {uri}: {error}") from error
    _check_version(table.schema, uri)
    return table


def _check_version(schema: pa.Schema, uri: str) -> None:
    version = (schema.metadata or {}).get(_VERSION_KEY)
    if version != str(SCHEMA_VERSION).encode():
        found = "none" if version is None else version.decode()
        raise ValueError(
            f"shard {uri} has schema version {found}; this code reads version {SCHEMA_VERSION}"
        )


def _select_schema(columns: list[str]) -> pa.Schema:
    unknown = [name for name in columns if name not in SHARD_SCHEMA.names]
    if unknown:
        raise ValueError(f"unknown shard columns {unknown}; the schema has {SHARD_SCHEMA.names}")
    return pa.schema([SHARD_SCHEMA.field(name) for name in columns], metadata=SHARD_SCHEMA.metadata)
