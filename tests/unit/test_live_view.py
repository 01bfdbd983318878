"""The live table while stages run at once: each running stage's progress and node, and what the
others wait for."""

from __future__ import annotations

import io

from rich.console import Console

from pipelines.display import live_table


def rendered(record, progress) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(live_table(record, progress))
    return console.export_text()


def test_every_running_stage_shows_its_progress_and_node_and_the_others_say_what_they_wait_for():
    record = {"run_id": "r1", "config_name": "blind", "stages": {
        "pretrain_dre": {"state": "running", "attempts": [{"error": None}]},
        "train_prior": {"state": "running", "attempts": [{"error": "WorkerCrashedError: ..."}, {"error": None}]},
        "train_panini": {"state": "waiting", "waiting_for": "20260101-120000-abcdef"},
        "evaluate": {"state": "blocked", "blocked_by": ["train_panini_sr"]},
        "register": {"state": "pending", "attempts": [{"error": "OSError: AWS Error NETWORK_CONNECTION"}]},
    }}
    progress = {"pretrain_dre": {"done": 50, "total": 200, "unit": "steps", "nodes": ["10.0.0.1"]},
                "train_prior": {"done": 120, "total": 300, "unit": "steps", "loss": 0.25, "nodes": ["10.0.0.2"]}}
    lines = {line.split("│")[1].strip(): line for line in rendered(record, progress).splitlines() if line.count("│") > 3}
    assert "50/200 steps" in lines["pretrain_dre"] and "10.0.0.1" in lines["pretrain_dre"]
    assert "120/300 steps" in lines["train_prior"] and "attempt 2" in lines["train_prior"] and "10.0.0.2" in lines["train_prior"]
    assert "waiting for run 20260101-120000-abcdef" in lines["train_panini"]
    assert "blocked by train_panini_sr" in lines["evaluate"]
    assert "attempt 1 failed (OSError: AWS Error NETWORK_CONNECTION); retrying" in lines["register"]
