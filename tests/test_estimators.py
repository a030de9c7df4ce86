"""coursepkg.estimators: the score-function and pathwise gradients against analytic ones; Gumbel-softmax and
straight-through."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch
from torch import distributions as td

from coursepkg.estimators import (
    GradientEstimate,
    gumbel_softmax,
    reparam_grad,
    score_function_grad,
    straight_through,
)

# torch's own first use of forward-mode AD scripts its decompositions, which warns on torch >= 2.9

ESTIMATORS = {"score": score_function_grad, "reparam": reparam_grad}


def leaves(*values: float) -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]


def assert_within_stderr(est: GradientEstimate, exact, k: float = 4.0) -> None:
    exact = torch.as_tensor(exact, dtype=est.grad.dtype)
    err = (est.grad - exact).abs()
    assert torch.all(err <= k * est.stderr + 1e-9), f"estimate {est.grad} vs exact {exact}: stderr {est.stderr}"


def gaussian(mu, sigma):
    return td.Normal(mu, sigma)


# (name, f, mu, sigma, exact gradient with respect to (mu, sigma)) for z ~ N(mu, sigma^2)
GAUSSIAN_CASES = [
    ("square", lambda z: z**2, 0.7, 1.3, lambda m, s: (2 * m, 2 * s)),
    ("exp", torch.exp, 0.3, 0.8, lambda m, s: (math.exp(m + s**2 / 2), s * math.exp(m + s**2 / 2))),
    ("sin", torch.sin, 0.4, 0.9, lambda m, s: (math.cos(m) * math.exp(-s**2 / 2),
                                               -s * math.sin(m) * math.exp(-s**2 / 2))),
]


# --------------------------------------------------------------------------------------------------
# unbiasedness and variance
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_worked_example_theta_plus_eps(estimator):
    """E_{x ~ N(theta, 1)}[x^2] = theta^2 + 1, whose gradient is 2 theta."""
    torch.manual_seed(0)
    theta = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    est = ESTIMATORS[estimator](lambda x: x**2, lambda t: td.Normal(t, 1.0), theta, 20_000)
    assert isinstance(est, GradientEstimate) and est.n == 20_000 and est.grad.shape == theta.shape
    assert_within_stderr(est, 3.0)
    assert torch.isclose(est.stderr, (est.variance / est.n).sqrt())
    assert est.per_sample.shape == (20_000,) and torch.isclose(est.per_sample.mean(), est.grad)
    assert torch.isclose(est.per_sample.var(), est.variance) and "±" in str(est)
    if estimator == "reparam":  # per-sample gradient 2x: variance exactly 4
        assert abs(est.variance.item() - 4.0) < 0.2


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("case", GAUSSIAN_CASES, ids=[c[0] for c in GAUSSIAN_CASES])
def test_unbiased_on_gaussian_expectations(estimator, case):
    _, f, mu, sigma, exact = case
    torch.manual_seed(1)
    est = ESTIMATORS[estimator](f, gaussian, leaves(mu, sigma), 20_000)
    assert isinstance(est, list) and len(est) == 2
    for e, g in zip(est, exact(mu, sigma), strict=True):
        assert_within_stderr(e, g)


@pytest.mark.parametrize("case", GAUSSIAN_CASES, ids=[c[0] for c in GAUSSIAN_CASES])
def test_reparam_has_lower_variance_than_score(case):
    _, f, mu, sigma, _ = case
    torch.manual_seed(2)
    score = score_function_grad(f, gaussian, leaves(mu, sigma), 5_000)
    torch.manual_seed(2)
    reparam = reparam_grad(f, gaussian, leaves(mu, sigma), 5_000)
    for s, r in zip(score, reparam, strict=True):
        assert r.variance < 0.75 * s.variance


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_one_parameter_tensor_indexed_inside_dist(estimator):
    """A vector parameter (mu, log sigma) used entry by entry: E[z^2] = mu^2 + sigma^2."""
    torch.manual_seed(3)
    theta = torch.tensor([0.5, math.log(1.2)], dtype=torch.float64, requires_grad=True)
    est = ESTIMATORS[estimator](lambda z: z**2, lambda t: td.Normal(t[0], t[1].exp()), theta, 20_000)
    assert est.grad.shape == (2,) and est.variance.shape == (2,)
    assert_within_stderr(est, [1.0, 2 * 1.2**2])


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_multivariate_gaussian(estimator):
    """E||z||^2 = ||m||^2 + ||L||_F^2 for z ~ N(m, L L^T): gradients 2m and 2L."""
    torch.manual_seed(4)
    m = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    L = torch.tensor([[1.0, 0.0], [0.3, 0.7]], dtype=torch.float64, requires_grad=True)
    est = ESTIMATORS[estimator](lambda z: (z**2).sum(-1), lambda m, L: td.MultivariateNormal(m, scale_tril=L),
                                [m, L], 20_000)
    assert est[1].grad.shape == (2, 2)
    assert_within_stderr(est[0], 2 * m.detach())
    assert_within_stderr(est[1], 2 * L.detach())


def test_reparam_falls_back_without_forward_mode():
    """The Gamma's rsample has no forward-mode rule: one backward pass per sample. d/da E[z] = 1."""
    torch.manual_seed(5)
    est = reparam_grad(lambda z: z, lambda a: td.Gamma(a, 1.0), torch.tensor(2.0, requires_grad=True), 300)
    assert_within_stderr(est, 1.0)


