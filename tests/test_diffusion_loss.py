"""coursepkg.diffusion, chapter 08's second half: the forward chain step by step, the variance-exploding
process, the ELBO term by term (both decompositions), the simplified loss, the discrete decoder, and the
exact expectations of coursepkg.diffusion.exact (quadrature, the optimal ELBO, the Gaussian fit)."""

from __future__ import annotations

import math

import pytest
import torch

from coursepkg import diffusion as D
from coursepkg import gmm as G
from coursepkg import probability as P
from coursepkg.diffusion import exact as E

from .helpers import seeded, skewed_mixture_1d

F64 = torch.float64


_gen = seeded


@pytest.fixture
def data():
    return skewed_mixture_1d()


@pytest.fixture
def ring():
    """A 2-D mixture: four Gaussians on a circle, one with a tilted covariance."""
    angles = torch.arange(4, dtype=F64) * math.pi / 2
    means = 2 * torch.stack([angles.cos(), angles.sin()], 1)
    covs = 0.1 * torch.eye(2, dtype=F64).repeat(4, 1, 1)
    covs[1] = torch.tensor([[0.2, 0.08], [0.08, 0.1]], dtype=F64)
    return G.GMM(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64), means, covs)


# --------------------------------------------------------------------------------------------------
# the forward process one step at a time
# --------------------------------------------------------------------------------------------------
def test_the_simulated_chain_has_the_closed_form_marginal():
    s = D.Schedule.named("linear", 50, beta_start=1e-3, beta_end=0.1)
    x0 = torch.full((40_000, 2), 1.5, dtype=F64)
    chain = D.forward_chain(x0, s, generator=_gen(1))
    assert chain.shape == (51, 40_000, 2) and torch.equal(chain[0], x0)
    for t in (1, 10, 50):
        ab = float(s.alpha_bar[t])
        mean, var = chain[t].mean(0), chain[t].var(0)
        se_mean, se_var = math.sqrt((1 - ab) / 40_000), (1 - ab) * math.sqrt(2 / 40_000)
        assert torch.all((mean - ab ** 0.5 * 1.5).abs() < 5 * se_mean), t
        assert torch.all((var - (1 - ab)).abs() < 5 * se_var), t


def test_q_step_scales_the_noise_by_the_standard_deviation():
    s = D.Schedule.named("constant", 5, beta=0.36)
    x, eps = torch.ones(3, 1, dtype=F64), torch.ones(3, 1, dtype=F64)
    torch.testing.assert_close(D.q_step(x, 2, eps, s), torch.full((3, 1), 0.8 + 0.6, dtype=F64))
    with pytest.raises(ValueError, match="1..T"):
        D.q_step(x, 0, eps, s)


def test_variance_exploding_marginal_variance_grows_by_sigma_squared():
    sig = D.ve_sigmas(20, 0.01, 10.0)
    assert sig.shape == (21,) and sig[0] == 0 and sig[1] == pytest.approx(0.01) and sig[20] == pytest.approx(10.0)
    x = 0.5 * torch.randn(50_000, 1, generator=_gen(2), dtype=F64)           # Var(x_0) = 0.25
    for t in range(1, 21):
        x = D.ve_q_step(x, t, torch.randn(x.shape, generator=_gen(100 + t), dtype=F64), sig)
    assert float(x.var()) == pytest.approx(0.25 + 100.0, rel=0.03)
    with pytest.raises(ValueError, match="sigma_max must exceed"):
        D.ve_sigmas(10, 1.0, 0.5)
    with pytest.raises(ValueError, match="t must lie in 1..20"):
        D.ve_q_step(x, 21, x, sig)


def test_reverse_variance_uses_beta_1_for_the_decoder():
    s = D.Schedule.named("cosine", 30)
    for v in D.VARIANCES:
        r = D.reverse_variance(s, v)
        assert r[1] == s.betas[1] and torch.all(r[1:] > 0)
    torch.testing.assert_close(D.reverse_variance(s, "beta_tilde")[2:], s.posterior_variance[2:])
    with pytest.raises(ValueError, match="variance must be one of"):
        D.reverse_variance(s, "learned")


# --------------------------------------------------------------------------------------------------
# exact expectations
# --------------------------------------------------------------------------------------------------
def test_quadrature_is_exact_for_the_moments_of_a_mixture(ring):
    mean, cov = E.moments(ring)
    torch.testing.assert_close(E.expectation(lambda x: x, ring), mean)
    centred = E.expectation(lambda x: (x - mean)[:, :, None] * (x - mean)[:, None, :], ring)
    torch.testing.assert_close(centred, cov)
    sample = ring.sample(200_000, generator=_gen(3)).x
    torch.testing.assert_close(mean, sample.mean(0), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="too many"):
        E.expectation(lambda x: x, G.GMM(torch.ones(1, dtype=F64), torch.zeros(1, 4, dtype=F64),
                                         torch.eye(4, dtype=F64)[None]))


