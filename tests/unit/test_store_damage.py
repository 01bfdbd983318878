"""Damaged outputs on a local store: the manifest's file list, the plan's check, the rebuild's cleanup."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components import storage
from pipelines.dag import Pipeline, Stage, State
from pipelines.store import Store, damaged_files

SHARDS = {f"shards/shard-{i:05d}.parquet": bytes([i]) * (1000 + i) for i in range(3)}
MODEL = {"model.safetensors": b"w" * 4096, "config.json": b'{"width": 16}'}
DEMO = Path(__file__).parents[2] / "pipelines" / "configs" / "demo.yaml"


def pipeline() -> Pipeline:
    return Pipeline([Stage("synthesize", "synthesize", (), {"count": 3}, "1"),
                     Stage("train", "train", ("synthesize",), {"lr": 1e-3}, "1")])


def build(store: Store, stage: str, fingerprint: str, files: dict[str, bytes], upstream=None) -> Path:
    """A finished output as the runner leaves one: stage.json, the files, then the manifest."""
    store.begin(stage, {"fingerprint": fingerprint, "config": pipeline().stages[stage].config,
                        "upstream": upstream or {}, "code_version": "1"})
    for path, data in files.items():
        storage.write_bytes_atomic(storage.join(store.stage_uri(stage, fingerprint), path), data)
    store.finish(stage, fingerprint, {"stage": stage, "fingerprint": fingerprint})
    return Path(store.stage_uri(stage, fingerprint))


@pytest.fixture
def built(tmp_path):
    """Both stages of `pipeline()` finished at their fingerprints: (store, prints, output folders)."""
    store, prints = Store(str(tmp_path / "store")), pipeline().fingerprints()
    out = {"synthesize": build(store, "synthesize", prints["synthesize"], SHARDS),
           "train": build(store, "train", prints["train"], MODEL, {"synthesize": prints["synthesize"]})}
    return store, prints, out


def states(store: Store) -> dict[str, tuple[State, tuple[str, ...], bool]]:
    return {e.stage.name: (e.state, e.reasons, e.will_run) for e in pipeline().plan(store)}


def test_finish_lists_every_file_with_its_size_and_sha256(built):
    store, prints, out = built
    files = store.manifest("synthesize", prints["synthesize"])["files"]
    assert files == {path: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                     for path, data in SHARDS.items()}
    assert set(store.manifest("train", prints["train"])["files"]) == {"model.safetensors", "config.json"}
    assert (out["synthesize"] / "stage.json").exists()  # the store's own files are not listed


def test_finish_leaves_out_an_unfinished_temporary_write(tmp_path):
    store = Store(str(tmp_path / "store"))
    store.begin("synthesize", {"fingerprint": "f1", "config": {}, "upstream": {}, "code_version": "1"})
    leftover = Path(store.stage_uri("synthesize", "f1"), "shards", ".shard-00007.parquet.tmp-0a1b2c3d")
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a shard")
    storage.write_bytes_atomic(store.stage_uri("synthesize", "f1") + "/shards/shard-00000.parquet", b"whole")
    store.finish("synthesize", "f1", {})
    assert list(store.manifest("synthesize", "f1")["files"]) == ["shards/shard-00000.parquet"]


def test_a_whole_output_is_cached(built):
    store, _, _ = built
    assert states(store) == {"synthesize": (State.CACHED, (), False), "train": (State.CACHED, (), False)}


def test_a_deleted_shard_makes_the_stage_stale_and_names_the_file(built):
    store, _, out = built
    (out["synthesize"] / "shards" / "shard-00001.parquet").unlink()
    found = states(store)
    assert found["synthesize"] == (State.STALE, ("damaged: shards/shard-00001.parquet missing",), True)
    # Downstream keeps its fingerprint: it stays cached and does not run.
    assert found["train"] == (State.CACHED, (), False)


def test_a_truncated_file_is_named_with_both_sizes(built):
    store, prints, out = built
    (out["train"] / "model.safetensors").write_bytes(b"w" * 120)
    assert store.damage("train", prints["train"]) == ["model.safetensors has 120 bytes, the manifest says 4096"]
    assert states(store)["train"][:2] == (State.STALE, ("damaged: model.safetensors has 120 bytes, the manifest says 4096",))


def test_a_same_size_overwrite_is_caught_only_by_verify(built, tmp_path):
    store, prints, out = built
    (out["train"] / "model.safetensors").write_bytes(b"x" * 4096)
    assert store.damage("train", prints["train"]) == []
    assert states(store)["train"][0] is State.CACHED
    assert store.damage("train", prints["train"], verify=True) == ["model.safetensors checksum differs"]
    assert states(Store(str(tmp_path / "store"), verify=True))["train"] == (
        State.STALE, ("damaged: model.safetensors checksum differs",), True)


def test_several_problems_are_named_in_path_order_and_beyond_three_counted(built):
    store, prints, out = built
    for path in SHARDS:
        (out["synthesize"] / path).unlink()
    assert states(store)["synthesize"][1] == (
        "damaged: shards/shard-00000.parquet missing; shards/shard-00001.parquet missing; "
        "shards/shard-00002.parquet missing",)
    build(store, "synthesize", prints["synthesize"], {**SHARDS, "shards/extra-0.bin": b"e", "shards/extra-1.bin": b"e"})
    for path in [*SHARDS, "shards/extra-0.bin", "shards/extra-1.bin"]:
        (out["synthesize"] / path).unlink()
    assert states(store)["synthesize"][1] == (
        "damaged: shards/extra-0.bin missing; shards/extra-1.bin missing; shards/shard-00000.parquet missing; 2 more",)


def test_files_the_manifest_does_not_list_are_no_damage():
    assert damaged_files({"a": {"bytes": 1}}, {"a": 1, "b": 7}) == {}


def test_a_manifest_written_before_file_lists_stays_cached(tmp_path):
    store, prints = Store(str(tmp_path / "store")), pipeline().fingerprints()
    for name in ("synthesize", "train"):
        uri = store.stage_uri(name, prints[name])
        storage.write_json_atomic(uri + "/manifest.json", {"complete": True, "schema_version": 1, "stage": name})
    assert store.damage("synthesize", prints["synthesize"], verify=True) == []
    assert states(store) == {"synthesize": (State.CACHED, (), False), "train": (State.CACHED, (), False)}
    assert store.prepare_rebuild("synthesize", prints["synthesize"]) == ["manifest.json"]


def test_a_malformed_file_list_is_an_error_naming_the_manifest_and_path(built):
    store, prints, out = built
    manifest = json.loads((out["train"] / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = {"bytes": "4096"}
    (out["train"] / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"train/.*/manifest.json: files\['model.safetensors'\] must hold an integer"):
        store.damage("train", prints["train"])


def test_prepare_rebuild_removes_exactly_the_damaged_file_and_the_manifest(built):
    store, prints, out = built
    folder = out["synthesize"]
    (folder / "shards" / "shard-00000.parquet").unlink()  # missing: nothing to remove
    (folder / "shards" / "shard-00002.parquet").write_bytes(b"cut")  # truncated: removed
    before = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    removed = store.prepare_rebuild("synthesize", prints["synthesize"])
    assert removed == ["shards/shard-00002.parquet", "manifest.json"]
    after = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert before - after == set(removed)
    assert (folder / "shards" / "shard-00001.parquet").read_bytes() == SHARDS["shards/shard-00001.parquet"]
    # No manifest: the plan now says interrupted, never cached, until the stage finishes again.
    assert states(store)["synthesize"] == (State.STALE, ("previous output is incomplete (interrupted run)",), True)


def test_prepare_rebuild_of_a_forced_output_removes_a_checksum_mismatch(built):
    store, prints, out = built
    (out["train"] / "model.safetensors").write_bytes(b"x" * 4096)  # every size right: only a hash tells
    assert store.prepare_rebuild("train", prints["train"], verify=False) == ["manifest.json"]
    assert (out["train"] / "model.safetensors").exists()
    build(store, "train", prints["train"], {})  # finished again, now recording the overwritten bytes
    (out["train"] / "config.json").write_bytes(b'{"width": 99}')
    assert store.prepare_rebuild("train", prints["train"]) == ["config.json", "manifest.json"]
    assert (out["train"] / "model.safetensors").exists()


def test_prepare_rebuild_of_an_output_that_never_finished_removes_nothing(tmp_path):
    assert Store(str(tmp_path / "store")).prepare_rebuild("synthesize", "0" * 20) == []


def demo_outputs(tmp_path) -> tuple[Path, dict[str, Path]]:
    """The demo config on a store where every stage finished (fake files at the real fingerprints)."""
    from pipelines.config import load_config
    from pipelines.runner import build_pipeline

    config = tmp_path / "demo.yaml"
    config.write_text(DEMO.read_text().replace("store: .facerestore", f"store: {tmp_path / 'store'}"))
    cfg = load_config(config)
    dag, store = build_pipeline(cfg), Store(cfg.store)
    out = {}
    for name, fp in dag.fingerprints().items():
        files = SHARDS if name == "synthesize" else {"result.json": b"{}"}
        store.begin(name, {"fingerprint": fp, "config": dict(dag.stages[name].config), "code_version": "x",
                           "upstream": {n: dag.fingerprints()[n] for n in dag.stages[name].needs}})
        for path, data in files.items():
            storage.write_bytes_atomic(storage.join(store.stage_uri(name, fp), path), data)
        store.finish(name, fp, {"stage": name})
        out[name] = Path(store.stage_uri(name, fp))
    return config, out


def test_facerestore_plan_shows_the_damage_and_verify_finds_an_overwrite(tmp_path):
    from pipelines.cli import app

    config, out = demo_outputs(tmp_path)
    cli = CliRunner()
    screen = cli.invoke(app, ["plan", str(config)], env={"COLUMNS": "250"}).output
    assert "stale" not in screen and "files not checked" not in screen
    (out["synthesize"] / "shards" / "shard-00001.parquet").unlink()
    (out["evaluate"] / "result.json").write_bytes(b"[]")  # same size: only --verify sees it
    result = cli.invoke(app, ["plan", str(config)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert "stale" in rows["synthesize"] and "damaged: shards/shard-00001.parquet missing" in rows["synthesize"]
    assert "cached" in rows["evaluate"] and "cached" in rows["train_baseline"]
    verified = cli.invoke(app, ["plan", str(config), "--verify"], env={"COLUMNS": "250"}).output
    rows = {line.split("│")[1].strip(): line for line in verified.splitlines() if line.count("│") > 3}
    assert "stale" in rows["evaluate"] and "damaged: result.json checksum differs" in rows["evaluate"]
    assert "1 file verified (sha256)" in rows["register"]
    assert "--only evaluate" in verified and "compares sizes only" in verified
