"""coursepkg.elbo: the ELBO and IWAE bounds against the exact log p(x) of a linear-Gaussian model."""

from __future__ import annotations

import pytest
import torch
from torch import distributions as td

from coursepkg.elbo import (
    GaussianEncoder,
    LinearGaussianModel,
    bottleneck_floor,
    elbo,
    gaussian_kl,
    gaussian_mean_cov,
    inference_gaps,
    iwae_bound,
    optimal_bottleneck_encoder,
)
from coursepkg.probability import mean_and_stderr
from coursepkg.train import fit


@pytest.fixture
def model():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 2, generator=g, dtype=torch.float64)
    return LinearGaussianModel(W, torch.randn(4, generator=g, dtype=torch.float64),
                               torch.tensor([0.3, 0.5, 0.2, 0.4], dtype=torch.float64))


@pytest.fixture
def x(model):
    return model.sample(5, generator=torch.Generator().manual_seed(1))[0]


def off_posterior(model, x, shift=0.7, scale=1.5):
    post = model.posterior(x)
    std = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    return td.Independent(td.Normal(post.mean + shift, scale * std), 1)


def test_log_likelihood_is_the_exact_marginal(model, x):
    W, b, psi = model.W, model.b, model.noise_var
    ref = td.MultivariateNormal(b, covariance_matrix=W @ W.T + torch.diag(psi)).log_prob(x)
    assert torch.allclose(model.log_likelihood(x), ref, atol=1e-12)


def test_posterior_is_bayes_rule(model, x):
    # log p(z | x) = log p(x, z) - log p(x) at any z
    z = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lhs = model.posterior(x).log_prob(z)
    rhs = model.log_joint(x, z) - model.log_likelihood(x)
    assert torch.allclose(lhs, rhs, atol=1e-10)


def test_sample_has_the_marginal_moments(model):
    xs, zs = model.sample(200_000, generator=torch.Generator().manual_seed(3))
    m = model.marginal()
    assert torch.allclose(xs.mean(0), m.mean, atol=0.02)
    assert torch.allclose(torch.cov(xs.T), m.covariance_matrix, atol=0.03)
    assert torch.allclose(zs.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.01)


def test_elbo_is_below_log_p_for_random_q(model, x):
    torch.manual_seed(4)
    exact = model.log_likelihood(x)
    for shift, scale in [(0.7, 1.5), (-0.3, 0.5), (0.0, 2.0)]:
        est = elbo(x, model.log_joint, off_posterior(model, x, shift, scale), n_samples=4000)
        assert torch.all(est.estimate <= exact + 4 * est.stderr)
        assert torch.all(est.estimate < exact)  # strictly: these q are far from the posterior


def test_elbo_equals_log_p_at_the_exact_posterior(model, x):
    torch.manual_seed(5)
    est = elbo(x, model.log_joint, model.posterior(x), n_samples=10)
    assert torch.allclose(est.estimate, model.log_likelihood(x), atol=1e-9)
    assert torch.all(est.stderr < 1e-9)  # every sample gives log p(x): zero variance


def test_gap_equals_kl_to_the_posterior(model, x):
    torch.manual_seed(6)
    q = off_posterior(model, x)
    est = elbo(x, model.log_joint, q, n_samples=20_000)
    post = model.posterior(x)
    q_mvn = td.MultivariateNormal(q.mean, covariance_matrix=torch.diag_embed(q.variance))
    kl = td.kl_divergence(q_mvn, post)
    gap = model.log_likelihood(x) - est.estimate
    assert torch.all((gap - kl).abs() < 4 * est.stderr + 1e-12)


def test_iwae_is_non_decreasing_in_k_and_converges(model, x):
    torch.manual_seed(7)
    q = off_posterior(model, x)
    exact = model.log_likelihood(x)
    means = []
    for k in [1, 4, 16, 64]:
        est = iwae_bound(x, model.log_joint, q, k, n_estimates=400)
        means.append(est)
        assert torch.all(est.estimate <= exact + 4 * est.stderr)
    for a, b in zip(means, means[1:], strict=False):
        assert torch.all(b.estimate >= a.estimate - 3 * (a.stderr + b.stderr))
    assert torch.all(means[-1].estimate > means[0].estimate)  # k = 64 is clearly tighter than the ELBO
    big = iwae_bound(x, model.log_joint, q, 5000, n_estimates=20)
    assert torch.all((big.estimate - exact).abs() < 4 * big.stderr + 0.01)


