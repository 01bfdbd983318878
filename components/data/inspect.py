"""Look inside a dataset of shards: counts, parameter histograms, skips, and a contact sheet.

`facerestore data inspect PATH` prints `render_report(inspect_dataset(...))`. PATH is a
synthesize stage output (`manifest.json` + `shards/`), a folder of shards, or one shard,
on any store pyarrow.fs reaches. Only the small columns of every row are read; image bytes
are read for one row (the resolution) and for the rows sampled into the contact sheet, so
inspecting a large dataset costs about as much memory as its metadata.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from components import storage
from components.data.mask_buckets import MASK_BUCKETS
from components.data.schema import decode_png
from components.data.shards import SHARD_SUFFIX, SKIPPED_KEY, list_shards, read_shards

MANIFEST_NAME = "manifest.json"
SHARDS_FOLDER = "shards"
HISTOGRAM_BINS = 8
DEGRADATION_PARAMETERS = ("sigma_x", "sigma_y", "scale", "noise_sigma", "jpeg_quality")
SHEET_SEPARATOR = 2  # pixels between tiles
SEPARATOR_GREY = 64
NULL_TILE_GREY = 128  # an image the row does not have (edge or lr written as null)
SKIPPED_SHOWN = 20

_COUNT_COLUMNS = ["split", "source", "mask_kind", "mask_bucket", "mask_ratio", "degradation"]
_SHEET_COLUMNS = ["hq", "lq", "mask", "edge", "lr"]
_SPARK = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class SkippedInput:
    """A source image the synthesize stage could not use."""

    id: str
    path: str
    reason: str


@dataclass(frozen=True)
class Histogram:
    """`counts[i]` values fell in [edges[i], edges[i + 1]); the last bin includes its right edge."""

    name: str
    counts: list[int]
    edges: list[float]

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass
class DatasetReport:
    path: str
    shards: list[str]
    bytes: int
    rows: int
    resolution: tuple[int, int] | None  # (height, width) of the first row's hq; None when empty
    splits: dict[str, int]
    sources: dict[str, int]
    mask_kinds: dict[str, int]
    mask_buckets: dict[str, int]
    degraded_rows: int  # rows with a degradation record; real low-quality photos have none
    degradation: list[Histogram]
    mask_ratio: Histogram
    skipped: list[SkippedInput]
    manifest: bool  # whether the skips and split counts came with a manifest
    sheet_path: str | None = None
    sheet_samples: list[str] = field(default_factory=list)  # ids of the rows on the sheet, top to bottom

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)


def inspect_dataset(path: str, sheet_path: str | None, samples: int = 8, seed: int = 0) -> DatasetReport:
    """Report on the dataset at `path`; with `sheet_path`, also write a contact sheet PNG there.

    The sheet shows `samples` rows drawn without replacement by `seed` (all rows when there
    are fewer); none is written for an empty dataset.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    shards, manifest = locate(path)
    table = read_shards(shards, columns=_COUNT_COLUMNS)
    report = DatasetReport(
        path=storage.normalize(path),
        shards=shards,
        bytes=sum(_size(uri) for uri in shards),
        rows=table.num_rows,
        resolution=_resolution(shards),
        splits=_counts(table, "split"),
        sources=_counts(table, "source"),
        mask_kinds=_counts(table, "mask_kind"),
        mask_buckets=_bucket_counts(table),
        degraded_rows=table.num_rows - table.column("degradation").null_count,
        degradation=degradation_histograms(table),
        mask_ratio=histogram("mask_ratio", _values(table.column("mask_ratio"))),
        skipped=_manifest_skips(manifest, path) if manifest is not None else _shard_skips(shards),
        manifest=manifest is not None,
    )
    if sheet_path is not None and samples > 0 and report.rows > 0:
        report.sheet_samples = write_contact_sheet(shards, report.resolution, sheet_path, samples, seed)
        report.sheet_path = storage.normalize(sheet_path)
    return report


def locate(path: str) -> tuple[list[str], dict | None]:
    """The shard URIs at `path`, and its manifest when it is a stage output."""
    fs, local = storage.resolve(path)
    kind = fs.get_file_info(local).type
    if kind == pafs.FileType.File:
        if not local.endswith(SHARD_SUFFIX):
            raise ValueError(f"{path} is a file but not a {SHARD_SUFFIX} shard")
        return [storage.normalize(path)], None
    if kind != pafs.FileType.Directory:
        raise FileNotFoundError(f"no dataset at {path}: it is neither a folder nor a shard file")
    manifest_uri = storage.join(path, MANIFEST_NAME)
    manifest = storage.read_json(manifest_uri) if storage.exists(manifest_uri) else None
    shards = list_shards(storage.join(path, SHARDS_FOLDER)) or list_shards(path)
    if not shards:
        raise FileNotFoundError(f"no {SHARD_SUFFIX} shards in {path} or in {storage.join(path, SHARDS_FOLDER)}")
    return shards, manifest


