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
- each worker gives its kernels ports from a block of its own. jupyter_client picks a kernel's ports by
  binding port 0 and closing it, so two processes starting kernels at the same moment can be handed the
  same port, and one kernel dies with "Address already in use" (jupyter_client issue 487; its port cache
  only protects the kernels of one process). Blocks below Linux's ephemeral range (32768 and up) are
  never handed out by that binding, and no two workers share one.
"""

import itertools
import os
import socket

import pytest

os.environ["COURSEPKG_PROFILE"] = "quick"
os.environ["COURSEPKG_DEVICE"] = "cpu"
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")


def _kernel_ports_from_own_block(worker: int, size: int = 3000) -> None:
    from jupyter_client.connect import LocalPortCache

    start = 20_000 + size * (worker % 4)
    candidates = itertools.cycle(range(start, start + size))

    def find_available_port(self, ip: str) -> int:
        for port in candidates:
            if port in self.currently_used_ports:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind((ip, port))
                except OSError:
                    continue
            self.currently_used_ports.add(port)
            return port
        raise RuntimeError("unreachable: the port candidates cycle forever")

    LocalPortCache.find_available_port = find_available_port


if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    _kernel_ports_from_own_block(int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw")))

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
