"""Reading the published weights files a user downloads (VGG19, LPIPS, Inception, ArcFace).

One reader for all of them, so each loss and metric fails the same way on a bad file:
`.safetensors` through safetensors, anything else through `torch.load(weights_only=True)`
(no pickled code runs). A file that is absent, unreadable or of the wrong layout raises
FileNotFoundError or ValueError naming the file and the first offending keys.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor


def read_state_dict(path: str | Path, owner: str, what: str = "weights") -> dict[str, Tensor]:
    """The tensors in the state-dict file `path`; `owner` and `what` name it in errors
    ("LPIPS", "linear heads"). A training checkpoint that wraps its state dict in
    "state_dict" is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{owner} {what} file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise ValueError(f"{owner} {what} file {path} is not a readable safetensors file: {err}") from err
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(f"{owner} {what} file {path} is not a readable state dict: {err}") from err
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{owner} {what} file {path} holds a {type(loaded).__name__}, not a state dict of tensors")
    return dict(loaded)


def check_state(path: Path, owner: str, state: Mapping[str, Tensor], expected: Mapping[str, Tensor],
                ignored_suffixes: tuple[str, ...] = ("num_batches_tracked",),
                layout: str = "the expected layout") -> dict[str, Tensor]:
    """`state` checked key by key and shape by shape against a module's `expected` state dict;
    returns `expected` with `state`'s values in `expected`'s dtypes.

    Keys ending in one of `ignored_suffixes` (BatchNorm's step counter, which some ported
    files lack) may be missing; the module keeps its own value for them.
    """
    wanted = {k for k in expected if not k.endswith(ignored_suffixes)}
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{owner} weights file {path} does not match {layout}: "
                         f"missing keys {_preview(missing)}; unexpected keys {_preview(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} (want {tuple(expected[k].shape)})"
             for k in state if state[k].shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{owner} weights file {path} has tensors of the wrong shape: {_preview(wrong)}")
    merged = {k: v.clone() for k, v in expected.items()}
    merged.update({k: v.to(expected[k].dtype) for k, v in state.items()})
    return merged


def _preview(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
