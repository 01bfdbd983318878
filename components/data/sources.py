"""Where the high-quality faces come from: list a source's items, then load each as RGB.

Sources are a union on `kind`: `procedural` (the built-in generator; its items are sample
ids, rendered by `components.data.faces`), `folder`, `ffhq`, `celebahq` and `parquet`. Paths
are anything `components.storage` opens (local paths, s3://, gs://). `list_items` is cheap
(file listings and Parquet metadata, no decoding) and its order is a function of the names
alone, so shards cut from it are the same on every run.

Aligned faces are assumed: an image is only centre-cropped to a square and resized. A bad
image never stops a run: `load_image` raises `SkippedImage`; `iter_images` yields it in the
image's place, and `load_images` collects it as an {"id", "path", "reason"} record for the
manifest. What counts as bad, what is repaired instead, and why (ImageLimits holds the
numbers): docs/methods.md, section "data/sources.py".
"""

from __future__ import annotations

import hashlib
import re
import struct
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Literal, NamedTuple, Union
from collections.abc import Callable, Iterable, Iterator

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from components import storage

IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png", ".webp"]

# Dataset layouts, most preferred first; a path with none of them is read as it is.
# FFHQ (NVlabs/ffhq-dataset): images1024x1024/NNNNN/NNNNN.png, thumbnails128x128/...
_FFHQ_FOLDERS = ("images1024x1024", "thumbnails128x128")
# CelebAMask-HQ: CelebA-HQ-img/<n>.jpg; StarGAN v2: celeba_hq/{train,val}/{female,male}/.
_CELEBAHQ_FOLDERS = ("CelebA-HQ-img", "celeba_hq")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
# JPEG start-of-frame markers carry the size; C4, C8 and CC are other segments.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers without a length field: TEM and the restart markers.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}


class ProceduralSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["procedural"] = "procedural"
    count: int = Field(ge=1)


