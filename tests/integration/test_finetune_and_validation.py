"""Validation, best-checkpoint selection, fine-tuning from the registry and resume at tiny size,
on the shared local Ray with the store's SQLite MLflow: a CAFIN (a generator and a
discriminator) trained, registered, then fine-tuned from its champion."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

from components.models.base import split_by_network
from components.models.files import read_model_dir, read_training_weights
from pipelines.config import ConfigError, load_config
from pipelines.dag import State
from pipelines.runner import Runner, plan
from pipelines.store import Store
from tests.integration.tiny import write_tiny_config
from tests.unit.method_checks import TINY_CONFIGS

pytestmark = pytest.mark.integration

MODEL = "facerestore-cafin"


def run(config: Path, overrides=()):
    return Runner(load_config(config, list(overrides)), console=Console(file=io.StringIO(), width=200)).run()


def inpainting_config(directory: Path, **finetune) -> Path:
    """The tiny demo with CAFIN in the baseline's place (`train`), and a `finetune` stage when given."""
    path = write_tiny_config(directory, steps=20)
    raw = yaml.safe_load(path.read_text())
    stages = raw["stages"]
    train = stages.pop("train_baseline")
    train.update(method="cafin", method_config=dict(TINY_CONFIGS["cafin"]), val_every=10, val_images=16,
                 select="best", checkpoint_every=10)
    stages["train"] = train
    stages["evaluate"]["needs"] = ["synthesize", "train"]
    stages["register"] = {"needs": ["train", "evaluate"], "metric": "psnr_hole"}
    if finetune:
        stages["finetune"] = {**train, "steps": 2, "val_every": 1, "checkpoint_every": 2, **finetune}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_address):
    config = inpainting_config(tmp_path_factory.mktemp("finetune"))
    record = run(config)
    store = Store(load_config(config).store)
    return config, record, store, store.artifact("train", record["stages"]["train"]["fingerprint"])


