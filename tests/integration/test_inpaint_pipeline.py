"""pipelines/configs/inpaint.yaml at test size on the shared local Ray with a real SQLite MLflow."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from pipelines.config import load_config
from pipelines.dag import Selection
from pipelines.runner import Runner
from pipelines.store import Store
from tests.integration.recipes import train_settings, write_tiny_recipe

pytestmark = pytest.mark.integration

TRAIN = ["train_edge", "train_fusion_inpaint", "train_cafin"]


@pytest.fixture(scope="module")
def inpaint_run(tmp_path_factory, ray_address):
    directory = tmp_path_factory.mktemp("inpaint")
    config = write_tiny_recipe("inpaint", directory, {
        "synthesize.source.count": 160, "synthesize.shard_size": 80, "synthesize.resolution": 32,
        **train_settings(TRAIN)})
    record = Runner(load_config(config), Selection(), console=Console(file=io.StringIO())).run()
    return config, record


def test_inpaint_recipe_trains_both_methods_and_scores_them_beside_the_classical_baselines(inpaint_run):
    config, record = inpaint_run
    assert record["state"] == "finished"
    metrics = record["stages"]["evaluate"]["metrics"]
    for name in ("mean_fill", "telea", "navier_stokes", "train_fusion_inpaint", "train_cafin"):
        assert 0 < metrics[f"{name}/psnr_hole"] < metrics[f"{name}/psnr"]
    assert 0 <= metrics["train_edge/f1"] <= 1


def test_fusion_inpainting_carries_the_edge_model_it_was_trained_on(inpaint_run):
    config, record = inpaint_run
    store = Store(load_config(config).store)
    fusion = store.artifact("train_fusion_inpaint", record["stages"]["train_fusion_inpaint"]["fingerprint"])
    edge = store.artifact("train_edge", record["stages"]["train_edge"]["fingerprint"])
    assert fusion.manifest["upstream"]["train_edge"] == edge.fingerprint
    fusion_config = json.loads(Path(fusion.uri, "config.json").read_text())
    edge_config = json.loads(Path(edge.uri, "config.json").read_text())
    assert fusion_config["config"]["edge"]["width"] == edge_config["config"]["width"]
    assert fusion_config["task"] == "inpainting" and fusion_config["data"]["resolution"] == 32


def test_each_inpainting_method_registers_under_its_own_name(inpaint_run):
    from mlflow.tracking import MlflowClient

    _, record = inpaint_run
    client = MlflowClient(record["tracking_uri"])
    for name in ("facerestore-fusion_inpaint", "facerestore-cafin"):
        version = client.get_model_version_by_alias(name, "champion")
        assert version.tags["metric"] == "psnr_hole"
