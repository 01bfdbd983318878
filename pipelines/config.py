"""Pipeline YAML + dotted `--set` overrides -> a validated, typed config.

A recipe states only what differs from the defaults its stage kinds' `Config` classes declare.
Errors name the offending key by its full dotted path, and for an unknown key list the allowed ones.

Layout of a pipeline YAML::

    name: demo
    store: .facerestore          # local folder or any pyarrow.fs URI
    ray: {num_cpus: 4}           # ignored when joining a cluster (RAY_ADDRESS / --address)
    tracking: {uri: null}        # null: SQLite file in the store; else MLFLOW_TRACKING_URI wins
    execution: {max_parallel: null}   # stages at once (null: what the cluster fits); --max-parallel wins
    stages:
      synthesize: {source: {kind: procedural, count: 96}}   # `kind` defaults to the stage's name
      train_baseline: {kind: train, needs: [synthesize], method: baseline, retries: 2,
                       method_config: {width: 24, lr: 1.0e-3}}   # the method's own settings

`retries` / `retry_backoff_s` / `stall_timeout_s` sit beside `kind` and `needs`: how the runner
treats a stage, not part of its config or fingerprint. `--set train_baseline.method_config.lr=2e-4`
addresses a stage by its name; `--set store=/data/fr` a top-level key.

A recipe may name presets: sets of the same dotted overrides, chosen with `--preset NAME`
and applied before any `--set` (so a `--set` still wins)::

    presets:
      real:
        synthesize.resolution: 256
        "*.use_gpu": true              # every stage whose section has a `use_gpu` key
        "train_*.steps": 300000        # every stage whose name matches train_* (and has `steps`)
        train_prior.steps: 0           # a stage named outright wins over a pattern

A stage pattern (`*`, `?`, `[...]`, matched against stage names as in a shell) sets the key in
every matching stage whose kind has it, and must reach at least one; the keys naming a stage
outright are applied after the patterns, whatever their order, so they win. `--set` takes
patterns too (`--set '*.workers=1'`).

One file per recipe, its CPU size as the file's own values and its real size as a preset,
instead of near-copies of the whole recipe per size.

Keys renamed in this release (a stage kind's `RENAMED_KEYS`: the train stage's `model` is now
`method_config`, its `lr` is `method_config.lr`) still work, in the file, a preset or a `--set`,
for one release: moved to their new place with a `ConfigDeprecation` (a FutureWarning); an old
key set to null is dropped; an old key beside its new one in a stage is an error.
"""

from __future__ import annotations

import copy
import re
import warnings
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.stages import STAGE_KINDS, renamed_keys, stage_module


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


class ConfigDeprecation(FutureWarning):
    """A recipe or override uses a key renamed in this release: it still works, until the next one."""


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
    config: Any  # an instance of the stage kind's own `Config`
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


