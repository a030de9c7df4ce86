"""Root pytest configuration: every test, and every kernel nbval starts, runs in the reference
setting the solution notebooks' stored outputs were made in (quick profile, CPU).

Under pytest-xdist (``make test`` runs ``pytest -n 2 --dist loadscope --no-loadscope-reorder``):

- each test module, and each notebook nbval runs cell by cell, is one unit of work that stays in one
  worker, except in the modules of ``SPREAD``, whose tests each start their own kernels and share
  nothing: each of their tests is a unit of its own, so that the two workers share them;
- the units are handed out longest first (tests marked ``slow``, then the notebooks, then the unit
  tests), so that the run does not end with one worker busy on a long unit and the other idle;
- each worker process, and every kernel it starts, uses one intra-op thread: two workers with two
  threads each on a two-core machine only contend;
- each worker gives its kernels ports from a block of its own
  (:func:`coursepkg.instructor.book.kernel_ports_from_block`): otherwise kernels started at the same
  moment by two workers can be handed the same port (jupyter_client issue 487).
"""

import os

import pytest

os.environ["COURSEPKG_PROFILE"] = "quick"
os.environ["COURSEPKG_DEVICE"] = "cpu"
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")


if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    from coursepkg.instructor.book import kernel_ports_from_block

    # blocks 10 and up: execute-book gives blocks 0, 1, ... to its chapters (tests run it too)
    kernel_ports_from_block(10 + int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw")))

SPREAD = {"tests/test_exercises.py"}


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if nodeid.split("::", 1)[0] in SPREAD else super()._split_scope(nodeid)

    return Scheduler(config, log)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the longest units first (a stable sort keeps cell order)
        items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1 if item.path.suffix == ".ipynb" else 2)


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


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
