"""Pipeline YAML + dotted `--set` overrides -> a validated, typed config.

A recipe states only what differs from the defaults the typed models declare. Errors name
the offending key by its full dotted path, and for an unknown key list the allowed ones.

Layout of a pipeline YAML::

    name: demo
    store: .facerestore          # local folder or any pyarrow.fs URI
    ray: {num_cpus: 4}           # ignored when joining a cluster (RAY_ADDRESS / --address)
    tracking: {uri: null}        # null: SQLite file in the store; else MLFLOW_TRACKING_URI wins
    execution: {max_parallel: null}   # stages at once (null: what the cluster fits); --max-parallel wins
    stages:
      synthesize: {source: {kind: procedural, count: 96}}   # `kind` defaults to the stage's name
      train_baseline: {kind: train, needs: [synthesize], method: baseline, retries: 2}

`retries` / `retry_backoff_s` / `stall_timeout_s` sit beside `kind` and `needs`: how the runner
treats a stage, not part of its config or fingerprint. `--set train_baseline.lr=2e-4` addresses a stage by its name; `--set store=/data/fr` a top-level key.

A recipe may name presets: sets of the same dotted overrides, chosen with `--preset NAME`
and applied before any `--set` (so a `--set` still wins)::

    presets:
      real: {synthesize.resolution: 256, train_cafin.steps: 300000, train_cafin.use_gpu: true}

One file per recipe, its CPU size as the file's own values and its real size as a preset,
instead of near-copies of the whole recipe per size.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.stages import STAGE_KINDS, stage_module


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayOptions(Strict):
    address: str | None = None
    # Logical CPUs for a local Ray: more than the cores so that two train workers
    # holding a CPU each leave room for Ray Data's read tasks (2-core machines hang otherwise).
    num_cpus: int | None = 4


class TrackingOptions(Strict):
    uri: str | None = None
    experiment: str = "facerestore"


class ExecutionOptions(Strict):
    """How the runner runs the DAG (docs/pipeline.md, "Concurrency"); none of it changes a stage's output."""

    max_parallel: int | None = Field(None, gt=0, description="stages running at once; null: as many as the cluster fits")
    fail_fast: bool = Field(False, description="stop every stage at the first failure instead of finishing independent ones")
    # Logical CPUs no second stage may claim: Ray Data's tasks (reads, decodes) need a free CPU,
    # and trainers holding every CPU would leave them none, so the run would hang.
    reserve_cpus: float = Field(1.0, ge=0)
    stall_timeout_s: float = Field(900.0, gt=0, description="a running stage with no progress for this long fails (and may retry)")
    lease_ttl_s: float = Field(120.0, gt=0, description="a stage's lease in the store expires this long after its owner's last heartbeat")


class StageSection(Strict):
    kind: str
    needs: tuple[str, ...] = ()
    config: Any  # the stage kind's own pydantic model
    retries: int = Field(0, ge=0, description="attempts after the first, for transient faults only")
    retry_backoff_s: float = Field(10.0, ge=0, description="wait before the first retry; doubled for each further one")
    stall_timeout_s: float | None = Field(None, gt=0, description="this stage's own execution.stall_timeout_s")


class PipelineConfig(Strict):
    name: str
    store: str = ".facerestore"
    ray: RayOptions = Field(default_factory=RayOptions)
    tracking: TrackingOptions = Field(default_factory=TrackingOptions)
    execution: ExecutionOptions = Field(default_factory=ExecutionOptions)
    stages: dict[str, StageSection]


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), preset: str | None = None) -> PipelineConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    presets = raw.pop("presets", None) or {}
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"{path} has no preset '{preset}' (presets: {', '.join(presets) or 'none'})")
        raw = apply_settings(raw, presets[preset])
    raw = apply_overrides(raw, overrides)
    return parse_config(raw, source=str(path))


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    settings = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        settings[key] = yaml.safe_load(text) if text else ""
    return apply_settings(raw, settings)


