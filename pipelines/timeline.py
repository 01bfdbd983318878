"""A run record as a Gantt chart: one row per stage, a bar per attempt, coloured by how it ended.

`timeline_rows` is the pure part (what to draw, from the record alone); `timeline_png` draws it.
`facerestore status RUN --timeline FILE.png` writes the picture, and the runner logs the same one
to the parent MLflow run as `timeline.png`.

Records written before stages had `attempts` still draw: such a stage's started_at / finished_at
(and its `error`) make its one attempt.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

# Attempt outcomes and their colours (also the legend's order).
OUTCOME_COLOURS = {"finished": "#2e9e4f", "failed": "#d62728", "retried": "#ff9f1c", "running": "#1f77b4",
                   "interrupted": "#8c8c8c"}
# Stages that ran nothing in this run: listed, no bar.
NO_BAR_STATES = ("cached", "skipped", "pending", "waiting", "blocked")


@dataclass(frozen=True)
class Bar:
    attempt: int
    start: float  # seconds since the run started
    end: float
    outcome: str  # a key of OUTCOME_COLOURS


@dataclass(frozen=True)
class Row:
    stage: str
    state: str
    bars: tuple[Bar, ...]
    nodes: tuple[str, ...]
    note: str  # what stands in the row when there is no bar ("cached", "blocked by synthesize")


def _attempts(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The stage's attempts; an older record's stage timing as its single attempt."""
    if info.get("attempts"):
        return list(info["attempts"])
    if info.get("started_at") is None:
        return []
    return [{"attempt": 1, "started_at": info["started_at"], "finished_at": info.get("finished_at"),
             "error": info.get("error"), "retryable": False}]


def _outcome(attempt: dict[str, Any], last: bool, state: str) -> str:
    if not last:
        return "retried"  # a later attempt exists, so this one ended and was retried
    if attempt.get("finished_at") is None:
        return "running" if state == "running" else "interrupted"
    if attempt.get("error"):
        return "failed" if state == "failed" else ("retried" if state == "running" else "interrupted")
    return "interrupted" if state == "interrupted" else "finished"


def _run_start(record: dict[str, Any]) -> float:
    if record.get("started_at") is not None:
        return float(record["started_at"])
    starts = [a["started_at"] for info in record["stages"].values() for a in _attempts(info)]
    return min(starts) if starts else 0.0


def timeline_rows(record: dict[str, Any], now: float | None = None) -> list[Row]:
    """One row per stage in the record's order. An attempt still going ends at `now` (default: the
    clock while the run is running, else the run's finished_at)."""
    origin = _run_start(record)
    if now is None:
        now = time.time() if record.get("state") == "running" or record.get("finished_at") is None \
            else float(record["finished_at"])
    rows = []
    for name, info in record["stages"].items():
        state = info.get("state", "pending")
        attempts = _attempts(info) if state not in NO_BAR_STATES else []
        bars = []
        for index, attempt in enumerate(attempts):
            start = float(attempt["started_at"])
            end = attempt.get("finished_at")
            end = float(end) if end is not None else max(now, start)
            bars.append(Bar(int(attempt.get("attempt", index + 1)), start - origin, end - origin,
                            _outcome(attempt, index == len(attempts) - 1, state)))
        note = ""
        if not bars:
            blocked_by = info.get("blocked_by") or []
            note = f"blocked by {', '.join(blocked_by)}" if state == "blocked" and blocked_by else state
        rows.append(Row(name, state, tuple(bars), tuple(info.get("nodes") or ()), note))
    return rows


def nodes_text(nodes: tuple[str, ...] | list[str], most: int = 3) -> str:
    shown = ", ".join(nodes[:most])
    return f"{shown} +{len(nodes) - most}" if len(nodes) > most else shown


def timeline_png(record: dict[str, Any], now: float | None = None) -> bytes:
    """The Gantt chart of a run record, as PNG bytes."""
    # Figure + the Agg canvas directly, not pyplot: no global backend state, safe off the main thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = timeline_rows(record, now)
    span = max([bar.end for row in rows for bar in row.bars] + [1.0])
    figure = Figure(figsize=(11, 1.6 + 0.5 * max(len(rows), 1)), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for y, row in enumerate(rows):
        for bar in row.bars:
            axes.barh(y, max(bar.end - bar.start, span * 0.002), left=bar.start, height=0.6,
                      color=OUTCOME_COLOURS[bar.outcome], edgecolor="black", linewidth=0.5)
            if len(row.bars) > 1:
                axes.text(bar.start + (bar.end - bar.start) / 2, y, str(bar.attempt), ha="center", va="center",
                          fontsize=7, color="white")
        if row.bars:
            if row.nodes:
                axes.text(row.bars[-1].end + span * 0.01, y, nodes_text(row.nodes), va="center", fontsize=8)
        else:
            axes.text(span * 0.01, y, row.note, va="center", fontsize=8, style="italic", color="#555555")
    axes.set_yticks(range(len(rows)), [row.stage for row in rows])
    axes.set_ylim(len(rows) - 0.4, -0.6)  # the first stage on top
    axes.set_xlim(0, span * 1.25)  # room for the node labels right of the last bar
    axes.set_xlabel("seconds since the run started")
    axes.grid(axis="x", alpha=0.3)
    used = [outcome for outcome in OUTCOME_COLOURS if any(b.outcome == outcome for r in rows for b in r.bars)]
    if used:
        axes.legend(handles=[Patch(color=OUTCOME_COLOURS[o], label=o) for o in used], loc="upper left",
                    bbox_to_anchor=(1.0, 1.0), fontsize=8)
    axes.set_title(f"pipeline run {record.get('run_id', '?')} ({record.get('config_name', '?')}): "
                   f"{record.get('state', '?')}")
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()