def histogram(name: str, values: np.ndarray, bins: int = HISTOGRAM_BINS) -> Histogram:
    """numpy's histogram of `values`, or an empty one (no bins) when there are none."""
    if values.size == 0:
        return Histogram(name, [], [])
    counts, edges = np.histogram(values, bins=bins)
    return Histogram(name, counts.astype(int).tolist(), edges.astype(float).tolist())


def degradation_histograms(table: pa.Table) -> list[Histogram]:
    """One histogram per degradation parameter, over the rows that have a degradation."""
    column = table.column("degradation")
    present = column.filter(column.is_valid())
    return [histogram(name, _values(pc.struct_field(present, name))) for name in DEGRADATION_PARAMETERS]


def write_contact_sheet(shards: list[str], resolution: tuple[int, int], sheet_path: str,
                        samples: int, seed: int) -> list[str]:
    """Write a PNG of `samples` seeded random rows, HQ | LQ | mask | edge (| LR); their ids."""
    rows = _sampled_rows(shards, samples, seed)
    with_lr = any(row["lr"] is not None for row in rows)
    columns = _SHEET_COLUMNS if with_lr else _SHEET_COLUMNS[:-1]
    grid = [[_tile(row[name], resolution) for name in columns] for row in rows]
    sheet = _assemble(grid, resolution)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"PNG encoding of the contact sheet for {sheet_path} failed")
    storage.write_bytes_atomic(sheet_path, encoded.tobytes())
    return [row["id"] for row in rows]


def sheet_shape(samples: int, tiles: int, resolution: tuple[int, int]) -> tuple[int, int, int]:
    """(height, width, 3) of a sheet of `samples` rows of `tiles` tiles each."""
    height, width = resolution
    return (samples * (height + SHEET_SEPARATOR) - SHEET_SEPARATOR,
            tiles * (width + SHEET_SEPARATOR) - SHEET_SEPARATOR, 3)


def render_report(report: DatasetReport) -> list:
    """Rich renderables for the terminal, in reading order."""
    from rich.table import Table

    summary = Table(title=f"dataset {report.path}", show_header=False)
    summary.add_column("key", style="bold")
    summary.add_column("value")
    resolution = "-" if report.resolution is None else f"{report.resolution[1]} x {report.resolution[0]}"
    for key, value in [("rows", str(report.rows)), ("shards", str(len(report.shards))),
                       ("size", _human_bytes(report.bytes)), ("resolution", resolution),
                       ("manifest", "yes" if report.manifest else "no"),
                       ("skipped inputs", str(report.skipped_count)),
                       ("contact sheet", report.sheet_path or "-")]:
        summary.add_row(key, value)
    renderables = [summary]
    for title, counts in [("splits", report.splits), ("sources", report.sources),
                          ("mask kinds", report.mask_kinds), ("mask buckets", report.mask_buckets)]:
        renderables.append(_count_table(title, counts, report.rows))
    renderables.append(_histogram_table(report))
    if report.skipped:
        renderables.append(_skipped_table(report.skipped))
    return renderables


def _counts(table: pa.Table, column: str) -> dict[str, int]:
    return dict(sorted(Counter(table.column(column).to_pylist()).items()))


def _bucket_counts(table: pa.Table) -> dict[str, int]:
    counts = Counter(table.column("mask_bucket").to_pylist())
    # The reporting order of the buckets, then any this code does not know, by name.
    known = {name: counts[name] for name in MASK_BUCKETS if name in counts}
    return {**known, **{name: n for name, n in sorted(counts.items()) if name not in known}}


def _values(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.drop_null().to_numpy(), dtype=np.float64)


def _size(uri: str) -> int:
    fs, path = storage.resolve(uri)
    return fs.get_file_info(path).size or 0


def _open(uri: str) -> pq.ParquetFile:
    fs, path = storage.resolve(uri)
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"shard not found: {uri}") from error


def _resolution(shards: list[str]) -> tuple[int, int] | None:
    for uri in shards:
        for batch in _open(uri).iter_batches(batch_size=1, columns=["hq"]):
            if batch.num_rows:
                return decode_png(batch.column(0)[0].as_py()).shape[:2]
    return None


def _manifest_skips(manifest: dict, path: str) -> list[SkippedInput]:
    details = manifest.get("details")
    if not isinstance(details, dict):
        raise ValueError(f"{storage.join(path, MANIFEST_NAME)} has no 'details' object")
    return [_skip(record, storage.join(path, MANIFEST_NAME)) for record in details.get("skipped", [])]


