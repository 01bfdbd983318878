"""The pipeline store: where stage outputs, run records and training checkpoints live.

Layout (any pyarrow.fs URI; a local folder by default)::

    <store>/stages/<stage>/<fingerprint>/stage.json     written when the stage starts
    <store>/stages/<stage>/<fingerprint>/manifest.json  written last: the output is complete
    <store>/runs/<pipeline run id>.json                 one record per pipeline run
    <store>/leases/<stage>/<fingerprint>.json           held by the run building that output
    <store>/ray_train/<stage>-<fingerprint>/            Ray Train storage (checkpoints)
    <store>/mlflow.db, <store>/mlartifacts/             the embedded MLflow (local stores only)

The manifest lists every file of the output with its size and sha256, so a plan can tell a
complete output from one a file of which was lost or cut short since (`damage`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from components import storage
from pipelines.context import Artifact
from pipelines.dag import StageRecord

# 2: the manifest lists every file of the output ("files": path -> bytes, sha256).
MANIFEST_SCHEMA_VERSION = 2

# The store's own files in a stage output, not part of what the stage produced.
_STORE_FILES = ("manifest.json", "stage.json")


class Store:
    def __init__(self, uri: str, verify: bool = False):
        self.uri = storage.normalize(uri)
        self.verify = verify  # damage() also reads and hashes every file (`plan --verify`)

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

    def output_files(self, stage: str, fingerprint: str) -> dict[str, int]:
        """What the stage output holds now, from one recursive listing: relative path -> bytes
        (the store's own files and unfinished temporary writes left out)."""
        found = storage.list_files(self.stage_uri(stage, fingerprint))
        return {path: size for path, size in found.items()
                if path not in _STORE_FILES and not storage.is_temporary(path)}

    def damage(self, stage: str, fingerprint: str, verify: bool | None = None) -> list[str]:
        """What is wrong with a complete output's files ([] when whole or when its manifest predates
        the file list). Sizes from one listing; with verify (default: the store's), checksums too."""
        return list(self._damaged(stage, fingerprint, self.verify if verify is None else verify)[0].values())

    def _damaged(self, stage: str, fingerprint: str, verify: bool) -> tuple[dict[str, str], dict[str, int]]:
        """(damaged path -> problem, the listing it was found against)."""
        manifest = self.manifest(stage, fingerprint)
        if manifest is None or "files" not in manifest:
            return {}, {}
        uri = self.stage_uri(stage, fingerprint)
        found = self.output_files(stage, fingerprint)
        checksum = (lambda path: storage.checksum(storage.join(uri, path))[0]) if verify else None
        return damaged_files(manifest_files(manifest, storage.join(uri, "manifest.json")), found, checksum), found

    def prepare_rebuild(self, stage: str, fingerprint: str, verify: bool | None = None) -> list[str]:
        """Before a stage runs at this fingerprint: delete the files its manifest lists that are damaged,
        so the stage writes them again, then the manifest, so a crash midway never looks complete.
        Returns the removed paths, relative to the output.

        Damaged means a wrong size, and with verify a wrong checksum too. By default (None) checksums
        are compared only when every size is right: such an output runs only because it was forced
        (`--only`, `--force`, `--from`), which is how `plan --verify`'s findings get rebuilt."""
        uri = self.stage_uri(stage, fingerprint)
        damaged, found = self._damaged(stage, fingerprint, bool(verify))
        if verify is None and not damaged:
            damaged, found = self._damaged(stage, fingerprint, True)
        removed = [path for path in damaged if path in found]
        # Damaged files first: a crash before the manifest goes still leaves it naming them.
        for path in removed:
            storage.remove_file(storage.join(uri, path))
        if storage.exists(storage.join(uri, "manifest.json")):
            storage.remove_file(storage.join(uri, "manifest.json"))
            removed.append("manifest.json")
        return removed

    def finish(self, stage: str, fingerprint: str, manifest: dict[str, Any]) -> Artifact:
        uri = self.stage_uri(stage, fingerprint)
        files = {}
        for path in sorted(self.output_files(stage, fingerprint)):
            sha256, size = storage.checksum(storage.join(uri, path))  # size as hashed, so both agree
            files[path] = {"bytes": size, "sha256": sha256}
        manifest = {**manifest, "schema_version": MANIFEST_SCHEMA_VERSION, "complete": True,
                    "finished_at": time.time(), "files": files}
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


def manifest_files(manifest: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """The manifest's `files` map, checked: path -> {"bytes": int, "sha256": str}."""
    files = manifest["files"]
    if not isinstance(files, dict):
        raise ValueError(f"{where}: 'files' must map paths to {{bytes, sha256}}, found {type(files).__name__}")
    for path, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int):
            raise ValueError(f"{where}: files[{path!r}] must hold an integer 'bytes', found {entry!r}")
    return files


def damaged_files(expected: dict[str, dict[str, Any]], found: dict[str, int],
                  checksum: Callable[[str], str] | None = None) -> dict[str, str]:
    """Each file the manifest lists that is missing or differs from it (path -> problem), in path order.

    `found` is one listing of the output (path -> bytes); `checksum(path)` (given only by a verify)
    reads a file's sha256, asked only of files whose size is right. Files the manifest does not list
    are no damage: the output's readers go by the manifest."""
    problems: dict[str, str] = {}
    for path in sorted(expected):
        want = expected[path]
        if path not in found:
            problems[path] = f"{path} missing"
        elif found[path] != want["bytes"]:
            problems[path] = f"{path} has {found[path]} bytes, the manifest says {want['bytes']}"
        elif checksum is not None and want.get("sha256") and checksum(path) != want["sha256"]:
            problems[path] = f"{path} checksum differs"
    return problems
