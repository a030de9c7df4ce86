"""Autograded checks: results, the registry, and ``check(exercise_id, answer)``.

A check never crashes on a bad answer. An answer that raises (anything, ``SystemExit`` included), is not
implemented yet, returns the wrong type, shape, dtype or device, or NaN, changes its inputs in place, is a
*failure* with a message that says what is wrong; a wrong value is compared against a catalogue of typical
mistakes, and the message names the one it matches. In a notebook, :func:`check` prints one short, stable
verdict line::

    [01.kl_diag_gaussians] PASSED: matches the reference on 6 random inputs
    [01.kl_diag_gaussians] FAILED: likely mistake: variance used as log-variance. Hint: ...

Checks are registered by the modules of :mod:`coursepkg.grading.checks`, one per chapter, written with
:mod:`coursepkg.grading.kit` (read its docstring to write one). The registry is filled lazily on first use.
Whatever the answer does to the process-wide state a notebook relies on (the random generators of torch,
numpy and :mod:`random`, torch's default dtype and device, grad mode, the number of threads) is undone
when the check returns.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch


# --------------------------------------------------------------------------------------------------
# results and failures
# --------------------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """The outcome of one check. ``bool(result)`` is ``result.passed``."""

    exercise_id: str
    passed: bool
    message: str
    _printed: bool = field(default=False, repr=False, compare=False)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def verdict(self) -> str:
        return f"[{self.exercise_id}] {'PASSED' if self.passed else 'FAILED'}: {self.message}"

    def __str__(self) -> str:
        return self.verdict

    def _ipython_display_(self) -> None:
        # check() already printed the verdict; show it again only when the result is displayed later
        if self._printed:
            self._printed = False
            return
        print(self.verdict)


class CheckFailure(Exception):
    """Raised inside a check to fail it with ``message`` (what the student sees)."""


class Mistake(CheckFailure):
    """A failure that matched a known mistake: the message names it and gives a hint."""

    def __init__(self, name: str, hint: str):
        self.name, self.hint = name, hint
        super().__init__(f"likely mistake: {name}. Hint: {hint}")


# --------------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """A registered check: ``func(answer)`` raises :class:`CheckFailure` or returns the PASS message;
    ``solution`` is a correct answer (what the contract test, ``tests/test_check_contract.py``, runs)."""

    exercise_id: str
    title: str
    func: Callable[[Any], str | None]
    solution: Any = None


_REGISTRY: dict[str, Check] = {}
_LOADED = False


def register(exercise_id: str, title: str = "", *, solution: Any) -> Callable:
    """Decorator: register ``func(answer)`` as the check of ``exercise_id`` (``"<chapter>.<name>"``).

    ``func`` raises :class:`CheckFailure` (or :class:`Mistake`) to fail, and returns an optional message
    on success. ``solution`` is a correct answer with the exercise's signature (for most checks the
    reference function); the contract test runs it and fails a check registered without one.
    """
    if not isinstance(exercise_id, str) or "." not in exercise_id:
        raise ValueError(f"exercise_id: ids look like '01.name', got {exercise_id!r}")

    def deco(func: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
        if not callable(func):
            raise TypeError(f"register({exercise_id!r}): the check must be a function of the answer, got "
                            f"{type(func).__name__}")
        if exercise_id in _REGISTRY and _REGISTRY[exercise_id].func is not func:
            raise ValueError(f"exercise_id: a check is already registered for {exercise_id!r}")
        _REGISTRY[exercise_id] = Check(exercise_id, title or exercise_id, func, solution)
        return func

    return deco


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    from coursepkg.grading import checks

    for mod in sorted(pkgutil.iter_modules(checks.__path__), key=lambda m: m.name):
        importlib.import_module(f"{checks.__name__}.{mod.name}")
    _LOADED = True


def list_checks() -> list[str]:
    """The ids of every registered exercise check, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get_check(exercise_id: str) -> Check:
    """The registered :class:`Check` of ``exercise_id``; ``ValueError`` naming the closest ids if there is none."""
    _load_all()
    if exercise_id not in _REGISTRY:
        close = difflib.get_close_matches(str(exercise_id), list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"no check is registered for {exercise_id!r}{hint} (see coursepkg.grading.list_checks())")
    return _REGISTRY[exercise_id]


# --------------------------------------------------------------------------------------------------
# check()
# --------------------------------------------------------------------------------------------------
class _NotebookState:
    """The process-wide state an answer can disturb, saved on entry and restored on exit: the random
    generators (torch's CPU and CUDA ones, numpy's and :mod:`random`'s global state), torch's default
    dtype and device, grad mode and the number of threads. Inside, grad mode is on."""

    def __enter__(self) -> _NotebookState:
        self.cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        self.fork = torch.random.fork_rng(devices=self.cuda)
        self.fork.__enter__()
        self.numpy, self.python = np.random.get_state(), random.getstate()
        self.dtype, self.grad = torch.get_default_dtype(), torch.is_grad_enabled()
        self.threads = torch.get_num_threads()
        self.device = torch.get_default_device() if hasattr(torch, "get_default_device") else None
        torch.set_grad_enabled(True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fork.__exit__(None, None, None)
        np.random.set_state(self.numpy)
        random.setstate(self.python)
        torch.set_default_dtype(self.dtype)
        if self.device is not None and torch.get_default_device() != self.device:
            # a default device of "cpu" is no default device (setting one slows every factory call down)
            torch.set_default_device(None if self.device.type == "cpu" else self.device)
        torch.set_grad_enabled(self.grad)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


def check(exercise_id: str, answer: Any, *, verbose: bool = True) -> CheckResult:
    """Grade ``answer`` for ``exercise_id``; print the verdict and return a :class:`CheckResult`.

    An unknown ``exercise_id`` is an error in the notebook, not in the answer: it raises ``ValueError``
    naming the closest known ids. Anything else the answer does (raise, call ``sys.exit()``, return
    garbage) is a failed result, never an exception.
    """
    chk = get_check(exercise_id)
    try:
        with _NotebookState():
            msg = chk.func(answer)
        result = CheckResult(exercise_id, True, msg or "matches the reference")
    except CheckFailure as fail:
        result = CheckResult(exercise_id, False, str(fail))
    except BaseException as err:  # a bug surfaced by a strange answer must not crash the notebook
        result = CheckResult(exercise_id, False, f"the check could not evaluate your answer: {describe_exception(err)}")
    if verbose:
        print(result.verdict)
        result._printed = True
    return result


def describe_exception(err: BaseException) -> str:
    """``"ValueError: what it says"``, shortened; ``sys.exit()`` and interrupts in words."""
    if isinstance(err, SystemExit):
        return f"SystemExit (sys.exit({'' if err.code is None else repr(err.code)}) was called)"
    if isinstance(err, KeyboardInterrupt):
        return "KeyboardInterrupt (an interrupt was raised)"
    text = _short(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _short(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
