"""MLflow runs: experiment set-up, params from nested configs, metrics from any process.

Everything goes through `MlflowClient` with explicit run ids, so a Ray Train worker on
another node can log to the run the driver opened without sharing any global state.

A tracking server in basic-auth mode (`mlflow server --app-name basic-auth`) gets its login
from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, which MLflow's client reads from
the environment of every process (driver and Ray workers); nothing here reads or passes
them, so they cannot reach params, tags or run records.

A server that blinks: `retrying` repeats a call through connection errors and 5xx answers for a
bounded time (never through a 4xx: a refused login or a bad parameter does not heal by waiting),
and `is_transient_tracking_error` tells the two apart. Training's per-step metrics go through
`components.tracking.buffered` instead, so they never wait for the server at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

REFUSALS = ("UNAUTHENTICATED", "PERMISSION_DENIED")  # MLflow's error codes for HTTP 401 / 403
MAX_PARAM_LENGTH = 6000  # MLflow's limit on one param value
BATCH = 100  # MLflow's limit on params per log_batch
# HTTP statuses that say "try again later" (MLflow's own client retries the same ones).
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# MLflow error codes that mean the same when they come without a status (their HTTP status is one of the above).
TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"})

T = TypeVar("T")
_log = logging.getLogger(__name__)


class TrackingRefused(RuntimeError):
    """The tracking server refused the login; the message names the server and the user, never the password."""


class TrackingUnavailable(RuntimeError):
    """`retrying` gave up: the tracking server kept failing with transient errors past its time limit."""


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
    try:
        return client.create_experiment(name, artifact_location=artifact_root)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # another run created it first


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


def is_transient_tracking_error(err: BaseException) -> bool:
    """Whether a tracking call failed in a way that waiting may cure: no connection, a timeout, a 5xx
    or 429 answer, SQLite's "database is locked". Not a 4xx (a refused login, a bad parameter, a run
    that does not exist), and not a programming error.

    MLflow's HTTP client wraps a refused connection as a plain MlflowException (error code
    INTERNAL_ERROR, status 500, the requests error only as its __context__), exactly as it wraps
    many client-side failures, so the cause chain decides, not the code alone."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    for link in causes(err):
        if isinstance(link, TrackingUnavailable):
            return True
        if isinstance(link, requests.exceptions.SSLError):
            return False  # a certificate problem: waiting does not fix it
        if isinstance(link, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                             requests.exceptions.ChunkedEncodingError, ConnectionError, TimeoutError)):
            return True  # RetryError: MLflow's own retries on a 5xx ran out
        if isinstance(link, requests.HTTPError) and link.response is not None:
            return link.response.status_code in TRANSIENT_STATUS
        if isinstance(link, RestException):  # the server answered: its status decides
            return link.get_http_status_code() in TRANSIENT_STATUS
        if isinstance(link, MlflowException):
            if link.error_code in TRANSIENT_CODES:
                return True
            status = link.get_http_status_code()
            if 400 <= status < 500 and status not in TRANSIENT_STATUS:
                return False
        if type(link).__name__ == "OperationalError" and "database is locked" in str(link):
            return True  # a local SQLite store another process is writing to
    return False


def causes(err: BaseException) -> Iterator[BaseException]:
    """`err`, then what it was raised from (or while handling), up the chain; a Ray task error's
    `cause` (the task's own exception) comes first."""
    seen: set[int] = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen and len(seen) < 20:
        seen.add(id(link))
        yield link
        ray_cause = getattr(link, "cause", None)
        link = (ray_cause if isinstance(ray_cause, BaseException) else None) or link.__cause__ or (
            None if link.__suppress_context__ else link.__context__)


def retrying(what: str, call: Callable[[], T], timeout_s: float = 120.0, server: str | None = None) -> T:
    """`call()`, repeated with exponential backoff (0.5 s doubling, at most 15 s apart) while it fails
    with a transient tracking error (`is_transient_tracking_error`), for up to `timeout_s`; then a
    TrackingUnavailable that names `what` and the server. Any other error is raised at once.

    `timeout_s` bounds the waiting between attempts, not one attempt: MLflow's client retries a
    refused connection inside each call (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7 with
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=2 block ~4 min before it raises, measured 247 s), so with
    MLflow's defaults a first attempt may itself outlast `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay, attempts = 0.5, 0
    while True:
        attempts += 1
        try:
            return call()
        except Exception as err:
            if not is_transient_tracking_error(err):
                raise
            left = deadline - time.monotonic()
            where = server or _server_of(err)
            if left <= 0:
                raise TrackingUnavailable(
                    f"could not {what}: the MLflow tracking server at {where} kept failing for {timeout_s:.0f} s "
                    f"({attempts} attempts); last error: {describe_error(err)}") from err
            if attempts == 1:
                _log.warning("could not %s (%s); retrying for up to %.0f s", what, describe_error(err), timeout_s)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 15.0)


def _server_of(err: BaseException) -> str:
    """The server an MLflow HTTP error names ("API request to http://host:port/api/... failed"), else the
    tracking URI of the environment."""
    for link in causes(err):
        found = re.search(r"(https?://[^/\s'\"]+)", str(link))
        if found:
            return found.group(1)
    return os.environ.get("MLFLOW_TRACKING_URI") or "(the configured tracking URI)"


def describe_error(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"
