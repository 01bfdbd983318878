"""The tasks, one object each: what a method of the task is fed in training, evaluation and
inference, its classical baselines, its scores and breakdown, whether the learned metrics apply.

- restoration: trains on `hq`, `lq` (+ `mask`, `degradation` as a method declares); evaluated
  on `lq` + `mask` against the untouched input with its holes mean-filled ("input"), split by
  degradation level; restores a photo as `lq` with an all-zero mask.
- inpainting: trains on `hq` + `mask` (+ `edge`); evaluated on the clean `hq` with the holes of
  `mask` as its photo (`lq = hq`: the holes are the only damage, the papers' protocol) against
  mean-fill, OpenCV Telea and Navier-Stokes, by PSNR, SSIM, L1 on the whole image and PSNR, L1
  inside the holes (`psnr_hole`, `l1_hole`: the whole-image figures are inflated by the known
  pixels every method keeps), split by mask bucket; restores a photo and its holes, keeping
  every known pixel.
- super_resolution: trains on `hq` + `lr`; evaluated on `lr` against bicubic, split by SR
  factor; restores a photo as `lr` into an image `sr_factor` times larger.
- edges: trains on `hq`, `mask`, `edge`; evaluated on the photo with holes by edge precision /
  recall / F1 inside the holes against the Canny edges of `hq`; no baseline, no learned
  metrics (edge maps are not faces); `facerestore restore` does not take it.
- representation, prior: upstream models (the DRE, the StyleGAN2 prior) trained on `hq`; not
  scored, not restored.
Each image task also names the scoring protocol its papers report by (`paper_protocol`,
components/metrics/protocols.py): inpainting EdgeConnect's, super_resolution CTCNet's,
restoration Panini-Net's; `paper_protocol_of(method)` prefers a method's own (Panini's x16 SR).
Metrics are on RGB in [0, 1] (components/metrics/image_quality.py states the conventions).
Adding a task is one more `Task` here (docs/architecture.md, "Tasks").
"""

from __future__ import annotations

from components import baselines
from components.metrics.scoring import edge_map_scores, image_scores, inpainting_scores
from components.models.base import Method, MethodConfig
from components.tasks.base import Batch, Scoring, Task

__all__ = ["EDGES", "INPAINTING", "PRIOR", "REPRESENTATION", "RESTORATION", "SUPER_RESOLUTION", "TASKS",
           "Scoring", "Task", "paper_protocol_of", "task_named", "task_of", "training_columns"]


def _sr_factor(data: Batch) -> int:
    factor = data["hq"].shape[-1] // data["lr"].shape[-1]
    if data["lr"].shape[-1] * factor != data["hq"].shape[-1]:
        raise ValueError(f"lr width {data['lr'].shape[-1]} does not divide hq width {data['hq'].shape[-1]}")
    return factor


RESTORATION = Task(
    name="restoration",
    train_columns=("hq", "lq"), optional_columns=("mask", "degradation"),
    image_input="lq", mask="zeros", restores_photos=True, selected_by="psnr", paper_protocol="panini",
    scoring=Scoring(
        breakdown="degradation_level",
        columns=("hq", "lq", "mask"),
        method_batch=lambda data: {"lq": data["lq"], "mask": data["mask"]},
        target=lambda data: data["hq"],
        score=image_scores,
        baselines={"input": lambda data: baselines.mean_fill(data["lq"], data["mask"])},
    ),
)

INPAINTING = Task(
    name="inpainting",
    train_columns=("hq", "mask"), optional_columns=("edge",),
    image_input="lq", mask="holes", keeps_known=True, restores_photos=True, selected_by="psnr_hole",
    paper_protocol="edgeconnect",  # the inpainting papers here build on EdgeConnect (docs/methods.md)
    scoring=Scoring(
        breakdown="mask_bucket",
        columns=("hq", "mask"),
        method_batch=lambda data: {"lq": data["hq"], "mask": data["mask"]},
        target=lambda data: data["hq"],
        score=inpainting_scores,
        baselines={
            "mean_fill": lambda data: baselines.mean_fill(data["hq"], data["mask"]),
            "telea": lambda data: baselines.telea(data["hq"], data["mask"]),
            "navier_stokes": lambda data: baselines.navier_stokes(data["hq"], data["mask"]),
        },
    ),
)

SUPER_RESOLUTION = Task(
    name="super_resolution",
    train_columns=("hq", "lr"),
    image_input="lr", mask="none", scales=True, restores_photos=True, selected_by="psnr", paper_protocol="ctcnet",
    scoring=Scoring(
        breakdown="sr_factor",
        columns=("hq", "lr"),
        method_batch=lambda data: {"lr": data["lr"]},
        target=lambda data: data["hq"],
        score=image_scores,
        baselines={"bicubic": lambda data: baselines.bicubic(data["lr"], _sr_factor(data))},
    ),
)

EDGES = Task(
    name="edges",
    train_columns=("hq", "mask", "edge"),
    image_input="lq", mask="holes", selected_by="f1",
    scoring=Scoring(
        breakdown="mask_bucket",
        columns=("hq", "mask", "edge"),
        method_batch=lambda data: {"lq": data["hq"], "mask": data["mask"]},
        target=lambda data: data["edge"],
        score=edge_map_scores,
        learned_metrics=False,  # LPIPS / FID / identity judge face images, not edge maps
    ),
)

# Not scored as images; a representation model validates itself (the DRE's k-NN accuracy).
REPRESENTATION = Task(name="representation", train_columns=("hq",), selected_by="knn_accuracy")
PRIOR = Task(name="prior", train_columns=("hq",))

TASKS: dict[str, Task] = {task.name: task for task in
                          (RESTORATION, INPAINTING, SUPER_RESOLUTION, EDGES, REPRESENTATION, PRIOR)}


def task_named(name: str) -> Task:
    """The task called `name` (what `Method.task` and config.json's "task" hold)."""
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}' (known: {', '.join(TASKS)})")
    return TASKS[name]


def task_of(method: Method) -> Task:
    """The task of a built or loaded method."""
    return task_named(method.task)


def paper_protocol_of(method: Method) -> str | None:
    """The scoring protocol of a method's paper: its own `paper_protocol`, else its task's."""
    return method.paper_protocol or task_of(method).paper_protocol


def training_columns(method: type[Method], cfg: MethodConfig) -> tuple[str, ...]:
    """The shard columns a method class trains on with `cfg`, checked against its task."""
    return task_named(method.task_for(cfg)).training_columns(method, cfg)
