"""register: the trained model into the MLflow registry, `candidate` always, `champion` if better.

The registered model is pickle-free: an MLflow pyfunc whose data is the stage's
`model.safetensors` + `config.json`, loaded by `components.tracking.pyfunc_model`.
The score each version earned is kept as a version tag, so the next registration compares
against the champion's own number, not one recomputed on other data.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from pipelines.context import StageContext, StageOutput

CODE_VERSION = "1"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str | None = None  # default: facerestore-<method>
    metric: str = "psnr"
    higher_is_better: bool = True


def resources(cfg: Config) -> dict[str, float]:
    """Calls to the tracking server only."""
    return {}


def run(ctx: StageContext, cfg: Config, inputs: dict) -> StageOutput:
    from components.tracking.registry import Candidate, register
    from pipelines.stages.inputs import one_of_kind

    model = one_of_kind(inputs, "model", ctx.stage)
    evaluation = one_of_kind(inputs, "evaluation", ctx.stage)
    key = f"{model.stage}/{cfg.metric}"
    if key not in evaluation.manifest["metrics"]:
        raise KeyError(f"evaluation '{evaluation.stage}' has no metric '{key}' (has: {', '.join(evaluation.manifest['metrics'])})")
    name = cfg.model_name or f"facerestore-{model.manifest['details']['method']}"
    outcome = register(Candidate(
        name=name, model_uri=model.uri, run_id=ctx.mlflow_run_id, tracking_uri=ctx.tracking_uri,
        metric=cfg.metric, score=float(evaluation.manifest["metrics"][key]), higher_is_better=cfg.higher_is_better,
        tags={"pipeline_run": ctx.pipeline_run_id, "stage": model.stage, "fingerprint": model.fingerprint,
              "data_fingerprint": str(model.manifest["details"].get("data", {}).get("shards_fingerprint")),
              "evaluation_fingerprint": evaluation.fingerprint}))
    ctx.progress.update(done=1, total=1, unit="versions", message=outcome.decision)
    return StageOutput(artifact="registration", count=1,
                       metrics={"version": float(outcome.version), cfg.metric: outcome.score,
                                "promoted": float(outcome.promoted)},
                       details={"model": name, "version": outcome.version, "promoted": outcome.promoted,
                                "champion_score": outcome.champion_score, "decision": outcome.decision})
