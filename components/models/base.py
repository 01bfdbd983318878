"""`Method`, the base class every method under components/models subclasses, and its config.

A method owns only its maths: it builds its networks and optimisers from a typed config,
does one training step (its own G/D alternation included), restores a batch and exports
what inference needs. The one training loop (components/training) owns device placement,
DDP, AMP and checkpoints.

The training loop may replace entries of the dict `networks()` returns by their DDP wrappers
(`method.nets["g"] = DistributedDataParallel(...)`), so a method reaches its networks
through `self.nets[name]` at call time and never keeps a module reference of its own;
`unwrapped(name)` gives the bare module for export and inference.

Every tensor is float32 NCHW in [0, 1]; `mask` is (N, 1, H, W) with 1 = missing pixel. `task`
names one of components/tasks' objects, which say what a method of that task reads and
returns (docs/methods.md, section "What a method reads, by task"); files keep the name. The
interface as the rest of the project uses it: docs/architecture.md, section "The Method
interface". The optimiser defaults' source: docs/methods.md, section "Method reference".
"""

from __future__ import annotations

import contextlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.optim import Optimizer

Upstream = Mapping[str, "str | Path"]


class NotARestorer(TypeError):
    """`restore` asked of a method whose task is not an image (a DRE, a GAN prior): by design, not a gap."""


