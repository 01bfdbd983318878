import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from components.data.inspect import (
    HISTOGRAM_BINS,
    NULL_TILE_GREY,
    SHEET_SEPARATOR,
    SKIPPED_SHOWN,
    DatasetReport,
    inspect_dataset,
    render_report,
    sheet_shape,
)
from components.data.samples import SampleConfig, make_procedural_rows
from components.data.schema import SHARD_SCHEMA, decode_png
from components.data.shards import count_splits, write_shard

RESOLUTION = 32
CFG = SampleConfig(
    resolution=RESOLUTION,
    degradation={"sigma": (0.2, 1.0), "scale": (1.0, 2.0), "noise": (0.0, 5.0), "jpeg_quality": (70, 95)},
)
SKIPPED = [
    {"id": "folder/broken.png", "path": "/data/faces/broken.png", "reason": "cannot decode image"},
    {"id": "folder/tiny.png", "path": "/data/faces/tiny.png", "reason": "smaller than 64 px"},
]


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    return make_procedural_rows(range(12), 0, CFG)


@pytest.fixture
def stage_output(tmp_path: Path, rows: pa.Table) -> Path:
    """A synthesize stage output: two shards and a manifest that lists two skipped inputs."""
    write_shard(rows.slice(0, 7), str(tmp_path / "shards" / "shard-00000.parquet"))
    write_shard(rows.slice(7), str(tmp_path / "shards" / "shard-00001.parquet"))
    manifest = {"count": rows.num_rows, "metrics": {"samples": rows.num_rows},
                "details": {"skipped": SKIPPED, "splits": count_splits(rows)}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def _counts(table: pa.Table, column: str) -> dict[str, int]:
    values = table.column(column).to_pylist()
    return {value: values.count(value) for value in set(values)}


def _sheet(path: Path) -> np.ndarray:
    return decode_png(path.read_bytes())


def test_stage_output_counts_rows_per_split_source_and_mask(stage_output, rows):
    report = inspect_dataset(str(stage_output), None)
    assert report.rows == rows.num_rows == 12
    assert len(report.shards) == 2
    assert report.splits == count_splits(rows)
    assert report.sources == {"procedural": 12}
    assert report.mask_kinds == _counts(rows, "mask_kind")
    assert report.mask_buckets == _counts(rows, "mask_bucket")
    assert report.resolution == (RESOLUTION, RESOLUTION)
    assert report.bytes == sum(p.stat().st_size for p in (stage_output / "shards").glob("*.parquet"))
    assert report.manifest


def test_stage_output_lists_the_manifests_skipped_inputs(stage_output):
    report = inspect_dataset(str(stage_output), None)
    assert report.skipped_count == 2
    assert [(s.id, s.path, s.reason) for s in report.skipped] == [
        (record["id"], record["path"], record["reason"]) for record in SKIPPED]


def test_histograms_count_every_degraded_row_once(stage_output, rows):
    report = inspect_dataset(str(stage_output), None)
    names = [hist.name for hist in report.degradation]
    assert names == ["sigma_x", "sigma_y", "scale", "noise_sigma", "jpeg_quality"]
    for hist in [*report.degradation, report.mask_ratio]:
        assert len(hist.counts) == HISTOGRAM_BINS and len(hist.edges) == HISTOGRAM_BINS + 1
        assert hist.total == rows.num_rows
    scale = next(hist for hist in report.degradation if hist.name == "scale")
    assert 1.0 <= scale.edges[0] and scale.edges[-1] <= 2.0


def test_histograms_ignore_rows_without_degradation(tmp_path, rows):
    degradation = rows.column("degradation").to_pylist()
    degradation[:5] = [None] * 5  # real low-quality photos carry no known degradation
    real = rows.set_column(rows.schema.get_field_index("degradation"), "degradation",
                           pa.array(degradation, SHARD_SCHEMA.field("degradation").type))
    write_shard(real, str(tmp_path / "real.parquet"))
    report = inspect_dataset(str(tmp_path / "real.parquet"), None)
    assert report.degraded_rows == 7
    assert all(hist.total == 7 for hist in report.degradation)
    assert report.mask_ratio.total == 12


def test_contact_sheet_has_one_row_per_sample_of_four_tiles(stage_output, tmp_path):
    sheet = tmp_path / "out" / "sheet.png"
    report = inspect_dataset(str(stage_output), str(sheet), samples=5, seed=3)
    image = _sheet(sheet)
    assert image.shape == sheet_shape(5, 4, (RESOLUTION, RESOLUTION))
    assert image.shape == (5 * 34 - 2, 4 * 34 - 2, 3)
    assert report.sheet_path == str(sheet)
    assert len(report.sheet_samples) == len(set(report.sheet_samples)) == 5


def test_contact_sheet_tiles_are_the_sampled_rows_images(stage_output, rows, tmp_path):
    sheet = tmp_path / "sheet.png"
    report = inspect_dataset(str(stage_output), str(sheet), samples=2, seed=0)
    image = _sheet(sheet)
    step = RESOLUTION + SHEET_SEPARATOR
    by_id = {row["id"]: row for row in rows.to_pylist()}
    for i, sample_id in enumerate(report.sheet_samples):
        tiles = [image[i * step:i * step + RESOLUTION, j * step:j * step + RESOLUTION] for j in range(4)]
        row = by_id[sample_id]
        assert np.array_equal(tiles[0], decode_png(row["hq"]))
        assert np.array_equal(tiles[1], decode_png(row["lq"]))
        assert np.array_equal(tiles[2][..., 0], decode_png(row["mask"]))  # white where missing
        assert np.array_equal(tiles[3][..., 0], decode_png(row["edge"]))


def test_contact_sheet_is_the_same_for_the_same_seed(stage_output, tmp_path):
    first = inspect_dataset(str(stage_output), str(tmp_path / "a.png"), samples=4, seed=7)
    second = inspect_dataset(str(stage_output), str(tmp_path / "b.png"), samples=4, seed=7)
    assert first.sheet_samples == second.sheet_samples
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_contact_sheet_shows_all_rows_when_asked_for_more(stage_output, tmp_path):
    report = inspect_dataset(str(stage_output), str(tmp_path / "sheet.png"), samples=50)
    assert sorted(report.sheet_samples) == [f"proc-{n:08d}" for n in range(12)]
    assert _sheet(tmp_path / "sheet.png").shape == sheet_shape(12, 4, (RESOLUTION, RESOLUTION))


def test_contact_sheet_adds_an_upscaled_lr_tile_and_greys_a_null_edge(tmp_path):
    cfg = SampleConfig(resolution=RESOLUTION, degradation=CFG.degradation, super_resolution={"factor": 4})
    rows = make_procedural_rows(range(3), 0, cfg)
    rows = rows.set_column(rows.schema.get_field_index("edge"), "edge", pa.nulls(3, pa.binary()))
    write_shard(rows, str(tmp_path / "sr.parquet"))
    report = inspect_dataset(str(tmp_path / "sr.parquet"), str(tmp_path / "sheet.png"), samples=1)
    image = _sheet(tmp_path / "sheet.png")
    step = RESOLUTION + SHEET_SEPARATOR
    assert image.shape == sheet_shape(1, 5, (RESOLUTION, RESOLUTION))
    assert (image[:, 3 * step:3 * step + RESOLUTION] == NULL_TILE_GREY).all()
    lr = decode_png(next(row["lr"] for row in rows.to_pylist() if row["id"] == report.sheet_samples[0]))
    assert lr.shape == (8, 8, 3)
    assert np.array_equal(image[:, 4 * step:], lr.repeat(4, axis=0).repeat(4, axis=1))  # nearest


def test_single_shard_reads_its_skips_from_parquet_metadata(tmp_path, rows):
    table = rows.slice(0, 5).cast(SHARD_SCHEMA)
    metadata = {**table.schema.metadata, b"facerestore.skipped": json.dumps(SKIPPED[:1]).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), tmp_path / "one.parquet")
    report = inspect_dataset(str(tmp_path / "one.parquet"), None)
    assert report.rows == 5
    assert report.splits == count_splits(rows.slice(0, 5))
    assert not report.manifest
    assert [s.reason for s in report.skipped] == ["cannot decode image"]


