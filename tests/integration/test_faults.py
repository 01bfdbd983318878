"""Faults on a real Ray head, `ray start --head` on 127.0.0.1 (tests/integration/ray_head.py).

- A Ray worker running a synthesis task (`make_shard`) is killed: Ray retries the task and the
  shards come out byte-identical to a clean write, every row once.
- A Ray Train worker is killed once a checkpoint exists: FailureConfig restarts the worker
  group from that checkpoint and the stage finishes; its manifest's resumed_from says where.
- A submitted job's driver (`facerestore run`) is killed mid-training: resubmitting the config
  skips the finished synthesis and training continues from its checkpoint.

Ray workers are found by their process titles (`ray::make_shard`, `ray::RayTrainWorker...`)
among the processes of our head's session, a job's driver by the run id in its command line,
and each is killed with SIGKILL, as the OOM killer or a lost node would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from pipelines.config import load_config
from pipelines.runner import plan
from pipelines.store import Store
from tests.integration.ray_head import ROOT, Head, follow, running_head, session_processes, submit
from tests.integration.tiny import wait_for_checkpoint, write_tiny_config

pytestmark = pytest.mark.integration

STEPS, EVERY = 160, 20  # training steps, checkpoint interval: 140 steps (~14 s) of room to land each fault


@pytest.fixture(scope="module")
def head():
    # Four logical CPUs on two cores: two train workers plus Ray Data's read tasks (two would hang).
    with running_head(num_cpus=4) as started:
        yield started


def training_config(directory: Path, store: Path) -> Path:
    """The tiny demo's synthesize and train stages (4 shards of 80 faces, 60 steps): what the faults hit."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_tiny_config(directory, steps=STEPS)
    raw = yaml.safe_load(path.read_text())
    raw["store"] = str(store)
    raw["stages"]["train_baseline"]["checkpoint_every"] = EVERY
    raw["stages"] = {name: raw["stages"][name] for name in ("synthesize", "train_baseline")}
    # A killed driver's stage lease must expire before a resubmitted run takes the stage over.
    raw["execution"] = {"lease_ttl_s": 15}
    path.write_text(yaml.safe_dump(raw))
    return path


def fingerprints(config: Path) -> dict[str, str]:
    return {e.stage.name: e.fingerprint for e in plan(load_config(config))}