class _PathSource(BaseModel):
    """A source read from `path`: a local path or any URI `components.storage` opens."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)


class FolderSource(_PathSource):
    """Every image under `path` (hidden files and folders excluded)."""

    kind: Literal["folder"] = "folder"
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    recursive: bool = True

    @field_validator("extensions")
    @classmethod
    def _dotted_lowercase(cls, value: list[str]) -> list[str]:
        cleaned = sorted({ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in value})
        if not cleaned or "." in cleaned:
            raise ValueError(f"extensions must name at least one file extension, got {value}")
        return cleaned


class FFHQSource(_PathSource):
    """FFHQ: images1024x1024/ is preferred to thumbnails128x128/; else a folder of NNNNN.png."""

    kind: Literal["ffhq"] = "ffhq"


class CelebAHQSource(_PathSource):
    """CelebA-HQ in the CelebAMask-HQ or the StarGAN v2 layout; else a folder of <n>.jpg."""

    kind: Literal["celebahq"] = "celebahq"


class ParquetSource(_PathSource):
    """One .parquet file or a folder of them; images are encoded bytes, or a struct with a
    `bytes` field as HuggingFace `datasets` writes its Image feature."""

    kind: Literal["parquet"] = "parquet"
    image_column: str = "image"
    id_column: str | None = None


SourceConfig = Annotated[
    Union[ProceduralSource, FolderSource, FFHQSource, CelebAHQSource, ParquetSource],
    Field(discriminator="kind"),
]


class ImageLimits(BaseModel):
    """When an image is too small or too large to be a training target (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    min_side: int = Field(32, ge=1, description="pixels; a shorter side below it is skipped")
    # CelebA-HQ / FFHQ 128 px thumbnails still reach 512 px at 4x.
    max_upscale: float = Field(4.0, ge=1.0, description="largest enlargement to the resolution; 1 = never enlarge")
    max_megapixels: float = Field(64.0, gt=0, description="larger images are skipped, checked from the header")


@dataclass(frozen=True)
class SourceItem:
    """One image of a source: its stable id and what it takes to load it.

    `uri` is the image file, or the Parquet file holding it at `row` in `column`;
    procedural items have only `index`, the sample id the generator renders.
    """

    id: str
    kind: str
    uri: str | None = None
    row: int | None = None
    column: str | None = None
    index: int | None = None

    @property
    def location(self) -> str:
        if self.index is not None:
            return f"procedural sample {self.index}"
        return self.uri if self.row is None else f"{self.uri} row {self.row}"


class SkippedImage(Exception):
    """An item that cannot become a training image; the run goes on without it."""

    def __init__(self, item_id: str, path: str, reason: str):
        super().__init__(item_id, path, reason)
        self.item_id, self.path, self.reason = item_id, path, reason

    def __str__(self) -> str:
        return f"skipped {self.item_id} ({self.path}): {self.reason}"

    def as_record(self) -> dict[str, str]:
        return {"id": self.item_id, "path": self.path, "reason": self.reason}


class LoadResult(NamedTuple):
    loaded: list[tuple[SourceItem, np.ndarray]]
    skipped: list[dict[str, str]]


# ---------------------------------------------------------------------------- listing


def list_items(cfg: SourceConfig) -> list[SourceItem]:
    """Every item of a source, in an order set by names alone, ids unique."""
    lister = _LISTERS.get(type(cfg))
    if lister is None:
        raise TypeError(f"no lister for source config {type(cfg).__name__}")
    items = lister(cfg)
    _require_unique_ids(items, cfg)
    return items


def _list_procedural(cfg: ProceduralSource) -> list[SourceItem]:
    # The same id `samples._procedural_row` writes.
    return [SourceItem(id=f"proc-{i:08d}", kind="procedural", index=i) for i in range(cfg.count)]


def _list_folder(cfg: FolderSource) -> list[SourceItem]:
    return _image_items(cfg.path, "folder", cfg.extensions, cfg.recursive, keep_folders=True)


def _list_ffhq(cfg: FFHQSource) -> list[SourceItem]:
    root = _layout_root(cfg.path, _FFHQ_FOLDERS, "ffhq")
    return _image_items(root, "ffhq", IMAGE_EXTENSIONS, recursive=True, keep_folders=False)


def _list_celebahq(cfg: CelebAHQSource) -> list[SourceItem]:
    root = _layout_root(cfg.path, _CELEBAHQ_FOLDERS, "celebahq")
    return _image_items(root, "celebahq", IMAGE_EXTENSIONS, recursive=True, keep_folders=False)


def _list_parquet(cfg: ParquetSource) -> list[SourceItem]:
    files = _parquet_files(cfg.path)
    rows = [row for rel, uri in files for row in _parquet_rows(rel, uri, cfg)]
    if not rows:
        raise ValueError(f"parquet source {cfg.path} holds no rows in {len(files)} file(s)")
    keys = [key for key, _, _ in rows]
    if cfg.id_column is not None:
        repeated = sorted(key for key, n in Counter(keys).items() if n > 1)
        if repeated:
            raise ValueError(
                f"parquet source {cfg.path}: id column {cfg.id_column!r} repeats {repeated[:10]}"
            )
    ids = _ids_from_names("parquet", [_sanitize(key) for key in keys], keys)
    return [SourceItem(id=i, kind="parquet", uri=uri, row=row, column=cfg.image_column)
            for i, (_, uri, row) in zip(ids, rows)]


def _parquet_files(path: str) -> list[tuple[str, str]]:
    """(relative path, URI) of the one file, or of every .parquet file under the folder."""
    _require_exists(path, "parquet")
    if not _is_dir(path):
        return [(storage.normalize(path).rpartition("/")[2], storage.normalize(path))]
    files = [
        (rel, uri) for rel, uri in _files_under(path, recursive=True, kind="parquet")
        # Arrow's convention: `_metadata`, `_SUCCESS` and `_temporary/` are not data.
        if _extension(rel) == ".parquet" and not any(p.startswith("_") for p in rel.split("/"))
    ]
    if not files:
        raise ValueError(f"parquet source {path} holds no .parquet file")
    return files


def _parquet_rows(rel: str, uri: str, cfg: ParquetSource) -> list[tuple[str, str, int]]:
    """(id key, URI, row) of each row of one file; the key is the id column or file-row."""
    with _open_parquet(uri) as parquet:
        _check_image_column(parquet.schema_arrow, uri, cfg.image_column)
        if cfg.id_column is None:
            stem = _strip_extension(rel)
            keys = [f"{stem}-{row:06d}" for row in range(parquet.metadata.num_rows)]
        else:
            keys = _parquet_ids(parquet, uri, cfg.id_column)
    return [(key, uri, row) for row, key in enumerate(keys)]


def _parquet_ids(parquet: pq.ParquetFile, uri: str, column: str) -> list[str]:
    if column not in parquet.schema_arrow.names:
        raise ValueError(
            f"{uri} has no id column {column!r}; its columns are {parquet.schema_arrow.names}"
        )
    values = parquet.read(columns=[column]).column(0).to_pylist()
    nulls = [row for row, value in enumerate(values) if value is None]
    if nulls:
        raise ValueError(f"{uri}: id column {column!r} is null in rows {nulls[:10]}")
    return [str(value) for value in values]


def _check_image_column(schema: pa.Schema, uri: str, column: str) -> None:
    if column not in schema.names:
        raise ValueError(f"{uri} has no image column {column!r}; its columns are {schema.names}")
    kind = schema.field(column).type
    if _is_binary(kind):
        return
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        if _is_binary(kind.field("bytes").type):
            return
    raise ValueError(
        f"{uri}: image column {column!r} is {kind}; expected encoded image bytes "
        "(binary) or a struct with a binary `bytes` field"
    )


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


_LISTERS: dict[type, Callable[..., list[SourceItem]]] = {
    ProceduralSource: _list_procedural,
    FolderSource: _list_folder,
    FFHQSource: _list_ffhq,
    CelebAHQSource: _list_celebahq,
    ParquetSource: _list_parquet,
}


def _layout_root(path: str, folders: tuple[str, ...], kind: str) -> str:
    """The first known dataset folder inside `path`, or `path` itself."""
    _require_exists(path, kind)
    for name in folders:
        candidate = storage.join(path, name)
        if _is_dir(candidate):
            return candidate
    return storage.normalize(path)


def _image_items(
    root: str, kind: str, extensions: list[str], recursive: bool, keep_folders: bool
) -> list[SourceItem]:
    files = _files_under(root, recursive, kind)
    images = [(rel, uri) for rel, uri in files if _extension(rel) in extensions]
    if not images:
        others = [rel for rel, _ in files[:5]]
        raise ValueError(
            f"{kind} source {root} holds no image with extension {extensions} "
            f"({len(files)} other file(s){', e.g. ' + str(others) if others else ''})"
        )
    # Dataset ids are the file stems (ffhq-00042); folder ids keep the sub-folders.
    names = [_strip_extension(rel) if keep_folders else _strip_extension(rel).rpartition("/")[2]
             for rel, _ in images]
    ids = _ids_from_names(kind, [_sanitize(name) for name in names], [rel for rel, _ in images])
    return [SourceItem(id=i, kind=kind, uri=uri) for i, (_, uri) in zip(ids, images)]


def _files_under(root: str, recursive: bool, kind: str) -> list[tuple[str, str]]:
    """(relative path, URI) of each visible file under a folder, in natural name order."""
    fs, path = storage.resolve(root)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{kind} source folder {root} does not exist")
    if info.type != pafs.FileType.Directory:
        raise NotADirectoryError(f"{kind} source {root} is not a folder")
    prefix = path.rstrip("/") + "/"
    found = []
    for entry in fs.get_file_info(pafs.FileSelector(path, recursive=recursive)):
        rel = entry.path[len(prefix):] if entry.path.startswith(prefix) else entry.base_name
        # Hidden files: macOS `._x.jpg` forks, `.DS_Store`, storage's `.x.tmp-` writes.
        if entry.type == pafs.FileType.File and not any(
            part.startswith(".") for part in rel.split("/")
        ):
            found.append((rel, storage.join(root, rel)))
    return sorted(found, key=lambda pair: (_natural_key(pair[0]), pair[0]))


def _ids_from_names(kind: str, names: list[str], keys: list[str]) -> list[str]:
    """`kind-name`, with a hash of the key appended to names that collide (x.jpg, x.png)."""
    ids = [f"{kind}-{name}" for name in names]
    counts = Counter(ids)
    return [
        i if counts[i] == 1 else f"{i}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        for i, key in zip(ids, keys)
    ]


def _require_unique_ids(items: list[SourceItem], cfg: BaseModel) -> None:
    counts = Counter(item.id for item in items)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        where = getattr(cfg, "path", cfg.kind)
        raise ValueError(f"source {where} gives duplicate ids {duplicates[:10]}")


def _require_exists(path: str, kind: str) -> None:
    if not storage.exists(path):
        raise FileNotFoundError(f"{kind} source path {path} does not exist")


def _is_dir(uri: str) -> bool:
    fs, path = storage.resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def _natural_key(text: str) -> list:
    # "img2" before "img10", so CelebA-HQ's unpadded 0.jpg ... 29999.jpg list in order.
    parts = re.split(r"([0-9]+)", text)
    return [int(part) if i % 2 else part for i, part in enumerate(parts)]


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "-"))


