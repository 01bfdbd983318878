"""The registry on a local SQLite MLflow: every version's signature and input example, a version
that carries model.onnx and its mlflow.onnx model, and `pull --format onnx` of both kinds."""

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from components.export.onnx import export_onnx
from components.models import build_method
from components.models.files import ONNX, load_model_dir, save_model_dir
from components.tracking.pull import ONNX_MODEL_TAG
from components.tracking.registry import Candidate, register
from components.tracking.runs import global_tracking_uri
from pipelines.cli import app
from tests.unit.method_checks import TINY_CONFIGS


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A SQLite MLflow with `plain` (a baseline, no ONNX) and `with-onnx` (a CAFIN exported first) registered."""
    directory = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=str(directory / "artifacts"))
    models = {}
    for name, method, onnx in (("plain", "baseline", False), ("with-onnx", "cafin", True)):
        torch.manual_seed(0)
        state, config = build_method(method, TINY_CONFIGS[method]).export()
        model_dir = directory / name
        save_model_dir(str(model_dir), state, {**config, "data": {"resolution": 32, "sr_factor": None}})
        if onnx:
            export_onnx(str(model_dir))
        register(Candidate(name, str(model_dir), client.create_run(experiment).info.run_id, uri, "psnr", 20.0))
        models[name] = str(model_dir)
    return uri, client, models


def load(uri, model_uri):
    with global_tracking_uri(uri):
        return mlflow.pyfunc.load_model(model_uri)


def inputs(n=2):
    rng = np.random.default_rng(0)
    mask = np.zeros((n, 1, 32, 32), np.float32)
    mask[:, :, 8:20, 10:24] = 1.0
    return {"lq": rng.random((n, 3, 32, 32), dtype=np.float32), "mask": mask}


def test_a_registered_model_has_a_signature_and_an_input_example_and_mlflow_checks_requests_with_it(registry):
    uri, _, models = registry
    model = load(uri, "models:/plain/1")
    signature = model.metadata.signature
    assert signature is not None
    assert {spec.name: spec.shape for spec in signature.inputs.inputs} == {"lq": (-1, 3, 32, 32), "mask": (-1, 1, 32, 32)}
    assert [(spec.name, spec.shape) for spec in signature.outputs.inputs] == [("restored", (-1, 3, 32, 32))]
    assert model.metadata.saved_input_example_info is not None
    batch = inputs()
    expected = load_model_dir(models["plain"]).restore({k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    assert np.array_equal(model.predict(batch), expected)
    with pytest.raises(MlflowException, match=r"missing inputs \['mask'\]"):
        model.predict({"lq": batch["lq"]})


def test_a_version_exported_to_onnx_carries_model_onnx_and_an_mlflow_onnx_model_that_predicts_alone(registry):
    uri, client, _ = registry
    version = client.get_model_version("with-onnx", "1")
    onnx_uri = version.tags[ONNX_MODEL_TAG]
    onnx_model = load(uri, onnx_uri)  # MLflow's own onnx flavour: no facerestore code in the loop
    assert onnx_model.metadata.flavors.keys() >= {"onnx"}
    assert [spec.name for spec in onnx_model.metadata.signature.inputs.inputs] == ["lq", "mask"]
    batch = inputs()
    by_onnx = onnx_model.predict(batch)["restored"]
    by_torch = load(uri, "models:/with-onnx/1").predict(batch)
    assert by_onnx.shape == by_torch.shape and np.abs(by_onnx - by_torch).max() < 1e-3
    with global_tracking_uri(uri):
        files = mlflow.artifacts.list_artifacts(artifact_uri="models:/with-onnx/1/data/model")
    assert ONNX in {f.path.rpartition("/")[2] for f in files}


def test_pull_format_onnx_takes_the_versions_model_onnx_or_exports_one_here(registry, tmp_path):
    uri, _, _ = registry
    carried = CliRunner().invoke(app, ["pull", "with-onnx", "--out", str(tmp_path / "a"), "--format", "onnx",
                                       "--tracking-uri", uri], env={"COLUMNS": "200"})
    assert carried.exit_code == 0, carried.output
    assert "model.onnx (carried by the version)" in carried.output and (tmp_path / "a" / ONNX).exists()
    card = (tmp_path / "a" / "MODEL_CARD.md").read_text()
    assert "## ONNX" in card and "largest absolute difference" in card and "mlflow.pyfunc.load_model" in card
    exported = CliRunner().invoke(app, ["pull", "plain", "--out", str(tmp_path / "b"), "--format", "onnx",
                                        "--tracking-uri", uri], env={"COLUMNS": "200"})
    assert exported.exit_code == 0, exported.output
    assert "model.onnx (exported here)" in exported.output and (tmp_path / "b" / ONNX).exists()
    assert "## ONNX" in (tmp_path / "b" / "MODEL_CARD.md").read_text()
    plain = CliRunner().invoke(app, ["pull", "plain", "--out", str(tmp_path / "c"), "--tracking-uri", uri])
    assert plain.exit_code == 0 and not (tmp_path / "c" / ONNX).exists()
    over = CliRunner().invoke(app, ["pull", "plain", "--out", str(tmp_path / "a"), "--tracking-uri", uri])
    assert over.exit_code == 0 and not (tmp_path / "a" / ONNX).exists()  # the other version's graph is gone