def kill_titled(head: Head, title: str, running: Callable[[], bool], timeout: float = 300) -> int:
    """SIGKILL the first process of the head whose title starts with `title`; its pid."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in session_processes(head.process.pid):
            try:
                if " ".join(proc.cmdline()).startswith(title):
                    proc.kill()
                    return proc.pid
            except psutil.Error:
                continue
        assert running(), f"the run ended before a '{title}' process showed up"
        time.sleep(0.1)
    raise AssertionError(f"no '{title}' process on the head within {timeout}s")


@dataclass
class FaultyRun:
    config: Path
    store: Store
    checkpoint_at_kill: int
    returncode: int
    output: str


@pytest.fixture(scope="module")
def faulty_run(head, tmp_path_factory) -> FaultyRun:
    """One `facerestore run` joined to the head: a synthesis worker killed, then a train worker."""
    directory = tmp_path_factory.mktemp("faults")
    config = training_config(directory, directory / "store")
    store = Store(load_config(config).store)
    run_name = f"train_baseline-{fingerprints(config)['train_baseline']}"
    log = directory / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(config)], cwd=ROOT,
                                  env={**head.env, "RAY_ADDRESS": head.gcs, "COLUMNS": "200"},
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    running = lambda: driver.poll() is None  # noqa: E731
    try:
        kill_titled(head, "ray::make_shard", running)
        checkpoint = wait_for_checkpoint(store, run_name, EVERY, STEPS, running, log.read_text, timeout=420)
        kill_titled(head, "ray::RayTrainWorker", running, timeout=30)
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    return FaultyRun(config, store, checkpoint, driver.returncode, log.read_text())


def clean_shards(config: Path, directory: Path) -> list[tuple[str, list[str]]]:
    """(sha256, ids) of each shard written by the synthesis code itself, in this process, no Ray, no fault."""
    from components.data.samples import make_rows
    from components.data.shards import read_shards, write_shard
    from components.data.sources import list_items
    from pipelines.stages.synthesize import shard_path, source_images

    cfg = load_config(config).stages["synthesize"].config
    items = list_items(cfg.source)[: cfg.limit]
    shards = []
    for index in range(0, len(items), cfg.shard_size):
        images, skipped = source_images(items[index:index + cfg.shard_size], cfg.seed, cfg.resolution, cfg.limits)
        uri = str(directory / shard_path(index // cfg.shard_size))
        info = write_shard(make_rows(images, cfg.seed, cfg), uri, skipped=skipped)
        shards.append((info.sha256, read_shards([uri], columns=["id"]).column("id").to_pylist()))
    return shards


def test_a_killed_synthesis_task_is_retried_and_its_shards_match_a_clean_write_row_for_row(faulty_run, tmp_path):
    from components.data.shards import read_shards

    assert faulty_run.returncode == 0, faulty_run.output[-4000:]
    synthesized = faulty_run.store.artifact("synthesize", fingerprints(faulty_run.config)["synthesize"])
    entries = synthesized.manifest["details"]["shards"]
    written = [(e["sha256"], read_shards([synthesized.path(e["path"])], columns=["id"]).column("id").to_pylist())
               for e in entries]
    ids = [i for _, shard in written for i in shard]
    assert len(ids) == len(set(ids)) == synthesized.manifest["count"] == 320  # no duplicate, no missing row
    assert "Task make_shard failed" in faulty_run.output and "will be retried" in faulty_run.output  # Ray's own word
    assert written == clean_shards(faulty_run.config, tmp_path)


def test_a_killed_train_worker_restarts_the_group_from_its_last_checkpoint_and_the_stage_finishes(faulty_run):
    assert faulty_run.returncode == 0, faulty_run.output[-4000:]
    train = faulty_run.store.artifact("train_baseline", fingerprints(faulty_run.config)["train_baseline"])
    assert train.manifest["metrics"]["step"] == STEPS
    # The restarted group started from the checkpoint registered before the kill (or a later one
    # registered in the instant between), not from step 0.
    resumed_from = train.manifest["details"]["resumed_from"]
    assert resumed_from % EVERY == 0 and EVERY <= faulty_run.checkpoint_at_kill <= resumed_from <= STEPS


def still_running(store: Store, run_id: str) -> bool:
    """A submitted run that has not written its record yet is still starting."""
    from components import storage

    return not storage.exists(store.run_uri(run_id)) or store.load_run(run_id)["state"] == "running"


def kill_driver(run_id: str) -> list[int]:
    """SIGKILL the job's driver: the processes whose command line carries this (unique) run id."""
    killed = []
    for proc in psutil.process_iter():
        try:
            words = proc.cmdline()
            if "--run-id" in words and run_id in words and "run" in words:
                proc.kill()
                killed.append(proc.pid)
        except psutil.Error:
            continue
    return killed


def test_resubmission_after_the_job_driver_was_killed_skips_synthesis_and_continues_training_from_its_checkpoint(
        head, tmp_path):
    config = training_config(tmp_path / "project", tmp_path / "store")
    store = Store(load_config(config).store)
    run_name = f"train_baseline-{fingerprints(config)['train_baseline']}"
    job_id, run_id = submit(head, str(config), "--working-dir", str(config.parent))
    checkpoint = wait_for_checkpoint(store, run_name, EVERY, STEPS, lambda: still_running(store, run_id), timeout=420)
    assert kill_driver(run_id), f"no process of run {run_id} found"
    killed = follow(head, job_id)
    assert killed.returncode == 1 and f"job {job_id}: FAILED" in killed.stderr, killed.stdout + killed.stderr
    assert store.load_run(run_id)["stages"]["train_baseline"]["state"] == "running"  # the driver died mid-stage

    dead_run = run_id
    job_id, run_id = submit(head, str(config), "--working-dir", str(config.parent))
    resumed = follow(head, job_id, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr
    stages = store.load_run(run_id)["stages"]
    assert stages["synthesize"]["state"] == "cached"
    train = stages["train_baseline"]
    assert train["state"] == "finished" and "previous output is incomplete (interrupted run)" in train["reasons"]
    assert train["lease_taken_over_from"] == dead_run
    assert train["metrics"]["step"] == STEPS
    assert train["metrics"]["resumed_from"] % EVERY == 0 and EVERY <= checkpoint <= train["metrics"]["resumed_from"] <= STEPS
