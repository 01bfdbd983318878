"""train: one method trained by the one training loop on Ray Train, exported as safetensors.

The Ray Train run is named `<stage>-<fingerprint>` under `<store>/ray_train`, so rerunning
a crashed stage resumes from its latest checkpoint; a forced rerun deletes it first.

Validation every `val_every` steps, the moving average (`ema_decay`), the lr `schedule`,
`select: best | last` and fine-tuning (`init_from`): docs/pipeline.md, "Training". `init_from`
names a registered model (`models:/NAME@alias`, `models:/NAME/3`), a stage this one needs, or
a model directory; `plan` pins it (`resolve`): an alias to its version, a directory to the hash
of its weights, so a new champion or new weights make the stage stale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.training.schedule import ScheduleConfig
from pipelines.context import StageContext, StageOutput

if TYPE_CHECKING:  # annotations only: importing torch here would slow every config load
    from components.models.base import Method

CODE_VERSION = "2"
REGISTRY_PREFIX = "models:/"


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
    val_every: int | None = Field(None, gt=0, description="steps between validations on the val split; null: none")
    val_images: int = Field(32, gt=0, description="val samples each validation scores (the split's first ones)")
    val_batch_size: int = Field(16, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="moving average of the generator weights (BasicSR's "
                                                             "0.999); 0: none")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="the lr schedule")
    select: Literal["best", "last"] = Field("last", description="export the last step's weights or the best validation's")
    select_metric: str | None = Field(None, description="the val score `select: best` ranks by; null: the task's "
                                                        "(psnr; psnr_hole for inpainting; f1 for edges)")
    init_from: str | None = Field(None, description="start from a registered model (models:/NAME@alias or /VERSION), "
                                                    "a stage this one needs, or a model directory")
    init_from_resolved: str | None = Field(None, description="set by the plan: the version or hash init_from "
                                                             "resolved to (part of the fingerprint); not for recipes")

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

    @model_validator(mode="after")
    def _validation_fits(self) -> "Config":
        from components.models import method_class
        from components.training.validation import can_validate

        cls = method_class(self.method)
        if self.val_every is not None and self.steps and self.val_every > self.steps:
            raise ValueError(f"val_every ({self.val_every}) is above steps ({self.steps}): validation would never run")
        if self.val_every is not None and not can_validate(cls, cls.Config.model_validate(self.method_config)):
            raise ValueError(f"val_every: method '{self.method}' has no validation scores (its task scores no images)")
        if self.select == "best":
            if self.val_every is None:
                raise ValueError("select: best needs validation: set val_every")
            if self.selection_metric() is None:
                raise ValueError(f"select: best: method '{self.method}' has no default score; set select_metric")
        return self

    def selection_metric(self) -> str | None:
        """`select_metric`, or the default score of the method's task."""
        from components.models import method_class
        from components.tasks import task_named

        if self.select_metric:
            return self.select_metric
        cls = method_class(self.method)
        return task_named(cls.task_for(cls.Config.model_validate(self.method_config))).selected_by


def resources(cfg: Config) -> dict[str, float]:
    """What the runner admits the stage for: the worker group Ray Train will place."""
    return {"CPU": cfg.workers * cfg.cpus_per_worker, "GPU": float(cfg.workers) if cfg.use_gpu else 0.0}


