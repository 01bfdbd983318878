"""Which stage errors the runner retries: transient faults yes, config and code errors no."""

from __future__ import annotations

import pytest
import ray.exceptions

from pipelines.runner import StageStalled, is_transient


def wrapped(outer: Exception, cause: Exception) -> Exception:
    try:
        try:
            raise cause
        except Exception as inner:
            raise outer from inner
    except Exception as err:  # noqa: BLE001
        return err


@pytest.mark.parametrize("err", [
    ray.exceptions.WorkerCrashedError(),
    ray.exceptions.NodeDiedError("node 10.0.0.2 died"),
    StageStalled("no progress for 900 s"),
    OSError("AWS Error NETWORK_CONNECTION during HeadBucket operation"),
    ConnectionError("tracking server refused the connection"),
    wrapped(RuntimeError("training failed"), ray.exceptions.ActorDiedError()),
])
def test_transient_faults_are_retried(err):
    assert is_transient(err)


@pytest.mark.parametrize("err", [
    ValueError("the training split yields no batch of 4096"),
    KeyError("model.width"),
    FileNotFoundError("no file at s3://bucket/shard-00001.parquet"),
    TypeError("unsupported operand"),
    wrapped(RuntimeError("training failed"), ValueError("bad config")),
])
def test_config_and_code_errors_are_not(err):
    assert not is_transient(err)
