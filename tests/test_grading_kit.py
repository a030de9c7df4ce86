"""The check kit (coursepkg.grading.kit), tested once: its helpers, the detection of in-place changes, the
statistical tests of random answers (each rejecting what it is there to reject, and accepting correct
draws), the slip search, the three declarative forms end to end, and check()'s own guarantees (it survives
anything, and restores the notebook's state)."""

from __future__ import annotations

import math
import random
import sys

import numpy as np
import pytest
import torch
from torch import nn

from coursepkg.grading import check as run_check
from coursepkg.grading import core, kit
from coursepkg.grading.kit import (
    Also,
    CheckFailure,
    Mistake,
    Option,
    Recorder,
    Slip,
    call,
    closest_mistake,
    compare,
    distinct,
    find_slips,
    fresh,
    function_check,
    independence_test,
    loss_check,
    normal_test,
    random_cases,
    random_check,
    require_like,
    slip_combinations,
    tolerance,
    uniform_test,
    unpack,
    ztest,
)

from .helpers import check_fails, check_passes

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fails_with(fn, *words):
    with pytest.raises(CheckFailure) as info:
        fn()
    for w in words:
        assert w.lower() in str(info.value).lower(), f"expected {w!r} in: {info.value}"
    return info.value


@pytest.fixture
def scratch_registry():
    """Checks registered by a test are removed afterwards (the contract test sees the course's checks only)."""
    core._load_all()
    saved = dict(core._REGISTRY)
    yield
    core._REGISTRY.clear()
    core._REGISTRY.update(saved)


# ---------------------------------------------------------------------------------------------- small helpers
def test_tolerance_per_dtype():
    assert tolerance(torch.float64) == (1e-7, 1e-9)
    assert tolerance(torch.float32) == (1e-4, 1e-6)
    assert tolerance(torch.float16)[0] > tolerance(torch.float32)[0]
    with pytest.raises(ValueError, match="dtype"):
        tolerance(torch.int64)


def test_cases_draw_reproducible_inputs_in_their_dtype():
    a, b = random_cases(7), random_cases(7)
    assert [c.dtype for c in a] == [torch.float64, torch.float32]
    x = a[1].randn(4, 3, scale=2.0, shift=1.0)
    assert x.dtype == torch.float32 and x.shape == (4, 3) and torch.equal(x, b[1].randn(4, 3, scale=2.0, shift=1.0))
    u = a[0].rand(1000, low=2.0, high=3.0)
    assert 2.0 <= u.min() and u.max() < 3.0
    assert a[0]["gen"] is a[0].gen and {**a[0]}["dtype"] == torch.float64   # still a dict for the old checks
    t = torch.tensor([1 / 3], dtype=F64)
    assert a[1].rounded(t).dtype == F64 and a[1].rounded(t).item() == torch.tensor(1 / 3, dtype=torch.float32).item()


def test_call_turns_everything_the_answer_raises_into_a_failure():
    def raises(exc):
        def f():
            raise exc
        return f

    _fails_with(lambda: call(raises(NotImplementedError())), "not implemented yet")
    _fails_with(lambda: call(raises(ValueError("bad x"))), "your function raised ValueError: bad x")
    _fails_with(lambda: call(sys.exit), "sys.exit()")
    _fails_with(lambda: call(raises(SystemExit(3))), "sys.exit()", "3")
    _fails_with(lambda: call(raises(KeyboardInterrupt())), "KeyboardInterrupt")
    _fails_with(lambda: call(raises(GeneratorExit())), "GeneratorExit")
    with pytest.raises(Mistake):   # a failure raised by what the check hands the answer is kept as it is
        call(raises(Mistake("m", "h")))
    assert call(lambda a, b=1: a + b, 1, b=2) == 3


def test_call_fails_an_answer_that_changes_its_inputs_in_place():
    x, w = torch.randn(3, 2), torch.ones(2)

    def add(x, w):
        x.add_(1)
        return x

    e = _fails_with(lambda: call(add, x.clone(), w), "`x`", "in place")
    assert "`w`" not in str(e)
    _fails_with(lambda: call(lambda xs: xs[1].mul_(2), [x.clone(), x.clone()]), "`xs`[1]", "in place")
    _fails_with(lambda: call(lambda d: d["a"].zero_(), {"a": x.clone()}), "`d`['a']", "in place")
    _fails_with(lambda: call(lambda *, k: k.data.fill_(0), k=x.clone()), "`k`", "in place")

    leaf = x.clone().requires_grad_()
    _fails_with(lambda: call(lambda t: t.data.add_(1), leaf), "in place")     # .data, on a leaf requiring grad

    lin = nn.Linear(2, 2)
    bn = nn.BatchNorm1d(2)

    def train_step(m):
        with torch.no_grad():
            m.weight.mul_(0.5)

    _fails_with(lambda: call(train_step, lin), "`m` (its weight)", "in place")
    _fails_with(lambda: call(lambda m: m(torch.randn(8, 2)), bn), "running_mean", "in place")   # a buffer

    # reading is fine, NaNs that stay NaN are fine, and so is a result built out of place
    nan = torch.tensor([1.0, float("nan")])
    assert torch.equal(call(lambda t: t * 2, x), x * 2)
    call(lambda t: t + 1, nan)
    call(lambda m: m(torch.randn(4, 2)), lin)


