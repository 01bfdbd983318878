"""A pulled or local model, ready to restore face crops in batches on the CPU or a GPU.

A model is trained on square faces of one resolution (config.json `data.resolution`), and
some networks only take that size (a StyleGAN prior has a fixed output), so it restores
aligned crops of that side (an SR model: of `resolution / sr_factor`, into `resolution`).
On a GPU the network runs under bf16 autocast: about half the memory and twice the speed
of float32 on current GPUs, and what the recipes' real presets train with. Outputs come
back as uint8, rounded as PNG writing rounds.

Two backends run the network: `torch` (the loaded method's `restore`) and `onnxruntime`
(the model's `model.onnx`, written by `facerestore export`, in an ONNX Runtime session; torch
then only converts the crops to floats and back). Both see the same batch, the task's
`inference_batch` of the uint8 crops divided by 255, and their outputs are rounded the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from components.tasks import Task, task_named

if TYPE_CHECKING:
    from torch import Tensor

BACKENDS = ("torch", "onnxruntime")
ONNX_OUTPUT = "restored"  # the output of every model.onnx; its inputs are named after the batch keys


class RestoreError(ValueError):
    """A model or input that cannot be restored; the message names the file."""


class RestoringModel(Protocol):
    """What a Restorer runs batches through: a loaded Method (backend torch) or an OnnxRuntimeModel."""

    name: str  # the method's name
    task: str  # its task's name

    def restore(self, batch: dict[str, Tensor]) -> Tensor: ...


class OnnxRuntimeModel:
    """A model.onnx in an ONNX Runtime session, called as a Method's `restore` is: the batch's
    tensors go in under their keys (those the graph takes), `restored` comes back as a CPU tensor."""

    def __init__(self, onnx: bytes, name: str, task: str, device: str = "cpu"):
        import onnxruntime
        import torch

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # what a Ray actor is given (run.py sets torch's)
        provider = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
        if provider not in onnxruntime.get_available_providers():
            raise RestoreError(f"--device {device} with --backend onnxruntime: this onnxruntime has no {provider} "
                               "(install onnxruntime-gpu for cuda)")
        provider_options = {"device_id": int(device.partition(":")[2] or 0)} if provider.startswith("CUDA") else {}
        self.session = onnxruntime.InferenceSession(onnx, options, providers=[(provider, provider_options)])
        self.name, self.task = name, task
        self.input_names = [node.name for node in self.session.get_inputs()]

    def restore(self, batch: dict[str, Tensor]) -> Tensor:
        import torch

        missing = sorted(set(self.input_names) - set(batch))
        if missing:
            raise RestoreError(f"model.onnx of '{self.name}' takes {self.input_names}; the batch lacks {missing}")
        feed = {name: np.ascontiguousarray(batch[name].detach().float().cpu().numpy()) for name in self.input_names}
        (restored,) = self.session.run([ONNX_OUTPUT], feed)
        return torch.from_numpy(restored)


@dataclass(frozen=True)
class Restorer:
    model: RestoringModel
    resolution: int          # the side of the faces the model writes
    sr_factor: int = 1
    device: str = "cpu"

    @property
    def task(self) -> Task:
        return task_named(self.model.task)

    @property
    def backend(self) -> str:
        return "onnxruntime" if isinstance(self.model, OnnxRuntimeModel) else "torch"

    @property
    def input_side(self) -> int:
        """The side of the crops the model reads."""
        return self.resolution // self.sr_factor

    @property
    def inputs(self) -> dict[str, tuple[int, int, int]]:
        """What the network reads, in `restore`'s batch order: name -> (C, H, W)."""
        return model_inputs(self.task, self.input_side)

    def restore_crops(self, crops: Sequence[np.ndarray], holes: Sequence[np.ndarray] | None = None,
                      batch_size: int = 8) -> list[np.ndarray]:
        """uint8 RGB `resolution`-sided faces from uint8 RGB `input_side`-sided crops, `batch_size`
        at a time; `holes` ({0, 1} input_side-sided, 1 = missing) for a model that takes them."""
        import torch

        from components.data.schema import to_uint8

        restored: list[np.ndarray] = []
        for start in range(0, len(crops), batch_size):
            images = torch.from_numpy(np.stack([c.transpose(2, 0, 1) for c in crops[start:start + batch_size]]))
            missing = None
            if holes is not None:
                missing = torch.from_numpy(np.stack(holes[start:start + batch_size]).astype(np.float32))[:, None]
            batch = self.task.inference_batch(images.float().div(255.0), missing)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.no_grad(), torch.autocast(self.device_type, dtype=torch.bfloat16,
                                                 enabled=self.device_type == "cuda" and self.backend == "torch"):
                out = self.model.restore(batch)
            out = to_uint8(out).permute(0, 2, 3, 1).cpu().numpy()
            restored += list(out)
        return restored

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]


