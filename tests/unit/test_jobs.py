"""What `facerestore submit` sends: entrypoint, runtime_env, ids, and the checks made before sending."""

from __future__ import annotations

import importlib.metadata
import shlex
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config import load_config
from pipelines.jobs import (CHECK_PREFIX, EXCLUDES, PROJECT_DIR, JobError, Jobs, RunOptions, Submission,
                            _address_wins, auth_headers, build_submission, check_verdict, checkout_version,
                            default_working_dir, entrypoint, installed_version, job_server_address, parse_env,
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


class FakeCluster:
    """Stands in for ray's JobSubmissionClient: records what the CLI sends; the check job ends as `check` says
    (status, logs, job info message), by default like a head that runs this checkout's facerestore. Like
    Ray 2.60's job manager, it puts a job deleted right after it ended back once, as FAILED."""

    def __init__(self):
        self.address, self.headers = None, None
        self.jobs: dict[str, dict] = {}  # submission id -> what submit_job got, in order
        self.deleted: list[str] = []  # each delete_job call
        self.gone: set[str] = set()
        self.stopped: list[str] = []
        self.check = ("SUCCEEDED", f"facerestore {checkout_version()}\n", "")
        self.puts_back = True

    def client(self, address, headers=None, **kwargs):
        self.address, self.headers = address, headers
        return _FakeClient(self)


class _FakeClient:
    def __init__(self, cluster: FakeCluster):
        self.cluster = cluster

    def submit_job(self, **kwargs):
        self.cluster.jobs[kwargs["submission_id"]] = kwargs
        return kwargs["submission_id"]

    def _is_check(self, job_id):
        assert job_id in self.cluster.jobs, job_id
        if job_id in self.cluster.gone:
            if not self.cluster.puts_back or self.cluster.deleted.count(job_id) > 1:
                raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
            self.cluster.gone.remove(job_id)
            self.cluster.check = ("FAILED", *self.cluster.check[1:])  # "Job supervisor actor died"
        return job_id.startswith(CHECK_PREFIX)

    def get_job_status(self, job_id):
        from ray.job_submission import JobStatus

        return JobStatus(self.cluster.check[0] if self._is_check(job_id) else "PENDING")

    def get_job_logs(self, job_id):
        return self.cluster.check[1] if self._is_check(job_id) else ""

    def get_job_info(self, job_id):
        return SimpleNamespace(message=self.cluster.check[2] if self._is_check(job_id) else "")

    def stop_job(self, job_id):
        self.cluster.stopped.append(job_id)
        return True

    def delete_job(self, job_id):
        self._is_check(job_id)  # a job that is gone cannot be deleted
        self.cluster.deleted.append(job_id)
        self.cluster.gone.add(job_id)
        return True


@pytest.fixture
def cluster(monkeypatch):
    import ray.job_submission

    fake = FakeCluster()
    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", fake.client)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    return fake


def submit_demo(tmp_path, *extra):
    return CliRunner().invoke(app, ["submit", str(DEMO), "--set", f"store={tmp_path}/store", "--only", "synthesize",
                                    "--env", "FACERESTORE_RAY_LOGS=1", "--address", "http://head:8265", *extra],
                              env={"COLUMNS": "250"})


def test_submit_command_sends_the_run_and_prints_the_job_id_and_the_run_id(cluster, tmp_path):
    result = submit_demo(tmp_path)
    assert result.exit_code == 0, result.output
    _, job_id = list(cluster.jobs)  # the check job, then the pipeline's
    sent = cluster.jobs[job_id]
    run_id = sent["metadata"]["facerestore.run_id"]
    assert f"job id: facerestore-{run_id}" in result.output and f"pipeline run id: {run_id}" in result.output
    assert cluster.address == "http://head:8265" and job_id == f"facerestore-{run_id}"
    params = parse_run(sent["entrypoint"])
    assert params["only"] == "synthesize" and params["run_id"] == run_id and params["set_"] == [f"store={tmp_path}/store"]
    assert sent["runtime_env"]["env_vars"] == {"FACERESTORE_RAY_LOGS": "1"}
    assert f"facerestore status {run_id} --store {tmp_path}/store" in result.output


def test_submit_first_runs_facerestore_version_with_the_jobs_runtime_env_then_deletes_that_check(cluster, tmp_path):
    result = submit_demo(tmp_path, "--pip")
    assert result.exit_code == 0, result.output
    check_id, job_id = list(cluster.jobs)  # the check goes first
    check, real = cluster.jobs[check_id], cluster.jobs[job_id]
    assert check_id == f"facerestore-check-{real['metadata']['facerestore.run_id']}"
    assert check["entrypoint"] == "facerestore version"
    assert check["runtime_env"] == real["runtime_env"] and "pip" in check["runtime_env"]  # same working_dir, pip, env
    assert cluster.deleted == [check_id, check_id] and cluster.gone == {check_id}  # deleted again once put back
    assert not cluster.stopped


def test_a_deleted_check_job_that_stays_gone_is_deleted_once(cluster):
    cluster.puts_back = False
    Jobs("http://head:8265").check_head(a_submission(), timeout_s=5, settle_s=0.3)
    assert cluster.deleted == ["facerestore-check-r1"] and cluster.gone == {"facerestore-check-r1"}


def test_a_head_without_facerestore_on_its_path_refuses_the_submission_and_says_what_to_do(cluster, tmp_path):
    cluster.check = ("FAILED", "Running entrypoint for job x: facerestore version\n/bin/sh: 1: facerestore: not found\n",
                     "Job entrypoint command failed with exit code 127")
    result = submit_demo(tmp_path)
    assert result.exit_code == 2
    assert "the head cannot run `facerestore`: /bin/sh: 1: facerestore: not found" in result.output
    assert "activated virtualenv" in result.output and "--pip" in result.output and "image" in result.output
    assert [job for job in cluster.jobs if not job.startswith(CHECK_PREFIX)] == []  # the pipeline job was not sent
    assert cluster.gone == set(cluster.jobs)


def test_no_check_submits_the_job_alone(cluster, tmp_path):
    cluster.check = ("FAILED", "/bin/sh: 1: facerestore: not found\n", "")
    result = submit_demo(tmp_path, "--no-check")
    assert result.exit_code == 0, result.output
    assert len(cluster.jobs) == 1 and not next(iter(cluster.jobs)).startswith(CHECK_PREFIX)


def a_submission() -> Submission:
    return build_submission(DEMO, "demo", "s3://b/p", STAGES, RunOptions(), "r1", PROJECT_DIR)


def test_a_check_job_that_does_not_finish_in_time_is_stopped_and_named(cluster, monkeypatch):
    cluster.check = ("PENDING", "", "")
    jobs = Jobs("http://head:8265")
    with pytest.raises(JobError, match=r"the check job facerestore-check-r1 \(facerestore version\) did not finish "
                                       r"within 0 s \(still PENDING\).*--check-timeout.*--no-check"):
        jobs.check_head(a_submission(), timeout_s=0)
    assert cluster.stopped == ["facerestore-check-r1"] and cluster.deleted == []  # its logs stay readable


def test_the_check_returns_the_heads_version_when_it_matches(cluster):
    logs = "Running entrypoint for job facerestore-check-r1: facerestore version\nfacerestore 9.9.9\n"
    cluster.check = ("SUCCEEDED", logs, "")
    assert Jobs("http://head:8265").check_head(a_submission(), timeout_s=5, expected="9.9.9") == "9.9.9"


@pytest.mark.parametrize("status,logs,message,expected", [
    ("SUCCEEDED", "facerestore 0.0.9\n", "", r"the head runs facerestore 0\.0\.9, this checkout is 0\.1\.0: install"),
    ("FAILED", "bash: line 1: facerestore: command not found\n", "",
     r"cannot run `facerestore`: bash: line 1: facerestore: command not found — start the head"),
    ("FAILED", "Usage: facerestore [OPTIONS] COMMAND [ARGS]...\nError: No such command 'version'.\n", "",
     r"the head's facerestore is older than this checkout's 0\.1\.0 \(it has no `version` command\)"),
    ("FAILED", "Traceback (most recent call last):\n  File x\nModuleNotFoundError: No module named 'typer'\n", "",
     r"the head's `facerestore` cannot start: ModuleNotFoundError: No module named 'typer' — .*--pip"),
    ("FAILED", "", "runtime_env setup failed: pip install exited 1",
     r"check job c1 \(facerestore version\) ended FAILED without printing a version: runtime_env setup failed"),
])
def test_what_the_check_job_shows_becomes_a_message_naming_what_is_missing(status, logs, message, expected):
    with pytest.raises(JobError, match=expected):
        check_verdict("c1", status, logs, message, "0.1.0")


def test_version_prints_the_installed_version_that_the_check_compares():
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0 and result.output.strip() == f"facerestore {installed_version()}"
    assert installed_version() == importlib.metadata.version("facerestore")


def test_running_uninstalled_the_checkout_version_is_pyprojects_and_version_says_it_is_not_installed(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert installed_version() is None
    assert checkout_version() == tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]["version"]
    result = CliRunner().invoke(app, ["version"], env={"COLUMNS": "250"})
    assert result.exit_code == 1 and "facerestore is not installed" in result.output


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
