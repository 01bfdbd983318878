"""The building blocks of `benchmarks/bench_synthesize.py`, at a tiny size (no timing, no Ray)."""

import cv2
import numpy as np
import pytest

from benchmarks.bench_synthesize import (
    alternate,
    bare_jobs,
    bare_loop,
    one_opencv_thread,
    split,
    stage_in_process,
    write_faces,
)
from components.data.samples import SampleConfig
from components.data.schema import decode_mask, decode_png
from components.data.shards import read_shards

RESOLUTION = 32
IMAGES = 6


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return write_faces(tmp_path_factory.mktemp("faces"), IMAGES, RESOLUTION)


def test_benchmark_faces_are_distinct_pngs_of_the_resolution(items):
    images = [cv2.imread(item.uri) for item in items]
    assert len(images) == IMAGES
    assert all(image.shape == (RESOLUTION, RESOLUTION, 3) for image in images)
    assert len({image.tobytes() for image in images}) == IMAGES


def test_shards_split_the_items_in_order():
    assert split(list(range(5)), 2) == [[0, 1], [2, 3], [4]]


def test_stage_and_bare_loop_make_the_same_pngs_of_every_image(items, tmp_path):
    cfg = SampleConfig(resolution=RESOLUTION)
    shards = split(items, 4)
    infos = stage_in_process(shards, 0, cfg, tmp_path)
    bare = bare_loop(bare_jobs(items), 0, cfg)
    assert [info.rows for info in infos] == [4, 2]
    table = read_shards([info.path for info in infos], columns=["id", "hq", "lq", "mask", "edge"])
    assert table.column("id").to_pylist() == [item.id for item in items]
    stage = list(zip(*(table.column(name).to_pylist() for name in ("hq", "lq", "mask", "edge"))))
    assert stage == bare
    hq, lq, mask, edge = bare[0]
    assert decode_png(lq).shape == (RESOLUTION, RESOLUTION, 3)
    assert not np.array_equal(decode_png(lq), decode_png(hq))
    assert set(np.unique(decode_mask(mask))) <= {0, 1} and decode_mask(edge).shape == (RESOLUTION, RESOLUTION)


def test_bare_loop_refuses_a_config_it_does_not_mirror(items):
    with pytest.raises(ValueError, match="super_resolution"):
        bare_loop(bare_jobs(items), 0, SampleConfig(resolution=RESOLUTION, edges=False))


def test_alternate_gives_each_side_an_empty_folder_and_a_median(tmp_path):
    seen = []
    times = alternate({"a": lambda out: seen.append(list(out.iterdir())), "b": lambda out: None}, tmp_path, repeats=3)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    assert seen == [[], [], []] and list(tmp_path.iterdir()) == []


def test_one_opencv_thread_restores_the_thread_count():
    before = cv2.getNumThreads()
    with one_opencv_thread():
        assert cv2.getNumThreads() == 1
    assert cv2.getNumThreads() == before
