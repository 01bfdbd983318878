"""The bare loop and the step arithmetic of `benchmarks/bench_training_overhead.py`, at a tiny
size (no timing, no Ray)."""

import torch

from benchmarks.bench_training_overhead import StepClock, bare_steps, epoch_start, median_step, per_step
from components.models import build_method


class Recorder:
    """Stands in for the StepTimes actor handle: `record.remote(step, at, cpu, epoch)` kept in a list."""

    def __init__(self):
        self.calls = []
        self.record = self

    def remote(self, step, at, cpu, epoch):
        self.calls.append((step, epoch))


def test_bare_loop_reshuffles_each_epoch_drops_the_last_partial_batch_and_reports_every_step():
    torch.manual_seed(0)
    method = build_method("baseline", {"width": 4, "depth": 1}, {})
    arrays = {"hq": torch.rand(10, 3, 16, 16), "lq": torch.rand(10, 3, 16, 16), "mask": torch.zeros(10, 1, 16, 16)}
    firsts, step_of = [], method.training_step

    def spy(batch, step):
        assert batch["hq"].shape[0] == 4
        firsts.append(batch["hq"][0])
        return step_of(batch, step)

    method.training_step = spy
    recorder = Recorder()
    step, metrics = bare_steps(method, arrays, 5, StepClock(recorder), torch.device("cpu"), batch_size=4)
    assert step == 5 and "loss" in metrics
    assert recorder.calls == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2)]  # 10 samples: two batches of 4 an epoch
    assert len({tuple(first.flatten()[:4].tolist()) for first in firsts}) > 1


def test_the_clock_stamps_only_step_updates():
    recorder = Recorder()
    clock = StepClock(recorder)
    clock.update(message="sending 3 queued metrics to MLflow")
    clock.update(done=7, total=9, unit="steps", loss=0.1)
    assert recorder.calls == [(7, None)]


def test_per_step_leaves_out_the_warm_up_and_counts_the_epoch_start_the_median_hides():
    stamps = {step: 10.0 + step for step in range(1, 41)}  # 1 s a step
    for step in range(31, 41):
        stamps[step] += 10.0  # step 31 starts an epoch and takes 11 s
    epochs = {step: int(step > 30) for step in stamps}
    assert per_step(stamps, 40) == (60.0 - 30.0) / 20  # steps 20..40: 20 s of steps, 10 s of epoch start
    assert median_step(stamps) == 1.0
    assert epoch_start({"stamps": stamps, "epochs": epochs}) == 10.0
