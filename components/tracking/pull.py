"""Pull a registered model out of the MLflow registry: safetensors + JSON config + a model card.

A reference is `NAME` (its champion), `NAME@alias` or `NAME/version`, with or without the
`models:/` prefix MLflow uses. What lands in the output folder loads with no pickle
(`components.models.files.load_model_dir`); a version registered with its ONNX export also
brings `model.onnx`, and the card's ONNX section says how it was checked (config.json's `onnx`
entry, the one source of that section: `facerestore export` writes it into a card the same way).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.models.files import CONFIG, ONNX, OPTIONAL_FILES, REGISTERED_FILES, TRAINING_WEIGHTS, WEIGHTS
from components.tasks import task_named

CARD = "MODEL_CARD.md"
ONNX_HEADING = "## ONNX"
ONNX_MODEL_TAG = "onnx_model_uri"  # version tag: the run's mlflow.onnx model (components/tracking/registry.py)
DEFAULT_ALIAS = "champion"
_REFERENCE = re.compile(r"^(?:models:/)?(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))?$")


@dataclass(frozen=True)
class ModelReference:
    name: str
    alias: str | None = None
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ModelReference:
        match = _REFERENCE.match(text.strip())
        if match is None:
            raise ValueError(f"model reference '{text}' must look like NAME, NAME@alias or NAME/version")
        version = match["version"]
        alias = match["alias"] or (None if version else DEFAULT_ALIAS)
        return cls(match["name"], alias, int(version) if version else None)

    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class PulledModel:
    directory: Path
    name: str
    version: int
    aliases: list[str]
    tags: dict[str, str]
    run_id: str


def find_version(reference: str, tracking_uri: str) -> Any:
    """The MLflow ModelVersion `reference` names; a LookupError that lists what the registry
    holds (the model's versions and aliases, or the registered models) when it names none."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    ref = ModelReference.parse(reference)
    client = MlflowClient(tracking_uri)
    try:
        return (client.get_model_version_by_alias(ref.name, ref.alias) if ref.alias
                else client.get_model_version(ref.name, str(ref.version)))
    except MlflowException as err:
        raise LookupError(f"no registered model version '{reference}' at {tracking_uri}: "
                          f"{what_exists(client, ref.name) or err.message}") from None


def what_exists(client: Any, name: str) -> str:
    """The versions and aliases of registered model `name`, or the registered models if it has none."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        return f"no registered model '{name}' (registered: {', '.join(names) or 'none'})"
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    aliases = ", ".join(f"@{alias} -> {version}" for alias, version in sorted(model.aliases.items()))
    return f"'{name}' has versions {', '.join(map(str, versions)) or 'none'} and aliases {aliases or 'none'}"


def pull(reference: str, out: str | Path, tracking_uri: str) -> PulledModel:
    """Download the model version `reference` names into `out` (created; its model files replaced)."""
    import mlflow

    from components.tracking.runs import global_tracking_uri

    ref = ModelReference.parse(reference)
    version = find_version(reference, tracking_uri)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, global_tracking_uri(tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri(), dst_path=tmp))
        for name in REGISTERED_FILES:
            found = _find_one(local, name, reference, optional=name in OPTIONAL_FILES)
            if found is not None:
                shutil.copyfile(found, out / name)
            elif (out / name).exists():  # an earlier pull's: it belongs to other weights
                (out / name).unlink()
    pulled = PulledModel(out, ref.name, int(version.version), list(version.aliases), dict(version.tags), version.run_id)
    (out / CARD).write_text(model_card(pulled, json.loads((out / CONFIG).read_text()), tracking_uri))
    return pulled


def _find_one(root: Path, name: str, reference: str, optional: bool = False) -> Path | None:
    found = sorted(root.rglob(name))
    if optional and not found:
        return None
    if len(found) != 1:
        raise FileNotFoundError(f"registered model '{reference}' holds {len(found)} {name} files, expected one")
    return found[0]


def model_card(model: PulledModel, config: dict[str, Any], tracking_uri: str) -> str:
    """Markdown: what the model is, how it scored, and where it came from (run, stage, data)."""
    tags = model.tags
    metric = tags.get("metric")
    lines = [
        f"# {model.name} version {model.version}",
        "",
        f"- method: `{config.get('method')}`" + (f", task `{config['task']}`" if "task" in config else ""),
        f"- aliases: {', '.join(model.aliases) or 'none'}",
    ]
    if metric:
        lines.append(f"- score: {metric} = {tags.get(metric)} on the evaluation split")
    data = config.get("data") or {}
    if data:
        lines.append("- trained on: " + ", ".join(f"{k} {v}" for k, v in data.items()))
    lines += training_lines(config.get("training") or {})
    lines += [
        "",
        "## Lineage",
        "",
        f"- MLflow run: `{model.run_id}` at `{tracking_uri}`",
        *[f"- {key}: `{tags[key]}`" for key in ("pipeline_run", "stage", "fingerprint", "data_fingerprint",
                                                 "evaluation_fingerprint") if key in tags],
        "",
        "## Use",
        "",
        f"`facerestore restore --model {model.directory} PHOTO... --out DIR`"
        + (" `--mask MASK`" if "task" in config and task_named(config["task"]).needs_mask else ""),
        "",
        f"Files: `{WEIGHTS}` (safetensors) and `{CONFIG}`; no pickle is needed to load them."
        + (f" `{TRAINING_WEIGHTS}`: the live weights of the averaged networks, for fine-tuning "
           f"(`init_from: models:/{model.name}/{model.version}`)." if (model.directory / TRAINING_WEIGHTS).exists() else ""),
        "",
    ]
    if config.get("onnx"):
        lines += [*onnx_section(config["onnx"], tags.get(ONNX_MODEL_TAG)), ""]
    return "\n".join(lines)


def onnx_section(entry: dict[str, Any], mlflow_onnx_uri: str | None = None) -> list[str]:
    """The card's ONNX section, from config.json's `onnx` entry (components/export/onnx.py)."""
    shapes = entry.get("input_shapes") or {}
    inputs = ", ".join(f"`{name}`" + (f" ({' x '.join(map(str, shapes[name]))})" if name in shapes else "")
                       for name in entry["inputs"])
    lines = [
        ONNX_HEADING,
        "",
        f"- file: `{entry.get('file', ONNX)}`, opset {entry['opset']}; inputs {inputs} -> `{entry['output']}`, float32 "
        "NCHW in [0, 1], the batch axis dynamic",
        f"- checked against PyTorch: largest absolute difference {entry['max_abs_diff']:.3g} on the [0, 1] output "
        f"(bound {entry.get('tolerance', 1e-3):g}), batches of {' and '.join(map(str, entry['checked_batch_sizes']))}, "
        f"{entry.get('checked_with', 'onnxruntime')}",
        f"- deterministic: {entry.get('deterministic', 'yes')}",
        "- restore with it: `facerestore restore PHOTO... --model DIR --backend onnxruntime --out OUT`",
    ]
    if mlflow_onnx_uri:
        lines.append(f"- MLflow ONNX model (no facerestore code needed): `mlflow.pyfunc.load_model(\"{mlflow_onnx_uri}\")`")
    return lines


def with_onnx_section(card: str, entry: dict[str, Any]) -> str:
    """`card` with its ONNX section (if any) replaced by the one `entry` makes, at the end."""
    kept, skipping = [], False
    for line in card.rstrip("\n").split("\n"):
        if line.startswith("## "):
            skipping = line.strip() == ONNX_HEADING
        if not skipping:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join([*kept, "", *onnx_section(entry), ""])


def training_lines(training: dict[str, Any]) -> list[str]:
    """Which weights these are: the step they come from, how they were selected, their val scores."""
    if not training:
        return []
    chosen = "best validation" if training.get("select") == "best" else "last step"
    lines = [f"- weights: step {training.get('step')} of {training.get('steps')} ({chosen}"
             + (f" by val {training['select_metric']}" if training.get("select") == "best" else "")
             + (f"; EMA decay {training['ema_decay']}" if training.get("ema_decay") else "; no EMA") + ")"]
    val = training.get("val") or {}
    if val:
        lines.append("- val scores at that step: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(val.items())))
    if training.get("init_from"):
        lines.append(f"- fine-tuned from: `{training['init_from']}`")
    return lines