def test_compare_names_mistakes_and_generic_slips():
    ref = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    compare(ref.clone(), ref)
    _fails_with(lambda: compare(ref + 1, ref, mistakes=[("off by one", "hint", ref + 1)]), "off by one", "hint")
    _fails_with(lambda: compare(-ref, ref), "flipped sign")
    _fails_with(lambda: compare(2 * ref, ref), "factor of 2")
    _fails_with(lambda: compare(ref * float("nan"), ref), "NaN")
    _fails_with(lambda: compare(ref.float(), ref), "dtype float32, expected float64")
    _fails_with(lambda: compare(ref.sum(), ref), "batch")
    _fails_with(lambda: compare(ref[:, None].expand(3, 2), ref), "last (event) dimension")
    _fails_with(lambda: compare(ref[:2], ref, shape_hints=[((2,), "drop the last point")]), "drop the last point")
    _fails_with(lambda: compare(ref.numpy(), ref), "torch.Tensor", "numpy")
    _fails_with(lambda: compare(None, ref), "None", "return")
    _fails_with(lambda: compare(ref + 0.1, ref), "differs", "0.1")


def test_require_like_checks_structure_without_a_reference_value():
    got = torch.zeros(4, 2)
    assert require_like(got, (4, 2), dtype=torch.float32, device="cpu") is got
    _fails_with(lambda: require_like(got, (4,), dtype=torch.float32, device="cpu", what="z",
                                     shape_hints=[((4, 2), "reduce the last dimension")]), "z has shape", "reduce")
    _fails_with(lambda: require_like(got, (4, 2), dtype=F64, device="cpu"), "dtype float32, expected float64")
    _fails_with(lambda: require_like(got.long(), (4, 2), dtype=torch.int64, device="cpu"), "floating-point")


def test_distinct_drops_mistakes_that_cannot_be_told_from_the_reference():
    ref = torch.tensor([1.0, 2.0], dtype=F64)
    kept = distinct([("same", "h", ref * (1 + 1e-6)), ("none", "h", None), ("far", "h", ref + 1)], ref, 1e-7, 1e-9)
    assert [m[0] for m in kept] == ["far"]


def test_unpack_says_what_was_expected():
    a, b = unpack((1, 2), 2, "a pair (mean, var)")
    assert (a, b) == (1, 2)
    assert unpack([1, 2, 3], 3, "a tuple (w, m, c)") == (1, 2, 3)
    _fails_with(lambda: unpack(torch.zeros(3), 2, "a pair (mean, var)"), "expected a pair (mean, var)",
                "single tensor of shape [3]")
    _fails_with(lambda: unpack(None, 2, "a pair (mean, var)"), "got None", "return")
    _fails_with(lambda: unpack((1, 2, 3), 2, "a pair (mean, var)"), "a tuple of length 3")
    _fails_with(lambda: unpack({"a": 1}, 2, "a pair (mean, var)"), "got a dict")
    _fails_with(lambda: unpack(nn.Linear(1, 1), 2, "a pair", refuse=[(nn.Module, "a module: return tensors")]),
                "got a module: return tensors")
    _fails_with(lambda: unpack(3.5, 2, "a pair", refuse=[(float, lambda g: f"the number {g}")]), "the number 3.5")


# ---------------------------------------------------------------------------------------------- statistics
def test_ztest_and_the_closest_mistake():
    expected, se = torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([0.1, 0.1], dtype=F64)
    assert ztest(torch.tensor([0.4, 1.3], dtype=F64), expected, se)
    assert not ztest(torch.tensor([0.6, 1.0], dtype=F64), expected, se)
    assert not ztest(torch.tensor([float("nan"), 1.0], dtype=F64), expected, se)
    got = torch.tensor([2.05, 3.0], dtype=F64)
    candidates = [("far", "h1", torch.tensor([5.0, 6.0], dtype=F64), 0.5),
                  ("near", "h2", torch.tensor([2.0, 3.0], dtype=F64), 0.5),
                  ("nearer but the reference", "h3", expected, 10.0)]
    m = closest_mistake(got, candidates, reference=expected, reference_tol=0.5)
    assert isinstance(m, Mistake) and m.name == "near" and m.hint == "h2"
    assert closest_mistake(torch.tensor([9.0, 9.0], dtype=F64), candidates[:2]) is None
    fail = kit.statistical_failure("the estimate", torch.tensor([0.1, 2.0], dtype=F64), expected, se,
                                   inputs="x: shape [2]", advice="average more samples")
    assert str(fail) == ("the estimate differs from the expected value by more than Monte Carlo error (for inputs "
                         "x: shape [2]): 2 instead of 1, 10 standard errors away; average more samples")


