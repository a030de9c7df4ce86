"""Executing the chapters for the site, several at a time (``python -m coursepkg execute-book``).

Jupyter Book 1 (``execute_notebooks: cache``) executes each changed chapter during the build, one
after the other, and stores the result in its jupyter-cache (``_build/.jupyter_cache``). A
chapter that trains networks takes minutes, so ten of them in a row dominate the build. This module
executes the chapters the same way the build would (same notebook, same working folder, same
timeout, errors fatal) in ``jobs`` kernels at once and stores each result in that same cache; the
build that follows finds every chapter cached and only renders (``make chapters book``). It is not
part of ``make book`` or ``make test``: in two CI runs one chapter's execution hung, nbclient waiting
for a message from an idle kernel, which the build's own serial execution has never shown.

Each kernel gets one intra-op thread (``OMP_NUM_THREADS=1``) when several run at once: on a
two-core machine two kernels with two threads each are slower than two with one. Each chapter runs in
a process of its own that takes its kernel's ports from a block of its own
(:func:`kernel_ports_from_block`).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import socket
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class ChapterRun:
    path: Path
    seconds: float
    cached: bool  # True when the cache already held this exact notebook (nothing was executed)


def _config(root: Path) -> dict:
    return yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}


def cache_path(root: str | Path = ".") -> Path:
    """The jupyter-cache the book build reads: ``execute.cache`` in ``_config.yml``, else
    ``_build/.jupyter_cache`` (myst-nb's default next to ``_build/html``)."""
    root = Path(root).resolve()
    configured = (_config(root).get("execute") or {}).get("cache")
    return (root / configured).resolve() if configured else root / "_build" / ".jupyter_cache"


def chapters(root: str | Path = ".") -> list[Path]:
    """The chapter notebooks the build executes: ``book/*.ipynb``."""
    return sorted((Path(root).resolve() / "book").glob("*.ipynb"))


def kernel_ports_from_block(index: int, size: int = 1000) -> None:
    """Make the kernels this process starts take their ports from block ``index`` (``20000 + index * size``
    and up, cycling; 12 blocks of 1000 fit), below Linux's ephemeral range (32768 and up). The chapters of
    :func:`execute_book` take blocks 0, 1, ...; the test suite's workers take 10 and 11.

    jupyter_client picks a kernel's ports by binding port 0 and closing it, so two processes that start
    kernels at the same moment can be handed the same port, and one kernel dies with "Address already in
    use" (jupyter_client issue 487; its port cache protects only the kernels of one process). Processes
    given different blocks never collide, with each other or with ports the system hands out."""
    from jupyter_client.connect import LocalPortCache

    start = 20_000 + size * (index % (12_000 // size))
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
        raise RuntimeError("unreachable: the candidates cycle forever")

    LocalPortCache.find_available_port = find_available_port


@contextmanager
def _locked(cache: Path):
    """One writer at a time: the cache is a SQLite database shared by parallel executions."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".coursepkg.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ChapterError(RuntimeError):
    """A chapter raised while executing (its own assertions included)."""


def execute_chapter(path: str | Path, *, root: str | Path = ".", timeout: int | None = None,
                    force: bool = False) -> ChapterRun:
    """Execute one chapter as the book build would and store it in the build's cache.

    Raises :class:`ChapterError` with the failing cell's traceback when a cell raises. With
    ``force=False`` a chapter the cache already holds unchanged is not executed again.
    """
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    from jupyter_cache.executors.utils import single_nb_execution

    root, path = Path(root).resolve(), Path(path).resolve()
    cfg = _config(root).get("execute") or {}
    timeout = timeout if timeout is not None else cfg.get("timeout", 300)
    cache_dir = cache_path(root)
    nb = nbformat.read(path, as_version=4)
    if not force:
        with _locked(cache_dir):
            cache = get_cache(str(cache_dir))
            try:
                cache.match_cache_notebook(nb)
                return ChapterRun(path, 0.0, True)
            except KeyError:
                pass
    start = time.perf_counter()
    result = single_nb_execution(nb, cwd=str(path.parent), timeout=timeout,
                                 allow_errors=bool(cfg.get("allow_errors", False)), meta_override=True)
    seconds = time.perf_counter() - start
    if result.err is not None:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(result.err))  # IPython's colours
        raise ChapterError(f"{path.name} failed to execute: {message}")
    with _locked(cache_dir):
        cache = get_cache(str(cache_dir))
        stage = cache.add_nb_to_project(str(path))
        cache.cache_notebook_bundle(CacheBundleIn(nb, stage.uri, data={"execution_seconds": result.time}),
                                    check_validity=False, overwrite=True)
    return ChapterRun(path, seconds, False)


def execute_book(root: str | Path = ".", *, jobs: int = 2, force: bool = False,
                 names: list[str] | None = None) -> list[ChapterRun]:
    """Execute every chapter (or those whose file stem is in ``names``) with ``jobs`` kernels at once."""
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    paths = chapters(root)
    if names:
        unknown = sorted(set(names) - {p.stem for p in paths})
        if unknown:
            raise ValueError(f"no chapter named {', '.join(unknown)} in book/")
        paths = [p for p in paths if p.stem in names]
    # the later chapters train networks and run longest: starting them first leaves a short one to finish last
    paths = paths[::-1]
    root = Path(root).resolve()
    if jobs == 1 or len(paths) <= 1:
        return [execute_chapter(p, root=root, force=force) for p in paths]
    with ProcessPoolExecutor(max_workers=min(jobs, len(paths))) as pool:
        return list(pool.map(_run_in_worker, [(str(p), str(root), force, i) for i, p in enumerate(paths)]))


def _run_in_worker(args: tuple[str, str, bool, int]) -> ChapterRun:
    """One chapter in a pool process: one intra-op thread for its kernel, and a port block of its own."""
    path, root, force, index = args
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the kernel this process starts
    kernel_ports_from_block(index)
    return execute_chapter(path, root=root, force=force)
