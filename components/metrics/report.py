"""The benchmark report: every method and classical baseline on one held-out split, one table per
task and scoring protocol.

Rows are the baselines then the trained methods; columns the metrics. A task has a table per
protocol it is scored under (components/metrics/protocols.py: `project`, then its papers'), and
every title names the protocol. Under the project protocol's table, the same scores split by the
task's breakdown (mask-ratio bucket for inpainting, degradation level for blind restoration,
scale for super-resolution); a paper protocol's table has no breakdown. Written as Markdown
(`report.md`), CSV (`report.csv`, one row per task x protocol x group x method x metric, "all"
for the whole split) and an HTML page (`report.html`) that shows each task's image grid
(`grid_<task>.png`: one column per baseline and method, then the target, each named in a
header strip drawn into the picture, so a grid opened alone, from MLflow, still reads).
`notes` (e.g. identity_net: the face recogniser behind identity and id_accuracy; what each
protocol computes) head the Markdown and HTML pages and go into the details.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from components.data.schema import encode_png, to_uint8

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

ALL = "all"
PROJECT = "project"  # the protocol whose metric keys carry no protocol (components/metrics/protocols.py)
# Which way is better, for the reader of a table.
LOWER_IS_BETTER = {"l1", "l1_hole", "lpips", "fid", "mae"}  # identity, id_accuracy: higher is better


@dataclass
class TaskReport:
    scores: dict[str, dict[str, float]]  # name -> metric -> mean
    breakdown: str | None
    groups: dict[str, dict[str, dict[str, float]]]  # group -> name -> metric -> mean
    models: list[str]


@dataclass
class Report:
    split: str
    samples: int
    tasks: dict[str, dict[str, TaskReport]] = field(default_factory=dict)  # task -> protocol -> table
    grids: dict[str, Any] = field(default_factory=dict)  # task -> uint8 H x W x 3
    notes: dict[str, str] = field(default_factory=dict)  # what a reader needs to read the numbers

    def add_task(self, task: str, scores: dict, breakdown: str | None, groups: dict, models: list[str],
                 protocol: str = PROJECT) -> None:
        self.tasks.setdefault(task, {})[protocol] = TaskReport(scores, breakdown, groups, models)

    def tables(self) -> list[tuple[str, str, TaskReport]]:
        """(task, protocol, table) in report order: by task, the project protocol's first."""
        return [(task, protocol, table) for task, protocols in self.tasks.items()
                for protocol, table in protocols.items()]

    def flat_metrics(self) -> dict[str, float]:
        """`<name>/<metric>` (project protocol) and `<name>/<protocol>/<metric>` over the whole
        split: what MLflow logs and the register stage compares."""
        return {metric_key(name, protocol, metric): value for _, protocol, table in self.tables()
                for name, values in table.scores.items() for metric, value in values.items() if value is not None}

    def as_details(self) -> dict[str, Any]:
        return {"scores": {name: values for _, protocol, table in self.tables() if protocol == PROJECT
                           for name, values in table.scores.items()},
                "notes": dict(self.notes),
                "tasks": {task: {protocol: {"models": t.models, "scores": t.scores, "breakdown": t.breakdown,
                                            "groups": t.groups} for protocol, t in protocols.items()}
                          for task, protocols in self.tasks.items()}}

    def files(self) -> dict[str, bytes]:
        files = {"report.md": self.markdown().encode(), "report.csv": self.csv().encode(),
                 "report.html": self.html().encode()}
        files.update({f"grid_{task}.png": encode_png(image) for task, image in self.grids.items()})
        return files

    def markdown(self) -> str:
        lines = [f"# Benchmark: {self.samples} '{self.split}' samples", ""]
        if self.notes:
            lines += [*(f"- {key}: {value}" for key, value in self.notes.items()), ""]
        for task, protocol, report in self.tables():
            lines += [f"## {table_title(task, protocol)}", "", *markdown_table(report.scores), ""]
            for group, scores in report.groups.items():
                lines += [f"### {group_title(group, report.breakdown, protocol)}", "", *markdown_table(scores), ""]
        return "\n".join(lines)

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["task", "protocol", "breakdown", "group", "name", "metric", "value"])
        for task, protocol, report in self.tables():
            for name, values in report.scores.items():
                for metric, value in values.items():
                    writer.writerow([task, protocol, "", ALL, name, metric,
                                     "unavailable" if value is None else f"{value:.6g}"])
            for group, scores in report.groups.items():
                for name, values in scores.items():
                    for metric, value in values.items():
                        writer.writerow([task, protocol, report.breakdown or "", group, name, metric, f"{value:.6g}"])
        return out.getvalue()

    def html(self) -> str:
        parts = ["<html><head><meta charset='utf-8'><title>facerestore benchmark</title></head><body>",
                 f"<h1>Benchmark: {self.samples} '{html.escape(self.split)}' samples</h1>"]
        parts += [f"<p>{html.escape(key)}: {html.escape(value)}</p>" for key, value in self.notes.items()]
        for task, protocols in self.tasks.items():
            for index, (protocol, report) in enumerate(protocols.items()):
                parts += [f"<h2>{html.escape(table_title(task, protocol))}</h2>", html_table(report.scores)]
                if index == 0 and task in self.grids:  # the grid once, under the task's first table
                    names = " | ".join([*report.scores, "target"])
                    parts.append(f"<p>{html.escape(names)}</p><img src='grid_{html.escape(task)}.png'>")
                for group, scores in report.groups.items():
                    parts += [f"<h3>{html.escape(group_title(group, report.breakdown, protocol))}</h3>",
                              html_table(scores)]
        parts.append("</body></html>")
        return "\n".join(parts)


