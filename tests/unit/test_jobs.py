"""What `facerestore submit` sends: entrypoint, runtime_env, ids, and the checks made before sending."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config import load_config
from pipelines.jobs import (EXCLUDES, PROJECT_DIR, JobError, RunOptions, _address_wins, auth_headers,
                            build_submission, default_working_dir, entrypoint, job_server_address, parse_env,
                            project_requirements)
from pipelines.runner import Runner, plan
from pipelines.store import Store

DEMO = PROJECT_DIR / "pipelines" / "configs" / "demo.yaml"
STAGES = ["synthesize", "train_baseline", "evaluate", "register"]


def parse_run(command: str) -> dict:
    """The options `facerestore run` would receive from `command`, parsed by the real command."""
    words = shlex.split(command)
    assert words[:2] == ["facerestore", "run"]
    group = typer.main.get_command(app)
    return group.commands["run"].make_context("run", words[2:]).params


def test_entrypoint_is_a_facerestore_run_that_the_run_command_accepts_with_every_option():
    options = RunOptions(overrides=("store=s3://b/p", "synthesize.source={kind: procedural, count: 24}"),
                         preset="real", only=None, start="train_baseline", force=("evaluate", "register"))
    params = parse_run(entrypoint("pipelines/configs/demo.yaml", options, "20260101-000000-abcdef"))
    assert params["config"] == Path("pipelines/configs/demo.yaml")
    assert params["set_"] == ["store=s3://b/p", "synthesize.source={kind: procedural, count: 24}"]
    assert params["preset"] == "real" and params["from_"] == "train_baseline" and params["only"] is None
    assert params["force"] == ["evaluate", "register"]
    assert params["run_id"] == "20260101-000000-abcdef"


def test_submission_uploads_the_project_as_working_dir_without_pip_and_names_the_job_after_the_run(tmp_path):
    submission = build_submission(DEMO, "demo", str(tmp_path / "store"), STAGES, RunOptions(only="synthesize"),
                                  "20260101-000000-abcdef", PROJECT_DIR)
    assert submission.job_id == "facerestore-20260101-000000-abcdef"
    assert submission.runtime_env["working_dir"] == str(PROJECT_DIR)
    assert {".venv", ".git", ".facerestore"} <= set(submission.runtime_env["excludes"])
    assert "pip" not in submission.runtime_env and "env_vars" not in submission.runtime_env
    assert parse_run(submission.entrypoint)["config"] == Path("pipelines/configs/demo.yaml")  # relative to the upload
    assert submission.metadata["facerestore.run_id"] == "20260101-000000-abcdef"


def test_pip_flag_installs_the_pyproject_requirements_torch_first(tmp_path):
    submission = build_submission(DEMO, "demo", "s3://b/p", STAGES, RunOptions(), "r1", PROJECT_DIR, pip=True)
    assert submission.runtime_env["pip"] == project_requirements()
    assert submission.runtime_env["pip"][0] == "torch==2.13.0"
    assert any(req.startswith("ray[") for req in submission.runtime_env["pip"])


def test_a_checkout_is_the_default_working_dir():
    assert default_working_dir() == PROJECT_DIR and (PROJECT_DIR / "pyproject.toml").is_file()
    assert {".venv", ".git", ".facerestore", "*.egg-info"} <= set(EXCLUDES)


def test_config_outside_the_uploaded_directory_is_refused_naming_both(tmp_path):
    outside = tmp_path / "mine.yaml"
    outside.write_text(DEMO.read_text())
    with pytest.raises(JobError, match=rf"config {outside} is outside .*\({PROJECT_DIR}\)"):
        build_submission(outside, "demo", "s3://b/p", STAGES, RunOptions(), "r1", PROJECT_DIR)


@pytest.mark.parametrize("store", [".facerestore", "data/store"])
def test_a_relative_store_is_refused_because_the_job_working_dir_is_temporary(store):
    with pytest.raises(JobError, match=rf"store '{store}' is a relative path"):
        build_submission(DEMO, "demo", store, STAGES, RunOptions(), "r1", PROJECT_DIR)


@pytest.mark.parametrize("store", ["s3://bucket/prefix", "gs://bucket/x", "/mnt/shared/store", "~/store"])
def test_a_uri_or_absolute_store_is_accepted(store):
    assert build_submission(DEMO, "demo", store, STAGES, RunOptions(), "r1", PROJECT_DIR).metadata["facerestore.store"] == store


@pytest.mark.parametrize("options,flag", [(RunOptions(only="synthesise"), "--only synthesise"),
                                          (RunOptions(start="train"), "--from train"),
                                          (RunOptions(force=("evaluate", "regiser")), "--force regiser")])
def test_an_unknown_stage_in_a_selection_is_named_before_submitting(options, flag):
    with pytest.raises(JobError, match=rf"{flag}: the config has no stage .*synthesize, train_baseline"):
        build_submission(DEMO, "demo", "s3://b/p", STAGES, options, "r1", PROJECT_DIR)


@pytest.mark.parametrize("run_id", ["../etc", "a/b", "", "-x", "x" * 101])
def test_a_malformed_run_id_is_refused(run_id):
    with pytest.raises(JobError, match="run id"):
        build_submission(DEMO, "demo", "s3://b/p", STAGES, RunOptions(), run_id, PROJECT_DIR)


def test_env_passes_plain_settings_and_refuses_secrets_which_the_dashboard_would_show():
    assert parse_env(["MLFLOW_TRACKING_URI=http://mlflow:5000", "FACERESTORE_RAY_LOGS=1"]) == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000", "FACERESTORE_RAY_LOGS": "1"}
    for secret in ["AWS_SECRET_ACCESS_KEY=x", "AWS_ACCESS_KEY_ID=x", "MLFLOW_TRACKING_PASSWORD=x", "RAY_AUTH_TOKEN=x"]:
        with pytest.raises(JobError, match="shown in the Ray dashboard"):
            parse_env([secret])
    with pytest.raises(JobError, match="NAME=VALUE"):
        parse_env(["JUSTANAME"])


def test_address_comes_from_the_option_then_ray_api_server_address_then_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://from-ray-address:8265")
    assert job_server_address(None) == "http://from-ray-address:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://from-api-server:8265")
    assert job_server_address(None) == "http://from-api-server:8265"
    assert job_server_address("http://given:8265") == "http://given:8265"


def test_an_explicit_address_wins_over_ray_address_inside_rays_client(monkeypatch):
    from ray.dashboard.utils import get_address_for_submission_client

    monkeypatch.setenv("RAY_ADDRESS", "http://elsewhere:8265")
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert get_address_for_submission_client("http://given:8265") == "http://elsewhere:8265"  # Ray alone
    with _address_wins("http://given:8265"):
        assert get_address_for_submission_client("http://given:8265") == "http://given:8265"
    assert "RAY_API_SERVER_ADDRESS" not in __import__("os").environ


@pytest.fixture
def token_loader():
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()
    yield
    loader.reset_cache()


def test_auth_header_carries_the_token_from_ray_auth_token_unless_auth_is_disabled(monkeypatch, token_loader):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc123token")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert auth_headers() == {"Authorization": "Bearer abc123token"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers() == {}


def test_an_unreadable_token_file_is_a_job_error_naming_the_variable(monkeypatch, tmp_path, token_loader):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(JobError, match="RAY_AUTH_TOKEN_PATH"):
        auth_headers()


@pytest.mark.parametrize("command", [["logs", "facerestore-x"], ["stop", "facerestore-x"]])
def test_without_an_address_the_error_names_the_option_and_ray_address(monkeypatch, command):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    result = CliRunner().invoke(app, command, env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "--address http://HEAD:8265" in result.output and "RAY_ADDRESS" in result.output


class FakeClient:
    """Stands in for ray's JobSubmissionClient: records what the CLI sends."""

    sent: dict = {}

    def __init__(self, address, headers=None, **kwargs):
        FakeClient.sent = {"address": address, "headers": headers}

    def submit_job(self, **kwargs):
        FakeClient.sent.update(kwargs)
        return kwargs["submission_id"]


