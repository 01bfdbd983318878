import io
import pickle
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, ValidationError

from components.data.sources import (
    CelebAHQSource,
    FFHQSource,
    FolderSource,
    ImageLimits,
    ParquetSource,
    ProceduralSource,
    SkippedImage,
    SourceConfig,
    SourceItem,
    _header_size,
    list_items,
    load_image,
    load_images,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


class _Holder(BaseModel):
    source: SourceConfig


def _encode(rgb: np.ndarray, ext: str = ".png", params: tuple = ()) -> bytes:
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(ext, rgb, list(params))
    assert ok
    return data.tobytes()


def _write(path: Path, rgb: np.ndarray | None = None, size: int = 48, ext: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb is None:
        rgb = np.full((size, size, 3), 128, np.uint8)
    path.write_bytes(_encode(rgb, ext or path.suffix.lower()))
    return path


def _item(path: Path) -> SourceItem:
    return SourceItem(id=f"folder-{path.stem}", kind="folder", uri=str(path))


def _skip_reason(path: Path, resolution: int = 32, limits: ImageLimits | None = None) -> str:
    with pytest.raises(SkippedImage) as caught:
        load_image(_item(path), resolution, limits)
    assert str(path) in str(caught.value)
    return caught.value.reason


# ---------------------------------------------------------------------------- configs


def test_source_config_is_chosen_by_kind_and_forbids_unknown_keys():
    assert isinstance(_Holder(source={"kind": "ffhq", "path": "/d"}).source, FFHQSource)
    assert isinstance(_Holder(source={"kind": "procedural", "count": 3}).source, ProceduralSource)
    with pytest.raises(ValidationError, match="recursve"):
        _Holder(source={"kind": "folder", "path": "/d", "recursve": False})
    with pytest.raises(ValidationError):
        _Holder(source={"kind": "imagenet", "path": "/d"})


def test_folder_extensions_are_lowercased_and_dotted():
    assert FolderSource(path="/d", extensions=["PNG", ".Jpg"]).extensions == [".jpg", ".png"]


# ---------------------------------------------------------------------------- listing


def test_folder_lists_images_recursively_by_extension_in_natural_name_order(tmp_path):
    # Written out of order: the listing order must come from the names alone.
    for rel in ["b/img10.png", "img2.JPG", "b/img9.webp", "a.jpeg", "._a.jpg", ".cache/x.png"]:
        _write(tmp_path / rel, ext=".png")
    (tmp_path / "notes.txt").write_text("not an image")
    items = list_items(FolderSource(path=str(tmp_path)))
    assert [item.id for item in items] == ["folder-a", "folder-b-img9", "folder-b-img10", "folder-img2"]
    assert items[1].uri == str(tmp_path / "b" / "img9.webp")
    assert list_items(FolderSource(path=str(tmp_path))) == items
    flat = list_items(FolderSource(path=str(tmp_path), recursive=False, extensions=[".jpg"]))
    assert [item.id for item in flat] == ["folder-img2"]


def test_folder_ids_stay_unique_when_names_differ_only_by_extension_or_sanitizing(tmp_path):
    for name in ["x.jpg", "x.png", "a b.png", "a_b.png"]:
        _write(tmp_path / name, ext=".png")
    ids = [item.id for item in list_items(FolderSource(path=str(tmp_path)))]
    assert len(set(ids)) == 4
    assert all(i.startswith(("folder-x-", "folder-a_b-")) for i in ids)


def test_ffhq_layout_gives_ffhq_ids_and_prefers_the_1024_folder(tmp_path):
    for rel in ["images1024x1024/00000/00000.png", "images1024x1024/00000/00001.png",
                "images1024x1024/01000/01000.png", "thumbnails128x128/00000/00000.png"]:
        _write(tmp_path / rel)
    (tmp_path / "images1024x1024" / "LICENSE.txt").write_text("CC")
    items = list_items(FFHQSource(path=str(tmp_path)))
    assert [item.id for item in items] == ["ffhq-00000", "ffhq-00001", "ffhq-01000"]
    assert all("images1024x1024" in item.uri for item in items)


def test_ffhq_flat_folder_of_numbered_pngs(tmp_path):
    for n in (3, 1, 2):
        _write(tmp_path / f"{n:05d}.png")
    assert [item.id for item in list_items(FFHQSource(path=str(tmp_path)))] == [
        "ffhq-00001", "ffhq-00002", "ffhq-00003"
    ]


def test_celebahq_mask_layout_lists_unpadded_numbers_in_numeric_order(tmp_path):
    for n in (10, 2, 0, 1):
        _write(tmp_path / "CelebA-HQ-img" / f"{n}.jpg")
    items = list_items(CelebAHQSource(path=str(tmp_path)))
    assert [item.id for item in items] == ["celebahq-0", "celebahq-1", "celebahq-2", "celebahq-10"]


def test_celebahq_stargan_layout_reads_every_split_and_gender(tmp_path):
    for rel in ["train/female/000004.jpg", "train/male/000012.jpg", "val/female/000001.jpg"]:
        _write(tmp_path / "celeba_hq" / rel)
    ids = [item.id for item in list_items(CelebAHQSource(path=str(tmp_path)))]
    assert ids == ["celebahq-000004", "celebahq-000012", "celebahq-000001"]


def test_procedural_items_are_sample_ids_and_are_not_loaded_here():
    items = list_items(ProceduralSource(count=3))
    assert [(item.id, item.index) for item in items] == [
        ("proc-00000000", 0), ("proc-00000001", 1), ("proc-00000002", 2)
    ]
    with pytest.raises(ValueError, match="render_face"):
        load_image(items[0], 32)


def test_missing_folder_error_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    for cfg in (FolderSource(path=str(missing)), FFHQSource(path=str(missing)),
                CelebAHQSource(path=str(missing)), ParquetSource(path=str(missing))):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            list_items(cfg)


def test_folder_without_images_error_names_the_path_and_what_it_holds(tmp_path):
    (tmp_path / "readme.txt").write_text("no faces here")
    with pytest.raises(ValueError, match=rf"{tmp_path}.*readme.txt"):
        list_items(FolderSource(path=str(tmp_path)))


# ---------------------------------------------------------------------------- parquet


def _faces(n: int) -> list[np.ndarray]:
    return [np.full((40, 40, 3), (10 * i, 100, 200 - 10 * i), np.uint8) for i in range(n)]


def test_parquet_bytes_column_lists_by_id_column_and_loads_across_row_groups(tmp_path):
    faces = _faces(5)
    table = pa.table({"name": [f"face {i}" for i in range(5)], "image": [_encode(f) for f in faces]})
    pq.write_table(table, tmp_path / "faces.parquet", row_group_size=2)
    items = list_items(ParquetSource(path=str(tmp_path / "faces.parquet"), id_column="name"))
    assert [item.id for item in items] == [f"parquet-face_{i}" for i in range(5)]
    loaded, skipped = load_images(items, 40)
    assert skipped == []
    for (item, image), face in zip(loaded, faces):
        assert np.array_equal(image, face), item.id


def test_parquet_folder_with_huggingface_struct_column_skips_a_row_without_bytes(tmp_path):
    faces = _faces(3)
    cells = [{"bytes": _encode(f), "path": f"{i}.png"} for i, f in enumerate(faces)]
    cells[1] = {"bytes": None, "path": "/cache/lost.png"}
    pq.write_table(pa.table({"image": cells}), tmp_path / "train-00000.parquet")
    pq.write_table(pa.table({"image": cells[:1]}), tmp_path / "train-00001.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    items = list_items(ParquetSource(path=str(tmp_path)))
    assert [item.id for item in items] == [
        "parquet-train-00000-000000", "parquet-train-00000-000001",
        "parquet-train-00000-000002", "parquet-train-00001-000000",
    ]
    loaded, skipped = load_images(items, 40)
    assert [item.id for item, _ in loaded] == [items[0].id, items[2].id, items[3].id]
    assert np.array_equal(loaded[1][1], faces[2])
    assert skipped == [{"id": items[1].id, "path": f"{items[1].uri} row 1",
                        "reason": "the image struct holds no bytes (path '/cache/lost.png')"}]


def test_parquet_without_the_image_column_names_the_file_and_column(tmp_path):
    pq.write_table(pa.table({"picture": [b"x"]}), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=r"a\.parquet has no image column 'image'.*picture"):
        list_items(ParquetSource(path=str(tmp_path / "a.parquet")))


def test_parquet_repeated_ids_are_an_error(tmp_path):
    pq.write_table(pa.table({"id": ["a", "a"], "image": [b"x", b"y"]}), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match="repeats"):
        list_items(ParquetSource(path=str(tmp_path), id_column="id"))


# ---------------------------------------------------------------------------- bad inputs


def test_truncated_png_is_skipped_naming_the_file(tmp_path):
    data = _encode(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _skip_reason(path)


def test_truncated_jpeg_is_skipped(tmp_path):
    data = _encode(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8), ".jpg")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) - 100])
    assert "truncated" in _skip_reason(path)


