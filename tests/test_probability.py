"""Unit tests of coursepkg.probability.

Every expected value comes from an independent source: torch.distributions, a closed form computed
here, brute-force numerical integration, or sampling (checked within a few standard errors, with
fixed seeds so that the suite is deterministic).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributions as td
import torch.nn.functional as F

from coursepkg import probability as P

DTYPES = [torch.float32, torch.float64]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, g, dtype=torch.float64):
    return torch.randn(*shape, generator=g, dtype=dtype)


def _spd(d: int, g: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A random, well-conditioned symmetric positive-definite matrix."""
    a = _randn(d, d, g=g, dtype=dtype)
    return a @ a.T / d + 0.5 * torch.eye(d, dtype=dtype)


def _tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}


def _diag_normal(mu, logvar):
    return td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)


# ==================================================================================================
# log-densities
# ==================================================================================================
GAUSS_SHAPES = [
    ((5, 3), (5, 3), (5, 3)),  # same shape
    ((7, 1), (7, 1), (7, 1)),  # D = 1
    ((4, 1, 3), (2, 3), (3,)),  # broadcasting of batch dims
    ((6, 4), (4,), (1,)),  # one mean for the batch, one shared log-variance
    ((2,), (2,), (2,)),  # a single event, no batch
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", GAUSS_SHAPES)
def test_gaussian_log_prob_matches_torch(dtype, shapes):
    g = _gen(0)
    sx, smu, slv = shapes
    x, mu, logvar = _randn(*sx, g=g, dtype=dtype), _randn(*smu, g=g, dtype=dtype), _randn(*slv, g=g, dtype=dtype)
    got = P.gaussian_log_prob(x, mu, logvar)
    full = torch.broadcast_shapes(sx, smu, slv)
    ref = _diag_normal(mu.expand(full), logvar.expand(full)).log_prob(x.expand(full))
    assert got.shape == full[:-1]
    assert got.dtype == dtype
    torch.testing.assert_close(got, ref, **_tol(dtype))


def test_gaussian_log_prob_accepts_numbers_for_parameters():
    x = torch.tensor([[0.3, -1.2], [2.0, 0.0]], dtype=torch.float64)
    got = P.gaussian_log_prob(x, 0.0, 0.0)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, td.Normal(0.0, 1.0).log_prob(x).sum(-1))
    # a log-variance of log 4 is a standard deviation of 2
    torch.testing.assert_close(P.gaussian_log_prob(x, 1.0, math.log(4.0)), td.Normal(1.0, 2.0).log_prob(x).sum(-1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [1, 2, 5])
@pytest.mark.parametrize("xshape, mean_batch", [((8,), ()), ((8,), (8,)), ((2, 3), ()), ((), ())])
def test_mvn_log_prob_matches_torch(dtype, D, xshape, mean_batch):
    g = _gen(1)
    x = _randn(*xshape, D, g=g, dtype=dtype)
    mean = _randn(*mean_batch, D, g=g, dtype=dtype)
    cov = _spd(D, g, dtype)
    got = P.mvn_log_prob(x, mean, cov)
    ref = td.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)
    assert got.shape == ref.shape == torch.Size(xshape)
    assert got.dtype == dtype
    torch.testing.assert_close(got, ref, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mvn_log_prob_batched_covariance(dtype):
    g = _gen(2)
    D, N = 3, 4
    x, mean = _randn(N, D, g=g, dtype=dtype), _randn(D, g=g, dtype=dtype)
    cov = torch.stack([_spd(D, g, dtype) for _ in range(N)])
    got = P.mvn_log_prob(x, mean, cov)
    ref = td.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)
    torch.testing.assert_close(got, ref, **_tol(dtype))
    # one x evaluated under a batch of covariances broadcasts like torch.distributions
    got1 = P.mvn_log_prob(x[0], mean, cov)
    torch.testing.assert_close(got1, td.MultivariateNormal(mean, covariance_matrix=cov).log_prob(x[0]), **_tol(dtype))


def test_mvn_log_prob_with_diagonal_cov_equals_gaussian_log_prob():
    g = _gen(3)
    x, mu, logvar = _randn(10, 4, g=g), _randn(4, g=g), _randn(4, g=g)
    torch.testing.assert_close(P.mvn_log_prob(x, mu, torch.diag(torch.exp(logvar))), P.gaussian_log_prob(x, mu, logvar))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xshape, lshape", [((6, 5), (6, 5)), ((6, 5), (5,)), ((3, 1, 2), (4, 2)), ((1,), (1,))])
