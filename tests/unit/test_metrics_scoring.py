import math

import torch

from components.metrics.scoring import degradation_level, grouped_means, mean_scores
from components.models import build_method
from components.tasks import INPAINTING, PRIOR, REPRESENTATION, RESTORATION, SUPER_RESOLUTION
from pipelines.stages.evaluate import score_task
from tests.unit.method_checks import face_batch


def test_inpainting_is_scored_on_the_clean_image_with_holes_against_three_classical_baselines():
    data = face_batch(n=4, columns=INPAINTING.scoring.columns)
    per_image, outputs = score_task(INPAINTING, {}, data, batch_size=2)
    scores = {name: mean_scores(values) for name, values in per_image.items()}
    assert list(scores) == ["mean_fill", "telea", "navier_stokes"]
    assert {"psnr", "ssim", "l1", "psnr_hole", "l1_hole"} == set(scores["telea"])
    # whole-image PSNR counts the known pixels every method keeps: always above the hole's own PSNR
    assert all(s["psnr"] > s["psnr_hole"] for s in scores.values())
    assert INPAINTING.scoring.method_batch(data)["lq"] is data["hq"]


def test_restorers_face_the_untouched_input_and_are_given_only_the_degraded_image():
    data = face_batch(n=4, columns=RESTORATION.scoring.columns)
    model = build_method("baseline", {"width": 8, "depth": 2})
    per_image, outputs = score_task(RESTORATION, {"train_baseline": model}, data, batch_size=3)
    scores = {name: mean_scores(values) for name, values in per_image.items()}
    assert list(scores) == ["input", "train_baseline"]
    # an untrained baseline returns its hole-filled input: the two score the same
    assert math.isclose(scores["input"]["psnr"], scores["train_baseline"]["psnr"], rel_tol=1e-5)
    assert set(RESTORATION.scoring.method_batch(data)) == {"lq", "mask"}


def test_super_resolution_faces_bicubic_at_the_shards_factor():
    data = face_batch(n=2, size=32, columns=SUPER_RESOLUTION.scoring.columns, super_resolution={"factor": 8})
    per_image, outputs = score_task(SUPER_RESOLUTION, {}, data, batch_size=2)
    assert outputs["bicubic"].shape == data["hq"].shape and set(per_image) == {"bicubic"}


def test_models_that_are_not_image_restorers_are_not_scored():
    assert REPRESENTATION.scoring is None and PRIOR.scoring is None


def test_mean_scores_leave_out_images_with_nothing_to_score():
    assert mean_scores({"psnr_hole": torch.tensor([20.0, float("nan"), 30.0])}) == {"psnr_hole": 25.0}


def test_scores_split_by_group_average_only_that_groups_samples():
    per_image = {"telea": {"psnr": torch.tensor([10.0, 20.0, 30.0, 40.0])}}
    groups = grouped_means(per_image, ["10-20%", "0-10%", "10-20%", "0-10%"])
    assert groups == {"0-10%": {"telea": {"psnr": 30.0}}, "10-20%": {"telea": {"psnr": 20.0}}}


def test_degradation_levels_split_at_scales_2_and_4():
    assert [degradation_level(s) for s in (0.8, 1.99, 2.0, 3.9, 4.0, 8.0)] == [
        "mild (scale < 2)", "mild (scale < 2)", "moderate (scale 2-4)", "moderate (scale 2-4)",
        "severe (scale >= 4)", "severe (scale >= 4)"]


def test_learned_metrics_without_weights_are_unavailable_not_numbers():
    from components.metrics.learned import LearnedMetrics, LearnedMetricsConfig

    # dlib's identity network installs with the project (tests/unit/test_metrics_dlib_identity.py): turned off here.
    learned = LearnedMetrics(LearnedMetricsConfig(dlib_identity=False))
    images = torch.rand(2, 3, 32, 32)
    assert learned.per_image(images, images) == {} and learned.per_set(images, images) == {}
    assert learned.identity_network is None
    assert learned.unavailable({"psnr": 30.0}) == {"psnr": 30.0, "lpips": None, "identity": None, "fid": None,
                                                   "id_accuracy": None}


def no_learned_metrics():
    from components.metrics.learned import LearnedMetrics, LearnedMetricsConfig

    return LearnedMetrics(LearnedMetricsConfig(dlib_identity=False))


