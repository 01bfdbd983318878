"""Training metrics to MLflow from a background thread, so a tracking server that blinks never stalls training.

MLflow's client retries a refused connection inside the call: with its defaults
(MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=2) one `log_batch` to a
stopped server blocks ~4 min before it raises (measured: 247 s), and a server that drops
packets instead of refusing them costs MLFLOW_HTTP_REQUEST_TIMEOUT (120 s) per try. A training
step cannot wait for that, so rank 0 only puts its metrics in a bounded queue (`put`, never
blocks); a daemon thread sends them in batches, oldest first, and keeps a batch that failed with
a transient error (`is_transient_tracking_error`) to send again once the server answers. Each
metric keeps the step and the timestamp it was logged at, so a late one lands where it belongs.
A full queue drops its oldest metrics and counts them; a 4xx answer drops that batch (resending
cannot fix it) and counts it. At the end, `close` keeps trying for a bounded time and reports
what was sent, what was dropped and how long the server was unreachable.

To an HTTP tracking server a send is one request with no retries of MLflow's own (the thread's
backoff decides when to try again, and notices a server that is back within seconds). It goes
to MLflow's documented REST endpoint through MLflow's own `http_request`, with the credentials
the client itself would use (MLFLOW_TRACKING_USERNAME / PASSWORD / TOKEN from the environment):
`MlflowClient` has no per-call retry setting, and MLflow's variables are process-wide. Any other
tracking URI (a local SQLite or file store) goes through `MlflowClient.log_batch`. Resending a
batch the server did store is harmless: MLflow stores a (key, step, timestamp, value) once.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric

from components.tracking.runs import describe_error, is_transient_tracking_error

_log = logging.getLogger(__name__)

MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch
LOG_BATCH_ENDPOINT = "/api/2.0/mlflow/runs/log-batch"
REQUEST_TIMEOUT_S = 15.0  # one send; a batch of 1000 metrics takes the server milliseconds


def env_number(name: str, default: float, minimum: float) -> float:
    """A numeric setting from the environment of this process (a Ray Train worker reads its own)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def queue_capacity() -> int:
    """FACERESTORE_TRACKING_QUEUE: metric values kept while the server is unreachable (~300 bytes each)."""
    return int(env_number("FACERESTORE_TRACKING_QUEUE", 50_000, 1))


def flush_timeout_s() -> float:
    """FACERESTORE_TRACKING_FLUSH_S: how long the end of training waits for the queue to reach the server."""
    return env_number("FACERESTORE_TRACKING_FLUSH_S", 120.0, 0)


@dataclass(frozen=True)
class SendReport:
    logged: int  # metric values handed to `put`
    sent: int  # confirmed stored by the server
    dropped: int  # never confirmed: queue overflow, a 4xx answer, or still unsent when `close` gave up
    unreachable_s: float  # total time from a failed send to the next successful one
    error: str | None = None  # the last error, when anything was dropped or the server was ever unreachable

    def metrics(self) -> dict[str, float]:
        """What the training stage reports: its manifest metrics and the run record show these."""
        return {"tracking_sent": self.sent, "tracking_dropped": self.dropped,
                "tracking_unreachable_s": round(self.unreachable_s, 1)}