def _t_scaled(n, m, g, df=5.0):
    """Student-t draws scaled to variance 1: mean 0 and variance 1, heavy tails."""
    z = torch.randn(n, m, generator=g, dtype=F64)
    chi2 = torch.distributions.Chi2(torch.tensor(df, dtype=F64)).sample((n, m))
    return z / torch.sqrt(chi2 / df) / math.sqrt(df / (df - 2))


@pytest.mark.parametrize("seed", range(8))
def test_normal_test_accepts_standard_normal_draws(seed):
    for n, m in ((2000, 3), (300, 1), (500, 12)):
        u = torch.randn(n, m, generator=_gen(seed), dtype=F64)
        assert normal_test(u) is None
        assert independence_test(u) is None


def test_normal_test_rejects_the_wrong_distribution_even_with_mean_0_and_variance_1():
    g = _gen(0)
    n, m = 2000, 3
    uniform = (torch.rand(n, m, generator=g, dtype=F64) - 0.5) * math.sqrt(12)
    two_point = torch.where(torch.rand(n, m, generator=g) < 0.5, -1.0, 1.0).to(F64)
    torch.manual_seed(1)
    student = _t_scaled(n, m, g)
    for u in (uniform, two_point, student):
        assert abs(u.mean().item()) < 0.1 and abs(u.var().item() - 1) < 0.15    # right moments ...
    assert normal_test(uniform) in ("kurtosis", "shape")                         # ... wrong shape
    assert normal_test(two_point) in ("kurtosis", "shape")
    assert normal_test(student) is not None     # heavy tails: its sample variance varies more than a normal's
    assert kit.looks_uniform(uniform) and not kit.looks_uniform(two_point) and not kit.looks_uniform(student)
    assert normal_test(torch.randn(n, m, generator=g, dtype=F64) + 0.3) == "mean"
    assert normal_test(1.2 * torch.randn(n, m, generator=g, dtype=F64)) == "variance"
    assert normal_test(torch.full((n, m), float("nan"))) == "finite"
    # a Kolmogorov-Smirnov test sees what moments miss: a mixture with normal moments up to the third
    assert kit.ks_test(torch.randn(5000, generator=g, dtype=F64), torch.special.ndtr)
    assert not kit.ks_test(torch.rand(5000, generator=g, dtype=F64), torch.special.ndtr)


def test_uniform_test():
    g = _gen(3)
    assert uniform_test(torch.rand(4000, generator=g, dtype=F64)) is None
    assert uniform_test(2 + 3 * torch.rand(4000, generator=g, dtype=F64), 2.0, 5.0) is None
    assert uniform_test(torch.randn(4000, generator=g, dtype=F64)) == "range"
    assert uniform_test(torch.rand(4000, generator=g, dtype=F64) ** 2) in ("mean", "variance", "shape")


def test_independence_test_names_the_dependence():
    g = _gen(4)
    n, m = 1000, 4
    u = torch.randn(n, m, generator=g, dtype=F64)
    assert independence_test(torch.full((n, m), 0.7, dtype=F64)) == "constant"
    assert independence_test(u[:1].expand(n, m)) == "same rows"
    repeated = u.clone()
    repeated[500:510] = repeated[:10]
    assert independence_test(repeated) == "repeated rows"
    assert independence_test(u[:, :1].expand(n, m)) == "same columns"
    mixed = u.clone()
    mixed[:, 1] = 0.6 * u[:, 0] + 0.8 * u[:, 1]                  # still N(0, 1), correlated with column 0
    assert independence_test(mixed) == "correlated columns"
    ar = u.clone()
    for i in range(1, n):                                         # AR(1): each row leans on the previous one
        ar[i] = 0.5 * ar[i - 1] + math.sqrt(0.75) * u[i]
    assert independence_test(ar) == "correlated rows"
    assert kit.rows_identical(u[:1].expand(n, m)) and not kit.rows_identical(u)


def test_fresh_tells_a_reseeded_answer():
    a = torch.randn(100, generator=_gen(5))
    assert not fresh(a, a.clone())
    assert fresh(a, torch.randn(100, generator=_gen(6)))