def test_constant_and_leave_one_out_baselines_lower_variance_without_bias():
    theta = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    runs = {}
    for baseline in (None, 1.5**2 + 1, torch.tensor(1.5**2 + 1), "mean", 100.0):
        torch.manual_seed(6)  # the same samples for every baseline
        runs[repr(baseline)] = est = score_function_grad(lambda x: x**2, lambda t: td.Normal(t, 1.0), theta, 20_000,
                                                         baseline=baseline)
        assert_within_stderr(est, 3.0)
    plain = runs["None"].variance
    assert runs["3.25"].variance < 0.75 * plain      # exact: 8 theta^2 + 10 = 28 against theta^4 + 14 theta^2 + 15
    assert abs(runs["3.25"].variance.item() - 28.0) < 4.0
    assert torch.isclose(runs["3.25"].grad, runs[repr(torch.tensor(3.25))].grad)
    assert runs["'mean'"].variance < 0.75 * plain
    assert runs["100.0"].variance > plain            # a bad baseline is still unbiased, but noisier


def test_leave_one_out_baseline_formula():
    """The estimate equals (1/n) sum_i (f_i - mean_{j != i} f_j) * d/dtheta log N(x_i; theta, 1) on the same draws."""
    theta = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(7)
    est = score_function_grad(torch.sin, lambda t: td.Normal(t, 1.0), theta, 50, baseline="mean")
    torch.manual_seed(7)
    x = td.Normal(theta.detach(), 1.0).sample((50,))
    fx = torch.sin(x)
    expected = ((fx - (fx.sum() - fx) / 49) * (x - 0.8)).mean()
    assert torch.isclose(est.grad, expected)