def run(ctx: StageContext, cfg: Config, inputs: dict) -> StageOutput:
    from components import storage
    from components.data.ray_dataset import shard_dataset
    from components.models import method_class
    from components.tasks import training_columns
    from components.training import checkpoint
    from components.training.spec import TrainSpec
    from components.training.trainer import Placement, fit
    from components.training.validation import ValidationSpec
    from pipelines.stages.inputs import one_of_kind, shard_uris

    method = method_class(cfg.method)
    shards = one_of_kind(inputs, "shards", ctx.stage)
    upstream = {a.stage: a.uri for a in inputs.values() if a.kind == "model" and a.stage != cfg.init_from}
    init_uri = prepare_init(ctx, cfg, inputs, upstream) if cfg.init_from else None
    if cfg.steps == 0:
        return export_untrained(ctx, cfg, shards, upstream, init_uri)
    columns = training_columns(method, method.Config.model_validate(cfg.method_config))
    datasets = {"train": shard_dataset(shard_uris(shards), "train", columns)}
    if getattr(method, "unpaired", ()):
        # A second stream of the same split, globally reshuffled: what an unpaired method's
        # discriminator sees as real never lines up with the generator's inputs.
        datasets["unpaired"] = shard_dataset(shard_uris(shards), "train", method.unpaired).random_shuffle(seed=cfg.seed + 1)
    validation = (ValidationSpec(every=cfg.val_every, images=cfg.val_images, shard_uris=tuple(shard_uris(shards)),
                                 batch_size=cfg.val_batch_size) if cfg.val_every else None)
    spec = TrainSpec(method=cfg.method, method_config=cfg.method_config, steps=cfg.steps,
                     batch_size=cfg.batch_size, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                     seed=cfg.seed, upstream=upstream, tracking_uri=ctx.tracking_uri,
                     mlflow_run_id=ctx.mlflow_run_id, progress=ctx.progress, ema_decay=cfg.ema_decay,
                     schedule=cfg.schedule, validation=validation, select=cfg.select,
                     select_metric=cfg.selection_metric() or "", init_from=init_uri)
    storage_path = storage.join(ctx.store_uri, "ray_train")
    run_name = f"{ctx.stage}-{ctx.fingerprint}"
    if ctx.forced:
        storage.remove_tree(storage.join(storage_path, run_name))
    result = fit(spec, datasets, storage_path, run_name,
                 Placement(workers=cfg.workers, cpus_per_worker=cfg.cpus_per_worker, use_gpu=cfg.use_gpu))
    nets, live, step_from, val_scores = checkpoint.exported_weights(result.state, cfg.select)
    trained = rebuild(cfg, nets, upstream)
    resumed_from = int(result.metrics.get("resumed_from", 0))
    training = {"steps": cfg.steps, "step": step_from, "select": cfg.select, "select_metric": spec.select_metric,
                "ema_decay": cfg.ema_decay, "val": val_scores, "init_from": cfg.init_from_resolved or cfg.init_from}
    data = save_trained(ctx, trained, shards, training,
                        {f"{net}.{key}": value for net, state in live.items() for key, value in state.items()})
    publish_samples(ctx, trained)
    losses = {k: float(v) for k, v in result.state["metrics"].items()}
    # rank 0's MLflow sender: metrics sent, dropped (never confirmed), seconds the server was unreachable
    tracking = {k: v for k, v in result.metrics.items() if k.startswith("tracking_")}
    final_step = int(result.state["step"])
    return StageOutput(
        artifact="model",
        count=final_step,
        step=final_step,
        # `selected/`: the exported weights' val scores (the `val/` curve, per validation, is in the run already)
        metrics={**losses, **tracking, **{f"selected/{k}": float(v) for k, v in val_scores.items()},
                 "step": final_step, "selected_step": step_from, "resumed_from": resumed_from},
        details={"method": cfg.method, "task": trained.task, "data": data, "parameters": count_parameters(trained),
                 "ray_train_run": run_name, "ray_train_storage": storage_path, "resumed_from": resumed_from,
                 "training": training, "val_history": result.state.get("val_history") or []},
    )


def resolve(cfg: Config, needs: tuple[str, ...], stages: set[str], tracking_uri: Callable[[], str]) -> Config:
    """The config with `init_from` pinned for the fingerprint (`init_from_resolved`): a registered
    model's alias to its version, a model directory to its weights' hash; a stage needs no pin
    (its own fingerprint is already among this stage's upstream). Raises ValueError naming a
    source that does not exist."""
    if cfg.init_from is None:
        return cfg
    source = cfg.init_from
    if source.startswith(REGISTRY_PREFIX):
        from components.tracking.pull import ModelReference, find_version

        version = find_version(source, tracking_uri())
        pinned = f"{REGISTRY_PREFIX}{ModelReference.parse(source).name}/{version.version}"
    elif source in stages:
        if source not in needs:
            raise ValueError(f"init_from: stage '{source}' must be in this stage's needs to start from its model")
        pinned = None
    else:
        pinned = f"sha256:{model_dir_hash(source)}"
    return cfg.model_copy(update={"init_from_resolved": pinned})