def test_bernoulli_log_prob_matches_torch(dtype, xshape, lshape):
    g = _gen(4)
    x = torch.randint(0, 2, xshape, generator=g).to(dtype)
    logits = 3 * _randn(*lshape, g=g, dtype=dtype)
    got = P.bernoulli_log_prob(x, logits)
    full = torch.broadcast_shapes(xshape, lshape)
    ref = td.Bernoulli(logits=logits.expand(full)).log_prob(x.expand(full)).sum(-1)
    assert got.shape == full[:-1]
    assert got.dtype == dtype
    torch.testing.assert_close(got, ref, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_log_prob_soft_targets_equal_minus_bce(dtype):
    g = _gen(5)
    x = torch.rand(20, 7, generator=g, dtype=dtype)  # grey values in [0, 1], not binary
    x[0, :2] = torch.tensor([0.0, 1.0], dtype=dtype)  # the end points are allowed
    logits = 2 * _randn(20, 7, g=g, dtype=dtype)
    got = P.bernoulli_log_prob(x, logits)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    torch.testing.assert_close(got, -bce, **_tol(dtype))
    # and the textbook form x log pi + (1 - x) log(1 - pi), in float64 where it is accurate
    pi = torch.sigmoid(logits.double())
    direct = (x.double() * torch.log(pi) + (1 - x.double()) * torch.log1p(-pi)).sum(-1)
    torch.testing.assert_close(got.double(), direct, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_log_prob_extreme_logits_are_finite_and_right(dtype):
    logits = torch.tensor([[100.0], [100.0], [-100.0], [-100.0], [100.0]], dtype=dtype, requires_grad=True)
    x = torch.tensor([[1.0], [0.0], [1.0], [0.0], [0.5]], dtype=dtype)
    got = P.bernoulli_log_prob(x, logits)
    assert torch.isfinite(got).all()
    # log sigma(100) = -log(1 + e^-100) ~ 0 ; log(1 - sigma(100)) = -100 - log(1 + e^-100) ~ -100
    expected = torch.tensor([0.0, -100.0, -100.0, 0.0, -50.0], dtype=dtype)
    torch.testing.assert_close(got.detach(), expected, rtol=0, atol=1e-6)
    got.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # d/dl [x l - softplus(l)] = x - sigmoid(l)
    torch.testing.assert_close(logits.grad, x - torch.sigmoid(logits.detach()))


# ==================================================================================================
# KL divergences
# ==================================================================================================
KL_SHAPES = [((5, 3),) * 4, ((4, 2), (4, 2), (2,), (2,)), ((3, 1, 2), (1, 2), (4, 2), (2,)), ((1,),) * 4]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", KL_SHAPES)
def test_kl_diag_gaussians_matches_torch(dtype, shapes):
    g = _gen(10)
    mq, lq, mp, lp = (_randn(*s, g=g, dtype=dtype) for s in shapes)
    got = P.kl_diag_gaussians(mq, lq, mp, lp)
    full = torch.broadcast_shapes(*shapes)
    ref = td.kl_divergence(_diag_normal(mq.expand(full), lq.expand(full)),
                           _diag_normal(mp.expand(full), lp.expand(full)))
    assert got.shape == full[:-1]
    assert got.dtype == dtype
    torch.testing.assert_close(got, ref, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_standard_normal_matches_torch_lecture_code_and_general_kl(dtype):
    g = _gen(11)
    mu, logvar = _randn(6, 4, g=g, dtype=dtype), _randn(6, 4, g=g, dtype=dtype)
    got = P.kl_standard_normal(mu, logvar)
    lecture = -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=-1)
    torch.testing.assert_close(got, lecture, **_tol(dtype))
    ref = td.kl_divergence(_diag_normal(mu, logvar), _diag_normal(torch.zeros_like(mu), torch.zeros_like(logvar)))
    torch.testing.assert_close(got, ref, **_tol(dtype))
    torch.testing.assert_close(got, P.kl_diag_gaussians(mu, logvar, 0.0, 0.0), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_equal_variance_matches_torch(dtype):
    g = _gen(12)
    mq, mp = _randn(5, 3, g=g, dtype=dtype), _randn(5, 3, g=g, dtype=dtype)
    for var in (0.7, torch.rand(5, generator=g, dtype=dtype) + 0.1):
        v = torch.as_tensor(var, dtype=dtype)
        sd = torch.sqrt(v).reshape(-1, 1).expand(5, 3)
        ref = td.kl_divergence(td.Independent(td.Normal(mq, sd), 1), td.Independent(td.Normal(mp, sd), 1))
        got = P.kl_equal_variance(mq, mp, var)
        assert got.shape == (5,)
        torch.testing.assert_close(got, ref, **_tol(dtype))
        # and the diagonal-Gaussian KL with equal log-variances agrees
        lv = 2 * torch.log(sd)
        torch.testing.assert_close(got, P.kl_diag_gaussians(mq, lv, mp, lv), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_categorical_matches_torch(dtype):
    g = _gen(13)
    p = torch.softmax(2 * _randn(6, 5, g=g, dtype=dtype), -1)
    q = torch.softmax(2 * _randn(6, 5, g=g, dtype=dtype), -1)
    got = P.kl_categorical(p, q)
    ref = td.kl_divergence(td.Categorical(probs=p), td.Categorical(probs=q))
    assert got.shape == (6,)
    torch.testing.assert_close(got, ref, **_tol(dtype))
    # broadcasting: one q against a batch of p
    torch.testing.assert_close(P.kl_categorical(p, q[0]),
                               td.kl_divergence(td.Categorical(probs=p), td.Categorical(probs=q[:1].expand(6, 5))),
                               **_tol(dtype))


def _mc_kl(log_q, log_p, sample_q, n=40_000):
    return P.monte_carlo(lambda z: log_q(z) - log_p(z), sample_q, n)


def _assert_within_se(mc: P.MonteCarloEstimate, exact: torch.Tensor, k: float = 4.5):
    se = mc.stderr.double()
    assert torch.all(se > 0)
    z = (mc.estimate.double() - exact.double()).abs() / se
    assert torch.all(z < k), f"MC {mc.estimate} vs exact {exact}: {z} standard errors"


def test_kl_diag_gaussians_against_monte_carlo():
    g = _gen(20)
    mq, lq = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64), torch.tensor([-0.5, 0.3, 0.0], dtype=torch.float64)
    mp, lp = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), torch.tensor([0.0, 0.5, -0.3], dtype=torch.float64)
    q, p = _diag_normal(mq, lq), _diag_normal(mp, lp)
    mc = _mc_kl(q.log_prob, p.log_prob, lambda m: mq + torch.exp(0.5 * lq) * _randn(m, 3, g=g))
    _assert_within_se(mc, P.kl_diag_gaussians(mq, lq, mp, lp))


def test_kl_standard_normal_against_monte_carlo():
    g = _gen(21)
    mu, logvar = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([-1.0, 0.4], dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    q, p = _diag_normal(mu, logvar), _diag_normal(zero, zero)
    mc = _mc_kl(q.log_prob, p.log_prob, lambda m: mu + torch.exp(0.5 * logvar) * _randn(m, 2, g=g))
    _assert_within_se(mc, P.kl_standard_normal(mu, logvar))


def test_kl_equal_variance_against_monte_carlo():
    g = _gen(22)
    mq, mp = torch.tensor([0.3, 1.0, -2.0], dtype=torch.float64), torch.tensor([0.0, 0.5, -1.0], dtype=torch.float64)
    var = 0.8
    sd = math.sqrt(var)
    q = td.Independent(td.Normal(mq, sd), 1)
    p = td.Independent(td.Normal(mp, sd), 1)
    mc = _mc_kl(q.log_prob, p.log_prob, lambda m: mq + sd * _randn(m, 3, g=g))
    _assert_within_se(mc, P.kl_equal_variance(mq, mp, var))


def test_kl_categorical_against_monte_carlo():
    g = _gen(23)
    p = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.1, 0.3, 0.3, 0.3], dtype=torch.float64)
    mc = P.monte_carlo(lambda k: torch.log(p[k]) - torch.log(q[k]),
                       lambda m: torch.multinomial(p, m, replacement=True, generator=g), 40_000)
    _assert_within_se(mc, P.kl_categorical(p, q))


def _random_kl_inputs(g, n=200, d=4):
    mq, lq, mp, lp = (3 * _randn(n, d, g=g) for _ in range(4))
    p = torch.distributions.Dirichlet(torch.full((d,), 0.5, dtype=torch.float64)).sample((n,))
    q = torch.distributions.Dirichlet(torch.full((d,), 0.5, dtype=torch.float64)).sample((n,))
    return mq, lq, mp, lp, p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)


