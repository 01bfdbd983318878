import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException, RestException

from components.tracking.buffered import MetricSender, SendReport, run_sender, sender_for_run
from components.tracking.runs import TrackingUnavailable, global_tracking_uri, is_transient_tracking_error, retrying
from tests.integration.ray_head import free_ports


def test_the_global_tracking_uri_is_put_back_so_a_later_run_in_the_process_is_not_redirected(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with global_tracking_uri("sqlite:////tmp/one-store/mlflow.db"):
        assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////tmp/one-store/mlflow.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    with global_tracking_uri("sqlite:////tmp/other/mlflow.db"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"


# --- errors as MLflow's client raises them -------------------------------------------------------

def refused() -> MlflowException:
    """What MLflow's HTTP client raises on a refused connection: a plain MlflowException (INTERNAL_ERROR),
    raised while handling the requests error."""
    try:
        try:
            raise requests.ConnectionError("[Errno 111] Connection refused")
        except Exception as e:  # noqa: BLE001 - the shape of mlflow.utils.rest_utils.http_request
            raise MlflowException(f"API request to http://10.0.0.7:5000/api/2.0/mlflow/runs/log-batch failed with exception {e}")
    except MlflowException as err:
        return err


def test_a_refused_connection_from_the_real_client_is_transient(monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # else MLflow retries for ~4 min first
    (port,) = free_ports(1)
    with pytest.raises(MlflowException) as raised:
        MlflowClient(f"http://127.0.0.1:{port}").log_batch("run", metrics=[Metric("loss", 1.0, 0, 1)])
    assert is_transient_tracking_error(raised.value)


@pytest.mark.parametrize("err, transient", [
    (refused(), True),
    (requests.ConnectionError("reset"), True),
    (requests.Timeout("read timed out"), True),
    (ConnectionResetError(104, "Connection reset by peer"), True),
    (RestException({"error_code": "INTERNAL_ERROR", "message": "db gone"}), True),
    (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "restarting"}), True),
    (RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}), True),
    (RestException({"error_code": "UNAUTHENTICATED", "message": "bad login"}), False),
    (RestException({"error_code": "PERMISSION_DENIED", "message": "no"}), False),
    (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad metric"}), False),
    (RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such run"}), False),
    (MlflowException.invalid_parameter_value("a client-side check"), False),
    (MlflowException("a client-side failure with no network error behind it"), False),
    (requests.exceptions.SSLError("certificate verify failed"), False),
    (ValueError("a bug"), False),
])
def test_transient_errors_are_told_from_permanent_ones(err, transient):
    assert is_transient_tracking_error(err) is transient


def test_an_error_raised_from_a_connection_error_is_transient_through_its_cause():
    wrapped = RuntimeError("Ray Train worker failed")
    wrapped.__cause__ = refused()
    assert is_transient_tracking_error(wrapped)


# --- retrying -------------------------------------------------------------------------------------

class Flaky:
    """Fails with `error` the first `failures` calls, then returns "done"."""

    def __init__(self, failures: int, error: BaseException):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def test_retrying_gets_through_transient_failures():
    call = Flaky(2, refused())
    assert retrying("log the manifest", call, timeout_s=60) == "done"
    assert call.calls == 3


def test_retrying_raises_a_permanent_error_at_once():
    call = Flaky(5, RestException({"error_code": "UNAUTHENTICATED", "message": "bad login"}))
    with pytest.raises(RestException, match="bad login"):
        retrying("create the run", call, timeout_s=60)
    assert call.calls == 1


def test_retrying_gives_up_after_its_time_naming_what_and_the_server():
    call = Flaky(10**6, refused())
    with pytest.raises(TrackingUnavailable) as raised:
        retrying("end the MLflow run of stage 'train_baseline'", call, timeout_s=0.3)
    message = str(raised.value)
    assert "could not end the MLflow run of stage 'train_baseline'" in message
    assert "http://10.0.0.7:5000" in message and "Connection refused" in message
    assert call.calls >= 2 and is_transient_tracking_error(raised.value)


def test_retrying_names_the_server_it_is_given():
    with pytest.raises(TrackingUnavailable, match="at http://mlflow.example:5000 kept failing"):
        retrying("log", Flaky(10**6, ConnectionError("reset")), timeout_s=0.1, server="http://mlflow.example:5000")


# --- the background sender ------------------------------------------------------------------------

