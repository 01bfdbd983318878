"""What the method tests share: real face batches, each method's tiny CPU config and upstream
models, and checks the contract test (test_method_contract.py) and a method's own file both use.

    batch = face_batch(columns=("hq", "mask"), size=32)
    method = build_method("cafin", TINY_CONFIGS["cafin"])
    batch = method_batch("cafin")  # what a cafin training step and restore read
    upstream = save_upstream("panini", tmp_path_factory.mktemp)  # {"pretrain_dre": dir, "train_prior": dir}
    assert_export_round_trip(method, batch)
    run_ddp_steps("cafin", {...}, batch)
    run_ddp_steps_of_each({"cafin": (cfg, batch, {}), ...})  # several methods, one pair of processes
    run_on_two_gloo_ranks(module_level_fn, *args)  # anything else that needs 2 DDP ranks
"""

from __future__ import annotations

import math
import os
import socket
from datetime import timedelta
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.multiprocessing as mp
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from components.models import build_method, load_method, method_class

# Each registered method's narrow CPU config: a training step takes well under a second. A
# method's test file starts from its entry; the contract test builds every method from it.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": {"width": 8, "depth": 2},
    "edge_gan": {"width": 8, "d_width": 8, "residual_blocks": 2},
    "fusion_inpaint": {"width": 8, "residual_blocks": 2, "dense_layers": 2, "growth": 8, "attention_reduction": 4,
                       "d_width": 8},
    "cafin": {"width": 8, "depth": 2, "refine_width": 8, "residual_blocks": 1, "attention_heads": 2, "d_width": 8},
    "contrastive_inpaint": {"width": 8, "n_blocks": 2, "disc_width": 8, "nce_layers": [0, 4, 8, 12],
                            "num_patches": 64},
    # Narrow copy: widths 8 / 16 / 32, one Transformer block per LGCM, one FRM.
    "ctcnet": {"scale": 4, "width": 8, "encoder_blocks": [1, 1, 1], "refinement_blocks": 1, "fsau_depth": 2,
               "frm_fsau_depth": 1},
    # 32 px faces need no 256 px pooling, a 13 px kernel covers sigma 3, and one scale keeps the
    # batched JPEG to one call: what keeps a CPU step cheap.
    "dre": {"width": 8, "dim": 16, "queue_size": 32, "input_size": None, "momentum": 0.99,
            "degradation": {"kernel_size": 13, "sigma": [0.2, 3.0], "scale": [1.0, 1.0], "noise": [0, 15],
                            "jpeg_quality": [60, 100]}},
    # 16 px, 8 channels everywhere (512 / 64), a 2-layer mapping of width 16: a few thousand parameters.
    "stylegan2": {"resolution": 16, "style_dim": 16, "n_mlp": 2, "width_scale": 1 / 64, "ema_kimg": 0.01},
    "panini": {"rrdb_channels": 8, "num_rrdbs": 1, "growth_channels": 8, "stem_width": 16},
}

# The earlier stages a method builds on, as the pipeline hands them over: stage -> (method, config)
# of a tiny untrained model (Panini's: a DRE with a 4 * 4 = 16-d vector, a 32 px prior).
TINY_UPSTREAM: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "fusion_inpaint": {"train_edge": ("edge_gan", {"width": 8, "residual_blocks": 1, "d_width": 8})},
    "panini": {"pretrain_dre": ("dre", {"width": 4, "dim": 8, "queue_size": 16, "input_size": None}),
               "train_prior": ("stylegan2", {"resolution": 32, "style_dim": 16, "n_mlp": 1, "width_scale": 1 / 16})},
}

# Blind degradations of Panini's tests: noise-led (a 32 px face cannot take GFPGAN's x8 downscale).
BLIND = {"kernel_size": 7, "sigma": [0.2, 1.0], "scale": [1.0, 2.0], "noise": [25.0, 50.0], "jpeg_quality": [80, 100]}

# How a method's faces differ from face_batch's default (32 px, SampleConfig defaults): the side
# its config needs and the SampleConfig keys its columns need.
TINY_FACES: dict[str, dict[str, Any]] = {
    "ctcnet": {"super_resolution": {"factor": 4}},
    "stylegan2": {"size": 16},
    "panini": {"degradation": BLIND},
}


def face_batch(n: int = 4, size: int = 32, columns: Sequence[str] = ("hq", "lq", "mask", "edge"),
               seed: int = 0, **sample_config: Any) -> dict[str, Tensor]:
    """`n` procedural faces through the real synthesis path (`make_procedural_rows` -> decode).

    `sample_config` overrides SampleConfig keys, e.g. `super_resolution={"factor": 4}` for an
    `lr` column or `masks={"kinds": ["surgical_mask"]}`.
    """
    from components.data.decode import table_to_arrays
    from components.data.samples import SampleConfig, make_procedural_rows

    cfg = SampleConfig(resolution=size, **sample_config)
    table = make_procedural_rows(range(n), seed, cfg)
    return {name: torch.from_numpy(array) for name, array in table_to_arrays(table, list(columns)).items()}


def method_batch(name: str, n: int = 4, seed: int = 0) -> dict[str, Tensor]:
    """What method `name` with its TINY_CONFIGS entry reads: the columns its task trains it on,
    those its task's evaluation reads, and `unpaired_<column>` (other faces) for a column it also
    draws unpaired; faces as TINY_FACES says."""
    from components.tasks import task_named, training_columns

    cls = method_class(name)
    config = cls.Config.model_validate(TINY_CONFIGS[name])
    task = task_named(cls.task_for(config))
    columns = {*training_columns(cls, config), *(task.scoring.columns if task.scoring else ())}
    faces = {"size": 32, **TINY_FACES.get(name, {})}
    batch = face_batch(n=n, columns=sorted(columns), seed=seed, **faces)
    for column in cls.unpaired:
        batch[f"unpaired_{column}"] = face_batch(n=n, columns=(column,), seed=seed + 100, **faces)[column]
    return batch