class MetricSender:
    """A bounded queue of metrics and the thread that sends it; `put` from the training loop, `close` once."""

    def __init__(self, send: Callable[[list[Metric]], None], *, where: str = "MLflow",
                 capacity: int = 50_000, batch: int = MAX_BATCH, backoff_s: float = 0.5, max_backoff_s: float = 5.0):
        if capacity < 1 or not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"capacity must be >= 1 and batch in 1..{MAX_BATCH}, got {capacity}, {batch}")
        self._send = send
        self.where = where
        self.capacity, self.batch = capacity, batch
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._queue: collections.deque[Metric] = collections.deque()
        self._inflight: list[Metric] = []  # taken from the queue, sent again until it is stored or dropped
        self._cond = threading.Condition()
        self._closing = self._abandoned = False
        self._logged = self._sent = self._dropped = 0
        self._down_since: float | None = None
        self._unreachable_s = 0.0
        self._error: str | None = None
        self._overflow_warned = False
        self._report: SendReport | None = None
        self._thread = threading.Thread(target=self._run, name="mlflow-metric-sender", daemon=True)
        self._thread.start()

    def put(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Queues one step's metrics, stamped now; never blocks on the server."""
        stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        items = [Metric(key, float(value), stamp, step) for key, value in metrics.items()]
        with self._cond:
            if self._closing:
                raise RuntimeError("put() after close(): the sender has already reported")
            self._queue.extend(items)
            self._logged += len(items)
            over = len(self._queue) - self.capacity
            for _ in range(max(over, 0)):  # the oldest first: the newest say most about where training is
                self._queue.popleft()
                self._dropped += 1
            if over > 0 and not self._overflow_warned:
                self._overflow_warned = True
                self._error = self._error or f"queue full ({self.capacity} metrics): dropped the oldest"
                _log.warning("%s unreachable for long: the metric queue is full (%d), dropping the oldest "
                             "(FACERESTORE_TRACKING_QUEUE sets its size)", self.where, self.capacity)
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._inflight)

    def close(self, timeout_s: float = 120.0, on_wait: Callable[[int, float], None] | None = None,
              wait_every_s: float = 5.0) -> SendReport:
        """Sends what is queued, retrying with backoff for up to `timeout_s`; whatever is still unsent
        then is counted as dropped. `on_wait(pending, unreachable_s)` is called every `wait_every_s`
        while it waits (live progress). Idempotent: a second call returns the same report."""
        with self._cond:
            if self._report is not None:
                return self._report
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._thread.join(min(wait_every_s, left))
            if self._thread.is_alive() and on_wait is not None:
                on_wait(self.pending(), self._unreachable_now())
        with self._cond:
            self._abandoned = True  # a send still under way after this changes nothing in the report
            self._cond.notify_all()
            left_over = len(self._queue) + len(self._inflight)
            if left_over:
                self._error = self._error or "unsent when the flush time ran out"
                _log.warning("%s: %d metrics still unsent after %.0f s, counted as dropped (%s)",
                             self.where, left_over, timeout_s, self._error)
            self._report = SendReport(logged=self._logged, sent=self._sent, dropped=self._dropped + left_over,
                                      unreachable_s=self._unreachable_now(), error=self._error)
            self._queue.clear()
            self._inflight = []
        return self._report

    def _unreachable_now(self) -> float:
        down = self._down_since
        return self._unreachable_s + (time.monotonic() - down if down is not None else 0.0)

    def _run(self) -> None:
        delay = self.backoff_s
        while True:
            with self._cond:
                while not self._queue and not self._inflight and not self._closing:
                    self._cond.wait()
                if self._abandoned:
                    return
                if not self._inflight:
                    if not self._queue:
                        return  # closing, and everything was sent
                    self._inflight = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                batch = self._inflight
            try:
                self._send(batch)
            except Exception as err:  # noqa: BLE001 - nothing a send raises may reach the training loop
                if self._failed(batch, err):
                    with self._cond:  # back off; close() wakes this only to abandon
                        self._cond.wait_for(lambda: self._abandoned, timeout=delay)
                    delay = min(delay * 2, self.max_backoff_s)
                continue
            delay = self.backoff_s
            with self._cond:
                if self._abandoned:
                    return
                self._sent += len(batch)
                self._inflight = []
                if self._down_since is not None:
                    down = time.monotonic() - self._down_since
                    self._unreachable_s += down
                    self._down_since = None
                    _log.warning("%s answers again after %.0f s: sending the %d queued metrics",
                                 self.where, down, len(self._queue))

    def _failed(self, batch: list[Metric], err: Exception) -> bool:
        """Books a failed send; True when the batch is kept to be sent again."""
        transient = is_transient_tracking_error(err)
        with self._cond:
            if self._abandoned:
                return False
            self._error = describe_error(err)
            if transient:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    _log.warning("%s unreachable (%s): training goes on, its metrics are queued and sent "
                                 "when it answers", self.where, self._error)
                return True
            self._dropped += len(batch)
            self._inflight = []
        _log.warning("%s refused %d metrics, dropped (%s)", self.where, len(batch), self._error)
        return False


def run_sender(tracking_uri: str, run_id: str, timeout_s: float = REQUEST_TIMEOUT_S) -> Callable[[list[Metric]], None]:
    """What sends one batch of metrics to `run_id`: one REST request with no MLflow-side retries to an
    HTTP(S) server, `MlflowClient.log_batch` to any other store."""
    if not tracking_uri.startswith(("http://", "https://")):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        return lambda batch: client.log_batch(run_id, metrics=batch)

    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.proto_json_utils import message_to_json
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    def send(batch: list[Metric]) -> None:
        body = json.loads(message_to_json(LogBatch(run_id=run_id, metrics=[m.to_proto() for m in batch])))
        response = http_request(get_default_host_creds(tracking_uri), LOG_BATCH_ENDPOINT, "POST",
                                max_retries=0, timeout=timeout_s, json=body)
        verify_rest_response(response, LOG_BATCH_ENDPOINT)

    return send


def sender_for_run(tracking_uri: str, run_id: str, **options: Any) -> MetricSender:
    """A started sender for one MLflow run, its queue sized by FACERESTORE_TRACKING_QUEUE."""
    return MetricSender(run_sender(tracking_uri, run_id), where=f"MLflow at {tracking_uri}",
                        capacity=options.pop("capacity", None) or queue_capacity(), **options)
