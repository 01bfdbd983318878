"""The pipeline on a real two-node Ray cluster on this machine: branches in parallel across the
nodes, and a node lost mid-training. (A killed driver whose rerun takes its lease over:
tests/integration/test_faults.py, on one node.)

The cluster: a head (`ray start --head`, tests/integration/ray_head.py) and a second node
(`ray start --address`), each with its own temp dir, object store and session, token auth. The
second node listens on 127.0.0.2 (Ray puts the head on this machine's own address), so the two
have different IPs, as two machines would, and the run record's `nodes` tells them apart. The
store is in a bucket of moto's S3-protocol server, the runs are tracked by a plain `mlflow
server`; both nodes hold the S3 endpoint and keys, as a cluster's pods would. Each driver is
`facerestore run CONFIG --address <gcs>` in a subprocess, as a user runs it.

CPUs: 3 on each node. Two worker groups of 2 x 1 CPU (the two branches) then cannot share a
node (4 > 3), so the CPU counts alone put one trainer on each, each leaving a CPU for Ray Data's
decode tasks; and once the second node is lost, the head alone still fits one group plus that
free CPU (2 + 1). A free CPU matters: a group holding every CPU left would starve its own input.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config
from pipelines.runner import plan
from pipelines.store import Store
from tests.integration.ray_head import (ROOT, Head, WorkerNode, cluster_nodes, running_head, running_worker_node,
                                        stop_session)
from tests.integration.servers import Server, restartable_tracking_server, s3_server
from tests.integration.tiny import wait_for_checkpoint, write_tiny_config

pytestmark = pytest.mark.integration

HEAD_CPUS = WORKER_CPUS = 3  # why 3 and 3: the module docstring
WORKER_IP = "127.0.0.2"
BUCKET = "two-nodes"
STEPS, EVERY = 40, 10  # the fault tests: a checkpoint every 10 steps, 30 steps of room to land each fault
DRIVER_TIMEOUT_S = 420  # a run that hangs (the old code's lost object) fails the test instead of waiting forever


@dataclass
class Cluster:
    head: Head
    head_ip: str
    s3: Server
    tracking_url: str
    env: dict[str, str]  # a user's shell: the Ray token, S3 endpoint and keys, MLFLOW_TRACKING_URI
    directory: Path
    stack: ExitStack
    worker: WorkerNode | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def ensure_worker(self) -> WorkerNode:
        """The second node, started again if a test killed it."""
        if self.worker is None or self.worker.process.poll() is not None:
            began = time.time()
            self.worker = self.stack.enter_context(
                running_worker_node(self.head, WORKER_CPUS, WORKER_IP, env=self.env_for_nodes()))
            self.timings["worker node start s"] = round(time.time() - began, 1)
        return self.worker

    def env_for_nodes(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if k.startswith(("AWS_", "MLFLOW_"))}

    def store(self, name: str) -> str:
        return f"s3://{BUCKET}/{name}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("two-nodes")
    with ExitStack() as stack:
        began = time.time()
        s3 = stack.enter_context(s3_server(directory))
        (directory / "mlflow").mkdir()
        tracking = stack.enter_context(restartable_tracking_server(directory / "mlflow"))
        settings = {"AWS_ENDPOINT_URL": s3.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": tracking.url}
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        for name, value in settings.items():  # this process reads the bucket as the user does
            mp.setenv(name, value)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        head = stack.enter_context(running_head(num_cpus=HEAD_CPUS, env=settings))
        started = Cluster(head, head_ip(head), s3, tracking.url, {**head.env, "COLUMNS": "200"}, directory, stack)
        started.timings["servers and head start s"] = round(time.time() - began, 1)
        assert started.head_ip != WORKER_IP
        started.ensure_worker()
        yield started
        print("timings:", started.timings)


def head_ip(head: Head, timeout: float = 60) -> str:
    """The head's IP as its GCS lists it (Ray replaces 127.0.0.1 by this machine's own address)."""
    deadline = time.time() + timeout
    while True:
        heads = [n["node_ip"] for n in cluster_nodes(head) if n.get("is_head_node") and n["state"] == "ALIVE"]
        if heads:
            return heads[0]
        assert time.time() < deadline, f"the head is not in its own node list after {timeout}s: {cluster_nodes(head)}"
        time.sleep(0.5)


def tiny_config(directory: Path, store: str, stages: Callable[[dict], dict], **execution) -> Path:
    """The tiny demo's synthesize stage (160 faces of 32 px, 2 shards) and the stages `stages(train)`
    makes of the tiny demo's train stage (2 workers, batch 16, a 16-wide U-Net, STEPS steps)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_tiny_config(directory, steps=STEPS)
    raw = yaml.safe_load(path.read_text())
    raw["store"] = store
    synthesize = {**raw["stages"]["synthesize"], "source": {"kind": "procedural", "count": 160}}
    train = {**raw["stages"]["train_baseline"], "workers": 2, "checkpoint_every": EVERY, "log_every": 5}
    raw["stages"] = {"synthesize": synthesize, **stages(train)}
    # A stage that hangs (a worker group that can never be placed) fails instead of waiting forever.
    raw["execution"] = {"stall_timeout_s": 180, **execution}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def fingerprint(config: Path, stage: str) -> str:
    return {e.stage.name: e.fingerprint for e in plan(load_config(config))}[stage]