# ---------------------------------------------------------------------------------------------- recording
def test_recorder_records_what_the_answer_calls():
    rec = Recorder(lambda z: (z**2).sum(-1), name="f")
    z = torch.randn(5, 2, requires_grad=True)
    out = rec(z)
    rec(z)                                                   # the same batch again: counts once
    rec(torch.ones(3, 2))
    assert torch.allclose(out, (z**2).sum(-1)) and rec.__name__ == "f" and "recorded" in repr(rec)
    assert [c.requires_grad for c in rec.calls] == [(True,), (True,), (False,)]
    rows = rec.rows()
    assert rows.dtype == F64 and rows.shape == (8, 2) and torch.equal(rows[:5], z.detach().double())
    assert rec.rows(dedupe=False).shape == (13, 2)
    assert not rec.calls[0].args[0].requires_grad            # copies, detached
    rec.reset()
    assert rec.rows().numel() == 0


def test_recorder_unwraps_calls_made_inside_torch_func():
    rec = Recorder(lambda z, *rest: (z**2).sum(), name="f")
    x = torch.randn(4, 5, 3)
    c = torch.ones(2)
    g = torch.func.grad(lambda t: rec(t, c))(x[0, 0])           # grad-tracked: peeled to its value
    assert torch.allclose(g, 2 * x[0, 0]) and not rec.wrapped
    (z, c_copy), = (call.args for call in rec.calls)
    assert torch.equal(z, x[0, 0]) and torch.equal(c_copy, c) and rec.calls[0].requires_grad == (True, False)
    assert not any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in (z, c_copy))   # plain copies

    rec.reset()                                                  # vmap over samples: the whole batch at once,
    torch.func.vmap(rec)(x[0])                                   # as if f had been called on it
    torch.func.vmap(rec, in_dims=1)(x[1].T)                      # the batch dimension moved to the front
    torch.func.vmap(rec)(x[0])                                   # the same batch again: counts once
    assert torch.equal(rec.rows(), torch.cat([x[0], x[1]]).double()) and not rec.wrapped
    del rec.calls[-1]
    torch.func.vmap(torch.func.vmap(rec))(x)                     # nested: outer batch, then inner batch
    torch.func.vmap(torch.func.vmap(rec), in_dims=1)(x)          # the outer vmap over dim 1
    shapes = [tuple(call.args[0].shape) for call in rec.calls]
    assert shapes == [(5, 3), (5, 3), (4, 5, 3), (5, 4, 3)]
    wanted = [x[0], x[1], x, x.transpose(0, 1)]
    assert all(torch.equal(call.args[0], want) for call, want in zip(rec.calls, wanted, strict=True))

    rec.reset()                                                  # vmap of grad, and a graph under the batch
    torch.func.vmap(torch.func.grad(rec))(x[0])
    torch.func.vmap(rec)(x[0].clone().requires_grad_() * 1)
    torch.func.jacfwd(rec)(x[0, :1])
    assert [call.requires_grad for call in rec.calls] == [(True,)] * 3
    assert torch.equal(rec.rows(dedupe=False), torch.cat([x[0], x[0], x[0, :1]]).double())


def test_recorder_falls_back_when_it_cannot_unwrap(monkeypatch):
    rec = Recorder(lambda z: (z**2).sum(), name="f")
    torch.func.functionalize(rec)(torch.randn(3))                # a wrapper the helper does not know
    assert rec.wrapped and rec.rows() is None and not rec.calls

    def broken(t):
        raise AttributeError("the private functorch API changed")

    monkeypatch.setattr(kit, "_unwrap_functorch", broken)
    rec = Recorder(lambda z: (z**2).sum(), name="f")
    rec(torch.ones(3, 2))                                        # plain tensors are still recorded
    assert rec.rows().shape == (3, 2) and not rec.wrapped
    assert torch.func.grad(rec)(torch.ones(2)).tolist() == [2.0, 2.0]    # the call itself still goes through
    assert rec.wrapped and rec.rows() is None and len(rec.calls) == 1
    rec.reset()
    assert not rec.wrapped and rec.rows().numel() == 0


def test_recorder_on_a_module_keeps_the_module():
    dec = nn.Linear(3, 2)
    rec = Recorder.on_module(dec)
    dec(torch.randn(4, 3))
    dec(torch.randn(2, 3))
    assert isinstance(dec, nn.Module) and rec.rows().shape == (6, 3)


# ---------------------------------------------------------------------------------------------- slip search
ASPECTS = {
    "recon": [Option("ok"), Option("flipped", "the reconstruction with the wrong sign", "it is -log p; use +")],
    "kl": [Option("ok"), Option("no_half", "the 1/2 of the KL forgotten", "KL = 0.5 * (...)"),
           Option("none", "the KL forgotten", "add the KL; KL = 0.5 * (...)")],
    "batch": [Option("mean"), Option("sum", "a sum over the batch", "use .mean()")],
}


