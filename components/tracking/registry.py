"""The MLflow model registry: log a model version, set `candidate`, move `champion` on merit.

Every version is a pickle-free pyfunc (components/tracking/pyfunc_model.py) with a signature and
an input example (components/tracking/signature.py). A model directory that holds `model.onnx`
(the register stage's `onnx: true` exports it) is carried in the pyfunc's data too, and the run
also logs it as an `mlflow.onnx` model (`model_onnx`, the same signature on its graph's inputs),
which MLflow's own serving loads without this project's code; its URI is the version's
`onnx_model_uri` tag.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import components

PYFUNC_LOADER = "components.tracking.pyfunc_model"
ONNX_MODEL_NAME = "model_onnx"  # the run's mlflow.onnx model, beside the pyfunc "model"
CANDIDATE, CHAMPION = "candidate", "champion"


@dataclass(frozen=True)
class Candidate:
    name: str
    model_uri: str  # directory with model.safetensors + config.json
    run_id: str  # MLflow run the version is logged under
    tracking_uri: str
    metric: str
    score: float
    higher_is_better: bool = True
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    version: int
    score: float
    promoted: bool
    champion_score: float | None
    decision: str


def register(candidate: Candidate) -> Outcome:
    from mlflow.tracking import MlflowClient

    from components.tracking.pull import ONNX_MODEL_TAG
    from components.tracking.runs import global_tracking_uri

    client = MlflowClient(candidate.tracking_uri)
    with global_tracking_uri(candidate.tracking_uri):
        version, onnx_model_uri = log_version(candidate)
    tags = {**candidate.tags, candidate.metric: str(candidate.score), "metric": candidate.metric}
    if onnx_model_uri:
        tags[ONNX_MODEL_TAG] = onnx_model_uri
    for key, value in tags.items():
        client.set_model_version_tag(candidate.name, str(version), key, str(value))
    client.set_registered_model_alias(candidate.name, CANDIDATE, str(version))
    champion_score = current_champion_score(client, candidate)
    promoted = champion_score is None or beats(candidate.score, champion_score, candidate.higher_is_better)
    if promoted:
        client.set_registered_model_alias(candidate.name, CHAMPION, str(version))
    decision = (f"version {version} {candidate.metric}={candidate.score:.4f} vs champion "
                f"{'none' if champion_score is None else f'{champion_score:.4f}'}: "
                f"{'promoted to champion' if promoted else 'champion kept'}")
    client.set_tag(candidate.run_id, "facerestore.registry_decision", decision)
    return Outcome(version, candidate.score, promoted, champion_score, decision)


def log_version(candidate: Candidate) -> tuple[int, str | None]:
    """(the registered version, the URI of the run's mlflow.onnx model or None) of `candidate`."""
    import mlflow

    from components.models.files import ONNX, REGISTERED_FILES, copy_model_dir
    from components.tracking.signature import model_signature

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "model")
        data.mkdir()
        # the training weights too (fine-tuning needs them), and model.onnx where there is one
        copy_model_dir(candidate.model_uri, str(data), REGISTERED_FILES)
        described = model_signature(str(data))
        signature, example = described if described is not None else (None, None)
        with mlflow.start_run(run_id=candidate.run_id):
            info = mlflow.pyfunc.log_model(
                name="model", loader_module=PYFUNC_LOADER, data_path=str(data),
                code_paths=[str(Path(components.__file__).parent)],
                pip_requirements=["torch==2.13.0", "safetensors", "numpy", "pydantic", "kornia"],
                signature=signature, input_example=example, registered_model_name=candidate.name)
            onnx_model_uri = log_onnx(data / ONNX, signature, example) if (data / ONNX).exists() else None
    return int(info.registered_model_version), onnx_model_uri


def log_onnx(path: Path, signature: Any, example: dict | None) -> str:
    """`path` logged as an mlflow.onnx model in the active run, its signature and example cut to
    the graph's inputs; its model URI."""
    import mlflow.onnx
    import onnx

    from components.tracking.signature import restricted

    graph = onnx.load(str(path))
    names = [node.name for node in graph.graph.input]
    info = mlflow.onnx.log_model(
        graph, name=ONNX_MODEL_NAME, signature=restricted(signature, names) if signature is not None else None,
        input_example={name: example[name] for name in names} if example is not None else None)
    return info.model_uri


def current_champion_score(client, candidate: Candidate) -> float | None:
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(candidate.name, CHAMPION)
    except MlflowException:
        return None
    value = champion.tags.get(candidate.metric)
    return None if value is None else float(value)


def beats(score: float, champion: float, higher_is_better: bool) -> bool:
    return score > champion if higher_is_better else score < champion
