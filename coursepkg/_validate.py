"""Argument checking shared by every module: one place, one policy.

Every public function of :mod:`coursepkg` checks its arguments with these helpers, so that bad input
gives the same kind of error everywhere, naming the argument and what was expected:

- ``TypeError`` when the argument has the wrong *type*: not an int, not a tensor, an integer tensor
  where a floating-point one is needed, not a callable, not a :class:`torch.Generator`;
- ``ValueError`` when the type is right but the *value* is not: ``0`` for a positive int, a tensor of
  the wrong shape, NaN, a dtype or device that disagrees with the other inputs.

Random generators: :func:`generator` turns the usual ``seed=None, generator=None`` pair of arguments
into one :class:`torch.Generator`. ``seed=None`` (and no generator) means *draw from torch's global
generator*: the new generator is seeded from it, so ``coursepkg.config.seed_everything`` (or the
notebooks' ``setup()``) makes every such call reproducible, and two calls in a row give different
draws. No function of the package seeds itself from the operating system's entropy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

SEED_LIMIT = 2**32
"""Seeds are ints in ``[0, 2**32)``, the range NumPy, Python and torch all accept."""


def integer(name: str, value, *, minimum: int | None = None, none: str | None = None) -> int | None:
    """``value`` as a Python int, checked to be an int (``bool`` is not one; NumPy ints are) at least ``minimum``.

    ``none``, when given, allows ``None`` and says what it means, e.g. ``none="the whole data set"``.
    A dict (a budget written as ``{"quick": ..., "full": ...}``) gets a hint to use
    :func:`coursepkg.config.budget` instead."""
    if none is not None and value is None:
        return None
    if isinstance(value, Mapping):
        raise TypeError(f"{name} must be an int; choose it by profile with "
                        f"{name}=coursepkg.config.budget(quick=..., full=...), not a dict")
    what = ("an int" if minimum is None else "a positive int" if minimum == 1
            else "a non-negative int" if minimum == 0 else f"an int >= {minimum}")
    if none is not None:
        what += f" or None ({none})"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def positive_int(name: str, value, *, none: str | None = None) -> int | None:
    """``value`` checked to be an int ``>= 1`` (a count: samples, steps, dimensions, widths); ``none`` as in
    :func:`integer`."""
    return integer(name, value, minimum=1, none=none)


def number(name: str, value, *, positive: bool = False, nonnegative: bool = False) -> float:
    """``value`` as a finite Python float: an int, a float or a one-element tensor (not a ``bool``), and,
    when asked, ``> 0`` (``positive``) or ``>= 0`` (``nonnegative``)."""
    what = "a positive number" if positive else "a non-negative number" if nonnegative else "a finite number"
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0) or (nonnegative and value < 0):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def function(name: str, value):
    """``value`` checked to be callable."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    return value


def tensor(name: str, value, *, shape: Sequence[int | str] | None = None, min_dim: int | None = None,
           floating: bool = False, finite: bool = False, numbers: bool = False,
           like: torch.Tensor | None = None, expected: str | None = None) -> torch.Tensor:
    """``value`` checked to be a :class:`torch.Tensor` with the properties asked for.

    - ``shape``: one entry per dimension, an int for a fixed size and a name for a free one:
      ``shape=("N", 3)`` accepts ``(5, 3)`` and says ``x must have shape (N, 3)`` otherwise.
    - ``min_dim``: at least that many dimensions (e.g. ``2`` for a batch of vectors or of images).
    - ``floating``: a floating-point dtype (an integer or bool tensor is a ``TypeError``).
    - ``finite``: no NaN or infinity.
    - ``numbers``: a Python int or float is accepted too, made a 0-d tensor with the dtype and device of the
      tensor ``like`` (default: torch's default dtype), for the formulas that take a constant for a tensor.
    - ``expected``: what to say the argument must be, replacing the generated description, e.g.
      ``"a floating-point batch (N, D) or (N, C, H, W)"``.
    """
    kind = "a torch.Tensor or a number" if numbers else "a torch.Tensor"
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value), dtype=like.dtype if like is not None else torch.get_default_dtype(),
                             device=like.device if like is not None else None)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be {expected or kind}, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be {expected or 'a floating-point tensor'}, got dtype {value.dtype}"
                        + (f" (shape {list(value.shape)})" if expected else ""))
    if shape is not None and not (value.dim() == len(shape) and all(
            isinstance(size, str) or value.shape[i] == size for i, size in enumerate(shape))):
        if expected:
            raise ValueError(f"{name} must be {expected}, got shape {list(value.shape)}")
        raise ValueError(f"{name} must have shape ({', '.join(map(str, shape))}), got {list(value.shape)}")
    if min_dim is not None and value.dim() < min_dim:
        want = expected or f"a tensor with at least {min_dim} dimensions"
        raise ValueError(f"{name} must be {want}, got shape {list(value.shape)}")
    if finite and not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or inf")
    return value


def same_dtype_device(name: str, value: torch.Tensor, ref: torch.Tensor, ref_name: str) -> torch.Tensor:
    """``value`` checked to have the dtype and the device of ``ref`` (``ref_name`` says what ``ref`` is, e.g.
    ``"the model"``); a mismatch is a ``ValueError`` that says how to convert."""
    if value.dtype != ref.dtype or value.device != ref.device:
        raise ValueError(f"{name} is {value.dtype} on {value.device} but {ref_name} is {ref.dtype} on {ref.device}; "
                         f"convert one of them (e.g. {name}.to(dtype={ref.dtype}, device='{ref.device}'))")
    return value


def seed_int(value, name: str = "seed") -> int:
    """``value`` checked to be a seed: an int in ``[0, 2**32)``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= int(value) < SEED_LIMIT:
        raise ValueError(f"{name} must be in [0, 2**32), got {value}")
    return int(value)


def generator(seed: int | None = None, generator: torch.Generator | None = None,
              device: str | torch.device | None = None) -> torch.Generator:
    """The :class:`torch.Generator` a function draws from, given its ``seed`` and ``generator`` arguments.

    - ``generator``: used as it is (its device is the caller's business);
    - ``seed``: a new generator on ``device`` (default CPU) seeded with it;
    - neither: a new generator on ``device`` seeded *from torch's global generator* (see the module's
      docstring): reproducible after :func:`coursepkg.config.seed_everything`, different at each call.

    Giving both is a ``ValueError``.
    """
    if generator is not None and seed is not None:
        raise ValueError("give either seed or generator, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    g = torch.Generator(device=device if device is not None else "cpu")
    if seed is None:
        return g.manual_seed(int(torch.randint(0, 2**62, ()).item()))
    return g.manual_seed(seed_int(seed))
