"""What the runner hands a stage and what a stage hands back (docs/architecture.md, "The stage contract")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from components import storage


class ProgressSink(Protocol):
    def update(self, **fields: Any) -> None: ...


@dataclass(frozen=True)
class Artifact:
    """A finished stage output: a URI holding `manifest.json` plus data."""

    stage: str
    uri: str
    fingerprint: str
    manifest: dict[str, Any]

    def path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    @property
    def kind(self) -> str:
        return self.manifest["artifact"]


@dataclass(frozen=True)
class StageContext:
    pipeline_run_id: str
    stage: str
    fingerprint: str
    output_uri: str
    store_uri: str
    tracking_uri: str
    mlflow_run_id: str
    mlflow_experiment_id: str
    progress: ProgressSink
    forced: bool = False

    def path(self, *parts: str) -> str:
        return storage.join(self.output_uri, *parts)

    def publish(self, files: dict[str, bytes]) -> None:
        """Each file into the stage output and into the stage's MLflow run (report pages, image grids)."""
        import tempfile
        from pathlib import Path

        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                storage.write_bytes_atomic(self.path(name), data)
                Path(tmp, name).write_bytes(data)
                client.log_artifact(self.mlflow_run_id, str(Path(tmp, name)))


@dataclass(frozen=True)
class StageOutput:
    artifact: str  # what the output holds: "shards", "model", "evaluation", "registration"
    count: int  # samples written, steps trained, images scored, versions registered
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able, goes into the manifest
    step: int = 0  # the MLflow step `metrics` belong to: a training stage's last step, so its history ends there