def test_random_bytes_named_jpg_and_text_named_png_are_skipped(tmp_path):
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    text = tmp_path / "text.png"
    text.write_text("this is not an image\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "not a decodable image" in _skip_reason(noise)
    assert "not a decodable image" in _skip_reason(text)
    assert "empty" in _skip_reason(empty)


def test_grayscale_becomes_rgb_with_equal_channels(tmp_path):
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    image = load_image(_item(_write(tmp_path / "gray.png", gray)), 32)
    assert image.shape == (32, 32, 3)
    assert np.array_equal(image[..., 0], gray) and np.array_equal(image[..., 2], gray)


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint16)
    path = tmp_path / "deep.png"
    path.write_bytes(_encode(rgb * 257))
    assert np.array_equal(load_image(_item(path), 32), rgb.astype(np.uint8))


def test_transparent_pixels_are_composited_on_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[...] = (255, 0, 0, 255)
    rgba[:, 16:, 3] = 0  # right half fully transparent
    rgba[:, 8:16, 3] = 128  # half-transparent red
    image = load_image(_item(_write(tmp_path / "alpha.png", rgba)), 32)
    assert image[0, 0].tolist() == [255, 0, 0]
    assert image[0, 10].tolist() == [255, 127, 127]
    assert image[0, 20].tolist() == [255, 255, 255]


