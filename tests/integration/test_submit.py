"""`facerestore submit / logs / status / stop` against a real Ray head with its job server.

The head is our own `ray start --head --block` on 127.0.0.1 with its own temp dir, free ports
and token authentication (RAY_AUTH_MODE=token, a fresh RAY_AUTH_TOKEN), not the shared in-process
Ray of tests/conftest.py. It is stopped by signalling the processes it started (its session),
never by `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from pipelines.store import Store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
DEMO = ROOT / "pipelines" / "configs" / "demo.yaml"
TINY = ["--set", "synthesize.source.count=24", "--set", "synthesize.shard_size=12", "--set", "synthesize.resolution=32"]


@dataclass
class Head:
    url: str  # the job server, http://127.0.0.1:PORT
    env: dict[str, str]  # what a user's shell holds: the token, no RAY_ADDRESS
    process: subprocess.Popen
    log: Path


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Ray / MLflow setting that the test session may have set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
               RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def wait_for_job_server(head: Head, token: str, timeout: float) -> None:
    deadline = time.time() + timeout
    request = urllib.request.Request(f"{head.url}/api/version", headers={"Authorization": f"Bearer {token}"})
    while time.time() < deadline:
        if head.process.poll() is not None:
            raise AssertionError(f"`ray start --head` exited {head.process.returncode}:\n{head.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"no job server at {head.url} after {timeout}s:\n{head.log.read_text()[-3000:]}")


def stop_head(process: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to `ray start --block` shuts its node down; then kill whatever of its session is left."""
    def session() -> list[psutil.Process]:
        members = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == process.pid:
                    members.append(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return members

    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and (process.poll() is None or session()):
        time.sleep(0.5)
    for proc in session():
        try:
            proc.kill()
        except psutil.Error:
            pass
    if process.poll() is None:
        process.kill()
    process.wait()


@pytest.fixture(scope="module")
def head():
    # Short: Ray's unix sockets live under the temp dir, and socket paths are limited to 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="fr-ray-", dir="/tmp"))
    token = secrets.token_hex(16)
    gcs, dashboard, agent_http, agent_grpc, metrics, runtime_env_agent, client = free_ports(7)
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    log = temp_dir / "head.log"
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", "2",
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
               "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env_agent),
               "--ray-client-server-port", str(client), "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started = Head(f"http://127.0.0.1:{dashboard}", env, process, log)
    try:
        wait_for_job_server(started, token, timeout=120)
        yield started
    finally:
        stop_head(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def facerestore(head: Head, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**(env or head.env), "COLUMNS": "250"}  # no wrapping of the lines the tests look for
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def submit(head: Head, *args: str) -> tuple[str, str]:
    done = facerestore(head, "submit", *args, "--address", head.url)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = re.search(r"job id: (\S+)", done.stdout).group(1)
    run_id = re.search(r"pipeline run id: (\S+)", done.stdout).group(1)
    return job_id, run_id


def follow(head: Head, job_id: str) -> subprocess.CompletedProcess:
    """`logs --follow` with the address in RAY_ADDRESS, as a Ray user sets it."""
    return facerestore(head, "logs", job_id, "--follow", env={**head.env, "RAY_ADDRESS": head.url})


def one_stage_config(directory: Path, store: Path) -> Path:
    """The demo's synthesize stage alone: the same section, so the same fingerprint as in the demo."""
    raw = yaml.safe_load(DEMO.read_text())
    raw.update(name="synth-only", store=str(store), stages={"synthesize": raw["stages"]["synthesize"]})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "synth.yaml").write_text(yaml.safe_dump(raw))
    return directory / "synth.yaml"


@pytest.fixture(scope="module")
def first_job(head, tmp_path_factory):
    store = tmp_path_factory.mktemp("submit") / "store"
    job_id, run_id = submit(head, str(DEMO), "--set", f"store={store}", *TINY, "--only", "synthesize")
    followed = follow(head, job_id)
    return store, job_id, run_id, followed


def test_submit_prints_a_job_id_derived_from_the_pipeline_run_id(first_job):
    _, job_id, run_id, _ = first_job
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", run_id)
    assert job_id == f"facerestore-{run_id}"


def test_following_the_job_streams_the_run_until_it_succeeds(first_job):
    _, _, run_id, followed = first_job
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert f"pipeline run {run_id}: finished" in followed.stdout
    assert "synthesize" in followed.stdout
    assert "SUCCEEDED" in followed.stderr


def test_status_of_the_submitted_run_shows_synthesize_finished_and_nothing_else_ran(first_job, head):
    store, _, run_id, _ = first_job
    record = Store(str(store)).load_run(run_id)
    assert record["state"] == "finished"
    assert record["stages"]["synthesize"]["state"] == "finished"
    assert record["stages"]["synthesize"]["count"] == 24
    assert {record["stages"][s]["state"] for s in ("train_baseline", "evaluate", "register")} == {"skipped"}
    shown = facerestore(head, "status", run_id, "--store", str(store))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "synthesize" in shown.stdout and "finished" in shown.stdout


def test_logs_without_follow_show_the_finished_run(first_job, head):
    _, job_id, run_id, _ = first_job
    shown = facerestore(head, "logs", job_id, "--address", head.url)
    assert shown.returncode == 0, shown.stderr
    assert f"pipeline run {run_id}: finished" in shown.stdout
    assert f"job {job_id}: SUCCEEDED" in shown.stderr


def test_resubmitting_the_stage_finds_it_cached(first_job, head, tmp_path):
    """Resubmitted with `--only synthesize` the stage would run again (`--only` forces its stage), so
    the resubmission is the same stage as a pipeline of its own, from an uploaded directory that is not
    the project: same section, same fingerprint, same store, so a resumed run skips it."""
    store, _, first_run, _ = first_job
    config = one_stage_config(tmp_path / "project", store)
    job_id, run_id = submit(head, str(config), *TINY, "--working-dir", str(config.parent))
    followed = follow(head, job_id)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert run_id != first_run
    record = Store(str(store)).load_run(run_id)
    assert record["stages"]["synthesize"]["state"] == "cached"
    assert record["stages"]["synthesize"]["fingerprint"] == Store(str(store)).load_run(first_run)["stages"]["synthesize"]["fingerprint"]
    assert "every stage is cached: nothing ran" in followed.stdout


def test_stop_ends_a_running_job_and_says_so_when_it_has_already_ended(head, tmp_path):
    config = one_stage_config(tmp_path / "project", tmp_path / "store")
    job_id, _ = submit(head, str(config), "--set", "synthesize.source.count=5000", "--working-dir", str(config.parent))
    stopped = facerestore(head, "stop", job_id, "--address", head.url)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"asked job {job_id} to stop" in stopped.stdout
    followed = follow(head, job_id)
    assert followed.returncode == 1 and f"job {job_id}: STOPPED" in followed.stderr
    again = facerestore(head, "stop", job_id, "--address", head.url)
    assert again.returncode == 0 and "had already ended (now STOPPED)" in again.stdout


def test_a_wrong_token_is_refused_with_a_message_naming_where_the_token_comes_from(head):
    wrong = {**head.env, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    refused = facerestore(head, "logs", "facerestore-nothing", "--address", head.url, env=wrong)
    assert refused.returncode == 2
    assert "refused" in refused.stdout and "RAY_AUTH_TOKEN" in refused.stdout


def test_an_unknown_job_is_named(head):
    missing = facerestore(head, "logs", "facerestore-nothing", "--address", head.url)
    assert missing.returncode == 2
    assert f"no job 'facerestore-nothing' on the job server at {head.url}" in missing.stdout