def test_kl_of_a_distribution_with_itself_is_zero():
    torch.manual_seed(24)
    mq, lq, _, _, p, _ = _random_kl_inputs(_gen(24))
    zero = torch.zeros(mq.shape[0], dtype=torch.float64)
    torch.testing.assert_close(P.kl_diag_gaussians(mq, lq, mq, lq), zero)
    torch.testing.assert_close(P.kl_standard_normal(torch.zeros_like(mq), torch.zeros_like(lq)), zero)
    torch.testing.assert_close(P.kl_equal_variance(mq, mq, 2.5), zero)
    torch.testing.assert_close(P.kl_categorical(p, p), zero)


def test_kl_is_non_negative_on_random_inputs():
    torch.manual_seed(25)
    mq, lq, mp, lp, p, q = _random_kl_inputs(_gen(25))
    for kl in (P.kl_diag_gaussians(mq, lq, mp, lp), P.kl_standard_normal(mq, lq),
               P.kl_equal_variance(mq, mp, torch.rand(mq.shape[0], dtype=torch.float64) + 0.01),
               P.kl_categorical(p, q)):
        assert torch.isfinite(kl).all()
        assert (kl >= -1e-12).all()
        assert (kl > 0).any()


def test_kl_is_asymmetric():
    # KL(N(0,1) || N(0,4)) = 1/2 (log 4 + 1/4 - 1), KL(N(0,4) || N(0,1)) = 1/2 (-log 4 + 4 - 1)
    zero, lv4 = torch.zeros(1, dtype=torch.float64), torch.full((1,), math.log(4.0), dtype=torch.float64)
    forward, backward = P.kl_diag_gaussians(zero, zero, zero, lv4), P.kl_diag_gaussians(zero, lv4, zero, zero)
    torch.testing.assert_close(forward, torch.tensor(0.5 * (math.log(4) + 0.25 - 1), dtype=torch.float64))
    torch.testing.assert_close(backward, torch.tensor(0.5 * (-math.log(4) + 3), dtype=torch.float64))
    assert not torch.allclose(forward, backward)
    p, q = torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5])
    pq, qp = P.kl_categorical(p, q), P.kl_categorical(q, p)
    torch.testing.assert_close(pq, torch.tensor(0.9 * math.log(1.8) + 0.1 * math.log(0.2)))
    torch.testing.assert_close(qp, torch.tensor(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)))
    assert not torch.allclose(pq, qp)


def test_kl_categorical_infinite_when_q_misses_support_of_p():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])
    kl = P.kl_categorical(p, q)
    assert torch.isinf(kl) and kl > 0
    # in the other direction q log(q/p) is finite: 1 * log(1 / 0.5) + 0 * log 0
    torch.testing.assert_close(P.kl_categorical(q, p), torch.tensor(math.log(2.0)))


