"""The runner's scheduling rules: what is ready, what a failure blocks, what fits beside what runs."""

from __future__ import annotations

from pipelines.scheduler import Schedule, Status, admit, critical_path

# inpaint.yaml's shape: train_cafin needs neither train_edge nor train_fusion.
INPAINT = {"synthesize": (), "train_edge": ("synthesize",), "train_fusion": ("synthesize", "train_edge"),
           "train_cafin": ("synthesize",), "evaluate": ("train_fusion", "train_cafin")}


def test_a_stage_is_ready_once_its_upstream_stages_of_this_run_finished():
    schedule = Schedule(INPAINT)
    assert schedule.ready() == ["synthesize"]
    schedule.start("synthesize")
    assert schedule.ready() == []
    schedule.finish("synthesize")
    assert schedule.ready() == ["train_edge", "train_cafin"]  # plan order
    schedule.start("train_edge")
    schedule.start("train_cafin")
    schedule.finish("train_edge")
    assert schedule.ready() == ["train_fusion"]  # cafin still running: evaluate waits


def test_a_cached_upstream_is_not_in_the_schedule_so_its_consumers_start_at_once():
    schedule = Schedule({"train_cafin": (), "evaluate": ("train_cafin",)})
    assert schedule.ready() == ["train_cafin"]


def test_a_failure_blocks_only_its_downstream_stages_and_the_rest_runs_to_the_end():
    schedule = Schedule(INPAINT)
    schedule.finish("synthesize")
    schedule.start("train_edge")
    schedule.start("train_cafin")
    blocked = schedule.fail("train_edge")
    assert blocked == ["train_fusion", "evaluate"]
    assert schedule.blocked_by == {"train_fusion": ["train_edge"], "evaluate": ["train_edge"]}
    assert schedule.status["train_cafin"] is Status.RUNNING and not schedule.done()
    schedule.finish("train_cafin")
    assert schedule.ready() == [] and schedule.done()
    assert schedule.names(Status.FAILED) == ["train_edge"]


def test_a_requeued_stage_is_ready_again():
    schedule = Schedule({"train": ()})
    schedule.start("train")
    schedule.requeue("train")
    assert schedule.ready() == ["train"] and not schedule.done()


def test_admission_leaves_the_reserved_cpus_free_for_ray_data():
    requests = {"a": {"CPU": 2.0}, "b": {"CPU": 2.0}, "c": {"CPU": 1.0}}
    capacity = {"CPU": 4.0}
    # 2 + 2 would take every CPU: Ray Data's read tasks would get none and the run would hang.
    assert admit(["a", "b", "c"], requests, [], capacity, reserve_cpus=1.0) == ["a", "c"]
    assert admit(["a", "b"], requests, [], {"CPU": 5.0}, reserve_cpus=1.0) == ["a", "b"]
    assert admit(["b"], requests, [{"CPU": 2.0}], capacity, reserve_cpus=1.0) == []


def test_a_stage_larger_than_the_cluster_still_starts_when_nothing_else_runs():
    assert admit(["big"], {"big": {"CPU": 64.0, "GPU": 8.0}}, [], {"CPU": 4.0}, reserve_cpus=1.0) == ["big"]
    assert admit(["big"], {"big": {"CPU": 64.0}}, [{"CPU": 1.0}], {"CPU": 4.0}) == []


def test_gpus_are_admitted_by_count_and_a_zero_request_always_fits():
    requests = {"t1": {"CPU": 1.0, "GPU": 1.0}, "t2": {"CPU": 1.0, "GPU": 1.0}, "register": {}}
    assert admit(["t1", "t2", "register"], requests, [], {"CPU": 16.0, "GPU": 1.0}) == ["t1", "register"]
    assert admit(["t1", "t2"], requests, [], {"CPU": 16.0, "GPU": 2.0}) == ["t1", "t2"]


def test_max_parallel_caps_the_stages_running_at_once():
    requests = {name: {"CPU": 0.5} for name in "abc"}
    assert admit(["a", "b", "c"], requests, [], {"CPU": 8.0}, max_parallel=1) == ["a"]
    assert admit(["b", "c"], requests, [{"CPU": 0.5}], {"CPU": 8.0}, max_parallel=1) == []
    assert admit(["b", "c"], requests, [{"CPU": 0.5}], {"CPU": 8.0}, max_parallel=2) == ["b"]


def test_the_critical_path_is_the_longest_chain_of_durations():
    durations = {"synthesize": 5, "train_edge": 100, "train_fusion": 80, "train_cafin": 150, "evaluate": 10}
    length, chain = critical_path(durations, INPAINT)
    assert chain == ["synthesize", "train_edge", "train_fusion", "evaluate"] and length == 195