def test_folder_without_manifest_gathers_skips_from_every_shard(tmp_path, rows):
    for index, (start, skipped) in enumerate([(0, SKIPPED[:1]), (6, SKIPPED[1:]), (9, None)]):
        table = rows.slice(start, 3).cast(SHARD_SCHEMA)
        metadata = dict(table.schema.metadata)
        if skipped is not None:
            metadata[b"facerestore.skipped"] = json.dumps(skipped).encode()
        pq.write_table(table.replace_schema_metadata(metadata), tmp_path / f"shard-{index:05d}.parquet")
    report = inspect_dataset(str(tmp_path), None)
    assert report.rows == 9
    assert len(report.shards) == 3
    assert [s.id for s in report.skipped] == [record["id"] for record in SKIPPED]


def test_unknown_path_raises_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(FileNotFoundError, match="no-such-dataset"):
        inspect_dataset(str(missing), None)


def test_folder_without_shards_raises_file_not_found_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty"))):
        inspect_dataset(str(tmp_path / "empty"), None)


def test_render_report_prints_every_table_and_truncates_long_skip_lists(stage_output):
    report = inspect_dataset(str(stage_output), None)
    many = [type(report.skipped[0])(f"img-{i}", f"/data/img-{i}.png", "too small") for i in range(25)]
    report = DatasetReport(**{**report.__dict__, "skipped": many})
    console = Console(record=True, width=160)
    for renderable in render_report(report):
        console.print(renderable)
    text = console.export_text()
    for title in ("splits", "sources", "mask kinds", "mask buckets", "jpeg_quality", "mask_ratio"):
        assert title in text
    assert f"/data/img-{SKIPPED_SHOWN - 1}.png" in text
    assert f"/data/img-{SKIPPED_SHOWN}.png" not in text
    assert f"... {25 - SKIPPED_SHOWN} more" in text
