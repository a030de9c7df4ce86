"""Where code runs and how much work it does: device, profile, seeding.

Every notebook's first code cell calls :func:`setup`, and every budget in a notebook (number of
samples, training steps, image sizes) is read from :func:`profile` through :func:`budget`, never
from an ``if`` on the device. Two profiles exist:

``"quick"``
    the default on a CPU: what the book build and CI run; every chapter finishes in minutes.
``"full"``
    the default when a CUDA GPU is present (Colab): the budgets worth showing.

The environment variable ``COURSEPKG_PROFILE`` overrides the default, and ``COURSEPKG_DEVICE``
overrides the device (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from coursepkg import _validate as V

PROFILES = ("quick", "full")
PROFILE_ENV = "COURSEPKG_PROFILE"
DEVICE_ENV = "COURSEPKG_DEVICE"


def device() -> torch.device:
    """The device the course computes on: ``COURSEPKG_DEVICE`` if set, else CUDA when present, else CPU."""
    requested = os.environ.get(DEVICE_ENV, "").strip()
    if requested:
        try:
            dev = torch.device(requested)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{DEVICE_ENV}={requested!r} is not a device torch knows: {err}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{DEVICE_ENV}={requested!r} asks for CUDA, but no CUDA GPU is available")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def profile() -> str:
    """The run profile: ``"quick"`` on a CPU, ``"full"`` on a GPU; ``COURSEPKG_PROFILE`` overrides.

    Raises ``ValueError`` for an unknown value of the variable, naming the allowed ones.
    """
    requested = os.environ.get(PROFILE_ENV)
    if requested is not None and requested.strip() != "":
        value = requested.strip().lower()
        if value not in PROFILES:
            raise ValueError(
                f"{PROFILE_ENV}={requested!r} is not a known profile; use one of {', '.join(PROFILES)}"
            )
        return value
    return "full" if device().type == "cuda" else "quick"


def budget(quick: Any, full: Any) -> Any:
    """Pick a budget by profile: ``budget(quick=2_000, full=200_000)``.

    This is the one way a notebook chooses how much work to do, so that the same cell finishes in
    seconds on a laptop and shows the real result on a GPU.
    """
    return {"quick": quick, "full": full}[profile()]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's generators (CPU and CUDA) and return a torch generator.

    The returned :class:`torch.Generator` lives on the CPU and is seeded with ``seed`` too, for code
    that prefers an explicit generator to the global state.
    """
    seed = V.seed_int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    return torch.Generator().manual_seed(seed)


def describe() -> str:
    """The one stable line :func:`setup` prints, e.g. ``coursepkg: device=cpu, profile=quick``."""
    return f"coursepkg: device={device().type}, profile={profile()}"


def setup(seed: int | None = 0, *, verbose: bool = True) -> None:
    """Call once in a notebook's first code cell: seeds everything, sets the course's figure style, makes
    an unfinished exercise fail in one line (:mod:`coursepkg.grading.unfinished`), prints one line.

    Returns nothing (so that the cell shows only that line); use :func:`device` and :func:`profile`
    for the values.
    """
    dev, prof = device(), profile()
    if seed is not None:
        seed_everything(seed)
    try:  # the course's figure style: sizes that fit the text column, PNG output (nbval ignores PNG)
        from coursepkg.plotting import use_style

        use_style()
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
    from coursepkg.grading import unfinished

    unfinished.install()  # in a notebook: an exercise not written yet is one line, not a traceback
    if verbose:
        print(f"coursepkg: device={dev.type}, profile={prof}")
