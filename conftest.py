"""Root pytest configuration: every test, and every kernel nbval starts, runs in the reference
setting the solution notebooks' stored outputs were made in (quick profile, CPU)."""

import os

import pytest

os.environ["COURSEPKG_PROFILE"] = "quick"
os.environ["COURSEPKG_DEVICE"] = "cpu"
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module of tiny tensors: on a shared 2-core machine a second thread
    only adds contention (10x slower steps were seen). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