def test_slip_combinations_come_fewest_first():
    combos = list(slip_combinations(ASPECTS, 3))
    slips = [sum(k not in ("ok", "mean") for k in c.values()) for c in combos]
    assert slips == sorted(slips) and slips[0] == 1 and max(slips) == 3
    assert len(combos) == (1 + 2 + 1) + (1 * 2 + 1 * 1 + 2 * 1) + 1 * 2 * 1


def test_find_slips_names_the_simplest_explanation():
    def value(c, r, k):
        return (-r if c["recon"] == "flipped" else r) + {"ok": k, "no_half": 2 * k, "none": 0.0}[c["kl"]]

    trials = [(3.0, 1.0), (5.0, 2.0)]
    # the answer forgot the KL's 1/2 and flipped the reconstruction
    got = [-r + 2 * k for r, k in trials]
    def explains(c):
        return all(abs(value(c, r, k) - g) < 1e-9 for (r, k), g in zip(trials, got, strict=True))

    m = find_slips(ASPECTS, explains)
    assert m.name == "the reconstruction with the wrong sign, and the 1/2 of the KL forgotten"
    assert m.hint == "it is -log p; use +; KL = 0.5 * (...)"
    m = find_slips(ASPECTS, lambda c: c["kl"] == "none")
    assert m.name == "the KL forgotten" and m.hint.count("KL = 0.5") == 1
    assert find_slips(ASPECTS, lambda c: False) is None


# ---------------------------------------------------------------------------------------------- function_check
def _sq_inputs(case, shape):
    return {"x": case.randn(*shape), "w": case.rand(*shape, low=0.5, high=1.5)}


def _weighted_squares(x, w):
    return (w * x**2).sum(-1)


def _toy_function_check(**kw):
    return function_check(
        "99.weighted_squares", "a toy", solution=_weighted_squares, inputs=_sq_inputs, specs=[(4, 3), (5, 1)],
        seed=9, what="the sum", mistakes=[
            Slip("the square forgotten", "square x", lambda x, w: (w * x).sum(-1)),
            Slip("a mean instead of a sum", "sum over the last dimension", lambda x, w: (w * x**2).mean(-1)),
        ], **kw)


def test_function_check_passes_a_correct_answer_and_names_mistakes(scratch_registry):
    _toy_function_check(also=[Also("the sum of nothing is 0", lambda f: compare(
        f(torch.zeros(2, 0, dtype=F64), torch.zeros(2, 0, dtype=F64)), torch.zeros(2, dtype=F64)))])
    r = check_passes("99.weighted_squares", lambda x, w: torch.einsum("nd,nd->n", w, x * x))
    assert r.message == "matches the reference on 4 random inputs, and the sum of nothing is 0"
    check_fails("99.weighted_squares", lambda x, w: (w * x).sum(-1), "the square forgotten", "square x")
    check_fails("99.weighted_squares", lambda x, w: (w * x**2).mean(-1), "a mean instead of a sum")
    check_fails("99.weighted_squares", lambda x, w: (w * x**2).sum(-1) + 1e-3, "differs")
    check_fails("99.weighted_squares", lambda x, w: (w * x**2).sum(-1).float(), "dtype")
    check_fails("99.weighted_squares", lambda x, w: _weighted_squares(x, w) if x.shape[-1] else None, "return")
    check_fails("99.weighted_squares", lambda x, w: (x.add_(1), _weighted_squares(x, w))[1], "`x`", "in place")
    assert core.get_check("99.weighted_squares").solution is _weighted_squares


def test_function_check_runs_the_answer_before_it_computes_anything_expected(scratch_registry):
    events = []

    def reference(x, w):
        events.append("reference")
        return _weighted_squares(x, w)

    def mistake(x, w):
        events.append("mistake")
        return (w * x).sum(-1)

    function_check("99.order", "order", solution=_weighted_squares, reference=reference, inputs=_sq_inputs,
                   specs=[(4, 3)], seed=1, mistakes=[Slip("m", "h", mistake)])

    def answer(x, w):
        events.append("answer")
        found = [t for t in _stack_tensors() if t.shape == (x.shape[0],)]
        assert not found, "a tensor shaped like the result is on the stack while the answer runs"
        return _weighted_squares(x, w) + 1.0                 # wrong, so that the mistakes are computed too

    r = run_check("99.order", answer, verbose=False)
    assert not r.passed and "differs" in r.message
    assert events[:3] == ["answer", "reference", "mistake"]


def _stack_tensors():
    import inspect

    out, frame = [], inspect.currentframe().f_back.f_back
    while frame is not None:
        out += [v for v in frame.f_locals.values() if isinstance(v, torch.Tensor)]
        frame = frame.f_back
    return out


def test_a_mistake_equal_to_the_reference_on_an_input_is_never_named(scratch_registry):
    _toy_function_check()
    # with one dimension (the second spec), the mean is the sum: a correct answer there is not "a mean"
    check_passes("99.weighted_squares", _weighted_squares)


