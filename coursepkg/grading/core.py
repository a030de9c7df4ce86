"""Autograded checks: ``check(exercise_id, answer)`` compares a student's answer with the reference.

A check never crashes on a bad answer. An answer that raises, is not implemented yet, returns the
wrong type, shape, dtype or device, or NaN, is a *failure* with a message that says what is wrong;
a wrong value is compared against a catalogue of typical mistakes, and the message names the one it
matches. In a notebook, :func:`check` prints one short, stable verdict line::

    [01.kl_diag_gaussians] PASSED: matches the reference on 6 random inputs
    [01.kl_diag_gaussians] FAILED: likely mistake: variance used as log-variance. Hint: ...

Checks are registered by the modules of :mod:`coursepkg.grading.checks`, one per chapter, next to (and
importing) that chapter's reference code. The registry is filled lazily on first use.

When the environment variable ``COURSEPKG_GRADING_LOG`` names a file, every result is also
appended to it as one JSON line: this is how ``python -m coursepkg grade`` collects the verdicts
of a submission it executes.
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

LOG_ENV = "COURSEPKG_GRADING_LOG"


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


@dataclass(frozen=True)
class Check:
    exercise_id: str
    title: str
    func: Callable[[Any], str | None]


_REGISTRY: dict[str, Check] = {}
_LOADED = False


def register(exercise_id: str, title: str = "") -> Callable:
    """Decorator: register ``func(answer)`` as the check of ``exercise_id`` (``"<chapter>.<name>"``).

    ``func`` raises :class:`CheckFailure` (or :class:`Mistake`) to fail, and returns an optional
    message on success.
    """
    if "." not in exercise_id:
        raise ValueError(f"exercise ids look like '01.name', got {exercise_id!r}")

    def deco(func: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
        if exercise_id in _REGISTRY and _REGISTRY[exercise_id].func is not func:
            raise ValueError(f"a check is already registered for {exercise_id!r}")
        _REGISTRY[exercise_id] = Check(exercise_id, title or exercise_id, func)
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


def check(exercise_id: str, answer: Any, *, verbose: bool = True) -> CheckResult:
    """Grade ``answer`` for ``exercise_id``; print the verdict and return a :class:`CheckResult`.

    An unknown ``exercise_id`` is an error in the notebook, not in the answer: it raises
    ``ValueError`` naming the closest known ids.
    """
    _load_all()
    if exercise_id not in _REGISTRY:
        close = difflib.get_close_matches(str(exercise_id), list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"no check is registered for {exercise_id!r}{hint} (see coursepkg.grading.list_checks())")
    chk = _REGISTRY[exercise_id]
    try:
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda):  # a check never disturbs the notebook's random state
            msg = chk.func(answer)
        result = CheckResult(exercise_id, True, msg or "matches the reference")
    except CheckFailure as fail:
        result = CheckResult(exercise_id, False, str(fail))
    except Exception as err:  # a bug surfaced by a strange answer must not crash the notebook
        result = CheckResult(exercise_id, False, f"the check could not evaluate your answer: "
                                                 f"{type(err).__name__}: {_short(err)}")
    _log(result)
    if verbose:
        print(result.verdict)
        result._printed = True
    return result


def _log(result: CheckResult) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"exercise_id": result.exercise_id, "passed": result.passed,
                                 "message": result.message}) + "\n")
    except OSError:
        pass


def _short(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------
# helpers the chapter checks are written with
# --------------------------------------------------------------------------------------------------
def require_callable(answer: Any, what: str = "a function") -> Callable:
    """Fail unless ``answer`` is callable (a common slip: passing ``f(x)`` instead of ``f``)."""
    if not callable(answer):
        kind = type(answer).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise CheckFailure(f"expected {what}, got {article} {kind}; pass the function itself, "
                           f"without calling it")
    return answer


def call(func: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call the student's function, turning any exception into a clear failure."""
    try:
        return func(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailure("not implemented yet: replace `raise NotImplementedError()` in the cell marked "
                           "YOUR CODE HERE with your code, run that cell, then run this check again") from None
    except CheckFailure:
        raise
    except Exception as err:
        raise CheckFailure(f"your function raised {type(err).__name__}: {_short(err)}") from None


def describe_inputs(**inputs: Any) -> str:
    parts = []
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            parts.append(f"{k}: shape {list(v.shape)}, {str(v.dtype).replace('torch.', '')}")
        else:
            parts.append(f"{k}={v!r}")
    return ", ".join(parts)


def close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float, equal_nan: bool = False) -> bool:
    """``allclose`` in float64 on the CPU, False (not an error) when shapes differ."""
    try:
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan))
    except Exception:
        return False