def test_expected_log_likelihood_against_monte_carlo(data):
    x = data.sample(200_000, generator=_gen(4)).x
    mc = P.mean_and_stderr(data.log_likelihood(x))
    assert abs(float(E.expected_log_likelihood(data)) - mc.estimate) < 4 * mc.stderr


@pytest.mark.parametrize("fixture", ["data", "ring"])
def test_denoising_error_is_the_floor_of_the_noise_error(fixture, request):
    mix = request.getfixturevalue(fixture)
    s = D.Schedule.named("cosine", 40)
    model = E.OptimalDenoiser(mix, s)
    steps = torch.tensor([1, 7, 20, 39])
    floor = E.denoising_error(mix, steps, s)
    assert floor.shape == (4,) and torch.all(floor > 0) and torch.all(floor < mix.dim)
    x0 = mix.sample(60_000, generator=_gen(5)).x
    for t, f in zip(steps.tolist(), floor, strict=True):
        eps = torch.randn(x0.shape, generator=_gen(t), dtype=F64)
        xt = D.q_sample(x0, t, eps, s)
        err = P.mean_and_stderr(((eps - model(xt, t)) ** 2).sum(1))
        assert abs(err.estimate - float(f)) < 5 * err.stderr + 1e-9, t
        worse = ((eps - 0.9 * model(xt, t)) ** 2).sum(1).mean()                  # any other predictor is worse
        assert worse > f
    one = E.denoising_error(mix, 7, s)
    assert one.shape == () and float(one) == pytest.approx(float(floor[1]), rel=1e-12)


def test_gaussian_fit_kl_is_zero_for_a_gaussian_and_grows_with_the_step(data):
    g = G.GMM(torch.ones(1, dtype=F64), torch.tensor([[0.3, -1.0]], dtype=F64),
              torch.tensor([[[1.0, 0.4], [0.4, 0.5]]], dtype=F64))
    assert abs(float(E.gaussian_fit_kl(g))) < 1e-10
    assert float(E.gaussian_fit_kl(data)) > 0.1
    # one reverse step from the same x_t at the same alpha_bar_t, taken with a growing beta_t
    kls = []
    for beta in (0.001, 0.01, 0.1, 0.4):
        s = D.Schedule.from_betas(torch.tensor([1 - 0.5 / (1 - beta), beta], dtype=F64))  # alpha_bar_2 = 0.5
        kernel = E.reverse_kernel(data, torch.tensor([0.2], dtype=F64), 2, s)
        kls.append(float(E.gaussian_fit_kl(kernel)))
    assert all(a < b for a, b in zip(kls[:-1], kls[1:], strict=True)) and kls[0] < 1e-4 < 1e-2 < kls[-1]


# --------------------------------------------------------------------------------------------------
# the ELBO
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variance", D.VARIANCES)
def test_both_decompositions_estimate_the_exact_optimal_elbo(data, variance):
    s = D.Schedule.named("cosine", 12)
    model = E.OptimalDenoiser(data, s)
    exact = E.optimal_elbo(data, s, variance=variance)
    assert exact.steps.shape == (1, 13) and exact.steps[0, 0] == 0
    x0 = data.sample(20_000, generator=_gen(6)).x
    decomposed = D.elbo(model, x0, s, variance=variance, generator=_gen(7))
    chain = D.elbo_consistency(model, x0, s, variance=variance, generator=_gen(8))
    for name, terms in (("decomposed", decomposed), ("consistency", chain)):
        est = P.mean_and_stderr(terms.total)
        assert abs(est.estimate - float(exact.total[0])) < 4 * est.stderr, name
    # term by term, the decomposed estimate matches the exact terms too
    mean_terms = decomposed.steps.mean(0)
    se_terms = decomposed.steps.std(0) / math.sqrt(20_000)
    assert torch.all((mean_terms - exact.steps[0]).abs() <= 5 * se_terms + 1e-12)
    assert float(decomposed.prior.mean()) == pytest.approx(float(exact.prior[0]), rel=0.05)
    # the bound holds: -ELBO >= -E log q(x_0)
    assert float(exact.total[0]) > -float(E.expected_log_likelihood(data))


def test_the_consistency_term_written_as_a_kl_is_not_the_elbo(data):
    s = D.Schedule.named("cosine", 12)
    model = E.OptimalDenoiser(data, s)
    x0 = data.sample(5_000, generator=_gen(9)).x
    as_written = D.elbo_consistency(model, x0, s, generator=_gen(10), as_written=True).total
    exact = float(E.optimal_elbo(data, s).total[0])
    est = P.mean_and_stderr(as_written)
    assert est.estimate - exact > 20 * est.stderr


def test_per_term_the_decomposed_estimator_is_less_noisy(data):
    s = D.Schedule.named("cosine", 20)
    model = E.OptimalDenoiser(data, s)
    x0 = data.sample(4_000, generator=_gen(11)).x
    a = D.elbo(model, x0, s, generator=_gen(12)).steps[:, 2:]
    b = D.elbo_consistency(model, x0, s, generator=_gen(13)).steps[:, 2:]
    assert float((b.var(0) / a.var(0)).median()) > 10


