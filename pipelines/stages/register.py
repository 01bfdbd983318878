"""register: the trained model into the MLflow registry, `candidate` always, `champion` if better.

The registered model is pickle-free: an MLflow pyfunc whose data is the stage's
`model.safetensors` + `config.json`, loaded by `components.tracking.pyfunc_model`, with a
signature and an input example (components/tracking/signature.py). The score each version
earned is kept as a version tag, so the next registration compares against the champion's own
number, not one recomputed on other data.

`onnx: true` also exports the model to ONNX, checked against PyTorch (components/export/onnx.py),
on a copy of the model in a temporary folder (a stage writes only its own output): the version
carries `model.onnx` in its pyfunc data, and the run logs it as an `mlflow.onnx` model too.
An export that does not match fails the stage, and nothing is registered.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from pipelines.context import StageContext, StageOutput

CODE_VERSION = "2"  # 2: every version gets a signature and an input example; `onnx`


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str | None = None  # default: facerestore-<method>
    metric: str = "psnr"
    higher_is_better: bool = True
    onnx: bool = False  # also export model.onnx (checked against PyTorch) and register it with the model


def resources(cfg: Config) -> dict[str, float]:
    """Calls to the tracking server only."""
    return {}


def run(ctx: StageContext, cfg: Config, inputs: dict) -> StageOutput:
    import tempfile

    from components.tracking.registry import Candidate, register
    from pipelines.stages.inputs import one_of_kind

    model = one_of_kind(inputs, "model", ctx.stage)
    evaluation = one_of_kind(inputs, "evaluation", ctx.stage)
    key = f"{model.stage}/{cfg.metric}"
    if key not in evaluation.manifest["metrics"]:
        raise KeyError(f"evaluation '{evaluation.stage}' has no metric '{key}' (has: {', '.join(evaluation.manifest['metrics'])})")
    name = cfg.model_name or f"facerestore-{model.manifest['details']['method']}"
    with tempfile.TemporaryDirectory() as tmp:
        model_uri, onnx_entry = exported_copy(model.uri, tmp) if cfg.onnx else (model.uri, None)
        outcome = register(Candidate(
            name=name, model_uri=model_uri, run_id=ctx.mlflow_run_id, tracking_uri=ctx.tracking_uri,
            metric=cfg.metric, score=float(evaluation.manifest["metrics"][key]), higher_is_better=cfg.higher_is_better,
            tags={"pipeline_run": ctx.pipeline_run_id, "stage": model.stage, "fingerprint": model.fingerprint,
                  "data_fingerprint": str(model.manifest["details"].get("data", {}).get("shards_fingerprint")),
                  "evaluation_fingerprint": evaluation.fingerprint}))
    ctx.progress.update(done=1, total=1, unit="versions", message=outcome.decision)
    metrics = {"version": float(outcome.version), cfg.metric: outcome.score, "promoted": float(outcome.promoted)}
    if onnx_entry:
        metrics["onnx_max_abs_diff"] = float(onnx_entry["max_abs_diff"])
    return StageOutput(artifact="registration", count=1, metrics=metrics,
                       details={"model": name, "version": outcome.version, "promoted": outcome.promoted,
                                "champion_score": outcome.champion_score, "decision": outcome.decision,
                                "onnx": onnx_entry})


def exported_copy(model_uri: str, tmp: str) -> tuple[str, dict]:
    """(a copy of the model in `tmp` with its ONNX export, the export's config.json entry);
    ExportError when the export does not match PyTorch."""
    from pathlib import Path

    from components.export.onnx import export_onnx
    from components.models.files import copy_model_dir

    target = str(Path(tmp, "model"))
    Path(target).mkdir()
    copy_model_dir(model_uri, target)
    return target, export_onnx(target).entry
