"""coursepkg.diffusion: the schedule, the forward process, its posterior, the predictor conversions,
and the closed-form diffusion of a Gaussian mixture (coursepkg.diffusion.exact)."""

from __future__ import annotations

import math

import pytest
import torch

from coursepkg import diffusion as D
from coursepkg import gmm as G
from coursepkg import probability as P
from coursepkg.diffusion import exact


@pytest.fixture(params=["linear", "quadratic", "cosine", "constant"])
def schedule(request):
    return D.Schedule.named(request.param, 200 if request.param != "constant" else 50)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# the schedule and its one indexing convention
# --------------------------------------------------------------------------------------------------
def test_schedule_is_indexed_by_t_with_the_boundary_at_zero(schedule):
    T = schedule.T
    assert schedule.betas.shape == (T + 1,) and schedule.betas[0] == 0 and schedule.alpha_bar[0] == 1
    manual = torch.ones((), dtype=torch.float64)
    for t in (1, 2, T):
        manual = torch.prod(1 - schedule.betas[1:t + 1])
        assert schedule.alpha_bar[t] == pytest.approx(float(manual), rel=1e-12)  # alpha_bar_t, no shift
    assert (schedule.alpha_bar[1:] < schedule.alpha_bar[:-1]).all()
    assert schedule.posterior_variance[1] == 0  # q(x_0 | x_1, x_0) is a point mass
    assert torch.all(schedule.posterior_variance[2:] < schedule.betas[2:])


def test_named_schedules_follow_their_definitions():
    T = 1000
    lin = D.Schedule.named("linear", T)
    torch.testing.assert_close(lin.betas[1:], torch.linspace(1e-4, 0.02, T, dtype=torch.float64))
    quad = D.Schedule.named("quadratic", T, beta_start=1e-4, beta_end=0.02)
    assert quad.betas[1] == pytest.approx(1e-4) and quad.betas[T] == pytest.approx(0.02)
    assert torch.allclose(quad.betas[1:].sqrt().diff(), quad.betas[1:].sqrt().diff()[0].expand(T - 1))
    cos = D.Schedule.named("cosine", T)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731  Nichol and Dhariwal, eq. 17
    for t in (1, 10, 500, 900):
        assert cos.alpha_bar[t] == pytest.approx(f(t) / f(0), rel=1e-9)
    assert cos.betas.max() == pytest.approx(D.MAX_BETA)  # the last step is clipped
    const = D.Schedule.named("constant", 10, beta=0.1)
    assert const.alpha_bar[10] == pytest.approx(0.9 ** 10)


def test_alpha_bar_T_goes_to_zero_as_T_grows():
    # alpha_bar_T = prod(1 - beta_t) = exp(sum log(1 - beta_t)), and log(1 - b) = -b - b^2/2 - O(b^3)
    for T in (100, 1000, 4000):
        s = D.Schedule.named("linear", T)
        b = s.betas[1:]
        assert s.alpha_bar[T] == pytest.approx(math.exp(-(b + b ** 2 / 2).sum().item()), rel=1e-3)
    assert D.Schedule.named("linear", 4000).alpha_bar[-1] < 1e-15


def test_bad_schedules_and_steps_are_refused():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        D.Schedule.named("cosin", 10)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        D.Schedule.from_betas([0.1, 1.0])
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        D.Schedule.from_betas([0.1, -0.1])
    with pytest.raises(TypeError, match="takes s"):
        D.Schedule.named("cosine", 10, beta=0.1)
    s = D.Schedule.named("linear", 10)
    x = torch.zeros(3, 2, dtype=torch.float64)
    for t in (0, 11, torch.tensor([1, 0, 2])):
        with pytest.raises(ValueError, match=r"1\.\.T = 1\.\.10"):
            D.q_sample(x, t, x, s)
    with pytest.raises(TypeError, match="integer"):
        D.q_sample(x, 2.0, x, s)
    with pytest.raises(ValueError, match="one step per row"):
        D.q_sample(x, torch.tensor([1, 2]), x, s)
    with pytest.raises(ValueError, match="must match"):
        D.q_sample(x, 1, torch.zeros(3, 3, dtype=torch.float64), s)


