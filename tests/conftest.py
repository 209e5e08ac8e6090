"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one intra-op thread, restored after the test.

    On a 2-core machine shared with other processes, torch's default of one thread per core oversubscribes the CPU
    and a tiny model's step can take seconds instead of milliseconds. Files use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
