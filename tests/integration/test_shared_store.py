"""Two runs sharing one store on the S3-protocol server: a stage output is built once, under a lease.

moto's server is the S3 endpoint (it honours `If-None-Match: *` and `If-Match`, the conditional
writes the leases use) and a real `mlflow server` tracks the runs. The runs are `facerestore run`
subprocesses, each with a local Ray of its own: what they share is the store, as two people's
runs on two clusters writing to one bucket would.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config
from pipelines.runner import plan
from pipelines.store import Store
from tests.integration.ray_head import ROOT, clean_env
from tests.integration.servers import ADMIN, s3_server, tracking_server
from tests.integration.tiny import write_tiny_config

pytestmark = pytest.mark.integration

BUCKET = "shared-store"


@dataclass
class Shared:
    env: dict[str, str]
    directory: Path


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Iterator[Shared]:
    directory = tmp_path_factory.mktemp("shared")
    password = secrets.token_urlsafe(18)
    with s3_server(directory) as s3, tracking_server(directory, password) as tracking, pytest.MonkeyPatch.context() as mp:
        settings = {"AWS_ENDPOINT_URL": s3.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": tracking.url,
                    "MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": password}
        for name, value in settings.items():  # this process reads the bucket as the runs do
            mp.setenv(name, value)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        # No RAY_ADDRESS: each run starts its own local Ray, whose workers inherit the S3 settings
        # (the session's Ray was started without them). The store is what the runs share.
        yield Shared(clean_env(**settings), directory)


def config_on_s3(shared: Shared, name: str, steps: int = 20, stages: tuple[str, ...] = ("synthesize", "train_baseline")) -> Path:
    directory = shared.directory / name
    directory.mkdir()
    path = write_tiny_config(directory, steps=steps, workers=1)
    raw = yaml.safe_load(path.read_text())
    raw["store"] = f"s3://{BUCKET}/{name}"
    raw["stages"] = {stage: raw["stages"][stage] for stage in stages}
    raw["execution"] = {"lease_ttl_s": 20}
    path.write_text(yaml.safe_dump(raw))
    return path


def start_run(shared: Shared, config: Path, run_id: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(config), "--run-id", run_id], cwd=ROOT,
                            env={**shared.env, "COLUMNS": "200"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-4000:]
    return out


def test_two_runs_started_together_build_each_stage_once_and_the_second_uses_it_as_cached(shared):
    config = config_on_s3(shared, "together")
    first, second = start_run(shared, config, "run-one"), start_run(shared, config, "run-two")
    finish(first), finish(second)
    store = Store(load_config(config).store)
    records = {run_id: store.load_run(run_id) for run_id in ("run-one", "run-two")}
    for entry in plan(load_config(config)):
        name = entry.stage.name
        builder = store.manifest(name, entry.fingerprint)["pipeline_run_id"]
        other = records["run-two" if builder == "run-one" else "run-one"]["stages"][name]
        assert records[builder]["stages"][name]["state"] == "finished", name
        assert other["state"] == "cached" and other["reasons"] == [f"built by pipeline run {builder} while this run waited"]
    # Built once: one Ray Train run, whose checkpoints only the builder wrote.
    assert {records[r]["stages"]["train_baseline"]["state"] for r in records} == {"finished", "cached"}
