import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    # The test machine is small and shared: intra-op threads only contend (several-fold
    # slower under load), so run single-threaded and restore the setting afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
