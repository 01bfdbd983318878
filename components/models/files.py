"""A model as users receive it: `model.safetensors` + `config.json`, loadable with no pickle.

A trained model also has `training.safetensors`: the live (not averaged) weights of the networks
whose moving average `model.safetensors` holds. With the discriminators, which
`model.safetensors` always holds, that is what fine-tuning needs to go on training
(components/training/finetune.py); inference never reads it.

An exported model also has `model.onnx` (components/export/onnx.py, recorded under config.json's
`onnx`): the restoring path as an ONNX graph, checked against PyTorch; a registered model carries
it where it has one. It is not part of what fine-tuning copies or pins: it is derived from the weights.
"""

from __future__ import annotations

import json
from typing import Any

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from components import storage

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINING_WEIGHTS = "training.safetensors"
ONNX = "model.onnx"
MODEL_FILES = (WEIGHTS, CONFIG, TRAINING_WEIGHTS)  # the model itself: what fine-tuning copies and pins
REGISTERED_FILES = (*MODEL_FILES, ONNX)  # what a registered model carries, when present
OPTIONAL_FILES = (TRAINING_WEIGHTS, ONNX)  # copied where a model has them; the others always


def save_model_dir(uri: str, state: dict[str, Any], config: dict[str, Any],
                   training_state: dict[str, Any] | None = None) -> None:
    storage.write_bytes_atomic(storage.join(uri, WEIGHTS), save_safetensors(_plain(state)))
    if training_state:
        storage.write_bytes_atomic(storage.join(uri, TRAINING_WEIGHTS), save_safetensors(_plain(training_state)))
    storage.write_json_atomic(storage.join(uri, CONFIG), config)


def files_to_copy(uri: str, names: tuple[str, ...] = MODEL_FILES) -> tuple[str, ...]:
    """The names of a model directory's files, of `names`, that a copy of it carries: the weights
    and config always (a copy of a directory without them fails on reading them), the optional
    files (training weights, model.onnx) where the model has them."""
    return tuple(name for name in names if name not in OPTIONAL_FILES or storage.exists(storage.join(uri, name)))


def copy_model_dir(source: str, target: str, names: tuple[str, ...] = MODEL_FILES) -> tuple[str, ...]:
    """The files of `names` that the model in `source` has (`files_to_copy`) written into `target`
    (either a local folder or a store URI); their names."""
    copied = files_to_copy(source, names)
    for name in copied:
        storage.write_bytes_atomic(storage.join(target, name), storage.read_bytes(storage.join(source, name)))
    return copied


def read_training_weights(uri: str) -> dict[str, Any]:
    """The live weights of a model's averaged networks (`{"<net>.<param>": tensor}`); {} when it has none."""
    path = storage.join(uri, TRAINING_WEIGHTS)
    return load_safetensors(storage.read_bytes(path)) if storage.exists(path) else {}


def _plain(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def read_model_dir(uri: str) -> tuple[dict[str, Any], dict[str, Any]]:
    weights_uri, config_uri = storage.join(uri, WEIGHTS), storage.join(uri, CONFIG)
    for path in (weights_uri, config_uri):
        if not storage.exists(path):
            raise FileNotFoundError(f"model directory {uri} has no {path.rpartition('/')[2]}")
    config = json.loads(storage.read_bytes(config_uri))
    return load_safetensors(storage.read_bytes(weights_uri)), config


def load_model_dir(uri: str) -> Any:
    """The method, networks loaded, ready for `restore`."""
    from components.models import load_method

    state, config = read_model_dir(uri)
    return load_method(state, config)


def load_upstream(upstream: dict[str, Any], method: str) -> Any:
    """The one upstream model directory (stage name -> URI) that holds a `method` model, loaded.

    A method that builds on an earlier stage (the inpainting generator on the edge GAN, Panini
    on the DRE and the prior) finds it by what it is, not by the stage's name in a config.
    """
    found = {}
    for stage, uri in upstream.items():
        _, config = read_model_config(str(uri))
        if config.get("method") == method:
            found[stage] = str(uri)
    if len(found) != 1:
        given = ", ".join(f"{stage} ({uri})" for stage, uri in upstream.items()) or "none"
        raise ValueError(f"needs exactly one upstream '{method}' model, found {len(found)}; upstream models: {given}")
    return load_model_dir(next(iter(found.values())))


def read_model_config(uri: str) -> tuple[str, dict[str, Any]]:
    """(config URI, its parsed JSON) of a model directory, without reading the weights."""
    config_uri = storage.join(uri, CONFIG)
    if not storage.exists(config_uri):
        raise FileNotFoundError(f"model directory {uri} has no {CONFIG}")
    return config_uri, json.loads(storage.read_bytes(config_uri))