def test_iwae_with_k_1_is_the_elbo_in_distribution(model, x):
    q = off_posterior(model, x)
    torch.manual_seed(8)
    a = iwae_bound(x, model.log_joint, q, 1, n_estimates=4000)
    torch.manual_seed(8)
    b = elbo(x, model.log_joint, q, n_samples=4000)
    assert torch.allclose(a.estimate, b.estimate, atol=1e-12)


def test_gradients_flow_through_the_samples(model, x):
    mu = model.posterior(x).mean.clone().requires_grad_(True)
    q = td.Independent(td.Normal(mu, torch.ones_like(mu)), 1)
    est = elbo(x, model.log_joint, q, n_samples=8)
    est.estimate.sum().backward()
    assert mu.grad is not None and torch.isfinite(mu.grad).all() and mu.grad.abs().sum() > 0


def test_bad_input_is_a_clear_error(model, x):
    q = model.posterior(x)
    with pytest.raises(ValueError, match="k must be a positive int"):
        iwae_bound(x, model.log_joint, q, 0)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        elbo(x, model.log_joint, q, n_samples=0)
    with pytest.raises(ValueError, match=r"batch shape \(4,\)"):
        elbo(x[:4], model.log_joint, q)
    with pytest.raises(ValueError, match="log_joint"):
        elbo(x, lambda x, z: z.sum(), q)
    with pytest.raises(TypeError, match="rsample"):
        elbo(x, model.log_joint, "q")
    with pytest.raises(TypeError, match="reparameterized"):
        elbo(x, model.log_joint, td.Categorical(logits=torch.zeros(5, 3)))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 4\)"):
        model.log_likelihood(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="x is torch.float32 .* but the model is torch.float64"):
        model.log_likelihood(x.float())
    with pytest.raises(ValueError, match="z is torch.float32"):
        elbo(x, model.log_joint, td.Independent(td.Normal(torch.zeros(5, 2), torch.ones(5, 2)), 1))
    with pytest.raises(ValueError, match="noise_var"):
        LinearGaussianModel(model.W, noise_var=-1.0)
    with pytest.raises(ValueError, match="b must have shape"):
        LinearGaussianModel(model.W, b=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="log_joint must be a callable log_joint"):
        elbo(x, "model", q)
    with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., 5, 2\)"):
        model.log_px_given_z(x, torch.zeros(4, 2, dtype=torch.float64))


def test_bounds_take_a_model_or_its_log_joint(model, x):
    q = model.posterior(x)
    for bound in (lambda lj: elbo(x, lj, q, n_samples=3), lambda lj: iwae_bound(x, lj, q, 4, n_estimates=2)):
        torch.manual_seed(3)
        with_function = bound(model.log_joint)
        torch.manual_seed(3)
        assert torch.equal(bound(model).estimate, with_function.estimate)


# ------------------------------------------------------------------------ closed forms of the chapter


def test_closed_form_terms_match_monte_carlo(model, x):
    torch.manual_seed(9)
    q = off_posterior(model, x)
    recon, kl = model.elbo_terms(x, q)
    z = q.sample((40_000,))
    recon_mc = mean_and_stderr(model.log_px_given_z(x, z))
    assert torch.all((recon - recon_mc.estimate).abs() < 4 * recon_mc.stderr)
    kl_ref = td.kl_divergence(q.base_dist, td.Normal(torch.zeros_like(q.mean), torch.ones_like(q.mean))).sum(-1)
    assert torch.allclose(kl, kl_ref, atol=1e-12)
    # full covariance q: the posterior itself, where the ELBO is log p(x) exactly
    assert torch.allclose(model.exact_elbo(x, model.posterior(x)), model.log_likelihood(x), atol=1e-10)


