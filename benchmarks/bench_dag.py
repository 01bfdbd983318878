"""dag: the blind recipe at its test size run one stage at a time (`--max-parallel 1`, the old
runner's order) and then as the DAG allows (the default), each from an empty store.

Reported: each run's wall time (`facerestore run` as a process, Ray start included), their ratio,
and the critical path: the longest chain of stage durations through the DAG, taken from the
sequential run (stages that ran alone), the shortest wall time any parallelism could reach.

Then the default run again on a two-node cluster on this machine (a head and a second node,
`ray start` each, 3 CPUs each: tests/integration/ray_head.py), its wall time against the critical
path of its own stage durations (from its run record: the driver's time outside stages counts
against it).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.config import load_config
from pipelines.scheduler import critical_path
from pipelines.store import Store

TRAINED = ["pretrain_dre", "train_prior", "train_panini", "train_panini_sr"]


def blind_at_test_size(directory: Path, steps: int) -> Path:
    # The settings of the blind recipe's integration test (tests/integration/test_recipes.py).
    from tests.integration.recipes import train_settings, write_tiny_recipe

    return write_tiny_recipe("blind", directory, {
        "synthesize.source.count": 160, "synthesize.shard_size": 80, "synthesize.resolution": 32,
        **train_settings(TRAINED, steps=steps), "pretrain_dre.method_config.queue_size": 32,
        "train_prior.method_config.resolution": 32})


def timed_run(config: Path, *options: str, env: dict[str, str] | None = None) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(config), *options],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"facerestore run {config} {' '.join(options)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return wall, Store(load_config(config).store).list_runs()[0]


def run(quick: bool = False) -> list[dict]:
    steps = 10 if quick else 30
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sequential_dir, concurrent_dir = Path(tmp, "sequential"), Path(tmp, "concurrent")
        sequential_dir.mkdir(), concurrent_dir.mkdir()
        sequential_wall, sequential = timed_run(blind_at_test_size(sequential_dir, steps), "--max-parallel", "1")
        concurrent_wall, concurrent = timed_run(blind_at_test_size(concurrent_dir, steps))
    needs = {name: tuple(section["needs"]) for name, section in sequential["config"]["stages"].items()}
    durations = {name: info.get("duration_s", 0.0) for name, info in sequential["stages"].items()}
    path_s, chain = critical_path(durations, needs)
    stage_sum = sum(durations.values())
    rows.append({"run": "--max-parallel 1 (one stage at a time)", "wall_s": sequential_wall,
                 "sum_of_stages_s": stage_sum, "ratio_to_sequential": 1.0})
    rows.append({"run": "default (as the DAG and the cluster allow)", "wall_s": concurrent_wall,
                 "sum_of_stages_s": sum(i.get("duration_s", 0.0) for i in concurrent["stages"].values()),
                 "ratio_to_sequential": concurrent_wall / sequential_wall})
    rows.append({"run": f"critical path: {' -> '.join(chain)}", "wall_s": path_s,
                 "ratio_to_sequential": path_s / sequential_wall})
    overlaps = []
    stages = concurrent["stages"]
    for a, b in (("pretrain_dre", "train_prior"), ("train_panini", "train_panini_sr")):
        start = max(stages[a]["started_at"], stages[b]["started_at"])
        end = min(stages[a]["finished_at"], stages[b]["finished_at"])
        overlaps.append(f"{a} / {b}: {max(0.0, end - start):.0f} s together")
    rows.append({"run": "default: " + "; ".join(overlaps)})
    if not quick:
        rows += two_node_rows(steps)
    return rows


def two_node_rows(steps: int) -> list[dict]:
    from tests.integration.ray_head import running_head, running_worker_node

    with tempfile.TemporaryDirectory() as tmp, running_head(num_cpus=3) as head, running_worker_node(head, num_cpus=3):
        config = blind_at_test_size(Path(tmp), steps)
        wall, record = timed_run(config, "--address", head.gcs, env={**head.env, "RAY_ADDRESS": head.gcs})
    needs = {name: tuple(section["needs"]) for name, section in record["config"]["stages"].items()}
    durations = {name: info.get("duration_s", 0.0) for name, info in record["stages"].items()}
    path_s, chain = critical_path(durations, needs)
    nodes = sorted({node for info in record["stages"].values() for node in info.get("nodes", [])})
    return [{"run": f"two nodes ({', '.join(nodes)}), default", "wall_s": wall, "sum_of_stages_s": sum(durations.values())},
            {"run": f"two nodes: critical path {' -> '.join(chain)}", "wall_s": path_s,
             "wall_over_critical_path": wall / path_s}]