def _extension(rel: str) -> str:
    base = rel.rpartition("/")[2]
    return base[base.rfind("."):].lower() if "." in base else ""


def _strip_extension(rel: str) -> str:
    ext = _extension(rel)
    return rel[: len(rel) - len(ext)] if ext else rel


def _open_parquet(uri: str) -> pq.ParquetFile:
    fs, path = storage.resolve(uri)
    try:
        return pq.ParquetFile(path, filesystem=fs)
    except (OSError, pa.ArrowInvalid) as err:
        raise ValueError(f"{uri} is not a readable Parquet file: {err}") from err


# ---------------------------------------------------------------------------- loading


def images_by_stem(folder: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The image files of a folder (not its sub-folders; hidden files left out) by stem, the name
    without its extension, the way two folders of images pair up (`a.png` with `a.jpg`): (stem ->
    file name where one file has it, stem -> the sorted names where several share it).
    FileNotFoundError when the folder is not there."""
    if not storage.is_dir(folder):
        raise FileNotFoundError(f"{folder} does not exist or is not a folder")
    by_stem: dict[str, list[str]] = {}
    for entry in storage.list_dir(folder):
        stem, dot, extension = entry.name.rpartition(".")
        if entry.is_dir or entry.name.startswith(".") or not dot or f".{extension.lower()}" not in IMAGE_EXTENSIONS:
            continue
        by_stem.setdefault(stem, []).append(entry.name)
    unique = {stem: names[0] for stem, names in by_stem.items() if len(names) == 1}
    return unique, {stem: sorted(names) for stem, names in by_stem.items() if len(names) > 1}


def load_image(item: SourceItem, resolution: int, limits: ImageLimits | None = None) -> np.ndarray:
    """The item as uint8 RGB resolution x resolution x 3, or SkippedImage saying why not."""
    images = iter_images([item], resolution, limits)
    try:
        _, result = next(images)
    finally:
        images.close()
    if isinstance(result, SkippedImage):
        raise result
    return result


def read_photo(uri: str, limits: ImageLimits | None = None) -> np.ndarray:
    """A photo at its own size, uint8 RGB H x W x 3, converted as sources are (grey, CMYK,
    16-bit, alpha); SkippedImage naming the file and the reason when it cannot be read."""
    item = SourceItem(id=uri.rpartition("/")[2], kind="photo", uri=uri)
    return _decode(item, _read_file(item), 1, limits or ImageLimits(min_side=1))


def load_images(
    items: Iterable[SourceItem], resolution: int, limits: ImageLimits | None = None
) -> LoadResult:
    """All items that load, with their items, and a record of each one skipped."""
    loaded, skipped = [], []
    for item, result in iter_images(items, resolution, limits):
        if isinstance(result, SkippedImage):
            skipped.append(result.as_record())
        else:
            loaded.append((item, result))
    return LoadResult(loaded, skipped)


def iter_images(
    items: Iterable[SourceItem], resolution: int, limits: ImageLimits | None = None
) -> Iterator[tuple[SourceItem, np.ndarray | SkippedImage]]:
    """Each item with its image or its SkippedImage, one at a time, to bound memory.

    Parquet items read their file one row group at a time; consecutive items of one row
    group (the order `list_items` gives) read it once.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    limits = limits or ImageLimits()
    rows = _RowGroupReader()
    try:
        for item in items:
            try:
                data = rows.read(item) if item.row is not None else _read_file(item)
                yield item, _fit_square(_decode(item, data, resolution, limits), resolution)
            except SkippedImage as skipped:
                yield item, skipped
    finally:
        rows.close()


def _read_file(item: SourceItem) -> bytes:
    if item.uri is None:
        raise ValueError(
            f"{item.id} is a procedural sample: render it with components.data.faces.render_face"
        )
    try:
        return storage.read_bytes(item.uri)
    except OSError as err:
        raise _skip(item, f"cannot read the file: {err}") from err


class _RowGroupReader:
    """Image cells of Parquet items, keeping the last file opened and row group read."""

    def __init__(self) -> None:
        self._uri: str | None = None
        self._file: pq.ParquetFile | None = None
        self._offsets: list[int] = []
        self._group: tuple[str, int] | None = None
        self._values: list = []

    def read(self, item: SourceItem) -> bytes:
        try:
            self._open(item.uri)
            group = bisect_right(self._offsets, item.row) - 1
            if self._group != (item.column, group):
                table = self._file.read_row_group(group, columns=[item.column])
                self._group, self._values = (item.column, group), table.column(0).to_pylist()
            value = self._values[item.row - self._offsets[group]]
        except (OSError, ValueError, IndexError, KeyError, pa.ArrowException) as err:
            raise _skip(item, f"cannot read the Parquet row: {err}") from err
        return _cell_bytes(item, value)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._uri, self._file, self._group, self._values = None, None, None, []

    def _open(self, uri: str) -> None:
        if uri == self._uri:
            return
        self.close()
        self._file = _open_parquet(uri)
        self._uri = uri
        sizes = [self._file.metadata.row_group(i).num_rows for i in range(self._file.num_row_groups)]
        self._offsets = [sum(sizes[:i]) for i in range(len(sizes))]


def _cell_bytes(item: SourceItem, value) -> bytes:
    if isinstance(value, dict):  # HuggingFace Image feature: {"bytes", "path"}
        if value.get("bytes") is None:
            raise _skip(item, f"the image struct holds no bytes (path {value.get('path')!r})")
        value = value["bytes"]
    if value is None:
        raise _skip(item, f"the image cell of column {item.column!r} is null")
    return value


def _decode(item: SourceItem, data: bytes, resolution: int, limits: ImageLimits) -> np.ndarray:
    """uint8 RGB H x W x 3 of encoded bytes, repaired or skipped as the module docstring says."""
    if not data:
        raise _skip(item, "the file is empty")
    header = _header_size(data)
    if header is not None:
        _check_size(item, *header, resolution, limits)
    # JPEG has no alpha: decode as a viewer would (EXIF orientation, CMYK -> BGR).
    is_jpeg = data.startswith(_JPEG_SIGNATURE)
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if is_jpeg else cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as err:
        raise _skip(item, f"OpenCV cannot decode it: {err}") from err
    if image is None:
        raise _skip(item, f"not a decodable image or truncated ({len(data)} bytes starting {data[:8]!r})")
    _check_size(item, image.shape[0], image.shape[1], resolution, limits)
    return _to_rgb8(item, image)


def _check_size(item: SourceItem, height: int, width: int, resolution: int, limits: ImageLimits) -> None:
    side = min(height, width)
    if side < limits.min_side:
        raise _skip(item, f"too small: {width}x{height}, shorter side under min_side {limits.min_side}")
    if side * limits.max_upscale < resolution:
        raise _skip(
            item,
            f"too small for resolution {resolution}: {width}x{height} would need more than "
            f"max_upscale {limits.max_upscale}x enlargement",
        )
    if height * width > limits.max_megapixels * 1e6:
        raise _skip(item, f"too large: {width}x{height} is over max_megapixels {limits.max_megapixels}")


def _to_rgb8(item: SourceItem, image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        full = 255.0
    elif image.dtype == np.uint16:
        full = 65535.0
    else:
        raise _skip(item, f"unsupported pixel type {image.dtype} (8- or 16-bit images only)")
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[2]
    if channels not in (1, 3, 4):
        raise _skip(item, f"unsupported channel count {channels}")
    color = image[..., :3] if channels == 4 else image
    if channels == 4:
        alpha = image[..., 3:].astype(np.float32) / full
        if not alpha.any():
            raise _skip(item, "fully transparent: no opaque pixel to composite on white")
        color = color.astype(np.float32) * alpha + full * (1.0 - alpha)
    if color.dtype != np.uint8:
        color = np.clip(np.rint(color.astype(np.float32) * (255.0 / full)), 0, 255).astype(np.uint8)
    code = cv2.COLOR_GRAY2RGB if color.shape[2] == 1 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(np.ascontiguousarray(color), code)


def _fit_square(image: np.ndarray, resolution: int) -> np.ndarray:
    """Centre square crop, then resize: aligned faces are centred, so the crop keeps the face."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top: top + side, left: left + side]
    if side == resolution:
        return np.ascontiguousarray(square)
    interpolation = cv2.INTER_AREA if side > resolution else cv2.INTER_CUBIC
    return cv2.resize(square, (resolution, resolution), interpolation=interpolation)


def _skip(item: SourceItem, reason: str) -> SkippedImage:
    return SkippedImage(item.id, item.location, reason)


# ---------------------------------------------------------------------------- headers


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG, JPEG or WebP header; None for other or damaged headers."""
    try:
        if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return height, width
        if data.startswith(_JPEG_SIGNATURE):
            return _jpeg_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5: i + 9])
            # Height 0 defers it to a DNL marker after the scan: let the decoder tell.
            return (height, width) if height and width else None
        i += 2 + struct.unpack(">H", data[i + 2: i + 4])[0]
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the 3-byte tag and start code
        width, height = struct.unpack("<HH", data[26:30])
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14-bit (size - 1) fields after the 0x2F signature
        bits = int.from_bytes(data[21:25], "little")
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit (canvas size - 1) fields
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return height, width
    return None