def test_kl_categorical_zero_log_zero_is_zero():
    p = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.25, 0.75]], dtype=torch.float64)
    q = torch.tensor([[0.5, 0.5], [0.0, 1.0], [0.25, 0.75]], dtype=torch.float64)
    kl = P.kl_categorical(p, q)
    assert not torch.isnan(kl).any()
    torch.testing.assert_close(kl, torch.tensor([math.log(2.0), 0.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("name, bad", [("p", torch.tensor([0.5, 0.6])), ("p", torch.tensor([1.5, -0.5])),
                                       ("q", torch.tensor([0.2, 0.2]))])
def test_kl_categorical_rejects_non_probability_vectors(name, bad):
    good = torch.tensor([0.3, 0.7])
    args = (bad, good) if name == "p" else (good, bad)
    with pytest.raises(ValueError, match=rf"^{name} must be a probability vector"):
        P.kl_categorical(*args)


# ==================================================================================================
# Monte Carlo
# ==================================================================================================
def test_monte_carlo_estimates_a_known_expectation():
    g = _gen(30)
    n = 20_000
    mc = P.monte_carlo(lambda x: x**2, lambda m: _randn(m, g=g), n)
    assert isinstance(mc, P.MonteCarloEstimate)
    assert mc.n == n
    _assert_within_se(mc, torch.tensor(1.0), k=4.0)
    # Var[x^2] = E[x^4] - 1 = 2 for x ~ N(0, 1): the standard error is close to sqrt(2 / n)
    assert abs(mc.stderr.item() / math.sqrt(2 / n) - 1) < 0.1
    assert "±" in str(mc) and f"n={n}" in str(mc)


def test_monte_carlo_vector_valued_f():
    g = _gen(31)
    mc = P.monte_carlo(lambda x: torch.stack([x, x**2, x**3], -1), lambda m: 2 + _randn(m, g=g), 20_000)
    assert mc.estimate.shape == mc.stderr.shape == (3,)
    # x ~ N(2, 1): E x = 2, E x^2 = 5, E x^3 = mu^3 + 3 mu = 14
    _assert_within_se(mc, torch.tensor([2.0, 5.0, 14.0]), k=4.0)
    assert "shape=[3]" in str(mc)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_mean_and_stderr_is_mean_and_unbiased_std_over_sqrt_n(dim):
    g = _gen(32)
    values = 3 + 2 * _randn(5, 8, g=g)
    est = P.mean_and_stderr(values, dim=dim)
    arr = values.numpy()
    n = arr.shape[dim]
    assert est.n == n
    np.testing.assert_allclose(est.estimate.numpy(), arr.mean(axis=dim), rtol=1e-12)
    np.testing.assert_allclose(est.stderr.numpy(), arr.std(axis=dim, ddof=1) / math.sqrt(n), rtol=1e-12)


def test_mean_and_stderr_interval_covers_the_truth_about_95_percent():
    # 400 independent repetitions of a 100-sample estimate of E[x] = 1 for x ~ Exponential(1)
    g = _gen(33)
    values = -torch.log(torch.rand(100, 400, generator=g, dtype=torch.float64))  # Exponential(1)
    est = P.mean_and_stderr(values, dim=0)
    covered = ((est.estimate - 1.0).abs() <= 1.96 * est.stderr).double().mean().item()
    assert 0.90 <= covered <= 0.99, covered
    # and the same through monte_carlo, one call per repetition
    g = _gen(34)
    hits = 0
    for _ in range(400):
        mc = P.monte_carlo(lambda x: x, lambda m: _randn(m, g=g), 50)
        hits += abs(mc.estimate.item()) <= 1.96 * mc.stderr.item()
    assert 0.90 <= hits / 400 <= 0.99, hits / 400


class _Stream:
    """A sampler that hands out the next ``m`` values of a fixed sequence: batching cannot change the draws."""

    def __init__(self, data):
        self.data, self.pos, self.calls = data, 0, []

    def __call__(self, m):
        self.calls.append(m)
        out = self.data[self.pos:self.pos + m]
        self.pos += m
        return out


@pytest.mark.parametrize("batch_size", [1, 10, 64, 103, 1000])
def test_monte_carlo_batching_gives_the_same_estimate(batch_size):
    data = _randn(103, 2, g=_gen(35))
    f = lambda x: x.exp().sum(-1)  # noqa: E731
    whole = P.monte_carlo(f, _Stream(data), 103)
    stream = _Stream(data)
    batched = P.monte_carlo(f, stream, 103, batch_size=batch_size)
    torch.testing.assert_close(batched.estimate, whole.estimate)
    torch.testing.assert_close(batched.stderr, whole.stderr)
    assert batched.n == whole.n == 103
    assert sum(stream.calls) == 103 and max(stream.calls) <= batch_size
    assert len(stream.calls) == math.ceil(103 / batch_size)
    # both equal the plain mean of f over the whole sequence
    torch.testing.assert_close(whole.estimate, f(data).mean())


def test_monte_carlo_detaches_values():
    mu = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    mc = P.monte_carlo(lambda x: x, lambda m: mu + _randn(m, g=_gen(36)), 10)
    assert not mc.estimate.requires_grad


@pytest.mark.parametrize("n, error", [(1, ValueError), (0, ValueError), (-5, ValueError), (2.5, TypeError),
                                      (True, TypeError), ("10", TypeError)])
def test_monte_carlo_rejects_bad_n_samples(n, error):
    with pytest.raises(error, match="n_samples must be an int >= 2"):
        P.monte_carlo(lambda x: x, lambda m: torch.randn(m), n)


@pytest.mark.parametrize("bs, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError)])
def test_monte_carlo_rejects_bad_batch_size(bs, error):
    with pytest.raises(error, match="batch_size must be a positive int"):
        P.monte_carlo(lambda x: x, lambda m: torch.randn(m), 10, batch_size=bs)


@pytest.mark.parametrize("sampler", [lambda m: torch.randn(m + 1), lambda m: torch.randn(1, m),
                                     lambda m: [0.0] * m, lambda m: torch.tensor(1.0)])
def test_monte_carlo_rejects_bad_sampler_output(sampler):
    with pytest.raises(ValueError, match=r"sample\(10\) must return a tensor with first dimension 10"):
        P.monte_carlo(lambda x: x, sampler, 10)


@pytest.mark.parametrize("f", [lambda x: x.mean(), lambda x: x[:-1], lambda x: x.T, lambda x: x.tolist()])
def test_monte_carlo_rejects_f_that_does_not_return_one_value_per_sample(f):
    with pytest.raises(ValueError, match="f must return a tensor with first dimension 10"):
        P.monte_carlo(f, lambda m: torch.randn(m, 3), 10)


def test_mean_and_stderr_errors():
    with pytest.raises(ValueError, match="at least 2 samples"):
        P.mean_and_stderr(torch.randn(1, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        P.mean_and_stderr(torch.randn(4, 1), dim=1)
    with pytest.raises(ValueError, match="scalar"):
        P.mean_and_stderr(torch.tensor(1.0))
    with pytest.raises(TypeError, match="values must be a floating-point tensor"):
        P.mean_and_stderr(torch.arange(10))
    with pytest.raises(TypeError, match="values must be a torch.Tensor"):
        P.mean_and_stderr([1.0, 2.0, 3.0])


def test_log_mean_exp_equals_naive_formula_for_small_inputs():
    a = _randn(6, 4, g=_gen(37))
    torch.testing.assert_close(P.log_mean_exp(a), torch.log(torch.exp(a).mean(0)))
    torch.testing.assert_close(P.log_mean_exp(a, dim=1), torch.log(torch.exp(a).mean(1)))
    torch.testing.assert_close(P.log_mean_exp(a, dim=-1), torch.log(torch.exp(a).mean(-1)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_mean_exp_is_stable_for_large_inputs(dtype):
    a = torch.tensor([1000.0, 1000.0 + math.log(3.0), 1000.0 - 5.0], dtype=dtype)
    assert torch.isinf(torch.log(torch.exp(a).mean()))  # the naive formula overflows
    got = P.log_mean_exp(a)
    assert torch.isfinite(got)
    # log mean exp(1000 + c) = 1000 + log mean exp(c)
    expected = 1000.0 + math.log((1.0 + 3.0 + math.exp(-5.0)) / 3.0)
    assert abs(got.item() - expected) < (1e-3 if dtype == torch.float32 else 1e-10)
    low = P.log_mean_exp(-a)  # the naive formula underflows to log 0 = -inf
    assert torch.isfinite(low)
    assert abs(low.item() - (-1000.0 + math.log((1 + 1 / 3 + math.exp(5.0)) / 3))) < (1e-3 if dtype == torch.float32
                                                                                      else 1e-10)


def test_log_mean_exp_errors():
    with pytest.raises(TypeError, match="a must be a floating-point tensor"):
        P.log_mean_exp(torch.arange(3))
    with pytest.raises(ValueError, match="scalar"):
        P.log_mean_exp(torch.tensor(1.0))


# ==================================================================================================
# reparameterization
# ==================================================================================================
def test_reparameterize_moments():
    n = 40_000
    mu = torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64)
    logvar = torch.tensor([0.0, math.log(0.25), math.log(9.0)], dtype=torch.float64)
    z = P.reparameterize(mu.expand(n, 3), logvar.expand(n, 3), generator=_gen(40))
    assert z.shape == (n, 3) and z.dtype == torch.float64
    var = torch.exp(logvar)
    se_mean = torch.sqrt(var / n)
    assert torch.all((z.mean(0) - mu).abs() < 4 * se_mean)
    se_var = var * math.sqrt(2 / (n - 1))  # standard error of the sample variance of a Gaussian
    assert torch.all((z.var(0) - var).abs() < 4 * se_var)


def test_reparameterize_with_fixed_eps():
    g = _gen(41)
    mu, logvar, eps = _randn(4, 3, g=g), _randn(4, 3, g=g), _randn(4, 3, g=g)
    torch.testing.assert_close(P.reparameterize(mu, logvar, eps), mu + torch.sqrt(torch.exp(logvar)) * eps)
    # eps may carry extra batch dims: several samples per (mu, logvar)
    eps5 = _randn(5, 4, 3, g=g)
    z = P.reparameterize(mu, logvar, eps5)
    assert z.shape == (5, 4, 3)
    torch.testing.assert_close(z, mu + torch.sqrt(torch.exp(logvar)) * eps5)


def test_reparameterize_gradients_are_the_analytic_ones():
    g = _gen(42)
    mu = _randn(3, 2, g=g).requires_grad_()
    logvar = _randn(3, 2, g=g).requires_grad_()
    eps, w = _randn(3, 2, g=g), _randn(3, 2, g=g)
    (w * P.reparameterize(mu, logvar, eps)).sum().backward()
    # z = mu + exp(logvar / 2) eps: dz/dmu = 1, dz/dlogvar = exp(logvar / 2) eps / 2
    torch.testing.assert_close(mu.grad, w)
    torch.testing.assert_close(logvar.grad, w * 0.5 * torch.exp(0.5 * logvar.detach()) * eps)


def test_reparameterize_generator_reproducibility():
    mu, logvar = torch.zeros(1000, 2), torch.zeros(1000, 2)
    a = P.reparameterize(mu, logvar, generator=_gen(7))
    b = P.reparameterize(mu, logvar, generator=_gen(7))
    c = P.reparameterize(mu, logvar, generator=_gen(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    # the noise with a generator is the same as torch.randn from that generator
    torch.testing.assert_close(a, torch.randn(1000, 2, generator=_gen(7)), rtol=0, atol=0)
    # without a generator, the global seed makes it reproducible
    torch.manual_seed(3)
    d = P.reparameterize(mu, logvar)
    torch.manual_seed(3)
    torch.testing.assert_close(d, P.reparameterize(mu, logvar), rtol=0, atol=0)


def test_reparameterize_shape_errors():
    with pytest.raises(ValueError, match=r"mu\[3\], logvar\[4\]"):
        P.reparameterize(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"eps\[2\]"):
        P.reparameterize(torch.zeros(3), torch.zeros(3), torch.zeros(2))


# ==================================================================================================
# Gaussian identities
# ==================================================================================================
def test_sum_of_gaussians_by_sampling():
    g = _gen(50)
    n = 40_000
    mu1, var1 = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 4.0], dtype=torch.float64)
    mu2, var2 = torch.tensor([0.5, 3.0], dtype=torch.float64), torch.tensor([2.0, 1.0], dtype=torch.float64)
    mean, var = P.sum_of_gaussians(mu1, var1, mu2, var2)
    s = mu1 + var1.sqrt() * _randn(n, 2, g=g) + mu2 + var2.sqrt() * _randn(n, 2, g=g)
    assert torch.all((s.mean(0) - mean).abs() < 4 * torch.sqrt(var / n))
    assert torch.all((s.var(0) - var).abs() < 4 * var * math.sqrt(2 / (n - 1)))
    # variances add, standard deviations do not
    assert torch.all((s.var(0) - (var1.sqrt() + var2.sqrt()) ** 2).abs() > 10 * var * math.sqrt(2 / (n - 1)))


def test_sum_of_gaussians_numbers_and_errors():
    mean, var = P.sum_of_gaussians(1.0, 2.0, 3.0, 4.0)
    assert mean.item() == 4.0 and var.item() == 6.0
    with pytest.raises(ValueError, match="non-negative"):
        P.sum_of_gaussians(0.0, -1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"mu1\[2\].*var2\[3\]"):
        P.sum_of_gaussians(torch.zeros(2), torch.ones(2), torch.zeros(2), torch.ones(3))


def _grid_posterior(x, mu0, var0, var_noise):
    """Brute force: normalise prior x likelihood on a fine grid, return its mean and variance."""
    z = torch.linspace(-30, 30, 60_001, dtype=torch.float64)
    logw = td.Normal(mu0, math.sqrt(var0)).log_prob(z) + td.Normal(z, math.sqrt(var_noise)).log_prob(torch.tensor(x))
    w = torch.softmax(logw, 0)
    m = (w * z).sum()
    return m.item(), (w * (z - m) ** 2).sum().item()


@pytest.mark.parametrize("x, mu0, var0, var_noise",
                         [(1.5, 0.0, 1.0, 1.0), (-2.0, 1.0, 4.0, 0.5), (3.0, -1.0, 0.3, 5.0)])
def test_gaussian_posterior_against_grid(x, mu0, var0, var_noise):
    mean, var = P.gaussian_posterior(torch.tensor(x, dtype=torch.float64), mu0, var0, var_noise)
    gm, gv = _grid_posterior(x, mu0, var0, var_noise)
    assert abs(mean.item() - gm) < 1e-6
    assert abs(var.item() - gv) < 1e-6


def test_gaussian_posterior_against_importance_sampling():
    # self-normalised importance sampling with the prior as proposal
    g = _gen(51)
    x, mu0, var0, var_noise = 1.2, 0.5, 2.0, 0.7
    z = mu0 + math.sqrt(var0) * _randn(200_000, g=g)
    w = torch.softmax(td.Normal(z, math.sqrt(var_noise)).log_prob(torch.tensor(x, dtype=torch.float64)), 0)
    m_is = (w * z).sum()
    v_is = (w * (z - m_is) ** 2).sum()
    mean, var = P.gaussian_posterior(torch.tensor(x, dtype=torch.float64), mu0, var0, var_noise)
    assert abs(mean.item() - m_is.item()) < 0.02
    assert abs(var.item() - v_is.item()) < 0.02


def test_gaussian_posterior_broadcasts_and_matches_linear_gaussian_in_1d():
    g = _gen(52)
    xs = 2 * _randn(5, g=g)
    mean, var = P.gaussian_posterior(xs, 0.3, 2.0, 0.5)
    assert mean.shape == (5,)
    lmean, lcov = P.linear_gaussian_posterior(xs[:, None], torch.ones(1, 1, dtype=torch.float64),
                                              torch.zeros(1, dtype=torch.float64),
                                              torch.full((1,), 0.3, dtype=torch.float64),
                                              torch.full((1, 1), 2.0, dtype=torch.float64),
                                              torch.full((1, 1), 0.5, dtype=torch.float64))
    torch.testing.assert_close(mean, lmean[:, 0])
    torch.testing.assert_close(var.expand(5), lcov[0, 0].expand(5))
    # precision adds: 1/var = 1/2 + 1/0.5
    torch.testing.assert_close(var.expand(5), torch.full((5,), 1 / 2.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="var0 and var_noise must be positive"):
        P.gaussian_posterior(xs, 0.0, 0.0, 1.0)


def _linear_gaussian_model(dz, dx, seed, n=5):
    g = _gen(seed)
    A, b = _randn(dx, dz, g=g), _randn(dx, g=g)
    m0, S0, Sn = _randn(dz, g=g), _spd(dz, g), _spd(dx, g)
    x = _randn(n, dx, g=g)
    return x, A, b, m0, S0, Sn


LG_DIMS = [(1, 1), (2, 3), (3, 2), (4, 4)]


@pytest.mark.parametrize("dz, dx", LG_DIMS)
def test_linear_gaussian_posterior_equals_conditioning_of_the_joint(dz, dx):
    x, A, b, m0, S0, Sn = _linear_gaussian_model(dz, dx, 60 + dz + 10 * dx)
    # joint of (z, x): mean (m0, A m0 + b), covariance [[S0, S0 A^T], [A S0, A S0 A^T + Sn]]
    joint_cov = torch.cat([torch.cat([S0, S0 @ A.T], 1), torch.cat([A @ S0, A @ S0 @ A.T + Sn], 1)], 0)
    Szz, Szx, Sxx = joint_cov[:dz, :dz], joint_cov[:dz, dz:], joint_cov[dz:, dz:]
    cond_mean = m0 + (x - (A @ m0 + b)) @ torch.linalg.solve(Sxx, Szx.T)
    cond_cov = Szz - Szx @ torch.linalg.solve(Sxx, Szx.T)
    mean, cov = P.linear_gaussian_posterior(x, A, b, m0, S0, Sn)
    assert mean.shape == (x.shape[0], dz) and cov.shape == (dz, dz)
    torch.testing.assert_close(mean, cond_mean)
    torch.testing.assert_close(cov, cond_cov)
    torch.testing.assert_close(cov, cov.T, rtol=0, atol=0)


@pytest.mark.parametrize("dz, dx", LG_DIMS)
def test_linear_gaussian_posterior_mean_is_the_map(dz, dx):
    x, A, b, m0, S0, Sn = _linear_gaussian_model(dz, dx, 70 + dz + 10 * dx, n=3)
    mean, cov = P.linear_gaussian_posterior(x, A, b, m0, S0, Sn)

    def log_joint(z):
        return (td.MultivariateNormal(m0, S0).log_prob(z)
                + td.MultivariateNormal(z @ A.T + b, Sn).log_prob(x)).sum()

    z = mean.clone().requires_grad_()
    (grad,) = torch.autograd.grad(log_joint(z), z)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-9)
    # away from the mean the gradient is not zero
    (grad_off,) = torch.autograd.grad(log_joint(z + 0.1), z)
    assert grad_off.abs().max() > 1e-3
    # the log joint is quadratic in z with Hessian -cov^{-1}
    H = torch.autograd.functional.hessian(lambda v: log_joint(v[None].expand(3, dz)) / 3, mean[0].detach())
    torch.testing.assert_close(-H, torch.linalg.inv(cov))


def test_linear_gaussian_posterior_covariance_does_not_depend_on_x():
    x, A, b, m0, S0, Sn = _linear_gaussian_model(2, 3, 80)
    _, cov1 = P.linear_gaussian_posterior(x, A, b, m0, S0, Sn)
    _, cov2 = P.linear_gaussian_posterior(x + 10, A, b, m0, S0, Sn)
    torch.testing.assert_close(cov1, cov2)


def test_linear_gaussian_marginal_by_sampling():
    _, A, b, m0, S0, Sn = _linear_gaussian_model(2, 3, 90)
    g = _gen(91)
    n = 100_000
    z = m0 + _randn(n, 2, g=g) @ torch.linalg.cholesky(S0).T
    x = z @ A.T + b + _randn(n, 3, g=g) @ torch.linalg.cholesky(Sn).T
    mean, cov = P.linear_gaussian_marginal(A, b, m0, S0, Sn)
    assert mean.shape == (3,) and cov.shape == (3, 3)
    sd = torch.sqrt(torch.diagonal(cov))
    assert torch.all((x.mean(0) - mean).abs() < 4 * sd / math.sqrt(n))
    # standard error of a sample covariance entry: sqrt((S_ij^2 + S_ii S_jj) / n)
    se = torch.sqrt((cov**2 + torch.outer(sd**2, sd**2)) / n)
    assert torch.all((torch.cov(x.T) - cov).abs() < 4.5 * se)


@pytest.mark.parametrize("dz, dx", LG_DIMS)
def test_linear_gaussian_marginal_candidates_formula(dz, dx):
    # log p(x) = log p(x | z) + log p(z) - log p(z | x), for any z
    x, A, b, m0, S0, Sn = _linear_gaussian_model(dz, dx, 100 + dz + 10 * dx)
    pm, pc = P.linear_gaussian_posterior(x, A, b, m0, S0, Sn)
    mean, cov = P.linear_gaussian_marginal(A, b, m0, S0, Sn)
    log_px = P.mvn_log_prob(x, mean, cov)
    for z in (_randn(x.shape[0], dz, g=_gen(1)), torch.zeros(x.shape[0], dz, dtype=torch.float64), pm + 3.0):
        rhs = (td.MultivariateNormal(z @ A.T + b, Sn).log_prob(x) + td.MultivariateNormal(m0, S0).log_prob(z)
               - td.MultivariateNormal(pm, pc).log_prob(z))
        torch.testing.assert_close(log_px, rhs)


@pytest.mark.parametrize("which, bad, match", [
    ("A", torch.zeros(3), r"A must be a \(Dx, Dz\) matrix"),
    ("b", torch.zeros(2), r"b must have shape \(3,\) .*got \[2\]"),
    ("prior_mean", torch.zeros(3), r"prior_mean must have shape \(2,\)"),
    ("prior_cov", torch.eye(3), r"prior_cov must have shape \(2, 2\)"),
    ("noise_cov", torch.eye(2), r"noise_cov must have shape \(3, 3\)"),
    ("x", torch.zeros(4, 2), r"x must have shape \(N, Dx\)"),
    ("prior_cov", torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "prior_cov must be symmetric positive definite"),
    ("noise_cov", -torch.eye(3), "noise_cov must be symmetric positive definite"),
    ("prior_cov", torch.tensor([[1.0, 5.0], [0.0, 1.0]]), "prior_cov must be symmetric positive definite"),
    ("A", torch.zeros(3, 2, dtype=torch.int64), "A must be a floating-point tensor"),
    ("b", [0.0, 0.0, 0.0], "b must be a torch.Tensor"),
])
def test_linear_gaussian_bad_input(which, bad, match):
    args = {"x": torch.zeros(4, 3), "A": torch.ones(3, 2), "b": torch.zeros(3), "prior_mean": torch.zeros(2),
            "prior_cov": torch.eye(2), "noise_cov": torch.eye(3)}
    args[which] = bad
    exc = TypeError if "floating" in match or "torch.Tensor" in match else ValueError
    with pytest.raises(exc, match=match):
        P.linear_gaussian_posterior(**args)
    if which != "x":
        del args["x"]
        with pytest.raises(exc, match=match):
            P.linear_gaussian_marginal(**args)


# ==================================================================================================
# bad input: clear errors
# ==================================================================================================
def _z(*shape):
    return torch.zeros(*shape)


SHAPE_MISMATCH = [
    (P.gaussian_log_prob, (_z(3, 2), _z(4, 2), _z(2)), r"x\[3, 2\], mu\[4, 2\], logvar\[2\]"),
    (P.gaussian_log_prob, (_z(3, 2), _z(2), _z(3)), r"logvar\[3\]"),
    (P.bernoulli_log_prob, (_z(3, 2), _z(3)), r"x\[3, 2\], logits\[3\]"),
    (P.kl_diag_gaussians, (_z(3, 2), _z(3, 2), _z(4, 2), _z(2)), r"mu_q\[3, 2\].*mu_p\[4, 2\]"),
    (P.kl_standard_normal, (_z(5), _z(4)), r"mu\[5\], logvar\[4\]"),
    (P.kl_equal_variance, (_z(5, 2), _z(5, 3), 1.0), r"mu_q\[5, 2\], mu_p\[5, 3\]"),
    (P.kl_categorical, (torch.full((3,), 1 / 3), torch.full((2,), 0.5)), r"p\[3\], q\[2\]"),
    (P.sum_of_gaussians, (_z(2), _z(3), _z(2), _z(2)), r"mu1\[2\], var1\[3\]"),
    (P.gaussian_posterior, (_z(2), _z(3), torch.ones(1), torch.ones(1)), r"x\[2\], mu0\[3\]"),
    (P.mvn_log_prob, (_z(3, 2), _z(4, 2), torch.eye(2)), r"x\[3, 2\].*mean\[4, 2\]"),
    (P.mvn_log_prob, (_z(3, 2), _z(2), torch.eye(2).expand(4, 2, 2)), r"x\[3, 2\].*cov\[4, 2, 2\]"),
    (P.mvn_log_prob, (_z(3, 2), _z(3), torch.eye(3)), r"x\[3, 2\], mean\[3\] and cov\[3, 3\] disagree on D"),
]


@pytest.mark.parametrize("fn, args, match", SHAPE_MISMATCH, ids=lambda v: getattr(v, "__name__", ""))
def test_mismatched_shapes_raise_value_error_naming_the_arguments(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


NON_TENSOR = [
    (P.gaussian_log_prob, ([0.0, 1.0], _z(2), _z(2)), "x"),
    (P.gaussian_log_prob, (_z(2), np.zeros(2), _z(2)), "mu"),
    (P.bernoulli_log_prob, (_z(2), "logits"), "logits"),
    (P.mvn_log_prob, (_z(2), _z(2), [[1.0, 0.0], [0.0, 1.0]]), "cov"),
    (P.kl_diag_gaussians, (_z(2), _z(2), None, _z(2)), "mu_p"),
    (P.kl_standard_normal, ((0.0, 0.0), _z(2)), "mu"),
    (P.kl_equal_variance, (_z(2), _z(2), "1.0"), "var"),
    (P.kl_categorical, (_z(2), np.ones(2) / 2), "q"),
    (P.reparameterize, (_z(2), _z(2), [0.0, 0.0]), "eps"),
    (P.gaussian_log_prob, (_z(2), True, _z(2)), "mu"),  # a bool is not a number here
]


@pytest.mark.parametrize("fn, args, name", NON_TENSOR, ids=lambda v: getattr(v, "__name__", ""))
def test_non_tensor_input_raises_type_error(fn, args, name):
    with pytest.raises(TypeError, match=rf"^{name} must be a torch\.Tensor or a number"):
        fn(*args)


INT_TENSOR = [
    (P.gaussian_log_prob, (torch.zeros(2, dtype=torch.int64), _z(2), _z(2)), "x"),
    (P.bernoulli_log_prob, (torch.ones(3, 2, dtype=torch.int32), _z(2)), "x"),
    (P.mvn_log_prob, (_z(2), _z(2), torch.eye(2, dtype=torch.int64)), "cov"),
    (P.kl_diag_gaussians, (_z(2), _z(2), _z(2), torch.zeros(2, dtype=torch.int64)), "logvar_p"),
    (P.kl_standard_normal, (torch.zeros(2, dtype=torch.int64), _z(2)), "mu"),
    (P.kl_equal_variance, (_z(2), torch.zeros(2, dtype=torch.int64), 1.0), "mu_p"),
    (P.kl_categorical, (torch.tensor([0, 1]), torch.tensor([0.5, 0.5])), "p"),
    (P.reparameterize, (_z(2), torch.zeros(2, dtype=torch.int64)), "logvar"),
    (P.sum_of_gaussians, (torch.zeros(2, dtype=torch.int64), 1.0, 0.0, 1.0), "mu1"),
    (P.gaussian_posterior, (torch.zeros(2, dtype=torch.bool), 0.0, 1.0, 1.0), "x"),
]


@pytest.mark.parametrize("fn, args, name", INT_TENSOR, ids=lambda v: getattr(v, "__name__", ""))
def test_integer_tensor_raises_type_error(fn, args, name):
    with pytest.raises(TypeError, match=rf"^{name} must be a floating-point tensor"):
        fn(*args)


@pytest.mark.parametrize("cov", [torch.tensor([[1.0, 2.0], [2.0, 1.0]]), torch.zeros(2, 2), -torch.eye(2),
                                 torch.tensor([[1.0, 0.0], [0.0, float("nan")]])])
def test_mvn_log_prob_non_pd_cov(cov):
    with pytest.raises(ValueError, match="cov is not symmetric positive definite"):
        P.mvn_log_prob(_z(3, 2), _z(2), cov)


def test_mvn_log_prob_non_symmetric_cov():
    # a PD lower triangle with a different upper triangle is not a covariance matrix
    with pytest.raises(ValueError, match="cov is not symmetric positive definite"):
        P.mvn_log_prob(_z(3, 2), _z(2), torch.tensor([[1.0, 5.0], [0.0, 1.0]]))


@pytest.mark.parametrize("cov", [torch.ones(2), torch.ones(2, 3), torch.tensor(1.0)])
def test_mvn_log_prob_cov_not_square(cov):
    with pytest.raises(ValueError, match=r"cov must be a \(D, D\) matrix"):
        P.mvn_log_prob(_z(3, 2), _z(2), cov)


SCALARS = [
    (P.gaussian_log_prob, (torch.tensor(0.5), 0.0, 0.0)),
    (P.bernoulli_log_prob, (torch.tensor(1.0), torch.tensor(0.3))),
    (P.kl_diag_gaussians, (torch.tensor(0.0), 0.0, 1.0, 0.0)),
    (P.kl_standard_normal, (torch.tensor(1.0), torch.tensor(0.0))),
    (P.kl_equal_variance, (torch.tensor(0.0), torch.tensor(1.0), 1.0)),
    (P.kl_categorical, (torch.tensor(1.0), torch.tensor(1.0))),
    (P.mvn_log_prob, (torch.tensor(0.5), torch.tensor(0.0), torch.eye(1))),
    (P.mvn_log_prob, (torch.zeros(1), 0.0, torch.eye(1))),
]


@pytest.mark.parametrize("fn, args", SCALARS, ids=lambda v: getattr(v, "__name__", ""))
def test_scalars_without_event_dimension_raise(fn, args):
    with pytest.raises(ValueError, match="scalars; give the event dimension explicitly"):
        fn(*args)


@pytest.mark.parametrize("bad", [-0.1, 1.5, 2.0])
def test_bernoulli_x_outside_unit_interval(bad):
    x = torch.tensor([[0.0, 1.0, bad]])
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        P.bernoulli_log_prob(x, torch.zeros(3))


def test_kl_equal_variance_bad_var():
    mq, mp = _z(4, 3), torch.ones(4, 3)
    for var in (0.0, -1.0, torch.tensor([1.0, 1.0, -1.0, 1.0])):
        with pytest.raises(ValueError, match="var must be positive"):
            P.kl_equal_variance(mq, mp, var)
    # one variance per distribution: a per-dimension variance (D,) or a (N, 1) column does not fit the batch
    for var in (torch.ones(3), torch.ones(4, 1), torch.ones(2, 4)):
        with pytest.raises(ValueError, match=r"var must be a number or broadcast to the batch shape \[4\]"):
            P.kl_equal_variance(mq, mp, var)
    with pytest.raises(ValueError, match=r"var must be a number or broadcast to the batch shape \[\]"):
        P.kl_equal_variance(torch.zeros(3), torch.ones(3), torch.tensor([1.0, 2.0, 3.0]))


def test_effective_sample_size_bounds_and_invariance():
    S = 50
    assert P.effective_sample_size(torch.zeros(S)) == pytest.approx(S)
    one = torch.full((S,), -torch.inf)
    one[3] = 0.0
    assert P.effective_sample_size(one) == pytest.approx(1.0)
    log_w = torch.randn(4, S, dtype=torch.float64)
    w = log_w.exp()
    direct = w.sum(-1) ** 2 / (w ** 2).sum(-1)
    torch.testing.assert_close(P.effective_sample_size(log_w), direct)
    torch.testing.assert_close(P.effective_sample_size(log_w + 1000.0), direct)  # no overflow
    torch.testing.assert_close(P.effective_sample_size(log_w.T, dim=0), direct)
    with pytest.raises(ValueError, match="NaN"):
        P.effective_sample_size(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="scalar"):
        P.effective_sample_size(torch.tensor(0.0))


def test_compare_prints_one_line_and_fails_beyond_tol_standard_errors(capsys):
    mc = P.MonteCarloEstimate(torch.tensor(1.02), torch.tensor(0.01), 100)
    assert P.compare("mean", 1.0, mc) == pytest.approx(2.0)
    assert capsys.readouterr().out == "mean: exact 1.0000 | Monte Carlo 1.0200 ± 0.0100\n"
    with pytest.raises(AssertionError, match="2.0 standard errors"):
        P.compare("mean", 1.0, mc, tol=1.5)
    exact = P.MonteCarloEstimate(torch.tensor(3.0), torch.tensor(0.0), 10)
    assert P.compare("constant", 3.0, exact) == 0.0
    with pytest.raises(AssertionError):
        P.compare("constant", 3.1, exact)
    with pytest.raises(TypeError, match="MonteCarloEstimate"):
        P.compare("x", 1.0, 1.02)