def test_function_check_with_gradients(scratch_registry):
    function_check("99.scaled", "grad", solution=lambda x, w: w * x, inputs=_sq_inputs, specs=[(3, 2)], seed=2,
                   what="y", grad=["x", "w"], detached=("y is detached", "use torch operations"))
    r = check_passes("99.scaled", lambda x, w: x * w)
    assert "and its gradients" in r.message
    check_fails("99.scaled", lambda x, w: (w * x).detach(), "y is detached")
    check_fails("99.scaled", lambda x, w: w.detach() * x, "no gradient reaches w")
    check_fails("99.scaled", lambda x, w: w * x + (x * 0.1 - (x * 0.1).detach()), "gradient of y with respect to x")


def test_forms_require_a_solution_and_an_input_function(scratch_registry):
    with pytest.raises(ValueError, match="solution"):
        function_check("99.nosol", "t", solution=None, inputs=_sq_inputs, seed=0)
    with pytest.raises(TypeError, match="inputs"):
        function_check("99.noinputs", "t", solution=_weighted_squares, inputs=None, seed=0)
    with pytest.raises(ValueError, match="exercise_id"):
        core.register("no_dot", solution=_weighted_squares)


# ---------------------------------------------------------------------------------------------- random_check
def _gauss_inputs(case, shape):
    return {"mu": case.randn(*shape, scale=1.5), "logvar": case.rand(*shape, low=-2.0, high=1.0)}


def _sample(mu, logvar):
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def _sampler_check():
    return random_check(
        "99.sample", "a toy sampler", solution=_sample, inputs=_gauss_inputs, specs=[(2000, 3), (3000, 1)], seed=3,
        what="z", noise=lambda z, mu, logvar: (z - mu) / torch.exp(0.5 * logvar),
        from_noise=lambda u, mu, logvar: mu + torch.exp(0.5 * logvar) * u.reshape(mu.shape), grad=["mu", "logvar"],
        slips=[Slip("std = exp(logvar)", "the 1/2 is missing", lambda z, mu, logvar: (z - mu) / torch.exp(logvar))])


def _noise_answer(draw):
    return lambda mu, logvar: mu + torch.exp(0.5 * logvar) * draw(mu)


def _seeded(mu):
    torch.manual_seed(0)
    return torch.randn_like(mu)


@pytest.mark.parametrize("answer, words", [
    (lambda mu, logvar: mu + 0 * logvar, ["not random"]),
    (_noise_answer(lambda mu: torch.randn_like(mu[:1]).expand_as(mu)), ["same noise for every row"]),
    (_noise_answer(lambda mu: torch.randn_like(mu[:, :1]).expand_as(mu)), ["same noise for every coordinate"]),
    (_noise_answer(_seeded), ["same noise at every call"]),
    (_noise_answer(lambda mu: (torch.rand_like(mu) - 0.5) * math.sqrt(12)), ["uniform", "torch.rand"]),
    (_noise_answer(lambda mu: _t_scaled(*mu.shape, None).to(mu.dtype)), ["right distribution", "kurtosis"]),
    (_noise_answer(lambda mu: torch.where(torch.rand_like(mu) < 0.5, -1.0, 1.0).to(mu.dtype)),
     ["rows repeat"]),                                              # 3 coordinates of +-1: 8 possible rows
    (lambda mu, logvar: mu + torch.exp(logvar) * torch.randn_like(mu), ["std = exp(logvar)", "1/2"]),
    (lambda mu, logvar: (mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)).detach(), ["detached"]),
    (lambda mu, logvar: mu + torch.exp(0.5 * logvar) * torch.randn_like(mu, dtype=torch.float64),
     ["dtype"]),
], ids=["constant", "same_rows", "same_coordinates", "seeded", "uniform", "student_t", "two_point", "slip",
        "detached", "dtype"])
def test_random_check_rejects_bad_samplers(scratch_registry, answer, words):
    _sampler_check()
    r = check_fails("99.sample", answer, *words)
    assert "could not evaluate" not in r.message


def test_random_check_accepts_correct_samplers(scratch_registry):
    _sampler_check()
    r = check_passes("99.sample", _sample)
    assert "Kolmogorov-Smirnov" in r.message and "fresh at every call" in r.message
    assert "independent rows and coordinates" in r.message and "gradient reaches mu and logvar" in r.message
    check_passes("99.sample", lambda mu, lv: torch.distributions.Normal(mu, torch.exp(lv / 2)).rsample())


def _square_inputs(case, n):
    return {"mu": case.randn(4, scale=1.5), "n": n}


def _mc_square(mu, n):
    x = mu + torch.randn(n, *mu.shape, dtype=mu.dtype)
    return (x**2).mean(0)


