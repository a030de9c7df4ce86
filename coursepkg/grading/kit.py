r"""The check kit: everything an exercise check is written with, once.

How to write a check
====================

A check lives in ``coursepkg/grading/checks/chNN_slug.py``. Most exercises are one of three kinds, each
with a declarative form that registers the check:

- :func:`function_check`, a deterministic function: a reference, an input generator, typical mistakes
  as small functions of the inputs (:class:`Slip`);
- :func:`random_check`, a random answer: a sampler (its output turned back into the noise it was made
  from, which must look like independent standard normal draws, fresh at every call), or an estimator
  (its value within a few standard errors of the expectation);
- :func:`loss_check`, a loss built from parts: a wrong value is explained by the simplest combination of
  slips in its parts (:class:`Option`).

For example, the whole check of ``01.gaussian_log_prob`` (ask for ``log N(x; mu, diag(exp(logvar)))``,
summed over the last dimension)::

    from coursepkg import probability as P
    from coursepkg.grading.kit import Slip, function_check

    LOG2PI = math.log(2 * math.pi)

    def _inputs(case, shape):                            # case: a seeded generator, a dtype and a device
        return {"x": case.randn(*shape), "mu": case.randn(*shape), "logvar": case.randn(*shape, scale=0.8)}

    function_check(
        "01.gaussian_log_prob", "log-density of a diagonal Gaussian",
        solution=P.gaussian_log_prob,                    # a correct answer, with the exercise's signature
        inputs=_inputs, specs=[(5, 3), (7, 1), (4, 6)], seed=100,
        what="log p(x)",
        mistakes=[
            Slip("missing the log(2*pi) constant", "each dimension contributes -0.5 * log(2*pi)",
                 lambda x, mu, logvar: P.gaussian_log_prob(x, mu, logvar) + 0.5 * LOG2PI * x.shape[-1]),
            Slip("a mean over dimensions instead of a sum", "independent dimensions multiply: use .sum(-1)",
                 lambda x, mu, logvar: P.gaussian_log_prob(x, mu, logvar) / x.shape[-1]),
        ])

What the kit then does, for every check, without being asked:

- the answer must be callable; it is called on every (dtype, device) of :func:`random_cases` times every
  spec, *first*: the reference and the mistakes' values are computed after it returns, so nothing the
  answer could copy is on the call stack while it runs;
- :func:`call` turns anything the answer raises (``SystemExit`` included) into a failure that says so,
  and fails an answer that changed one of its tensor inputs in place (nested in lists, tuples, dicts, or
  the parameters and buffers of an ``nn.Module``);
- the result must be a tensor of the reference's shape, dtype and device, finite where the reference is;
  a mistake too close to the reference on an input is left out (it could never be told from a correct
  answer); a flipped sign or a factor of 2 is recognised by itself;
- random answers: independent rows and coordinates, fresh noise at every call, the distribution's shape
  (a Kolmogorov-Smirnov test and the kurtosis, not only the mean and variance);
- the PASS message is assembled from the tests that ran.

A check that fits none of the forms is a function of the answer registered with
:func:`coursepkg.grading.register` (``solution=`` required) and written with the helpers below:
:func:`call`, :func:`compare`, :func:`unpack`, :func:`require_like`, :func:`distinct`, :func:`tolerance`,
the statistics (:func:`ztest`, :func:`closest_mistake`, :func:`statistical_failure`, :func:`normal_test`,
:func:`uniform_test`, :func:`looks_uniform`, :func:`independence_test`, :func:`fresh`), :class:`Recorder`
(what a function or module handed to the answer is called with), :func:`compare_gradients` and
:func:`find_slips`. Every check inherits the contract test (``tests/test_check_contract.py``).
"""

from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from coursepkg.grading.core import CheckFailure, Mistake, _short, describe_exception, register

F64 = torch.float64
N_SIGMA = 5.0  # a random answer is accepted within this many standard errors

