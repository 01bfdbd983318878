"""Seconds per training step of each method at its paper's size, against the baseline U-Net.

Each method is built at its paper-default config (the widths its docstring cites) and takes
`training_step` on a batch of procedural faces, exactly what the training loop calls; the
plain baseline is the project's U-Net restorer (`baseline`, width 32, depth 3) on the same
batch in the same run, so the ratio says what a paper's network costs over a small restorer
on this machine. Median of the timed steps after one warm-up step. On a GPU (where one is
present) the same steps run under bf16 autocast and the row reports images per second.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

# method -> (HR resolution, extra config, the upstream methods it is built on)
PAPER_SIZES: dict[str, tuple[int, dict[str, Any], tuple[str, ...]]] = {
    "edge_gan": (256, {}, ()),
    "fusion_inpaint": (256, {}, ("edge_gan",)),
    "cafin": (256, {}, ()),
    "contrastive_inpaint": (256, {}, ()),
    "ctcnet": (128, {"scale": 8}, ()),
    "dre": (256, {}, ()),
    "stylegan2": (256, {"resolution": 256}, ()),
    "panini": (256, {}, ("dre", "stylegan2")),
}
BATCH = 2
UPSTREAM_CONFIG = {"stylegan2": {"resolution": 256}}


def run(quick: bool) -> list[dict]:
    import torch

    steps = 2 if quick else 4
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, baseline_cache = [], {}
    for name, (resolution, extra, needs) in PAPER_SIZES.items():
        size = 64 if quick else resolution
        if name == "stylegan2":
            extra = {**extra, "resolution": size}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                upstream = {need: build_upstream(need, size, Path(tmp)) for need in needs}
                method = make(name, extra, upstream)
            except (ImportError, KeyError) as err:  # a method not in this checkout yet
                rows.append({"method": name, "note": f"not available: {err}"})
                continue
            batch = face_batch(method, size, extra.get("scale", 8))
            seconds = time_steps(method, batch, steps, device)
        if size not in baseline_cache:
            base = make("baseline", {}, {})
            baseline_cache[size] = time_steps(base, face_batch(base, size, 8), steps, device)
        rows.append({"method": name, "resolution": size, "batch": BATCH, "device": device.type,
                     "parameters_M": sum(p.numel() for net in method.networks().values()
                                         for p in net.parameters()) / 1e6,
                     "s_per_step": seconds, "baseline_s_per_step": baseline_cache[size],
                     "ratio": seconds / baseline_cache[size]})
        if device.type == "cuda":
            rows[-1]["images_per_s_bf16"] = BATCH / seconds
    if device.type != "cuda":
        rows.append({"method": "all", "note": "no GPU here: bf16 images per second not measured"})
    return rows


def make(name: str, extra: dict, upstream: dict) -> Any:
    from components.models import build_method

    return build_method(name, extra, upstream)


def build_upstream(name: str, size: int, directory: Path) -> str:
    """An untrained upstream model at the paper's widths, saved as a stage would save it."""
    from components.models.files import save_model_dir

    extra = {**UPSTREAM_CONFIG.get(name, {})}
    if name == "stylegan2":
        extra["resolution"] = size
    state, config = make(name, extra, {}).export()
    save_model_dir(str(directory / name), state, config)
    return str(directory / name)


def face_batch(method: Any, size: int, scale: int) -> dict:
    import torch

    from components.data.decode import table_to_arrays
    from components.data.samples import SampleConfig, make_procedural_rows

    columns = list(method.columns(method.cfg))
    sr = {"super_resolution": {"factor": scale}} if "lr" in columns else {}
    table = make_procedural_rows(range(BATCH), 0, SampleConfig(resolution=size, **sr))
    batch = {k: torch.from_numpy(v) for k, v in table_to_arrays(table, columns).items()}
    if getattr(method, "unpaired", ()):
        batch.update({f"unpaired_{c}": batch[c].roll(1, 0) for c in method.unpaired})
    return batch


def time_steps(method: Any, batch: dict, steps: int, device) -> float:
    import torch

    for net in method.networks().values():
        net.to(device)
    batch = {k: v.to(device) for k, v in batch.items()}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
    times = []
    for step in range(1, steps + 2):
        started = time.perf_counter()
        with autocast:
            method.training_step(dict(batch), step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step > 1:  # the first step pays for allocation and lazy initialisation
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def _null():
    import contextlib

    return contextlib.nullcontext()