# --------------------------------------------------------------------------------------------------
# the forward process and its posterior
# --------------------------------------------------------------------------------------------------
def test_q_sample_matches_running_the_chain_step_by_step():
    s = D.Schedule.named("linear", 100, beta_start=1e-3, beta_end=0.05)
    n, gen = 200_000, _gen(1)
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    x = x0.clone()
    for t in range(1, 61):  # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t
        x = (1 - s.betas[t]).sqrt() * x + s.betas[t].sqrt() * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    one_shot = D.q_sample(x0, 60, torch.randn(n, 1, generator=gen, dtype=torch.float64), s)
    ab = s.alpha_bar[60]
    for sample in (x, one_shot):
        mean, var = P.mean_and_stderr(sample[:, 0]), P.mean_and_stderr((sample[:, 0] - 1.5 * ab.sqrt()) ** 2)
        assert abs(mean.estimate - 1.5 * ab.sqrt()) < 5 * mean.stderr
        assert abs(var.estimate - (1 - ab)) < 5 * var.stderr
    # the lecture's slip, noise scaled by beta_t instead of sqrt(beta_t), gives another variance
    assert abs(float((1 - ab)) - float(s.betas[1:61].pow(2).sum())) > 0.1


def test_posterior_matches_gaussian_conditioning_and_per_row_steps(schedule):
    T = schedule.T
    gen = _gen(2)
    x0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    xt = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    for t in (2, T // 2, T):
        mean, var = D.q_posterior(x0, xt, t, schedule)
        # x_{t-1} ~ N(sqrt(ab_{t-1}) x0, (1 - ab_{t-1}) I), x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps
        ab_prev, alpha, beta = schedule.alpha_bar[t - 1], schedule.alphas[t], schedule.betas[t]
        for row in range(5):
            m, S = P.linear_gaussian_posterior(xt[row:row + 1], alpha.sqrt() * torch.eye(3, dtype=torch.float64),
                                               torch.zeros(3, dtype=torch.float64), ab_prev.sqrt() * x0[row],
                                               (1 - ab_prev) * torch.eye(3, dtype=torch.float64),
                                               beta * torch.eye(3, dtype=torch.float64))
            torch.testing.assert_close(mean[row], m[0])
            torch.testing.assert_close(var.expand(5, 3)[row], S.diagonal())
    steps = torch.tensor([2, 3, T, 2, 5])
    mean, var = D.q_posterior(x0, xt, steps, schedule)
    for row, t in enumerate(steps.tolist()):
        m1, v1 = D.q_posterior(x0[row:row + 1], xt[row:row + 1], t, schedule)
        torch.testing.assert_close(mean[row], m1[0])
        torch.testing.assert_close(var[row].expand(3), v1[0].expand(3))


def test_predictor_conversions_round_trip_and_agree(schedule):
    gen = _gen(3)
    x0 = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 2, 7, schedule.T // 3, schedule.T - 1, schedule.T])
    xt = D.q_sample(x0, t, eps, schedule)
    torch.testing.assert_close(D.x0_from_eps(xt, t, eps, schedule), x0)
    torch.testing.assert_close(D.eps_from_x0(xt, t, x0, schedule), eps)
    # the mean written with eps is the posterior mean written with x0
    torch.testing.assert_close(D.mean_from_eps(xt, t, eps, schedule), D.q_posterior(x0, xt, t, schedule)[0])
    score = D.score_from_eps(xt, t, eps, schedule)
    torch.testing.assert_close(D.eps_from_score(xt, t, score, schedule), eps)
    # the score of q(x_t | x_0) by autograd
    xr = xt.clone().requires_grad_()
    ab = schedule.at(schedule.alpha_bar, t, xt)
    logq = P.gaussian_log_prob(xr, ab.sqrt() * x0, (1 - ab).log().expand_as(xr))
    torch.testing.assert_close(torch.autograd.grad(logq.sum(), xr)[0], score)


# --------------------------------------------------------------------------------------------------
# the exact diffusion of a mixture
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def mixture():
    chol = torch.tensor([[[0.5, 0.0], [0.2, 0.3]], [[0.3, 0.0], [-0.1, 0.6]]], dtype=torch.float64)
    return G.GMM(torch.tensor([0.3, 0.7], dtype=torch.float64),
                 torch.tensor([[-2.0, 1.0], [1.5, -0.5]], dtype=torch.float64), chol @ chol.mT)


def test_exact_marginal_matches_simulation(mixture):
    s = D.Schedule.named("linear", 100, beta_start=1e-3, beta_end=0.05)
    x0, _ = mixture.sample(200_000, generator=_gen(4))
    t = 30
    xt = D.q_sample(x0, t, torch.randn(x0.shape, generator=_gen(5), dtype=torch.float64), s)
    noised = exact.marginal(mixture, t, s)
    mean = (noised.weights[:, None] * noised.means).sum(0)
    est = P.mean_and_stderr(xt)
    assert ((est.estimate - mean).abs() < 5 * est.stderr).all()
    # the exact log-density is the right one: its average over the samples is the negative entropy,
    # and a wrong variance (alpha_bar Sigma without the added noise) fits worse
    wrong = G.GMM(noised.weights, noised.means, s.alpha_bar[t] * mixture.covariances)
    assert noised.log_likelihood(xt).mean() > wrong.log_likelihood(xt).mean() + 0.1


def test_exact_score_is_the_gradient_of_the_exact_log_density(mixture):
    s = D.Schedule.named("cosine", 50)
    x = torch.randn(40, 2, generator=_gen(6), dtype=torch.float64) * 2
    for t in (1, 10, 49):
        xr = x.clone().requires_grad_()
        logq = exact.marginal(mixture, t, s).log_likelihood(xr).sum()
        torch.testing.assert_close(exact.score(mixture, x, t, s), torch.autograd.grad(logq, xr)[0])


def test_tweedie_denoiser_equals_the_posterior_mean_computed_component_by_component(mixture):
    s = D.Schedule.named("linear", 100, beta_start=1e-3, beta_end=0.05)
    xt = torch.randn(25, 2, generator=_gen(7), dtype=torch.float64)
    for t in (5, 60):
        ab = s.alpha_bar[t]
        noised = exact.marginal(mixture, t, s)
        resp = G.e_step(xt, noised)
        expected = torch.zeros_like(xt)
        eye = torch.eye(2, dtype=torch.float64)
        for k in range(2):  # x_t | x_0 ~ N(sqrt(ab) x_0, (1 - ab) I), x_0 ~ N(mu_k, Sigma_k)
            m, _ = P.linear_gaussian_posterior(xt, ab.sqrt() * eye, torch.zeros(2, dtype=torch.float64),
                                               mixture.means[k], mixture.covariances[k], (1 - ab) * eye)
            expected += resp[:, k:k + 1] * m
        torch.testing.assert_close(exact.posterior_mean_x0(mixture, xt, t, s), expected)


def test_optimal_denoiser_minimises_the_simplified_loss(mixture):
    s = D.Schedule.named("linear", 100, beta_start=1e-3, beta_end=0.05)
    model = exact.OptimalDenoiser(mixture, s)
    x0, _ = mixture.sample(50_000, generator=_gen(8))
    eps = torch.randn(x0.shape, generator=_gen(9), dtype=torch.float64)
    t = torch.randint(1, 101, (x0.shape[0],), generator=_gen(10))
    xt = D.q_sample(x0, t, eps, s)
    best = ((model(xt, t) - eps) ** 2).sum(-1)
    for other in (model(xt, t) * 1.1, model(xt, t) * 0.9, torch.zeros_like(xt)):
        diff = P.mean_and_stderr(((other - eps) ** 2).sum(-1) - best)
        assert diff.estimate > 5 * diff.stderr  # E[eps | x_t] beats a scaled copy and zero
    one = model(xt[:3], 7)
    torch.testing.assert_close(one, model(xt[:3], torch.tensor([7, 7, 7])))
    with pytest.raises(TypeError, match="GMM"):
        exact.OptimalDenoiser("not a mixture", s)


def test_elbo_weight_turns_each_predictors_error_into_the_kl_of_the_means(schedule):
    gen = _gen(11)
    x0, eps, eps_hat = (torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    for variance, steps in (("beta_tilde", torch.tensor([2, 5, schedule.T - 1, schedule.T])),
                            ("beta", torch.tensor([2, 3, 7, schedule.T]))):
        xt = D.q_sample(x0, steps, eps, schedule)
        true_mean, _ = D.q_posterior(x0, xt, steps, schedule)
        model_mean = D.mean_from_eps(xt, steps, eps_hat, schedule)
        var = D.reverse_variance(schedule, variance)[steps]
        kl = torch.stack([P.kl_equal_variance(true_mean[i], model_mean[i], var[i]) for i in range(4)])
        # the same model written as each of the four predictors: one KL, four weights
        x0_hat = D.x0_from_eps(xt, steps, eps_hat, schedule)
        errors = {"eps": eps - eps_hat, "x0": x0 - x0_hat, "mean": true_mean - model_mean,
                  "score": D.score_from_eps(xt, steps, eps, schedule) - D.score_from_eps(xt, steps, eps_hat, schedule)}
        for target, err in errors.items():
            weighted = D.elbo_weight(steps, schedule, variance=variance, target=target) * (err ** 2).sum(-1)
            torch.testing.assert_close(weighted, kl.reshape(4), msg=f"{variance}, {target}")
    with pytest.raises(ValueError, match="t = 2..T"):
        D.elbo_weight(1, schedule)
    with pytest.raises(ValueError, match="'beta_tilde', 'beta'"):
        D.elbo_weight(2, schedule, variance="tilde")
    with pytest.raises(ValueError, match="target must be one of"):
        D.elbo_weight(2, schedule, target="v")


def test_the_weights_in_snr_form(schedule):
    # with sigma_t^2 = beta_tilde_t: w_x0 = (SNR_{t-1} - SNR_t) / 2 and w_eps = (SNR_{t-1} / SNR_t - 1) / 2
    t = torch.arange(2, schedule.T + 1)
    snr = schedule.snr
    torch.testing.assert_close(D.elbo_weight(t, schedule, target="x0"), (snr[t - 1] - snr[t]) / 2)
    torch.testing.assert_close(D.elbo_weight(t, schedule, target="eps"), (snr[t - 1] / snr[t] - 1) / 2)


def test_reverse_kernel_is_bayes_rule_on_a_grid_and_its_mean_is_the_denoised_posterior_mean():
    # 1-D, where q(x_{t-1} | x_t) ∝ q(x_t | x_{t-1}) q(x_{t-1}) can be normalised on a fine grid
    data = G.GMM(torch.tensor([0.4, 0.6], dtype=torch.float64), torch.tensor([[-1.5], [1.0]], dtype=torch.float64),
                 torch.tensor([[[0.05]], [[0.2]]], dtype=torch.float64))
    s = D.Schedule.named("linear", 20, beta_start=0.05, beta_end=0.3)  # large steps: far from Gaussian
    grid = torch.linspace(-6, 6, 24_001, dtype=torch.float64)[:, None]
    for t, xt in ((3, 0.4), (12, -0.7), (20, 1.3)):
        xt = torch.tensor([xt], dtype=torch.float64)
        log_prior = exact.marginal(data, t - 1, s).log_likelihood(grid) if t > 1 else data.log_likelihood(grid)
        beta = s.betas[t]
        log_lik = P.gaussian_log_prob(xt, (1 - beta).sqrt() * grid, beta.log().expand_as(grid))
        dens = (log_prior + log_lik).exp()
        dens = dens / torch.trapezoid(dens, grid[:, 0])
        kernel = exact.reverse_kernel(data, xt, t, s)
        torch.testing.assert_close(kernel.log_likelihood(grid).exp(), dens, atol=1e-6, rtol=1e-5)
        mean = (kernel.weights[:, None] * kernel.means).sum(0)
        x0_hat = exact.posterior_mean_x0(data, xt[None], t, s)
        torch.testing.assert_close(mean, D.q_posterior(x0_hat, xt[None], t, s)[0][0])
    with pytest.raises(ValueError, match=r"one point of shape \(1,\)"):
        exact.reverse_kernel(data, torch.zeros(3, 1, dtype=torch.float64), 3, s)
