"""MLflow runs: experiment set-up, params from nested configs, metrics from any process.

Everything goes through `MlflowClient` with explicit run ids, so a Ray Train worker on
another node can log to the run the driver opened without sharing any global state.

A tracking server in basic-auth mode (`mlflow server --app-name basic-auth`) gets its login
from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, which MLflow's client reads from
the environment of every process (driver and Ray workers); nothing here reads or passes
them, so they cannot reach params, tags or run records.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

REFUSALS = ("UNAUTHENTICATED", "PERMISSION_DENIED")  # MLflow's error codes for HTTP 401 / 403
MAX_PARAM_LENGTH = 6000  # MLflow's limit on one param value
BATCH = 100  # MLflow's limit on params per log_batch


class TrackingRefused(RuntimeError):
    """The tracking server refused the login; the message names the server and the user, never the password."""


def check_login(uri: str) -> None:
    """One cheap request to a tracking server, so a refused login fails the run before any work starts."""
    if not uri.startswith(("http://", "https://")):
        return  # a local SQLite or file store has no login
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as err:
        if err.error_code not in REFUSALS:
            raise
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        who = f"user '{user}'" if user else "an anonymous request (MLFLOW_TRACKING_USERNAME is not set)"
        raise TrackingRefused(f"the MLflow tracking server at {uri} refused {who} ({err.error_code}): set "
                              "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server"
                              ) from None


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def log_params(client: MlflowClient, run_id: str, config: Mapping[str, Any]) -> None:
    params = [Param(k, v) for k, v in sorted(flatten(config).items())]
    for start in range(0, len(params), BATCH):
        client.log_batch(run_id, params=params[start:start + BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to `uri` for the calls that only read it
    (`mlflow.pyfunc.log_model`, `mlflow.artifacts.download_artifacts`), then put back.

    `mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI into os.environ (MLflow 3), which
    the runner reads first: left set, the next pipeline run in the same process would log to
    this store's tracking database.
    """
    import mlflow

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri() if previous_env else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if previous_env is None:
            mlflow.set_tracking_uri("")  # unset: MLflow falls back to its default
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            mlflow.set_tracking_uri(previous)
            os.environ["MLFLOW_TRACKING_URI"] = previous_env
