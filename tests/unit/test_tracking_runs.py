import os

from components.tracking.runs import global_tracking_uri


def test_the_global_tracking_uri_is_put_back_so_a_later_run_in_the_process_is_not_redirected(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with global_tracking_uri("sqlite:////tmp/one-store/mlflow.db"):
        assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////tmp/one-store/mlflow.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    with global_tracking_uri("sqlite:////tmp/other/mlflow.db"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
