"""The spine at tiny size on the shared local Ray with a real SQLite MLflow."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from pipelines.config import load_config
from pipelines.dag import Selection, SelectionError, State
from pipelines.runner import Runner, plan
from pipelines.store import Store
from tests.integration.tiny import write_tiny_config

pytestmark = pytest.mark.integration


def run(config, overrides=(), selection=Selection()):
    out = io.StringIO()
    record = Runner(load_config(config, list(overrides)), selection, console=Console(file=out, width=200)).run()
    return record, out.getvalue()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ray_address):
    directory = tmp_path_factory.mktemp("pipeline")
    config = write_tiny_config(directory)
    record, screen = run(config)
    return config, record, screen


def mlflow_client(record):
    from mlflow.tracking import MlflowClient

    return MlflowClient(record["tracking_uri"])


def test_demo_pipeline_runs_every_stage_and_beats_the_degraded_input(first_run):
    config, record, _ = first_run
    assert record["state"] == "finished"
    assert [s["state"] for s in record["stages"].values()] == ["finished"] * 4
    scores = record["stages"]["evaluate"]["metrics"]
    assert scores["train_baseline/psnr"] > scores["input/psnr"]
    assert scores["train_baseline/l1"] < scores["input/l1"]
    assert record["tracking_uri"].startswith("sqlite:///") and str(Store(load_config(config).store).uri) in record["tracking_uri"]


def test_training_used_two_ddp_workers_reading_the_train_split(first_run):
    config, record, _ = first_run
    store = Store(load_config(config).store)
    train = store.artifact("train_baseline", record["stages"]["train_baseline"]["fingerprint"])
    shards = store.artifact("synthesize", record["stages"]["synthesize"]["fingerprint"])
    assert train.manifest["details"]["resumed_from"] == 0
    assert train.manifest["count"] == 60
    assert set(shards.manifest["details"]["splits"]) == {"train", "val", "test"}
    assert (Path(train.uri) / "model.safetensors").exists() and (Path(train.uri) / "config.json").exists()


def test_live_view_showed_samples_and_training_steps(first_run):
    _, _, screen = first_run
    assert "320/320 samples" in screen
    assert "60/60 steps" in screen and "loss" in screen


def test_mlflow_has_a_parent_run_with_a_child_per_stage_params_metrics_and_artifacts(first_run):
    _, record, _ = first_run
    client = mlflow_client(record)
    parent = client.get_run(record["mlflow_run_id"])
    assert parent.data.params["stages.train_baseline.method_config.lr"] == "0.001"
    children = {r.data.tags["facerestore.stage"]: r for r in client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert set(children) == {"synthesize", "train_baseline", "evaluate", "register"}
    train = children["train_baseline"]
    assert train.data.params["method"] == "baseline"
    # One point per log_every (5) steps, each the mean over its interval; whether the loss
    # falls is the unit tests' business and the evaluate test's: 60 steps are too few to see it here.
    history = client.get_metric_history(train.info.run_id, "loss")
    assert {m.step for m in history} == set(range(5, 61, 5))
    artifacts = {a.path for a in client.list_artifacts(children["evaluate"].info.run_id)}
    assert {"manifest.json", "grid_restoration.png"} <= artifacts
    assert "manifest.json" in {a.path for a in client.list_artifacts(children["synthesize"].info.run_id)}


def test_register_sets_candidate_and_champion_on_the_first_version(first_run):
    _, record, _ = first_run
    client = mlflow_client(record)
    assert str(client.get_model_version_by_alias("facerestore-baseline", "candidate").version) == "1"
    assert str(client.get_model_version_by_alias("facerestore-baseline", "champion").version) == "1"


def test_pulled_champion_restores_bit_identically_to_the_trained_model_and_restores_a_photo(first_run, tmp_path):
    import torch
    from typer.testing import CliRunner

    from components.data.schema import decode_png, encode_png
    from components.models.files import load_model_dir
    from pipelines.cli import app

    config, record, _ = first_run
    store = Store(load_config(config).store)
    pulled = CliRunner().invoke(app, ["pull", "facerestore-baseline@champion", "--out", str(tmp_path / "m"),
                                      "--tracking-uri", record["tracking_uri"]])
    assert pulled.exit_code == 0, pulled.output
    card = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    train_fingerprint = record["stages"]["train_baseline"]["fingerprint"]
    assert train_fingerprint in card and record["stages"]["synthesize"]["fingerprint"] in card  # model -> data lineage
    trained = load_model_dir(store.artifact("train_baseline", train_fingerprint).uri)
    batch = {"lq": torch.rand(3, 3, 32, 32), "mask": torch.zeros(3, 1, 32, 32)}
    assert torch.equal(load_model_dir(str(tmp_path / "m")).restore(batch), trained.restore(batch))

    (tmp_path / "in.png").write_bytes(encode_png((torch.rand(48, 40, 3) * 255).byte().numpy()))
    restored = CliRunner().invoke(app, ["restore", str(tmp_path / "in.png"), "--model", "models:/facerestore-baseline@candidate",
                                        "--aligned", "--out", str(tmp_path / "out"), "--tracking-uri", record["tracking_uri"]])
    assert restored.exit_code == 0, restored.output
    assert decode_png((tmp_path / "out" / "restored_imgs" / "in.png").read_bytes()).shape == (48, 40, 3)


def test_second_run_of_the_same_config_runs_no_stage(first_run):
    config, _, _ = first_run
    record, _ = run(config)
    assert {s["state"] for s in record["stages"].values()} == {"cached"}


def test_set_lr_makes_train_and_downstream_stale_naming_the_key(first_run):
    config, _, _ = first_run
    entries = {e.stage.name: e for e in plan(load_config(config, ["train_baseline.method_config.lr=2e-4"]))}
    assert entries["synthesize"].state is State.CACHED and not entries["synthesize"].will_run
    assert entries["train_baseline"].state is State.STALE
    assert "config key 'train_baseline.method_config.lr' changed: 0.001 -> 0.0002" in entries["train_baseline"].reasons
    assert all(entries[n].will_run for n in ("train_baseline", "evaluate", "register"))


def test_only_with_a_never_produced_upstream_fails_naming_it(tmp_path, ray_address):
    config = write_tiny_config(tmp_path)
    with pytest.raises(SelectionError, match="needs 'synthesize'"):
        plan(load_config(config), Selection(only="train_baseline"))


def test_runs_and_status_commands_show_each_stage(first_run):
    from typer.testing import CliRunner

    from pipelines.cli import app

    config, record, _ = first_run
    store = load_config(config).store
    listing = CliRunner().invoke(app, ["runs", "--store", store], env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and record["run_id"] in listing.output
    shown = CliRunner().invoke(app, ["status", record["run_id"], "--store", store], env={"COLUMNS": "250"})
    assert shown.exit_code == 0
    for name, info in record["stages"].items():
        assert name in shown.output and info["fingerprint"][:12] in shown.output
    assert record["stages"]["train_baseline"]["mlflow_run_id"][:12] in shown.output
    assert "psnr" in shown.output
    stages = ["synthesize", "train_baseline", "evaluate", "register"]
    assert sorted(stages, key=shown.output.index) == stages  # the plan's order, not the record file's sorted keys


def test_report_command_prints_the_benchmark_table_and_the_evaluation_wrote_it_in_three_formats(first_run):
    from typer.testing import CliRunner

    from pipelines.cli import app

    config, record, _ = first_run
    store = Store(load_config(config).store)
    shown = CliRunner().invoke(app, ["report", record["run_id"], "--store", load_config(config).store],
                               env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "restoration" in shown.output and "train_baseline" in shown.output and "input" in shown.output
    assert "degradation_level" in shown.output  # the breakdown tables follow the whole-split table
    evaluation = Path(store.artifact("evaluate", record["stages"]["evaluate"]["fingerprint"]).uri)
    assert {"report.md", "report.csv", "report.html", "grid_restoration.png"} <= {p.name for p in evaluation.iterdir()}


def test_register_with_onnx_carries_model_onnx_and_an_mlflow_onnx_model_and_restores_with_onnxruntime(first_run, tmp_path):
    import mlflow
    import torch
    from typer.testing import CliRunner

    from components.data.schema import decode_png, encode_png
    from components.tracking.runs import global_tracking_uri
    from pipelines.cli import app

    config, record, _ = first_run
    again, _ = run(config, ["register.onnx=true"])  # only the register stage's config changed
    assert {name: s["state"] for name, s in again["stages"].items()} == {
        "synthesize": "cached", "train_baseline": "cached", "evaluate": "cached", "register": "finished"}
    metrics = again["stages"]["register"]["metrics"]
    assert metrics["version"] == 2 and metrics["onnx_max_abs_diff"] < 1e-3
    uri = record["tracking_uri"]
    version = mlflow_client(record).get_model_version("facerestore-baseline", "2")
    with global_tracking_uri(uri):
        assert mlflow.pyfunc.load_model("models:/facerestore-baseline/2").metadata.signature is not None
        onnx_model = mlflow.pyfunc.load_model(version.tags["onnx_model_uri"])
    lq, mask = torch.rand(2, 3, 32, 32).numpy(), torch.zeros(2, 1, 32, 32).numpy()
    assert onnx_model.predict({"lq": lq, "mask": mask})["restored"].shape == (2, 3, 32, 32)

    pulled = CliRunner().invoke(app, ["pull", "facerestore-baseline/2", "--out", str(tmp_path / "m"), "--format", "onnx",
                                      "--tracking-uri", uri], env={"COLUMNS": "200"})
    assert pulled.exit_code == 0 and "model.onnx (carried by the version)" in pulled.output, pulled.output
    assert "## ONNX" in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    (tmp_path / "in.png").write_bytes(encode_png((torch.rand(48, 40, 3) * 255).byte().numpy()))
    restored = CliRunner().invoke(app, ["restore", str(tmp_path / "in.png"), "--model", "models:/facerestore-baseline/2",
                                        "--backend", "onnxruntime", "--aligned", "--out", str(tmp_path / "out"),
                                        "--tracking-uri", uri])
    assert restored.exit_code == 0, restored.output
    assert decode_png((tmp_path / "out" / "restored_imgs" / "in.png").read_bytes()).shape == (48, 40, 3)
