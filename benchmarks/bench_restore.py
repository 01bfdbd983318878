"""Photos per second of `facerestore restore` on a folder of photos of 1-3 faces, in one run:
batched faces against one face at a time, Ray Data with 2 actors against 1, and where the time goes.

Photos: scikit-image's astronaut (a real photo), its head cut at HEAD px and tiled 1, 2 or 3
times side by side, PHOTOS of them (2 faces a photo on average), PNG in a folder. Model: the
blind recipe's size of a restorer, the baseline U-Net (width 32, depth 3) at RESOLUTION px,
randomly initialised (speed does not depend on the weights). Everything on the CPU, as this
machine has no GPU; on a machine with one the bf16 row is added (`--device cuda`).

Rows (each a fresh output folder, so nothing is skipped):
- here, batch 8 / here, batch 1: `restore_here` in this process with `batch_size` 8 and 1;
  photos/s over the whole call (model and detector loading included: what a user waits for).
  "network s" is the time in `Restorer.restore_crops` (tensors in, the forward passes, uint8
  out); "network share" its part of the
  call; "detect+align+paste s" is the rest of the photo work (detection, the warps, blending;
  reading and writing PNGs included), and "vs network" that rest over the network's time.
- ray, 1 actor / ray, 2 actors: `restore_on_cluster` on a local Ray of 2 CPUs, one CPU (one
  torch thread) per actor. "start-up s" is a run of one photo: the actors' start (importing
  torch, loading the model and detector) and Ray Data's planning. photos/s is at steady
  state: (photos - 1) / (the folder's run - the one-photo run). Target: 2 actors at least
  1.8x of 1.
- large photo: one photo of MEGAPIXELS megapixels (JPEG, the astronaut's head in the middle of
  a grey canvas) restored in a fresh process; "peak MiB over model" is the process's peak
  resident memory over what it held once the model, the detector and the libraries were
  loaded (target: about 2 GB, the photo's own pixels being 143 MiB).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

RESOLUTION, HEAD, PHOTOS = 128, 256, 96
QUICK_PHOTOS = 6
MEGAPIXELS, QUICK_MEGAPIXELS = 50, 4  # the large photo's size
TARGET = 1.8


def run(quick: bool) -> list[dict]:
    from benchmarks.__main__ import RESULTS

    root = RESULTS / ("restore-quick" if quick else "restore")
    shutil.rmtree(root, ignore_errors=True)
    photos = write_photos(root / "photos", QUICK_PHOTOS if quick else PHOTOS)
    model = write_model(root / "model")
    rows = [here(model, photos, root / "out-batched", 8), here(model, photos, root / "out-single", 1)]
    rows[1]["vs batch 8"] = rows[1]["photos/s"] / rows[0]["photos/s"]
    import torch

    if torch.cuda.is_available():
        rows.append(here(model, photos, root / "out-cuda", 8, device="cuda"))
    rows += on_ray(model, photos, root)
    rows.append(large_photo(model, root, QUICK_MEGAPIXELS if quick else MEGAPIXELS))
    return rows


def write_photos(folder: Path, count: int) -> Path:
    import cv2
    import numpy as np
    from skimage import data

    from components.data.schema import encode_png

    folder.mkdir(parents=True)
    head = cv2.resize(data.astronaut()[20:320, 90:390], (HEAD, HEAD), interpolation=cv2.INTER_AREA)
    for k in range(count):
        (folder / f"photo_{k:03d}.png").write_bytes(encode_png(np.concatenate([head] * (1 + k % 3), axis=1)))
    return folder


def write_model(directory: Path) -> Path:
    import torch

    from components.models import build_method
    from components.models.files import save_model_dir

    torch.manual_seed(0)
    state, config = build_method("baseline", {"width": 32, "depth": 3}).export()
    save_model_dir(str(directory), state, {**config, "data": {"resolution": RESOLUTION, "sr_factor": None}})
    return directory


def here(model: Path, photos: Path, out: Path, batch_size: int, device: str = "cpu") -> dict:
    from components.restore import RestoreOptions, Restorer, restore_here

    network = {"s": 0.0}
    restore_crops = Restorer.restore_crops

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        restored = restore_crops(self, *args, **kwargs)  # ends on the CPU: a GPU has finished
        network["s"] += time.perf_counter() - started
        return restored

    Restorer.restore_crops = timed
    try:
        started = time.perf_counter()
        summary = restore_here(str(model), [str(photos)], str(out), RestoreOptions(batch_size=batch_size), device=device)
        seconds = time.perf_counter() - started
    finally:
        Restorer.restore_crops = restore_crops
    count, faces = summary.count("restored"), sum(row.faces for row in summary.rows)
    rest = seconds - network["s"]
    return {"case": f"here, batch {batch_size}" + (" (cuda bf16)" if device == "cuda" else ""), "photos": count,
            "faces": faces, "seconds": seconds, "photos/s": count / seconds, "network s": network["s"],
            "network share": network["s"] / seconds, "detect+align+paste s": rest, "vs network": rest / network["s"]}


def on_ray(model: Path, photos: Path, root: Path) -> list[dict]:
    import ray

    from components.restore import restore_on_cluster

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config={"worker_niceness": 0})
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    rows = []
    try:
        # untimed: Ray Data's first plan and the workers' first imports, which neither pool size should pay
        restore_on_cluster(str(model), [str(next(photos.iterdir()))], str(root / "out-ray-warm-up"), actors=1)
        for actors in (1, 2):
            def timed(inputs: list[str], out: str) -> tuple[float, object]:
                started = time.perf_counter()
                summary = restore_on_cluster(str(model), inputs, out, actors=actors)
                return time.perf_counter() - started, summary

            one, _ = timed([str(next(photos.iterdir()))], str(root / f"out-ray-{actors}-one"))
            seconds, summary = timed([str(photos)], str(root / f"out-ray-{actors}"))
            count = summary.count("restored")
            rows.append({"case": f"ray, {actors} actor{'s' if actors > 1 else ''}", "photos": count,
                         "faces": sum(row.faces for row in summary.rows), "seconds": seconds,
                         "photos/s": (count - 1) / (seconds - one), "start-up s": one})
    finally:
        ray.shutdown()
    rows[1]["vs 1 actor"] = rows[1]["photos/s"] / rows[0]["photos/s"]
    rows[1]["target"] = f">= {TARGET}"
    return rows


def large_photo(model: Path, root: Path, megapixels: float) -> dict:
    import subprocess
    import sys

    import cv2
    import numpy as np
    from skimage import data

    height = int((megapixels * 1e6 * 2 / 3) ** 0.5)
    width = int(height * 1.5)
    canvas = np.full((height, width, 3), 128, np.uint8)
    head = cv2.resize(data.astronaut()[20:320, 90:390], (600, 600), interpolation=cv2.INTER_AREA)
    canvas[height // 2 - 300:height // 2 + 300, width // 2 - 300:width // 2 + 300] = head
    path = root / "large.jpg"
    path.write_bytes(cv2.imencode(".jpg", canvas[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_restore", str(model), str(path), str(root / "out-large")],
                          capture_output=True, text=True, check=True)
    loaded_mb, peak_mb, seconds, faces = (float(v) for v in done.stdout.split()[-4:])
    return {"case": f"large photo {width}x{height}", "photos": 1, "faces": int(faces), "seconds": seconds,
            "peak MiB over model": peak_mb - loaded_mb, "photo MiB": width * height * 3 / 2**20}


def _restore_one_measured(model: str, photo: str, out: str) -> None:
    """In a fresh process: the model and detector loaded, then one photo restored; prints the
    resident MiB once loaded, the peak MiB, the seconds and the faces."""
    import resource

    from components.restore import PhotoRestorer, RestoreOptions, load_restorer
    from components.restore.outputs import OutputFolder, Photo

    photos = PhotoRestorer(load_restorer(model, "cpu"), RestoreOptions())
    photos.detector.detect([__import__("numpy").zeros((64, 64, 3), "uint8")])  # first-call set-up
    loaded = _resident_mb()
    started = time.perf_counter()
    [(_, result)] = photos.restore([photo])
    OutputFolder(out).write(Photo(photo, "large"), result)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: MiB
    print(loaded, peak, seconds, len(result.faces))


def _resident_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


if __name__ == "__main__":
    import sys

    _restore_one_measured(*sys.argv[1:4])
