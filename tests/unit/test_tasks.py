"""Each task object's contract: the columns its methods train on, the batch a method gets in
evaluation and at inference, its baselines, scores and breakdown, whether it restores photos."""

import pytest
import torch

from components.data.schema import SHARD_SCHEMA
from components.metrics.scoring import mean_scores
from components.models import METHODS, method_class
from components.models.base import NotARestorer
from components.tasks import (EDGES, INPAINTING, PRIOR, REPRESENTATION, RESTORATION, SUPER_RESOLUTION, TASKS,
                              task_named, task_of, training_columns)
from tests.unit.method_checks import face_batch

SCORED = (RESTORATION, INPAINTING, SUPER_RESOLUTION, EDGES)


@pytest.fixture(scope="module")
def shard_batch():
    """The shard columns every task reads, from the real synthesis path (x4 `lr`)."""
    return face_batch(n=3, size=32, columns=("hq", "lq", "mask", "edge", "lr"), super_resolution={"factor": 4})


def test_the_six_tasks_are_known_by_their_names_and_an_unknown_name_is_named():
    assert list(TASKS) == ["restoration", "inpainting", "super_resolution", "edges", "representation", "prior"]
    assert all(task_named(name) is task and task.name == name for name, task in TASKS.items())
    with pytest.raises(ValueError, match="unknown task 'colourise'.*restoration"):
        task_named("colourise")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_trains_on_columns_its_task_allows(name):
    cls = method_class(name)
    cfg = cls.Config()
    task = task_named(cls.task_for(cfg))
    assert training_columns(cls, cfg) == cls.columns(cfg)
    assert set(task.train_columns) <= set(cls.columns(cfg)) <= {*task.train_columns, *task.optional_columns}
    assert set(cls.columns(cfg)) <= set(SHARD_SCHEMA.names)


def test_a_method_whose_task_depends_on_its_config_gets_that_tasks_columns():
    panini = method_class("panini")
    sr = panini.Config(input="lr")
    assert task_named(panini.task_for(sr)) is SUPER_RESOLUTION and training_columns(panini, sr) == ("hq", "lr")
    assert task_named(panini.task_for(panini.Config())) is RESTORATION


def test_a_method_reading_another_tasks_columns_is_refused_with_its_name_and_the_columns():
    class Confused:
        name, task = "confused", "super_resolution"

        @classmethod
        def columns(cls, cfg):
            return ("hq", "lq")

        @classmethod
        def task_for(cls, cfg):
            return cls.task

    with pytest.raises(ValueError, match=r"'confused' \(task 'super_resolution'\).*missing \['lr'\].*not of this task \['lq'\]"):
        training_columns(Confused, None)


def test_evaluation_feeds_each_task_what_its_protocol_says(shard_batch):
    data = shard_batch
    restoration = RESTORATION.scoring.method_batch(data)
    assert set(restoration) == {"lq", "mask"} and restoration["lq"] is data["lq"]
    inpainting = INPAINTING.scoring.method_batch(data)  # the holes are the only damage: lq = hq
    assert set(inpainting) == {"lq", "mask"} and inpainting["lq"] is data["hq"] and inpainting["mask"] is data["mask"]
    assert set(SUPER_RESOLUTION.scoring.method_batch(data)) == {"lr"}
    edges = EDGES.scoring.method_batch(data)
    assert edges["lq"] is data["hq"] and EDGES.scoring.target(data) is data["edge"]
    assert all(task.scoring.target(data) is data["hq"] for task in (RESTORATION, INPAINTING, SUPER_RESOLUTION))
    assert REPRESENTATION.scoring is None and PRIOR.scoring is None


def test_each_scored_task_has_its_baselines_scores_and_breakdown(shard_batch):
    data = shard_batch
    expected = {
        RESTORATION: (["input"], {"psnr", "ssim", "l1"}, "degradation_level", True),
        INPAINTING: (["mean_fill", "telea", "navier_stokes"], {"psnr", "ssim", "l1", "psnr_hole", "l1_hole"},
                     "mask_bucket", True),
        SUPER_RESOLUTION: (["bicubic"], {"psnr", "ssim", "l1"}, "sr_factor", True),
        EDGES: ([], {"precision", "recall", "f1"}, "mask_bucket", False),
    }
    for task, (baselines, metrics, breakdown, learned) in expected.items():
        scoring = task.scoring
        assert list(scoring.baselines) == baselines and scoring.breakdown == breakdown
        assert scoring.learned_metrics is learned
        assert set(scoring.columns) <= set(data)
        for name, baseline in scoring.baselines.items():
            out = baseline(data)
            assert out.shape == data["hq"].shape, (task, name)
            assert set(scoring.score(out, data)) == metrics
    # a perfect edge map scores 1 everywhere
    perfect = mean_scores(EDGES.scoring.score(data["edge"], data))
    assert all(value == pytest.approx(1.0) for value in perfect.values())


def test_inference_feeds_each_task_its_photo_and_mask():
    image, holes = torch.rand(2, 3, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    restoration = RESTORATION.inference_batch(image)
    assert restoration["lq"] is image and torch.equal(restoration["mask"], torch.zeros(2, 1, 8, 8))
    assert RESTORATION.inference_batch(image, holes)["mask"] is holes  # a blind restorer also takes holes
    assert INPAINTING.inference_batch(image, holes) == {"lq": image, "mask": holes}
    with pytest.raises(ValueError, match="'inpainting' model needs the holes"):
        INPAINTING.inference_batch(image)
    assert SUPER_RESOLUTION.inference_batch(image, holes) == {"lr": image}
    for task in (REPRESENTATION, PRIOR):
        with pytest.raises(NotARestorer, match=task.name):
            task.inference_batch(image)


def test_which_tasks_restore_photos_scale_them_or_keep_their_known_pixels():
    assert [t.name for t in TASKS.values() if t.restores_photos] == ["restoration", "inpainting", "super_resolution"]
    assert [t.name for t in TASKS.values() if t.scales] == ["super_resolution"]
    assert [t.name for t in TASKS.values() if t.keeps_known] == ["inpainting"]
    assert [t.name for t in TASKS.values() if t.needs_mask] == ["inpainting", "edges"]


def test_a_built_method_resolves_to_its_task_object():
    from components.models import build_method

    assert task_of(build_method("baseline", {"width": 8, "depth": 2})) is RESTORATION
