"""The terminal: the live per-stage view while a pipeline runs, and the tables after."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from pipelines.dag import PlanEntry

STATE_STYLE = {"cached": "green", "finished": "bold green", "running": "yellow", "pending": "dim",
               "failed": "bold red", "stale": "yellow", "missing": "cyan", "skipped": "dim", "interrupted": "red",
               "waiting": "cyan", "blocked": "red"}
KEY_METRICS = ("psnr", "ssim", "l1", "input_psnr", "loss", "samples", "skipped", "step")


def styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def progress_text(fields: dict[str, Any]) -> str:
    done, total, unit = fields.get("done"), fields.get("total"), fields.get("unit", "")
    if done is None:
        return ""
    if not total:
        return f"{done} {unit}"
    filled = int(20 * min(done / total, 1.0))
    return f"{'█' * filled}{'░' * (20 - filled)} {done}/{total} {unit}"


def detail_text(fields: dict[str, Any]) -> str:
    parts = [f"{key} {fields[key]:.4g}" if isinstance(fields[key], float) else f"{key} {fields[key]}"
             for key in ("loss", "epoch", "val", "resumed_from", "skipped", "message") if key in fields]
    return "  ".join(parts)


def live_table(record: dict[str, Any], progress: dict[str, dict[str, Any]]) -> Table:
    table = Table(title=f"pipeline run {record['run_id']} ({record['config_name']})", expand=False)
    for column in ("stage", "state", "progress", "detail", "nodes"):
        table.add_column(column)
    for name, info in record["stages"].items():
        fields = progress.get(name, {})
        table.add_row(name, styled(info["state"]), progress_text(fields), live_detail(info, fields),
                      ", ".join(fields.get("nodes") or info.get("nodes") or []))
    return table


def live_detail(info: dict[str, Any], fields: dict[str, Any]) -> str:
    """What a stage is doing, or what it waits for (another run's lease, a retry, a failed upstream)."""
    if info["state"] == "waiting":
        return f"waiting for run {info.get('waiting_for')} (its lease on this output)"
    if info["state"] == "blocked":
        return f"blocked by {', '.join(info.get('blocked_by') or [])}"
    attempts = info.get("attempts") or []
    if info["state"] == "pending" and attempts:
        return f"attempt {len(attempts)} failed ({attempts[-1]['error'][:80]}); retrying"
    detail = detail_text(fields)
    return f"attempt {len(attempts)}  {detail}" if len(attempts) > 1 else detail


class LiveView:
    """Polls the progress board twice a second and redraws; stops with the pipeline."""

    def __init__(self, console: Console, record: dict[str, Any], board: Any):
        self.console, self.record, self.board = console, record, board
        self.progress: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._live = Live(console=console, refresh_per_second=4, transient=False)
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "LiveView":
        self._live.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._refresh()
        self._live.__exit__(*exc)
        if not self.console.is_terminal:
            self.console.line()  # off a terminal Live leaves its last frame without a newline

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self._refresh()

    def _refresh(self) -> None:
        import ray

        try:
            self.progress = ray.get(self.board.snapshot.remote(), timeout=2)
        except Exception:  # noqa: BLE001 - a missed refresh must never stop the pipeline
            pass
        self._live.update(live_table(self.record, self.progress))


def format_metrics(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return ""
    # Evaluation metrics are "<source>/<metric>": match on the metric part, sources side by side.
    keys = [k for name in KEY_METRICS for k in sorted(metrics) if k.rsplit("/", 1)[-1] == name][:4]
    keys = keys or sorted(metrics)[:4]
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys)


def summary_table(record: dict[str, Any]) -> Table:
    table = Table(title=f"pipeline run {record['run_id']}: {record['state']}")
    for column in ("stage", "state", "duration", "fingerprint", "key metrics", "mlflow run"):
        table.add_column(column)
    for name, info in record["stages"].items():
        duration = f"{info['duration_s']:.1f}s" if "duration_s" in info else ""
        table.add_row(name, styled(info["state"]), duration, info["fingerprint"][:12],
                      format_metrics(info.get("metrics")), (info.get("mlflow_run_id") or "")[:12])
    return table


def _clock(t: float | None, day: str) -> str:
    """Clock time; the date too when it is not the run's start day."""
    if t is None:
        return ""
    local = time.localtime(t)
    return time.strftime("%H:%M:%S" if time.strftime("%Y-%m-%d", local) == day else "%m-%d %H:%M:%S", local)


def _duration(info: dict[str, Any], now: float) -> str:
    if "duration_s" in info:
        return f"{info['duration_s']:.1f}s"
    if info.get("started_at") is None:
        return ""
    if info.get("finished_at") is not None:
        return f"{info['finished_at'] - info['started_at']:.1f}s"
    return f"{now - info['started_at']:.1f}s so far" if info.get("state") == "running" else ""


def shorten(text: str, width: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def last_error(info: dict[str, Any]) -> str | None:
    """The error of the stage's last failed attempt (`error` in records written before attempts)."""
    for attempt in reversed(info.get("attempts") or []):
        if attempt.get("error"):
            return attempt["error"]
    return info.get("error")


def _attempts_text(info: dict[str, Any]) -> str:
    attempts = info.get("attempts")
    count = len(attempts) if attempts else (1 if info.get("started_at") is not None else 0)
    if not count:
        return ""
    error = last_error(info)
    return f"{count}, last error {shorten(error, 40)}" if error else str(count)


def status_table(record: dict[str, Any], now: float | None = None) -> Table:
    """`facerestore status`: the summary's columns plus when, how often and where each stage ran."""
    from pipelines.timeline import nodes_text

    now = time.time() if now is None else now
    started = record.get("started_at")
    day = time.strftime("%Y-%m-%d", time.localtime(started)) if started is not None else ""
    title = f"pipeline run {record['run_id']}: {record['state']}"
    if started is not None:
        title += f" (started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))})"
    table = Table(title=title)
    table.add_column("stage", no_wrap=True)  # the name users pass to --only / --from
    for column in ("state", "start", "end", "duration", "attempts", "nodes", "fingerprint", "key metrics", "mlflow run"):
        table.add_column(column)
    for name, info in record["stages"].items():
        state = styled(info["state"])
        if info["state"] == "blocked" and info.get("blocked_by"):
            state += f"\nby {', '.join(info['blocked_by'])}"
        table.add_row(name, state, _clock(info.get("started_at"), day), _clock(info.get("finished_at"), day),
                      _duration(info, now), _attempts_text(info), nodes_text(info.get("nodes") or []),
                      info.get("fingerprint", "")[:12], format_metrics(info.get("metrics")),
                      (info.get("mlflow_run_id") or "")[:12])
    return table


def plan_table(entries: list[PlanEntry], notes: dict[str, str] | None = None) -> Table:
    """`notes`: what a cached output says about itself (e.g. how many inputs it skipped)."""
    notes = notes or {}
    table = Table(title="plan")
    for column in ("stage", "kind", "state", "runs", "fingerprint", "why"):
        table.add_column(column)
    for e in entries:
        why = [*e.reasons, *([notes[e.stage.name]] if e.stage.name in notes else [])]
        table.add_row(e.stage.name, e.stage.kind, styled(e.state.value), "yes" if e.will_run else "no",
                      e.fingerprint[:12], "\n".join(why))
    return table


def runs_table(runs: list[dict[str, Any]]) -> Table:
    table = Table(title="pipeline runs")
    table.add_column("run id", no_wrap=True)  # users copy it into `facerestore status`
    for column in ("config", "started", "state", "ran", "cached"):
        table.add_column(column)
    for run in runs:
        states = [s["state"] for s in run["stages"].values()]
        table.add_row(run["run_id"], run["config_name"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["started_at"])),
                      styled(run["state"]), str(states.count("finished")), str(states.count("cached")))
    return table


def report_tables(evaluation: dict[str, Any]) -> list[Table]:
    """The benchmark report of an evaluate stage's manifest details: a table per task and
    protocol, each followed by its breakdown; every title names the protocol."""
    from components.metrics.report import PROJECT, group_title, table_title

    tables = []
    for task, protocols in evaluation.get("tasks", {}).items():
        if "scores" in protocols:  # an evaluation written before protocols (CODE_VERSION 3): the project's
            protocols = {PROJECT: protocols}
        # the manifest's JSON sorts keys: the project protocol first again, then the papers'
        for protocol, report in sorted(protocols.items(), key=lambda item: item[0] != PROJECT):
            sections = [(table_title(task, protocol), report["scores"])]
            sections += [(f"{task} - {group_title(group, report['breakdown'], protocol)}", scores)
                         for group, scores in report["groups"].items()]
            tables += [scores_table(title, scores) for title, scores in sections]
    return tables


def scores_table(title: str, scores: dict[str, dict[str, float | None]], rows: str = "method",
                 best_in_green: bool = True) -> Table:
    """A row per name (`rows`: methods and baselines, or images), a column per metric; the best of
    each metric in green."""
    from components.metrics.report import best_of, format_cell, metric_names

    metrics = metric_names(scores)
    table = Table(title=title, title_justify="left", min_width=len(title))  # the title on one line
    table.add_column(rows)
    for metric in metrics:
        table.add_column(metric, justify="right")
    best = {metric: best_of(scores, metric) if best_in_green else None for metric in metrics}
    for name, values in scores.items():
        cells = [format_cell(values.get(m), False) for m in metrics]
        cells = [f"[bold green]{c}[/]" if best[m] == name else c for c, m in zip(cells, metrics)]
        table.add_row(name, *cells)
    return table


def folder_scores_table(result: Any) -> Table:
    """`facerestore score`'s figures (a FolderScores): a row per image pair, then their mean; a
    value not scored (NaN) reads "unavailable"."""
    import math

    from components.metrics.report import format_cell

    rows = {image.stem: {metric: None if math.isnan(value) else value for metric, value in image.values.items()}
            for image in result.images}
    table = scores_table(f"{result.protocol} protocol", rows, rows="image", best_in_green=False)
    table.add_section()
    table.add_row("[bold]mean[/]", *(f"[bold]{format_cell(value, False)}[/]" for value in result.means().values()))
    return table
