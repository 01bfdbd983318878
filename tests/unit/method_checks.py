"""Checks every method's tests share: real face batches, export round trip, bf16, DDP.

A method's test file imports these instead of writing its own copies:

    batch = face_batch(columns=Inpaint.inputs, size=32)
    assert_export_round_trip(method, batch)
    assert_training_step_finite_under_bf16(method, batch)
    run_ddp_steps("cafin", {...}, batch)
    run_on_two_gloo_ranks(module_level_fn, *args)  # anything else that needs 2 DDP ranks
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.multiprocessing as mp
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from components.models import build_method, load_method


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


def assert_inpainting_keeps_known_pixels(method: Any, batch: Mapping[str, Tensor]) -> None:
    """restore returns the photo's known pixels exactly; only the holes change."""
    out = method.restore(dict(batch))
    known = ~batch["mask"].bool().expand_as(out)
    assert out.shape == batch["lq"].shape
    assert torch.equal(out[known], batch["lq"][known])


def run_ddp_steps(method: str, cfg: Mapping[str, Any], batch: Mapping[str, Tensor], steps: int = 2,
                  upstream: Mapping[str, str] | None = None) -> list[dict[str, float]]:
    """`steps` training steps on 2 gloo DDP processes, networks wrapped as the training loop
    wraps them (`wrap_for_ddp`); returns rank 0's losses. Catches what only DDP breaks:
    in-place buffer updates between forwards, parameters that get no gradient."""
    return run_on_two_gloo_ranks(_training_steps, method, dict(cfg), {k: v.clone() for k, v in batch.items()},
                                 steps, dict(upstream or {}))


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
    dist.init_process_group("gloo", rank=rank, world_size=world)
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
