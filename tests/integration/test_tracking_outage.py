"""The MLflow tracking server blinks while a stage trains: training goes on, the metrics of the outage
arrive once the server is back, the run finishes.

A real plain `mlflow server` (SQLite backend, --serve-artifacts) on 127.0.0.1; `facerestore run` in a
subprocess, as a user runs it, on the session's shared Ray with MLFLOW_TRACKING_URI pointing at the
server. Once rank 0's first loss reached the server, the server is stopped (its whole session), left
down for OUTAGE_S, and started again on the same port with the same database.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import pytest
import yaml

from pipelines.store import Store
from tests.integration.ray_head import ROOT
from tests.integration.servers import restartable_tracking_server
from tests.integration.tiny import write_tiny_config

pytestmark = pytest.mark.integration

# The outage is 60 s; 20 s (plus the seconds the server takes to start again) keeps the test
# short and is already many of the sender's retries (its backoff tops out at 5 s).
# FACERESTORE_TEST_OUTAGE_S / FACERESTORE_TEST_OUTAGE_STEPS run it longer by hand.
OUTAGE_S = float(os.environ.get("FACERESTORE_TEST_OUTAGE_S", "20"))
STEPS = int(os.environ.get("FACERESTORE_TEST_OUTAGE_STEPS", "300"))  # still training when the server answers again, on 2 cores
LOG_EVERY = 2
KEYS = ("loss", "l1", "lr_factor")  # what the baseline's training_step returns, and the loop's schedule factor


def train_run(client):
    """The train stage's MLflow run, once the runner has opened it."""
    for experiment in client.search_experiments():
        runs = client.search_runs([experiment.experiment_id], "tags.`facerestore.stage` = 'train_baseline'")
        if runs:
            return runs[0]
    return None


def test_training_outlives_a_tracking_server_outage_and_its_metrics_arrive_late(tmp_path, subprocess_env):
    from mlflow.tracking import MlflowClient

    config = write_tiny_config(tmp_path, steps=STEPS)
    raw = yaml.safe_load(config.read_text())
    raw["stages"] = {name: raw["stages"][name] for name in ("synthesize", "train_baseline")}
    # No validation: its val/ metrics, logged at their own steps, would not be counted per log_every.
    raw["stages"]["train_baseline"].update(log_every=LOG_EVERY, checkpoint_every=STEPS, val_every=None, select="last")
    config.write_text(yaml.safe_dump(raw))
    run_id = f"outage-{secrets.token_hex(4)}"
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    began = time.time()
    with restartable_tracking_server(server_dir) as server:
        env = {**subprocess_env, "MLFLOW_TRACKING_URI": server.url, "COLUMNS": "200"}
        with (tmp_path / "run.log").open("w") as out:
            run = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(config), "--run-id", run_id],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            client = MlflowClient(server.url)
            deadline = time.time() + 300
            child = None
            while True:  # until rank 0's first loss is on the server
                assert run.poll() is None, f"the run ended before training logged:\n{(tmp_path / 'run.log').read_text()[-4000:]}"
                assert time.time() < deadline, "no training metric reached the server in 300 s"
                child = child or train_run(client)
                if child and client.get_metric_history(child.info.run_id, "loss"):
                    break
                time.sleep(0.5)
            stopped_ms = int(time.time() * 1000)
            server.stop(grace=0)  # a crash: no time to finish what it was doing
            time.sleep(max(0.0, OUTAGE_S - (time.time() - stopped_ms / 1000)))
            restarted_ms = int(time.time() * 1000)
            server.start()  # the same port, database and artifacts; it answers again some seconds later
            answering = time.time()
            code = run.wait(timeout=600)
            # Shown when the test fails: where the time went (seconds from the start).
            print(f"first loss on the server, stopped it: {stopped_ms / 1000 - began:.0f} s; restarted: {restarted_ms / 1000 - began:.0f} s; "
                  f"answering: {answering - began:.0f} s; run done: {time.time() - began:.0f} s")
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        output = (tmp_path / "run.log").read_text()
        assert code == 0, output[-6000:]

        record = Store(raw["store"]).load_run(run_id)
        assert record["state"] == "finished" and record["stages"]["train_baseline"]["state"] == "finished"
        metrics = record["stages"]["train_baseline"]["metrics"]
        print("train_baseline metrics:", metrics)
        expected = set(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
        assert metrics["tracking_sent"] + metrics["tracking_dropped"] == len(KEYS) * len(expected), metrics
        assert metrics["tracking_unreachable_s"] > 0, metrics  # rank 0 saw the outage

        train = client.get_run(child.info.run_id)
        assert train.info.status == "FINISHED"  # the runner's own final calls got through after the outage
        assert client.get_run(record["mlflow_run_id"]).info.status == "FINISHED"
        missing = 0
        for key in KEYS:
            history = client.get_metric_history(child.info.run_id, key)
            logged = {m.step for m in history}
            assert logged <= expected, sorted(logged - expected)
            missing += len(expected - logged)
            # Steps logged while the server was down: they kept their step and timestamp and arrived late.
            during = {m.step for m in history if stopped_ms <= m.timestamp <= restarted_ms}
            assert during, f"no {key} logged during the outage: training ended before it ({sorted(logged)[-3:]})"
        # Every logged step is on the server, unless the run record counts it as dropped.
        assert missing <= metrics["tracking_dropped"], (missing, metrics)