def test_exact_gap_is_the_kl_for_diagonal_and_full_q(model, x):
    post = model.posterior(x)
    A = torch.randn(5, 2, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    cov = A @ A.mT + 0.1 * torch.eye(2, dtype=torch.float64)
    q_full = td.MultivariateNormal(post.mean - 0.4, covariance_matrix=cov)
    for q in (off_posterior(model, x), q_full):
        gap = model.log_likelihood(x) - model.exact_elbo(x, q)
        assert torch.allclose(gap, gaussian_kl(q, post), atol=1e-10)
        assert torch.all(gap > 0)


def test_mean_field_posterior_is_the_best_diagonal_gaussian(model, x):
    q = model.mean_field_posterior(x)
    best = model.exact_elbo(x, q)
    # the ELBO is stationary there: its gradient in (mean, log-std) vanishes
    mean = q.mean.clone().requires_grad_(True)
    log_std = q.stddev.log().clone().requires_grad_(True)
    model.exact_elbo(x, td.Independent(td.Normal(mean, log_std.exp()), 1)).sum().backward()
    assert mean.grad.abs().max() < 1e-10 and log_std.grad.abs().max() < 1e-10
    for d_mean, f_std in [(0.05, 1.0), (0.0, 0.9), (0.0, 1.1), (-0.02, 1.05)]:
        other = td.Independent(td.Normal(q.mean + d_mean, q.stddev * f_std), 1)
        assert torch.all(model.exact_elbo(x, other) < best)
    # under-dispersed: each variance is at most the posterior's marginal variance
    marg = model.posterior(x).covariance_matrix[0].diagonal()
    assert torch.all(q.variance[0] <= marg + 1e-12)
    assert torch.all(model.log_likelihood(x) - best > 0)  # this posterior is correlated: the gap is positive


def test_gaussian_mean_cov_and_kl_errors(model, x):
    with pytest.raises(TypeError, match="MultivariateNormal or an Independent"):
        gaussian_mean_cov(td.Normal(torch.zeros(3), torch.ones(3)))
    with pytest.raises(ValueError, match=r"batch shape \(5,\)"):
        model.elbo_terms(x, off_posterior(model, x[:3]))


def fit_encoder(encoder, x, model):
    """Amortized inference with the one training loop: the encoder minimises the negative ELBO of the fixed model."""
    return fit(encoder, x, lambda xb: -elbo(xb, model, encoder.q(xb)).estimate.mean(), steps=600, lr=2e-2,
               batch_size=128, seed=0, progress=False, device="cpu")


def test_fit_trains_an_encoder_and_leaves_the_model_alone(model):
    xs, _ = model.sample(200, generator=torch.Generator().manual_seed(11))
    W = model.W.clone()
    torch.manual_seed(12)
    enc = GaussianEncoder(4, 2).double()
    hist = fit(enc, xs, lambda xb: -elbo(xb, model.log_joint, enc.q(xb)).estimate.mean(), steps=50, lr=2e-2,
               batch_size=64, progress=False, device="cpu")
    assert torch.equal(model.W, W) and len(hist) == 50
    # the history logs the same loss whether elbo() gets the model or its log_joint
    torch.manual_seed(12)
    enc2 = GaussianEncoder(4, 2).double()
    hist2 = fit(enc2, xs, lambda xb: -elbo(xb, model, enc2.q(xb)).estimate.mean(), steps=50, lr=2e-2,
                batch_size=64, progress=False, device="cpu")
    assert hist2["loss"] == hist["loss"]


def test_linear_encoder_closes_the_amortization_gap_and_a_bottleneck_does_not(model):
    xs, _ = model.sample(400, generator=torch.Generator().manual_seed(11))
    torch.manual_seed(12)
    enc = GaussianEncoder(4, 2).double()
    before = inference_gaps(model, xs, enc)
    hist = fit_encoder(enc, xs, model)
    after = inference_gaps(model, xs, enc)
    assert len(hist) == 600 and hist.mean(last=50) < sum(hist["loss"][:50]) / 50   # the negative ELBO went down
    assert after.amortization_gap.mean() < 0.05 * before.amortization_gap.mean()
    assert after.amortization_gap.mean() < 0.1
    assert torch.all(after.amortization_gap > -1e-10)  # the mean-field q is the best diagonal one
    assert torch.allclose(after.approximation_gap + after.amortization_gap, after.log_px - after.elbo_amortized)
    narrow = GaussianEncoder(4, 2, bottleneck=1).double()
    fit_encoder(narrow, xs, model)
    assert inference_gaps(model, xs, narrow).amortization_gap.mean() > 5 * after.amortization_gap.mean() + 0.05


def test_encoder_bad_input():
    enc = GaussianEncoder(3, 2, hidden=(8,))
    mu, logvar = enc(torch.zeros(4, 3))
    assert mu.shape == logvar.shape == (4, 2)
    assert enc.q(torch.zeros(4, 3)).batch_shape == (4,)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\)"):
        enc(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="z_dim must be a positive int"):
        GaussianEncoder(3, 0)
    with pytest.raises(TypeError, match="hidden\\[0\\] must be a positive int"):
        GaussianEncoder(3, 2, hidden=(8.0,))