def test_submit_command_sends_the_run_and_prints_the_job_id_and_the_run_id(monkeypatch, tmp_path):
    import ray.job_submission

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", FakeClient)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    result = CliRunner().invoke(app, ["submit", str(DEMO), "--set", f"store={tmp_path}/store", "--only", "synthesize",
                                      "--env", "FACERESTORE_RAY_LOGS=1", "--address", "http://head:8265"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    sent = FakeClient.sent
    run_id = sent["metadata"]["facerestore.run_id"]
    assert f"job id: facerestore-{run_id}" in result.output and f"pipeline run id: {run_id}" in result.output
    assert sent["address"] == "http://head:8265" and sent["submission_id"] == f"facerestore-{run_id}"
    params = parse_run(sent["entrypoint"])
    assert params["only"] == "synthesize" and params["run_id"] == run_id and params["set_"] == [f"store={tmp_path}/store"]
    assert sent["runtime_env"]["env_vars"] == {"FACERESTORE_RAY_LOGS": "1"}
    assert f"facerestore status {run_id} --store {tmp_path}/store" in result.output


def test_submit_with_a_bad_config_key_fails_before_contacting_the_cluster(monkeypatch):
    import ray.job_submission

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", None)  # any use would raise
    result = CliRunner().invoke(app, ["submit", str(DEMO), "--set", "train_baseline.lrr=1", "--address", "http://h:1"])
    assert result.exit_code == 2 and "unknown key 'stages.train_baseline.lrr'" in result.output


def test_run_accepts_a_given_run_id_and_the_record_uses_it(tmp_path):
    cfg = load_config(DEMO, [f"store={tmp_path}"])
    record = Runner(cfg, run_id="given-id")._new_record(Store(cfg.store), plan(cfg))
    assert record["run_id"] == "given-id"
    assert Runner(cfg)._new_record(Store(cfg.store), plan(cfg))["run_id"] != "given-id"


def test_run_refuses_a_run_id_already_in_the_store_or_malformed(tmp_path):
    store = Store(str(tmp_path))
    store.save_run({"run_id": "taken", "started_at": 0.0, "stages": {}})
    taken = CliRunner().invoke(app, ["run", str(DEMO), "--set", f"store={tmp_path}", "--run-id", "taken"],
                               env={"COLUMNS": "250"})
    assert taken.exit_code == 2 and "pipeline run 'taken' already exists" in taken.output
    bad = CliRunner().invoke(app, ["run", str(DEMO), "--set", f"store={tmp_path}", "--run-id", "../x"],
                             env={"COLUMNS": "250"})
    assert bad.exit_code == 2 and "run id '../x'" in bad.output