class YamlLoader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `2e-4` (no dot) is a string; here it is the float everyone means,
    in a recipe and in a `--set` alike. A typed stage key would coerce the string, but `method_config`
    is a free mapping, hashed as given: `--set X.method_config.lr=2e-4` must hash as `2.0e-4` does."""


YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)  # a SafeLoader: builds plain data only


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), preset: str | None = None) -> PipelineConfig:
    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    presets = raw.pop("presets", None) or {}
    migrate_stages(raw, where=str(path))
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"{path} has no preset '{preset}' (presets: {', '.join(presets) or 'none'})")
        raw = apply_settings(raw, presets[preset], where=f"preset '{preset}'")
    raw = apply_overrides(raw, overrides)
    return parse_config(raw, source=str(path))


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    settings = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        settings[key] = read_yaml(text) if text else ""
    return apply_settings(raw, settings, where="--set")


# The keys of a stage that are the runner's, not its kind's `Config`'s (see `parse_stage`).
RUNNER_KEYS = ("retries", "retry_backoff_s", "stall_timeout_s")
_PATTERN_CHARS = frozenset("*?[")
_UNSET = object()  # an old key set to null: it meant "not set", so its new key is removed


def apply_settings(raw: dict, settings: dict[str, Any], where: str = "settings") -> dict:
    """A copy of `raw` with each dotted key set; a key starting with a stage name addresses that
    stage, one starting with a pattern (`*.use_gpu`, `train_*.steps`) every matching stage whose
    kind has that key. Pattern keys go first, so a key naming its stage outright wins."""
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: a preset must map dotted keys to values, got {settings!r}")
    raw = copy.deepcopy(raw)
    stages = raw.get("stages") if isinstance(raw.get("stages"), dict) else {}
    patterned, exact = [], []
    for key, value in settings.items():
        path = str(key).split(".")
        if path[0] == "stages" and len(path) > 1:
            path = path[1:]
        elif path[0] not in stages and not _PATTERN_CHARS & set(path[0]):
            exact.append((path, value))  # a top-level key
            continue
        if _PATTERN_CHARS & set(path[0]):
            patterned += expand_pattern(stages, str(key), path, value, where)
        else:
            rest, value = move_renamed(path[0], stage_kind(path[0], stages.get(path[0])), path[1:], value,
                                       f"{where}: {key}")
            exact.append((["stages", path[0], *rest], value))
    for path, value in patterned + exact:
        if value is _UNSET:
            unset_dotted(raw, path)
        else:  # a copy each: a pattern sets one value in several stages, and a later key may change one of them
            set_dotted(raw, path, copy.deepcopy(value))
    return raw


def stage_kind(name: str, body: Any) -> str:
    return body.get("kind", name) if isinstance(body, dict) else name


def expand_pattern(stages: dict, key: str, path: list[str], value: Any, where: str) -> list[tuple[list[str], Any]]:
    """(full key path, value) for each stage a pattern key reaches."""
    pattern, rest = path[0], path[1:]
    if not rest:
        raise ConfigError(f"{where}: '{key}': a stage pattern needs a key after it, e.g. '{pattern}.steps'")
    matched = [name for name in stages if fnmatchcase(name, pattern)]
    if not matched:
        raise ConfigError(f"{where}: '{key}': no stage matches '{pattern}' (stages: {', '.join(stages) or 'none'})")
    reached = []
    for name in matched:
        kind = stage_kind(name, stages[name])
        moved, new_value = move_renamed(name, kind, rest, value, f"{where}: {key}")
        fields = set(stage_module(kind).Config.model_fields) if kind in STAGE_KINDS else set()
        if moved[0] in fields or moved[0] in RUNNER_KEYS:
            reached.append((["stages", name, *moved], new_value))
    if not reached:
        kinds = ", ".join(f"{name} ({stage_kind(name, stages[name])})" for name in matched)
        raise ConfigError(f"{where}: '{key}': no stage matching '{pattern}' has a key '{rest[0]}' (matched: {kinds})")
    return reached


def move_renamed(stage: str, kind: str, path: list[str], value: Any, where: str) -> tuple[list[str], Any]:
    """(key path, value) of a setting inside a stage, a key its kind renamed moved to its new place
    with a warning. Used for a stage's body and for dotted settings alike."""
    new = renamed_keys(kind).get(path[0]) if path else None
    if new is None:
        return path, value
    warnings.warn(f"stage '{stage}': key '{path[0]}' is deprecated, use '{new}' ({where})", ConfigDeprecation)
    if value is None and len(path) == 1:
        value = _UNSET
    return [*new.split("."), *path[1:]], value


def migrate_stages(raw: dict, where: str) -> None:
    """Moves, in `raw` itself, each stage's old keys to their new place; an old key beside its new
    one is an error, as the two may disagree."""
    stages = raw.get("stages")
    if not isinstance(stages, dict):
        return  # parse_config names the error
    for name, body in stages.items():
        kind = stage_kind(name, body)
        for old in renamed_keys(kind):  # in their order: `model` moves before the `lr` it then holds
            if not isinstance(body, dict) or old not in body:
                continue
            path, value = move_renamed(name, kind, [old], body.pop(old), where)
            if value is _UNSET:
                continue
            if has_dotted(body, path):
                new = ".".join(path)
                raise ConfigError(f"stage '{name}': '{old}' and '{new}' are both given ({where}); "
                                  f"'{old}' is the deprecated name of '{new}': keep '{new}' only")
            set_dotted(body, path, value)


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


def has_dotted(raw: dict, path: list[str]) -> bool:
    node: Any = raw
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def unset_dotted(raw: dict, path: list[str]) -> None:
    node: Any = raw
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


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
    retry = {key: body.pop(key) for key in RUNNER_KEYS if key in body}
    if kind not in STAGE_KINDS:
        raise ConfigError(f"stages.{name}.kind: unknown stage kind '{kind}' (allowed: {', '.join(STAGE_KINDS)})")
    if isinstance(needs, str):
        needs = [needs]
    schema = stage_module(kind).Config
    try:
        config = schema.model_validate(body)
    except ValidationError as err:
        raise ConfigError(describe_errors(err, schema, prefix=f"stages.{name}.")) from None
    try:
        return StageSection(kind=kind, needs=tuple(needs), config=config, **retry)
    except ValidationError as err:
        raise ConfigError(describe_errors(err, StageSection, prefix=f"stages.{name}.")) from None


def describe_errors(err: ValidationError, schema: type[BaseModel], prefix: str) -> str:
    lines = []
    for item in err.errors():
        loc = [str(part) for part in item["loc"]]
        key = prefix + ".".join(loc)
        if item["type"] == "extra_forbidden":
            allowed = allowed_keys(schema, loc[:-1])
            lines.append(f"unknown key '{key}'" + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
        else:
            lines.append(f"'{key}': {item['msg']} (got {item.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def allowed_keys(schema: type[BaseModel], path: list[str]) -> list[str]:
    """The field names at `path` inside `schema`, following nested pydantic classes."""
    for part in path:
        field = schema.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        schema = annotation
    return sorted(schema.model_fields)


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
