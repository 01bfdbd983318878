"""The MLflow model signature and input example of a registered model, from its task and size.

A registered model takes what `restore` gets (`Task.inference_batch`: `lq` and `mask` for
restoration and inpainting, `lr` for super-resolution), float32 NCHW in [0, 1] at the model's
size (config.json `data.resolution`, over `sr_factor` for an SR input), the batch axis free
(-1); it returns `restored`, the model's `resolution`-sided RGB faces (what every restoring
task writes, `components.restore.model.Restorer`). So
MLflow can check what a client sends before the model sees it. A restoration model's `mask` is
required there too: all zero for no holes, what `facerestore restore` feeds. The ONNX model a
version may carry gets the same signature restricted to its graph's inputs (an input the network
never reads, as Panini's `mask`, is not in its graph). The input example is a mid-grey image (and
a centred square hole where the task takes holes), batch 1: its JSON stays as small as its shape allows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from components.restore.model import ONNX_OUTPUT

EXAMPLE_GREY = 0.5


def model_signature(model_dir: str) -> tuple[Any, dict[str, np.ndarray]] | None:
    """(ModelSignature, input example) of the model in `model_dir`; None for a model that takes no
    image (a GAN prior, a DRE: upstream material, nothing to send it)."""
    from components.models.files import read_model_config
    from components.restore.model import model_inputs, model_sizes
    from components.tasks import task_named

    _, config = read_model_config(model_dir)
    task = task_named(config["task"])
    if task.image_input is None:
        return None
    resolution, sr_factor = model_sizes(model_dir, config, task)
    inputs = model_inputs(task, resolution // sr_factor)
    return signature(inputs, (3, resolution, resolution)), input_example(inputs, task.needs_mask)


def signature(inputs: dict[str, tuple[int, ...]], output: Iterable[int]) -> Any:
    """Named float32 tensors, batch axis -1: `inputs` (name -> (C, H, W)) in, `restored` out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(name: str, shape: Iterable[int]) -> TensorSpec:
        return TensorSpec(np.dtype(np.float32), (-1, *shape), name)

    return ModelSignature(inputs=Schema([spec(name, shape) for name, shape in inputs.items()]),
                          outputs=Schema([spec(ONNX_OUTPUT, output)]))


def input_example(inputs: dict[str, tuple[int, ...]], with_holes: bool) -> dict[str, np.ndarray]:
    """A batch of one: mid-grey images, and a `mask` with a centred square hole (`with_holes`:
    a task that takes holes) or none (restoration's all-zero mask)."""
    example = {}
    for name, (channels, height, width) in inputs.items():
        if name == "mask":
            mask = np.zeros((1, channels, height, width), np.float32)
            if with_holes:
                mask[..., height // 4:height - height // 4, width // 4:width - width // 4] = 1.0
            example[name] = mask
        else:
            example[name] = np.full((1, channels, height, width), EXAMPLE_GREY, np.float32)
    return example


def restricted(full: Any, names: Iterable[str]) -> Any:
    """`full` with only the inputs in `names` (an ONNX graph's), the outputs as they are."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema

    kept = set(names)
    return ModelSignature(inputs=Schema([spec for spec in full.inputs.inputs if spec.name in kept]),
                          outputs=full.outputs)
