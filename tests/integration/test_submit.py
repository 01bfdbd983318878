"""`facerestore submit / logs / status / stop` against a real Ray head with its job server.

The head is our own `ray start --head --block` on 127.0.0.1 with its own temp dir, free ports
and token authentication (RAY_AUTH_MODE=token, a fresh RAY_AUTH_TOKEN), not the shared in-process
Ray of tests/conftest.py. It is stopped by signalling the processes it started (its session),
never by `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
from pathlib import Path

import pytest
import yaml

from pipelines.store import Store
from tests.integration.ray_head import (facerestore, follow, head, job_ids, running_head,  # noqa: F401 (head: a fixture)
                                        submit)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
DEMO = ROOT / "pipelines" / "configs" / "demo.yaml"
TINY = ["--set", "synthesize.source.count=24", "--set", "synthesize.shard_size=12", "--set", "synthesize.resolution=32"]


def one_stage_config(directory: Path, store: Path) -> Path:
    """The demo's synthesize stage alone: the same section, so the same fingerprint as in the demo."""
    raw = yaml.safe_load(DEMO.read_text())
    raw.update(name="synth-only", store=str(store), stages={"synthesize": raw["stages"]["synthesize"]})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "synth.yaml").write_text(yaml.safe_dump(raw))
    return directory / "synth.yaml"


def test_a_head_that_cannot_run_facerestore_is_refused_before_any_pipeline_job_is_sent(tmp_path):
    """Started as `.venv/bin/ray start` without activating the virtualenv, the head has no `facerestore`
    on its PATH: the job would fail only on the cluster. First in the file, so it has its head to itself."""
    with running_head(num_cpus=1, venv_on_path=False) as bare:
        assert shutil.which("facerestore", path=bare.env["PATH"]) is None  # else this head could run it
        done = facerestore(bare, "submit", str(DEMO), "--set", f"store={tmp_path}/store", *TINY, "--only",
                           "synthesize", "--address", bare.url)
        listed = job_ids(bare)
        time.sleep(3)  # Ray's job manager puts a job deleted right after it ended back within ~2 s
        listed_later = job_ids(bare)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the head cannot run `facerestore`: /bin/sh: 1: facerestore: not found" in done.stdout
    assert "activated virtualenv" in done.stdout and "--pip" in done.stdout and "--no-check" in done.stdout
    assert "job id:" not in done.stdout
    assert listed == [] and listed_later == []  # no pipeline job, and the check job deleted for good
    assert not (tmp_path / "store" / "runs").exists()


@pytest.fixture(scope="module")
def first_job(head, tmp_path_factory):
    store = tmp_path_factory.mktemp("submit") / "store"
    job_id, run_id = submit(head, str(DEMO), "--set", f"store={store}", *TINY, "--only", "synthesize")
    followed = follow(head, job_id)
    return store, job_id, run_id, followed


def test_submit_prints_a_job_id_derived_from_the_pipeline_run_id(first_job, head):
    _, job_id, run_id, _ = first_job
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", run_id)
    assert job_id == f"facerestore-{run_id}"
    listed = job_ids(head)
    assert job_id in listed and f"facerestore-check-{run_id}" not in listed  # the check passed and was deleted


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