class MethodConfig(BaseModel):
    """Settings every method has; a method's own Config subclasses this and adds its keys."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)

    @field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam betas must lie in [0, 1), got {betas}")
        return betas


class Method(ABC):
    """What every method subclasses, and what the training loop, the evaluate stage, inference and
    the MLflow model are typed with: the config, the upstream model URIs, the live network dict
    and the optimisers.

    A subclass sets `name`, `inputs` and `Config`, and implements `build_networks`,
    `build_optimizers`, `training_step` and `restore`. `upstream` maps an earlier stage's
    name to its model directory URI (a local path or `s3://...`; kept as given, never
    turned into a Path). When a method is rebuilt from its export, `upstream` is empty:
    the export holds every weight inference needs, upstream networks included.
    """

    name: ClassVar[str]
    task: ClassVar[str] = "restoration"
    inputs: ClassVar[tuple[str, ...]]
    # Columns also drawn from a second, independently shuffled stream, as `unpaired_<column>`
    # (methods trained without paired ground truth).
    unpaired: ClassVar[tuple[str, ...]] = ()
    # Networks the training loop keeps an exponential moving average of (its `ema_decay`); the
    # average is what validation scores and the export holds (components/training/ema.py).
    averaged: ClassVar[tuple[str, ...]] = ("g",)
    # Columns `validation_scores` reads, for a method that scores itself (empty: its task's scoring).
    validation_columns: ClassVar[tuple[str, ...]] = ()
    # The scoring protocol its paper reports by (components/metrics/protocols.py), where it is not
    # its task's `paper_protocol` (None: the task's). Panini's x16 SR is scored as Panini, not CTCNet.
    paper_protocol: ClassVar[str | None] = None
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, cfg: MethodConfig, upstream: Upstream | None = None) -> None:
        if not isinstance(cfg, self.Config):
            raise TypeError(f"method '{self.name}' needs a {self.Config.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        self.upstream: dict[str, str | Path] = dict(upstream or {})
        self.nets: dict[str, nn.Module] = self.build_networks()
        for net_name in self.nets:
            if "." in net_name:
                raise ValueError(f"network name '{net_name}' of method '{self.name}' must not contain '.'")
        self.opts: dict[str, Optimizer] = self.build_optimizers()

    # -- what a subclass provides (a subclass missing one cannot be instantiated) --------
    @abstractmethod
    def build_networks(self) -> dict[str, nn.Module]: ...

    @abstractmethod
    def build_optimizers(self) -> dict[str, Optimizer]: ...

    @abstractmethod
    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]: ...

    @abstractmethod
    def restore(self, batch: dict[str, Tensor]) -> Tensor: ...

    @classmethod
    def task_for(cls, cfg: MethodConfig) -> str:
        """The task a method with this config has, without building it: `task`, or, where a
        subclass makes `task` a property of its config (Panini: restoration from `lq`, SR from
        `lr`), that property read on the config alone."""
        declared = inspect.getattr_static(cls, "task")
        if isinstance(declared, property):
            return declared.fget(SimpleNamespace(cfg=cfg))
        return declared

    @classmethod
    def columns(cls, cfg: MethodConfig) -> tuple[str, ...]:
        """The shard columns a method with this config trains on: `inputs`, unless a method's
        config chooses its input (Panini reads `lq` for blind restoration, `lr` for SR)."""
        return cls.inputs

    def validation_scores(self, data: dict[str, Tensor], groups: Mapping[str, list[str]]) -> dict[str, float] | None:
        """Validation scores of a method whose task scores no images (the DRE's k-NN accuracy), on
        the val slice `data` (its `validation_columns`) and its breakdown `groups`; None: the task's."""
        return None

    def samples(self) -> Tensor | None:
        """Images showing what a model with no image input learned (a GAN prior's faces), in
        [0, 1]; None for a method that restores images. The train stage logs them as samples.png."""
        return None

    # -- the contract ------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        """The live dict: the training loop moves these and may replace entries by DDP wrappers."""
        return self.nets

    def optimizers(self) -> dict[str, Optimizer]:
        return self.opts

    def export(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """`{"<net>.<param>": tensor}` on CPU, each with its own storage (safetensors rejects shared
        storage), plus the JSON config that `load_exported` rebuilds the method from."""
        state = {}
        for net_name in self.nets:
            for key, value in self.unwrapped(net_name).state_dict().items():
                state[f"{net_name}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
        return state, {"method": self.name, "task": self.task, "config": self.cfg.model_dump(mode="json")}

    @classmethod
    def load_exported(cls, state: Mapping[str, Tensor], config: Mapping[str, Any]) -> Method:
        """The method rebuilt from `export()`, every network loaded strictly, in eval mode, on CPU."""
        if config.get("method") != cls.name:
            raise ValueError(f"config is for method '{config.get('method')}', not '{cls.name}'")
        method = cls(cls.Config.model_validate(config.get("config", {})), upstream=None)
        by_network = split_by_network(state)
        unclaimed = sorted(f"{net_name}.{key}" for net_name in set(by_network) - set(method.nets)
                           for key in by_network[net_name])
        if unclaimed:
            raise ValueError(f"exported state of '{cls.name}' has keys of no network: {unclaimed[:5]}")
        for net_name in method.nets:
            method.unwrapped(net_name).load_state_dict(by_network.get(net_name, {}), strict=True)
        for net in method.nets.values():
            net.eval()
        return method

    # -- helpers for subclasses --------------------------------------------------------
    def unwrapped(self, net_name: str) -> nn.Module:
        """The bare module under a DDP / DataParallel wrapper the training loop may have put on it."""
        net = self.nets[net_name]
        return net.module if isinstance(net, (DistributedDataParallel, DataParallel)) else net

    def adam(self, net_name: str) -> torch.optim.Adam:
        return torch.optim.Adam(self.nets[net_name].parameters(), lr=self.cfg.lr, betas=self.cfg.betas)

    @property
    def device(self) -> torch.device:
        """Where the first parameter of the first network lives (CPU for a method without parameters)."""
        for net in self.nets.values():
            for param in net.parameters():
                return param.device
        return torch.device("cpu")

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """No grad, every network in eval mode; each network's previous mode comes back afterwards."""
        modes = {net_name: net.training for net_name, net in self.nets.items()}
        try:
            for net in self.nets.values():
                net.eval()
            with torch.no_grad():
                yield
        finally:
            for net_name, training in modes.items():
                self.nets[net_name].train(training)


def split_by_network(state: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """`{"<net>.<param>": tensor}` (an export) as `{net: {param: tensor}}`."""
    by_network: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        net_name, _, param = key.partition(".")
        by_network.setdefault(net_name, {})[param] = value
    return by_network