def test_score_function_categorical_matches_exact_gradient():
    logits = torch.tensor([0.2, -0.5, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    table = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
    exact, = torch.autograd.grad((torch.softmax(logits, -1) * table).sum(), logits)
    for baseline in (None, "mean"):
        torch.manual_seed(8)
        est = score_function_grad(lambda k: table[k], lambda lg: td.Categorical(logits=lg), logits, 20_000,
                                  baseline=baseline)
        assert est.grad.shape == (4,)
        assert_within_stderr(est, exact)


def test_score_function_bernoulli_matches_exact_gradient():
    logits = torch.tensor([0.3, -1.0, 0.8], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def f(z):
        return (z * w).sum(-1) ** 2

    def bernoullis(lg):
        return td.Independent(td.Bernoulli(logits=lg), 1)

    zs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    exact, = torch.autograd.grad((bernoullis(logits).log_prob(zs).exp() * f(zs)).sum(), logits)
    torch.manual_seed(9)
    assert_within_stderr(score_function_grad(f, bernoullis, logits, 20_000), exact)


def test_single_sample_gives_nan_variance_and_10k_samples_are_fast():
    theta = torch.tensor(0.5, requires_grad=True)
    one = reparam_grad(lambda x: x**2, lambda t: td.Normal(t, 1.0), theta, 1)
    assert one.n == 1 and torch.isnan(one.variance) and torch.isfinite(one.grad)
    for estimator in ESTIMATORS.values():
        estimator(lambda x: x**2, lambda t: td.Normal(t, 1.0), theta, 10)  # warm up torch.func
        start = time.perf_counter()
        estimator(lambda x: x**2, lambda t: td.Normal(t, 1.0), theta, 10_000)
        assert time.perf_counter() - start < 1.0


def test_reparam_refuses_a_discrete_distribution():
    logits = torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="has no rsample.*use score_function_grad"):
        reparam_grad(lambda k: k.double(), lambda lg: td.Categorical(logits=lg), logits, 10)


# --------------------------------------------------------------------------------------------------
# Gumbel-softmax and straight-through
# --------------------------------------------------------------------------------------------------
LOGITS = torch.tensor([1.0, 0.0, -1.0, 0.5])


@pytest.mark.parametrize("tau", [0.05, 5.0])
def test_gumbel_argmax_is_categorical_for_any_tau(tau):
    n = 40_000
    y = gumbel_softmax(LOGITS.expand(n, 4), tau, generator=torch.Generator().manual_seed(10))
    counts = torch.bincount(y.argmax(-1), minlength=4).double()
    expected = n * torch.softmax(LOGITS, -1).double()
    assert ((counts - expected) ** 2 / expected).sum() < 16.27        # chi-square, 3 dof, p = 0.001
    assert (counts / n - expected / n).abs().max() < 0.01
    assert torch.allclose(y.sum(-1), torch.ones(n)) and torch.all(y >= 0)


def test_gumbel_temperature_limits():
    gen = torch.Generator().manual_seed(11)
    cold = gumbel_softmax(LOGITS.expand(5_000, 4), 0.01, generator=gen)
    assert cold.max(-1).values.mean() > 0.97 and (cold.max(-1).values > 0.99).float().mean() > 0.9
    hot = gumbel_softmax(LOGITS.expand(5_000, 4), 1000.0, generator=gen)
    assert (hot - 0.25).abs().max() < 0.01


def test_gumbel_generator_reproducible():
    a = gumbel_softmax(LOGITS, 0.5, generator=torch.Generator().manual_seed(12))
    b = gumbel_softmax(LOGITS, 0.5, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b)


def test_gumbel_hard_is_one_hot_with_the_soft_gradient():
    w = torch.randn(64, 4, generator=torch.Generator().manual_seed(13))
    grads, samples = {}, {}
    for hard in (False, True):
        logits = torch.randn(64, 4, generator=torch.Generator().manual_seed(14)).requires_grad_()
        samples[hard] = y = gumbel_softmax(logits, 0.7, hard=hard, generator=torch.Generator().manual_seed(15))
        (y * w).sum().backward()
        grads[hard] = logits.grad
    y = samples[True]
    assert torch.all((y == 0) | (y == 1)) and torch.all(y.sum(-1) == 1)
    assert torch.equal(y.argmax(-1), samples[False].argmax(-1))
    assert torch.allclose(grads[True], grads[False], rtol=0, atol=1e-7)
    assert grads[True].abs().sum() > 0


def test_straight_through_vq_style():
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(16)).requires_grad_()
    codebook = torch.randn(4, 3, generator=torch.Generator().manual_seed(17)).requires_grad_()
    z_q = codebook[torch.cdist(z, codebook).argmin(-1)]
    out = straight_through(z_q, z)
    assert torch.equal(out, z_q)                   # exact, where z + (z_q - z).detach() is off by round-off
    w = torch.randn(5, 3)
    (out * w).sum().backward()
    assert torch.equal(z.grad, w)                  # the identity's gradient
    assert codebook.grad is None                   # no gradient through the hard path


def test_straight_through_integer_hard():
    soft = torch.softmax(torch.randn(6, 3), -1).requires_grad_()
    hard = torch.nn.functional.one_hot(soft.argmax(-1), 3)
    out = straight_through(hard, soft)
    assert out.dtype == soft.dtype and torch.equal(out, hard.to(soft.dtype))


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------
def normal(t):
    return td.Normal(t, 1.0)


def square(x):
    return x**2


THETA = torch.tensor(0.5, requires_grad=True)


@pytest.mark.parametrize("estimator", ESTIMATORS.values())
@pytest.mark.parametrize("n, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_n_samples(estimator, n, error):
    with pytest.raises(error, match="n_samples must be a positive int"):
        estimator(square, normal, THETA, n)


@pytest.mark.parametrize("estimator", ESTIMATORS.values())
def test_bad_f_and_dist(estimator):
    with pytest.raises(TypeError, match="f must be callable"):
        estimator(3.0, normal, THETA, 10)
    with pytest.raises(ValueError, match=r"one value per sample, shape \(10,\); got shape \(10, 1\)"):
        estimator(lambda x: x[:, None], normal, THETA, 10)
    with pytest.raises(ValueError, match="one value per sample"):
        estimator(lambda x: 1.0, normal, THETA, 10)
    with pytest.raises(TypeError, match="dist must be callable"):
        estimator(square, td.Normal(0.0, 1.0), THETA, 10)
    with pytest.raises(TypeError, match="must return a torch.distributions.Distribution"):
        estimator(square, lambda t: t, THETA, 10)


@pytest.mark.parametrize("estimator", ESTIMATORS.values())
def test_bad_params(estimator):
    with pytest.raises(ValueError, match="params must require grad"):
        estimator(square, normal, torch.tensor(0.5), 10)
    with pytest.raises(ValueError, match=r"params\[1\] must require grad"):
        estimator(square, gaussian, [THETA, torch.tensor(1.0)], 10)
    with pytest.raises(TypeError, match="params must be a floating-point tensor, got dtype torch.int64"):
        estimator(square, normal, torch.tensor(1), 10)
    with pytest.raises(TypeError, match="params must be a tensor or a non-empty list"):
        estimator(square, normal, 0.5, 10)
    with pytest.raises(TypeError, match="non-empty"):
        estimator(square, normal, [], 10)


def test_bad_baseline():
    with pytest.raises(ValueError, match="baseline must be None, a number, a one-element tensor or 'mean'"):
        score_function_grad(square, normal, THETA, 10, baseline="median")
    with pytest.raises(TypeError, match=r"baseline must be .* of shape \(10,\)"):
        score_function_grad(square, normal, THETA, 10, baseline=torch.zeros(10))
    with pytest.raises(ValueError, match="needs n_samples >= 2"):
        score_function_grad(square, normal, THETA, 1, baseline="mean")


@pytest.mark.parametrize("tau", [0, 0.0, -1.0, math.inf, math.nan])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau must be a positive number"):
        gumbel_softmax(LOGITS, tau)


def test_bad_gumbel_and_straight_through_inputs():
    with pytest.raises(TypeError, match="tau must be a positive number"):
        gumbel_softmax(LOGITS, "1")
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        gumbel_softmax(torch.tensor([1, 2]), 1.0)
    with pytest.raises(ValueError, match=r"logits must be a floating-point tensor of shape \(\.\.\., K\), got shape"):
        gumbel_softmax(torch.tensor(1.0), 1.0)
    with pytest.raises(ValueError, match="hard and soft must have the same shape"):
        straight_through(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError, match="soft must be a floating-point tensor"):
        straight_through(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="hard must be a torch.Tensor"):
        straight_through([0.0, 1.0, 0.0], torch.zeros(3))