# (rtol, atol) allowed between a correct answer written differently and the reference, per dtype
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9), torch.float32: (1e-4, 1e-6),
    torch.float16: (1e-2, 1e-3), torch.bfloat16: (2e-2, 1e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing a result computed in ``dtype`` with the reference: the round-off
    of a correct answer written differently (float64 1e-7, float32 1e-4, half precision 1e-2)."""
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype: no tolerance for {dtype} (floating-point dtypes only)")
    return TOLERANCES[dtype]


def fmt(x: float) -> str:
    """A stable short rendering of a number for messages."""
    return "nan" if math.isnan(x) else f"{x:.4g}"


def vec(t: torch.Tensor) -> str:
    """``[1.5, -0.25]``: a short tensor for messages."""
    return "[" + ", ".join(fmt(v) for v in t.detach().reshape(-1).tolist()) + "]"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------------------------------
# random settings
# --------------------------------------------------------------------------------------------------
class Case(dict):
    """One random setting of a check: ``gen`` (a seeded ``torch.Generator``), ``dtype`` and ``device``,
    with helpers that draw inputs from it. A dict too (``case["gen"]``), as the checks written before
    the kit use it."""

    def __init__(self, gen: torch.Generator, dtype: torch.dtype, device: torch.device):
        super().__init__(gen=gen, dtype=dtype, device=device)

    gen = property(lambda self: self["gen"])
    dtype = property(lambda self: self["dtype"])
    device = property(lambda self: self["device"])

    @property
    def like(self) -> dict:
        """``dict(dtype=..., device=...)``, for ``tensor.to(**case.like)``."""
        return {"dtype": self.dtype, "device": self.device}

    @property
    def tol(self) -> tuple[float, float]:
        return tolerance(self.dtype)

    def randn(self, *shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        """``shift + scale * N(0, 1)`` draws (in float64, from ``gen``), in the case's dtype and device."""
        return (torch.randn(*shape, generator=self.gen, dtype=F64) * scale + shift).to(**self.like)

    def rand(self, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """Uniform draws on ``[low, high)`` (in float64, from ``gen``), in the case's dtype and device."""
        return (low + (high - low) * torch.rand(*shape, generator=self.gen, dtype=F64)).to(**self.like)

    def to(self, *tensors: torch.Tensor):
        """The tensors in the case's dtype and device (one tensor, or a tuple)."""
        out = tuple(t.to(**self.like) for t in tensors)
        return out if len(out) > 1 else out[0]

    def rounded(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (float64) rounded to the case's dtype and back: the exact value the answer receives."""
        return t.to(self.dtype).to(F64)


def random_cases(seed: int, dtypes: Iterable[torch.dtype] = (torch.float64, torch.float32)) -> list[Case]:
    """A few (generator, dtype, device) settings for a check's random trials: every dtype on the CPU,
    plus the course device when it is not the CPU (so a hard-coded ``.cpu()`` or ``.cuda()`` is caught)."""
    from coursepkg.config import device

    cases = [Case(torch.Generator().manual_seed(seed + i), dt, torch.device("cpu")) for i, dt in enumerate(dtypes)]
    try:
        dev = device()
    except ValueError:
        dev = torch.device("cpu")
    if dev.type != "cpu":
        cases.append(Case(torch.Generator().manual_seed(seed + 99), torch.float32, torch.empty(0, device=dev).device))
    return cases


# --------------------------------------------------------------------------------------------------
# calling the answer
# --------------------------------------------------------------------------------------------------
NOT_IMPLEMENTED = ("not implemented yet: replace `raise NotImplementedError()` in the cell marked YOUR CODE HERE "
                   "with your code, run that cell, then run this check again")


def require_callable(answer: Any, what: str = "a function") -> Callable:
    """Fail unless ``answer`` is callable (a common slip: passing ``f(x)`` instead of ``f``)."""
    if not callable(answer):
        kind = type(answer).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise CheckFailure(f"expected {what}, got {article} {kind}; pass the function itself, without calling it")
    return answer


def call(func: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call the student's function with ``args`` and ``kwargs``: whatever it raises (``SystemExit`` and
    ``KeyboardInterrupt`` included) becomes a failure that says so, and so does a change it makes in place
    to a tensor or an object it was given (also inside lists, tuples, dicts, objects' attributes and
    ``nn.Module`` parameters and buffers), a change to torch, the course package or the kit while it runs
    (monkeypatching: see :class:`_Guard`), and a result that is not what it claims to be (see
    :func:`require_honest`)."""
    before, objects = _snapshot(func, args, kwargs)
    guard = _Guard()
    try:
        out = func(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailure(NOT_IMPLEMENTED) from None
    except CheckFailure:
        raise
    except SystemExit as err:
        raise CheckFailure(f"your function called sys.exit() ({describe_exception(err)}): a function returns its "
                           "result, it never stops the kernel") from None
    except BaseException as err:  # noqa: BLE001 - KeyboardInterrupt, GeneratorExit, ... are reported too
        raise CheckFailure(f"your function raised {describe_exception(err)}") from None
    finally:
        guard.verify()                     # first: a patched library could hide every other failure
    for label, tensor, copy in before:
        if not _unchanged(tensor, copy):
            raise CheckFailure(f"your function changed its input {label} in place (an in-place operation such as "
                               "x += 1, x.add_(...), x[...] = ..., or .data): the caller's tensors must stay as they "
                               "were; work on a copy (x = x.clone()) or with out-of-place operations (x = x + 1)")
    for label, obj, attrs in objects:
        now = vars(obj)
        changed = sorted(k for k in attrs.keys() | now.keys() if now.get(k, _MISSING) is not attrs.get(k, _MISSING))
        if changed:
            raise CheckFailure(f"your function changed {label}.{changed[0]}, an object the check gave it: use the "
                               "objects you are given as they are")
    require_honest(out)
    return out


_MISSING = object()
HUGE = 10**8   # elements: no exercise's result comes near


def require_honest(out: Any, what: str = "your result", depth: int = 0) -> None:
    """Fail unless ``out`` (and the items of a tuple or list, two levels deep) is what it claims to be: no
    object that claims to be a tensor without being one, no subclass of ``torch.Tensor`` (its
    ``__torch_function__`` could answer every comparison the check makes), no tuple or list that changes how
    it is iterated or indexed, no tensor of more than :data:`HUGE` elements."""
    kind = type(out)
    if isinstance(out, torch.Tensor) != issubclass(kind, torch.Tensor):
        raise CheckFailure(f"{what} is a {kind.__name__} that claims to be a {out.__class__.__name__} without being "
                           "one: return a torch.Tensor")
    if issubclass(kind, torch.Tensor):
        if kind not in (torch.Tensor, nn.Parameter):
            raise CheckFailure(f"{what} is a {kind.__name__}, a subclass of torch.Tensor: return a plain torch.Tensor "
                               "(computed with torch operations)")
        if out.numel() > HUGE:
            raise CheckFailure(f"{what} has {out.numel()} elements (shape {list(out.shape)}): far more than this "
                               "exercise's result")
        return
    if isinstance(out, (tuple, list)) and depth < 2:
        base = tuple if isinstance(out, tuple) else list
        if any(k in vars(c) for c in kind.__mro__ if c not in (tuple, list, object)
               for k in ("__iter__", "__getitem__", "__len__")):
            raise CheckFailure(f"{what} is a {kind.__name__} that changes how a {base.__name__} is read: return a "
                               f"plain {base.__name__}")
        for i, item in enumerate(base.__iter__(out)):
            require_honest(item, f"{what}[{i}]", depth + 1)


class _Guard:
    """The namespaces an answer must leave as it found them, saved when it is called and compared when it
    returns: torch (its functions and ``torch.Tensor``'s methods), ``builtins``, ``math``, every module of the
    course package with the modules and classes it uses, the code and defaults of the package's functions,
    the registry and the registered checks. A change is put back, and fails the answer: a check is only as
    honest as the functions it calls (``torch.allclose``, :func:`compare`, the references)."""

    def __init__(self) -> None:
        self.saved = [(ns, self.state(ns)) for ns in _guarded()]

    @staticmethod
    def state(ns: Any) -> dict:
        if isinstance(ns, dict):
            return dict(ns)
        if inspect.isfunction(ns):
            return {"__code__": ns.__code__, "__defaults__": ns.__defaults__, "__kwdefaults__": ns.__kwdefaults__,
                    **vars(ns)}
        return dict(vars(ns))

    def verify(self) -> None:
        changed = []
        for ns, before in self.saved:
            now = self.state(ns)
            for k in before.keys() | now.keys():
                old, new = before.get(k, _MISSING), now.get(k, _MISSING)
                if old is new or _harmless(ns, k, old, new):
                    continue
                changed.append(f"{_label(ns)}.{k}")
                _put_back(ns, k, old)
        if changed:
            raise CheckFailure(f"your function changed {', '.join(sorted(changed)[:3])} while it ran (monkeypatching "
                               "torch, the course package or the check): it was put back. A function computes its "
                               "result from its inputs and leaves the libraries alone")


def _harmless(ns: Any, key: str, old: Any, new: Any) -> bool:
    """A change that alters nothing a check calls: a submodule imported, a module's dunder bookkeeping
    (``__warningregistry__``), or torch's own first import of ``torch._dynamo`` (which a first use of
    forward-mode AD triggers), which wraps ``torch.manual_seed``."""
    if ns is torch and key == "manual_seed":
        import sys

        return "torch._dynamo" in sys.modules and getattr(new, "__wrapped__", None) is old
    return old is _MISSING and (inspect.ismodule(new) or (inspect.ismodule(ns) and key.startswith("__")
                                                          and key.endswith("__")))


def _put_back(ns: Any, key: str, old: Any) -> None:
    if isinstance(ns, dict) or inspect.ismodule(ns) or not isinstance(ns, type) and not inspect.isfunction(ns):
        d = ns if isinstance(ns, dict) else vars(ns)
        if old is _MISSING:
            d.pop(key, None)
        else:
            d[key] = old
    elif old is _MISSING:
        delattr(ns, key)
    else:
        setattr(ns, key, old)


def _label(ns: Any) -> str:
    if isinstance(ns, dict):
        return "the check registry"
    if inspect.ismodule(ns):
        return ns.__name__
    if isinstance(ns, type) or inspect.isfunction(ns):
        return f"{ns.__module__}.{ns.__qualname__}"
    return f"the check {getattr(ns, 'exercise_id', type(ns).__name__)}"


def _guarded() -> list:
    """What :class:`_Guard` watches (see there), each once."""
    import builtins
    import sys

    from coursepkg.grading import core

    spaces: dict[int, Any] = {}

    def add(ns: Any) -> None:
        spaces.setdefault(id(ns), ns)

    for ns in (torch, builtins, math, nn.functional, torch.linalg, torch.special, torch.autograd, core._REGISTRY,
               *torch.Tensor.__mro__[:-2]):
        add(ns)
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "coursepkg" or name.startswith("coursepkg.")):
            continue
        add(module)
        for value in list(vars(module).values()):
            if inspect.ismodule(value):
                add(value)
            elif isinstance(value, type):
                for c in value.__mro__[:-1]:
                    if c.__module__ != "builtins":
                        add(c)
                        if c.__module__.startswith("coursepkg"):
                            for f in list(vars(c).values()):
                                if inspect.isfunction(f):
                                    add(f)
            elif inspect.isfunction(value) and value.__module__ and value.__module__.startswith("coursepkg"):
                add(value)
    for chk in list(core._REGISTRY.values()):
        if hasattr(chk.func, "__dict__") and not inspect.isfunction(chk.func):
            add(chk.func)
    return list(spaces.values())


def _argument_labels(func: Callable, n: int) -> list[str]:
    try:
        params = [p.name for p in inspect.signature(func).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [f"`{params[i]}`" if i < len(params) else f"number {i + 1}" for i in range(n)]


def _snapshot(func: Callable, args: tuple, kwargs: dict):
    """``(label, tensor, copy)`` for every tensor the answer receives, and ``(label, object, its attributes)``
    for every plain object (a function of the check's, say), whose attributes must not be rebound."""
    out: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    objects: list[tuple[str, Any, dict]] = []

    def walk(obj: Any, label: str, depth: int) -> None:
        if isinstance(obj, torch.Tensor):
            out.append((label, obj, obj.detach().clone()))
        elif isinstance(obj, nn.Module):
            for name, t in itertools.chain(obj.named_parameters(), obj.named_buffers()):
                out.append((f"{label} (its {name})", t, t.detach().clone()))
        elif depth < 3 and isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                walk(item, f"{label}[{i}]", depth + 1)
        elif depth < 3 and isinstance(obj, dict):
            for k, item in obj.items():
                walk(item, f"{label}[{k!r}]", depth + 1)
        elif isinstance(obj, Recorder):                       # its own record changes; what it calls must not
            walk(obj.target, label, depth)
        elif depth < 3 and hasattr(obj, "__dict__") and not (inspect.ismodule(obj) or isinstance(obj, type)
                                                             or inspect.isroutine(obj)):
            objects.append((label, obj, dict(vars(obj))))
            for k, item in vars(obj).items():
                walk(item, f"{label}.{k}", depth + 1)

    for label, a in zip(_argument_labels(func, len(args)), args, strict=True):
        walk(a, label, 0)
    for k, a in kwargs.items():
        walk(a, f"`{k}`", 0)
    return out, objects


def _unchanged(t: torch.Tensor, copy: torch.Tensor) -> bool:
    if t.shape != copy.shape or t.dtype != copy.dtype:
        return False
    now = t.detach()
    if torch.equal(now, copy):
        return True
    return bool(now.is_floating_point() and ((now == copy) | (now.isnan() & copy.isnan())).all())


def explaining_errors(func: Callable, errors: Sequence[tuple[str, str, str]]) -> Callable:
    """``func``, except that an exception whose message contains the text of one of ``errors``
    (``(text, name, hint)``) becomes that :class:`Mistake`: ``F.binary_cross_entropy`` given logits raises
    "... should be between 0 and 1", which is the mistake "logits taken for probabilities". Call the result
    with :func:`call` as the answer itself (it keeps ``func``'s signature, so in-place changes are still named
    by argument); any other exception goes through unchanged."""
    import functools

    @functools.wraps(func)
    def explained(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - only the listed messages are translated; the rest re-raised
            text = str(err)
            for words, name, hint in errors:
                if words in text:
                    raise Mistake(name, hint) from None
            raise

    return explained


# --------------------------------------------------------------------------------------------------
# the structure and value of a result
# --------------------------------------------------------------------------------------------------
def describe_inputs(**inputs: Any) -> str:
    """``x: shape [5, 3], float64, k=8``: the inputs a message is about."""
    parts = []
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            parts.append(f"{k}: shape {list(v.shape)}, {_dtype_name(v.dtype)}")
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


def require_like(got: Any, shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str,
                 what: str = "the result", inputs: str = "",
                 shape_hints: Sequence[tuple[Sequence[int], str]] = ()) -> torch.Tensor:
    """Fail unless ``got`` is a floating-point tensor of ``shape``, ``dtype`` and ``device``. ``shape_hints``
    holds ``(shape, hint)``: a wrong shape that is one of them gets that hint (a few are known already)."""
    at = f" (for inputs {inputs})" if inputs else ""
    require_tensor(got, what)
    shape = tuple(shape)
    if tuple(got.shape) != shape:
        hint = next((f": {h}" for s, h in shape_hints if tuple(got.shape) == tuple(s)), "")
        if not hint and got.numel() == 1 and math.prod(shape) > 1:
            hint = ": did you sum or average over the batch dimension too? Keep one value per batch element"
        elif not hint and got.dim() == len(shape) + 1 and tuple(got.shape[:-1]) == shape:
            hint = ": did you forget to sum over the last (event) dimension?"
        raise CheckFailure(f"{what} has shape {list(got.shape)}, expected {list(shape)}{at}{hint}")
    device = torch.empty(0, device=device).device                  # "cuda" -> "cuda:0", as tensors report it
    if got.device != device:
        raise CheckFailure(f"{what} is on device {got.device}, but the inputs were on {device}: "
                           f"create new tensors with device=x.device (or use torch.*_like)")
    if got.dtype != dtype:
        raise CheckFailure(f"{what} has dtype {_dtype_name(got.dtype)}, expected {_dtype_name(dtype)} (the inputs' "
                           f"dtype){at}: avoid hard-coded dtypes; build constants from the inputs")
    if not got.is_floating_point():
        raise CheckFailure(f"{what} should be a floating-point tensor")
    return got


def compare(got: Any, expected: torch.Tensor, *, what: str = "the result", inputs: str = "",
            rtol: float = 1e-4, atol: float = 1e-6,
            mistakes: Sequence[tuple[str, str, torch.Tensor | None]] = (),
            shape_hints: Sequence[tuple[Sequence[int], str]] = ()) -> None:
    """Fail unless ``got`` is a tensor like ``expected`` (type, shape, dtype, device, finite, value).

    ``mistakes`` is a catalogue of ``(name, hint, value_that_mistake_gives)``: when ``got`` is wrong and
    matches one of them, the failure names it (filter it with :func:`distinct` first). Generic slips (a
    flipped sign, a factor of 2) are recognised too.
    """
    at = f" (for inputs {inputs})" if inputs else ""
    require_tensor(got, what)
    if got.shape != expected.shape or got.device != expected.device or got.dtype != expected.dtype:
        require_like(got, expected.shape, dtype=expected.dtype, device=expected.device, what=what, inputs=inputs,
                     shape_hints=shape_hints)
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
    err = (got.detach().double() - expected.double()).abs().max().item()
    raise CheckFailure(f"{what} differs from the reference{at}: largest absolute error {err:.3g}")


def distinct(mistakes: Iterable[tuple[str, str, torch.Tensor | None]], reference: torch.Tensor,
             rtol: float, atol: float) -> list[tuple[str, str, torch.Tensor]]:
    """The mistakes whose value differs clearly (4 times :func:`compare`'s matching tolerance) from the
    reference on these inputs: with one dimension a mean over dimensions *is* the sum, for example, and a
    correct answer must never be taken for a mistake. Entries with value None are dropped."""
    rtol, atol = 4 * max(rtol, 1e-4), 4 * max(atol, 1e-6)
    return [m for m in mistakes if m[2] is not None and not close(m[2], reference, rtol, atol, equal_nan=True)]


def unpack(got: Any, n: int, expected: str, *,
           refuse: Sequence[tuple[type, str | Callable[[Any], str]]] = ()) -> tuple:
    """``got`` as a tuple of ``n`` items, or a failure ``"expected {expected}, got ..."`` (``expected`` is
    e.g. ``"a pair (estimate, stderr)"``). ``refuse`` holds ``(type, what to say)`` for typical wrong
    returns (an object where its tensors were asked for); what to say may be a function of ``got``."""
    for kind, say in refuse:
        if isinstance(got, kind):
            raise CheckFailure(f"expected {expected}, got {say(got) if callable(say) else say}")
    if got is None:
        raise CheckFailure(f"expected {expected}, got None: did you forget a `return`?")
    if isinstance(got, torch.Tensor):
        raise CheckFailure(f"expected {expected}, got a single tensor of shape {list(got.shape)}: return all {n} "
                           "results, in this order")
    if not isinstance(got, (tuple, list)) or len(got) != n:
        kind = type(got).__name__ + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
        raise CheckFailure(f"expected {expected}, got a {kind}")
    return tuple(got)


def _weights(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Fixed, non-zero, varied weights of a test loss ``(result * w).sum()``."""
    n = math.prod(shape)
    w = 1.0 + 0.5 * torch.sin(torch.arange(n, dtype=F64) * 1.7)
    return w.reshape(tuple(shape)).to(dtype=like.dtype, device=like.device)


def compare_gradients(got: torch.Tensor, leaves: Mapping[str, torch.Tensor],
                      reference: Callable[[dict[str, torch.Tensor]], torch.Tensor], *, what: str = "the result",
                      inputs: str = "", detached: tuple[str, str] | None = None,
                      rtol: float | None = None, atol: float | None = None) -> None:
    """Fail unless the gradient of ``(got * w).sum()`` with respect to each of ``leaves`` (name -> the leaf
    tensor the answer was given) equals the reference's. ``reference(leaves64)`` recomputes the reference
    output from float64 CPU copies of the leaves (the other inputs are the check's to close over); it runs
    here, after the answer. ``detached``: the (name, hint) of an output with no graph at all."""
    detached = detached or (f"{what} is detached: no gradient",
                            "compute it with torch operations on the inputs (no .detach(), .item(), .data, numpy or "
                            "torch.no_grad()), so that autograd can differentiate it")
    if not got.requires_grad:
        raise Mistake(*detached)
    names = list(leaves)
    w = _weights(got.shape, got)
    try:
        grads = torch.autograd.grad((got * w).sum(), [leaves[k] for k in names], allow_unused=True)
    except RuntimeError as err:
        raise CheckFailure(f"differentiating {what} with respect to {', '.join(names)} failed: {_short(err)}") from None
    leaves64 = {k: leaves[k].detach().to(F64).cpu().clone().requires_grad_(True) for k in names}
    ref = reference(leaves64)
    expected = torch.autograd.grad((ref * w.to(F64).cpu()).sum(), [leaves64[k] for k in names], allow_unused=True)
    r, a = tolerance(got.dtype)
    rtol, atol = (10 * r if rtol is None else rtol), (10 * a if atol is None else atol)
    for name, g, e in zip(names, grads, expected, strict=True):
        e = torch.zeros_like(leaves64[name]) if e is None else e
        if g is not None and not bool(torch.isfinite(g).all()) and bool(torch.isfinite(e).all()):
            raise Mistake(f"the gradient with respect to {name} is NaN or inf", f"{what} has the right value, but "
                          "backpropagation through it gives NaN: a branch torch.where does not select still sends "
                          "its gradient (times 0, and 0 * NaN is NaN), so compute every branch on safe values "
                          "(no sqrt or log of a negative number, no division by 0)")
        if (g is None or not bool(g.abs().gt(0).any())) and bool(e.abs().gt(0).any()):
            raise Mistake(f"no gradient reaches {name}", f"{what} must be computed from {name} with torch operations, "
                          "so that autograd can differentiate through it")
        g = torch.zeros_like(leaves[name]) if g is None else g
        compare(g, e.to(dtype=g.dtype, device=g.device), what=f"the gradient of {what} with respect to {name}",
                inputs=inputs, rtol=rtol, atol=atol + atol * e.abs().max().item())


# --------------------------------------------------------------------------------------------------
# statistics of random answers
# --------------------------------------------------------------------------------------------------
def within(got: torch.Tensor, value: torch.Tensor, tol: torch.Tensor | float) -> bool:
    """Every ``|got - value| <= tol`` (elementwise), False (not an error) with NaN."""
    return bool(((got - value).abs() <= tol).all())


def ztest(got: torch.Tensor, expected: torch.Tensor, stderr: torch.Tensor | float, *, n_sigma: float = N_SIGMA,
          atol: torch.Tensor | float = 0.0) -> bool:
    """Whether every entry of an estimate ``got`` lies within ``n_sigma`` standard errors (plus ``atol``, the
    round-off) of ``expected``."""
    return within(got, expected, n_sigma * stderr + atol)


def closest_mistake(got: torch.Tensor, candidates: Iterable[tuple[str, str, torch.Tensor, torch.Tensor]], *,
                    reference: torch.Tensor | None = None, reference_tol: torch.Tensor | float = 0.0) -> Mistake | None:
    """The :class:`Mistake` that explains a rejected random answer best, or None.

    ``candidates`` holds ``(name, hint, value, tol)``: the answer is compatible with a mistake when every
    entry is within ``tol`` of its value; of several, the closest in units of its tolerance wins. A mistake
    within ``reference_tol`` of ``reference`` is never named (it cannot be told from a correct answer)."""
    best = None
    for name, hint, value, tol in candidates:
        if value is None or (reference is not None and within(value, reference, reference_tol)) \
                or not within(got, value, tol):
            continue
        score = (((got - value) / tol) ** 2).sum().item()
        if best is None or score < best[0]:
            best = (score, name, hint)
    return None if best is None else Mistake(best[1], best[2])


def statistical_failure(what: str, got: torch.Tensor, expected: torch.Tensor, stderr: torch.Tensor, *,
                        inputs: str = "", advice: str = "", expected_name: str = "the expected value") -> CheckFailure:
    """The failure of an estimate too far from ``expected``: it quotes the worst entry, its value, the expected
    one and how many standard errors apart they are (raise it: ``raise statistical_failure(...)``)."""
    got, expected = got.detach().to(F64).cpu().reshape(-1), expected.to(F64).cpu().reshape(-1)
    se = torch.as_tensor(stderr, dtype=F64).cpu().expand_as(expected).reshape(-1).clamp_min(1e-300)
    err = (got - expected).abs()
    i = int(torch.argmax(torch.nan_to_num(err / se, nan=math.inf)))
    at = f" (for inputs {inputs})" if inputs else ""
    return CheckFailure(f"{what} differs from {expected_name} by more than Monte Carlo error{at}: "
                        f"{fmt(got[i].item())} instead of {fmt(expected[i].item())}, "
                        f"{fmt(err[i].item() / se[i].item())} standard errors away" + (f"; {advice}" if advice else ""))


def _limit(k: int, n_sigma: float) -> float:
    """A z-limit for the largest of ``k`` tests: ``n_sigma`` for a few, a little more for many."""
    return max(n_sigma, math.sqrt(2 * math.log(max(k, 1))) + 3.0)


def as_rows(u: torch.Tensor) -> torch.Tensor:
    """``u`` as a float64 CPU matrix ``(n, m)``: one row per draw (its first dimension), one column per coordinate."""
    u = u.detach().to(F64).cpu()
    return u.reshape(u.shape[0], -1) if u.dim() > 0 else u.reshape(1, 1)


def ks_statistic(values: torch.Tensor, cdf: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """The Kolmogorov-Smirnov distance between the empirical distribution of ``values`` and ``cdf``."""
    x = values.reshape(-1).to(F64).sort().values
    n = x.numel()
    f = cdf(x)
    i = torch.arange(1, n + 1, dtype=F64)
    return max((i / n - f).max().item(), (f - (i - 1) / n).max().item())


def ks_test(values: torch.Tensor, cdf: Callable[[torch.Tensor], torch.Tensor], *, p: float = 1e-6) -> bool:
    """Whether ``values`` are compatible with ``cdf`` (the Kolmogorov-Smirnov test at level ``p``)."""
    n = values.numel()
    if n < 2:
        return True
    root = math.sqrt(n)
    return ks_statistic(values, cdf) * (root + 0.12 + 0.11 / root) <= math.sqrt(-0.5 * math.log(p / 2))


def normal_test(u: torch.Tensor, *, n_sigma: float = N_SIGMA) -> str | None:
    """None when the rows of ``u`` (``(n, m)``; see :func:`as_rows`) look like independent standard normal
    draws; else what failed: ``"finite"``, ``"mean"`` or ``"variance"`` (per column, then pooled, within
    ``n_sigma`` standard errors), ``"kurtosis"``, or ``"shape"`` (a Kolmogorov-Smirnov test of the pooled
    values). Scaled Student-t, uniform or two-point noise with mean 0 and variance 1 fails the last two."""
    u = as_rows(u)
    n, m = u.shape
    if not bool(torch.isfinite(u).all()):
        return "finite"
    if n < 2:
        return "mean"
    z = _limit(m, n_sigma)
    if not bool((u.mean(0).abs() * math.sqrt(n) <= z).all()):
        return "mean"
    if not bool(((u.var(0) - 1).abs() <= z * math.sqrt(2.0 / (n - 1))).all()):
        return "variance"
    flat = u.reshape(-1)
    k = flat.numel()
    if abs(flat.mean().item()) * math.sqrt(k) > n_sigma:
        return "mean"
    var = flat.var().item()
    if abs(var - 1) > n_sigma * math.sqrt(2.0 / (k - 1)):
        return "variance"
    if k >= 100:
        kurt = (((flat - flat.mean()) ** 4).mean() / var**2).item() - 3.0
        if abs(kurt) > n_sigma * math.sqrt(24.0 / k):
            return "kurtosis"
    if not ks_test(flat, torch.special.ndtr):
        return "shape"
    return None


def uniform_test(u: torch.Tensor, low: float = 0.0, high: float = 1.0, *, n_sigma: float = N_SIGMA) -> str | None:
    """None when the values of ``u`` look like independent uniform draws on ``[low, high)``; else what failed:
    ``"finite"``, ``"range"``, ``"mean"``, ``"variance"`` or ``"shape"`` (Kolmogorov-Smirnov)."""
    flat = u.detach().to(F64).cpu().reshape(-1)
    k = flat.numel()
    if not bool(torch.isfinite(flat).all()):
        return "finite"
    width = high - low
    if k < 2 or flat.min().item() < low - 1e-6 * width or flat.max().item() > high + 1e-6 * width:
        return "range"
    if abs(flat.mean().item() - (low + high) / 2) > n_sigma * width * math.sqrt(1 / 12 / k):
        return "mean"
    if abs(flat.var().item() - width**2 / 12) > n_sigma * width**2 * math.sqrt(1 / 180 / k) + 1e-12:
        return "variance"
    if not ks_test(flat, lambda x: ((x - low) / width).clamp(0, 1)):
        return "shape"
    return None


def looks_uniform(u: torch.Tensor) -> bool:
    """Whether ``u`` looks like uniform draws after some affine map (``torch.rand``, even rescaled): mapped
    onto [0, 1] by its own minimum and maximum, it passes :func:`uniform_test`."""
    flat = u.detach().to(F64).cpu().reshape(-1)
    if flat.numel() < 100 or not bool(torch.isfinite(flat).all()):
        return False
    lo, hi = flat.min().item(), flat.max().item()
    return hi > lo and uniform_test((flat - lo) / (hi - lo)) is None


def rows_identical(u: torch.Tensor) -> bool:
    """Every row of ``u`` (``(n, m)``) equals the first, to round-off: the same noise for every draw."""
    u = as_rows(u)
    return u.shape[0] > 1 and close(u, u[:1].expand_as(u), 1e-4, 1e-5)


def independence_test(u: torch.Tensor, *, n_sigma: float = N_SIGMA) -> str | None:
    """None when the rows (draws) and columns (coordinates) of ``u`` (``(n, m)``, standardised) look
    independent; else ``"constant"`` (one number everywhere), ``"same rows"`` (every row the same),
    ``"repeated rows"`` (two rows identical, with m >= 2), ``"same columns"`` (every column the same),
    ``"correlated columns"`` (a correlation between two columns beyond chance) or ``"correlated rows"`` (a
    correlation between consecutive rows beyond chance)."""
    u = as_rows(u)
    n, m = u.shape
    if u.numel() > 1 and close(u, u.reshape(-1)[:1].expand_as(u), 1e-4, 1e-5):
        return "constant"
    if rows_identical(u):
        return "same rows"
    if m > 1 and n > 1 and torch.unique(u, dim=0).shape[0] < n:
        return "repeated rows"
    if m > 1 and all(close(u[:, 0], u[:, j], 1e-4, 1e-5) for j in range(1, m)):
        return "same columns"
    c = u - u.mean(0)
    sd = c.pow(2).mean(0).sqrt()
    if n > 3 and bool((sd > 0).all()):
        if m > 1:
            cols = (c / sd)[:, :64]
            r = (cols.T @ cols) / n
            k = cols.shape[1]
            off = (r - torch.eye(k, dtype=F64)).abs().max().item()
            if off * math.sqrt(n) > _limit(k * (k - 1) // 2, n_sigma):
                return "correlated columns"
        s = c / sd
        r1 = (s[:-1] * s[1:]).mean().item()
        if abs(r1) * math.sqrt((n - 1) * m) > n_sigma:
            return "correlated rows"
    return None


def fresh(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Whether two outputs of a random answer for the same inputs differ (in more than half their entries):
    False for an answer that reseeds a generator, or reuses stored noise."""
    a, b = first.detach().to(F64).cpu(), second.detach().to(F64).cpu()
    if a.shape != b.shape:
        return True
    return bool((a == b).to(F64).mean().item() <= 0.5)


def require_standard_normal(u: torch.Tensor, *, what: str = "the noise", inputs: str = "",
                            messages: Mapping[str, tuple[str, str]] | None = None,
                            n_sigma: float = N_SIGMA) -> None:
    """Fail unless the rows of ``u`` (``(n, m)``, see :func:`as_rows`) look like independent standard normal
    draws: :func:`independence_test` first (a code it returns names the :class:`Mistake` of ``messages``, by
    default :data:`RANDOM_MESSAGES`), then :func:`normal_test` (uniform noise is named as such). ``u`` is the
    noise recovered from something the answer made, e.g. ``(z - mu) / std`` of the latents a
    :class:`Recorder` saw; ``what`` names it in the message of a wrong distribution."""
    messages = {**RANDOM_MESSAGES, **(messages or {})}
    u = as_rows(u)
    at = f" (for inputs {inputs})" if inputs else ""
    if not bool(torch.isfinite(u).all()):
        raise CheckFailure(f"{what} contains NaN or inf{at}")
    dependence = independence_test(u, n_sigma=n_sigma)
    if dependence is not None:
        raise Mistake(*messages[dependence])
    failed = normal_test(u, n_sigma=n_sigma)
    if failed is None:
        return
    if looks_uniform(u):
        raise Mistake(*messages["uniform"])
    raise CheckFailure(f"{what} does not look like standard normal draws{at}: it has mean {fmt(u.mean().item())} and "
                       f"standard deviation {fmt(u.std().item())} where 0 and 1 are expected, and its {failed} is off "
                       "by more than chance allows")


def mirrored_rows(u: torch.Tensor, *, rtol: float = 1e-4, atol: float = 1e-6, fraction: float = 0.01) -> bool:
    """Whether many rows of ``u`` (``(n, m)``, standardised noise; see :func:`as_rows`) are, to round-off, the
    negatives of other rows: antithetic noise (``torch.cat([e, -e])``), whose rows each look right but are
    not independent draws, and which :func:`independence_test` does not see (ask it first: noise with identical
    columns is one column, whose values pair up by chance). At least ``fraction`` of the rows (and 2) must pair
    up, so that chance near-pairs never count; with one column it is always False."""
    u = as_rows(u)
    n, m = u.shape
    if m < 2 or n < 4 or not bool(torch.isfinite(u).all()):
        return False
    negative = u[:, 0] < 0
    canonical = torch.where(negative[:, None], -u, u)        # each row and its negative become the same row
    order = torch.argsort(canonical[:, 0])
    c, s = canonical[order], negative[order]
    pairs = ((c[1:] - c[:-1]).abs() <= atol + rtol * c[1:].abs()).all(1) & (s[1:] != s[:-1])
    return int(pairs.sum()) >= max(2, math.ceil(fraction * n))


# --------------------------------------------------------------------------------------------------
# recording what the answer calls
# --------------------------------------------------------------------------------------------------
def _functorch_wrapped(t: torch.Tensor) -> bool:
    try:
        return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))
    except (AttributeError, RuntimeError):  # pragma: no cover - another torch
        return False


def _unwrap_functorch(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A detached CPU copy of the plain tensor under every ``torch.func`` wrapper of ``t``, and whether one of the
    wrappers tracked gradients (``grad``, ``jacrev``, ``jvp``, ...).

    Why: an answer that evaluates a recorded function inside a transform hands it wrapped tensors, which cannot be
    copied; unrecorded, its samples would go untested. Each vmap level's batch dimension is kept and moved to the
    front (outer levels first), so a ``vmap`` over samples records them all at once, as if the function had been
    called on the whole batch; a gradient-tracking wrapper is peeled to its value. The permutation and the copy run
    with functorch disabled, so that no transform wraps the copy. This reads the *private* ``torch._C._functorch``
    API (as of torch 2.13): it raises on anything unexpected, and :class:`Recorder` then falls back to not
    recording the call."""
    ft = torch._C._functorch
    labels = list(range(t.dim()))           # per dim of the current tensor: a logical dim (>= 0) or -(vmap level)
    tracked = False
    while ft.is_functorch_wrapped_tensor(t):
        if ft.is_batchedtensor(t):
            bdim, level = ft.maybe_get_bdim(t), ft.maybe_get_level(t)
            if not 0 <= bdim <= len(labels) or level < 1:
                raise RuntimeError(f"unexpected BatchedTensor (bdim {bdim}, level {level})")
            labels.insert(bdim, -level)
        elif ft.is_gradtrackingtensor(t):
            tracked = True
        else:                                # e.g. a functionalized tensor
            raise RuntimeError("unknown functorch wrapper")
        t = ft.get_unwrapped(t)
    if t.dim() != len(labels):
        raise RuntimeError(f"unwrapped to {t.dim()} dims, expected {len(labels)}")
    order = sorted(range(len(labels)), key=lambda i: (labels[i] >= 0, abs(labels[i])))  # vmap levels, outer first
    with torch._C._DisableFuncTorch():
        return t.detach().permute(order).cpu().clone(), tracked or t.requires_grad


@dataclass
class Call:
    """One recorded call: its arguments with every tensor replaced by a detached CPU copy, and, per
    positional argument, whether it was a tensor that required grad."""

    args: tuple
    kwargs: dict
    requires_grad: tuple[bool, ...]


class Recorder:
    """A function handed to the answer that records what it is called with, then calls ``target``.

    ``Recorder(f)`` wraps a callable; ``Recorder.on_module(module)`` records the inputs of a module's
    ``forward`` (the module itself is handed to the answer, so it stays an ``nn.Module``). ``calls`` lists
    the :class:`Call` s. A call from inside a ``torch.func`` transform is recorded unwrapped (see
    :func:`_unwrap_functorch`: a ``vmap`` over samples records the whole batch, a gradient-tracking argument counts
    as requiring grad); ``wrapped`` is True when such a call could not be unwrapped, and so was not recorded.
    ``rows(arg)`` stacks one argument's rows.
    """

    def __init__(self, target: Callable, *, name: str | None = None):
        self.target = target
        self.calls: list[Call] = []
        self.wrapped = False
        self.__name__ = name or getattr(target, "__name__", type(target).__name__)

    @classmethod
    def on_module(cls, module: nn.Module) -> Recorder:
        rec = cls(module, name=type(module).__name__)

        def hook(_module, args, kwargs):
            rec.record(args, kwargs)

        module.register_forward_pre_hook(hook, with_kwargs=True)
        return rec

    def __repr__(self) -> str:
        return f"<{self.__name__}, recorded by the check>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.record(args, kwargs)
        return self.target(*args, **kwargs)

    def reset(self) -> None:
        self.calls, self.wrapped = [], False

    def record(self, args: tuple, kwargs: dict) -> None:
        def copy(a):
            if not isinstance(a, torch.Tensor):
                return a, False
            try:
                return _unwrap_functorch(a)
            except Exception:                # the private functorch API changed, or a wrapper it does not know
                if _functorch_wrapped(a):
                    raise
                return a.detach().cpu().clone(), a.requires_grad     # a plain tensor is copied all the same

        try:
            copies = [copy(a) for a in args]
            kwargs_copy = {k: copy(v)[0] for k, v in kwargs.items()}
        except Exception:                    # a wrapped tensor that cannot be unwrapped: this call goes unrecorded
            self.wrapped = True
            return
        self.calls.append(Call(tuple(c for c, _ in copies), kwargs_copy, tuple(grad for _, grad in copies)))

    def rows(self, arg: int | str = 0, *, dedupe: bool = True) -> torch.Tensor | None:
        """Argument ``arg`` (a position or a keyword) of every call, as float64 rows ``(total, ...)``
        concatenated along dim 0 (a batch passed twice, identically, counts once with ``dedupe``); None
        when a call could not be recorded (``wrapped``); ``(0,)`` when there were no calls."""
        if self.wrapped:
            return None
        seen, out = set(), []
        for c in self.calls:
            a = c.kwargs.get(arg) if isinstance(arg, str) else (c.args[arg] if arg < len(c.args) else None)
            if not isinstance(a, torch.Tensor):
                continue
            a = a.to(F64).reshape(-1, *a.shape[1:]) if a.dim() > 0 else a.to(F64).reshape(1)
            key = (tuple(a.shape), a.numpy().tobytes())
            if dedupe and key in seen:
                continue
            seen.add(key)
            out.append(a)
        if not out:
            return torch.zeros(0, dtype=F64)
        try:
            return torch.cat(out)
        except RuntimeError:
            raise CheckFailure(f"{self.__name__} was called with arguments of different shapes: "
                               f"{sorted({tuple(o.shape) for o in out})}") from None


# --------------------------------------------------------------------------------------------------
# combinations of slips of a loss built from parts
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One way of writing one aspect of a loss: ``key`` (what the check's code reads), and, for a slip, its
    ``name`` and ``hint``. The first option of each aspect is the right one."""

    key: str
    name: str | None = None
    hint: str | None = None


def slip_combinations(aspects: Mapping[str, Sequence[Option]], max_slips: int) -> Iterator[dict[str, str]]:
    """Every choice (aspect -> option key) with 1 to ``max_slips`` slips, fewest slips first."""
    names = list(aspects)
    for s in range(1, max_slips + 1):
        for chosen in itertools.combinations(names, s):
            for keys in itertools.product(*[[o.key for o in aspects[a][1:]] for a in chosen]):
                choice = {a: aspects[a][0].key for a in names}
                choice.update(dict(zip(chosen, keys, strict=True)))
                yield choice


def find_slips(aspects: Mapping[str, Sequence[Option]], explains: Callable[[dict[str, str]], bool],
               max_slips: int = 3) -> Mistake | None:
    """The :class:`Mistake` of the simplest combination of slips for which ``explains(choice)`` is True (its
    names joined by ", and ", its hints without repeats), or None."""
    for choice in slip_combinations(aspects, max_slips):
        if explains(choice):
            names: list[str] = []
            hints: list[str] = []
            for a, key in choice.items():
                opt = next(o for o in aspects[a] if o.key == key)
                if key == aspects[a][0].key:
                    continue
                if opt.name not in names:
                    names.append(opt.name)
                hints += [h for h in (opt.hint or "").split("; ") if h and h not in hints]   # shared formulas once
            return Mistake(", and ".join(names), "; ".join(hints))
    return None


class Reduced:
    """A per-point part of a loss reduced to Python floats, ``.mean()`` and ``.sum()``: a combination of
    slips is then a few float additions (what :func:`loss_check` searches)."""

    def __init__(self, t: torch.Tensor):
        t = t.detach().to(F64)
        self._mean, self._sum = t.mean().item(), t.sum().item()

    def mean(self) -> float:
        return self._mean

    def sum(self) -> float:
        return self._sum


def matches(got: float, value: float, tol: float) -> bool:
    """``|got - value| <= tol`` for floats, NaN matching NaN and an infinity itself."""
    if math.isnan(got) or math.isnan(value):
        return math.isnan(got) and math.isnan(value)
    if math.isinf(got) or math.isinf(value):
        return got == value
    return abs(got - value) <= tol


# --------------------------------------------------------------------------------------------------
# the declarative forms
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slip:
    """A typical mistake: ``name``, ``hint``, and ``value``, a function called like the answer (with the
    inputs, detached, after the answer ran) that returns what the mistake gives, or None where it does not
    apply. ``output``: which output of a tuple answer it is about. In :func:`random_check`, ``value`` is
    called like ``noise`` and returns the noise under that mistake (sampler), or ``(mean, stderr)`` of what
    the mistake estimates (estimator)."""

    name: str
    hint: str
    value: Callable[..., Any]
    output: int = 0


@dataclass(frozen=True)
class Also:
    """A test run once, after the random trials: ``test(f)`` with ``f(*args)`` calling the answer (through
    :func:`call`); it raises :class:`CheckFailure` to fail. ``description`` ends the PASS message."""

    description: str
    test: Callable[[Callable], None]


def _copies(args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments again, as new tensors (leaves requiring grad stay so)."""
    return {k: (v.detach().clone().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v)
            for k, v in args.items()}


class _Form:
    """What the three forms share: the trials, calling the answer, its inputs."""

    def __init__(self, exercise_id, title, *, solution, inputs, specs, seed, dtypes, keywords, describe, grad):
        if not callable(inputs):
            raise TypeError(f"{exercise_id}: inputs must be a function (case, spec) -> dict of arguments")
        if solution is None:
            raise ValueError(f"{exercise_id}: solution= is required (a correct answer, for the contract test)")
        self.exercise_id, self.title, self.solution = exercise_id, title, solution
        self.inputs, self.specs, self.seed, self.dtypes = inputs, list(specs), seed, tuple(dtypes)
        self.keywords, self.describe, self.grad = tuple(keywords), describe, tuple(grad)
        register(exercise_id, title, solution=solution)(self)

    def trials(self) -> list[tuple[Case, Any]]:
        return [(case, spec) for case in random_cases(self.seed, self.dtypes) for spec in self.specs]

    def arguments(self, case: Case, spec: Any) -> dict[str, Any]:
        args = self.inputs(case, spec)
        if not isinstance(args, dict):
            raise TypeError(f"{self.exercise_id}: inputs(case, spec) must return a dict name -> argument")
        for name in self.grad:
            args[name] = args[name].detach().clone().requires_grad_(True)
        return args

    def split(self, args: Mapping[str, Any]) -> tuple[tuple, dict]:
        pos = tuple(v for k, v in args.items() if k not in self.keywords)
        return pos, {k: v for k, v in args.items() if k in self.keywords}

    def run(self, fn: Callable, args: Mapping[str, Any]) -> Any:
        pos, kw = self.split(args)
        return fn(*pos, **kw)

    def described(self, args: Mapping[str, Any]) -> str:
        names = self.describe or list(args)[:1]
        return describe_inputs(**{k: args[k] for k in names})

    @staticmethod
    def detached(args: Mapping[str, Any], to64: bool = False) -> dict[str, Any]:
        def d(v):
            if isinstance(v, torch.Tensor):
                v = v.detach()
                return v.to(F64).cpu() if to64 and v.is_floating_point() else v
            return v

        return {k: d(v) for k, v in args.items()}


class FunctionCheck(_Form):
    """The check of a deterministic function; see :func:`function_check`."""

    def __init__(self, exercise_id, title, *, solution, inputs, specs, seed, reference=None, mistakes=(),
                 what="the result", outputs=None, returns=None, dtypes=(torch.float64, torch.float32), keywords=(),
                 describe=None, shape_hints=(), tol=None, grad=(), detached=None, also=()):
        if grad and outputs:
            raise ValueError(f"{exercise_id}: grad= is for single-output answers")
        if outputs and not returns:
            raise ValueError(f"{exercise_id}: a tuple answer needs returns= (e.g. 'a pair (mean, var)') for messages")
        self.reference = reference or solution
        self.mistakes, self.what = tuple(mistakes), what
        self.outputs = dict(outputs) if isinstance(outputs, Mapping) else dict(enumerate(outputs or ()))
        self.returns, self.shape_hints, self.tol = returns, shape_hints, tol
        self.detached_mistake, self.also = detached, tuple(also)
        super().__init__(exercise_id, title, solution=solution, inputs=inputs, specs=specs, seed=seed, dtypes=dtypes,
                         keywords=keywords, describe=describe, grad=grad)

    def tolerance(self, case: Case) -> tuple[float, float]:
        return self.tol(case) if callable(self.tol) else (self.tol or case.tol)

    def __call__(self, answer: Any) -> str:
        f = require_callable(answer)
        trials = self.trials()
        for i, (case, spec) in enumerate(trials):
            torch.manual_seed(self.seed + i)                  # an answer that draws noise gets the same verdict
            args = self.arguments(case, spec)
            got = self.run(lambda *a, **k: call(f, *a, **k), args)
            self.judge(got, args, case)                       # everything expected is computed from here on
        also = "".join(f", and {a.description}" for a in self.also)
        for a in self.also:
            a.test(lambda *x, **k: call(f, *x, **k))
        grads = " and its gradients" if self.grad else ""
        return f"matches the reference{grads} on {len(trials)} random inputs{also}"

    def judge(self, got: Any, args: dict[str, Any], case: Case) -> None:
        rtol, atol = self.tolerance(case)
        inputs = self.described(args)
        plain = self.detached(args)
        with torch.no_grad():
            expected = self.run(self.reference, plain)
        if self.outputs:
            got = unpack(got, len(self.outputs), self.returns)
            pairs = [(got[i], expected[i], what, i) for i, what in self.outputs.items()]
        else:
            pairs = [(got, expected, self.what, 0)]
        for g, e, what, i in pairs:
            if isinstance(g, torch.Tensor) and g.shape == e.shape and g.dtype == e.dtype and g.device == e.device \
                    and close(g, e, rtol, atol):
                continue                                      # right: no mistake can match it (see distinct)
            with torch.no_grad():
                values = [(s.name, s.hint, self.run(s.value, plain)) for s in self.mistakes if s.output == i]
            compare(g, e, what=what, inputs=inputs, rtol=rtol, atol=atol, mistakes=distinct(values, e, rtol, atol),
                    shape_hints=self.shape_hints)
        if self.grad:
            def reference(leaves64):
                full = {**self.detached(args, to64=True), **leaves64}
                return self.run(self.reference, full)

            compare_gradients(got, {k: args[k] for k in self.grad}, reference, what=self.what, inputs=inputs,
                              detached=self.detached_mistake)


def function_check(exercise_id: str, title: str, *, solution: Callable, inputs: Callable[[Case, Any], dict],
                   specs: Sequence[Any] = (None,), seed: int, reference: Callable | None = None,
                   mistakes: Sequence[Slip] = (), what: str = "the result",
                   outputs: Sequence[str] | Mapping[int, str] | None = None, returns: str | None = None,
                   dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32), keywords: Sequence[str] = (),
                   describe: Sequence[str] | None = None, shape_hints: Sequence[tuple[Sequence[int], str]] = (),
                   tol: tuple[float, float] | Callable[[Case], tuple[float, float]] | None = None,
                   grad: Sequence[str] = (), detached: tuple[str, str] | None = None,
                   also: Sequence[Also] = ()) -> FunctionCheck:
    """Register the check of a deterministic function, and return it.

    - ``inputs(case, spec)`` returns the arguments, a dict name -> value in the signature's order (passed
      positionally, except the names in ``keywords``); it runs for every case of
      ``random_cases(seed, dtypes)`` and every spec of ``specs`` (shapes, say);
    - ``reference`` (default ``solution``) is called like the answer, after it, on the same inputs;
    - ``mistakes``: the :class:`Slip` s, named when the answer matches one (those too close to the
      reference on an input are left out there);
    - ``what``: the result's name in messages; for a tuple answer, ``outputs`` names every output (a mapping
      index -> name sets the order of comparison) and ``returns`` is what was expected, "a pair (mean, var)";
    - ``describe``: the inputs named in messages (the first one by default); ``shape_hints``: ``(shape,
      hint)`` for wrong shapes; ``tol``: ``(rtol, atol)`` or a function of the case (default
      :func:`tolerance` of its dtype);
    - ``grad``: inputs the result must be differentiable in: they are handed as leaves requiring grad, and
      the gradient of ``(result * w).sum()`` must equal the reference's (``detached`` names the mistake of a
      result without a graph);
    - ``also``: :class:`Also` tests run once at the end (their descriptions end the PASS message).
    """
    return FunctionCheck(exercise_id, title, solution=solution, inputs=inputs, specs=specs, seed=seed,
                         reference=reference, mistakes=mistakes, what=what, outputs=outputs, returns=returns,
                         dtypes=dtypes, keywords=keywords, describe=describe, shape_hints=shape_hints, tol=tol,
                         grad=grad, detached=detached, also=also)


RANDOM_MESSAGES: dict[str, tuple[str, str]] = {
    "constant": ("not random: the same number everywhere",
                 "draw independent noise, one number per entry (torch.randn_like)"),
    "same rows": ("the same noise for every row",
                  "draw one independent noise vector per row: the noise has the sample's full shape"),
    "repeated rows": ("some rows repeat the same noise", "draw independent noise for every row (sample)"),
    "same columns": ("the same noise for every coordinate",
                     "each coordinate needs its own noise: draw it with the sample's full shape"),
    "correlated columns": ("the noise of different coordinates is correlated",
                           "draw every coordinate's noise independently, with the sample's full shape"),
    "correlated rows": ("the noise of consecutive rows is correlated",
                        "draw every row's noise independently (do not build a row from the previous one)"),
    "same calls": ("the same noise at every call",
                   "do not reseed the generator (torch.manual_seed) or reuse stored noise inside the function: each "
                   "call draws fresh noise"),
    "uniform": ("uniform noise (torch.rand) instead of standard normal noise (torch.randn)",
                "the noise is standard *normal*: torch.randn(...) or torch.randn_like(...), not torch.rand, even "
                "rescaled"),
}


class RandomCheck(_Form):
    """The check of a random answer; see :func:`random_check`."""

    def __init__(self, exercise_id, title, *, solution, inputs, specs, seed, noise=None, estimate=None,
                 from_noise=None, reference=None, slips=(), what="the sample", dtypes=(torch.float64, torch.float32),
                 keywords=(), describe=None, shape_hints=(), n_sigma=N_SIGMA, grad=(), detached=None, then=None,
                 messages=None):
        if (noise is None) == (estimate is None):
            raise ValueError(f"{exercise_id}: give noise= (a sampler) or estimate= (an estimator), not both")
        if grad and from_noise is None:
            raise ValueError(f"{exercise_id}: grad= needs from_noise= (the reference, given the noise)")
        self.noise, self.estimate, self.from_noise = noise, estimate, from_noise
        self.reference = reference or solution
        self.slips, self.what, self.shape_hints, self.n_sigma = tuple(slips), what, shape_hints, n_sigma
        self.detached_mistake, self.then = detached, then
        self.messages = {**RANDOM_MESSAGES, **(messages or {})}
        super().__init__(exercise_id, title, solution=solution, inputs=inputs, specs=specs, seed=seed, dtypes=dtypes,
                         keywords=keywords, describe=describe, grad=grad)

    def __call__(self, answer: Any) -> str:
        f = require_callable(answer)
        trials = self.trials()
        ran: dict[str, bool] = {}
        for i, (case, spec) in enumerate(trials):
            torch.manual_seed(self.seed + i)                  # the same answer always gets the same verdict
            args = self.arguments(case, spec)
            got = self.run(lambda *a, **k: call(f, *a, **k), args)
            self.structure(got, args, case)
            z = got.detach().to(F64).cpu()
            args64 = self.detached(args, to64=True)
            if self.noise is not None:
                u = self.judge_sample(z, args, args64, ran)
            else:
                u = self.judge_estimate(z, args, args64, case)
            if self.grad:
                def reference(leaves64, u=u):
                    return self.run(lambda *a, **k: self.from_noise(u, *a, **k), {**args64, **leaves64})

                compare_gradients(got, {k: args[k] for k in self.grad}, reference, what=self.what,
                                  inputs=self.described(args), detached=self.detached_mistake)
            if self.then is not None:
                self.run(lambda *a, **k: self.then(got, *a, **k), args)
            if i == 0:
                again = self.run(lambda *a, **k: call(f, *a, **k), _copies(args))
                if isinstance(again, torch.Tensor) and not fresh(got, again):
                    raise Mistake(*self.messages["same calls"])
        return self.verdict(len(trials), ran)

    def structure(self, got: Any, args: dict[str, Any], case: Case) -> None:
        with torch.no_grad():
            like = self.run(self.reference, self.detached(args))  # a correct output: its shape, dtype, device
        require_like(got, like.shape, dtype=like.dtype, device=like.device, what=self.what,
                     inputs=self.described(args), shape_hints=self.shape_hints)

    def standardised(self, fn: Callable, z: torch.Tensor, args64: dict[str, Any]) -> torch.Tensor:
        return as_rows(self.run(lambda *a, **k: fn(z, *a, **k), args64))

    def judge_sample(self, z, args, args64, ran) -> torch.Tensor:
        u = self.standardised(self.noise, z, args64)
        inputs = self.described(args)
        if not bool(torch.isfinite(u).all()):
            raise CheckFailure(f"{self.what} contains NaN or inf (for inputs {inputs}): look for a square root or "
                               "log of a negative number, or an exp that overflows")
        dependence = independence_test(u, n_sigma=self.n_sigma)
        if dependence is not None:
            raise Mistake(*self.messages[dependence])
        ran["rows"] = True
        ran["columns"] = ran.get("columns", False) or u.shape[1] > 1
        failed = normal_test(u, n_sigma=self.n_sigma)
        if failed is None:
            return u
        for s in self.slips:
            alt = self.standardised(s.value, z, args64)
            if bool(torch.isfinite(alt).all()) and normal_test(alt, n_sigma=self.n_sigma) is None:
                raise Mistake(s.name, s.hint)
        if looks_uniform(u):
            raise Mistake(*self.messages["uniform"])
        raise CheckFailure(f"{self.what} does not look like the right distribution (for inputs {inputs}): the noise "
                           f"it is made of has mean {fmt(u.mean().item())} and standard deviation "
                           f"{fmt(u.std().item())} "
                           f"where 0 and 1 are expected, and its {failed} is off by more than chance allows")

    def judge_estimate(self, z, args, args64, case) -> torch.Tensor:
        mean, se = self.run(self.estimate, args64)
        inputs = self.described(args)
        atol = tolerance(case.dtype)[0] * (1.0 + mean.abs())
        if bool(torch.isfinite(z).all()) and ztest(z, mean, se, n_sigma=self.n_sigma, atol=atol):
            return z
        candidates = []
        for s in self.slips:
            m_mean, m_se = self.run(s.value, args64)
            m_tol = self.n_sigma * m_se + tolerance(case.dtype)[0] * (1 + m_mean.abs())
            candidates.append((s.name, s.hint, m_mean, m_tol))
        mistake = closest_mistake(z, candidates, reference=mean, reference_tol=self.n_sigma * se + atol)
        if mistake is not None:
            raise mistake
        if not bool(torch.isfinite(z).all()):
            raise CheckFailure(f"{self.what} contains NaN or inf (for inputs {inputs}), the expectation does not")
        raise statistical_failure(self.what, z, mean, se, inputs=inputs)

    def verdict(self, n: int, ran: dict[str, bool]) -> str:
        grads = f"; the gradient reaches {' and '.join(self.grad)} through it" if self.grad else ""
        if self.estimate is not None:
            return (f"within {self.n_sigma:g} standard errors of the expected value on {n} random inputs, and fresh "
                    f"at every call{grads}")
        coords = " and coordinates" if ran.get("columns") else ""
        return (f"draws the right distribution on {n} random inputs: its noise has independent rows{coords}, the "
                f"mean, variance and shape (kurtosis, Kolmogorov-Smirnov) of standard normal draws, and is fresh at "
                f"every call{grads}")


def random_check(exercise_id: str, title: str, *, solution: Callable, inputs: Callable[[Case, Any], dict],
                 specs: Sequence[Any] = (None,), seed: int, noise: Callable | None = None,
                 estimate: Callable | None = None, from_noise: Callable | None = None,
                 reference: Callable | None = None, slips: Sequence[Slip] = (), what: str = "the sample",
                 dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32), keywords: Sequence[str] = (),
                 describe: Sequence[str] | None = None, shape_hints: Sequence[tuple[Sequence[int], str]] = (),
                 n_sigma: float = N_SIGMA, grad: Sequence[str] = (), detached: tuple[str, str] | None = None,
                 then: Callable | None = None, messages: Mapping[str, tuple[str, str]] | None = None) -> RandomCheck:
    """Register the check of a random answer, and return it. The inputs are drawn as in
    :func:`function_check`; torch's global generator is seeded per trial (the same answer always gets the same
    verdict). The output must have the shape, dtype and device of ``reference``'s (default ``solution``) on
    the same inputs. Then, for a **sampler**:

    - ``noise(z, *inputs)`` turns the answer's output ``z`` (float64, CPU; inputs likewise) back into the noise
      it should be made of, independent standard normal draws, one row per draw (its first dimension):
      ``(z - mu) / exp(logvar / 2)``, say. The kit tests it for independence (no constant, no repeated or
      identical rows, no identical or correlated coordinates, no correlated consecutive rows), then for
      normality (mean and variance per coordinate, kurtosis, Kolmogorov-Smirnov);
    - ``slips``: :class:`Slip` s whose ``value`` is called like ``noise``: the noise under that mistake (a
      noise that looks normal names the mistake); uniform noise is recognised by itself;
    - ``grad`` with ``from_noise(u, *inputs)`` (the reference given its noise ``u``, ``(n, m)``): the gradient
      with respect to those inputs must be the reference's on the answer's own noise.

    For an **estimator**, ``estimate(*inputs)`` returns ``(mean, stderr)`` of a correct answer; the answer must
    lie within ``n_sigma`` standard errors; ``slips`` return ``(mean, stderr)`` of what each mistake estimates
    (the closest compatible one is named). Both: a second call with the same inputs must give a different
    output (``"same calls"``); ``then(output, *inputs)`` runs extra tests; ``messages`` overrides the
    (name, hint) of :data:`RANDOM_MESSAGES` (keys "constant", "same rows", "repeated rows", "same columns",
    "correlated columns", "correlated rows", "same calls", "uniform").
    """
    return RandomCheck(exercise_id, title, solution=solution, inputs=inputs, specs=specs, seed=seed, noise=noise,
                       estimate=estimate, from_noise=from_noise, reference=reference, slips=slips, what=what,
                       dtypes=dtypes, keywords=keywords, describe=describe, shape_hints=shape_hints, n_sigma=n_sigma,
                       grad=grad, detached=detached, then=then, messages=messages)


class LossCheck(_Form):
    """The check of a loss built from parts; see :func:`loss_check`."""

    def __init__(self, exercise_id, title, *, solution, inputs, specs, seed, parts, combine, aspects, max_slips=3,
                 what="the loss", dtypes=(torch.float64, torch.float32), keywords=(), describe=None, shape_hints=(),
                 grad=(), detached=None, explain=""):
        self.parts, self.combine, self.aspects, self.max_slips = parts, combine, dict(aspects), max_slips
        self.what, self.shape_hints, self.detached_mistake, self.explain = what, shape_hints, detached, explain
        self.ok = {a: opts[0].key for a, opts in self.aspects.items()}
        super().__init__(exercise_id, title, solution=solution, inputs=inputs, specs=specs, seed=seed, dtypes=dtypes,
                         keywords=keywords, describe=describe, grad=grad)

    def __call__(self, answer: Any) -> str:
        f = require_callable(answer)
        trials = self.trials()
        records, first_wrong = [], None
        for i, (case, spec) in enumerate(trials):
            torch.manual_seed(self.seed + i)
            args = self.arguments(case, spec)
            got = self.run(lambda *a, **k: call(f, *a, **k), args)
            inputs = self.described(args)
            require_like(got, (), dtype=case.dtype, device=case.device, what=self.what, inputs=inputs,
                         shape_hints=self.shape_hints)
            args64 = self.detached(args, to64=True)
            with torch.no_grad():
                pieces = self.run(self.parts, args64)
            ref = float(self.combine(self.ok, pieces))
            scale = sum(pieces[a][k].abs().mean().item() for a, k in self.ok.items() if a in pieces)
            tol = tolerance(case.dtype)[0] * (1.0 + scale)
            g = got.detach().to(F64).item()
            reduced = {a: {k: Reduced(v) for k, v in opts.items()} for a, opts in pieces.items()}
            records.append((g, reduced, tol))
            if not matches(g, ref, tol):
                first_wrong = first_wrong or (g, ref, inputs)
                continue
            if self.grad:
                def reference(leaves64):
                    return self.combine(self.ok, self.run(self.parts, {**args64, **leaves64}))

                compare_gradients(got, {k: args[k] for k in self.grad}, reference, what=self.what, inputs=inputs,
                                  detached=self.detached_mistake)
        if first_wrong is None:
            grads = " and gradients" if self.grad else ""
            return f"matches the reference (values{grads}) on {len(trials)} random inputs"
        mistake = find_slips(self.aspects, lambda choice: all(matches(g, self.combine(choice, r), 4 * tol)
                                                              for g, r, tol in records), self.max_slips)
        if mistake is not None:
            raise mistake
        g, ref, inputs = first_wrong
        if not math.isfinite(g):
            raise CheckFailure(f"{self.what} is {g} (for inputs {inputs}), the reference is finite: look for a log of "
                               "a non-positive number or an exp that overflows")
        raise CheckFailure(f"{self.what} is {fmt(g)}, the reference {fmt(ref)} (for inputs {inputs})"
                           + (f": {self.explain}" if self.explain else ""))


def loss_check(exercise_id: str, title: str, *, solution: Callable, inputs: Callable[[Case, Any], dict],
               specs: Sequence[Any] = (None,), seed: int, parts: Callable[..., dict[str, dict[str, torch.Tensor]]],
               combine: Callable[[dict[str, str], dict], Any], aspects: Mapping[str, Sequence[Option]],
               max_slips: int = 3, what: str = "the loss", dtypes: Sequence[torch.dtype] = (torch.float64,
                                                                                             torch.float32),
               keywords: Sequence[str] = (), describe: Sequence[str] | None = None,
               shape_hints: Sequence[tuple[Sequence[int], str]] = (), grad: Sequence[str] = (),
               detached: tuple[str, str] | None = None, explain: str = "") -> LossCheck:
    """Register the check of a scalar loss built from parts, and return it.

    - ``aspects``: aspect -> its :class:`Option` s, the right one first (the reconstruction's formula, its
      sign, the KL, the reduction over the batch, ...);
    - ``parts(*inputs)`` (float64 CPU inputs, called like the answer) returns aspect -> option key -> the
      per-point tensor ``(N,)`` that option contributes;
    - ``combine(choice, parts)``: the loss of one choice (aspect -> key). It reduces each part with
      ``.mean()`` or ``.sum()`` before any arithmetic, so that it runs on tensors (the reference, and its
      gradient) and on :class:`Reduced` parts (floats: the search over thousands of combinations is fast).

    Every trial compares the answer with ``combine`` of the right options; a wrong answer is explained by the
    combination of at most ``max_slips`` slips that matches *every* trial, fewest slips first (so trials that
    vary the inputs, a variance of 0.3 and 2 say, tell apart slips that coincide on one). ``grad``: inputs the
    loss must be differentiable in, as in :func:`function_check`; ``explain`` ends the message of a wrong value
    that no combination explains.
    """
    return LossCheck(exercise_id, title, solution=solution, inputs=inputs, specs=specs, seed=seed, parts=parts,
                     combine=combine, aspects=aspects, max_slips=max_slips, what=what, dtypes=dtypes,
                     keywords=keywords, describe=describe, shape_hints=shape_hints, grad=grad, detached=detached,
                     explain=explain)
