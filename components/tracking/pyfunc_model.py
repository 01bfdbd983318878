"""MLflow pyfunc loader for registered facerestore models (no pickle: safetensors + JSON).

MLflow calls `_load_pyfunc(data_path)` with the directory logged as `data_path`.
`predict` takes a dict of float32 NCHW arrays in [0, 1]: the image under the key its task
reads (`lq`, or `lr` for super-resolution) and, for inpainting, the holes as `mask`; it
returns the model's output as an array of the same layout. What goes into the model is the
task's (components/tasks: `Task.inference_batch`), as for `facerestore restore`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.models.base import Method


class RestorationModel:
    def __init__(self, method: Method):
        self.method = method

    def predict(self, model_input: dict[str, np.ndarray], params: dict | None = None) -> np.ndarray:
        import torch

        from components.tasks import task_of

        task = task_of(self.method)
        arrays = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in model_input.items()}
        if task.image_input is not None and task.image_input not in arrays:
            raise ValueError(f"a '{task.name}' model reads its image as '{task.image_input}'; "
                             f"the input has {sorted(arrays)}")
        image = arrays.get(task.image_input) if task.image_input is not None else None
        return self.method.restore(task.inference_batch(image, arrays.get("mask"))).numpy()


def _load_pyfunc(data_path: str) -> RestorationModel:
    from components.models.files import load_model_dir

    return RestorationModel(load_model_dir(str(Path(data_path))))
