"""`facerestore restore`: photos in, GFPGAN's output layout and restore_report.csv out, here or on a Ray cluster.

Here (`restore_here`): one process, the model loaded once, faces batched (photos.py).
On a cluster (`restore_on_cluster`), chosen by the command when given an address (or
RAY_ADDRESS) or an input in a store (`s3://...`): the photos' URIs become a Ray Dataset, and
`map_batches` sends them to a pool of actors, each holding one loaded model and detector
(and a GPU, when the cluster has GPUs), which read, restore and write their photos
themselves; only the report rows come back. Both skip photos whose restored image exists,
and both end by writing the report of every input. `backend` picks what runs the network,
here and in every actor: torch, or onnxruntime with the model's model.onnx (model.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from components.restore.model import Restorer, RestoreError, load_restorer
from components.restore.outputs import REPORT_COLUMNS, OutputFolder, Photo, ReportRow, find_photos
from components.restore.photos import PhotoMasks, PhotoRestorer, RestoreOptions, require_mask

PHOTOS_PER_TASK = 8  # photos an actor gets at a time, at most: enough to batch faces, fewer when few photos


@dataclass
class RestoreSummary:
    rows: list[ReportRow]
    report: str  # restore_report.csv's URI

    @property
    def failed(self) -> list[ReportRow]:
        return [row for row in self.rows if row.status in ("failed", "missing")]

    def count(self, status: str) -> int:
        return sum(row.status == status for row in self.rows)


def restore_here(model_dir: str, inputs: Sequence[str], out: str, options: RestoreOptions = RestoreOptions(),
                 mask: str | None = None, device: str | None = None, backend: str = "torch",
                 on_row: Callable[[ReportRow], None] = lambda row: None) -> RestoreSummary:
    """Restore in this process; `on_row` hears of each photo as it is done."""
    restorer = load_restorer(model_dir, device, backend)
    photos, rows = _plan(inputs, restorer, mask)
    folder, todo, rows = _skip_done(out, photos, rows)
    holes = _read_mask(mask, restorer)
    by_source = {photo.source: photo for photo in todo}
    for source, result in PhotoRestorer(restorer, options).restore([p.source for p in todo], holes):
        row = folder.write(by_source[source], result)
        rows.append(row)
        on_row(row)
    ordered = _in_input_order(rows, photos)
    return RestoreSummary(ordered, folder.write_report(ordered))


def restore_on_cluster(model_dir: str, inputs: Sequence[str], out: str, options: RestoreOptions = RestoreOptions(),
                       mask: str | None = None, device: str | None = None, actors: int | None = None,
                       backend: str = "torch", on_row: Callable[[ReportRow], None] = lambda row: None) -> RestoreSummary:
    """Restore on the Ray cluster this process is connected to (ray.init first); `model_dir`,
    the inputs, the mask and `out` must be reachable from every node (a store URI, or a path on
    a shared file system, or one machine). `on_row` hears of each photo as its row arrives."""
    import ray

    restorer = load_restorer(model_dir, "cpu", backend)  # checked here, so a bad model fails before any actor starts
    photos, rows = _plan(inputs, restorer, mask)
    folder, todo, rows = _skip_done(out, photos, rows)
    if todo:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        device = device or ("cuda" if gpus and backend == "torch" else "cpu")  # onnxruntime: its CPU provider unless told
        if device.startswith("cuda") and not gpus:
            raise RestoreError(f"--device {device}: the Ray cluster has no GPU")
        pool = actors or (gpus if device.startswith("cuda") else max(1, int(ray.cluster_resources().get("CPU", 1)) // 2))
        per_task = max(1, min(PHOTOS_PER_TASK, -(-len(todo) // (2 * pool))))  # every actor gets work
        dataset = ray.data.from_items([{"source": p.source, "name": p.name} for p in todo],
                                      override_num_blocks=-(-len(todo) // per_task))
        done = dataset.map_batches(
            _RestoreActor, fn_constructor_kwargs={"model_dir": model_dir, "out": out, "options": options,
                                                  "mask": mask, "device": device, "backend": backend},
            batch_size=per_task, batch_format="numpy", concurrency=min(pool, len(todo)),
            num_gpus=1 if device.startswith("cuda") else 0, num_cpus=1)
        for record in done.iter_rows():
            rows.append(ReportRow(**{key: record[key] for key in REPORT_COLUMNS}))
            on_row(rows[-1])
    ordered = _in_input_order(rows, photos)
    return RestoreSummary(ordered, folder.write_report(ordered))


class _RestoreActor:
    """One loaded model and detector; restores the photos of each batch and writes their outputs."""

    def __init__(self, model_dir: str, out: str, options: RestoreOptions, mask: str | None, device: str,
                 backend: str = "torch"):
        _use_only_assigned_cpus()
        restorer = load_restorer(model_dir, device, backend)
        self.photos = PhotoRestorer(restorer, options)
        self.folder = OutputFolder(out)
        self.holes = _read_mask(mask, restorer)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        todo = {str(source): Photo(str(source), str(name)) for source, name in zip(batch["source"], batch["name"], strict=True)}
        rows = [self.folder.write(todo[source], result) for source, result in self.photos.restore(list(todo), self.holes)]
        return {key: [getattr(row, key) for row in rows] for key in REPORT_COLUMNS}


def _use_only_assigned_cpus() -> None:
    """torch and OpenCV threads to the actor's CPUs: OpenCV would otherwise spread its warps and
    PNG writing over every core of the node, and actors sharing a node would fight over them."""
    import cv2
    import ray
    import torch

    cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(cpus)
    cv2.setNumThreads(cpus)


def _plan(inputs: Sequence[str], restorer: Restorer, mask: str | None) -> tuple[list[Photo], list[ReportRow]]:
    require_mask(restorer, mask)  # before any actor starts
    return find_photos(inputs)


def _skip_done(out: str, photos: list[Photo], rows: list[ReportRow]) -> tuple[OutputFolder, list[Photo], list[ReportRow]]:
    folder = OutputFolder(out)
    done = folder.done(photos)
    rows = rows + [ReportRow(p.source, "already restored", output=folder.restored_image(p),
                             reason="its restored image exists: delete it to restore again") for p in photos if p.name in done]
    return folder, [p for p in photos if p.name not in done], rows


def _read_mask(mask: str | None, restorer: Restorer) -> PhotoMasks | None:
    """The photos' holes from `--mask` (a mask image, or a folder of one per photo), for a model that takes them."""
    if mask is None or not restorer.task.needs_mask:
        return None
    return PhotoMasks(mask)


def _in_input_order(rows: list[ReportRow], photos: list[Photo]) -> list[ReportRow]:
    order = {photo.source: k for k, photo in enumerate(photos)}
    return sorted(rows, key=lambda row: order.get(row.input, -1))
