"""The run timeline (a Gantt chart of a run record) and `facerestore status` with start, end, attempts and nodes."""

from __future__ import annotations

import io
import time

from PIL import Image
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.store import Store
from pipelines.timeline import Bar, timeline_png, timeline_rows

T0 = 1_760_000_000.0


def record_with_attempts() -> dict:
    """A run as the concurrent runner writes it: a retried stage, a failed one, one blocked, one running."""
    return {
        "run_id": "20260101-000000-abcdef", "config_name": "demo", "state": "running", "started_at": T0,
        "stages": {
            "synthesize": {"state": "cached", "fingerprint": "a" * 20},
            "train_baseline": {
                "state": "finished", "fingerprint": "b" * 20, "started_at": T0 + 5, "finished_at": T0 + 200,
                "duration_s": 195.0, "nodes": ["10.0.0.1", "10.0.0.2"],
                "attempts": [
                    {"attempt": 1, "started_at": T0 + 5, "finished_at": T0 + 60, "error": "OSError: node died",
                     "retryable": True},
                    {"attempt": 2, "started_at": T0 + 62, "finished_at": T0 + 200, "error": None, "retryable": False}]},
            "train_other": {
                "state": "failed", "fingerprint": "c" * 20, "started_at": T0 + 5, "finished_at": T0 + 90,
                "nodes": ["10.0.0.3"],
                "attempts": [{"attempt": 1, "started_at": T0 + 5, "finished_at": T0 + 90,
                              "error": "ValueError: lr must be positive, got -1", "retryable": False}]},
            "evaluate": {"state": "blocked", "fingerprint": "d" * 20, "blocked_by": ["train_other"]},
            "evaluate_b": {
                "state": "running", "fingerprint": "e" * 20, "started_at": T0 + 210, "nodes": ["10.0.0.1"],
                "attempts": [{"attempt": 1, "started_at": T0 + 210, "finished_at": None, "error": None,
                              "retryable": False}]},
            "register": {"state": "skipped", "fingerprint": "f" * 20},
        },
    }


def old_record() -> dict:
    """A record written before stages had attempts or nodes: the stage's own times, `error` on failure."""
    return {
        "run_id": "20250101-000000-000000", "config_name": "demo", "state": "failed", "started_at": T0,
        "finished_at": T0 + 50,
        "stages": {
            "synthesize": {"state": "finished", "fingerprint": "a" * 20, "started_at": T0 + 1, "finished_at": T0 + 11,
                           "duration_s": 10.0, "metrics": {"samples": 24.0}},
            "train_baseline": {"state": "failed", "fingerprint": "b" * 20, "started_at": T0 + 12,
                               "finished_at": T0 + 50, "error": "RuntimeError: CUDA out of memory"},
            "evaluate": {"state": "pending", "fingerprint": "c" * 20},
        },
    }


def test_one_row_per_stage_in_the_record_order_and_one_bar_per_attempt():
    rows = timeline_rows(record_with_attempts(), now=T0 + 250)
    assert [row.stage for row in rows] == ["synthesize", "train_baseline", "train_other", "evaluate", "evaluate_b",
                                           "register"]
    by_stage = {row.stage: row for row in rows}
    assert by_stage["train_baseline"].bars == (Bar(1, 5.0, 60.0, "retried"), Bar(2, 62.0, 200.0, "finished"))
    assert by_stage["train_other"].bars == (Bar(1, 5.0, 90.0, "failed"),)
    assert by_stage["train_baseline"].nodes == ("10.0.0.1", "10.0.0.2")


def test_a_running_attempt_ends_now_and_stages_that_ran_nothing_have_no_bar_but_say_why():
    rows = {row.stage: row for row in timeline_rows(record_with_attempts(), now=T0 + 250)}
    assert rows["evaluate_b"].bars == (Bar(1, 210.0, 250.0, "running"),)
    assert (rows["synthesize"].bars, rows["synthesize"].note) == ((), "cached")
    assert (rows["register"].bars, rows["register"].note) == ((), "skipped")
    assert (rows["evaluate"].bars, rows["evaluate"].note) == ((), "blocked by train_other")


def test_a_failed_attempt_of_a_stage_still_running_is_one_that_will_be_retried():
    record = record_with_attempts()
    record["stages"]["evaluate_b"]["attempts"] = [{"attempt": 1, "started_at": T0 + 210, "finished_at": T0 + 215,
                                                   "error": "OSError: x", "retryable": True}]
    (row,) = [r for r in timeline_rows(record, now=T0 + 250) if r.stage == "evaluate_b"]
    assert row.bars == (Bar(1, 210.0, 215.0, "retried"),)