def apply_settings(raw: dict, settings: dict[str, Any]) -> dict:
    """A copy of `raw` with each dotted key set; a key starting with a stage name addresses that stage."""
    if not isinstance(settings, dict):
        raise ConfigError(f"a preset must map dotted keys to values, got {settings!r}")
    raw = copy.deepcopy(raw)
    for key, value in settings.items():
        path = str(key).split(".")
        if path[0] in (raw.get("stages") or {}):
            path = ["stages", *path]
        set_dotted(raw, path, value)
    return raw


def set_dotted(raw: dict, path: list[str], value: Any) -> None:
    node = raw
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{'.'.join(path)}': '{'.'.join(path[: i + 1])}' is not a mapping")
        node = child
    node[path[-1]] = value


def parse_config(raw: dict, source: str = "config") -> PipelineConfig:
    raw = dict(raw)
    stages_raw = raw.pop("stages", None)
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise ConfigError(f"{source}: 'stages' must be a non-empty mapping of stage name -> settings")
    stages = {name: parse_stage(name, body or {}) for name, body in stages_raw.items()}
    try:
        cfg = PipelineConfig.model_validate({**raw, "stages": stages})
    except ValidationError as err:
        raise ConfigError(describe_errors(err, PipelineConfig, prefix="")) from None
    check_no_passwords(cfg)
    return cfg


def check_no_passwords(cfg: PipelineConfig) -> None:
    """URIs are recorded (run records, MLflow params): a password in one would be too. Not echoed here either."""
    from components.storage import has_password

    for key, uri in (("store", cfg.store), ("tracking.uri", cfg.tracking.uri)):
        if uri and has_password(uri):
            raise ConfigError(f"'{key}': the URI carries a password, which would be recorded in run records and "
                              "MLflow params; give credentials through the environment (AWS_ACCESS_KEY_ID / "
                              "AWS_SECRET_ACCESS_KEY for S3, MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")


def parse_stage(name: str, body: dict) -> StageSection:
    if not isinstance(body, dict):
        raise ConfigError(f"stages.{name} must be a mapping, got {body!r}")
    body = dict(body)
    kind = body.pop("kind", name)
    needs = body.pop("needs", [])
    # How the runner treats the stage, not what it computes: kept out of its config and fingerprint.
    retry = {key: body.pop(key) for key in ("retries", "retry_backoff_s", "stall_timeout_s") if key in body}
    if kind not in STAGE_KINDS:
        raise ConfigError(f"stages.{name}.kind: unknown stage kind '{kind}' (allowed: {', '.join(STAGE_KINDS)})")
    if isinstance(needs, str):
        needs = [needs]
    model = stage_module(kind).Config
    try:
        config = model.model_validate(body)
    except ValidationError as err:
        raise ConfigError(describe_errors(err, model, prefix=f"stages.{name}.")) from None
    try:
        return StageSection(kind=kind, needs=tuple(needs), config=config, **retry)
    except ValidationError as err:
        raise ConfigError(describe_errors(err, StageSection, prefix=f"stages.{name}.")) from None


def describe_errors(err: ValidationError, model: type[BaseModel], prefix: str) -> str:
    lines = []
    for item in err.errors():
        loc = [str(part) for part in item["loc"]]
        key = prefix + ".".join(loc)
        if item["type"] == "extra_forbidden":
            allowed = allowed_keys(model, loc[:-1])
            lines.append(f"unknown key '{key}'" + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
        else:
            lines.append(f"'{key}': {item['msg']} (got {item.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def allowed_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """The field names at `path` inside `model`, following nested pydantic models."""
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def resolved_section(section: StageSection) -> dict:
    """The JSON form of a stage's config that fingerprints and MLflow params are made of."""
    return section.config.model_dump(mode="json")


def resolved_config(cfg: PipelineConfig) -> dict:
    return {
        **cfg.model_dump(mode="json", exclude={"stages"}),
        "stages": {
            name: {"kind": s.kind, "needs": list(s.needs), "retries": s.retries, **resolved_section(s)}
            for name, s in cfg.stages.items()
        },
    }
