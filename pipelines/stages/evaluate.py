"""evaluate: every upstream model and the untouched degraded input, scored on one held-out split.

The input's score is the degraded image with its holes filled by the known pixels' mean
colour (`components.models.inputs.fill_holes`): what a user has before any model runs.
Writes metrics.json and grid.png (degraded | restored | target, a row per sample) and logs
both to the stage's MLflow run.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipelines.context import StageContext, StageOutput

CODE_VERSION = "1"
METRICS = ("psnr", "ssim", "l1")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    batch_size: int = Field(32, gt=0)
    grid_rows: int = Field(8, ge=0, description="samples shown in grid.png")


def run(ctx: StageContext, cfg: Config, inputs: dict) -> StageOutput:
    import torch

    from components.data.decode import table_to_arrays
    from components.data.shards import read_shards
    from components.models.files import load_model_dir
    from pipelines.stages.inputs import of_kind, one_of_kind, shard_uris

    shards = one_of_kind(inputs, "shards", ctx.stage)
    models = {a.stage: load_model_dir(a.uri) for a in of_kind(inputs, "model")}
    table = read_shards(shard_uris(shards), split=cfg.split, columns=["hq", "lq", "mask"])
    if table.num_rows == 0:
        raise ValueError(f"shards of '{shards.stage}' hold no '{cfg.split}' samples to evaluate on")
    data = {k: torch.from_numpy(v) for k, v in table_to_arrays(table, ["hq", "lq", "mask"]).items()}
    outputs = {"input": restore_all(None, data, cfg.batch_size), **{n: restore_all(m, data, cfg.batch_size) for n, m in models.items()}}
    scores = {name: score(out, data["hq"]) for name, out in outputs.items()}
    metrics = {f"{name}/{metric}": value for name, values in scores.items() for metric, value in values.items()}
    write_outputs(ctx, metrics, grid(data, outputs, cfg.grid_rows))
    ctx.progress.update(done=table.num_rows, total=table.num_rows, unit="images")
    return StageOutput(artifact="evaluation", count=table.num_rows, metrics=metrics,
                       details={"split": cfg.split, "scores": scores, "models": sorted(models)})


def restore_all(method: Any, data: dict, batch_size: int):
    import torch

    from components.models.inputs import fill_holes

    outs = []
    for start in range(0, len(data["hq"]), batch_size):
        batch = {k: v[start:start + batch_size] for k, v in data.items()}
        outs.append(fill_holes(batch["lq"], batch["mask"]) if method is None else method.restore(batch))
    return torch.cat(outs).clamp(0, 1)


def score(restored, target) -> dict[str, float]:
    from components.metrics.image_quality import l1, psnr, ssim

    return {"psnr": float(psnr(restored, target).mean()), "ssim": float(ssim(restored, target).mean()),
            "l1": float(l1(restored, target).mean())}


def grid(data: dict, outputs: dict, rows: int):
    """uint8 HxWx3: per row the degraded input (outputs["input"], holes filled), each model's output, the target."""
    import torch

    rows = min(rows, len(data["hq"]))
    columns = [out[:rows] for out in outputs.values()] + [data["hq"][:rows]]
    image = torch.cat([torch.cat(list(column), dim=1) for column in columns], dim=2)  # C x rows*H x cols*W
    return (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()


def write_outputs(ctx: StageContext, metrics: dict[str, float], image) -> None:
    import tempfile
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from components import storage
    from components.data.schema import encode_png

    png = encode_png(image)
    storage.write_bytes_atomic(ctx.path("grid.png"), png)
    storage.write_json_atomic(ctx.path("metrics.json"), metrics)
    client = MlflowClient(ctx.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "grid.png").write_bytes(png)
        client.log_artifact(ctx.mlflow_run_id, str(Path(tmp, "grid.png")))
