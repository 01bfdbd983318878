"""A damaged cached output on the shared Ray: the plan sees a lost shard, and a rerun writes only it back."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from pipelines.config import load_config
from pipelines.dag import State
from pipelines.runner import Runner, plan
from pipelines.store import Store
from tests.integration.tiny import write_tiny_config

pytestmark = pytest.mark.integration


def synthesize_only(directory: Path) -> Path:
    config = write_tiny_config(directory)
    raw = yaml.safe_load(config.read_text())
    raw["stages"] = {"synthesize": raw["stages"]["synthesize"]}
    config.write_text(yaml.safe_dump(raw))
    return config


def run(config: Path) -> dict:
    return Runner(load_config(config), console=Console(file=io.StringIO())).run()


def test_a_deleted_shard_is_planned_as_damage_and_a_rerun_writes_only_that_shard(tmp_path, ray_address):
    config = synthesize_only(tmp_path)
    cfg = load_config(config)
    record = run(config)
    assert record["stages"]["synthesize"]["state"] == "finished"
    fingerprint = record["stages"]["synthesize"]["fingerprint"]
    store = Store(cfg.store)
    output = Path(store.stage_uri("synthesize", fingerprint))
    shards = sorted((output / "shards").glob("shard-*.parquet"))
    assert len(shards) == 4  # 320 faces, 80 a shard
    assert set(store.manifest("synthesize", fingerprint)["files"]) == {f"shards/{s.name}" for s in shards}

    lost = output / "shards" / "shard-00001.parquet"
    original = lost.read_bytes()
    lost.unlink()
    others = {s.name: s.stat().st_mtime_ns for s in shards if s != lost}
    (entry,) = plan(cfg)
    assert entry.state is State.STALE and entry.will_run
    assert entry.reasons == ("damaged: shards/shard-00001.parquet missing",)

    again = run(config)
    assert again["stages"]["synthesize"]["state"] == "finished"
    assert again["stages"]["synthesize"]["fingerprint"] == fingerprint
    assert lost.read_bytes() == original  # the same seed and items: byte for byte the shard it was
    assert {name: (output / "shards" / name).stat().st_mtime_ns for name in others} == others
    (entry,) = plan(cfg)
    assert entry.state is State.CACHED
    assert store.damage("synthesize", fingerprint, verify=True) == []
    assert run(config)["stages"]["synthesize"]["state"] == "cached"