class FakeServer:
    """A send function: fails with `error` the first `failures` calls, optionally holds each call until
    released, and records every batch it stored."""

    def __init__(self, failures: int = 0, error: BaseException | None = None, hold: bool = False):
        self.failures, self.error = failures, error or refused()
        self.calls = 0
        self.stored: list[Metric] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, batch: list[Metric]) -> None:
        self.calls += 1
        self.entered.set()
        self.release.wait()
        if self.calls <= self.failures:
            raise self.error
        self.stored.extend(batch)


def fast_sender(server: FakeServer, **options) -> MetricSender:
    return MetricSender(server, backoff_s=0.01, max_backoff_s=0.05, **options)


def test_metrics_queued_while_the_server_fails_arrive_in_order_with_their_steps_and_timestamps():
    server = FakeServer(failures=5, hold=True)
    sender = fast_sender(server, batch=3)
    sender.put({"loss": 1.0, "l1": 2.0}, 1, timestamp_ms=1001)
    assert server.entered.wait(10)  # step 1's two metrics are the first batch
    for step in range(2, 11):
        sender.put({"loss": 1.0 / step, "l1": 2.0 / step}, step, timestamp_ms=1000 + step)
    server.release.set()
    report = sender.close(timeout_s=30)
    assert [(m.key, m.step, m.timestamp, m.value) for m in server.stored] == [
        (key, step, 1000 + step, scale / step) for step in range(1, 11) for key, scale in (("loss", 1.0), ("l1", 2.0))]
    assert server.calls == 5 + 1 + 6  # the first batch failed 5 times and was sent again, then 18 metrics in 3s
    assert (report.logged, report.sent, report.dropped) == (20, 20, 0)
    assert report.unreachable_s > 0 and "Connection refused" in report.error


def test_put_never_waits_for_a_send_that_hangs():
    server = FakeServer(hold=True)
    sender = fast_sender(server)
    sender.put({"loss": 1.0}, 1)
    assert server.entered.wait(10)  # the first send is under way and hangs
    for step in range(2, 1002):
        sender.put({"loss": 1.0}, step)  # returns at once each time: the test would hang otherwise
    assert sender.pending() == 1001
    server.release.set()
    assert sender.close(timeout_s=30) == SendReport(logged=1001, sent=1001, dropped=0, unreachable_s=0.0)


def test_a_full_queue_drops_the_oldest_and_counts_them():
    server = FakeServer(hold=True)
    sender = fast_sender(server, capacity=5)
    sender.put({"loss": 1.0}, 1)
    assert server.entered.wait(10)  # step 1 is in flight, outside the queue
    for step in range(2, 12):
        sender.put({"loss": float(step)}, step)
    server.release.set()
    report = sender.close(timeout_s=30)
    assert [m.step for m in server.stored] == [1, 7, 8, 9, 10, 11]
    assert (report.logged, report.sent, report.dropped) == (11, 6, 5)
    assert "queue full" in report.error


def test_a_refused_batch_is_dropped_and_counted_and_later_ones_still_go():
    server = FakeServer(failures=1, error=RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}),
                        hold=True)
    sender = fast_sender(server, batch=2)
    sender.put({"loss": 1.0}, 1)
    assert server.entered.wait(10)
    for step in range(2, 5):
        sender.put({"loss": 1.0}, step)
    server.release.set()
    report = sender.close(timeout_s=30)
    assert server.calls == 3  # [1] refused and never resent, then [2, 3] and [4]
    assert [m.step for m in server.stored] == [2, 3, 4]
    assert (report.sent, report.dropped, report.unreachable_s) == (3, 1, 0.0)
    assert "INVALID_PARAMETER_VALUE" in report.error


def test_close_gives_up_after_its_time_and_counts_the_unsent_as_dropped():
    server = FakeServer(failures=10**6)
    sender = fast_sender(server)
    for step in range(1, 4):
        sender.put({"loss": 1.0, "l1": 1.0}, step)
    waits = []
    report = sender.close(timeout_s=0.3, on_wait=lambda pending, down: waits.append(pending), wait_every_s=0.1)
    assert (report.logged, report.sent, report.dropped) == (6, 0, 6)
    assert report.unreachable_s > 0 and waits and waits[0] == 6
    assert sender.close() is report  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        sender.put({"loss": 1.0}, 4)


def test_close_returns_even_when_a_send_never_comes_back():
    server = FakeServer(hold=True)
    sender = fast_sender(server)
    sender.put({"loss": 1.0}, 1)
    assert server.entered.wait(10)
    report = sender.close(timeout_s=0.2)
    server.release.set()  # the abandoned send now succeeds: the report is already made and stays so
    assert (report.sent, report.dropped) == (0, 1)


def test_bad_sender_settings_are_refused():
    with pytest.raises(ValueError, match="batch in 1..1000"):
        MetricSender(FakeServer(), batch=5000)