def _estimator_check():
    return random_check(
        "99.estimate", "E[x^2]", solution=_mc_square, inputs=_square_inputs, specs=[4000], seed=4,
        what="the estimate", describe=["mu", "n"],
        estimate=lambda mu, n: (mu**2 + 1, torch.sqrt((4 * mu**2 + 2) / n)),
        slips=[Slip("the square forgotten", "average x**2", lambda mu, n: (mu, torch.ones_like(mu) / math.sqrt(n)))])


def test_random_check_of_an_estimator(scratch_registry):
    _estimator_check()
    r = check_passes("99.estimate", _mc_square)
    assert r.message.startswith("within 5 standard errors of the expected value on 2 random inputs")
    check_fails("99.estimate", lambda mu, n: (mu + torch.randn(n, *mu.shape, dtype=mu.dtype)).mean(0),
                "the square forgotten")
    check_fails("99.estimate", lambda mu, n: _mc_square(mu, n) + 0.5, "more than Monte Carlo error")

    def seeded(mu, n):
        torch.manual_seed(0)
        return _mc_square(mu, n)

    check_fails("99.estimate", seeded, "same noise at every call")


# ---------------------------------------------------------------------------------------------- loss_check
LOSS_ASPECTS = {
    "recon": [Option("ok"), Option("flipped", "the reconstruction with the wrong sign", "-log p(x|z) >= 0")],
    "kl": [Option("ok"), Option("no_half", "the 1/2 of the KL forgotten", "KL = 0.5 * sum(mu^2)"),
           Option("none", "the KL forgotten", "KL = 0.5 * sum(mu^2)")],
    "batch": [Option("mean"), Option("sum", "a sum over the batch", "average over the batch")],
}


def _loss_inputs(case, n):
    return {"x": case.randn(n, 3), "x_out": case.randn(n, 3), "mu": case.randn(n, 2)}


def _loss_parts(x, x_out, mu):
    sq = ((x - x_out) ** 2).sum(-1)
    kl = 0.5 * (mu**2).sum(-1)
    return {"recon": {"ok": sq, "flipped": -sq}, "kl": {"ok": kl, "no_half": 2 * kl, "none": torch.zeros_like(kl)}}


def _combine(choice, parts):
    reduce = choice["batch"]
    return getattr(parts["recon"][choice["recon"]], reduce)() + getattr(parts["kl"][choice["kl"]], reduce)()


def _toy_loss(x, x_out, mu):
    return (((x - x_out) ** 2).sum(-1) + 0.5 * (mu**2).sum(-1)).mean()


def test_loss_check(scratch_registry):
    loss_check("99.loss", "a toy loss", solution=_toy_loss, inputs=_loss_inputs, specs=[5, 8], seed=5,
               parts=_loss_parts, combine=_combine, aspects=LOSS_ASPECTS, grad=["x_out", "mu"],
               explain="loss = mean of |x - x_out|^2 + KL")
    r = check_passes("99.loss", _toy_loss)
    assert r.message == "matches the reference (values and gradients) on 4 random inputs"
    check_fails("99.loss", lambda x, o, mu: (((x - o) ** 2).sum(-1) + 0.5 * (mu**2).sum(-1)).sum(),
                "likely mistake: a sum over the batch. Hint: average over the batch")
    check_fails("99.loss", lambda x, o, mu: (-((x - o) ** 2).sum(-1) + (mu**2).sum(-1)).mean(),
                "the reconstruction with the wrong sign, and the 1/2 of the KL forgotten")
    check_fails("99.loss", lambda x, o, mu: ((x - o) ** 2).sum(-1).mean(), "the KL forgotten")
    check_fails("99.loss", lambda x, o, mu: _toy_loss(x, o, mu) + 1.0, "the reference", "loss = mean of")
    check_fails("99.loss", lambda x, o, mu: _toy_loss(x, o, mu).detach(), "detached")
    check_fails("99.loss", lambda x, o, mu: _toy_loss(x, o, mu)[None], "shape")


# ---------------------------------------------------------------------------------------------- check() itself
def test_check_survives_anything_and_restores_the_notebook_state(scratch_registry):
    def vandal(answer):
        torch.manual_seed(1)
        np.random.seed(1)
        random.seed(1)
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(False)
        torch.set_num_threads(3)
        torch.set_default_device("meta")
        raise SystemExit(0)

    core.register("99.vandal", solution=lambda: None)(vandal)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    threads = torch.get_num_threads()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    with torch.no_grad():
        r = run_check("99.vandal", None, verbose=False)
        assert not torch.is_grad_enabled()                      # grad mode restored (off, as the notebook had it)
    assert not r.passed and "SystemExit" in r.message and "sys.exit(0)" in r.message
    assert torch.get_default_dtype() == torch.float32 and torch.get_num_threads() == threads
    assert torch.get_default_device() == torch.device("cpu")
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_check_runs_with_grad_mode_on(scratch_registry):
    core.register("99.grad_mode", solution=None)(lambda answer: f"grad {torch.is_grad_enabled()}")
    with torch.no_grad():
        assert run_check("99.grad_mode", None, verbose=False).message == "grad True"


