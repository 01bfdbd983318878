"""ONNX Runtime against PyTorch on the CPU: images per second of every restoring model of the
recipes at its recipe's size, in one run, and what each model's ONNX export checked.

Every train stage of pipelines/configs/*.yaml whose method restores photos (baseline,
fusion_inpaint, cafin, contrastive_inpaint, ctcnet, and panini for blind restoration and SR) is
built untrained from its recipe's `method_config` (the speed does not depend on the weights), on
untrained upstream models built from their stages' configs likewise, and saved as a model
directory at its recipe's face size (`synthesize.resolution`, `super_resolution.factor`). Each is
exported (components/export/onnx.py: the row says whether the self-check passed, its largest
difference, the opset and model.onnx's size), then the same random crops go through
`Restorer.restore_crops`, what `facerestore restore` calls, with the torch backend and with the
onnxruntime one: IMAGES crops, batch 8 (restore's default), the median of PASSES timed passes
after one warm-up pass, both on this process's torch threads. `ratio` is ONNX Runtime's images
per second over PyTorch's.

`--quick`: 32 px faces (a GAN prior built at 32 px to match), 8 crops, one timed pass.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS = Path("pipelines/configs")
IMAGES, PASSES, BATCH = 32, 3, 8
QUICK_IMAGES, QUICK_PASSES, QUICK_SIZE = 8, 1, 32
PRIOR = "stylegan2"  # an upstream whose resolution is the face size (Panini restores at its prior's)


def run(quick: bool) -> list[dict]:
    rows = []
    for case in recipe_models(quick):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(bench_case(case, Path(tmp), quick))
    return rows


def recipe_models(quick: bool) -> list[dict[str, Any]]:
    """Each recipe train stage of a method that restores photos: its name, method, config, face
    size, SR factor and its upstream train stages' (method, config)."""
    from components.models import method_class
    from components.tasks import task_named
    from pipelines.config import load_config

    cases = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        stages = cfg.stages
        synthesize = next(s.config for s in stages.values() if s.kind == "synthesize")
        resolution = QUICK_SIZE if quick else synthesize.resolution
        sr_factor = synthesize.super_resolution.factor if synthesize.super_resolution else None
        for name, stage in stages.items():
            if stage.kind != "train":
                continue
            cls = method_class(stage.config.method)
            if not task_named(cls.task_for(cls.Config.model_validate(stage.config.method_config))).restores_photos:
                continue
            upstream = {need: (stages[need].config.method, sized(stages[need].config, resolution))
                        for need in stage.needs if stages[need].kind == "train"}
            cases.append({"model": f"{path.stem}/{name}", "method": stage.config.method,
                          "config": dict(stage.config.method_config), "resolution": resolution,
                          "sr_factor": sr_factor, "upstream": upstream})
    return cases


def sized(train_config: Any, resolution: int) -> dict[str, Any]:
    """An upstream stage's method config, a GAN prior's at the face size."""
    config = dict(train_config.method_config)
    if train_config.method == PRIOR:
        config["resolution"] = resolution
    return config


def bench_case(case: dict[str, Any], directory: Path, quick: bool) -> dict[str, Any]:
    from components.export.onnx import ExportError, export_onnx
    from components.restore import load_restorer

    model_dir = save_untrained(case, directory)
    row: dict[str, Any] = {"model": case["model"], "method": case["method"], "face_px": case["resolution"]}
    try:
        exported = export_onnx(model_dir)
    except ExportError as err:
        return {**row, "export": f"failed: {err}"}
    row |= {"export": "ok", "max_abs_diff": exported.max_abs_diff, "opset": exported.entry["opset"],
            "onnx_MB": exported.file_bytes / 1e6}
    speeds = {}
    for backend in ("torch", "onnxruntime"):
        restorer = load_restorer(model_dir, "cpu", backend)
        crops, holes = random_crops(restorer, QUICK_IMAGES if quick else IMAGES)
        speeds[backend] = images_per_second(restorer, crops, holes, QUICK_PASSES if quick else PASSES)
    return {**row, "input_px": restorer.input_side, "torch_images_per_s": speeds["torch"],
            "onnxruntime_images_per_s": speeds["onnxruntime"], "ratio": speeds["onnxruntime"] / speeds["torch"]}


def save_untrained(case: dict[str, Any], directory: Path) -> str:
    """The case's method, untrained, on untrained upstream models, as a model directory."""
    import torch

    from components.models import build_method
    from components.models.files import save_model_dir

    torch.manual_seed(0)
    upstream = {}
    for stage, (method, config) in case["upstream"].items():
        save_model_dir(str(directory / stage), *build_method(method, config).export())
        upstream[stage] = str(directory / stage)
    state, config = build_method(case["method"], case["config"], upstream).export()
    save_model_dir(str(directory / "model"), state,
                   {**config, "data": {"resolution": case["resolution"], "sr_factor": case["sr_factor"]}})
    return str(directory / "model")


def random_crops(restorer: Any, count: int) -> tuple[list, list | None]:
    """`count` uint8 RGB crops at the model's input side, and block holes for a model that takes them."""
    import numpy as np

    rng = np.random.default_rng(0)
    side = restorer.input_side
    crops = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]
    if not restorer.task.needs_mask:
        return crops, None
    block = max(1, side // 8)
    coarse = [rng.random((-(-side // block),) * 2) > 0.7 for _ in range(count)]
    return crops, [np.kron(c, np.ones((block, block)))[:side, :side].astype(np.uint8) for c in coarse]


def images_per_second(restorer: Any, crops: list, holes: list | None, passes: int) -> float:
    restorer.restore_crops(crops[:BATCH], holes[:BATCH] if holes else None, BATCH)  # warm-up: allocation, lazy init
    seconds = []
    for _ in range(passes):
        started = time.perf_counter()
        restorer.restore_crops(crops, holes, BATCH)
        seconds.append(time.perf_counter() - started)
    return len(crops) / statistics.median(seconds)
