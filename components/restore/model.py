"""A pulled or local model, ready to restore face crops in batches on the CPU or a GPU.

A model is trained on square faces of one resolution (config.json `data.resolution`), and
some networks only take that size (a StyleGAN prior has a fixed output), so it restores
aligned crops of that side (an SR model: of `resolution / sr_factor`, into `resolution`).
On a GPU the network runs under bf16 autocast: about half the memory and twice the speed
of float32 on current GPUs, and what the recipes' real presets train with. Outputs come
back as uint8, rounded as PNG writing rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.models.base import Method
from components.tasks import Task, task_of


class RestoreError(ValueError):
    """A model or input that cannot be restored; the message names the file."""


@dataclass(frozen=True)
class Restorer:
    method: Method
    resolution: int          # the side of the faces the model writes
    sr_factor: int = 1
    device: str = "cpu"

    @property
    def task(self) -> Task:
        return task_of(self.method)

    @property
    def input_side(self) -> int:
        """The side of the crops the model reads."""
        return self.resolution // self.sr_factor

    def restore_crops(self, crops: Sequence[np.ndarray], holes: Sequence[np.ndarray] | None = None,
                      batch_size: int = 8) -> list[np.ndarray]:
        """uint8 RGB `resolution`-sided faces from uint8 RGB `input_side`-sided crops, `batch_size`
        at a time; `holes` ({0, 1} input_side-sided, 1 = missing) for a model that takes them."""
        import torch

        restored: list[np.ndarray] = []
        for start in range(0, len(crops), batch_size):
            images = torch.from_numpy(np.stack([c.transpose(2, 0, 1) for c in crops[start:start + batch_size]]))
            missing = None
            if holes is not None:
                missing = torch.from_numpy(np.stack(holes[start:start + batch_size]).astype(np.float32))[:, None]
            batch = self.task.inference_batch(images.float().div(255.0), missing)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.no_grad(), torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.device_type == "cuda"):
                out = self.method.restore(batch)
            out = (out.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            restored += list(out)
        return restored

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]


def default_device() -> str:
    """cuda when this machine has a GPU torch can use, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_restorer(model_dir: str | Path, device: str | None = None) -> Restorer:
    """The model in `model_dir` (a local folder or a store URI) on `device` (default: cuda when
    there is one); RestoreError naming the folder when it holds no model that restores photos."""
    import torch

    from components.models.files import load_model_dir, read_model_config

    directory = str(model_dir)
    device = device or default_device()
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise RestoreError(f"--device {device}: use cpu or cuda (cuda:N for one GPU of several)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RestoreError(f"--device {device}: torch sees no CUDA GPU on this machine (use --device cpu)")
    try:
        _, config = read_model_config(directory)
        method = load_model_dir(directory)
    except FileNotFoundError as err:
        raise RestoreError(f"no model at {directory}: {err}") from None
    task = task_of(method)
    if not task.restores_photos:
        raise RestoreError(f"model at {directory} is a '{method.name}' ({task.name}): it does not restore photos")
    data = config.get("data") or {}
    if "resolution" not in data:
        raise RestoreError(f"model at {directory} does not record its training resolution (config.json data.resolution)")
    sr_factor = int(data.get("sr_factor") or 1) if task.scales else 1
    for network in method.nets.values():
        network.to(device).eval()
    return Restorer(method, int(data["resolution"]), sr_factor, device)
