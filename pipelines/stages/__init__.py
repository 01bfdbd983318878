"""Stage kinds: one module each, imported only when a config uses it.

A stage module provides `Config` (the pydantic class of its config section), `CODE_VERSION`
(bump it when the stage's output for the same config changes) and
`run(ctx, cfg, inputs) -> StageOutput` and `resources(cfg) -> {"CPU": n, "GPU": n}`, what the
runner admits the stage for when stages run at once.

A stage kind that renames a key of its section also provides `RENAMED_KEYS` (old -> new dotted
key, for one release): the config loader moves an old key there, with a FutureWarning.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGE_KINDS: dict[str, str] = {
    "synthesize": "pipelines.stages.synthesize",
    "train": "pipelines.stages.train",
    "evaluate": "pipelines.stages.evaluate",
    "register": "pipelines.stages.register",
}


def stage_module(kind: str) -> ModuleType:
    if kind not in STAGE_KINDS:
        raise KeyError(f"unknown stage kind '{kind}' (known: {', '.join(STAGE_KINDS)})")
    return importlib.import_module(STAGE_KINDS[kind])


def renamed_keys(kind: str) -> dict[str, str]:
    """Old key -> new dotted key of a stage kind's section ({} for a kind without renames or an unknown one)."""
    return getattr(stage_module(kind), "RENAMED_KEYS", {}) if kind in STAGE_KINDS else {}
