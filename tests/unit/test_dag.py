import json
import subprocess
import sys

import pytest

from pipelines.dag import (DagError, Pipeline, Selection, SelectionError, Stage, StageRecord, State,
                           fingerprint)


def stage(name, needs=(), **config):
    return Stage(name=name, kind=name, needs=tuple(needs), config=config or {"x": 1}, code_version="1")


def demo():
    return Pipeline([stage("synthesize", count=10), stage("train", ["synthesize"], lr=1e-3),
                     stage("evaluate", ["synthesize", "train"]), stage("register", ["train", "evaluate"])])


class FakeStore:
    def __init__(self, complete=(), latest=None, damaged=None):
        self.complete = set(complete)
        self.records = latest or {}
        self.damaged = damaged or {}  # (stage, fp) -> problems with its files

    def is_complete(self, stage, fp):
        return (stage, fp) in self.complete

    def damage(self, stage, fp):
        assert (stage, fp) in self.complete, "damage is asked of complete outputs only"
        return self.damaged.get((stage, fp), [])

    def latest(self, stage):
        return self.records.get(stage)


def all_complete(pipeline):
    return FakeStore({(n, fp) for n, fp in pipeline.fingerprints().items()})


def test_topological_order_puts_every_stage_after_its_needs():
    pipeline = Pipeline([stage("register", ["evaluate"]), stage("evaluate", ["train"]), stage("train", ["data"]),
                         stage("data")])
    assert pipeline.order == ["data", "train", "evaluate", "register"]


def test_a_cycle_is_an_error_that_names_the_cycle():
    with pytest.raises(DagError, match="cycle: .*a.*b"):
        Pipeline([stage("a", ["b"]), stage("b", ["a"])])


def test_an_unknown_dependency_is_named():
    with pytest.raises(DagError, match="'train' needs unknown stage 'synth'"):
        Pipeline([stage("synthesize"), stage("train", ["synth"])])


def test_fingerprint_ignores_key_order():
    a = Stage("s", "s", (), {"a": 1, "b": {"c": 2, "d": 3}}, "1")
    b = Stage("s", "s", (), {"b": {"d": 3, "c": 2}, "a": 1}, "1")
    assert fingerprint(a, {}) == fingerprint(b, {})


def test_fingerprint_is_the_same_in_another_process():
    here = demo().fingerprints()
    code = ("import json; from tests.unit.test_dag import demo; print(json.dumps(demo().fingerprints()))")
    there = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    assert here == there


def test_fingerprint_changes_with_config_code_version_and_upstream():
    base = stage("train", lr=1e-3)
    assert fingerprint(base, {}) != fingerprint(stage("train", lr=2e-4), {})
    assert fingerprint(base, {}) != fingerprint(Stage("train", "train", (), base.config, "2"), {})
    assert fingerprint(base, {"synthesize": "aaa"}) != fingerprint(base, {"synthesize": "bbb"})


def test_a_config_change_makes_the_stage_and_its_downstream_stale_and_says_which_key():
    old = demo()
    old_prints = old.fingerprints()
    new = Pipeline([stage("synthesize", count=10), stage("train", ["synthesize"], lr=2e-4),
                    stage("evaluate", ["synthesize", "train"]), stage("register", ["train", "evaluate"])])
    records = {n: StageRecord(old_prints[n], old.stages[n].config,
                              {d: old_prints[d] for d in old.stages[n].needs}, "1") for n in old.order}
    entries = {e.stage.name: e for e in new.plan(FakeStore({(n, fp) for n, fp in old_prints.items()}, records))}
    assert entries["synthesize"].state is State.CACHED and not entries["synthesize"].will_run
    assert entries["train"].state is State.STALE
    assert entries["train"].reasons == ("config key 'train.lr' changed: 0.001 -> 0.0002",)
    assert entries["evaluate"].state is State.STALE
    assert any("upstream 'train' changed" in r for r in entries["evaluate"].reasons)
    assert {n for n, e in entries.items() if e.will_run} == {"train", "evaluate", "register"}


def test_a_stage_that_never_ran_is_missing():
    entries = demo().plan(FakeStore())
    assert all(e.state is State.MISSING and e.will_run for e in entries)


def test_an_interrupted_output_is_stale_and_says_so():
    pipeline = demo()
    prints = pipeline.fingerprints()
    record = StageRecord(prints["synthesize"], pipeline.stages["synthesize"].config, {}, "1")
    entry = pipeline.plan(FakeStore(latest={"synthesize": record}))[0]
    assert entry.state is State.STALE
    assert entry.reasons == ("previous output is incomplete (interrupted run)",)


def test_everything_cached_runs_nothing():
    pipeline = demo()
    assert not any(e.will_run for e in pipeline.plan(all_complete(pipeline)))


def test_only_runs_one_stage_even_when_cached():
    pipeline = demo()
    runs = [e.stage.name for e in pipeline.plan(all_complete(pipeline), Selection(only="evaluate")) if e.will_run]
    assert runs == ["evaluate"]


def test_only_with_a_missing_upstream_names_it():
    pipeline = demo()
    prints = pipeline.fingerprints()
    store = FakeStore({("synthesize", prints["synthesize"])})
    with pytest.raises(SelectionError, match="needs 'train'"):
        pipeline.plan(store, Selection(only="evaluate"))


def test_from_reruns_the_stage_and_its_downstream():
    pipeline = demo()
    runs = [e.stage.name for e in pipeline.plan(all_complete(pipeline), Selection(start="train")) if e.will_run]
    assert runs == ["train", "evaluate", "register"]


def test_force_reruns_a_cached_stage_and_its_downstream():
    pipeline = demo()
    runs = [e.stage.name for e in pipeline.plan(all_complete(pipeline), Selection(force=("evaluate",))) if e.will_run]
    assert runs == ["evaluate", "register"]


def test_selection_of_an_unknown_stage_is_named():
    with pytest.raises(SelectionError, match="--only names unknown stage 'trian'"):
        demo().plan(FakeStore(), Selection(only="trian"))


def damaged(pipeline, **problems):
    prints = pipeline.fingerprints()
    return FakeStore(set(prints.items()), damaged={(n, prints[n]): p for n, p in problems.items()})


def test_a_damaged_output_is_stale_names_the_problem_and_runs_alone():
    pipeline = demo()
    entries = {e.stage.name: e for e in pipeline.plan(damaged(pipeline, synthesize=["shards/shard-00001.parquet missing"]))}
    assert entries["synthesize"].state is State.STALE and entries["synthesize"].will_run
    assert entries["synthesize"].reasons == ("damaged: shards/shard-00001.parquet missing",)
    # Rebuilding it keeps its fingerprint, so what was built from it is still valid.
    assert all(entries[n].state is State.CACHED and not entries[n].will_run for n in ("train", "evaluate", "register"))


def test_a_damaged_output_names_three_problems_and_counts_the_rest():
    pipeline = demo()
    problems = [f"shards/shard-0000{i}.parquet missing" for i in range(5)]
    (entry,) = [e for e in pipeline.plan(damaged(pipeline, train=problems)) if e.stage.name == "train"]
    assert entry.reasons == ("damaged: " + "; ".join(problems[:3]) + "; 2 more",)


def test_only_with_a_damaged_upstream_names_it():
    pipeline = demo()
    with pytest.raises(SelectionError, match="needs 'synthesize'.*stale"):
        pipeline.plan(damaged(pipeline, synthesize=["x missing"]), Selection(only="train"))
