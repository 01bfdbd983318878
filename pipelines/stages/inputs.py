"""Finding a stage's upstream artifacts by what they hold, not by their stage names."""

from __future__ import annotations

from pipelines.context import Artifact


def of_kind(inputs: dict[str, Artifact], kind: str) -> list[Artifact]:
    return [artifact for artifact in inputs.values() if artifact.kind == kind]


def one_of_kind(inputs: dict[str, Artifact], kind: str, stage: str) -> Artifact:
    found = of_kind(inputs, kind)
    if len(found) != 1:
        names = ", ".join(f"{a.stage} ({a.kind})" for a in inputs.values()) or "none"
        raise ValueError(f"stage '{stage}' needs exactly one upstream '{kind}' artifact; its needs give: {names}")
    return found[0]


def shard_uris(shards: Artifact) -> list[str]:
    return [shards.path(entry["path"]) for entry in shards.manifest["details"]["shards"]]
