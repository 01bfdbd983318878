"""Fine-tuning: a training run whose networks start from an earlier model's weights (`init_from`).

The source is a model directory (components/models/files.py): `model.safetensors` holds every
network as exported (averaged generators, discriminators, upstream networks), and
`training.safetensors`, where present, the live weights of the averaged ones. The live networks
start from the live weights (the exported ones where a model has no training file) and the
moving average from the exported ones, so a fine-tuned run goes on from where its source
stopped, its discriminator included. Optimiser state is not carried over: a fine-tune starts
its own Adam moments and schedule, as BasicSR's `pretrain_network_g` does.

The source must be of the same method with networks of the same shapes: anything else is
refused before Ray Train starts, naming the keys that differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from components.models.base import Method, split_by_network
from components.models.files import read_model_dir, read_training_weights

SHOWN_KEYS = 8  # mismatched keys an error names; the rest are counted


@dataclass(frozen=True)
class SourceWeights:
    method: str
    exported: dict[str, dict[str, Tensor]]  # network -> its state as exported
    live: dict[str, dict[str, Tensor]]  # network -> its live state (averaged networks only)

    def start_state(self, net_name: str) -> dict[str, Tensor]:
        """What the live network `net_name` starts from."""
        return self.live.get(net_name) or self.exported[net_name]


def read_source(uri: str) -> SourceWeights:
    state, config = read_model_dir(uri)
    return SourceWeights(str(config.get("method")), split_by_network(state), split_by_network(read_training_weights(uri)))


def check_fits(method: Method, source: SourceWeights, where: str) -> None:
    """Raises ValueError naming every network key whose presence or shape differs."""
    if source.method != method.name:
        raise ValueError(f"init_from {where} is a '{source.method}' model; this stage trains '{method.name}'")
    problems: list[str] = []
    for net_name, net in method.networks().items():
        own = {key: tuple(value.shape) for key, value in method.unwrapped(net_name).state_dict().items()}
        for label, given in (("exported", source.exported.get(net_name)), ("training", source.live.get(net_name))):
            if given is None:
                if label == "exported":
                    problems.append(f"network '{net_name}' is missing")
                continue
            problems += [f"{net_name}.{key}: {describe(given.get(key), shape)}" for key, shape in own.items()
                         if given.get(key) is None or tuple(given[key].shape) != shape]
            problems += [f"{net_name}.{key}: not in this stage's network" for key in given if key not in own]
    problems += [f"network '{name}' is not one of this stage's" for name in source.exported if name not in method.networks()]
    if problems:
        shown = sorted(set(problems))
        more = f" and {len(shown) - SHOWN_KEYS} more" if len(shown) > SHOWN_KEYS else ""
        raise ValueError(f"init_from {where} does not fit this stage's '{method.name}' networks "
                         f"({len(shown)} mismatched keys): {'; '.join(shown[:SHOWN_KEYS])}{more}")


def describe(given: Tensor | None, wanted: tuple[int, ...]) -> str:
    if given is None:
        return f"missing (this stage's is {list(wanted)})"
    return f"shape {list(given.shape)} where this stage's is {list(wanted)}"


def start_from(method: Method, source: SourceWeights) -> None:
    """Loads the source's weights into the method's (bare) networks, strictly."""
    for net_name in method.networks():
        method.unwrapped(net_name).load_state_dict(source.start_state(net_name), strict=True)


def averaged_start(source: SourceWeights, names: tuple[str, ...]) -> Mapping[str, Any]:
    """Where the moving average of each averaged network starts: the source's exported weights."""
    return {name: source.exported[name] for name in names}
