"""The synthesize stage on the shared Ray: real folders with bad files, resume, determinism."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from rich.console import Console

from components.data.faces import render_face
from pipelines.config import load_config
from pipelines.runner import Runner
from pipelines.store import Store

pytestmark = pytest.mark.integration

GOOD = 18


def face_folder(root: Path) -> Path:
    folder = root / "faces"
    (folder / "nested").mkdir(parents=True)
    for n in range(GOOD):
        image = render_face(n, 64).image
        target = folder / ("nested" if n % 3 == 0 else "") / f"face{n:02d}.png"
        cv2.imwrite(str(target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (folder / "truncated.png").write_bytes((folder / "face01.png").read_bytes()[:200])
    (folder / "notes.jpg").write_bytes(b"not an image at all")
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((8, 8, 3), np.uint8))
    return folder


def write_config(root: Path, source: dict, store: Path, shard_size: int = 5) -> Path:
    config = {"name": "synth", "store": str(store), "stages": {"synthesize": {
        "source": source, "resolution": 32, "shard_size": shard_size, "super_resolution": {"factor": 4},
        "masks": {"kinds": ["free_form", "box", "surgical_mask", "sunglasses", "hand"], "max_ratio": 0.6}}}}
    path = root / f"{store.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(config: Path, *overrides: str) -> dict:
    return Runner(load_config(config, list(overrides)), console=Console(file=io.StringIO())).run()


def manifest(config: Path) -> dict:
    cfg = load_config(config)
    record = Store(cfg.store).list_runs()[0]
    return Store(cfg.store).manifest("synthesize", record["stages"]["synthesize"]["fingerprint"])


def test_a_folder_with_bad_files_skips_and_lists_them_and_keeps_the_rest(tmp_path, ray_address):
    config = write_config(tmp_path, {"kind": "folder", "path": str(face_folder(tmp_path))}, tmp_path / "store")
    record = run(config)
    assert record["stages"]["synthesize"]["state"] == "finished"
    found = manifest(config)
    assert found["count"] == GOOD and found["metrics"]["skipped"] == 3
    reasons = {Path(s["path"]).name: s["reason"] for s in found["details"]["skipped"]}
    assert set(reasons) == {"truncated.png", "notes.jpg", "tiny.png"}
    assert "8" in reasons["tiny.png"]
    shards = [Path(load_config(config).store) / "stages" / "synthesize" / record["stages"]["synthesize"]["fingerprint"]
              / s["path"] for s in found["details"]["shards"]]
    # Shards open in plain pyarrow and in pandas.
    frame = pq.read_table(shards[0]).to_pandas()
    assert {"hq", "lq", "lr", "mask", "edge", "mask_kind", "mask_bucket", "landmarks"} <= set(frame.columns)
    assert sum(pq.read_metadata(s).num_rows for s in shards) == GOOD


def test_plan_shows_the_skip_count_of_a_cached_synthesis(tmp_path, ray_address):
    from typer.testing import CliRunner

    from pipelines.cli import app

    config = write_config(tmp_path, {"kind": "folder", "path": str(face_folder(tmp_path))}, tmp_path / "store")
    run(config)
    shown = CliRunner().invoke(app, ["plan", str(config)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "cached" in shown.output and "3 source images skipped" in shown.output


def test_a_killed_synthesis_rerun_writes_only_the_missing_shards(tmp_path, ray_address):
    config = write_config(tmp_path, {"kind": "procedural", "count": 20}, tmp_path / "store")
    record = run(config)
    fingerprint = record["stages"]["synthesize"]["fingerprint"]
    output = Path(load_config(config).store) / "stages" / "synthesize" / fingerprint
    shards = sorted((output / "shards").glob("*.parquet"))
    assert len(shards) == 4
    # What a kill leaves: no manifest, a shard missing, a temporary file half written.
    (output / "manifest.json").unlink()
    shards[2].unlink()
    (output / "shards" / ".shard-00002.parquet.tmp-dead").write_bytes(b"PAR1 half")
    before = {s.name: s.stat().st_mtime_ns for s in shards if s.exists()}
    record = run(config)
    assert record["stages"]["synthesize"]["state"] == "finished"
    after = {s.name: s.stat().st_mtime_ns for s in sorted((output / "shards").glob("*.parquet"))}
    assert set(after) == {s.name for s in shards}
    assert all(after[name] == mtime for name, mtime in before.items())  # untouched
    ids = [i for s in sorted((output / "shards").glob("*.parquet")) for i in pq.read_table(s, columns=["id"]).column("id").to_pylist()]
    assert len(ids) == len(set(ids)) == 20


def test_ray_tasks_in_parallel_write_the_bytes_one_process_writes_alone(tmp_path, ray_address):
    from components.data.sources import list_items
    from pipelines.stages.synthesize import make_shard, shard_path

    config = write_config(tmp_path, {"kind": "procedural", "count": 12}, tmp_path / "store", shard_size=4)
    run(config)
    parallel = [s["sha256"] for s in manifest(config)["details"]["shards"]]
    cfg = load_config(config).stages["synthesize"].config
    items = list_items(cfg.source)
    alone = [make_shard._function(items[i * 4:(i + 1) * 4], cfg.seed, cfg, cfg.limits,
                                  str(tmp_path / "alone" / shard_path(i))).sha256 for i in range(3)]
    assert parallel == alone


def test_data_inspect_prints_splits_and_skips_and_writes_a_contact_sheet(tmp_path, ray_address):
    from typer.testing import CliRunner

    from pipelines.cli import app

    config = write_config(tmp_path, {"kind": "folder", "path": str(face_folder(tmp_path))}, tmp_path / "store")
    record = run(config)
    output = Path(load_config(config).store) / "stages" / "synthesize" / record["stages"]["synthesize"]["fingerprint"]
    sheet = tmp_path / "sheet.png"
    shown = CliRunner().invoke(app, ["data", "inspect", str(output), "--sheet", str(sheet), "--samples", "4"],
                               env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "train" in shown.output and "truncated.png" in shown.output
    image = cv2.imread(str(sheet))
    assert image.shape[0] == 4 * 34 - 2 and image.shape[1] == 5 * 34 - 2  # hq | lq | mask | edge | lr