def test_evaluate_scores_each_task_under_the_project_and_its_papers_protocol_on_the_8_bit_outputs():
    from components.data.schema import to_uint8
    from components.metrics.protocols import CTCNET, EDGECONNECT, available_means
    from pipelines.stages.evaluate import Config, score_split

    data = face_batch(n=3, size=64, columns=("hq", "mask", "lr"), super_resolution={"factor": 4})
    groups = {"mask_bucket": ["0-10%"] * 3, "sr_factor": ["x4"] * 3, "degradation_level": ["none"] * 3}
    report = score_split({INPAINTING: {}, SUPER_RESOLUTION: {}}, data, groups, Config(), no_learned_metrics())
    assert {task: list(tables) for task, tables in report.tasks.items()} == {
        "inpainting": ["project", "edgeconnect"], "super_resolution": ["project", "ctcnet"]}
    metrics = report.flat_metrics()
    assert {"telea/psnr_hole", "telea/edgeconnect/psnr", "telea/edgeconnect/ssim", "telea/edgeconnect/mae",
            "bicubic/psnr", "bicubic/ctcnet/psnr", "bicubic/ctcnet/ssim"} <= set(metrics)
    _, outputs = score_task(SUPER_RESOLUTION, {}, data, batch_size=2)
    bicubic = available_means(CTCNET.score(to_uint8(outputs["bicubic"]), to_uint8(data["hq"])))
    assert metrics["bicubic/ctcnet/psnr"] == bicubic["psnr"] and metrics["bicubic/ctcnet/ssim"] == bicubic["ssim"]
    _, outputs = score_task(INPAINTING, {}, data, batch_size=2)
    assert metrics["telea/edgeconnect/mae"] == available_means(EDGECONNECT.score(outputs["telea"], data["hq"]))["mae"]
    assert report.tasks["inpainting"]["edgeconnect"].groups == {}  # no breakdown under a paper protocol
    text = report.markdown()
    assert "## super_resolution (protocol: ctcnet)" in text and "- protocol ctcnet: IVIPLab/CTCNet psnr_ssim.py" in text


def test_evaluate_protocols_given_are_scored_for_every_image_task_and_unknown_names_fail_at_config_time():
    import pydantic
    import pytest

    from pipelines.stages.evaluate import Config, score_split

    data = face_batch(n=2, size=32, columns=("hq", "mask"))
    cfg = Config(protocols=["panini", "panini"])
    assert cfg.protocols == ["panini"]
    report = score_split({INPAINTING: {}}, data, {"mask_bucket": ["x"] * 2}, cfg, no_learned_metrics())
    assert list(report.tasks["inpainting"]) == ["panini"]
    assert set(report.flat_metrics()) == {f"{name}/panini/psnr" for name in ("mean_fill", "telea", "navier_stokes")}
    with pytest.raises(pydantic.ValidationError, match="unknown scoring protocol 'psnr' .known: project, ctcnet"):
        Config(protocols=["project", "psnr"])
    with pytest.raises(pydantic.ValidationError):
        Config(protocols=[])


def test_a_task_is_scored_under_the_paper_protocol_of_each_of_its_methods():
    from types import SimpleNamespace

    from components.tasks import EDGES
    from pipelines.stages.evaluate import task_protocols

    ctcnet = SimpleNamespace(paper_protocol=None, task="super_resolution")
    panini_sr = SimpleNamespace(paper_protocol="panini", task="super_resolution")
    assert task_protocols(SUPER_RESOLUTION, {}, None) == ["project", "ctcnet"]  # baselines only: the task's
    assert task_protocols(SUPER_RESOLUTION, {"train_panini_sr": panini_sr}, None) == ["project", "panini"]
    assert task_protocols(SUPER_RESOLUTION, {"a": ctcnet, "b": panini_sr}, None) == ["project", "ctcnet", "panini"]
    edge_gan = SimpleNamespace(paper_protocol=None, task="edges")
    assert task_protocols(EDGES, {"train_edge": edge_gan}, None) == ["project"]
    assert task_protocols(EDGES, {"train_edge": edge_gan}, ["project", "ctcnet"]) == ["project"]  # not images
