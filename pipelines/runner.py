"""Executes a plan: Ray, one MLflow parent run, one nested child run per stage, a run record.

The order of a stage's writes is what makes crashes harmless: `stage.json` first (so the
plan can tell an interrupted output from a missing one), the data, `manifest.json` last.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from components import storage
from pipelines.config import PipelineConfig, resolved_config, resolved_section
from pipelines.context import Artifact, StageContext, StageOutput
from pipelines.dag import Pipeline, PlanEntry, Selection, Stage, State
from pipelines.stages import stage_module
from pipelines.store import Store


class StageFailed(RuntimeError):
    def __init__(self, stage: str, run_id: str, cause: BaseException):
        super().__init__(f"stage '{stage}' failed in pipeline run {run_id}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.run_id = run_id


def build_pipeline(cfg: PipelineConfig) -> Pipeline:
    return Pipeline(
        Stage(name, section.kind, section.needs, resolved_section(section), stage_module(section.kind).CODE_VERSION)
        for name, section in cfg.stages.items()
    )


def plan(cfg: PipelineConfig, selection: Selection = Selection()) -> list[PlanEntry]:
    return build_pipeline(cfg).plan(Store(cfg.store), selection)


def tracking_uri(cfg: PipelineConfig, store: Store) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri or store.default_tracking_uri()
    if storage.has_password(uri):  # it would be recorded in the run record; the message must not echo it
        raise ValueError("the tracking URI (MLFLOW_TRACKING_URI or tracking.uri) carries a password: give the "
                         "login as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead")
    return uri


def connect_ray(cfg: PipelineConfig, address: str | None = None) -> None:
    """Join the cluster named by --address / RAY_ADDRESS / the config, else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    quiet: dict[str, Any] = {"log_to_driver": os.environ.get("FACERESTORE_RAY_LOGS") == "1", "include_dashboard": False}
    if address and address.startswith(("http://", "https://")):
        raise ValueError(f"{address} is a Ray Jobs (dashboard) address: send the run there with "
                         f"`facerestore submit CONFIG --address {address}`; `run` joins a cluster by its "
                         "GCS address (HEAD:6379) or `auto`")
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, **quiet)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    if not quiet["log_to_driver"]:
        # A training stage reads a small split once on the driver (components/data/ray_dataset.py);
        # Ray Data's INFO lines about that read would break into the live view.
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass
class Runner:
    cfg: PipelineConfig
    selection: Selection = Selection()
    address: str | None = None
    console: Console | None = None
    run_id: str | None = None  # given by `facerestore submit`, which prints it before the job starts

    def run(self) -> dict[str, Any]:
        from pipelines.display import LiveView

        pipeline = build_pipeline(self.cfg)
        store = Store(self.cfg.store)
        entries = pipeline.plan(store, self.selection)
        if any(e.will_run for e in entries):
            from components.tracking.runs import check_login

            check_login(tracking_uri(self.cfg, store))  # a refused login fails here, before any record or work
        record = self._new_record(store, entries)
        store.save_run(record)
        if not any(e.will_run for e in entries):
            record.update(state="finished", finished_at=time.time())
            store.save_run(record)
            return record
        connect_ray(self.cfg, self.address)
        board = _progress_board()
        view = LiveView(self.console or Console(), record, board)
        with view:
            self._run_stages(store, entries, record, board)
        return record

    def _new_record(self, store: Store, entries: list[PlanEntry]) -> dict[str, Any]:
        return {
            "run_id": self.run_id or new_run_id(),
            "config_name": self.cfg.name,
            "config": resolved_config(self.cfg),
            "store": store.uri,
            "started_at": time.time(),
            "state": "running",
            "selection": {"only": self.selection.only, "from": self.selection.start, "force": list(self.selection.force)},
            "stages": {
                e.stage.name: {
                    "state": "pending" if e.will_run else ("cached" if e.state is State.CACHED else "skipped"),
                    "fingerprint": e.fingerprint,
                    "planned": e.state.value,
                    "reasons": list(e.reasons),
                    **_cached_metrics(store, e),
                }
                for e in entries
            },
        }


    def _run_stages(self, store: Store, entries: list[PlanEntry], record: dict[str, Any], board: Any) -> None:
        from mlflow.tracking import MlflowClient

        from components.tracking.runs import ensure_experiment, log_params

        uri = tracking_uri(self.cfg, store)
        client = MlflowClient(uri)
        artifact_root = store.default_artifact_root() if uri.startswith("sqlite:") else None
        experiment_id = ensure_experiment(client, self.cfg.tracking.experiment, artifact_root)
        parent = client.create_run(experiment_id, run_name=f"{self.cfg.name}-{record['run_id']}",
                                   tags={"facerestore.pipeline_run": record["run_id"], "facerestore.config": self.cfg.name})
        log_params(client, parent.info.run_id, record["config"])
        record.update(mlflow_run_id=parent.info.run_id, tracking_uri=uri)
        store.save_run(record)
        prints = {e.stage.name: e.fingerprint for e in entries}
        try:
            for entry in entries:
                if entry.will_run:
                    self._run_stage(store, entry, prints, record, client, experiment_id, board)
        except BaseException as err:
            record.update(state="failed" if isinstance(err, Exception) else "interrupted", finished_at=time.time())
            store.save_run(record)
            client.set_terminated(parent.info.run_id, status="FAILED" if isinstance(err, Exception) else "KILLED")
            raise
        record.update(state="finished", finished_at=time.time())
        store.save_run(record)
        client.set_terminated(parent.info.run_id, status="FINISHED")

    def _run_stage(self, store: Store, entry: PlanEntry, prints: dict[str, str], record: dict[str, Any],
                   client: Any, experiment_id: str, board: Any) -> None:
        from components.progress import StageProgress
        from components.tracking.runs import log_metrics, log_params

        stage = entry.stage
        info = record["stages"][stage.name]
        inputs: dict[str, Artifact] = {need: store.artifact(need, prints[need]) for need in stage.needs}
        child = client.create_run(experiment_id, run_name=stage.name, tags={
            "mlflow.parentRunId": record["mlflow_run_id"], "facerestore.pipeline_run": record["run_id"],
            "facerestore.stage": stage.name, "facerestore.fingerprint": entry.fingerprint})
        child_id = child.info.run_id
        log_params(client, child_id, {"kind": stage.kind, **stage.config})
        forced = entry.state is State.CACHED
        if forced:
            store.invalidate(stage.name, entry.fingerprint)
        store.begin(stage.name, {"fingerprint": entry.fingerprint, "config": stage.config, "kind": stage.kind,
                                 "upstream": {n: prints[n] for n in stage.needs}, "code_version": stage.code_version,
                                 "pipeline_run_id": record["run_id"]})
        ctx = StageContext(
            pipeline_run_id=record["run_id"], stage=stage.name, fingerprint=entry.fingerprint,
            output_uri=store.stage_uri(stage.name, entry.fingerprint), store_uri=store.uri,
            tracking_uri=record["tracking_uri"],
            mlflow_run_id=child_id, mlflow_experiment_id=experiment_id,
            progress=StageProgress(board, stage.name), forced=forced)
        info.update(state="running", started_at=time.time(), mlflow_run_id=child_id)
        store.save_run(record)
        try:
            output: StageOutput = stage_module(stage.kind).run(ctx, cfg_of(self.cfg, stage.name), inputs)
        except BaseException as err:
            info.update(state="failed", finished_at=time.time(), error=f"{type(err).__name__}: {err}",
                        traceback=traceback.format_exc()[-4000:])
            store.save_run(record)
            client.set_terminated(child_id, status="FAILED" if isinstance(err, Exception) else "KILLED")
            if isinstance(err, Exception):
                raise StageFailed(stage.name, record["run_id"], err) from err
            raise
        artifact = store.finish(stage.name, entry.fingerprint, {
            "stage": stage.name, "kind": stage.kind, "fingerprint": entry.fingerprint,
            "code_version": stage.code_version, "config": stage.config,
            "upstream": {n: prints[n] for n in stage.needs}, "artifact": output.artifact, "count": output.count,
            "metrics": output.metrics, "details": output.details,
            "pipeline_run_id": record["run_id"], "mlflow_run_id": child_id})
        if output.metrics:
            log_metrics(client, child_id, output.metrics, step=output.step)
        _log_manifest(client, child_id, artifact)
        client.set_terminated(child_id, status="FINISHED")
        info.update(state="finished", finished_at=time.time(), metrics=output.metrics, count=output.count)
        info["duration_s"] = round(info["finished_at"] - info["started_at"], 2)
        store.save_run(record)


def _cached_metrics(store: Store, entry: PlanEntry) -> dict[str, Any]:
    """A cached stage's metrics, from its manifest, so a cached run's summary still shows them."""
    if entry.will_run or entry.state is not State.CACHED:
        return {}
    manifest = store.manifest(entry.stage.name, entry.fingerprint) or {}
    return {"metrics": manifest.get("metrics", {}), "mlflow_run_id": manifest.get("mlflow_run_id")}


def cfg_of(cfg: PipelineConfig, stage: str) -> Any:
    return cfg.stages[stage].config


def _progress_board() -> Any:
    from components.progress import ProgressBoard

    return ProgressBoard.remote()


def _log_manifest(client: Any, run_id: str, artifact: Artifact) -> None:
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "manifest.json")
        path.write_text(json.dumps(artifact.manifest, indent=2, sort_keys=True, default=str))
        client.log_artifact(run_id, str(path))