def model_dir_hash(uri: str) -> str:
    import hashlib

    from components import storage
    from components.models.files import CONFIG, MODEL_FILES

    if not storage.exists(storage.join(uri, CONFIG)):
        raise ValueError(f"init_from: '{uri}' is neither a registered model (models:/NAME@alias), a stage of this "
                         f"pipeline, nor a model directory (it has no {CONFIG})")
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        if storage.exists(storage.join(uri, name)):
            digest.update(name.encode() + storage.read_bytes(storage.join(uri, name)))
    return digest.hexdigest()[:16]


def prepare_init(ctx: StageContext, cfg: Config, inputs: dict, upstream: dict[str, str]) -> str:
    """The source model's files copied into this stage's output (`init_from/`, where every Ray Train
    worker can read them), checked to fit this stage's networks; its URI."""
    import tempfile

    from components.models import build_method
    from components.training.finetune import check_fits, read_source

    target = ctx.path("init_from")
    source = cfg.init_from_resolved if (cfg.init_from_resolved or "").startswith(REGISTRY_PREFIX) else cfg.init_from
    if source in inputs:
        copy_model_files(inputs[source].uri, target)
    elif source.startswith(REGISTRY_PREFIX):
        from components.tracking.pull import pull

        with tempfile.TemporaryDirectory() as tmp:
            pull(source, tmp, ctx.tracking_uri)
            copy_model_files(tmp, target)
    else:
        copy_model_files(source, target)
    check_fits(build_method(cfg.method, cfg.method_config, upstream), read_source(target), f"'{cfg.init_from}'")
    return target


def export_untrained(ctx: StageContext, cfg: Config, shards: Any, upstream: dict[str, str],
                     init_uri: str | None = None) -> StageOutput:
    """steps: 0 - no Ray Train: the method as its config builds it (e.g. a prior importing public
    FFHQ weights), or with `init_from` the source model's weights as they are (a registered model
    brought into this pipeline, to be evaluated beside new ones)."""
    from components.models import build_method
    from components.training.finetune import read_source

    method = build_method(cfg.method, cfg.method_config, upstream)
    training = live = None
    if init_uri is not None:
        source = read_source(init_uri)  # prepare_init checked that it fits
        for name in method.networks():
            method.unwrapped(name).load_state_dict(source.exported[name], strict=True)
        training = {"steps": 0, "step": 0, "select": "last", "ema_decay": None, "val": {},
                    "init_from": cfg.init_from_resolved or cfg.init_from}
        live = {f"{net}.{key}": value for net, state in source.live.items() for key, value in state.items()}
    data = save_trained(ctx, method, shards, training, live)
    publish_samples(ctx, method)
    message = f"{cfg.init_from} as it is (steps: 0)" if init_uri else "exported as built (steps: 0)"
    ctx.progress.update(done=0, total=0, unit="steps", message=message)
    return StageOutput(artifact="model", count=0, step=0, metrics={"step": 0},
                       details={"method": cfg.method, "task": method.task, "data": data,
                                "parameters": count_parameters(method), "trained": False,
                                **({"training": training} if training else {})})


def save_trained(ctx: StageContext, method: Method, shards: Any, training: dict[str, Any] | None = None,
                 live: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model directory users receive (safetensors + config.json with its data and, for a trained
    model, which weights these are; the averaged networks' live weights beside it); returns the data."""
    from components.models.files import save_model_dir

    state, model_config = method.export()
    model_config["data"] = trained_on(shards)
    if training is not None:
        model_config["training"] = training
    save_model_dir(ctx.output_uri, state, model_config, live)
    return model_config["data"]


def copy_model_files(source: str, target: str) -> None:
    from components import storage
    from components.models.files import CONFIG, copy_model_dir

    if not storage.exists(storage.join(source, CONFIG)):
        raise FileNotFoundError(f"init_from: model directory '{source}' has no {CONFIG}")
    copy_model_dir(source, target)


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


def rebuild(cfg: Config, nets: dict[str, Any], upstream: dict[str, str]) -> Any:
    """The trained method on CPU, its networks loaded with `nets` (network -> state dict)."""
    from components.models import build_method

    method = build_method(cfg.method, cfg.method_config, upstream)
    for name, net in method.networks().items():
        net.load_state_dict(nets[name])
    return method


def count_parameters(method: Method) -> dict[str, int]:
    return {name: sum(p.numel() for p in net.parameters()) for name, net in method.networks().items()}
