"""evaluate: every upstream model and the classical baselines of its task, scored on one held-out split.

Each model is scored as its task's object says (components/tasks): restorers against
the untouched degraded input ("input", holes filled with the known pixels' mean colour),
inpainting against mean-fill, OpenCV Telea and Navier-Stokes, super-resolution against
bicubic, the edge GAN by edge precision / recall / F1 inside the holes. Models whose task is
not an image (a DRE, a GAN prior) are upstream material and are not scored here.
Learned metrics (components/metrics/learned.py) score face images: LPIPS and FID with their
weights given, identity and id_accuracy from ArcFace when `learned.identity_net` is given,
else from dlib's face recognition ResNet (the report's `identity_net` note says which).
Scoring protocols (components/metrics/protocols.py): every task is scored under the project's
metrics and, unless `protocols` says otherwise, under the protocol of its methods' papers
(Task.paper_protocol, or the method's own: inpainting EdgeConnect's, super-resolution CTCNet's,
restoration and Panini's x16 SR Panini-Net's), on the 8-bit images a user would save of each
output and target. Metric keys are `<model stage or baseline>/<metric>` under the project
protocol and `<model stage or baseline>/<protocol>/<metric>` under a paper's. Writes
metrics.json, the report (a table per task and protocol) and one grid_<task>.png per task
(input | each baseline | each model | target, a row per sample) and logs them to the stage's
MLflow run.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from components.metrics.learned import LearnedMetricsConfig
from pipelines.context import StageContext, StageOutput

# 3: identity and id_accuracy from dlib's ResNet by default; 4: the paper protocols' tables and
# `<name>/<protocol>/<metric>` keys beside the project's, means averaged in float64
CODE_VERSION = "4"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    batch_size: int = Field(32, gt=0)
    grid_rows: int = Field(8, ge=0, description="samples shown in each grid_<task>.png")
    learned: LearnedMetricsConfig = Field(default_factory=LearnedMetricsConfig,
                                          description="weights of LPIPS / FID / ArcFace; unset = unavailable, but "
                                                      "identity and id_accuracy use dlib's ResNet")
    protocols: list[str] | None = Field(
        None, min_length=1,
        description="scoring protocols (project, ctcnet, edgeconnect, panini), each scoring every task whose outputs "
                    "are images; unset: project plus the paper protocol of each scored method")

    @field_validator("protocols")
    @classmethod
    def _known_protocols(cls, names: list[str] | None) -> list[str] | None:
        from components.metrics.protocols import protocol_named

        if names is None:
            return None
        for name in names:
            protocol_named(name)  # an unknown name fails here, at config time, naming the known ones
        return list(dict.fromkeys(names))


def resources(cfg: Config) -> dict[str, float]:
    """The scoring runs in the stage's own process, on one CPU."""
    return {"CPU": 1.0}


def run(ctx: StageContext, cfg: Config, inputs: dict) -> StageOutput:
    from components.metrics.learned import LearnedMetrics
    from components.models.files import load_model_dir
    from components.tasks import RESTORATION, task_of
    from pipelines.stages.inputs import of_kind, one_of_kind

    shards = one_of_kind(inputs, "shards", ctx.stage)
    models = {a.stage: load_model_dir(a.uri) for a in of_kind(inputs, "model")}
    by_task: dict[Any, dict[str, Any]] = {}  # Task -> {model stage: method}
    for name, method in models.items():
        if task_of(method).scoring is not None:
            by_task.setdefault(task_of(method), {})[name] = method
    if not by_task:  # nothing to score but the data itself: how bad is the untouched input
        by_task = {RESTORATION: {}}
    columns = sorted({column for task in by_task for column in task.scoring.columns})
    data, groups = read_split(shards, cfg.split, columns)
    report = score_split(by_task, data, groups, cfg, LearnedMetrics(cfg.learned))
    metrics = report.flat_metrics()
    write_outputs(ctx, metrics, report)
    ctx.progress.update(done=report.samples, total=report.samples, unit="images")
    return StageOutput(artifact="evaluation", count=report.samples, metrics=metrics,
                       details={"split": cfg.split, "models": sorted(models), **report.as_details()})


