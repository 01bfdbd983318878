"""The training loop's batch streams on real Ray Data (shared local Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
