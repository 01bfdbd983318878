"""The pipeline store: where stage outputs, run records and training checkpoints live.

Layout (any pyarrow.fs URI; a local folder by default)::

    <store>/stages/<stage>/<fingerprint>/stage.json     written when the stage starts
    <store>/stages/<stage>/<fingerprint>/manifest.json  written last: the output is complete
    <store>/runs/<pipeline run id>.json                 one record per pipeline run
    <store>/ray_train/<stage>-<fingerprint>/            Ray Train storage (checkpoints)
    <store>/mlflow.db, <store>/mlartifacts/             the embedded MLflow (local stores only)
"""

from __future__ import annotations

import time
from typing import Any

from components import storage
from pipelines.context import Artifact
from pipelines.dag import StageRecord

MANIFEST_SCHEMA_VERSION = 1


class Store:
    def __init__(self, uri: str):
        self.uri = storage.normalize(uri)

    def stage_uri(self, stage: str, fingerprint: str) -> str:
        return storage.join(self.uri, "stages", stage, fingerprint)

    def manifest(self, stage: str, fingerprint: str) -> dict[str, Any] | None:
        uri = storage.join(self.stage_uri(stage, fingerprint), "manifest.json")
        if not storage.exists(uri):
            return None
        manifest = storage.read_json(uri)
        return manifest if manifest.get("complete") else None

    def is_complete(self, stage: str, fingerprint: str) -> bool:
        return self.manifest(stage, fingerprint) is not None

    def latest(self, stage: str) -> StageRecord | None:
        """The most recently started output of `stage`, whatever its fingerprint."""
        newest: dict[str, Any] | None = None
        for entry in storage.list_dir(storage.join(self.uri, "stages", stage)):
            uri = storage.join(entry.uri, "stage.json")
            if not entry.is_dir or not storage.exists(uri):
                continue
            record = storage.read_json(uri)
            if newest is None or record["started_at"] > newest["started_at"]:
                newest = record
        if newest is None:
            return None
        return StageRecord(newest["fingerprint"], newest["config"], newest["upstream"], newest["code_version"])

    def begin(self, stage: str, record: dict[str, Any]) -> None:
        uri = self.stage_uri(stage, record["fingerprint"])
        storage.write_json_atomic(storage.join(uri, "stage.json"), {**record, "started_at": time.time()})

    def invalidate(self, stage: str, fingerprint: str) -> None:
        """A forced rerun first removes the manifest, so a crash midway never looks complete."""
        storage.remove_file(storage.join(self.stage_uri(stage, fingerprint), "manifest.json"))

    def finish(self, stage: str, fingerprint: str, manifest: dict[str, Any]) -> Artifact:
        manifest = {**manifest, "schema_version": MANIFEST_SCHEMA_VERSION, "complete": True,
                    "finished_at": time.time()}
        storage.write_json_atomic(storage.join(self.stage_uri(stage, fingerprint), "manifest.json"), manifest)
        return Artifact(stage, self.stage_uri(stage, fingerprint), fingerprint, manifest)

    def artifact(self, stage: str, fingerprint: str) -> Artifact:
        manifest = self.manifest(stage, fingerprint)
        if manifest is None:
            raise FileNotFoundError(f"stage '{stage}' has no complete output at {self.stage_uri(stage, fingerprint)}")
        return Artifact(stage, self.stage_uri(stage, fingerprint), fingerprint, manifest)

    def train_storage(self) -> str:
        return storage.join(self.uri, "ray_train")

    def run_uri(self, run_id: str) -> str:
        return storage.join(self.uri, "runs", f"{run_id}.json")

    def save_run(self, record: dict[str, Any]) -> None:
        # Unsorted: the stages keep the plan's order, which `status` and `report` show.
        storage.write_json_atomic(self.run_uri(record["run_id"]), record, sort_keys=False)

    def load_run(self, run_id: str) -> dict[str, Any]:
        uri = self.run_uri(run_id)
        if not storage.exists(uri):
            known = [r["run_id"] for r in self.list_runs()][:5]
            raise FileNotFoundError(f"no pipeline run '{run_id}' in store {self.uri} (recent: {', '.join(known) or 'none'})")
        return storage.read_json(uri)

    def list_runs(self) -> list[dict[str, Any]]:
        runs = [storage.read_json(entry.uri) for entry in storage.list_dir(storage.join(self.uri, "runs"))
                if entry.name.endswith(".json") and not entry.name.startswith(".")]
        return sorted(runs, key=lambda r: r["started_at"], reverse=True)

    def default_tracking_uri(self) -> str:
        if not storage.is_local(self.uri):
            raise ValueError(f"store {self.uri} is not local: set MLFLOW_TRACKING_URI or tracking.uri to a tracking server")
        return f"sqlite:///{self.uri}/mlflow.db"

    def default_artifact_root(self) -> str:
        return storage.join(self.uri, "mlartifacts")
