"""evaluate: every upstream model and the classical baselines of its task, scored on one held-out split.

Each model is scored as its task's object says (components/tasks): restorers against
the untouched degraded input ("input", holes filled with the known pixels' mean colour),
inpainting against mean-fill, OpenCV Telea and Navier-Stokes, super-resolution against
bicubic, the edge GAN by edge precision / recall / F1 inside the holes. Models whose task is
not an image (a DRE, a GAN prior) are upstream material and are not scored here.
Learned metrics (components/metrics/learned.py) score face images: LPIPS and FID with their
weights given, identity and id_accuracy from ArcFace when `learned.identity_net` is given,
else from dlib's face recognition ResNet (the report's `identity_net` note says which).
Metric keys are `<model stage or baseline>/<metric>`. Writes metrics.json and one
grid_<task>.png per task (input | each baseline | each model | target, a row per sample) and
logs both to the stage's MLflow run.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from components.metrics.learned import LearnedMetricsConfig
from pipelines.context import StageContext, StageOutput

CODE_VERSION = "3"  # 3: identity and id_accuracy from dlib's ResNet by default


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    batch_size: int = Field(32, gt=0)
    grid_rows: int = Field(8, ge=0, description="samples shown in each grid_<task>.png")
    learned: LearnedMetricsConfig = Field(default_factory=LearnedMetricsConfig,
                                          description="weights of LPIPS / FID / ArcFace; unset = unavailable, but "
                                                      "identity and id_accuracy use dlib's ResNet")


def resources(cfg: Config) -> dict[str, float]:
    """The scoring runs in the stage's own process, on one CPU."""
    return {"CPU": 1.0}


def run(ctx: StageContext, cfg: Config, inputs: dict) -> StageOutput:
    from components.metrics.learned import LearnedMetrics
    from components.metrics.report import Report
    from components.metrics.scoring import grouped_means, mean_scores
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
    report = Report(split=cfg.split, samples=len(data["hq"]))
    learned = LearnedMetrics(cfg.learned)
    if learned.identity_network and any(task.scoring.learned_metrics for task in by_task):
        report.notes["identity_net"] = learned.identity_network
    for task, methods in by_task.items():
        scoring = task.scoring
        per_image, outputs = score_task(task, methods, data, cfg.batch_size)
        means = {name: mean_scores(values) for name, values in per_image.items()}
        if scoring.learned_metrics:
            target = scoring.target(data)
            for name, out in outputs.items():
                per_image[name].update(learned.per_image(out, target))
                means[name] = learned.unavailable({**mean_scores(per_image[name]), **learned.per_set(out, target)})
        report.add_task(task.name, means, scoring.breakdown, grouped_means(per_image, groups[scoring.breakdown]),
                        models=sorted(methods))
        report.grids[task.name] = grid(scoring.target(data), outputs, cfg.grid_rows)
    metrics = report.flat_metrics()
    write_outputs(ctx, metrics, report)
    ctx.progress.update(done=report.samples, total=report.samples, unit="images")
    return StageOutput(artifact="evaluation", count=report.samples, metrics=metrics,
                       details={"split": cfg.split, "models": sorted(models), **report.as_details()})


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
