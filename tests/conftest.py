"""One local Ray for the whole test run (starting Ray costs seconds; a Ray Train run ~30 s)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_address():
    import ray

    # Logical CPUs above the core count: two train workers holding one each leave room
    # for Ray Data's read tasks on a 2-core machine (otherwise the run hangs).
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def subprocess_env(ray_address):
    """Environment for a `facerestore` child process that joins the shared Ray."""
    return {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONUNBUFFERED": "1"}