def model_inputs(task: Task, input_side: int) -> dict[str, tuple[int, int, int]]:
    """name -> (C, H, W) of what a `task` model of `input_side` px crops reads: the keys of the
    task's `inference_batch`, in its order (the ONNX inputs and the MLflow signature follow it)."""
    import torch

    side = input_side
    batch = task.inference_batch(torch.zeros(1, 3, side, side), torch.zeros(1, 1, side, side) if task.needs_mask else None)
    return {name: tuple(value.shape[1:]) for name, value in batch.items()}


def model_sizes(directory: str, config: dict[str, Any], task: Task) -> tuple[int, int]:
    """(resolution, sr_factor) of the model config.json describes: the face side it writes and,
    for a task that scales, how much smaller its input is (1 otherwise)."""
    data = config.get("data") or {}
    if "resolution" not in data:
        raise RestoreError(f"model at {directory} does not record its training resolution (config.json data.resolution)")
    return int(data["resolution"]), (int(data.get("sr_factor") or 1) if task.scales else 1)


def default_device() -> str:
    """cuda when this machine has a GPU torch can use, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_restorer(model_dir: str | Path, device: str | None = None, backend: str = "torch") -> Restorer:
    """The model in `model_dir` (a local folder or a store URI) on `device` (default: cuda when
    there is one; onnxruntime: cpu), run by `backend`; RestoreError naming the folder when it
    holds no model that restores photos, or no model.onnx for backend onnxruntime."""
    import torch

    from components.models.files import read_model_config

    directory = str(model_dir)
    if backend not in BACKENDS:
        raise RestoreError(f"--backend {backend}: use {' or '.join(BACKENDS)}")
    device = device or (default_device() if backend == "torch" else "cpu")
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise RestoreError(f"--device {device}: use cpu or cuda (cuda:N for one GPU of several)")
    if backend == "torch" and device.startswith("cuda") and not torch.cuda.is_available():
        raise RestoreError(f"--device {device}: torch sees no CUDA GPU on this machine (use --device cpu)")
    try:
        _, config = read_model_config(directory)
        task = task_named(config.get("task") or "")
    except FileNotFoundError as err:
        raise RestoreError(f"no model at {directory}: {err}") from None
    except ValueError as err:
        raise RestoreError(f"model at {directory}: config.json names no known task ({err})") from None
    if not task.restores_photos:
        raise RestoreError(f"model at {directory} is a '{config.get('method')}' ({task.name}): it does not restore photos")
    resolution, sr_factor = model_sizes(directory, config, task)
    model = _torch_model(directory, device) if backend == "torch" else _onnx_model(directory, config, device)
    return Restorer(model, resolution, sr_factor, device)


def _torch_model(directory: str, device: str) -> RestoringModel:
    from components.models.files import load_model_dir

    try:
        method = load_model_dir(directory)
    except FileNotFoundError as err:
        raise RestoreError(f"no model at {directory}: {err}") from None
    for network in method.nets.values():
        network.to(device).eval()
    return method


def _onnx_model(directory: str, config: dict[str, Any], device: str) -> OnnxRuntimeModel:
    from components import storage
    from components.models.files import ONNX

    path = storage.join(directory, ONNX)
    if not storage.exists(path):
        raise RestoreError(f"model at {directory} has no {ONNX}: run `facerestore export {directory} --format onnx` "
                           "(or pull it with --format onnx)")
    return OnnxRuntimeModel(storage.read_bytes(path), str(config.get("method")), str(config["task"]), device)