def test_check_reports_an_interrupt_raised_anywhere(scratch_registry):
    def check_that_breaks(answer):
        raise KeyboardInterrupt

    core.register("99.interrupt", solution=None)(check_that_breaks)
    r = run_check("99.interrupt", None, verbose=False)
    assert not r.passed and "KeyboardInterrupt" in r.message


def test_the_how_to_example_of_the_kit_docstring_works(scratch_registry):
    """The example of "How to write a check" is a complete check: run it (under another id)."""
    import textwrap

    doc = kit.__doc__
    code = textwrap.dedent(doc[doc.index("dimension)::") + len("dimension)::"):doc.index("What the kit then does")])
    exec(code.replace("01.gaussian_log_prob", "99.docstring_example"), {"math": math})
    from coursepkg import probability as P

    assert check_passes("99.docstring_example", P.gaussian_log_prob).message == \
        "matches the reference on 6 random inputs"
    check_fails("99.docstring_example", lambda x, mu, lv: P.gaussian_log_prob(x, mu, lv) / x.shape[-1],
                "a mean over dimensions instead of a sum")
    check_fails("99.docstring_example", lambda x, mu, lv: P.gaussian_log_prob(x, mu, lv) + 0.5 * 1.8378770664 *
                x.shape[-1], "log(2*pi)")


# ---------------------------------------------------------------------------------------------- added by the ch05 port
def test_explaining_errors_names_a_mistake_from_an_exception_and_keeps_the_signature():
    def answer(x, probs):
        if bool((probs < 0).any()):
            raise ValueError("all elements of input should be between 0 and 1")
        if x.numel() == 0:
            raise RuntimeError("empty")
        return x * probs

    f = kit.explaining_errors(answer, [("between 0 and 1", "logits taken for probabilities", "apply a sigmoid")])
    x = torch.ones(3, dtype=F64)
    assert torch.equal(call(f, x, torch.full((3,), 0.5, dtype=F64)), 0.5 * x)
    _fails_with(lambda: call(f, x, -x), "likely mistake: logits taken for probabilities. Hint: apply a sigmoid")
    _fails_with(lambda: call(f, torch.ones(0, dtype=F64), torch.ones(0, dtype=F64)), "RuntimeError: empty")
    _fails_with(lambda: call(kit.explaining_errors(lambda x: x.add_(1), []), x.clone()), "`x`", "in place")


def test_mirrored_rows_sees_antithetic_noise_and_nothing_else():
    e = torch.randn(500, 3, generator=_gen(7), dtype=F64)
    scale = 0.5 + torch.rand(1000, 3, generator=_gen(8), dtype=F64)
    noisy = (torch.cat([e, -e]) * scale).float().double() / scale        # the round-off of a float32 sample
    assert kit.mirrored_rows(noisy[torch.randperm(1000, generator=_gen(9))])
    assert not kit.mirrored_rows(torch.randn(1000, 3, generator=_gen(10), dtype=F64))
    assert not kit.mirrored_rows(torch.cat([e, e]))                        # repeated, not mirrored
    assert not kit.mirrored_rows(torch.cat([e, -e])[:, :1])                # one column: cannot tell
    few = torch.randn(1000, 3, generator=_gen(11), dtype=F64)
    few[1] = -few[0]
    assert not kit.mirrored_rows(few)                                      # one pair: could be chance


# ---------------------------------------------------------------------------------------------- added by the ch03 port
def test_require_standard_normal_accepts_normal_noise_and_names_what_is_wrong():
    u = torch.randn(2000, 4, generator=_gen(30), dtype=F64)
    kit.require_standard_normal(u)                                                # passes: returns None
    _fails_with(lambda: kit.require_standard_normal(u[:1].expand(2000, 4)), "the same noise for every row")
    _fails_with(lambda: kit.require_standard_normal(u[:, :1].expand(2000, 4)), "the same noise for every coordinate")
    uniform = (torch.rand(2000, 4, generator=_gen(31), dtype=F64) - 0.5) * math.sqrt(12.0)   # mean 0, variance 1
    _fails_with(lambda: kit.require_standard_normal(uniform), "uniform noise")
    _fails_with(lambda: kit.require_standard_normal(2 * u, what="the noise of z", inputs="x: shape [3]"),
                "the noise of z does not look like standard normal draws (for inputs x: shape [3])", "variance")
    _fails_with(lambda: kit.require_standard_normal(u * float("nan")), "NaN")
    _fails_with(lambda: kit.require_standard_normal(u[:1].expand(2000, 4), messages={"same rows": ("mine", "hint")}),
                "likely mistake: mine. Hint: hint")
