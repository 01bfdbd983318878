"""Real servers on 127.0.0.1 for the integration tests: moto's S3-protocol server and `mlflow server`.

Each is a subprocess in a session of its own on a free port, up once its health URL answers,
stopped through that session (never by name). `restartable_tracking_server` can be stopped and
started again on the same port with the same database and artifacts: a tracking server that blinks.
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


def start_server(command: list[str], env: dict[str, str], url: str, ready: str, log: Path, timeout: float = 180,
                 append: bool = False) -> Server:
    """A server subprocess in its own session, returned once `url + ready` answers 200."""
    with log.open("a" if append else "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"{command[0]} exited {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + ready, timeout=2) as response:
                    if response.status == 200:
                        return Server(url, process, log)
            except (urllib.error.URLError, OSError):
                pass
            if time.time() > deadline:
                raise AssertionError(f"{command[0]} not answering at {url} after {timeout}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    except BaseException:
        stop_session(process, grace=10)
        raise


@contextmanager
def server(command: list[str], env: dict[str, str], url: str, ready: str, log: Path, timeout: float = 180) -> Iterator[Server]:
    """A server subprocess in its own session, up once `url + ready` answers 200; stopped on exit."""
    started = start_server(command, env, url, ready, log, timeout)
    try:
        yield started
    finally:
        stop_session(started.process, grace=10)


@contextmanager
def s3_server(directory: Path) -> Iterator[Server]:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with server(command, clean_env(), url, "/moto-api/", directory / "moto.log") as started:
        yield started


def tracking_command(directory: Path, port: int, *options: str) -> list[str]:
    """`mlflow server` on 127.0.0.1:`port`, its SQLite database and proxied artifacts (--serve-artifacts) in `directory`."""
    return [str(Path(sys.executable).parent / "mlflow"), "server", *options,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", str(directory / "artifacts")]


# No job execution: its half-dozen queue consumers serve features (prompt optimisation, trace
# roll-ups) that the pipeline does not use.
NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass
class RestartableServer:
    """A plain `mlflow server` (no auth) that `stop` and `start` take down and bring back on the same
    port, database and artifacts."""

    url: str
    command: list[str]
    env: dict[str, str]
    log: Path
    current: Server | None = None

    def start(self) -> None:
        assert self.current is None, "the tracking server is already running"
        self.current = start_server(self.command, self.env, self.url, "/health", self.log, append=True)

    def stop(self, grace: float = 10) -> None:
        """SIGTERM to the server's session, then a kill of whatever of it is left after `grace` seconds
        (0: at once, a crash): nothing answers on the port."""
        if self.current is not None:
            stop_session(self.current.process, grace=grace)
            self.current = None


@contextmanager
def restartable_tracking_server(directory: Path) -> Iterator[RestartableServer]:
    (port,) = free_ports(1)
    started = RestartableServer(f"http://127.0.0.1:{port}", tracking_command(directory, port), clean_env(**NO_JOBS),
                                directory / "mlflow.log")
    started.start()
    try:
        yield started
    finally:
        started.stop()


@contextmanager
def tracking_server(directory: Path, password: str) -> Iterator[Server]:
    """`mlflow server` with basic auth: the admin account is created from the environment on first start."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    ini = directory / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{directory / 'auth.db'}\nadmin_username = {ADMIN}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = clean_env(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=password,
                    MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16), **NO_JOBS)
    command = tracking_command(directory, port, "--app-name", "basic-auth")
    with server(command, env, url, "/health", directory / "mlflow.log") as started:
        yield started