def _shard_skips(shards: list[str]) -> list[SkippedInput]:
    skipped = []
    for uri in shards:
        fs, path = storage.resolve(uri)
        metadata = pq.read_schema(path, filesystem=fs).metadata or {}
        try:
            records = json.loads(metadata.get(SKIPPED_KEY, b"[]"))
        except json.JSONDecodeError as error:
            raise ValueError(f"shard {uri}: metadata {SKIPPED_KEY.decode()} is not JSON: {error}") from error
        skipped.extend(_skip(record, uri) for record in records)
    return skipped


def _skip(record: dict, where: str) -> SkippedInput:
    try:
        return SkippedInput(str(record["id"]), str(record["path"]), str(record["reason"]))
    except (KeyError, TypeError) as error:
        raise ValueError(f"{where}: skipped record {record!r} lacks id, path or reason") from error


def _sampled_rows(shards: list[str], samples: int, seed: int) -> list[dict]:
    """The image columns (and id) of the sampled rows, reading only the row groups that hold them."""
    files = [_open(uri) for uri in shards]
    groups = [(s, g) for s, file in enumerate(files) for g in range(file.num_row_groups)]
    # Index of the first row after each row group, over the whole dataset in order.
    ends = np.cumsum([files[s].metadata.row_group(g).num_rows for s, g in groups])
    chosen = np.random.default_rng(seed).choice(int(ends[-1]), size=min(samples, int(ends[-1])), replace=False)
    read: dict[int, pa.Table] = {}
    rows = []
    for index in chosen:
        group = int(np.searchsorted(ends, index, side="right"))
        if group not in read:
            s, g = groups[group]
            available = [name for name in ["id", *_SHEET_COLUMNS] if name in files[s].schema_arrow.names]
            read[group] = files[s].read_row_group(g, columns=available)
        start = int(ends[group]) - read[group].num_rows
        rows.append({"lr": None, "edge": None, **read[group].slice(int(index) - start, 1).to_pylist()[0]})
    return rows


def _tile(data: bytes | None, resolution: tuple[int, int]) -> np.ndarray:
    height, width = resolution
    if data is None:
        return np.full((height, width, 3), NULL_TILE_GREY, np.uint8)
    image = decode_png(data)
    if image.ndim == 2:  # mask and edge: 255 marks a hole / an edge, so they show white on black
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
    return image


def _assemble(grid: list[list[np.ndarray]], resolution: tuple[int, int]) -> np.ndarray:
    height, width = resolution
    sheet = np.full(sheet_shape(len(grid), len(grid[0]), resolution), SEPARATOR_GREY, np.uint8)
    for i, tiles in enumerate(grid):
        for j, tile in enumerate(tiles):
            top, left = i * (height + SHEET_SEPARATOR), j * (width + SHEET_SEPARATOR)
            sheet[top:top + height, left:left + width] = tile
    return sheet


def _count_table(title: str, counts: dict[str, int], rows: int):
    from rich.table import Table

    table = Table(title=title)
    table.add_column(title.split()[-1].rstrip("s"))
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    for name, n in counts.items():
        table.add_row(str(name), str(n), f"{100 * n / rows:.1f}%" if rows else "-")
    return table


def _histogram_table(report: DatasetReport):
    from rich.table import Table

    table = Table(title=f"distributions ({HISTOGRAM_BINS} bins; degradation over {report.degraded_rows} degraded rows)")
    for name, justify in [("parameter", "left"), ("min", "right"), ("max", "right"),
                          ("histogram", "left"), ("counts", "left")]:
        table.add_column(name, justify=justify)
    for hist in [*report.degradation, report.mask_ratio]:
        if not hist.counts:
            table.add_row(hist.name, "-", "-", "", "no values")
            continue
        table.add_row(hist.name, f"{hist.edges[0]:.4g}", f"{hist.edges[-1]:.4g}",
                      spark_bars(hist.counts), " ".join(str(n) for n in hist.counts))
    return table


def spark_bars(counts: list[int]) -> str:
    """One block character per bin, its height relative to the fullest bin; empty bins blank."""
    peak = max(counts, default=0)
    if peak == 0:
        return " " * len(counts)
    return "".join(" " if n == 0 else _SPARK[min(len(_SPARK) - 1, (n * len(_SPARK) - 1) // peak)] for n in counts)


def _skipped_table(skipped: list[SkippedInput]):
    from rich.table import Table

    table = Table(title=f"skipped inputs ({len(skipped)})")
    for name in ("id", "path", "reason"):
        table.add_column(name)
    for record in skipped[:SKIPPED_SHOWN]:
        table.add_row(record.id, record.path, record.reason)
    if len(skipped) > SKIPPED_SHOWN:
        table.add_row(f"... {len(skipped) - SKIPPED_SHOWN} more", "", "")
    return table


def _human_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    power = min(3, int(np.log2(size) // 10))
    return f"{size / 1024 ** power:.1f} {('KiB', 'MiB', 'GiB')[power - 1]}"