def test_queue_and_flush_settings_come_from_the_environment(monkeypatch):
    from components.tracking.buffered import flush_timeout_s, queue_capacity

    monkeypatch.setenv("FACERESTORE_TRACKING_QUEUE", "12")
    monkeypatch.setenv("FACERESTORE_TRACKING_FLUSH_S", "7.5")
    assert (queue_capacity(), flush_timeout_s()) == (12, 7.5)
    monkeypatch.setenv("FACERESTORE_TRACKING_FLUSH_S", "soon")
    with pytest.raises(ValueError, match="FACERESTORE_TRACKING_FLUSH_S='soon' is not a number"):
        flush_timeout_s()
    monkeypatch.setenv("FACERESTORE_TRACKING_QUEUE", "0")
    with pytest.raises(ValueError, match="FACERESTORE_TRACKING_QUEUE='0' must be at least 1"):
        queue_capacity()


# --- the real senders -----------------------------------------------------------------------------

@contextmanager
def answering(status: int, body: dict) -> Iterator[tuple[str, list[dict]]]:
    """An HTTP server on 127.0.0.1 that answers every request with `status` and `body`; yields its URL
    and the JSON bodies it received."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # http.server's name for it
            received.append({"path": self.path, **json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_rest_sender_posts_one_log_batch_with_steps_and_timestamps():
    with answering(200, {}) as (url, received):
        run_sender(url, "run-1")([Metric("loss", 0.5, 1234, 10), Metric("l1", 0.25, 1234, 10)])
    assert len(received) == 1 and received[0]["path"] == "/api/2.0/mlflow/runs/log-batch"
    assert received[0]["run_id"] == "run-1"
    assert [(m["key"], m["value"], int(m["timestamp"]), int(m["step"])) for m in received[0]["metrics"]] == [
        ("loss", 0.5, 1234, 10), ("l1", 0.25, 1234, 10)]


@pytest.mark.parametrize("status, body, transient", [
    (503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "restarting"}, True),
    (500, {"error_code": "INTERNAL_ERROR", "message": "db"}, True),
    (401, {"error_code": "UNAUTHENTICATED", "message": "bad login"}, False),
    (400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}, False),
    (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}, False),
])
def test_the_rest_sender_tries_once_and_its_errors_are_classified(status, body, transient):
    with answering(status, body) as (url, received), pytest.raises(MlflowException) as raised:
        run_sender(url, "run-1")([Metric("loss", 0.5, 1234, 10)])
    assert len(received) == 1  # no retries inside the call: the sender's backoff decides
    assert is_transient_tracking_error(raised.value) is transient


def test_the_rest_sender_to_a_refused_port_fails_at_once_with_a_transient_error():
    (port,) = free_ports(1)
    with pytest.raises(MlflowException) as raised:
        run_sender(f"http://127.0.0.1:{port}", "run-1")([Metric("loss", 0.5, 1234, 10)])
    assert is_transient_tracking_error(raised.value)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    """A local SQLite MLflow (its schema takes seconds to create, so one for these tests) and an experiment."""
    from mlflow.tracking import MlflowClient

    directory = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("e", artifact_location=str(directory / "artifacts"))


def test_a_sender_on_a_local_sqlite_store_logs_through_the_client(sqlite_store):
    uri, client, experiment = sqlite_store
    run_id = client.create_run(experiment).info.run_id
    sender = sender_for_run(uri, run_id)
    for step in (5, 10, 15):
        sender.put({"loss": step / 10}, step, timestamp_ms=50_000 + step)
    assert sender.close(timeout_s=60).metrics() == {"tracking_sent": 3, "tracking_dropped": 0, "tracking_unreachable_s": 0.0}
    assert [(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, "loss")] == [
        (5, 50_005, 0.5), (10, 50_010, 1.0), (15, 50_015, 1.5)]


def test_the_training_loops_logger_reports_the_senders_counts(sqlite_store):
    from components.training.loop import MetricLogger
    from components.training.spec import TrainSpec

    uri, client, experiment = sqlite_store
    run_id = client.create_run(experiment).info.run_id
    logger = MetricLogger(TrainSpec(method="baseline", method_config={}, steps=4, batch_size=1, checkpoint_every=4,
                                    log_every=2, tracking_uri=uri, mlflow_run_id=run_id))
    for step in range(1, 5):
        logger.add({"loss": float(step)})
        if step % 2 == 0:
            logger.log(step)
    assert logger.finish() == {"tracking_sent": 2, "tracking_dropped": 0, "tracking_unreachable_s": 0.0}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(2, 1.5), (4, 3.5)]
