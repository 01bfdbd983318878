"""The runner as a DAG executor on the shared local Ray: independent stages at once, a failure
that stays in its branch, a rerun of what failed with `--max-parallel 1`, and a stage retried
after its process was killed."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from rich.console import Console

from pipelines.config import load_config
from pipelines.runner import RETRY_AFTER_CANCEL_S, RunFailed, Runner, plan
from pipelines.store import Store
from tests.integration.tiny import write_tiny_config

pytestmark = pytest.mark.integration


def branching_config(directory: Path, steps: int = 20) -> Path:
    """synthesize -> train_a, train_b, train_bad (independent, one worker each); evaluate_ab scores a
    and b, evaluate all three, register_bad registers train_bad, whose batch is larger than the split:
    its loop raises, an error of the config (not retried, whatever `retries` says)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_tiny_config(directory, steps=steps)
    raw = yaml.safe_load(path.read_text())
    # No validation: these stages check the DAG, and a rerun sets its own `steps` (train_b.steps=10).
    train = {**raw["stages"]["train_baseline"], "workers": 1, "checkpoint_every": steps, "val_every": None,
             "select": "last"}
    raw["stages"] = {
        "synthesize": raw["stages"]["synthesize"],
        "train_a": train,
        "train_b": {**train, "seed": 1, "method_config": {"width": 8, "depth": 2, "lr": 1.0e-3}},
        "train_bad": {**train, "batch_size": 4096, "retries": 2, "retry_backoff_s": 0, "method_config": {"width": 8, "depth": 2, "lr": 1.0e-3}},
        "evaluate_ab": {"kind": "evaluate", "needs": ["synthesize", "train_a", "train_b"]},
        "evaluate": {"needs": ["synthesize", "train_a", "train_b", "train_bad"]},
        "register_bad": {"kind": "register", "needs": ["train_bad", "evaluate"]},
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(config: Path, *overrides: str, **options) -> dict:
    return Runner(load_config(config, list(overrides)), console=Console(file=io.StringIO(), width=200), **options).run()


def interval(record: dict, stage: str) -> tuple[float, float]:
    info = record["stages"][stage]
    return info["started_at"], info["finished_at"]


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return min(a[1], b[1]) - max(a[0], b[0])


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory, ray_address):
    config = branching_config(tmp_path_factory.mktemp("dag"))
    with pytest.raises(RunFailed) as failure:
        run(config)
    return config, failure.value, Store(load_config(config).store).load_run(failure.value.run_id)


def test_independent_training_stages_run_at_the_same_time_and_their_consumer_waits_for_both(failed_run):
    _, _, record = failed_run
    a, b = interval(record, "train_a"), interval(record, "train_b")
    assert overlap(a, b) > 0.5 * min(a[1] - a[0], b[1] - b[0])
    assert interval(record, "evaluate_ab")[0] >= max(a[1], b[1])
    assert min(a[0], b[0]) >= interval(record, "synthesize")[1]


def test_a_failed_branch_blocks_only_its_consumers_and_the_run_fails_naming_them(failed_run):
    _, failure, record = failed_run
    assert list(failure.failed) == ["train_bad"] and "yields no batch" in failure.failed["train_bad"]
    assert failure.blocked == ["evaluate", "register_bad"]
    states = {name: info["state"] for name, info in record["stages"].items()}
    assert states == {"synthesize": "finished", "train_a": "finished", "train_b": "finished", "train_bad": "failed",
                      "evaluate_ab": "finished", "evaluate": "blocked", "register_bad": "blocked"}
    assert record["state"] == "failed" and record["stages"]["register_bad"]["blocked_by"] == ["train_bad"]
    attempts = record["stages"]["train_bad"]["attempts"]
    assert len(attempts) == 1 and not attempts[0]["retryable"]  # a config error is not retried


def test_the_record_names_each_stage_s_nodes_and_attempts_and_mlflow_holds_the_timeline(failed_run):
    import ray
    from mlflow.tracking import MlflowClient

    _, _, record = failed_run
    ips = {node["NodeManagerAddress"] for node in ray.nodes()}
    for name in ("synthesize", "train_a", "train_b", "evaluate_ab"):
        info = record["stages"][name]
        assert info["nodes"] and set(info["nodes"]) <= ips, name
        assert [a["attempt"] for a in info["attempts"]] == [1] and info["attempts"][0]["error"] is None
    artifacts = {a.path for a in MlflowClient(record["tracking_uri"]).list_artifacts(record["mlflow_run_id"])}
    assert "timeline.png" in artifacts


