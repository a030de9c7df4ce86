"""coursepkg.gmm: the model, the E and M steps, EM against scikit-learn, the naive Monte Carlo estimators."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture
from torch import distributions as td

from coursepkg import gmm as G
from coursepkg import probability as P


def random_gmm(k: int, d: int, seed: int, dtype=torch.float64, spread: float = 4.0) -> G.GMM:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.2
    A = torch.randn(k, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cov = A @ A.mT + 0.3 * torch.eye(d, dtype=torch.float64)
    return G.GMM(w / w.sum(), spread * torch.randn(k, d, generator=g, dtype=torch.float64), cov).to(dtype=dtype)


def torch_mixture(gmm: G.GMM):
    return td.MixtureSameFamily(td.Categorical(probs=gmm.weights),
                                td.MultivariateNormal(gmm.means, covariance_matrix=gmm.covariances))


def sklearn_from(init: G.GMM, iters: int, reg_covar: float = 1e-6) -> GaussianMixture:
    return GaussianMixture(init.n_components, covariance_type="full", reg_covar=reg_covar, tol=0.0, max_iter=iters,
                           init_params="random_from_data", weights_init=init.weights.numpy(),
                           means_init=init.means.numpy(), precisions_init=np.linalg.inv(init.covariances.numpy()))


# ---------------------------------------------------------------------------------------------- the model
def test_sample_has_the_right_moments():
    gmm = random_gmm(3, 2, seed=0)
    x, z = gmm.sample(200_000, generator=torch.Generator().manual_seed(1))
    assert x.shape == (200_000, 2) and z.shape == (200_000,) and x.dtype == torch.float64
    freq = torch.bincount(z, minlength=3).double() / len(z)
    assert torch.allclose(freq, gmm.weights, atol=0.005)
    for k in range(3):
        assert torch.allclose(x[z == k].mean(0), gmm.means[k], atol=0.03)
        assert torch.allclose(torch.cov(x[z == k].T), gmm.covariances[k], atol=0.04)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k, d", [(1, 1), (3, 2), (4, 5)])
def test_log_likelihood_matches_torch_distributions(k, d, dtype):
    gmm = random_gmm(k, d, seed=k * 10 + d, dtype=dtype)
    x = 3 * torch.randn(40, d, generator=torch.Generator().manual_seed(0)).to(dtype)
    ours = G.log_likelihood(x, gmm)
    ref = torch_mixture(gmm.to(dtype=torch.float64)).log_prob(x.double())
    assert ours.shape == (40,) and ours.dtype == dtype
    assert torch.allclose(ours.double(), ref, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-4)
    joint = G.joint_log_prob(x, gmm)
    assert joint.shape == (40, k)
    assert torch.allclose(torch.logsumexp(joint, 1), ours)


def test_log_likelihood_is_stable_far_from_every_component():
    gmm = random_gmm(3, 2, seed=3)
    x = torch.tensor([[300.0, -250.0]], dtype=torch.float64)
    ll = G.log_likelihood(x, gmm)
    naive = torch.log((gmm.weights * torch_mixture(gmm).component_distribution.log_prob(x[:, None]).exp()).sum(-1))
    assert torch.isinf(naive).all()  # summing densities underflows...
    assert torch.isfinite(ll).all() and ll.item() < -1000  # ...log-sum-exp does not
    assert torch.allclose(ll, torch_mixture(gmm).log_prob(x))


def test_log_likelihood_is_differentiable():
    gmm = random_gmm(2, 3, seed=4)
    x = torch.randn(20, 3, dtype=torch.float64)
    means = gmm.means.clone().requires_grad_(True)
    ll = G.log_likelihood(x, G.GMM(gmm.weights, means, gmm.covariances)).sum()
    (grad,) = torch.autograd.grad(ll, means)
    assert torch.allclose(grad, G.grad_log_likelihood_means(x, gmm).sum(0), atol=1e-10)


# ---------------------------------------------------------------------------------------------- E and M steps
def test_e_step_is_bayes_rule():
    gmm = random_gmm(4, 2, seed=5)
    x = 4 * torch.randn(100, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    resp = G.e_step(x, gmm)
    assert resp.shape == (100, 4)
    assert torch.allclose(resp.sum(1), torch.ones(100, dtype=torch.float64))
    log_lik = torch_mixture(gmm).component_distribution.log_prob(x[:, None])
    _, log_post = P.bayes_rule(gmm.weights.log(), log_lik)
    assert torch.allclose(resp, log_post.exp(), atol=1e-12)


def test_m_step_matches_the_closed_forms():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(80, 3, generator=g, dtype=torch.float64) + 5.0  # off-centre: tests the centring
    resp = torch.softmax(torch.randn(80, 4, generator=g, dtype=torch.float64), 1)
    new = G.m_step(x, resp, reg_covar=1e-3)
    X, R = x.numpy(), resp.numpy()
    for k in range(4):
        nk = R[:, k].sum()
        mu = (R[:, k, None] * X).sum(0) / nk
        cov = sum(R[n, k] * np.outer(X[n] - mu, X[n] - mu) for n in range(80)) / nk + 1e-3 * np.eye(3)
        assert abs(new.weights[k].item() - nk / 80) < 1e-12
        np.testing.assert_allclose(new.means[k].numpy(), mu, rtol=1e-10)
        np.testing.assert_allclose(new.covariances[k].numpy(), cov, rtol=1e-9, atol=1e-12)


def test_m_step_is_accurate_in_float32_for_tight_distant_clusters():
    # E[x x^T] - mu mu^T would cancel catastrophically here; centring each component does not
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(500, 2, generator=g) * 0.05 + 100, torch.randn(500, 2, generator=g) * 0.05 - 100])
    resp = torch.zeros(1000, 2)
    resp[:500, 0], resp[500:, 1] = 1.0, 1.0
    new = G.m_step(x.float(), resp, reg_covar=0.0)
    exact = torch.stack([torch.cov(x[:500].double().T, correction=0), torch.cov(x[500:].double().T, correction=0)])
    assert ((new.covariances.double() - exact).abs().max() / exact.abs().max()).item() < 1e-4


def test_m_step_maximises_the_expected_complete_log_likelihood():
    gmm = random_gmm(3, 2, seed=7)
    x, _ = gmm.sample(300, generator=torch.Generator().manual_seed(3))
    resp = G.e_step(x, random_gmm(3, 2, seed=8))
    best = G.m_step(x, resp, reg_covar=0.0)

    def q(model):
        return (resp * G.joint_log_prob(x, model)).sum().item()

    g = torch.Generator().manual_seed(4)
    for _ in range(20):  # any perturbation of the optimum lowers the objective
        w = torch.softmax(best.weights.log() + 0.05 * torch.randn(3, generator=g, dtype=torch.float64), 0)
        m = best.means + 0.05 * torch.randn(3, 2, generator=g, dtype=torch.float64)
        c = best.covariances * (1 + 0.05 * torch.rand(3, 1, 1, generator=g, dtype=torch.float64))
        assert q(G.GMM(w, m, c)) < q(best)


def test_a_component_without_points_does_not_produce_nan():
    x = torch.randn(50, 2, dtype=torch.float64)
    resp = torch.zeros(50, 3, dtype=torch.float64)
    resp[:, 0], resp[:25, 1], resp[:25, 0] = 1.0, 1.0, 0.0
    new = G.m_step(x, resp, reg_covar=1e-6)
    for t in (new.weights, new.means, new.covariances):
        assert torch.isfinite(t).all()
    assert torch.allclose(new.covariances[2], 1e-6 * torch.eye(2, dtype=torch.float64))
    # in a fit: a component initialised far away from the data loses every point, and EM carries on
    init = G.GMM(torch.full((3,), 1 / 3, dtype=torch.float64),
                 torch.tensor([[0.0, 0.0], [1.0, 1.0], [1e4, 1e4]], dtype=torch.float64),
                 torch.eye(2, dtype=torch.float64).expand(3, 2, 2).clone())
    result = G.fit(x, 3, init=init, max_iter=10, tol=0)
    assert all(math.isfinite(h) for h in result.history)


def test_elbo_is_below_the_log_likelihood_with_equality_at_the_posterior():
    gmm = random_gmm(3, 2, seed=9)
    x, _ = gmm.sample(200, generator=torch.Generator().manual_seed(5))
    ll = G.log_likelihood(x, gmm).mean()
    assert torch.allclose(G.elbo(x, gmm, G.e_step(x, gmm)), ll, atol=1e-12)
    other = torch.softmax(torch.randn(200, 3, dtype=torch.float64), 1)
    gap = ll - G.elbo(x, gmm, other)
    # the gap is the mean KL from q to the posterior
    kl = P.kl_categorical(other, G.e_step(x, gmm)).mean()
    assert gap > 0 and torch.allclose(gap, kl, atol=1e-10)


# ---------------------------------------------------------------------------------------------- EM
@pytest.mark.parametrize("seed", range(4))
def test_em_never_decreases_the_log_likelihood(seed):
    x, _ = random_gmm(4, 3, seed=seed, spread=1.5).sample(400, generator=torch.Generator().manual_seed(seed))
    result = G.fit(x, 4, init="random", seed=seed, max_iter=40, tol=0)
    h = result.history
    assert len(h) == 41 and result.n_iter == 40
    assert all(b >= a - 1e-10 for a, b in zip(h, h[1:], strict=False))
    assert abs(h[-1] - G.log_likelihood(x, result.gmm).mean().item()) < 1e-10  # history[-1] is the returned model


def test_em_recovers_a_known_mixture():
    true = G.GMM(torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64),
                 torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]], dtype=torch.float64),
                 torch.tensor([[[1.0, 0.3], [0.3, 0.5]], [[0.6, 0.0], [0.0, 0.6]], [[0.8, -0.4], [-0.4, 1.0]]],
                              dtype=torch.float64))
    x, _ = true.sample(20_000, generator=torch.Generator().manual_seed(0))
    fitted = G.fit(x, 3, seed=0, n_init=3).gmm
    order = min(itertools.permutations(range(3)), key=lambda p: (fitted.means[list(p)] - true.means).norm().item())
    order = list(order)
    assert torch.allclose(fitted.weights[order], true.weights, atol=0.01)
    assert torch.allclose(fitted.means[order], true.means, atol=0.05)
    assert torch.allclose(fitted.covariances[order], true.covariances, atol=0.05)


@pytest.mark.parametrize("n, d, k, iters", [(500, 2, 3, 25), (2000, 5, 4, 15), (300, 1, 2, 30)])
def test_em_agrees_with_scikit_learn(n, d, k, iters):
    x, _ = random_gmm(k, d, seed=n, spread=2.0).sample(n, generator=torch.Generator().manual_seed(n))
    init = G.init_kmeans_pp(x, k, seed=1)
    ours = G.fit(x, k, init=init, max_iter=iters, tol=0)
    sk = sklearn_from(init, iters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0 never converges
        sk.fit(x.numpy())
    assert ours.n_iter == iters == sk.n_iter_
    assert abs(ours.history[-1] - sk.score(x.numpy())) < 1e-6
    np.testing.assert_allclose(ours.gmm.weights.numpy(), sk.weights_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.gmm.means.numpy(), sk.means_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.gmm.covariances.numpy(), sk.covariances_, rtol=1e-6, atol=1e-8)


def test_fit_in_float32_stays_float32_and_close_to_float64():
    x, _ = random_gmm(3, 2, seed=11).sample(1000, generator=torch.Generator().manual_seed(6))
    init = G.init_kmeans_pp(x, 3, seed=0)
    r64 = G.fit(x, 3, init=init, max_iter=20, tol=0)
    r32 = G.fit(x.float(), 3, init=init, max_iter=20, tol=0)
    assert r32.gmm.means.dtype == torch.float32
    assert abs(r32.history[-1] - r64.history[-1]) < 1e-3


def test_tolerance_stops_early_and_reports_convergence():
    x, _ = random_gmm(2, 2, seed=12).sample(500, generator=torch.Generator().manual_seed(7))
    r = G.fit(x, 2, seed=0, tol=1e-3, max_iter=200)
    assert r.converged and r.n_iter < 200 and abs(r.history[-1] - r.history[-2]) < 1e-3
    r = G.fit(x, 2, seed=0, tol=0, max_iter=3)
    assert not r.converged and r.n_iter == 3


def test_restarts_keep_the_best_fit_and_callback_sees_every_iteration():
    from coursepkg.data import toy_2d

    x = toy_2d("eight_gaussians", 800, seed=0, dtype=torch.float64)
    finals = [G.fit(x, 8, init="random", seed=s, max_iter=30).history[-1] for s in range(4)]
    best = G.fit(x, 8, init="random", seed=0, n_init=4, max_iter=30)
    assert abs(best.history[-1] - max(finals)) < 1e-12
    seen = []
    r = G.fit(x, 8, seed=0, max_iter=5, tol=0, callback=lambda it, g, resp: seen.append((it, resp.shape)))
    assert [s[0] for s in seen] == list(range(5)) and seen[0][1] == (800, 8) and r.n_iter == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
def test_fit_runs_on_the_gpu():
    x, _ = random_gmm(3, 2, seed=13).sample(1000, generator=torch.Generator().manual_seed(8))
    init = G.init_kmeans_pp(x, 3, seed=0)
    cpu = G.fit(x, 3, init=init, max_iter=10, tol=0)
    gpu = G.fit(x.cuda(), 3, init=init, max_iter=10, tol=0)
    assert gpu.gmm.means.is_cuda and abs(gpu.history[-1] - cpu.history[-1]) < 1e-8


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_a_clear_error():
    x = torch.randn(10, 2, dtype=torch.float64)
    good = random_gmm(2, 2, seed=0)
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        G.fit(x[0], 2)
    with pytest.raises(ValueError, match="more than the N=10"):
        G.fit(x, 11)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        G.fit(bad, 2)
    with pytest.raises(ValueError, match="init must be"):
        G.fit(x, 2, init="kmeans")
    with pytest.raises(ValueError, match="D=3 features"):
        G.fit(torch.randn(10, 3, dtype=torch.float64), 2, init=good)
    with pytest.raises(ValueError, match="has 2 components, but k=3"):
        G.fit(x, 3, init=good)
    with pytest.raises(ValueError, match="reg_covar"):
        G.fit(x, 2, reg_covar=-1.0)
    with pytest.raises(TypeError, match="x must be a floating-point tensor of shape"):
        G.fit(torch.ones(10, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"resp must have shape \(N, K\)"):
        G.m_step(x, torch.ones(9, 2, dtype=torch.float64))


def test_invalid_gmm_parameters_are_named():
    w, m = torch.tensor([0.5, 0.5]), torch.zeros(2, 2)
    eye = torch.eye(2).expand(2, 2, 2).clone()
    not_pd = eye.clone()
    not_pd[1] = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match=r"component\(s\) \[1\] is not positive definite"):
        G.GMM(w, m, not_pd)
    not_sym = eye.clone()
    not_sym[0, 0, 1] = 0.5
    with pytest.raises(ValueError, match="not symmetric"):
        G.GMM(w, m, not_sym)
    with pytest.raises(ValueError, match="sum to 1"):
        G.GMM(torch.tensor([0.5, 0.6]), m, eye)
    with pytest.raises(ValueError, match="shapes disagree"):
        G.GMM(torch.tensor([1.0]), m, eye)
    with pytest.raises(ValueError, match="NaN"):
        G.GMM(w, torch.full((2, 2), float("nan")), eye)


def test_collapse_without_regularisation_is_a_clear_error():
    # three identical points and a component sitting on them: its covariance becomes singular
    x = torch.cat([torch.zeros(3, 2), torch.randn(30, 2, generator=torch.Generator().manual_seed(0)) + 5]).double()
    init = G.GMM(torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([[0.0, 0.0], [5.0, 5.0]]).double(),
                 torch.stack([0.01 * torch.eye(2), torch.eye(2)]).double())
    with pytest.raises(ValueError, match=r"component\(s\) \[0\] collapsed.*increase reg_covar"):
        G.fit(x, 2, init=init, reg_covar=0.0, max_iter=5)
    assert math.isfinite(G.fit(x, 2, init=init, reg_covar=1e-3, max_iter=5).history[-1])


# ---------------------------------------------------------------------------------------------- naive Monte Carlo
TWO = G.GMM(torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([[-2.0], [2.0]], dtype=torch.float64),
            torch.ones(2, 1, 1, dtype=torch.float64))
X1 = torch.tensor([[1.5]], dtype=torch.float64)


def _repeat(fn, reps):
    return torch.stack([fn(torch.Generator().manual_seed(i)) for i in range(reps)])


def test_naive_likelihood_is_unbiased_but_its_log_is_biased_low():
    exact = G.log_likelihood(X1, TWO).exp().item()
    draws = _repeat(lambda g: torch.stack(G.naive_mc_likelihood(X1, TWO, 4, generator=g))[:, 0], 4000)
    p_hat, log_p_hat = draws[:, 0], draws[:, 1]
    est = P.mean_and_stderr(p_hat)
    assert abs(est.estimate.item() - exact) < 4 * est.stderr.item()            # unbiased
    log_est = P.mean_and_stderr(log_p_hat)
    assert math.log(exact) - log_est.estimate.item() > 8 * log_est.stderr.item()  # Jensen: biased low


def test_ratio_gradient_estimator_is_biased_for_small_s_and_consistent():
    exact = G.grad_log_likelihood_means(X1, TWO)[0, 0, 0].item()     # d/d mu_1 log p(x)
    small = _repeat(lambda g: G.naive_mc_grad_means(X1, TWO, 2, generator=g)[0, 0, 0], 3000)
    est = P.mean_and_stderr(small)
    assert abs(est.estimate.item() - exact) > 10 * est.stderr.item()             # biased at S = 2
    large = _repeat(lambda g: G.naive_mc_grad_means(X1, TWO, 20_000, generator=g)[0, 0, 0], 30)
    assert abs(large.mean().item() - exact) < 0.1 * abs(exact) + 1e-3          # consistent as S grows
    assert small.var() > 100 * large.var()


def test_naive_log_evidence_matches_the_exact_evidence_in_one_dimension_and_fails_in_many():
    from coursepkg.elbo import LinearGaussianModel

    g = torch.Generator().manual_seed(5)
    errors = {}
    for d in (1, 32):
        W, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        model = LinearGaussianModel(W, noise_var=0.25)
        x = model.sample(6, generator=g).x
        est = G.naive_mc_log_evidence(x, model, 2_000, generator=g)
        assert est.log_p_hat.shape == (6,) and est.ess.shape == (6,)
        assert (est.ess >= 1 - 1e-9).all() and (est.ess <= 2_000 + 1e-6).all()
        errors[d] = (est.log_p_hat - model.log_likelihood(x), est.ess)
    assert errors[1][0].abs().max() < 0.2 and errors[1][1].min() > 50
    assert errors[32][0].mean() < -5 and errors[32][1].max() < 20                     # the curse of dimensionality


def test_naive_log_evidence_of_a_mixture_is_the_log_of_an_unbiased_estimate():
    exact = G.log_likelihood(X1, TWO).exp().item()
    draws = _repeat(lambda g: G.naive_mc_log_evidence(X1, TWO, 4, generator=g).log_p_hat[0], 4000)
    est = P.mean_and_stderr(draws.exp())
    assert abs(est.estimate.item() - exact) < 4 * est.stderr.item()                # p_hat unbiased
    assert math.log(exact) - draws.mean().item() > 8 * draws.std().item() / math.sqrt(4000)   # its log biased low
    one = G.naive_mc_log_evidence(X1, TWO, 4, generator=torch.Generator().manual_seed(0))
    z = TWO.sample(4, generator=torch.Generator().manual_seed(0)).z                  # the same prior samples
    log_w = torch.stack([TWO.log_px_given_z(X1, z_s[None]) for z_s in z])[:, 0]      # log p(x | z_s), (S,)
    assert torch.allclose(one.log_p_hat[0], P.log_mean_exp(log_w))
    assert torch.allclose(one.ess[0], log_w.exp().sum() ** 2 / (log_w.exp() ** 2).sum())


def test_naive_log_evidence_rejects_what_is_not_a_model():
    with pytest.raises(TypeError, match="latent variable model"):
        G.naive_mc_log_evidence(X1, lambda x: x, 4)
    with pytest.raises(ValueError, match="n_samples"):
        G.naive_mc_log_evidence(X1, TWO, 0)
