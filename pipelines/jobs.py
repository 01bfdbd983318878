"""Pipeline runs as Ray Jobs: what `facerestore submit / logs / stop` send to a cluster's job server.

A submitted job runs `facerestore run CONFIG [same options] --run-id ID` as the job's driver on
the cluster. The pipeline run id is made here, before submitting, so the submitter can print it
and `facerestore status ID --store STORE` finds the run while it is still going; the Ray job id
is derived from it (`facerestore-<run id>`), so either id leads to the other.

The job's runtime_env uploads the project directory as its working_dir (code changes take
effect without rebuilding the image; .gitignore'd paths and EXCLUDES stay behind) and, only
with `--pip`, installs the project's requirements; by default the job uses the environment of
the cluster's image (infra/Dockerfile), which is also the only choice on a cluster without
internet access.

Addresses follow Ray's job CLI: `--address`, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS
(http://HEAD:8265 is the job server; a GCS address or ray:// address is resolved by Ray). An
explicit `--address` wins over the environment, which Ray's own client would not do.

Token authentication (Ray >= 2.52; on by default for local clusters since Ray 2.59): the token
comes from where Ray looks for it, RAY_AUTH_TOKEN, then the file named by RAY_AUTH_TOKEN_PATH,
then ~/.ray/auth_token, and is sent as `Authorization: Bearer ...` unless RAY_AUTH_MODE=disabled.
Ray's client sends it only when RAY_AUTH_MODE=token; a head started by `ray start --head` on a
machine that has ~/.ray/auth_token enables token mode on its own, so sending the token whenever
one exists is what makes `submit` work against such a head without further setup.

Before the real job, `submit` runs a check job (`facerestore-check-<run id>`) with the same
runtime_env whose entrypoint is `facerestore version`: a head started from a virtualenv that was
not activated has no `facerestore` on its PATH, and the real job would fail only on the cluster
with `/bin/sh: 1: facerestore: not found`. The check compares the version it prints with this
checkout's, names what is missing, and is deleted from the job list afterwards (`--no-check`
skips it).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import re
import shlex
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[1]

# Never uploaded with the working dir: environments, VCS data, local stores and caches
# (Ray also leaves out what .gitignore / .rayignore name).
EXCLUDES = [".venv", ".git", ".facerestore", "__pycache__", ".pytest_cache", "*.egg-info", "mlruns", "*.db",
            "build", "dist"]

JOB_PREFIX = "facerestore-"
CHECK_PREFIX = f"{JOB_PREFIX}check-"
CHECK_ENTRYPOINT = "facerestore version"
# How long `submit` waits for its check job; with --pip the job's first pip install happens in it.
CHECK_TIMEOUT_S, CHECK_TIMEOUT_PIP_S = 120.0, 900.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Ray 2.60's job manager re-adds a job deleted right after it ended (its monitor finds the supervisor actor
# gone and the status missing, and writes FAILED, within about a second): watch this long and delete again.
DELETE_SETTLE_S = 5.0
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")

# Environment variables a job may not be given through --env: runtime_env env vars are shown
# to anyone who can open the dashboard. Secrets belong in the cluster's own environment.
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|ACCESS_KEY|PRIVATE", re.IGNORECASE)


class JobError(RuntimeError):
    """A job cannot be submitted, found or followed; the message names the address, job or key."""


@dataclass(frozen=True)
class RunOptions:
    """The `facerestore run` options a submission passes through unchanged."""

    overrides: tuple[str, ...] = ()
    preset: str | None = None
    only: str | None = None
    start: str | None = None
    force: tuple[str, ...] = ()


@dataclass(frozen=True)
class Submission:
    job_id: str
    run_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]


def default_working_dir() -> Path | None:
    """This checkout, when the code runs from one (editable install); None for an installed package,
    whose job then runs the code of the cluster's image."""
    return PROJECT_DIR if (PROJECT_DIR / "pyproject.toml").is_file() else None