def test_a_rerun_redoes_what_failed_and_what_changed_one_stage_at_a_time_with_max_parallel_one(failed_run):
    config, _, _ = failed_run
    fixed = ("train_bad.batch_size=16", "train_b.steps=10")
    again = {e.stage.name: e.will_run for e in plan(load_config(config, list(fixed)))}
    assert again == {"synthesize": False, "train_a": False, "train_b": True, "train_bad": True,
                     "evaluate_ab": True, "evaluate": True, "register_bad": True}
    record = run(config, *fixed, max_parallel=1)
    assert record["state"] == "finished" and record["max_parallel"] == 1
    ran = [name for name, info in record["stages"].items() if info["state"] == "finished"]
    assert ran == ["train_b", "train_bad", "evaluate_ab", "evaluate", "register_bad"]
    spans = sorted(interval(record, name) for name in ran)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))


def stage_processes(stage_function: str = "_run_stage") -> list[psutil.Process]:
    """The Ray worker processes of this test session running a stage's task (found by process title
    among our own descendants: the shared Ray's raylet is a child of this process)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if f"ray::{stage_function}" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_a_stage_whose_process_dies_is_retried_and_the_attempts_are_recorded(tmp_path, ray_address):
    from mlflow.tracking import MlflowClient

    config = branching_config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["stages"] = {"synthesize": {**raw["stages"]["synthesize"], "retries": 1, "retry_backoff_s": 1,
                                    "source": {"kind": "procedural", "count": 960}, "shard_size": 40}}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    killed: list[int] = []

    def kill_the_stage_once_it_runs() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for proc in stage_processes():
                proc.kill()  # as the OOM killer would
                killed.append(proc.pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_stage_once_it_runs)
    killer.start()
    record = run(config)
    killer.join()
    assert killed, "the stage's process was never seen"
    info = record["stages"]["synthesize"]
    assert record["state"] == "finished" and info["state"] == "finished"
    first, second = info["attempts"]
    assert first["retryable"] and "WorkerCrashedError" in first["error"] and second["error"] is None
    assert second["started_at"] >= first["finished_at"] + 1  # the backoff
    tags = MlflowClient(record["tracking_uri"]).get_run(info["mlflow_run_id"]).data.tags
    assert "WorkerCrashedError" in tags["facerestore.attempt_1.error"]
    shards = Store(load_config(config).store).artifact("synthesize", info["fingerprint"])
    assert shards.manifest["count"] == 960


def test_a_stage_without_progress_is_stopped_as_stalled_retried_and_frees_its_cpus(tmp_path, ray_address):
    import ray

    config = branching_config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    # One shard of 2,000 faces at 64 px: tens of seconds with no progress report before it is written,
    # so a 2 s limit stalls each attempt at the runner's next look. (A synthesis stage, not a training
    # one: a training stage cancelled while Ray Train still starts its worker group leaves that group's
    # placement group held until the driver exits; docs/pipeline.md, "Retries".)
    raw["stages"] = {"synthesize": {**raw["stages"]["synthesize"], "source": {"kind": "procedural", "count": 2000},
                                    "shard_size": 2000, "resolution": 64, "retries": 1, "retry_backoff_s": 0,
                                    "stall_timeout_s": 2}}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(RunFailed) as failure:
        run(config)
    assert list(failure.value.failed) == ["synthesize"] and "StageStalled" in failure.value.failed["synthesize"]
    attempts = Store(load_config(config).store).load_run(failure.value.run_id)["stages"]["synthesize"]["attempts"]
    assert len(attempts) == 2 and all(a["retryable"] and "no progress for" in a["error"] for a in attempts)
    # The retry waited out the cancel's kill of the first attempt's worker, whatever its backoff.
    assert attempts[1]["started_at"] >= attempts[0]["finished_at"] + RETRY_AFTER_CANCEL_S
    deadline = time.time() + 60  # the cancelled shard task's CPU goes back to the cluster
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.time() < deadline:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
