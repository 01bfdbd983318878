"""Real servers on 127.0.0.1 for the integration tests: moto's S3-protocol server and `mlflow server`.

Each is a subprocess in a session of its own on a free port, up once its health URL answers,
stopped through that session (never by name).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.integration.ray_head import clean_env, free_ports, stop_session

ADMIN = "admin"


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


@contextmanager
def server(command: list[str], env: dict[str, str], url: str, ready: str, log: Path, timeout: float = 180) -> Iterator[Server]:
    """A server subprocess in its own session, up once `url + ready` answers 200."""
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"{command[0]} exited {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + ready, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.time() > deadline:
                raise AssertionError(f"{command[0]} not answering at {url} after {timeout}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Server(url, process, log)
    finally:
        stop_session(process, grace=10)


@contextmanager
def s3_server(directory: Path) -> Iterator[Server]:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with server(command, clean_env(), url, "/moto-api/", directory / "moto.log") as started:
        yield started


@contextmanager
def tracking_server(directory: Path, password: str) -> Iterator[Server]:
    """`mlflow server` with basic auth: the admin account is created from the environment on first start."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    ini = directory / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{directory / 'auth.db'}\nadmin_username = {ADMIN}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    # No job execution: its half-dozen queue consumers serve features (prompt optimisation, trace
    # roll-ups) that the pipeline does not use.
    env = clean_env(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=password,
                    MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
               "--serve-artifacts", "--artifacts-destination", str(directory / "artifacts")]
    with server(command, env, url, "/health", directory / "mlflow.log") as started:
        yield started