@contextmanager
def driving(cluster: Cluster, config: Path, log: Path) -> Iterator[subprocess.Popen]:
    """`facerestore run CONFIG --address <gcs>`, its output appended to `log`; killed if still running
    when the block ends (a failed test leaves no driver behind)."""
    with log.open("a") as out:
        driver = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(config), "--address", cluster.head.gcs],
                                  cwd=ROOT, env=cluster.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield driver
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()


def finish(driver: subprocess.Popen, log: Path) -> str:
    """The driver's output once it exited; a driver still running after DRIVER_TIMEOUT_S fails the test."""
    try:
        driver.wait(timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the run still ran after {DRIVER_TIMEOUT_S} s:\n{log.read_text()[-6000:]}") from None
    return log.read_text()


def only_run(store: Store) -> dict:
    runs = store.list_runs()
    assert len(runs) == 1, [r["run_id"] for r in runs]
    return runs[0]


def actor_ips(cluster: Cluster, class_name: str) -> list[str]:
    """The IPs of the nodes where the live actors of `class_name` are (state API)."""
    request = urllib.request.Request(
        f"{cluster.head.url}/api/v0/actors?limit=1000&filter_keys=class_name&filter_predicates=%3D"
        f"&filter_values={class_name}&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE",
        headers={"Authorization": f"Bearer {cluster.head.env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        actors = json.load(response)["data"]["result"]["result"]
    ips = {n["node_id"]: n["node_ip"] for n in cluster_nodes(cluster.head)}
    return sorted(ips.get(a["node_id"], a["node_id"]) for a in actors)


HOLD = """
import sys, ray
from ray.util.placement_group import placement_group, remove_placement_group
ray.init(address=sys.argv[1], log_to_driver=False)
group = placement_group([{"CPU": float(sys.argv[3]), "node:" + sys.argv[2]: 0.001}])
ray.get(group.ready(), timeout=120)
print("held", flush=True)
sys.stdin.read()
remove_placement_group(group)
"""


@contextmanager
def holding_cpus(cluster: Cluster, node_ip: str, cpus: int) -> Iterator[Callable[[], None]]:
    """A driver of its own holds `cpus` CPUs of node `node_ip` in a placement group until the release
    it yields is called (or the block ends): work that needs more than the rest goes elsewhere."""
    log = cluster.directory / "holder.log"
    with log.open("a") as errors:
        holder = subprocess.Popen([sys.executable, "-c", HOLD, cluster.head.gcs, node_ip, str(cpus)], cwd=ROOT,
                                  env=cluster.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                                  text=True, start_new_session=True)

    def release() -> None:
        if holder.poll() is None:
            holder.stdin.close()  # the holder removes its placement group and exits
            try:
                holder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        stop_session(holder)
        holder.stdout.close()

    try:
        line = holder.stdout.readline()  # "" if it exited
        assert line.strip() == "held", f"the CPU holder did not get its CPUs:\n{log.read_text()[-3000:]}"
        yield release
    finally:
        release()


def overlap(a: dict, b: dict) -> float:
    return min(a["finished_at"], b["finished_at"]) - max(a["started_at"], b["started_at"])


def test_two_independent_training_branches_run_at_once_across_both_nodes_and_the_record_names_the_nodes(cluster):
    from mlflow.tracking import MlflowClient

    cluster.ensure_worker()
    config = tiny_config(cluster.directory / "branches", cluster.store("branches"), lambda train: {
        "train_a": {**train, "steps": 20, "checkpoint_every": 20, "val_every": 20},
        "train_b": {**train, "steps": 20, "checkpoint_every": 20, "val_every": 20, "seed": 1},
        "evaluate": {"needs": ["synthesize", "train_a", "train_b"]},
    })
    log = cluster.directory / "branches.log"
    began = time.time()
    with driving(cluster, config, log) as driver:
        output = finish(driver, log)
    cluster.timings["branches run s"] = round(time.time() - began, 1)
    record = only_run(Store(load_config(config).store))
    cluster.timings["branches stage s"] = {n: i.get("duration_s") for n, i in record["stages"].items()}
    assert record["state"] == "finished", output[-6000:]
    stages = record["stages"]
    assert {name: info["state"] for name, info in stages.items()} == dict.fromkeys(stages, "finished")
    assert overlap(stages["train_a"], stages["train_b"]) > 0  # at once, not one after the other
    assert stages["evaluate"]["started_at"] >= max(stages["train_a"]["finished_at"], stages["train_b"]["finished_at"])
    both = {cluster.head_ip, WORKER_IP}
    for name, info in stages.items():
        assert info["nodes"] and set(info["nodes"]) <= both, (name, info.get("nodes"))
    # The two worker groups do not fit on one node: the record shows the trainings on both.
    assert set(stages["train_a"]["nodes"]) | set(stages["train_b"]["nodes"]) == both, stages
    assert stages["evaluate"]["nodes"] == [cluster.head_ip]  # scored in the stage's own task, on the driver's node
    client = MlflowClient(cluster.tracking_url)
    assert record["tracking_uri"] == cluster.tracking_url
    assert client.get_run(record["mlflow_run_id"]).info.status == "FINISHED"
    assert {client.get_run(info["mlflow_run_id"]).info.status for info in stages.values()} == {"FINISHED"}


def test_a_node_lost_mid_training_the_stage_finishes_from_its_last_checkpoint_on_the_head(cluster):
    worker = cluster.ensure_worker()
    config = tiny_config(cluster.directory / "node-loss", cluster.store("node-loss"), lambda train: {
        "train": {**train, "retries": 1, "retry_backoff_s": 1},
    })
    store = Store(load_config(config).store)
    run_name = f"train-{fingerprint(config, 'train')}"
    log = cluster.directory / "node-loss.log"
    # The head's CPUs but one are held until the first checkpoint: the group of 2 can only be placed
    # on the second node. Released as that node is killed, so that the head can take the group over.
    with holding_cpus(cluster, cluster.head_ip, HEAD_CPUS - 1) as release, driving(cluster, config, log) as driver:
        began = time.time()
        killed_at = wait_for_checkpoint(store, run_name, EVERY, STEPS, lambda: driver.poll() is None, log.read_text)
        cluster.timings["node-loss: start -> first checkpoint s"] = round(time.time() - began, 1)
        # The runner's progress board stays on the driver's node (Ray would put it on the idle one).
        boards = actor_ips(cluster, "ProgressBoard")
        killed = worker.kill()
        dead_since = time.time()
        release()
        assert boards == [cluster.head_ip], boards
        placed = only_run(store)["stages"]["train"].get("nodes")
        assert placed and placed[0] == WORKER_IP, f"the worker group was not on the second node: {placed}"
        output = finish(driver, log)
        cluster.timings["node-loss: kill -> run done s"] = round(time.time() - dead_since, 1)
    assert driver.returncode == 0, output[-6000:]
    assert killed and not any(n["node_ip"] == WORKER_IP and n["state"] == "ALIVE" for n in cluster_nodes(cluster.head))
    record = only_run(store)
    train = record["stages"]["train"]
    assert record["state"] == "finished" and train["state"] == "finished", train
    assert train["metrics"]["step"] == STEPS
    resumed = train["metrics"]["resumed_from"]
    assert resumed % EVERY == 0 and EVERY <= killed_at <= resumed < STEPS, (killed_at, resumed)
    # It ran on the second node, then on what was left: the head.
    assert train["nodes"] == [WORKER_IP, cluster.head_ip], train["nodes"]
    cluster.timings["node-loss: killed at checkpoint"] = killed_at
    cluster.timings["node-loss: resumed from"] = resumed
    cluster.timings["node-loss: attempts"] = len(train["attempts"])