def job_server_address(address: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS (what `ray job submit` reads)."""
    found = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not found:
        raise JobError("no Ray cluster to talk to: pass --address http://HEAD:8265 (the head's job server) "
                       "or set RAY_ADDRESS=http://HEAD:8265")
    return found


def job_id_for(run_id: str) -> str:
    return f"{JOB_PREFIX}{run_id}"


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise JobError(f"run id '{run_id}' must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return run_id


def config_path_in(config: Path, working_dir: Path) -> str:
    """The config's path inside the uploaded working dir, which is where the job finds it."""
    try:
        return config.resolve().relative_to(working_dir.resolve()).as_posix()
    except ValueError:
        raise JobError(f"config {config} is outside the directory uploaded as the job's working_dir ({working_dir}): "
                       "move it under that directory (e.g. pipelines/configs/) or pass --working-dir") from None


def check_store_is_shared(store: str) -> None:
    """A relative store would land in the job's working dir, which Ray unpacks afresh per job."""
    if "://" not in store and not os.path.isabs(os.path.expanduser(store)):
        raise JobError(f"store '{store}' is a relative path: on the cluster it would resolve inside the job's "
                       "temporary working directory and be lost with it; pass --set store=s3://BUCKET/PREFIX "
                       "(or an absolute path on storage that every node mounts)")


def check_stages(stages: list[str], options: RunOptions) -> None:
    """Stage names in --only / --from / --force exist in the config (caught here, not on the cluster)."""
    for flag, names in (("--only", [options.only]), ("--from", [options.start]), ("--force", list(options.force))):
        for name in names:
            if name is not None and name not in stages:
                raise JobError(f"{flag} {name}: the config has no stage '{name}' (stages: {', '.join(stages)})")


def parse_env(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise JobError(f"--env {item!r} must look like NAME=VALUE")
        if _SECRET_NAME.search(name):
            raise JobError(f"--env {name}: a job's environment is shown in the Ray dashboard, so secrets cannot go "
                           "there; give the cluster's pods this variable (a Kubernetes Secret, see infra/)")
        env[name] = value
    return env


def entrypoint(config: str, options: RunOptions, run_id: str) -> str:
    """The shell command the job runs: `facerestore run` with the submitter's options."""
    words = ["facerestore", "run", config]
    for override in options.overrides:
        words += ["--set", override]
    if options.preset:
        words += ["--preset", options.preset]
    if options.only:
        words += ["--only", options.only]
    if options.start:
        words += ["--from", options.start]
    for name in options.force:
        words += ["--force", name]
    return shlex.join([*words, "--run-id", run_id])


def project_requirements(project_dir: Path = PROJECT_DIR) -> list[str]:
    """The dependencies pyproject.toml declares (torch first, pinned, as `make` installs it)."""
    deps = tomllib.loads((project_dir / "pyproject.toml").read_text())["project"]["dependencies"]
    return sorted(deps, key=lambda d: not d.startswith("torch"))


def runtime_env(working_dir: Path | None, pip: bool, env: dict[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if working_dir is not None:
        result.update(working_dir=str(working_dir), excludes=list(EXCLUDES))
    if pip:
        result["pip"] = project_requirements(working_dir or PROJECT_DIR)
    if env:
        result["env_vars"] = dict(env)
    return result


def build_submission(config: Path, config_name: str, store: str, stages: list[str], options: RunOptions,
                     run_id: str, working_dir: Path | None, pip: bool = False,
                     env: dict[str, str] | None = None) -> Submission:
    check_run_id(run_id)
    check_store_is_shared(store)
    check_stages(stages, options)
    path = config_path_in(config, working_dir) if working_dir is not None else str(config)
    return Submission(
        job_id=job_id_for(run_id), run_id=run_id, entrypoint=entrypoint(path, options, run_id),
        runtime_env=runtime_env(working_dir, pip, env or {}),
        metadata={"facerestore.run_id": run_id, "facerestore.config": config_name, "facerestore.store": store})


def installed_version() -> str | None:
    """The facerestore version installed in this Python environment; None when it runs uninstalled."""
    try:
        return importlib.metadata.version("facerestore")
    except importlib.metadata.PackageNotFoundError:
        return None


def checkout_version(project_dir: Path = PROJECT_DIR) -> str:
    """What the cluster must run: the installed version, else (running uninstalled) the checkout's pyproject."""
    return installed_version() or tomllib.loads((project_dir / "pyproject.toml").read_text())["project"]["version"]


_CHECK_HINT = ("start the head (`ray start`) from an activated virtualenv with facerestore installed, pass --pip "
               "to install the requirements in the job, or use the project's image (README: Run on a cluster); "
               "--no-check skips this check")


def check_verdict(job_id: str, status: str, logs: str, message: str, expected: str) -> str:
    """The head's facerestore version from the check job's outcome; JobError saying what is missing."""
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    printed = [m.group(1) for line in lines if (m := re.fullmatch(r"facerestore (\S+)", line))]
    if status == "SUCCEEDED" and printed:
        if printed[-1] != expected:
            raise JobError(f"the head runs facerestore {printed[-1]}, this checkout is {expected}: install this "
                           "version on the cluster (rebuild the image, or reinstall it in the head's virtualenv) "
                           "so the job runs with the dependencies this code expects; --no-check skips this check")
        return printed[-1]
    found = next((line for line in lines if "not found" in line and "facerestore" in line), None)
    if found:
        raise JobError(f"the head cannot run `facerestore`: {found} — {_CHECK_HINT}")
    found = next((line for line in lines if "No such command" in line and "version" in line), None)
    if found:
        raise JobError(f"the head's facerestore is older than this checkout's {expected} (it has no `version` "
                       f"command) — {_CHECK_HINT}")
    found = next((line for line in reversed(lines) if re.search(r"\w+(Error|Exception):", line)), None)
    if found:
        raise JobError(f"the head's `facerestore` cannot start: {found} — {_CHECK_HINT}")
    detail = message.strip() or (lines[-1] if lines else "no output")
    raise JobError(f"the check job {job_id} ({CHECK_ENTRYPOINT}) ended {status} without printing a version: "
                   f"{shorten_text(detail)} — {_CHECK_HINT}")


def shorten_text(text: str, width: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def auth_headers() -> dict[str, str]:
    """`Authorization: Bearer <token>` from Ray's own token sources; none when auth is disabled or no token exists."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    loader = AuthenticationTokenLoader.instance()
    try:
        token = loader.get_raw_token(ignore_auth_mode=True) if loader.has_token(ignore_auth_mode=True) else ""
    except AuthenticationError as err:
        raise JobError(f"cannot read the Ray auth token: {err.message}") from None
    return {"Authorization": f"Bearer {token.strip()}"} if token.strip() else {}


@contextmanager
def _address_wins(address: str) -> Iterator[None]:
    """Ray's client lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override its address argument; make ours win."""
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


_AUTH_HINT = ("set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token: `ray get-auth-token` on the "
              "head, or on KubeRay `kubectl get secret CLUSTER -o jsonpath='{.data.auth_token}' | base64 -d`")


@contextmanager
def _talking_to(address: str, what: str, job_id: str | None = None) -> Iterator[None]:
    """Turn the job client's exceptions into one JobError that names the address and what failed."""
    import aiohttp
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as err:
        raise JobError(f"the job server at {address} refused the request ({what}): "
                       f"{err.message.splitlines()[0]}; {_AUTH_HINT}") from None
    except (ConnectionError, requests.exceptions.ConnectionError, aiohttp.ClientConnectionError) as err:
        raise JobError(f"cannot reach a Ray job server at {address} ({what}): {err}; is the head up and its "
                       "dashboard port (8265) reachable?") from None
    except RuntimeError as err:
        text = str(err)
        if job_id is not None and ("status code 404" in text or "does not exist" in text):
            raise JobError(f"no job '{job_id}' on the job server at {address}") from None
        raise JobError(f"the job server at {address} failed ({what}): {text}") from None


class _KnownNotice(logging.Filter):
    """Ray warns on every upload that .git / .venv are no longer uploaded: we exclude them anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is now ignored by default when packaging" not in record.getMessage()


def _quiet_ray_client() -> None:
    """The job client's INFO lines (packaging, websocket closed) would bury the ids `submit` prints."""
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)
    working_dir = logging.getLogger("ray._private.runtime_env.working_dir")
    if not any(isinstance(f, _KnownNotice) for f in working_dir.filters):
        working_dir.addFilter(_KnownNotice())


class Jobs:
    """The job server of one cluster."""

    def __init__(self, address: str | None):
        self.address = job_server_address(address)
        from ray.job_submission import JobSubmissionClient

        _quiet_ray_client()

        with _talking_to(self.address, "connecting"), _address_wins(self.address):
            self.client = JobSubmissionClient(self.address, headers=auth_headers())

    def submit(self, submission: Submission) -> str:
        with _talking_to(self.address, f"submitting job {submission.job_id}"):
            return self.client.submit_job(entrypoint=submission.entrypoint, submission_id=submission.job_id,
                                          runtime_env=submission.runtime_env, metadata=submission.metadata)

    def status(self, job_id: str) -> str:
        with _talking_to(self.address, f"job '{job_id}'", job_id):
            return str(self.client.get_job_status(job_id).value)

    def logs(self, job_id: str) -> str:
        with _talking_to(self.address, f"job '{job_id}'", job_id):
            return self.client.get_job_logs(job_id)

    def follow(self, job_id: str, write: Callable[[str], object]) -> str:
        """Stream the job's logs through `write` until it ends; its final status."""
        self.status(job_id)  # a missing job fails here with a clear message, not inside the websocket

        async def stream() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                write(chunk)

        with _talking_to(self.address, f"following job '{job_id}'", job_id):
            asyncio.run(stream())
        return self.status(job_id)

    def stop(self, job_id: str) -> bool:
        """True if a running job was asked to stop; False if it had already ended."""
        with _talking_to(self.address, f"job '{job_id}'", job_id):
            return bool(self.client.stop_job(job_id))

    def delete(self, job_id: str) -> bool:
        """Remove an ended job from the job list (its log files stay on the head)."""
        with _talking_to(self.address, f"deleting job '{job_id}'", job_id):
            return bool(self.client.delete_job(job_id))

    def delete_for_good(self, job_id: str, settle_s: float = DELETE_SETTLE_S, poll_s: float = 0.25) -> None:
        """Delete an ended job, and again if Ray's job manager puts it back (see DELETE_SETTLE_S)."""
        self.delete(job_id)
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            try:
                self.status(job_id)
            except JobError:
                continue  # still gone
            self.delete(job_id)  # put back by the job manager's last look at it, which it does only once
            return

    def check_head(self, submission: Submission, timeout_s: float, poll_s: float = 0.5,
                   expected: str | None = None, settle_s: float = DELETE_SETTLE_S) -> str:
        """Run `facerestore version` as a job with the submission's runtime_env and wait for it (at most
        `timeout_s`); the head's facerestore version, or JobError saying what the head lacks."""
        expected = expected or checkout_version()
        job_id = f"{CHECK_PREFIX}{submission.run_id}"
        with _talking_to(self.address, f"submitting the check job {job_id}"):
            self.client.submit_job(entrypoint=CHECK_ENTRYPOINT, submission_id=job_id,
                                   runtime_env=submission.runtime_env,
                                   metadata={"facerestore.check_for": submission.job_id})
        deadline = time.monotonic() + timeout_s
        while (status := self.status(job_id)) not in TERMINAL:
            if time.monotonic() >= deadline:
                self.stop(job_id)  # left in the job list: its logs show where it got stuck
                raise JobError(f"the check job {job_id} ({CHECK_ENTRYPOINT}) did not finish within {timeout_s:g} s "
                               f"(still {status}); see `facerestore logs {job_id} --address {self.address}`, "
                               "pass a longer --check-timeout, or --no-check to skip the check")
            time.sleep(poll_s)
        logs = self.logs(job_id)
        with _talking_to(self.address, f"job '{job_id}'", job_id):
            message = self.client.get_job_info(job_id).message or ""
        try:
            self.delete_for_good(job_id, settle_s)
        except JobError:
            pass  # a probe left in the job list is clutter, not a reason to refuse the submission
        return check_verdict(job_id, status, logs, message, expected)
