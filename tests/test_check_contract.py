"""The contract every registered check keeps (a new check inherits it by being registered):

- the blank exercise (``raise NotImplementedError()``) fails with "not implemented";
- bad answers of every kind are failures, never exceptions out of check(), nor a crash of the check
  itself ("the check could not evaluate your answer");
- the registered ``solution=`` passes, and while it runs no value the check expects is on the call stack
  (the answer runs first; the reference is computed after it);
- an answer that calls the solution and then changes its tensor inputs in place fails, saying so;
- the notebook's state (torch's, numpy's and random's generators, torch's default dtype and device, grad
  mode, the number of threads) is the same after every check as before.
"""

from __future__ import annotations

import functools
import inspect
import random

import numpy as np
import pytest
import torch
from torch import nn

from coursepkg.grading import check, core, get_check, list_checks

pytestmark = pytest.mark.usefixtures("one_thread")
IDS = list_checks()
CHECK_ENTRY = core.check.__code__  # the frames between it and the answer are the check's and the kit's


def _not_implemented(*args, **kwargs):
    raise NotImplementedError()


def _vandal(*args, **kwargs):
    """Disturbs everything a notebook relies on, then fails."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
    raise ValueError("vandal")


def _raise(exc):
    def answer(*args, **kwargs):
        raise exc
    return answer


BAD_ANSWERS = {
    "returns None": lambda *a, **k: None,
    "raises ValueError": _raise(ValueError("bad")),
    "raises SystemExit": _raise(SystemExit(1)),
    "raises KeyboardInterrupt": _raise(KeyboardInterrupt()),
    "returns a str": lambda *a, **k: "42",
    "returns nan": lambda *a, **k: float("nan"),
    "wrong arity": lambda: 0,
    "not callable": 42,
    "disturbs the state": _vandal,
}


def _state():
    return (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(), torch.get_default_dtype(),
            torch.is_grad_enabled(), torch.get_num_threads(), torch.get_default_device())


def _run(exercise_id, answer):
    """check() with the notebook's state compared before and after; returns the result."""
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    before = _state()
    result = check(exercise_id, answer, verbose=False)
    after = _state()
    assert torch.equal(before[0], after[0]), "torch's random state changed"
    assert np.array_equal(before[1], after[1]), "numpy's random state changed"
    assert before[2:] == after[2:], f"state changed: {before[2:]} -> {after[2:]}"
    return result


def _solution(exercise_id):
    solution = get_check(exercise_id).solution
    if solution is None:
        pytest.fail(f"{exercise_id} has no solution=: every check registers a correct answer (see the kit)")
    return solution


def _tensors(obj, depth=0, seen=None):
    """Every tensor in ``obj``: itself, in containers, in an nn.Module, in an object's attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 4:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, nn.Module):
        return list(obj.parameters()) + list(obj.buffers())
    if isinstance(obj, (list, tuple, set)):
        items = list(obj)
    elif isinstance(obj, dict):
        items = list(obj.values())
    elif hasattr(obj, "__dict__") and not inspect.ismodule(obj) and not inspect.isclass(obj) \
            and not inspect.isroutine(obj):
        items = list(vars(obj).values())
    else:
        return []
    return [t for item in items for t in _tensors(item, depth + 1, seen)]


# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("exercise_id", IDS)
def test_the_blank_exercise_fails(exercise_id):
    r = _run(exercise_id, _not_implemented)
    assert not r.passed and "not implemented" in r.message


@pytest.mark.parametrize("kind", list(BAD_ANSWERS))
@pytest.mark.parametrize("exercise_id", IDS)
def test_bad_answers_are_failures_not_crashes(exercise_id, kind):
    r = _run(exercise_id, BAD_ANSWERS[kind])
    assert not r.passed, f"{exercise_id} accepted an answer that {kind}"
    assert "could not evaluate" not in r.message, f"{exercise_id} crashed on an answer that {kind}: {r.message}"


def _run_with_a_spy(exercise_id, solution):
    """check() on ``solution``, wrapped in a spy that looks, at every call, through the frames between
    check() and the answer for a tensor equal to what the answer is about to return; (result, leaks)."""
    leaks = []

    @functools.wraps(solution)
    def spy(*args, **kwargs):
        out = solution(*args, **kwargs)
        # what a correct answer returns, when it is not constant: is any of it already in the check's frames?
        wanted = [t.detach() for t in _tensors(out) if t.numel() > 1 and t.is_floating_point()
                  and bool(torch.isfinite(t).all()) and not bool((t == t.reshape(-1)[0]).all())]
        mine = {id(t) for t in _tensors((args, kwargs))} | {id(t) for t in _tensors(out)}
        frame = inspect.currentframe().f_back
        while frame is not None and wanted and frame.f_code is not CHECK_ENTRY:  # above check(): the caller's
            for name, value in frame.f_locals.items():
                for t in _tensors(value):
                    if id(t) not in mine and any(t.shape == w.shape and t.dtype == w.dtype and t.device == w.device
                                                 and torch.allclose(t.detach(), w, rtol=1e-5, atol=1e-8)
                                                 for w in wanted):
                        leaks.append(f"{frame.f_code.co_name}: {name}")
            frame = frame.f_back
        return out

    return _run(exercise_id, spy), leaks


@pytest.mark.parametrize("exercise_id", IDS)
def test_the_solution_passes_and_nothing_expected_is_on_the_stack(exercise_id):
    r, leaks = _run_with_a_spy(exercise_id, _solution(exercise_id))
    assert r.passed, r.message
    assert not leaks, f"expected values are on the call stack while the answer runs: {sorted(set(leaks))}"


def test_the_spy_finds_a_reference_computed_before_the_call():
    """The stack test can fail: a check that computes the expected value first is caught."""
    from coursepkg.grading.kit import call, compare

    def leaky_check(answer):
        x = torch.linspace(-1, 1, 7, dtype=torch.float64)
        expected = torch.sin(x)  # on the stack while the answer runs
        compare(call(answer, x), expected)

    core._load_all()
    saved = dict(core._REGISTRY)
    try:
        core.register("99.leaky", "a check written the wrong way", solution=torch.sin)(leaky_check)
        r, leaks = _run_with_a_spy("99.leaky", torch.sin)
    finally:
        core._REGISTRY.clear()
        core._REGISTRY.update(saved)
    assert r.passed and "leaky_check: expected" in leaks


@pytest.mark.parametrize("exercise_id", IDS)
def test_an_answer_that_changes_its_inputs_in_place_fails(exercise_id):
    solution = _solution(exercise_id)
    changed = []

    @functools.wraps(solution)
    def mutating(*args, **kwargs):
        out = solution(*args, **kwargs)
        with torch.no_grad():
            for t in _tensors((args, kwargs)):
                if t.is_floating_point() and t.numel() > 0:
                    t.add_(1.0)
                    changed.append(t)
        return out

    r = _run(exercise_id, mutating)
    if not changed:
        pytest.skip(f"the answer of {exercise_id} receives no tensor")
    assert not r.passed and "in place" in r.message, r.message


def test_every_check_has_a_title_and_a_valid_id():
    for exercise_id in IDS:
        chk = get_check(exercise_id)
        chapter, name = exercise_id.split(".")
        assert len(chapter) == 2 and chapter.isdigit() and name.isidentifier()
        assert chk.title and chk.title != exercise_id, f"{exercise_id} has no title"