def require_tensor(got: Any, what: str = "your result") -> torch.Tensor:
    """Fail unless ``got`` is a tensor, with a message for the usual slips (no ``return``, numpy, a float)."""
    if got is None:
        raise CheckFailure(f"{what} is None: did you forget a `return`?")
    if not isinstance(got, torch.Tensor):
        kind = type(got).__name__
        extra = " (use torch operations, not numpy or math, so the result stays a tensor)" \
            if kind in ("ndarray", "float", "int", "float64", "float32") else ""
        raise CheckFailure(f"{what} should be a torch.Tensor, got {kind}{extra}")
    return got


def compare(got: Any, expected: torch.Tensor, *, what: str = "the result", inputs: str = "",
            rtol: float = 1e-4, atol: float = 1e-6,
            mistakes: Sequence[tuple[str, str, torch.Tensor | None]] = ()) -> None:
    """Fail unless ``got`` is a tensor like ``expected`` (type, shape, dtype, device, finite, value).

    ``mistakes`` is a catalogue of ``(name, hint, value_that_mistake_gives)``: when ``got`` is wrong
    and matches one of them, the failure names it. Generic slips (a flipped sign, a factor of 2,
    a float64 computation returned for float32 input) are recognised too.
    """
    at = f" (for inputs {inputs})" if inputs else ""
    require_tensor(got, what)
    if got.shape != expected.shape:
        hint = ""
        if got.numel() == 1 and expected.numel() > 1:
            hint = ": did you sum or average over the batch dimension too? Keep one value per batch element"
        elif got.dim() == expected.dim() + 1 and got.shape[:-1] == expected.shape:
            hint = ": did you forget to sum over the last (event) dimension?"
        raise CheckFailure(f"{what} has shape {list(got.shape)}, expected {list(expected.shape)}{at}{hint}")
    if got.device != expected.device:
        raise CheckFailure(f"{what} is on device {got.device}, but the inputs were on {expected.device}: "
                           f"create new tensors with device=x.device (or use torch.*_like)")
    if got.dtype != expected.dtype:
        raise CheckFailure(f"{what} has dtype {str(got.dtype).replace('torch.', '')}, expected "
                           f"{str(expected.dtype).replace('torch.', '')} (the inputs' dtype){at}: "
                           f"avoid hard-coded dtypes; build constants from the inputs")
    for name, hint, value in mistakes:  # first: a known mistake may also explain a NaN
        if value is not None and close(got, value, max(rtol, 1e-4), max(atol, 1e-6), equal_nan=True):
            raise Mistake(name, hint)
    if not torch.isfinite(got).all() and torch.isfinite(expected).all():
        raise CheckFailure(f"{what} contains NaN or inf{at}, the reference does not: look for a log or "
                           f"division of a non-positive number, or an exp that overflows")
    if close(got, expected, rtol, atol):
        return
    if close(got, -expected, rtol, atol):
        raise Mistake("a flipped sign", "your result is exactly minus the reference")
    for factor, word in ((2.0, "twice"), (0.5, "half")):
        if close(got, factor * expected, rtol, atol):
            raise Mistake(f"a factor of {factor:g}", f"your result is {word} the reference: check the 1/2 factors")
    err = (got.double() - expected.double()).abs().max().item()
    raise CheckFailure(f"{what} differs from the reference{at}: largest absolute error {err:.3g}")


def random_cases(seed: int, dtypes: Iterable[torch.dtype] = (torch.float64, torch.float32)) -> list[dict]:
    """A few (generator, dtype, device) settings for a check's random trials: every dtype on the CPU,
    plus the course device when it is not the CPU (so a hard-coded ``.cpu()`` or ``.cuda()`` is caught)."""
    from coursepkg.config import device

    cases = [{"gen": torch.Generator().manual_seed(seed + i), "dtype": dt, "device": torch.device("cpu")}
             for i, dt in enumerate(dtypes)]
    try:
        dev = device()
    except ValueError:
        dev = torch.device("cpu")
    if dev.type != "cpu":
        cases.append({"gen": torch.Generator().manual_seed(seed + 99), "dtype": torch.float32, "device": dev})
    return cases


def fmt(x: float) -> str:
    """A stable short rendering of a number for messages."""
    return "nan" if math.isnan(x) else f"{x:.4g}"