@pytest.fixture
def model4():
    g = torch.Generator().manual_seed(20)
    W = torch.randn(6, 4, generator=g, dtype=torch.float64) * torch.tensor([1.5, 1.0, 0.6, 0.3], dtype=torch.float64)
    return LinearGaussianModel(W, torch.randn(6, generator=g, dtype=torch.float64),
                               0.3 + 0.4 * torch.rand(6, generator=g, dtype=torch.float64))


def test_bottleneck_floor_is_half_the_dropped_eigenvalues_minus_one(model4):
    eig = torch.linalg.eigvalsh(model4.posterior_precision()).flip(0)
    for r in range(1, 5):
        assert torch.allclose(bottleneck_floor(model4, r), 0.5 * (eig[r:] - 1).sum(), atol=1e-12)
    assert bottleneck_floor(model4, 4) == 0 and bottleneck_floor(model4, 7) == 0
    floors = [bottleneck_floor(model4, r).item() for r in range(1, 5)]
    assert floors == sorted(floors, reverse=True)       # more features, a lower floor
    # the eigenvalues minus one are those of W^T Psi^-1 W: what x says about z
    info = torch.linalg.eigvalsh(model4.W.T @ (model4.W / model4.noise_var[:, None])).flip(0)
    assert torch.allclose(eig - 1, info, atol=1e-10)


def test_optimal_bottleneck_encoder_attains_the_floor(model4):
    xs, _ = model4.sample(50_000, generator=torch.Generator().manual_seed(21))
    for r in (1, 2, 3, 4):
        enc = optimal_bottleneck_encoder(model4, r)
        assert enc.net[0].weight.shape == (r, 6)                # it sees x through r features
        gaps = inference_gaps(model4, xs, enc)
        floor = bottleneck_floor(model4, r).item()
        est = mean_and_stderr(gaps.amortization_gap)
        assert abs(est.estimate.item() - floor) < 5 * est.stderr.item() + 1e-10
        assert torch.all(gaps.amortization_gap > -1e-10)
        # its variances are the mean field's, so only the mean costs anything
        _, logvar = enc(xs[:3])
        assert torch.allclose(logvar, -torch.log(torch.diagonal(model4.posterior_precision())).expand(3, -1))
    # an encoder with rank Dz is the per-point optimum: no amortization gap at all
    assert inference_gaps(model4, xs[:100], optimal_bottleneck_encoder(model4, 4)).amortization_gap.abs().max() < 1e-10
    # moving its features away from the leading direction costs more than the floor
    enc = optimal_bottleneck_encoder(model4, 1)
    floor = bottleneck_floor(model4, 1).item()
    g = torch.Generator().manual_seed(22)
    for _ in range(5):
        with torch.no_grad():
            enc.net[0].weight.add_(0.3 * torch.randn(1, 6, generator=g, dtype=torch.float64))
        assert inference_gaps(model4, xs[:20_000], enc).amortization_gap.mean().item() > floor


def test_bottleneck_bad_input(model4):
    with pytest.raises(ValueError, match="rank must be a positive int"):
        bottleneck_floor(model4, 0)
    with pytest.raises(ValueError, match="rank=5 must be at most the latent dimension Dz=4"):
        optimal_bottleneck_encoder(model4, 5)
    with pytest.raises(TypeError, match="model must be a LinearGaussianModel"):
        bottleneck_floor("model", 1)
