"""The method registry: an explicit dict of import paths, each imported only when asked for.

One broken method file breaks only that method, and importing this package imports no torch
(so `facerestore --help` answers at once). A method is a `components.models.base.Method`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: importing torch here would slow every config load
    from components.models.base import Method

METHODS: dict[str, str] = {
    "baseline": "components.models.baseline:Baseline",
    "edge_gan": "components.models.edge_gan:EdgeGAN",
    "fusion_inpaint": "components.models.fusion_inpaint:FusionInpaint",
    "cafin": "components.models.cafin:CAFIN",
    "contrastive_inpaint": "components.models.contrastive_inpaint:ContrastiveInpaint",
    "ctcnet": "components.models.ctcnet:CTCNet",
    "dre": "components.models.dre:DRE",
    "stylegan2": "components.models.stylegan2:StyleGAN2",
    "panini": "components.models.panini:Panini",
}


class UnknownMethodError(KeyError, ValueError):
    """A method name not in METHODS. A KeyError (registry lookup) and a ValueError (bad config value)."""

    def __str__(self) -> str:  # KeyError's own __str__ would print the message in quotes
        return str(self.args[0])


def method_class(name: str) -> type[Method]:
    """The Method class registered under `name`, imported now."""
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    module_name, _, attribute = METHODS[name].partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def build_method(name: str, cfg: Mapping[str, Any], upstream: Mapping[str, str | Path] | None = None) -> Method:
    """A fresh method from its config dict, validated by its Config (pydantic's ValidationError propagates)."""
    cls = method_class(name)
    return cls(cls.Config.model_validate(dict(cfg)), dict(upstream or {}))


def load_method(state: Mapping[str, Any], config: Mapping[str, Any]) -> Method:
    """The method rebuilt from its `export()`: networks loaded strictly, in eval mode, on CPU."""
    name = config.get("method")
    if not isinstance(name, str):
        raise ValueError(f"model config has no 'method' name (keys: {', '.join(sorted(config))})")
    return method_class(name).load_exported(state, config)