def test_fully_transparent_image_is_skipped(tmp_path):
    path = _write(tmp_path / "clear.png", np.zeros((32, 32, 4), np.uint8))
    assert "fully transparent" in _skip_reason(path)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    image_module = pytest.importorskip("PIL.Image", reason="Pillow writes the CMYK JPEG")
    path = tmp_path / "cmyk.jpg"
    image_module.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, quality=95)  # pure red
    pixel = load_image(_item(path), 32)[16, 16].astype(int)
    assert np.abs(pixel - RED).max() < 8, pixel


def test_jpeg_exif_orientation_is_applied(tmp_path):
    image_module = pytest.importorskip("PIL.Image", reason="Pillow writes the EXIF tag")
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :32], wide[:, 32:] = RED, BLUE
    exif = image_module.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: the left half goes on top
    path = tmp_path / "rotated.jpg"
    image_module.fromarray(wide).save(path, quality=95, exif=exif.tobytes())
    image = load_image(_item(path), 32).astype(int)
    assert np.abs(image[2, 16] - RED).max() < 24 and np.abs(image[29, 16] - BLUE).max() < 24


def test_tiny_image_is_skipped_naming_its_size(tmp_path):
    path = _write(tmp_path / "tiny.png", size=8)
    assert _skip_reason(path) == "too small: 8x8, shorter side under min_side 32"


def test_image_needing_more_than_max_upscale_is_skipped(tmp_path):
    path = _write(tmp_path / "small.png", size=40)
    assert "max_upscale 4.0" in _skip_reason(path, resolution=256)
    assert load_image(_item(path), 160).shape == (160, 160, 3)


def test_huge_image_is_skipped_from_its_header_before_decoding(tmp_path):
    # A PNG that claims 100000 x 100000 pixels and holds none: a decompression bomb.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    assert _skip_reason(path) == "too large: 100000x100000 is over max_megapixels 64.0"
    jpeg = _write(tmp_path / "big.jpg", size=100)
    assert "too large" in _skip_reason(jpeg, limits=ImageLimits(max_megapixels=0.005))


def test_header_size_matches_the_decoded_size_for_png_jpeg_and_webp():
    rgb = np.random.default_rng(2).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    encoded = [_encode(rgb, ".png"), _encode(rgb, ".jpg"),
               _encode(rgb, ".webp", (cv2.IMWRITE_WEBP_QUALITY, 80)),
               _encode(rgb, ".webp", (cv2.IMWRITE_WEBP_QUALITY, 101))]
    image_module = pytest.importorskip("PIL.Image")
    buffer = io.BytesIO()
    image_module.new("RGBA", (53, 37)).save(buffer, "WEBP")  # alpha: the VP8X container
    for data in [*encoded, buffer.getvalue()]:
        assert _header_size(data) == (37, 53), data[:16]
    assert _header_size(b"not an image at all, just text") is None


def test_non_square_image_is_center_cropped(tmp_path):
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[:, :32], wide[:, 32:64], wide[:, 64:] = RED, (0, 255, 0), BLUE
    image = load_image(_item(_write(tmp_path / "wide.png", wide)), 32)
    assert np.array_equal(image, wide[:, 32:64])
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    assert np.array_equal(load_image(_item(_write(tmp_path / "tall.png", tall)), 32), tall[32:64])


def test_images_are_resized_to_the_resolution_both_ways(tmp_path):
    path = _write(tmp_path / "face.png", np.full((100, 100, 3), (200, 150, 100), np.uint8))
    for resolution in (48, 256):
        image = load_image(_item(path), resolution)
        assert image.shape == (resolution, resolution, 3) and image.dtype == np.uint8
        assert image[resolution // 2, resolution // 2].tolist() == [200, 150, 100]


def test_load_images_lists_every_skip_and_keeps_going(tmp_path):
    good = _write(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    tiny = _write(tmp_path / "tiny.png", size=4)
    result = load_images(list_items(FolderSource(path=str(tmp_path))), 32)
    assert [item.uri for item, _ in result.loaded] == [str(good)]
    assert [(s["id"], s["path"]) for s in result.skipped] == [
        ("folder-bad", str(bad)), ("folder-tiny", str(tiny))
    ]


def test_skipped_image_survives_pickling_for_ray():
    skipped = pickle.loads(pickle.dumps(SkippedImage("folder-x", "/d/x.png", "empty")))
    assert skipped.as_record() == {"id": "folder-x", "path": "/d/x.png", "reason": "empty"}
    assert str(skipped) == "skipped folder-x (/d/x.png): empty"
