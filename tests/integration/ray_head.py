"""A real Ray head of our own, `ray start --head --block` on 127.0.0.1, for the tests that need one.

Its own temp dir, free ports and token authentication (RAY_AUTH_MODE=token, a fresh
RAY_AUTH_TOKEN), not the shared in-process Ray of tests/conftest.py. It is stopped by signalling
the processes it started (its session), never by `ray stop`, which would stop every Ray on the
machine. `facerestore` commands run as a user runs them: a subprocess with the head's environment.
"""

from __future__ import annotations

import json
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).parents[2]


@dataclass
class Head:
    url: str  # the job server, http://127.0.0.1:PORT
    env: dict[str, str]  # what a user's shell holds: the token, no RAY_ADDRESS
    process: subprocess.Popen
    log: Path
    gcs: str = ""  # 127.0.0.1:PORT, what a driver joining the cluster puts in RAY_ADDRESS


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


def session_processes(leader: int) -> list[psutil.Process]:
    """Every live process of the session `leader` started: a head's GCS, raylet and Ray workers."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == leader:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def stop_session(process: subprocess.Popen, grace: float = 5) -> None:
    """SIGTERM to a session leader (`ray start --block` shuts its node down on it); then kill whatever of
    its session is left after `grace` seconds. A head whose job driver or train workers were killed
    takes ~30 s to stop itself; nothing of it is kept, so the test need not wait for that."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and (process.poll() is None or session_processes(process.pid)):
        time.sleep(0.2)
    for proc in session_processes(process.pid):
        try:
            proc.kill()
        except psutil.Error:
            pass
    if process.poll() is None:
        process.kill()
    process.wait()


def without_venv_bin(path: str) -> str:
    """PATH without this virtualenv's bin directory: a shell in which the virtualenv was not activated."""
    venv_bin = Path(sys.executable).parent.resolve()
    return os.pathsep.join(p for p in path.split(os.pathsep) if p and Path(p).resolve() != venv_bin)