def metric_key(name: str, protocol: str, metric: str) -> str:
    """The MLflow / metrics.json key of a method's or baseline's mean: the project protocol's keep
    their `<name>/<metric>` form (what register and earlier runs use), a paper's add its name."""
    return f"{name}/{metric}" if protocol == PROJECT else f"{name}/{protocol}/{metric}"


def table_title(task: str, protocol: str) -> str:
    return f"{task} (protocol: {protocol})"


def group_title(group: str, breakdown: str | None, protocol: str) -> str:
    return f"{group} ({breakdown}; protocol: {protocol})" if breakdown else f"{group} (protocol: {protocol})"


def image_grid(columns: Sequence[Tensor], labels: Sequence[str] | None = None) -> np.ndarray:
    """uint8 H x W x 3: the columns side by side, each (rows, C, h, w) in [0, 1] stacked top to
    bottom; one-channel images (masks, edges) shown grey. `labels`, one per column: a white
    strip on top names each column in black (see `label_strip`), so the picture reads without
    the page it came from; None: no strip, the images alone."""
    import numpy as np
    import torch

    columns = [column.expand(-1, 3, -1, -1) if column.shape[1] == 1 else column for column in columns]
    image = torch.cat([torch.cat(list(column), dim=1) for column in columns], dim=2)  # C x rows*h x cols*w
    grid = to_uint8(image.permute(1, 2, 0)).numpy()
    if labels is None:
        return grid
    if len(labels) != len(columns):
        raise ValueError(f"{len(labels)} labels for {len(columns)} grid columns")
    return np.concatenate([label_strip(list(labels), [column.shape[-1] for column in columns]), grid])


# The header of a labelled grid: OpenCV's Hershey font, black on white, centred over each column.
# A name too wide for its column is wrapped after `_ - . /` or a space (at most LABEL_LINES
# lines), the whole strip's font shrunk as far as LABEL_MIN_SCALE, and only then cut anywhere.
LABEL_SCALE_PER_PX = 0.4 / 64  # 0.4 at 64 px columns: "train_cafin" fits one line
LABEL_MIN_SCALE = 0.3  # about 8 px tall capitals, the smallest that stays readable
LABEL_MAX_SCALE = 1.0
LABEL_LINES = 3
LABEL_PAD = 2  # pixels kept clear at each side of a column and above / below the text
SEPARATORS = "_-./ "


