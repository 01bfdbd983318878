import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Unit tests run tiny networks: hundreds of small ops per step. With torch's default of one
    thread per core, the OpenMP threads spin-wait on each other and a step on a shared 2-core
    machine takes many times longer (measured 8-50x by the method tests), so every unit test
    runs on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