@contextmanager
def running_head(num_cpus: int = 2, venv_on_path: bool = True, env: dict[str, str] | None = None) -> Iterator[Head]:
    """venv_on_path=False: the head is started as `.venv/bin/ray start` from a shell that did not activate
    the virtualenv, so a job's shell finds no `facerestore` command (Ray itself runs the venv's Python).
    env: more variables for the node, which its Ray workers inherit (a cluster's S3 endpoint and keys)."""
    # Short: Ray's unix sockets live under the temp dir, and socket paths are limited to 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="fr-ray-", dir="/tmp"))
    token = secrets.token_hex(16)
    gcs, dashboard, agent_http, agent_grpc, metrics, runtime_env_agent, client = free_ports(7)
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, **(env or {}))
    if not venv_on_path:
        env["PATH"] = without_venv_bin(env["PATH"])
    log = temp_dir / "head.log"
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", str(num_cpus),
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
               "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env_agent),
               "--ray-client-server-port", str(client), "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started = Head(f"http://127.0.0.1:{dashboard}", env, process, log, gcs=f"127.0.0.1:{gcs}")
    try:
        wait_for_job_server(started, token, timeout=120)
        yield started
    finally:
        stop_session(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass
class WorkerNode:
    ip: str  # its own loopback address, what the run record's `nodes` name it by
    process: subprocess.Popen  # `ray start --block`, the leader of the node's session
    log: Path

    def kill(self) -> list[int]:
        """SIGKILL every process of the node's session at once (raylet, object store, its Ray workers,
        agents): the node is lost as a machine is, with no word to the GCS; the pids."""
        members = session_processes(self.process.pid)
        for proc in members:
            try:
                proc.kill()
            except psutil.Error:
                continue
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        return [proc.pid for proc in members]


def cluster_nodes(head: Head) -> list[dict]:
    """The nodes the head's GCS knows (state API): node_ip, node_id, state ALIVE / DEAD, resources_total."""
    request = urllib.request.Request(f"{head.url}/api/v0/nodes?limit=100",
                                     headers={"Authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]["result"]["result"]


def node_logs_tail(temp_dir: Path, chars: int = 1500) -> str:
    """The end of each raylet / GCS log under a node's temp dir: why a node did not come up."""
    parts = []
    for path in sorted(temp_dir.glob("session_*/logs/*")):
        if path.name.startswith(("raylet", "gcs_server")) and path.suffix in (".out", ".err") and path.stat().st_size:
            parts.append(f"--- {path.name}:\n{path.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts)


# `ray start` gives a new raylet a fixed 30 s to register with the GCS; on a loaded 2-core machine a
# first start can miss that, and a second one (its Python already in the page cache) does not.
NODE_START_ATTEMPTS = 3


@contextmanager
def running_worker_node(head: Head, num_cpus: int, ip: str = "127.0.0.2", env: dict[str, str] | None = None,
                        object_store_mb: int = 512) -> Iterator[WorkerNode]:
    """A second node of `head`'s cluster on this machine: `ray start --address --block` with its own temp
    dir (object store, sockets, logs) in a session of its own, stopped through that session.

    It listens on `ip`, another loopback address (all of 127.0.0.0/8 reaches this machine), so that
    the two nodes have different IPs, as two machines would: a run record's `nodes` then tells them
    apart, and a driver on this machine joins the head's raylet (127.0.0.1), not this one.
    env: more variables for the node, which its Ray workers inherit (a cluster's S3 endpoint and keys).
    """
    node_env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head.env["RAY_AUTH_TOKEN"], **(env or {}))
    failures = []
    for _ in range(NODE_START_ATTEMPTS):
        temp_dir = Path(tempfile.mkdtemp(prefix="fr-rayw-", dir="/tmp"))
        agent_http, agent_grpc, metrics, runtime_env_agent = free_ports(4)
        log = temp_dir / "worker.log"
        command = [str(Path(sys.executable).parent / "ray"), "start", "--address", head.gcs, "--block",
                   "--node-ip-address", ip, "--num-cpus", str(num_cpus),
                   "--object-store-memory", str(object_store_mb * 1024 * 1024),
                   "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
                   "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env_agent),
                   "--temp-dir", str(temp_dir), "--disable-usage-stats"]
        with log.open("w") as out:
            process = subprocess.Popen(command, env=node_env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        node = WorkerNode(ip, process, log)
        try:
            deadline = time.time() + 120
            while not any(n["node_ip"] == ip and n["state"] == "ALIVE" for n in cluster_nodes(head)):
                if process.poll() is not None or time.time() > deadline:
                    break
                time.sleep(0.5)
            else:
                yield node
                return
            outcome = f"exited {process.returncode}" if process.poll() is not None else "not alive after 120 s"
            failures.append(f"`ray start --address` {outcome}:\n{log.read_text()[-1500:]}\n{node_logs_tail(temp_dir)}")
        finally:
            stop_session(process)
            shutil.rmtree(temp_dir, ignore_errors=True)
    raise AssertionError(f"node {ip} did not join the cluster in {NODE_START_ATTEMPTS} starts:\n" + "\n\n".join(failures))


@pytest.fixture(scope="module")
def head():
    with running_head(num_cpus=2) as started:
        yield started


def job_ids(head: Head) -> list[str]:
    """The submission ids in the head's job list."""
    request = urllib.request.Request(f"{head.url}/api/jobs/",
                                     headers={"Authorization": f"Bearer {head.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return [job["submission_id"] for job in json.load(response)]


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


def follow(head: Head, job_id: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`logs --follow` with the address in RAY_ADDRESS, as a Ray user sets it."""
    return facerestore(head, "logs", job_id, "--follow", env={**head.env, "RAY_ADDRESS": head.url}, timeout=timeout)
