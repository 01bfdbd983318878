"""train: one method trained by the one training loop on Ray Train, exported as safetensors.

The Ray Train run is named `<stage>-<fingerprint>` under `<store>/ray_train`, so rerunning
a crashed stage resumes from its latest checkpoint; a forced rerun deletes it first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.context import StageContext, StageOutput

if TYPE_CHECKING:  # annotations only: importing torch here would slow every config load
    from components.models.base import Method

CODE_VERSION = "1"


# Keys renamed in this release: old -> new (dotted, inside the section). pipelines/config.py still
# takes the old ones, with a FutureWarning, for one release; remove them here after that.
# `model` comes first: a stage's `lr` moves into the `method_config` it became.
RENAMED_KEYS = {"model": "method_config", "lr": "method_config.lr"}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = "baseline"
    steps: int = Field(300, ge=0, description="0: no training, export the method as built (an imported checkpoint)")
    batch_size: int = Field(8, gt=0)
    workers: int = Field(2, gt=0, description="Ray Train workers (DDP ranks)")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    checkpoint_every: int = Field(50, gt=0)
    log_every: int = Field(10, gt=0)
    seed: int = 0
    method_config: dict[str, Any] = Field(
        default_factory=dict, description="the method's own settings (its Config: widths, losses, `lr`, ...); "
                                          "a key left out keeps the method's default, its paper's")

    @model_validator(mode="after")
    def _method_accepts_settings(self) -> "Config":
        from components.models import method_class

        try:
            method_class(self.method).Config.model_validate(self.method_config)
        except (KeyError, ValueError) as err:
            if isinstance(err, ValidationError):
                keys = ", ".join(f"method_config.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                raise ValueError(f"method '{self.method}' rejects {keys}") from None
            raise ValueError(str(err)) from None
        return self


def resources(cfg: Config) -> dict[str, float]:
    """What the runner admits the stage for: the worker group Ray Train will place."""
    return {"CPU": cfg.workers * cfg.cpus_per_worker, "GPU": float(cfg.workers) if cfg.use_gpu else 0.0}


def run(ctx: StageContext, cfg: Config, inputs: dict) -> StageOutput:
    from components import storage
    from components.data.ray_dataset import shard_dataset
    from components.models import method_class
    from components.tasks import training_columns
    from components.training.spec import TrainSpec
    from components.training.trainer import Placement, fit
    from pipelines.stages.inputs import one_of_kind, shard_uris

    method = method_class(cfg.method)
    shards = one_of_kind(inputs, "shards", ctx.stage)
    upstream = {a.stage: a.uri for a in inputs.values() if a.kind == "model"}
    if cfg.steps == 0:
        return export_untrained(ctx, cfg, shards, upstream)
    columns = training_columns(method, method.Config.model_validate(cfg.method_config))
    datasets = {"train": shard_dataset(shard_uris(shards), "train", columns)}
    if getattr(method, "unpaired", ()):
        # A second stream of the same split, globally reshuffled: what an unpaired method's
        # discriminator sees as real never lines up with the generator's inputs.
        datasets["unpaired"] = shard_dataset(shard_uris(shards), "train", method.unpaired).random_shuffle(seed=cfg.seed + 1)
    spec = TrainSpec(method=cfg.method, method_config=cfg.method_config, steps=cfg.steps,
                     batch_size=cfg.batch_size, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                     seed=cfg.seed, upstream=upstream, tracking_uri=ctx.tracking_uri,
                     mlflow_run_id=ctx.mlflow_run_id, progress=ctx.progress)
    storage_path = storage.join(ctx.store_uri, "ray_train")
    run_name = f"{ctx.stage}-{ctx.fingerprint}"
    if ctx.forced:
        storage.remove_tree(storage.join(storage_path, run_name))
    result = fit(spec, datasets, storage_path, run_name,
                 Placement(workers=cfg.workers, cpus_per_worker=cfg.cpus_per_worker, use_gpu=cfg.use_gpu))
    trained = rebuild(cfg, result.state, upstream)
    resumed_from = int(result.metrics.get("resumed_from", 0))
    data = save_trained(ctx, trained, shards)
    publish_samples(ctx, trained)
    losses = {k: float(v) for k, v in result.state["metrics"].items()}
    # rank 0's MLflow sender: metrics sent, dropped (never confirmed), seconds the server was unreachable
    tracking = {k: v for k, v in result.metrics.items() if k.startswith("tracking_")}
    return StageOutput(
        artifact="model",
        count=int(result.state["step"]),
        step=int(result.state["step"]),
        metrics={**losses, **tracking, "step": int(result.state["step"]), "resumed_from": resumed_from},
        details={"method": cfg.method, "task": trained.task, "data": data, "parameters": count_parameters(trained),
                 "ray_train_run": run_name, "ray_train_storage": storage_path, "resumed_from": resumed_from},
    )


def export_untrained(ctx: StageContext, cfg: Config, shards: Any, upstream: dict[str, str]) -> StageOutput:
    """steps: 0 - the method as its config builds it (e.g. a prior importing public FFHQ weights), no Ray Train."""
    from components.models import build_method

    method = build_method(cfg.method, cfg.method_config, upstream)
    data = save_trained(ctx, method, shards)
    publish_samples(ctx, method)
    ctx.progress.update(done=0, total=0, unit="steps", message="exported as built (steps: 0)")
    return StageOutput(artifact="model", count=0, step=0, metrics={"step": 0},
                       details={"method": cfg.method, "task": method.task, "data": data,
                                "parameters": count_parameters(method), "trained": False})


def save_trained(ctx: StageContext, method: Method, shards: Any) -> dict[str, Any]:
    """The model directory users receive (safetensors + config.json with its data); returns that data."""
    from components.models.files import save_model_dir

    state, model_config = method.export()
    model_config["data"] = trained_on(shards)
    save_model_dir(ctx.output_uri, state, model_config)
    return model_config["data"]


def publish_samples(ctx: StageContext, method: Method) -> None:
    """samples.png (in the stage output and its MLflow run) for a method that draws samples: a
    GAN prior's faces, in a square grid, the same seeds each time."""
    import math

    from components.data.schema import encode_png
    from components.metrics.report import image_grid

    samples = method.samples()
    if samples is None:
        return
    side = math.isqrt(len(samples))
    columns = samples[:side * side].cpu().unflatten(0, (side, side))
    ctx.publish({"samples.png": encode_png(image_grid(list(columns)))})


def trained_on(shards: Any) -> dict[str, Any]:
    """What inference must know of the training data: the face size (restore resizes photos to it)
    and the SR factor; plus the shards' fingerprint, the model's data lineage."""
    details = shards.manifest["details"]
    return {"resolution": details["resolution"], "sr_factor": details.get("sr_factor"),
            "shards_fingerprint": shards.fingerprint}


def rebuild(cfg: Config, state: dict[str, Any], upstream: dict[str, str]) -> Any:
    """The trained method on CPU, from the final checkpoint."""
    from components.models import build_method

    method = build_method(cfg.method, cfg.method_config, upstream)
    for name, net in method.networks().items():
        net.load_state_dict(state["nets"][name])
    return method


def count_parameters(method: Method) -> dict[str, int]:
    return {name: sum(p.numel() for p in net.parameters()) for name, net in method.networks().items()}
