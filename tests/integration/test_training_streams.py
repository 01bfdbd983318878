"""The training loop's batch streams on real Ray Data (shared local Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from components.data import ray_dataset
from components.data.ray_dataset import shard_dataset
from components.data.samples import SampleConfig, make_procedural_rows
from components.data.shards import write_shard
from components.training.loop import UNPAIRED_SEED_OFFSET, endless_batches, with_unpaired
from components.training.spec import TrainSpec

pytestmark = pytest.mark.integration


def numbered(count):
    import ray.data

    return ray.data.from_items([{"hq": np.full((1, 2, 2), i, dtype=np.float32)} for i in range(count)])


def test_unpaired_faces_come_from_a_different_shuffled_stream_than_the_paired_inputs(ray_address):
    spec = TrainSpec(method="contrastive_inpaint", method_config={}, steps=1, batch_size=8, checkpoint_every=1,
                     log_every=1, shuffle_buffer=16)
    dataset = numbered(64)
    paired = endless_batches(dataset.iterator(), spec, torch.device("cpu"))
    unpaired = endless_batches(dataset.random_shuffle(seed=1).iterator(), spec, torch.device("cpu"),
                               seed_offset=UNPAIRED_SEED_OFFSET)
    same = seen = 0
    drawn = set()
    for _, (batch, _) in zip(range(16), with_unpaired(paired, unpaired)):  # two epochs
        ours, theirs = batch["hq"][:, 0, 0, 0], batch["unpaired_hq"][:, 0, 0, 0]
        same += int((ours == theirs).sum())
        seen += len(ours)
        drawn |= {int(v) for v in theirs}
    assert seen == 128 and drawn == set(range(64))  # the second stream covers the whole split
    assert same / seen < 0.1  # a face meets its own masked copy only by chance (1/64 per row)


@pytest.fixture
def two_shards(tmp_path):
    rows = make_procedural_rows(range(24), 0, SampleConfig(resolution=32))
    uris = [str(tmp_path / "shard-0.parquet"), str(tmp_path / "shard-1.parquet")]
    write_shard(rows.slice(0, 12), uris[0])
    write_shard(rows.slice(12), uris[1])
    return uris, rows.column("split").to_pylist().count("train")


def all_rows(dataset):
    batches = list(dataset.iter_torch_batches(batch_size=64))
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def test_a_split_comes_out_as_the_asked_columns_decoded_to_float_nchw(ray_address, two_shards):
    uris, train_rows = two_shards
    rows = all_rows(shard_dataset(uris, "train", ["hq", "mask"]))
    assert set(rows) == {"hq", "mask"}
    assert rows["hq"].shape == (train_rows, 3, 32, 32) and rows["mask"].shape == (train_rows, 1, 32, 32)
    assert rows["hq"].dtype == torch.float32 and 0 <= rows["hq"].min() and rows["hq"].max() <= 1


def test_a_small_split_is_read_once_and_kept_so_later_epochs_need_no_files(ray_address, two_shards):
    uris, train_rows = two_shards
    dataset = shard_dataset(uris, "train", ["hq"])
    for uri in uris:
        Path(uri).unlink()
    for _epoch in range(2):
        assert len(all_rows(dataset)["hq"]) == train_rows


def test_a_split_too_big_to_keep_streams_from_its_files_every_epoch(ray_address, two_shards, monkeypatch):
    uris, _ = two_shards
    monkeypatch.setattr(ray_dataset, "KEEP_IN_MEMORY_SHARE", 0.0)
    dataset = shard_dataset(uris, "train", ["hq"])
    for uri in uris:
        Path(uri).unlink()
    with pytest.raises(Exception, match="shard-0.parquet|shard-1.parquet"):
        all_rows(dataset)
