"""pipelines/configs/face_sr.yaml, masked_face.yaml and blind.yaml at test size, on the shared local Ray."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from pipelines.config import load_config
from pipelines.dag import Selection
from pipelines.runner import Runner
from pipelines.store import Store
from tests.integration.recipes import train_settings, write_tiny_recipe

pytestmark = pytest.mark.integration


def run_tiny(name, directory, settings):
    config = write_tiny_recipe(name, directory, {"synthesize.source.count": 160, "synthesize.shard_size": 80,
                                                 "synthesize.resolution": 32, **settings})
    return Runner(load_config(config), Selection(), console=Console(file=io.StringIO())).run()


def test_face_sr_recipe_trains_ctcnet_and_scores_it_beside_bicubic_with_lpips_from_local_weights(tmp_path, ray_address):
    import torch

    from tests.unit.test_metrics_lpips import official_heads_state, torchvision_vgg16_state

    torch.save(torchvision_vgg16_state(), tmp_path / "vgg16.pth")
    torch.save(official_heads_state(), tmp_path / "vgg.pth")
    record = run_tiny("face_sr", tmp_path, {**train_settings(["train_ctcnet"]),
                                            "evaluate.learned": {"lpips_backbone": str(tmp_path / "vgg16.pth"),
                                                                 "lpips_heads": str(tmp_path / "vgg.pth")}})
    assert record["state"] == "finished"
    metrics = record["stages"]["evaluate"]["metrics"]
    assert {"bicubic/psnr", "train_ctcnet/psnr", "train_ctcnet/ssim", "train_ctcnet/lpips", "bicubic/lpips"} <= set(metrics)
    assert not any(key.endswith("/fid") for key in metrics)  # no weights given: unavailable
    for name in ("bicubic", "train_ctcnet"):  # dlib's face recognition ResNet installs with the project
        assert -1.0 <= metrics[f"{name}/identity"] <= 1.0 and 0.0 <= metrics[f"{name}/id_accuracy"] <= 1.0
    evaluation = Path(Store(record["store"]).artifact("evaluate", record["stages"]["evaluate"]["fingerprint"]).uri)
    assert "- identity_net: dlib_resnet_v1" in (evaluation / "report.md").read_text()
    assert record["stages"]["register"]["metrics"]["version"] == 1


def test_masked_face_recipe_trains_without_pairs_and_scores_beside_mean_fill_and_telea(tmp_path, ray_address):
    record = run_tiny("masked_face", tmp_path, train_settings(["train_contrastive_inpaint"]))
    assert record["state"] == "finished"
    metrics = record["stages"]["evaluate"]["metrics"]
    for name in ("mean_fill", "telea", "navier_stokes", "train_contrastive_inpaint"):
        assert f"{name}/psnr_hole" in metrics


def test_blind_recipe_pretrains_the_dre_and_prior_then_scores_panini_for_blind_restoration_and_x16_sr(
        tmp_path, ray_address):
    from mlflow.tracking import MlflowClient

    trained = ["pretrain_dre", "train_prior", "train_panini", "train_panini_sr"]
    record = run_tiny("blind", tmp_path, {**train_settings(trained, steps=10), "pretrain_dre.method_config.queue_size": 32,
                                          "train_prior.method_config.resolution": 32})
    assert record["state"] == "finished"
    metrics = record["stages"]["evaluate"]["metrics"]
    assert {"input/psnr", "train_panini/psnr", "bicubic/psnr", "train_panini_sr/psnr"} <= set(metrics)
    assert not any(key.startswith(("pretrain_dre/", "train_prior/")) for key in metrics)  # upstream, not restorers
    samples = MlflowClient(record["tracking_uri"]).list_artifacts(record["stages"]["train_prior"]["mlflow_run_id"])
    assert "samples.png" in {a.path for a in samples}
    assert record["stages"]["register"]["metrics"]["version"] == 1
    assert record["stages"]["register_sr"]["metrics"]["version"] == 1