def score_split(by_task: dict[Any, dict[str, Any]], data: dict, groups: dict[str, list[str]], cfg: Config,
                learned: Any) -> Any:
    """The Report of each task's baselines and methods ({Task: {model stage: method}}) on the
    split's `data`: a table per protocol (`task_protocols`), learned metrics and the breakdown
    under the project protocol's, the task's grid."""
    from components.metrics.protocols import PROTOCOLS, available_means
    from components.metrics.report import PROJECT, Report
    from components.metrics.scoring import grouped_means, mean_scores

    report = Report(split=cfg.split, samples=len(data["hq"]))
    if learned.identity_network and any(task.scoring.learned_metrics for task in by_task):
        report.notes["identity_net"] = learned.identity_network
    for task, methods in by_task.items():
        scoring = task.scoring
        per_image, outputs = score_task(task, methods, data, cfg.batch_size)
        target = scoring.target(data)
        for name in task_protocols(task, methods, cfg.protocols):
            if name == PROJECT:
                means = {out_name: mean_scores(values) for out_name, values in per_image.items()}
                if scoring.learned_metrics:
                    for out_name, out in outputs.items():
                        per_image[out_name].update(learned.per_image(out, target))
                        means[out_name] = learned.unavailable({**mean_scores(per_image[out_name]),
                                                               **learned.per_set(out, target)})
                report.add_task(task.name, means, scoring.breakdown,
                                grouped_means(per_image, groups[scoring.breakdown]), models=sorted(methods))
                continue
            protocol = PROTOCOLS[name]
            report.notes[f"protocol {name}"] = protocol.summary
            scores = {out_name: available_means(protocol.score(out, target)) for out_name, out in outputs.items()}
            report.add_task(task.name, scores, None, {}, models=sorted(methods), protocol=name)
        report.grids[task.name] = grid(target, outputs, cfg.grid_rows)
    return report


def task_protocols(task: Any, methods: dict[str, Any], requested: list[str] | None) -> list[str]:
    """The protocols a task's table is scored under: `requested` where given (a paper protocol
    only for a task whose outputs are RGB images, not edge maps); else the project's and the
    paper protocol of each method (`paper_protocol_of`), or of the task when it has none."""
    from components.metrics.report import PROJECT
    from components.tasks import paper_protocol_of

    if requested is not None:
        return [name for name in requested if name == PROJECT or task.paper_protocol is not None]
    papers = [paper_protocol_of(method) for method in methods.values()] if methods else [task.paper_protocol]
    return [PROJECT, *sorted({name for name in papers if name is not None})]


def read_split(shards: Any, split: str, columns: list[str]) -> tuple[dict, dict[str, list[str]]]:
    """The split's decoded `columns` as tensors, and each sample's breakdown groups."""
    from components.metrics.scoring import read_scored_split
    from pipelines.stages.inputs import shard_uris

    return read_scored_split(shard_uris(shards), split, columns, where=f"shards of '{shards.stage}'")


def score_task(task: Any, methods: dict[str, Any], data: dict, batch_size: int) -> tuple[dict, dict]:
    """({name: {metric: per-image values}}, {name: outputs}) for a scored Task's baselines and methods, baselines first."""
    scoring = task.scoring
    outputs = {name: baseline(data) for name, baseline in scoring.baselines.items()}
    for name, method in methods.items():
        outputs[name] = scoring.restore(method, data, batch_size)
    return {name: scoring.score(out, data) for name, out in outputs.items()}, outputs


def grid(target, outputs: dict, rows: int):
    """uint8 HxWx3: per row each output (baselines first, then models), then the target; each
    column's name (the baseline or model stage, "target") in a header strip above it."""
    from components.metrics.report import image_grid

    rows = min(rows, len(target))
    return image_grid([out[:rows] for out in outputs.values()] + [target[:rows]], labels=[*outputs, "target"])


def write_outputs(ctx: StageContext, metrics: dict[str, float], report: Any) -> None:
    """metrics.json, the report as Markdown, CSV and HTML (with its grids), all logged to MLflow."""
    from components import storage

    storage.write_json_atomic(ctx.path("metrics.json"), metrics)
    ctx.publish(report.files())
