"""Pull a registered model out of the MLflow registry: safetensors + JSON config + a model card.

A reference is `NAME` (its champion), `NAME@alias` or `NAME/version`, with or without the
`models:/` prefix MLflow uses. What lands in the output folder loads with no pickle
(`components.models.files.load_model_dir`).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.models.files import CONFIG, WEIGHTS
from components.tasks import task_named

CARD = "MODEL_CARD.md"
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


def pull(reference: str, out: str | Path, tracking_uri: str) -> PulledModel:
    """Download the model version `reference` names into `out` (created; its model files replaced)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from components.tracking.runs import global_tracking_uri

    ref = ModelReference.parse(reference)
    client = MlflowClient(tracking_uri)
    try:
        version = (client.get_model_version_by_alias(ref.name, ref.alias) if ref.alias
                   else client.get_model_version(ref.name, str(ref.version)))
    except MlflowException as err:
        raise LookupError(f"no registered model version '{reference}' at {tracking_uri}: {err.message}") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, global_tracking_uri(tracking_uri):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri(), dst_path=tmp))
        for name in (WEIGHTS, CONFIG):
            shutil.copyfile(_find_one(local, name, reference), out / name)
    pulled = PulledModel(out, ref.name, int(version.version), list(version.aliases), dict(version.tags), version.run_id)
    (out / CARD).write_text(model_card(pulled, json.loads((out / CONFIG).read_text()), tracking_uri))
    return pulled


def _find_one(root: Path, name: str, reference: str) -> Path:
    found = sorted(root.rglob(name))
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
        f"Files: `{WEIGHTS}` (safetensors) and `{CONFIG}`; no pickle is needed to load them.",
        "",
    ]
    return "\n".join(lines)
