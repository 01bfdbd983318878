"""The weights files of the learned metrics (LPIPS, FID, identity similarity), and what happens without one.

These metrics are only meaningful with their published weights, which are a user's download
named in the evaluate stage's config. With no file named, the metric is *unavailable*: the
loaders raise `MetricUnavailable`, which the evaluate stage catches to report the metric as
missing, never as a number from a randomly initialised network. A file that is named but
absent, unreadable or of the wrong layout is a mistake in the config, not a missing metric:
those raise FileNotFoundError or ValueError naming the file.

`read_weights` is the one reader the three metrics share: `.safetensors` through safetensors,
anything else through `torch.load(weights_only=True)` (no pickle code runs).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor


class MetricUnavailable(RuntimeError):
    """A learned metric was asked for but no weights file was given for it."""


def read_weights(path: str | Path | None, metric: str, what: str = "weights") -> tuple[Path, dict[str, Tensor]]:
    """The tensors in the state-dict file `path` for `metric`, and the path as a Path.

    Raises MetricUnavailable when `path` is None, FileNotFoundError when it does not exist,
    ValueError when it is not a state dict of tensors. `what` names the file in messages
    ("backbone weights", "linear heads").
    """
    if path is None:
        raise MetricUnavailable(f"{metric} is unavailable: no {what} file was given")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{metric} {what} file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return path, load_file(str(path))
        except SafetensorError as err:
            raise ValueError(f"{metric} {what} file {path} is not a readable safetensors file: {err}") from err
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(f"{metric} {what} file {path} is not a readable state dict: {err}") from err
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]  # a training checkpoint that wraps the state dict
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{metric} {what} file {path} holds a {type(loaded).__name__}, not a state dict of tensors")
    return path, dict(loaded)


def check_state(path: Path, metric: str, state: Mapping[str, Tensor], expected: Mapping[str, Tensor],
                ignored_suffixes: tuple[str, ...] = ("num_batches_tracked",)) -> dict[str, Tensor]:
    """`state` checked key by key and shape by shape against a module's `expected` state dict.

    Keys ending in one of `ignored_suffixes` (BatchNorm's step counter, which some ported
    files lack) may be missing; the module keeps its own value for them. Errors name the file
    and the first offending keys.
    """
    wanted = {k for k in expected if not k.endswith(ignored_suffixes)}
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{metric} weights file {path} does not match the expected layout: "
                         f"missing keys {_preview(missing)}; unexpected keys {_preview(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} (want {tuple(expected[k].shape)})"
             for k in state if state[k].shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{metric} weights file {path} has tensors of the wrong shape: {_preview(wrong)}")
    merged = {k: v.clone() for k, v in expected.items()}
    merged.update({k: v.to(expected[k].dtype) for k, v in state.items()})
    return merged


def _preview(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
