"""Test quality of every learned method of the inpaint, masked-face, SR and blind recipes at one
bench budget, against its task's classical baselines, in one run per recipe.

Each recipe (pipelines/configs/<recipe>.yaml, at its CPU size: 64 px procedural faces) runs
through the pipeline runner into a fresh store, `.facerestore/bench/quality/<recipe>`, with
only the bench's overrides (`OVERRIDES`: steps, validation, schedule, `select: best`); no
method code or recipe setting changes. Every train stage gets the steps in `STEPS` (chosen
from each method's measured seconds per step so that none trains for more than 10 minutes on
a 2-core machine, docs/methods.md, "The quality bench"), validation every `steps / 15` steps
on the first `VAL_IMAGES` val samples, a cosine schedule after a short warm-up, and exports
its best validation's weights by its task's score (in-hole PSNR for inpainting, PSNR else).
The train stages run one at a time (Ray gets 3 logical CPUs: a stage's 2 workers take 2,
Ray Data's decoding the third, so no second stage fits), and each stage's minutes are its own.

Rows: each model and baseline's test PSNR (and in-hole PSNR for inpainting) from the
evaluate stage; per learned method its steps and minutes and whether it beats every
classical baseline of its task on the test split (in-hole PSNR for inpainting, PSNR for SR
and blind restoration). quality.png (beside the JSON): per recipe a panel of the val score
against the step of every scored method, each classical baseline's score on the same val
slice as a horizontal line. Each recipe's result is also kept in
`.facerestore/bench/quality/<recipe>.json` (`quality-quick/` for --quick); quality.png draws
every recipe kept there, so recipes run one at a time still end in one figure.

`--recipe NAME` runs one recipe. `--quick` checks the harness, not the quality: 10 steps a
stage on 160 faces, the face_sr recipe unless --recipe names another.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

RECIPES = ("inpaint", "masked_face", "face_sr", "blind")
CONFIGS = Path("pipelines/configs")
VAL_IMAGES = 32          # the train stage's default: the val slice validation scores
VAL_POINTS = 15          # validations per train stage
WARMUP_FRACTION = 0.05   # of the steps: the cosine schedule's linear warm-up
# Steps per train stage at the bench budget: at most 10 minutes a stage on a 2-core machine
# (the recipes' CPU size, batch 8, 2 workers). inpaint: measured at 40 steps, 0.39 s a step for
# the edge GAN and 0.81 / 0.84 s for fusion_inpaint / CAFIN (the machine shared, load 7-20),
# plus about 40 s of Ray Train start-up and validation a stage; the full run took 1.9 / 7.1 /
# 8.8 minutes. The other recipes: the same 600 steps a method (the recipes' own 200-300 for
# the upstream DRE and prior), not yet measured on this machine (docs/methods.md, "The
# quality bench").
STEPS: dict[str, dict[str, int]] = {
    # idle machine: CAFIN 1500 steps in 7.2 min; fusion_inpaint 600 in 3.1 min (so 1500 fit the budget)
    "inpaint": {"train_edge": 300, "train_fusion_inpaint": 1500, "train_cafin": 1500},
    "masked_face": {"train_contrastive_inpaint": 600},
    "face_sr": {"train_ctcnet": 600},
    "blind": {"pretrain_dre": 200, "train_prior": 300, "train_panini": 600, "train_panini_sr": 600},
}
# The bench's own settings beyond steps, per recipe: (stage glob, key) -> value, applied after
# the common ones. Chosen on the val split only.
OVERRIDES: dict[str, dict[str, Any]] = {
    "inpaint": {},
    "masked_face": {},
    "face_sr": {},
    "blind": {},
}
# --quick: 10 steps a stage on 160 faces, of the one-train-stage SR recipe unless --recipe says
QUICK_STEPS, QUICK_FACES, QUICK_RECIPES = 10, 160, ("face_sr",)
# Stages whose method scores no val images (a GAN prior): no validation, the last weights
UNVALIDATED = ("stylegan2",)
# The score each task's panel and verdict use
METRIC = {"inpainting": "psnr_hole", "super_resolution": "psnr", "restoration": "psnr"}


def run(quick: bool, recipe: str | None = None) -> list[dict]:
    from benchmarks.__main__ import RESULTS

    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"unknown recipe '{recipe}' (quality runs {', '.join(RECIPES)})")
    kept = RESULTS / ("quality-quick" if quick else "quality")
    rows: list[dict] = []
    for name in [recipe] if recipe else QUICK_RECIPES if quick else RECIPES:
        result = bench_recipe(name, quick, kept / name)
        (kept / f"{name}.json").write_text(json.dumps(result, indent=2))
        rows += result["rows"]
    plot(kept_results(kept), RESULTS / "quality.png")
    return rows


def stage_steps(recipe: str, quick: bool) -> dict[str, int]:
    return {stage: QUICK_STEPS if quick else steps for stage, steps in STEPS[recipe].items()}


def overrides(recipe: str, quick: bool, store: Path, steps: dict[str, int] | None = None,
              extra: dict[str, Any] | None = None) -> list[str]:
    """The bench's --set overrides of a recipe: store, one-at-a-time training, steps, validation,
    schedule, selection; `steps` / `extra` replace the bench's (for ablations on the val split)."""
    from pipelines.config import load_config

    cfg = load_config(CONFIGS / f"{recipe}.yaml")
    steps = steps or stage_steps(recipe, quick)
    settings: dict[str, Any] = {"store": str(store), "ray.num_cpus": 3}
    if quick:
        settings.update({"synthesize.source.count": QUICK_FACES, "synthesize.shard_size": QUICK_FACES // 2})
    for stage, n in steps.items():
        method = cfg.stages[stage].config.method
        settings[f"{stage}.steps"] = n
        settings[f"{stage}.checkpoint_every"] = n  # one checkpoint, at the end: resumable, not timed
        settings[f"{stage}.schedule"] = {"kind": "cosine", "warmup_steps": max(1, round(WARMUP_FRACTION * n))}
        if method not in UNVALIDATED:
            settings[f"{stage}.val_every"] = max(1, n // VAL_POINTS)
            settings[f"{stage}.val_images"] = VAL_IMAGES
            settings[f"{stage}.select"] = "best"
    settings.update(OVERRIDES[recipe])
    settings.update(extra or {})
    return [f"{key}={json.dumps(value)}" for key, value in settings.items()]


def start_ray() -> None:
    """A local Ray of 3 logical CPUs (see the module's docstring), its workers at this process's niceness (Ray's default, 15,
    would time whatever else this machine runs); the runner joins it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, _system_config={"worker_niceness": 0})


def run_recipe(recipe: str, store: Path, settings: list[str], fresh: bool = True) -> tuple[dict, Any]:
    """The recipe run by the pipeline runner into `store` (emptied first when `fresh`)."""
    from rich.console import Console

    from pipelines.config import load_config
    from pipelines.runner import Runner

    if fresh and store.exists():
        shutil.rmtree(store)
    store.mkdir(parents=True, exist_ok=True)
    start_ray()
    cfg = load_config(CONFIGS / f"{recipe}.yaml", settings)
    record = Runner(cfg, console=Console(file=io.StringIO())).run()
    return record, cfg


def bench_recipe(recipe: str, quick: bool, store: Path) -> dict[str, Any]:
    record, cfg = run_recipe(recipe, store, overrides(recipe, quick, store))
    return summarize(recipe, quick, record, cfg)


def summarize(recipe: str, quick: bool, record: dict, cfg: Any) -> dict[str, Any]:
    """Rows, val curves and val-slice baselines of one finished recipe run."""
    from components.tasks import task_named
    from pipelines.stages.inputs import shard_uris
    from pipelines.store import Store

    store = Store(cfg.store)
    stages = record["stages"]
    test = stages["evaluate"]["metrics"]
    shards = store.artifact("synthesize", stages["synthesize"]["fingerprint"])
    methods: dict[str, dict[str, Any]] = {}
    for name, spec in cfg.stages.items():
        if spec.kind != "train":
            continue
        artifact = store.artifact(name, stages[name]["fingerprint"])
        details = artifact.manifest["details"]
        training = details.get("training", {})
        methods[name] = {"method": spec.config.method, "task": details["task"], "steps": spec.config.steps,
                         "minutes": stages[name]["duration_s"] / 60 if "duration_s" in stages[name] else None, "selected_step": training.get("step"),
                         "val_history": details.get("val_history", [])}
    tasks = sorted({m["task"] for m in methods.values() if m["task"] in METRIC})
    val_baselines = {task: val_slice_baselines(task_named(task), shard_uris(shards)) for task in tasks}
    rows = []
    for task in tasks:
        metric, baselines = METRIC[task], sorted(task_named(task).scoring.baselines)
        for baseline in baselines:
            rows.append({"recipe": recipe, "task": task, "name": baseline, "kind": "baseline",
                         **test_scores(test, baseline, task), f"val_{metric}": val_baselines[task][baseline][metric]})
        for name, m in methods.items():
            if m["task"] != task:
                continue
            ours = test[f"{name}/{metric}"]
            rows.append({"recipe": recipe, "task": task, "name": name, "kind": m["method"], **test_scores(test, name, task),
                         f"val_{metric}": best_val(m["val_history"], metric), "steps": m["steps"],
                         "selected_step": m["selected_step"], "minutes": m["minutes"],
                         "beats_baselines": all(ours > test[f"{b}/{metric}"] for b in baselines),
                         "margin_db": ours - max(test[f"{b}/{metric}"] for b in baselines)})
    for name, m in methods.items():  # the upstream stages: their budget, no verdict
        if m["task"] not in METRIC:
            rows.append({"recipe": recipe, "task": m["task"], "name": name, "kind": m["method"], "steps": m["steps"],
                         "minutes": m["minutes"]})
    return {"recipe": recipe, "quick": quick, "finished_at": time.time(), "rows": rows,
            "curves": {name: {"task": m["task"], "metric": METRIC[m["task"]],
                              "points": [(h["step"], h[METRIC[m["task"]]]) for h in m["val_history"]
                                         if METRIC[m["task"]] in h]}
                       for name, m in methods.items() if m["task"] in METRIC},
            "val_baselines": val_baselines}


def test_scores(test: dict[str, float], name: str, task: str) -> dict[str, float]:
    keys = ("psnr", "psnr_hole") if task == "inpainting" else ("psnr",)
    return {f"test_{key}": test[f"{name}/{key}"] for key in keys}


def best_val(history: list[dict], metric: str) -> float | None:
    values = [h[metric] for h in history if h.get(metric) == h.get(metric) and metric in h]
    return max(values) if values else None


def val_slice_baselines(task: Any, uris: list[str]) -> dict[str, dict[str, float]]:
    """Each classical baseline of `task` scored on the val slice validation scores."""
    from components.metrics.scoring import mean_scores, read_scored_split

    scoring = task.scoring
    data, _ = read_scored_split(uris, "val", scoring.columns, limit=VAL_IMAGES)
    return {name: mean_scores(scoring.score(baseline(data), data)) for name, baseline in scoring.baselines.items()}


def kept_results(directory: Path) -> list[dict]:
    """The recipes' latest results kept in `directory`, in RECIPES order."""
    found = {}
    for path in directory.glob("*.json"):
        result = json.loads(path.read_text())
        if result.get("recipe") in RECIPES:
            found[result["recipe"]] = result
    return [found[r] for r in RECIPES if r in found]


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        return
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    styles = ("--", ":", "-.")
    for ax, result in zip(axes[0], results, strict=True):
        metrics = set()
        for name, curve in result["curves"].items():
            if curve["points"]:
                steps, values = zip(*curve["points"], strict=True)
                ax.plot(steps, values, marker="o", markersize=3, label=name)
                metrics.add(curve["metric"])
        for task, baselines in result["val_baselines"].items():
            metric = METRIC[task]
            for (name, scores), style in zip(sorted(baselines.items()), styles * 3, strict=False):
                ax.axhline(scores[metric], color="grey", linestyle=style, linewidth=1.2,
                           label=f"{name} ({scores[metric]:.2f})")
        ax.set_title(f"{result['recipe']}{' (quick)' if result['quick'] else ''}")
        ax.set_xlabel("step")
        ax.set_ylabel(" / ".join(f"val {m}" for m in sorted(metrics)) + " (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"val score against step; baselines on the same {VAL_IMAGES} val images")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