def test_a_record_without_attempts_draws_each_stage_from_its_own_start_and_end():
    rows = {row.stage: row for row in timeline_rows(old_record())}
    assert rows["synthesize"].bars == (Bar(1, 1.0, 11.0, "finished"),)
    assert rows["train_baseline"].bars == (Bar(1, 12.0, 50.0, "failed"),)
    assert rows["evaluate"].bars == () and rows["evaluate"].note == "pending"
    assert rows["synthesize"].nodes == ()


def test_a_stage_left_running_in_a_finished_record_ends_at_the_run_end_not_the_clock():
    record = old_record()
    record["stages"]["train_baseline"] = {"state": "running", "fingerprint": "b" * 20, "started_at": T0 + 12}
    (row,) = [r for r in timeline_rows(record) if r.stage == "train_baseline"]
    assert row.bars == (Bar(1, 12.0, 50.0, "running"),)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.size


def test_the_picture_is_a_png_as_wide_as_a_screen_and_taller_with_more_stages():
    width, height = png_size(timeline_png(record_with_attempts(), now=T0 + 250))
    assert 800 <= width <= 1600 and 300 <= height <= 1000
    old_width, old_height = png_size(timeline_png(old_record()))
    assert old_width == width and old_height < height  # 3 rows against 6


def test_a_record_whose_stages_never_started_still_draws():
    record = {"run_id": "r", "config_name": "demo", "state": "running", "started_at": T0,
              "stages": {"synthesize": {"state": "pending", "fingerprint": "a" * 20}}}
    assert png_size(timeline_png(record))[0] > 0


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def status(store, *args: str):
    return CliRunner().invoke(app, ["status", *args, "--store", str(store)], env={"COLUMNS": "250"})


def test_status_shows_start_end_duration_attempts_with_the_last_error_nodes_and_blocked_by(tmp_path):
    record = record_with_attempts()
    record.update(state="failed", finished_at=T0 + 260)
    record["stages"]["evaluate_b"]["attempts"][0]["finished_at"] = T0 + 260
    record["stages"]["evaluate_b"].update(state="finished", finished_at=T0 + 260)
    Store(str(tmp_path)).save_run(record)
    result = status(tmp_path, record["run_id"])
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    retried = lines["train_baseline"]
    assert clock(T0 + 5) in retried and clock(T0 + 200) in retried and "195.0s" in retried
    assert "2, last error OSError: node died" in retried and "10.0.0.1, 10.0.0.2" in retried
    failed = lines["train_other"]
    assert "1, last error ValueError: lr must be positive" in failed and "85.0s" in failed
    assert "blocked" in lines["evaluate"]
    assert "by train_other" in result.output
    assert "train_other: ValueError: lr must be positive, got -1" in result.output  # the whole error, below
    assert "train_baseline: OSError" not in result.output  # a retried error of a finished stage is no failure
    assert "cached" in lines["synthesize"] and "skipped" in lines["register"]


def test_status_of_a_record_without_attempts_shows_one_attempt_and_its_error(tmp_path):
    record = old_record()
    Store(str(tmp_path)).save_run(record)
    result = status(tmp_path, record["run_id"])
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    assert clock(T0 + 1) in lines["synthesize"] and "10.0s" in lines["synthesize"] and "samples 24" in lines["synthesize"]
    assert "1, last error RuntimeError: CUDA out of memory" in lines["train_baseline"]
    assert "38.0s" in lines["train_baseline"]
    assert "train_baseline: RuntimeError: CUDA out of memory" in result.output


def test_status_timeline_writes_the_png_and_prints_its_path(tmp_path):
    record = record_with_attempts()
    Store(str(tmp_path / "store")).save_run(record)
    picture = tmp_path / "timeline.png"
    result = status(tmp_path / "store", record["run_id"], "--timeline", str(picture))
    assert result.exit_code == 0, result.output
    assert f"timeline: {picture}" in result.output
    (running,) = [line for line in result.output.splitlines() if line.startswith("│ evaluate_b ")]
    assert "s so far" in running and clock(T0 + 210) in running  # the run is still going
    assert png_size(picture.read_bytes())[0] > 0


def test_status_timeline_into_a_missing_folder_names_the_file(tmp_path):
    record = old_record()
    Store(str(tmp_path)).save_run(record)
    result = status(tmp_path, record["run_id"], "--timeline", str(tmp_path / "nowhere" / "t.png"))
    assert result.exit_code == 2
    assert f"cannot write the timeline to {tmp_path / 'nowhere' / 't.png'}" in result.output
