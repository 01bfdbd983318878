"""Store and tracking URIs: the S3 endpoint from the AWS variables, and no password inside a URI."""

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from components import storage
from pipelines.config import ConfigError, load_config
from pipelines.runner import tracking_uri
from pipelines.store import Store

DEMO = Path(__file__).parents[2] / "pipelines" / "configs" / "demo.yaml"
ENDPOINTS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def endpoint_of(fs: pafs.FileSystem) -> str:
    _, (options,) = fs.__reduce__()  # pyarrow's own pickling state: the options the filesystem was built with
    return options["endpoint_override"]


@pytest.fixture
def no_endpoint(monkeypatch):
    for name in ENDPOINTS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_an_s3_uri_goes_to_the_endpoint_named_by_aws_endpoint_url(no_endpoint):
    no_endpoint.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    fs, path = storage.resolve("s3://bucket/prefix/stages")
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/prefix/stages"
    assert endpoint_of(fs) == "http://127.0.0.1:9000"


def test_the_s3_specific_endpoint_variable_wins_over_the_global_one(no_endpoint):
    no_endpoint.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    no_endpoint.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9100")
    assert endpoint_of(storage.resolve("s3://bucket/prefix")[0]) == "http://127.0.0.1:9100"


def test_an_endpoint_given_in_the_uri_itself_is_kept(no_endpoint):
    no_endpoint.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    fs, path = storage.resolve("s3://bucket/prefix?endpoint_override=127.0.0.1:9200&scheme=http")
    assert endpoint_of(fs) == "127.0.0.1:9200" and path == "bucket/prefix"


def test_local_paths_ignore_the_s3_endpoint(no_endpoint, tmp_path):
    no_endpoint.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    fs, path = storage.resolve(str(tmp_path))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)


def test_a_store_uri_with_a_password_is_refused_naming_the_key_but_not_the_password():
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, ["store=s3://KEYID:hunter2-secret@bucket/prefix"])
    assert "'store'" in str(err.value) and "AWS_SECRET_ACCESS_KEY" in str(err.value)
    assert "hunter2-secret" not in str(err.value)


def test_a_tracking_uri_with_a_password_is_refused_pointing_at_the_login_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://admin:hunter2-secret@127.0.0.1:5000")
    cfg = load_config(DEMO, [f"store={tmp_path}"])
    with pytest.raises(ValueError) as err:
        tracking_uri(cfg, Store(cfg.store))
    assert "MLFLOW_TRACKING_PASSWORD" in str(err.value) and "hunter2-secret" not in str(err.value)


def test_a_user_name_alone_in_a_uri_is_no_password():
    assert not storage.has_password("http://admin@127.0.0.1:5000")
    assert not storage.has_password("/data/store") and not storage.has_password("s3://bucket/prefix")
    assert storage.has_password("gs://user:pw@bucket/prefix")