def test_training_validated_every_val_every_steps_and_exported_its_best_step(trained):
    _, record, _, model = trained
    history = model.manifest["details"]["val_history"]
    assert [entry["step"] for entry in history] == [10, 20]
    assert {"psnr", "ssim", "psnr_hole", "l1_hole"} <= set(history[0])
    best = max(history, key=lambda entry: entry["psnr_hole"])
    training = read_model_dir(model.uri)[1]["training"]
    assert (training["step"], training["select"], training["select_metric"]) == (best["step"], "best", "psnr_hole")
    assert training["val"]["psnr_hole"] == pytest.approx(best["psnr_hole"])
    assert record["stages"]["train"]["metrics"]["selected/psnr_hole"] == pytest.approx(best["psnr_hole"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(record["tracking_uri"])
    train_run = record["stages"]["train"]["mlflow_run_id"]
    assert [m.step for m in client.get_metric_history(train_run, "val/psnr_hole")] == [10, 20]
    # the registered model carries the live generator beside the averaged one, for fine-tuning
    assert set(split_by_network(read_training_weights(model.uri))) == {"g"}


def test_a_fine_tune_from_the_champion_starts_at_its_weights_discriminator_included(trained, tmp_path):
    config, record, store, source = trained
    # lr 1e-9: two Adam steps move no weight by more than ~1e-9, so what the fine-tune exports
    # is where it started
    finetune = inpainting_config(Path(config).parent, init_from=f"models:/{MODEL}@champion",
                                 method_config={**TINY_CONFIGS["cafin"], "lr": 1e-9})
    entries = {e.stage.name: e for e in plan(load_config(finetune))}
    assert entries["finetune"].stage.config["init_from_resolved"] == f"models:/{MODEL}/1"
    assert entries["train"].state is State.CACHED
    record = run(finetune)
    tuned = store.artifact("finetune", record["stages"]["finetune"]["fingerprint"])
    source_nets = split_by_network(read_model_dir(source.uri)[0])
    tuned_nets = split_by_network(read_model_dir(tuned.uri)[0])
    for key, value in source_nets["d"].items():
        if key.endswith("original") or key.endswith("bias"):  # parameters (the spectral norm's vectors move each forward)
            torch.testing.assert_close(tuned_nets["d"][key], value, atol=1e-6, rtol=0)
    source_live = split_by_network(read_training_weights(source.uri))["g"]
    tuned_live = split_by_network(read_training_weights(tuned.uri))["g"]
    for key, value in source_live.items():
        torch.testing.assert_close(tuned_live[key], value, atol=1e-6, rtol=0)
    first_val = tuned.manifest["details"]["val_history"][0]["psnr_hole"]
    source_val = read_model_dir(source.uri)[1]["training"]["val"]["psnr_hole"]
    assert first_val == pytest.approx(source_val, abs=0.05)
    assert read_model_dir(tuned.uri)[1]["training"]["init_from"] == f"models:/{MODEL}/1"

    # A new champion makes the fine-tune stale, and the plan says why.
    from components.tracking.registry import Candidate, register

    outcome = register(Candidate(name=MODEL, model_uri=tuned.uri, run_id=record["stages"]["finetune"]["mlflow_run_id"],
                                 tracking_uri=record["tracking_uri"], metric="psnr_hole", score=99.0))
    assert (outcome.version, outcome.promoted) == (2, True)
    entries = {e.stage.name: e for e in plan(load_config(finetune))}
    assert entries["finetune"].state is State.STALE
    assert (f"config key 'finetune.init_from_resolved' changed: 'models:/{MODEL}/1' -> 'models:/{MODEL}/2'"
            in entries["finetune"].reasons)
    assert entries["train"].state is State.CACHED


def test_steps_0_with_init_from_exports_the_source_model_unchanged_without_training(trained):
    config, _, store, source = trained
    imported = inpainting_config(Path(config).parent, init_from="train", steps=0, needs=["synthesize", "train"])
    record = run(imported)
    model = store.artifact("finetune", record["stages"]["finetune"]["fingerprint"])
    assert "ray_train_run" not in model.manifest["details"]
    (source_state, _), (state, config_json) = read_model_dir(source.uri), read_model_dir(model.uri)
    assert source_state.keys() == state.keys()
    for key, value in source_state.items():
        torch.testing.assert_close(state[key], value, atol=0, rtol=0)
    assert read_training_weights(model.uri).keys() == read_training_weights(source.uri).keys()
    assert config_json["training"]["init_from"] == "train" and config_json["training"]["steps"] == 0


@pytest.mark.parametrize("source, named", [
    (f"models:/{MODEL}@nope", f"'{MODEL}' has versions 1"),
    ("models:/facerestore-nothing@champion", f"no registered model 'facerestore-nothing' (registered: {MODEL})"),
    (f"models:/{MODEL}/99", f"'{MODEL}' has versions 1"),
    ("/no/such/model", "neither a registered model"),
])
def test_an_init_from_naming_nothing_is_refused_listing_what_exists(trained, tmp_path, source, named):
    config, _, _, _ = trained
    finetune = inpainting_config(tmp_path, init_from=source)
    raw = yaml.safe_load(finetune.read_text())
    raw["store"] = str(Path(config).parent / "store")  # the trained run's store: its registry
    finetune.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="stages.finetune: ") as err:
        plan(load_config(finetune))
    assert named in str(err.value) and source.removeprefix("models:/").split("@")[0].split("/")[0] in str(err.value)


def test_a_resumed_training_keeps_its_average_validation_history_and_schedule(trained):
    """The same Ray Train run name continues from its checkpoint (what a crashed stage's rerun
    does): 20 steps, then the run asked for 40 picks up at step 20."""
    from components.data.ray_dataset import shard_dataset
    from components.training.schedule import ScheduleConfig, lr_factor
    from components.training.spec import TrainSpec
    from components.training.trainer import Placement, fit
    from components.training.validation import ValidationSpec
    from pipelines.stages.inputs import shard_uris

    config, record, store, _ = trained
    shards = store.artifact("synthesize", record["stages"]["synthesize"]["fingerprint"])
    uris = shard_uris(shards)
    schedule = ScheduleConfig(kind="linear", decay_from=0.25, min_lr_ratio=0.25)
    method_config = {**TINY_CONFIGS["cafin"], "lr": 1e-3}

    def train(steps: int):
        spec = TrainSpec(method="cafin", method_config=method_config, steps=steps, batch_size=8, checkpoint_every=10,
                         log_every=10, ema_decay=0.999, schedule=schedule,
                         validation=ValidationSpec(every=10, images=8, shard_uris=tuple(uris)))
        datasets = {"train": shard_dataset(uris, "train", ("hq", "mask"))}
        return fit(spec, datasets, store.train_storage(), "resume-check", Placement(workers=1))

    first = train(20)
    assert first.state["ema"]["updates"] == 20
    second = train(40)
    assert second.metrics["resumed_from"] == 20
    assert second.state["ema"]["updates"] == 40  # the average went on from the checkpointed one
    assert [entry["step"] for entry in second.state["val_history"]] == [10, 20, 30, 40]
    lr = second.state["opts"]["g"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-3 * lr_factor(schedule, 40, 40)) and lr == pytest.approx(2.5e-4)