def label_strip(labels: list[str], widths: list[int]) -> np.ndarray:
    """uint8 (strip height) x sum(widths) x 3, white with each label in black over its column."""
    import cv2
    import numpy as np

    scale, lines = fit_labels(labels, widths)
    (_, text_h), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    line_h = text_h + baseline + LABEL_PAD
    height = max([1, *map(len, lines)]) * line_h + 2 * LABEL_PAD
    cells = []
    for width, block in zip(widths, lines):
        cell = np.full((height, width, 3), 255, np.uint8)  # drawn apart: a name never spills onto the next column
        for row, line in enumerate(block):
            origin = (max(0, (width - text_width(line, scale)) // 2), LABEL_PAD + row * line_h + text_h)
            cv2.putText(cell, line, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
        cells.append(cell)
    return np.concatenate(cells, axis=1)


def fit_labels(labels: list[str], widths: list[int]) -> tuple[float, list[list[str]]]:
    """(font scale, each label's lines): the largest scale, from the one the narrowest column
    suggests down to LABEL_MIN_SCALE, at which every label wraps into LABEL_LINES lines without
    cutting a word; failing that, LABEL_MIN_SCALE with the long words cut."""
    start = min(LABEL_MAX_SCALE, max(LABEL_MIN_SCALE, LABEL_SCALE_PER_PX * min(widths, default=64)))
    scale = start
    while True:
        wrapped = [wrap_label(label, width - 2 * LABEL_PAD, scale) for label, width in zip(labels, widths)]
        if all(not cut and len(lines) <= LABEL_LINES for lines, cut in wrapped) or scale <= LABEL_MIN_SCALE:
            return scale, [lines for lines, _ in wrapped]
        scale = max(LABEL_MIN_SCALE, round(scale - 0.05, 2))


def wrap_label(label: str, width: int, scale: float) -> tuple[list[str], bool]:
    """(lines of `label` at most `width` px wide at `scale`, whether a word had to be cut): greedy,
    breaking after a separator; a word wider than a line is cut where it overflows."""
    import re

    chars = re.escape(SEPARATORS)
    lines, line, cut = [], "", False
    for piece in re.findall(f"[^{chars}]*[{chars}]*", label):
        if not piece:
            continue
        if text_width((line + piece).rstrip(SEPARATORS), scale) <= width:  # a trailing separator may overhang
            line += piece
            continue
        if line.strip():
            lines.append(line.rstrip())
        line = piece
        while text_width(line.rstrip(SEPARATORS), scale) > width and len(line.rstrip()) > 1:
            cut = True
            keep = 1
            while keep < len(line) and text_width(line[:keep + 1], scale) <= width:
                keep += 1
            lines.append(line[:keep])
            line = line[keep:]
    if line.strip():
        lines.append(line.rstrip())
    return lines, cut


def text_width(text: str, scale: float) -> int:
    import cv2

    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] if text else 0


def metric_names(scores: dict[str, dict[str, float]]) -> list[str]:
    return list(dict.fromkeys(metric for values in scores.values() for metric in values))


def best_of(scores: dict[str, dict[str, float]], metric: str) -> str | None:
    ranked = [(v[metric], name) for name, v in scores.items() if v.get(metric) is not None and v[metric] == v[metric]]
    if not ranked:
        return None
    return (min(ranked) if metric in LOWER_IS_BETTER else max(ranked))[1]


def markdown_table(scores: dict[str, dict[str, float]]) -> list[str]:
    metrics = metric_names(scores)
    best = {metric: best_of(scores, metric) for metric in metrics}
    rows = [f"| method | {' | '.join(metrics)} |", "|---|" + "---:|" * len(metrics)]
    for name, values in scores.items():
        cells = [format_cell(values.get(metric), best[metric] == name) for metric in metrics]
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return rows


def html_table(scores: dict[str, dict[str, float]]) -> str:
    metrics = metric_names(scores)
    best = {metric: best_of(scores, metric) for metric in metrics}
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{format_cell(values.get(m), best[m] == name, html_bold=True)}</td>" for m in metrics)
        + "</tr>" for name, values in scores.items())
    return f"<table border='1'><tr><th>method</th>{head}</tr>{body}</table>"


def format_cell(value: float | None, is_best: bool, html_bold: bool = False) -> str:
    if value is None:
        return "unavailable"
    text = f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    if not is_best:
        return text
    return f"<b>{text}</b>" if html_bold else f"**{text}**"