def save_upstream(name: str, make_dir: Callable[[str], Any]) -> dict[str, str]:
    """Stage -> model directory of the tiny untrained upstream models method `name` builds on
    (TINY_UPSTREAM; {} for a method without any), each saved by `save_model_dir` into
    `make_dir(stage)` (pytest's `tmp_path_factory.mktemp`), each built after `torch.manual_seed(1)`."""
    from components.models.files import save_model_dir

    dirs = {}
    for stage, (method, cfg) in TINY_UPSTREAM.get(name, {}).items():
        torch.manual_seed(1)
        directory = str(make_dir(stage))
        save_model_dir(directory, *build_method(method, cfg).export())
        dirs[stage] = directory
    return dirs


def parameter_count(method: Any) -> dict[str, int]:
    return {name: sum(p.numel() for p in net.parameters()) for name, net in method.networks().items()}


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def assert_loss_falls(method: Any, batch: Mapping[str, Tensor], key: str, steps: int,
                      factor: float = 0.85, window: int = 5) -> list[float]:
    """Runs `steps` training steps on one fixed batch; the mean of the last `window` values of
    `key` must be below `factor` x the mean of the first `window`. Returns the values."""
    values = [method.training_step(dict(batch), step)[key] for step in range(1, steps + 1)]
    first, last = mean(values[:window]), mean(values[-window:])
    assert all(math.isfinite(v) for v in values), f"{key} went non-finite: {values}"
    assert last < factor * first, f"{key} did not fall by x{factor}: first {first:.4f}, last {last:.4f}"
    return values


def assert_export_round_trip(method: Any, batch: Mapping[str, Tensor]) -> None:
    """export -> safetensors bytes -> load_method restores bit-identically to the live method."""
    state, config = method.export()
    restored_state = load_safetensors(save_safetensors(state))
    rebuilt = load_method(restored_state, config)
    torch.manual_seed(0)
    expected = method.restore(dict(batch))
    torch.manual_seed(0)
    actual = rebuilt.restore(dict(batch))
    assert torch.equal(expected, actual)


def assert_training_step_finite_under_bf16(method: Any, batch: Mapping[str, Tensor]) -> dict[str, float]:
    """The step under CPU bf16 autocast (what the training loop uses on GPU) gives finite losses."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = method.training_step(dict(batch), 1)
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    return losses


def run_ddp_steps(method: str, cfg: Mapping[str, Any], batch: Mapping[str, Tensor], steps: int = 2,
                  upstream: Mapping[str, str] | None = None) -> list[dict[str, float]]:
    """`steps` training steps on 2 gloo DDP processes, networks wrapped as the training loop
    wraps them (`wrap_for_ddp`); returns rank 0's losses. Catches what only DDP breaks:
    in-place buffer updates between forwards, parameters that get no gradient."""
    return run_on_two_gloo_ranks(_training_steps, method, dict(cfg), {k: v.clone() for k, v in batch.items()},
                                 steps, dict(upstream or {}))


def run_ddp_steps_of_each(cases: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Tensor], Mapping[str, str]]],
                          steps: int = 2) -> dict[str, list[dict[str, float]] | str]:
    """`run_ddp_steps` for each method of `cases` (name -> (cfg, batch, upstream)) in ONE pair of
    gloo processes: starting them costs more than a tiny method's steps. Returns name -> rank 0's
    losses, or the error the method's steps raised, as "Type: message" (both ranks run the same
    steps, so both raise it and go on to the next method)."""
    cases = {name: (dict(cfg), {k: v.clone() for k, v in batch.items()}, dict(upstream))
             for name, (cfg, batch, upstream) in cases.items()}
    return run_on_two_gloo_ranks(_training_steps_of_each, cases, steps)


def _training_steps_of_each(rank: int, world: int, cases: dict, steps: int) -> dict:
    results: dict = {}
    for name, (cfg, batch, upstream) in cases.items():
        try:
            results[name] = _training_steps(rank, world, name, cfg, batch, steps, upstream)
        except Exception as error:  # reported by name to the caller
            results[name] = f"{type(error).__name__}: {error}"
    return results


def _training_steps(rank: int, world: int, method_name: str, cfg: dict, batch: dict, steps: int,
                    upstream: dict) -> list[dict[str, float]]:
    from components.training.loop import wrap_for_ddp

    torch.manual_seed(rank)
    method = build_method(method_name, cfg, upstream)
    wrap_for_ddp(method, torch.device("cpu"), world)
    return [method.training_step(dict(batch), step) for step in range(1, steps + 1)]


def run_on_two_gloo_ranks(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(rank, world, *args)` in 2 spawned processes joined by a gloo process group;
    returns what rank 0's call returned. `fn` must be a module-level function (it is pickled)."""
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_gloo_rank, args=(2, _free_port(), fn, args, queue), nprocs=2, join=True)
    return queue.get()


def _gloo_rank(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, queue: Any) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # A rank left waiting in a collective (its peer failed a step the other passed) fails after
    # 2 minutes, not gloo's default 30.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(minutes=2))
    try:
        result = fn(rank, world, *args)
        if rank == 0:
            queue.put(result)
        dist.barrier()  # neither rank tears its connections down while the other still talks
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: on torch 2.13 CPU, gloo's threads abort it
    # ("terminate called without an active exception") in about 1 exit of 3, after every
    # collective has finished and the result is sent. Failures above still raise and are reported.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
