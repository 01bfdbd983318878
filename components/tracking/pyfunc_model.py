"""MLflow pyfunc loader for registered facerestore models (no pickle: safetensors + JSON).

MLflow calls `_load_pyfunc(data_path)` with the directory logged as `data_path`.
`predict` takes a dict of float32 NCHW arrays in [0, 1] (`lq`, and `mask` for inpainting)
and returns the restored images as an array of the same layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class RestorationModel:
    def __init__(self, method: Any):
        self.method = method

    def predict(self, model_input: dict[str, np.ndarray], params: dict | None = None) -> np.ndarray:
        import torch

        batch = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in model_input.items()}
        if "mask" not in batch:
            n, _, h, w = batch["lq"].shape
            batch["mask"] = torch.zeros(n, 1, h, w)
        return self.method.restore(batch).numpy()


def _load_pyfunc(data_path: str) -> RestorationModel:
    from components.models.files import load_model_dir

    return RestorationModel(load_model_dir(str(Path(data_path))))
