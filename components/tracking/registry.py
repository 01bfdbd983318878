"""The MLflow model registry: log a model version, set `candidate`, move `champion` on merit."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import components

PYFUNC_LOADER = "components.tracking.pyfunc_model"
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

    from components.tracking.runs import global_tracking_uri

    client = MlflowClient(candidate.tracking_uri)
    with global_tracking_uri(candidate.tracking_uri):
        version = log_version(candidate)
    for key, value in {**candidate.tags, candidate.metric: str(candidate.score), "metric": candidate.metric}.items():
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


def log_version(candidate: Candidate) -> int:
    import mlflow

    from components import storage
    from components.models.files import files_to_copy

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "model")
        data.mkdir()
        for name in files_to_copy(candidate.model_uri):  # the training weights too: fine-tuning needs them
            (data / name).write_bytes(storage.read_bytes(storage.join(candidate.model_uri, name)))
        with mlflow.start_run(run_id=candidate.run_id):
            info = mlflow.pyfunc.log_model(
                name="model", loader_module=PYFUNC_LOADER, data_path=str(data),
                code_paths=[str(Path(components.__file__).parent)],
                pip_requirements=["torch==2.13.0", "safetensors", "numpy", "pydantic", "kornia"],
                registered_model_name=candidate.name)
    return int(info.registered_model_version)


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
