"""The tiny demo with its store on S3 and MLflow on a tracking server in basic-auth mode.

S3 is moto's server mode, a real S3-protocol endpoint on 127.0.0.1 named by AWS_ENDPOINT_URL,
as a MinIO would be. MLflow is a real `mlflow server --app-name basic-auth` with a SQLite backend
and proxied artifacts (`--serve-artifacts`, artifacts in a local folder of the server): the
store is not local, so the embedded SQLite MLflow is not an option, and the pipeline's artifacts
go through the server. Both servers are subprocesses in sessions of their own on free ports,
stopped through those sessions.

The pipeline runs as a user runs it: `facerestore run` in a subprocess whose environment holds
the S3 endpoint and keys, MLFLOW_TRACKING_URI and the login. With no RAY_ADDRESS it starts its
own local Ray, whose workers inherit that environment as a cluster's pods get theirs.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from components import storage
from pipelines.config import load_config
from pipelines.runner import plan
from pipelines.store import Store
from tests.integration.ray_head import ROOT, clean_env
from tests.integration.servers import ADMIN, Server, s3_server, tracking_server
from tests.integration.tiny import write_tiny_config

pytestmark = pytest.mark.integration

BUCKET = "facerestore"
STAGES = ("synthesize", "train_baseline", "evaluate", "register")


@dataclass
class Setup:
    s3: Server
    tracking: Server
    server_dir: Path
    password: str
    env: dict[str, str]  # what the user's shell holds: S3 endpoint + keys, tracking URI + login
    config: Path
    store: Store
    run_id: str
    output: str


def facerestore(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env={**env, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def remote(tmp_path_factory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("remote")
    password = secrets.token_urlsafe(18)  # the server wants at least 12 characters
    with s3_server(directory) as s3, tracking_server(directory, password) as tracking, pytest.MonkeyPatch.context() as mp:
        settings = {"AWS_ENDPOINT_URL": s3.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": tracking.url,
                    "MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": password}
        for name, value in settings.items():  # this process reads the bucket and the server as the user does
            mp.setenv(name, value)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        config = write_tiny_config(directory, steps=20)
        raw = yaml.safe_load(config.read_text())
        raw["store"] = f"s3://{BUCKET}/pipeline"
        config.write_text(yaml.safe_dump(raw))
        env = clean_env(**settings)
        run_id = f"s3-{secrets.token_hex(4)}"
        done = facerestore(env, "run", str(config), "--run-id", run_id)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        yield Setup(s3, tracking, directory, password, env, config, Store(raw["store"]), run_id, done.stdout + done.stderr)


def fingerprints(setup: Setup) -> dict[str, str]:
    return {e.stage.name: e.fingerprint for e in plan(load_config(setup.config))}


def bucket_keys(prefix: str = "") -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def bucket_object(key: str) -> bytes:
    import boto3

    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_demo_on_an_s3_store_keeps_shards_checkpoints_manifests_run_record_and_model_in_the_bucket(remote):
    import torch

    from components.data.shards import list_shards, read_shards
    from components.models.files import load_model_dir

    record = remote.store.load_run(remote.run_id)
    assert record["state"] == "finished" and record["store"] == f"s3://{BUCKET}/pipeline"
    assert [record["stages"][s]["state"] for s in STAGES] == ["finished"] * 4
    prints = fingerprints(remote)
    for stage in STAGES:
        assert remote.store.is_complete(stage, prints[stage]), stage
    synthesized = remote.store.artifact("synthesize", prints["synthesize"])
    shards = list_shards(synthesized.path("shards"))
    assert len(shards) == 4 and all(uri.startswith(f"s3://{BUCKET}/pipeline/stages/synthesize/") for uri in shards)
    assert read_shards(shards, columns=["id"]).num_rows == 320
    keys = bucket_keys("pipeline/ray_train/")
    assert any(re.fullmatch(rf"pipeline/ray_train/train_baseline-{prints['train_baseline']}/checkpoint_[^/]+/checkpoint\.pt", k)
               for k in keys), keys
    model = load_model_dir(remote.store.artifact("train_baseline", prints["train_baseline"]).uri)
    restored = model.restore({"lq": torch.rand(2, 3, 32, 32), "mask": torch.zeros(2, 1, 32, 32)})
    assert restored.shape == (2, 3, 32, 32)
    assert f"pipeline/runs/{remote.run_id}.json" in bucket_keys("pipeline/runs/")


def test_rerun_against_the_s3_store_finds_every_stage_cached(remote):
    again = facerestore(remote.env, "run", str(remote.config))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "every stage is cached: nothing ran" in again.stdout
    latest = remote.store.list_runs()[0]
    assert latest["run_id"] != remote.run_id and {s["state"] for s in latest["stages"].values()} == {"cached"}


def test_runs_metrics_proxied_artifacts_and_registry_live_on_the_tracking_server(remote, tmp_path):
    from mlflow.tracking import MlflowClient

    record = remote.store.load_run(remote.run_id)
    assert record["tracking_uri"] == remote.tracking.url
    client = MlflowClient(remote.tracking.url)
    parent = client.get_run(record["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.info.artifact_uri.startswith("mlflow-artifacts:/")
    children = {r.data.tags["facerestore.stage"]: r for r in client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert set(children) == set(STAGES)
    # Logged by rank 0 of the Ray Train workers, which reach the server with the login from their environment.
    assert {m.step for m in client.get_metric_history(children["train_baseline"].info.run_id, "loss")} == {5, 10, 15, 20}
    assert {"manifest.json", "grid_restoration.png"} <= {a.path for a in client.list_artifacts(children["evaluate"].info.run_id)}
    assert list((remote.server_dir / "artifacts").rglob("grid_restoration.png")), "the server did not store the artifact"
    assert str(client.get_model_version_by_alias("facerestore-baseline", "champion").version) == "1"

    pulled = facerestore(remote.env, "pull", "facerestore-baseline@champion", "--out", str(tmp_path / "model"))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    trained = remote.store.artifact("train_baseline", fingerprints(remote)["train_baseline"])
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == storage.read_bytes(trained.path("model.safetensors"))


def test_tracking_password_is_in_no_param_tag_run_record_manifest_or_artifact(remote):
    from mlflow.tracking import MlflowClient

    secret = remote.password.encode()
    leaks = [key for key in bucket_keys() if secret in bucket_object(key)]
    leaks += [str(p) for p in (remote.server_dir / "artifacts").rglob("*") if p.is_file() and secret in p.read_bytes()]
    if secret in (remote.server_dir / "mlflow.db").read_bytes():  # every param, tag and metric the server holds
        leaks.append("mlflow.db")
    assert not leaks
    client = MlflowClient(remote.tracking.url)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    assert len(runs) >= 5  # the parent and its four stages
    for run in runs:
        assert not [k for k, v in {**run.data.params, **run.data.tags}.items() if remote.password in v], run.info.run_id
    for version in client.search_model_versions("name = 'facerestore-baseline'"):
        assert all(remote.password not in v for v in client.get_model_version(version.name, version.version).tags.values())
    assert remote.password not in remote.output


def test_a_wrong_tracking_password_fails_before_any_work_naming_the_server_and_the_variables(remote):
    wrong = secrets.token_urlsafe(18)
    refused = facerestore({**remote.env, "MLFLOW_TRACKING_PASSWORD": wrong}, "run", str(remote.config),
                          "--set", f"store=s3://{BUCKET}/wrong-login", timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join(refused.stdout.split())  # the console wraps long lines
    assert f"the MLflow tracking server at {remote.tracking.url} refused user '{ADMIN}'" in message
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in message
    assert wrong not in refused.stdout + refused.stderr
    assert bucket_keys("wrong-login/") == []  # no run record, no stage output: nothing started
