"""StyleGAN2 generator checkpoints in the official ports' layouts: rosinality's and BasicSR's (GFPGAN's).

`official_key_map` maps their state-dict keys to ours (components/networks/stylegan2.py);
`import_state_dict` / `export_state_dict` convert a generator state dict either way (shapes
only: equalized-lr weights are stored unscaled in all three); `load_pretrained` reads a local
checkpoint file (weights_only) into ours. The key maps and their sources: docs/methods.md,
section "stylegan2".
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from components.networks.stylegan2 import Generator, blur_kernel

Layout = Literal["rosinality", "basicsr"]
LAYOUTS: tuple[str, ...] = ("rosinality", "basicsr")

# Per styled conv: (rosinality suffix, BasicSR suffix, our suffix); None = no such key in that layout.
_STYLED_CONV_KEYS = (
    ("conv.weight", "modulated_conv.weight", "conv.weight"),
    ("conv.modulation.weight", "modulated_conv.modulation.weight", "conv.modulation.weight"),
    ("conv.modulation.bias", "modulated_conv.modulation.bias", "conv.modulation.bias"),
    ("noise.weight", "weight", "noise_strength"),
    ("activate.bias", "activate.bias", "bias"),
)
_TO_RGB_KEYS = (
    ("conv.weight", "modulated_conv.weight", "conv.weight"),
    ("conv.modulation.weight", "modulated_conv.modulation.weight", "conv.modulation.weight"),
    ("conv.modulation.bias", "modulated_conv.modulation.bias", "conv.modulation.bias"),
    ("bias", "bias", "bias"),
)
_NAMES = {  # per layout: mapping prefix, constant, first conv, conv list, noise key format
    "rosinality": ("style", "input.input", "conv1", "convs", "noises.noise_{}"),
    "basicsr": ("style_mlp", "constant_input.weight", "style_conv1", "style_convs", "noises.noise{}"),
}
# rosinality registers its blur kernels as buffers, so its state dicts carry them.
_ROSINALITY_KERNEL_SUFFIXES = ("conv.blur.kernel", "upsample.kernel")


def official_key_map(layout: Layout, n_mlp: int, resolution: int) -> dict[str, str]:
    """{their key: our key} for a generator of `resolution` with `n_mlp` mapping layers, every
    learned tensor and fixed-noise image (not rosinality's blur kernels, not our path-length mean)."""
    if layout not in _NAMES:
        raise ValueError(f"unknown checkpoint layout {layout!r}; known: {', '.join(LAYOUTS)}")
    column = LAYOUTS.index(layout)
    mlp, const, conv1, convs, noise = _NAMES[layout]
    keys = {f"{mlp}.{i + 1}.{p}": f"mapping.layers.{i}.{p}" for i in range(n_mlp) for p in ("weight", "bias")}
    keys[const] = "const"
    log_size = int(math.log2(resolution))
    theirs_convs = [conv1] + [f"{convs}.{i}" for i in range(2 * (log_size - 2))]
    ours_convs = ["blocks.0.conv"] + [f"blocks.{b}.{name}" for b in range(1, log_size - 1)
                                      for name in ("up_conv", "conv")]
    for layer, (theirs, ours) in enumerate(zip(theirs_convs, ours_convs, strict=True)):
        keys.update({f"{theirs}.{row[column]}": f"{ours}.{row[2]}" for row in _STYLED_CONV_KEYS})
        keys[noise.format(layer)] = f"{ours}.fixed_noise"
    theirs_rgb = ["to_rgb1"] + [f"to_rgbs.{i}" for i in range(log_size - 2)]
    for block, theirs in enumerate(theirs_rgb):
        keys.update({f"{theirs}.{row[column]}": f"blocks.{block}.to_rgb.{row[2]}" for row in _TO_RGB_KEYS})
    return keys


def _structure_of(state: Mapping[str, Tensor], layout: Layout) -> tuple[int, int]:
    """(n_mlp, resolution) read off an official state dict's keys."""
    mlp, const, _, _, _ = _NAMES[layout]
    if const not in state:
        raise KeyError(f"not a {layout} StyleGAN2 generator state dict: no '{const}' "
                       f"(keys start {sorted(state)[:4]})")
    n_mlp = len({key.split(".")[1] for key in state if key.startswith(f"{mlp}.")})
    n_rgbs = len({key.split(".")[1] for key in state if key.startswith("to_rgbs.")})
    return n_mlp, 2 ** (n_rgbs + 2)


def import_state_dict(state: Mapping[str, Tensor], layout: Layout) -> dict[str, Tensor]:
    """Our g / g_ema state dict from a rosinality or BasicSR generator state dict.

    Equalized-lr weights are stored unscaled in all three, so values carry over; only shapes
    change (modulated-conv weights drop their leading 1, ToRGB biases flatten). Raises on a key
    neither mapped nor expected, and on a missing key, naming them.
    """
    n_mlp, resolution = _structure_of(state, layout)
    key_map = official_key_map(layout, n_mlp, resolution)
    leftover = set(state) - set(key_map)
    if layout == "rosinality":
        for key in sorted(k for k in leftover if k.endswith(_ROSINALITY_KERNEL_SUFFIXES)):
            if not torch.allclose(state[key].float(), blur_kernel(gain=4.0)):
                raise ValueError(f"{key} is not the [1, 3, 3, 1] blur kernel x 4 this generator uses")
            leftover.discard(key)
    missing = sorted(set(key_map) - set(state))
    if leftover or missing:
        raise KeyError(f"{layout} generator state dict does not match StyleGAN2 at {resolution} px with "
                       f"{n_mlp} mapping layers: unexpected {sorted(leftover)[:5]}, missing {missing[:5]}")
    ours: dict[str, Tensor] = {}
    for theirs, our_key in key_map.items():
        value = state[theirs]
        if our_key.endswith("conv.weight") and value.ndim == 5:
            value = value.squeeze(0)
        elif our_key.endswith("to_rgb.bias"):
            value = value.reshape(3)
        ours[our_key] = value
    ours["path_length_mean"] = torch.zeros(())
    return ours


def export_state_dict(state: Mapping[str, Tensor], layout: Layout, n_mlp: int, resolution: int) -> dict[str, Tensor]:
    """The inverse of `import_state_dict`: our generator state dict in a rosinality / BasicSR layout
    (rosinality's blur-kernel buffers included), loadable by their `Generator.load_state_dict`."""
    theirs: dict[str, Tensor] = {}
    for their_key, our_key in official_key_map(layout, n_mlp, resolution).items():
        value = state[our_key]
        if our_key.endswith("conv.weight"):
            value = value.unsqueeze(0)
        elif our_key.endswith("to_rgb.bias"):
            value = value.reshape(1, 3, 1, 1)
        theirs[their_key] = value.clone()
    if layout == "rosinality":
        log_size = int(math.log2(resolution))
        kernel = blur_kernel(gain=4.0)
        theirs.update({f"convs.{2 * i}.conv.blur.kernel": kernel.clone() for i in range(log_size - 2)})
        theirs.update({f"to_rgbs.{i}.upsample.kernel": kernel.clone() for i in range(log_size - 2)})
    return theirs


_CHECKPOINT_KEYS = {"rosinality": ("g_ema",), "basicsr": ("params_ema", "params")}


def load_pretrained(path: str | Path, layout: Layout, generator: Generator | None = None) -> dict[str, Tensor]:
    """Our generator state dict from a local checkpoint file (torch.load with weights_only=True).

    The generator weights are taken from the checkpoint's "g_ema" (rosinality) or "params_ema" /
    "params" (BasicSR) entry, or the file is the state dict itself. With `generator`, the
    imported shapes are checked against it and a mismatch names the config keys to fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stylegan2 `pretrained` checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as error:  # what weights_only raises on a non-tensor object
        raise ValueError(f"stylegan2 `pretrained` {path} cannot be loaded with weights_only=True ({error}); "
                         f"save just the generator state dict (e.g. torch.save(ckpt['g_ema'], ...))") from error
    state = _generator_state(checkpoint, layout, path)
    ours = import_state_dict(state, layout)
    if generator is not None:
        expected = generator.state_dict()
        wrong = [f"{k} {tuple(v.shape)} vs ours {tuple(expected[k].shape)}" for k, v in ours.items()
                 if k in expected and v.shape != expected[k].shape]
        unmatched = sorted(set(ours) ^ set(expected))
        if wrong or unmatched:
            raise ValueError(f"stylegan2 `pretrained` {path} does not fit the config (check resolution, style_dim, "
                             f"n_mlp, channel_multiplier, width_scale): {(wrong + unmatched)[:4]}")
    return ours


def _generator_state(checkpoint: object, layout: Layout, path: Path) -> Mapping[str, Tensor]:
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"stylegan2 `pretrained` {path} holds a {type(checkpoint).__name__}, not a state dict")
    for key in _CHECKPOINT_KEYS[layout]:
        if key in checkpoint:
            return checkpoint[key]
    if _NAMES[layout][1] in checkpoint:
        return checkpoint
    raise KeyError(f"stylegan2 `pretrained` {path}: no {' / '.join(_CHECKPOINT_KEYS[layout])} entry and not a "
                   f"{layout} generator state dict (top-level keys: {sorted(checkpoint)[:6]})")
