import numpy as np
import pyarrow as pa

from components.data.decode import table_to_arrays
from components.data.masks import MaskConfig
from components.data.occlusion_masks import template_landmarks
from components.data.samples import SampleConfig, SourceImage, id_key, make_procedural_rows, make_rows
from components.data.schema import decode_mask, decode_png
from components.data.super_resolution import SuperResolutionConfig

MILD = {"sigma": (0.2, 1.0), "scale": (1.0, 2.0), "noise": (0.0, 5.0), "jpeg_quality": (70, 95)}


def config(**overrides):
    return SampleConfig(resolution=32, degradation=MILD, **overrides)


def test_super_resolution_pairs_hold_the_hq_shrunk_by_the_factor():
    rows = make_procedural_rows(range(4), 0, config(super_resolution=SuperResolutionConfig(factor=4)))
    assert rows.column("sr_factor").to_pylist() == [4] * 4
    lr = decode_png(rows.column("lr")[0].as_py())
    hq = decode_png(rows.column("hq")[0].as_py())
    assert lr.shape == (8, 8, 3)
    # a box average of the hq is close to the antialiased bicubic LR
    box = hq.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))
    assert np.abs(box - lr).mean() < 6
    arrays = table_to_arrays(rows, ["lr"])
    assert arrays["lr"].shape == (4, 3, 8, 8)


def test_edges_are_binary_maps_with_edges_on_the_face():
    rows = make_procedural_rows(range(3), 0, config())
    for data in rows.column("edge").to_pylist():
        edge = decode_mask(data)
        assert edge.shape == (32, 32) and 0.01 < edge.mean() < 0.5


def test_occlusion_masks_are_placed_and_recorded_with_their_kind_and_bucket():
    cfg = config(masks=MaskConfig(kinds=["surgical_mask", "sunglasses"], max_ratio=0.6))
    rows = make_procedural_rows(range(12), 0, cfg)
    kinds = rows.column("mask_kind").to_pylist()
    assert set(kinds) == {"surgical_mask", "sunglasses"}
    for kind, bucket, ratio in zip(kinds, rows.column("mask_bucket").to_pylist(), rows.column("mask_ratio").to_pylist()):
        low = int(bucket.split("-")[0].rstrip("%+"))
        assert low / 100 <= ratio + 1e-6


def test_real_images_take_their_seed_from_their_id_not_their_position():
    cfg = config()
    rng = np.random.default_rng(0)
    images = [SourceImage(f"folder-{name}", id_key(f"folder-{name}"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                          template_landmarks(32), "folder") for name in ("a", "b", "c")]
    both = make_rows(images, 7, cfg)
    reordered = make_rows([images[2], images[0]], 7, cfg)
    by_id = {row["id"]: row for row in both.to_pylist()}
    for row in reordered.to_pylist():
        assert row == by_id[row["id"]]
    assert id_key("folder-a") == id_key("folder-a") and id_key("folder-a") != id_key("folder-b")


def test_gpu_engine_draws_the_same_parameters_and_masks_and_similar_pixels():
    cpu = make_procedural_rows(range(6), 0, config())
    gpu = make_procedural_rows(range(6), 0, config(engine="gpu"))
    for column in ("id", "hq", "mask", "degradation", "split", "edge"):
        assert gpu.column(column).equals(cpu.column(column)), column
    lq_cpu, lq_gpu = (table_to_arrays(t, ["lq"])["lq"] * 255 for t in (cpu, gpu))
    # JPEG codecs and the noise draws differ: close, not equal (degrade_gpu tests measure each step)
    assert np.abs(lq_cpu - lq_gpu).mean() < 6
    assert make_procedural_rows(range(6), 0, config(engine="gpu")).equals(gpu)


def test_rows_form_one_table_of_the_schema_even_when_empty():
    table = make_rows([], 0, config())
    assert isinstance(table, pa.Table) and table.num_rows == 0