def test_one_step_variance_is_the_variance_of_the_one_random_term_estimator(data):
    s = D.Schedule.named("cosine", 6)
    model = E.OptimalDenoiser(data, s)
    terms = D.elbo(model, data.sample(20_000, generator=_gen(19)).x, s, generator=_gen(20))
    torch.testing.assert_close(terms.terms.sum(1), terms.total)
    assert terms.terms.shape == (20_000, 7)
    k = torch.randint(0, 7, (20_000,), generator=_gen(21))
    one_term = 7 * terms.terms[torch.arange(20_000), k]                   # the estimator, sampled
    assert float(terms.one_step_variance()) == pytest.approx(float(one_term.var()), rel=0.05)
    assert float(one_term.mean()) == pytest.approx(float(terms.total.mean()), abs=4 * float(one_term.std()) / 141)


def test_the_optimal_elbo_tightens_as_T_grows(data):
    gaps = []
    for T in (10, 100, 1000):
        gap = E.optimal_elbo(data, D.Schedule.named("cosine", T), variance="beta").total[0] + \
            E.expected_log_likelihood(data)
        gaps.append(float(gap))
    assert 0 < gaps[2] < gaps[1] < gaps[0]


def test_elbo_handles_images_and_the_discrete_decoder():
    s = D.Schedule.named("linear", 6, beta_start=1e-3, beta_end=0.2)
    x0 = (torch.randint(0, 256, (5, 1, 3, 3), generator=_gen(14)).to(F64) / 255) * 2 - 1
    model = lambda xt, t: torch.zeros_like(xt)  # noqa: E731
    terms = D.elbo(model, x0, s, decoder="discrete", generator=_gen(15))
    assert terms.steps.shape == (5, 7) and terms.prior.shape == (5,) and torch.all(terms.steps[:, 1] > 0)
    # each discrete mass is at most 1, so the decoder term is a non-negative number of nats
    assert torch.isfinite(terms.total).all()


def test_the_discrete_decoder_is_a_distribution_over_the_256_values():
    values = torch.arange(256, dtype=F64) / 255 * 2 - 1
    for mean, var in ((0.0, 1e-3), (0.999, 1e-4), (-1.3, 0.05), (0.2, 4.0)):
        logp = D.discretized_gaussian_log_likelihood(values[:, None], torch.full((256, 1), mean, dtype=F64), var)
        assert float(torch.logsumexp(logp, 0)) == pytest.approx(0.0, abs=1e-9)
    # an interior bin holds the Gaussian mass of its width 2/255
    x, m, v = values[100].reshape(1, 1), (values[100] + 0.003).reshape(1, 1), 1e-4
    phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731  the standard normal CDF
    mass = phi((float(x) + 1 / 255 - float(m)) / v ** 0.5) - phi((float(x) - 1 / 255 - float(m)) / v ** 0.5)
    assert float(D.discretized_gaussian_log_likelihood(x, m, v).exp()) == pytest.approx(mass, rel=1e-12)
    with pytest.raises(ValueError, match="on the grid"):
        D.discretized_gaussian_log_likelihood(torch.tensor([[0.1]], dtype=F64), torch.zeros(1, 1, dtype=F64), 0.1)


def test_simplified_loss_of_the_optimal_model_is_the_mean_floor(data):
    s = D.Schedule.named("cosine", 30)
    model = E.OptimalDenoiser(data, s)
    x0 = data.sample(100_000, generator=_gen(16)).x
    loss = D.simplified_loss(model, x0, s, generator=_gen(17))
    floor = float(E.denoising_error(data, torch.arange(1, 31), s).mean())   # D = 1
    assert float(loss) == pytest.approx(floor, rel=0.03)
    # differentiable in a network's parameters
    net = torch.nn.Linear(1, 1).to(F64)
    D.simplified_loss(lambda xt, t: net(xt), x0[:64], s).backward()
    assert net.weight.grad is not None


def test_bad_models_and_arguments_get_clear_errors(data):
    s = D.Schedule.named("cosine", 5)
    x0 = data.sample(8, generator=_gen(18)).x
    with pytest.raises(ValueError, match="shaped like xt"):
        D.elbo(lambda xt, t: xt[:, :0], x0, s)
    with pytest.raises(TypeError, match="model must be callable"):
        D.elbo("model", x0, s)
    with pytest.raises(ValueError, match="decoder must be one of"):
        D.elbo(E.OptimalDenoiser(data, s), x0, s, decoder="bernoulli")
    with pytest.raises(TypeError, match="Schedule"):
        E.optimal_elbo(data, "cosine")
    with pytest.raises(TypeError, match="GMM"):
        E.denoising_error(x0, 2, s)
