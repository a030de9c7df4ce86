"""coursepkg.vae: the VAE's loss against the lectures' formulas, its KL term against Monte Carlo and
torch.distributions, gradients through the reparameterized sample, the importance-sampled log-likelihood
against an exact log p(x), generation, a short training run, and the autoregressive decoder."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as td
from torch import nn

import coursepkg.vae as V
from coursepkg import elbo as E
from coursepkg import probability as P
from coursepkg.data import digits
from coursepkg.nn import MLP, AutoregressiveDecoder
from coursepkg.train import fit
from coursepkg.vae import VAE

D, DZ, N = 12, 3, 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


class FixedPosterior(nn.Module):
    """An 'encoder' whose q(z | x) parameters are given directly (one row per data point), to test formulas."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        super().__init__()
        self.mu, self.logvar = nn.Parameter(mu.clone()), nn.Parameter(logvar.clone())

    def forward(self, x):
        return self.mu, self.logvar


def fixed_model(likelihood: str, sigma2: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu = 1.5 * torch.randn(N, DZ, generator=g, dtype=torch.float64)
    logvar = torch.empty(N, DZ, dtype=torch.float64).uniform_(-3, 1.5, generator=g)
    torch.manual_seed(seed)
    model = VAE(FixedPosterior(mu, logvar), MLP(DZ, (16,), D), DZ, likelihood, sigma2=sigma2).double()
    model.log_sigma2.fill_(math.log(sigma2))  # the float32 buffer, now float64: exact again
    x = torch.rand(N, D, generator=g, dtype=torch.float64)
    eps = torch.randn(N, DZ, generator=g, dtype=torch.float64)
    return model, x, eps


def lectures_kld(mu, logvar):
    """The closed-form KL of the lectures' loss code, summed over the batch."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


# --------------------------------------------------------------------------------------------------
# the loss against the lectures' formulas (noise fixed)
# --------------------------------------------------------------------------------------------------
def test_gaussian_loss_is_half_squared_error_plus_constant_plus_kld():
    model, x, eps = fixed_model("gaussian")
    mu, logvar = model.encoder.mu, model.encoder.logvar
    x_hat = model.decode(mu + torch.exp(0.5 * logvar) * eps)
    out = model.loss(x, eps=eps)
    kld = lectures_kld(mu, logvar)
    per_batch = 0.5 * ((x - x_hat) ** 2).sum() + N * D / 2 * math.log(2 * math.pi) + kld
    assert torch.allclose(out["loss"] * N, per_batch, rtol=1e-12)
    assert torch.allclose(out["kl"] * N, kld, rtol=1e-12)
    assert torch.allclose(out["loss"], out["recon"] + out["kl"], rtol=1e-12)
    # the lectures' F.mse_loss(reduction="sum") + KLD is the sigma2 = 1/2 loss, less D/2 log(pi) per point
    model.log_sigma2.fill_(math.log(0.5))
    lectures = F.mse_loss(x_hat, x, reduction="sum") + kld
    assert torch.allclose(model.loss(x, eps=eps)["loss"] * N - N * D / 2 * math.log(math.pi), lectures, rtol=1e-12)


@pytest.mark.parametrize("sigma2", [0.05, 0.3, 4.0])
def test_gaussian_recon_is_scaled_squared_error_plus_log_normaliser(sigma2):
    model, x, eps = fixed_model("gaussian", sigma2=sigma2)
    x_hat = model.decode(model.reparameterize(model.encoder.mu, model.encoder.logvar, eps))
    expected = ((x - x_hat) ** 2).sum(1) / (2 * sigma2) + D / 2 * math.log(2 * math.pi * sigma2)
    assert torch.allclose(model.loss(x, eps=eps)["recon"], expected.mean(), rtol=1e-12)
    assert torch.allclose(model.sigma2, torch.tensor(sigma2, dtype=torch.float64))


def test_bernoulli_loss_is_bce_plus_kld():
    model, x, eps = fixed_model("bernoulli")          # grey levels in [0, 1], as for MNIST
    mu, logvar = model.encoder.mu, model.encoder.logvar
    x_hat = torch.sigmoid(model.decode(mu + torch.exp(0.5 * logvar) * eps))
    lectures = F.binary_cross_entropy(x_hat, x, reduction="sum") + lectures_kld(mu, logvar)
    assert torch.allclose(model.loss(x, eps=eps)["loss"] * N, lectures, rtol=1e-10)


def test_kl_term_matches_torch_distributions_and_monte_carlo():
    model, x, eps = fixed_model("bernoulli")
    mu, logvar = model.encoder.mu.detach(), model.encoder.logvar.detach()
    q = td.Normal(mu, torch.exp(0.5 * logvar))
    p = td.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    kl_torch = td.kl_divergence(q, p).sum(-1)                                       # (N,)
    assert torch.allclose(model.loss(x, eps=eps)["kl"], kl_torch.mean(), rtol=1e-12)
    z = q.sample((200_000,))                                                         # E_q[log q(z) - log p(z)]
    per_sample = (q.log_prob(z) - p.log_prob(z)).sum(-1)
    est, se = per_sample.mean(0), per_sample.std(0) / math.sqrt(z.shape[0])
    assert torch.all((est - kl_torch).abs() < 4 * se + 1e-9), (est, kl_torch, se)


def test_beta_weighs_the_kl_and_free_bits_floor_each_latent():
    model, x, eps = fixed_model("gaussian")
    base = model.loss(x, eps=eps)
    assert torch.allclose(model.loss(x, beta=0.25, eps=eps)["loss"], base["recon"] + 0.25 * base["kl"])
    mu, logvar = model.encoder.mu, model.encoder.logvar
    kl_dims = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).mean(0)                    # (DZ,), batch-averaged
    lam = float(kl_dims.detach().median())                                           # some latents below it
    out = model.loss(x, free_bits=lam, eps=eps)
    assert torch.allclose(out["loss"], out["recon"] + torch.clamp(kl_dims, min=lam).sum())
    assert torch.allclose(out["kl"], base["kl"])                                     # reports the true KL
    (out["loss"] - out["recon"]).backward()
    below = kl_dims.detach() < lam
    assert below.any() and not below.all()
    assert torch.all(model.encoder.mu.grad[:, below] == 0) and torch.all(model.encoder.mu.grad[:, ~below] != 0)


def test_learned_sigma2_is_a_parameter_with_the_mse_as_its_optimum():
    torch.manual_seed(0)
    model = VAE.mlp(D, (16,), DZ, likelihood="gaussian", learn_sigma2=True).double()
    assert any(p is model.log_sigma2 for p in model.parameters())
    assert not any(p is VAE.mlp(D, (16,), DZ, likelihood="gaussian").log_sigma2
                   for p in model.parameters())
    fixed = VAE.mlp(D, (16,), DZ, likelihood="gaussian")
    assert "log_sigma2" in fixed.state_dict() and all(p is not fixed.log_sigma2 for p in fixed.parameters())
    x = torch.rand(N, D, dtype=torch.float64)
    eps = torch.randn(N, DZ, dtype=torch.float64)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        mse = ((x - model.decode(model.reparameterize(mu, logvar, eps))) ** 2).mean()
        model.log_sigma2.fill_(math.log(mse))          # d/d sigma2 [ sq / (2 sigma2) + D/2 log sigma2 ] = 0
    model.loss(x, eps=eps)["loss"].backward()
    assert abs(model.log_sigma2.grad.item()) < 1e-10


# --------------------------------------------------------------------------------------------------
# gradients through the reparameterized sample
# --------------------------------------------------------------------------------------------------
def test_gradients_reach_the_encoder_through_z():
    model, x, eps = fixed_model("bernoulli")
    out = model.loss(x, beta=0.0, eps=eps)      # the reconstruction term alone: the encoder acts through z only
    out["loss"].backward()
    mu, logvar = model.encoder.mu, model.encoder.logvar
    z = (mu + torch.exp(0.5 * logvar) * eps).detach().requires_grad_(True)
    (-model.log_px_given_z(x, z).mean()).backward()
    # chain rule through z = mu + exp(logvar / 2) * eps
    assert torch.allclose(mu.grad, z.grad, rtol=1e-12)
    assert torch.allclose(logvar.grad, z.grad * 0.5 * torch.exp(0.5 * logvar.detach()) * eps, rtol=1e-12)
    assert torch.all(mu.grad != 0)


def test_every_encoder_parameter_gets_a_gradient_in_the_mlp_vae():
    torch.manual_seed(0)
    model = VAE.mlp(64, (32,), 4)
    model.loss(digits()[0][:16], beta=0.0)["loss"].backward()
    last = model.encoder.net[-1]
    for name, rows in (("mu", slice(0, 4)), ("logvar", slice(4, 8))):
        assert last.weight.grad[rows].abs().sum() > 0, name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# ELBO, IWAE, log-likelihood
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    x = digits()[0]
    torch.manual_seed(0)
    model = VAE.mlp(64, (128,), 8)
    history = fit(model, x, steps=400, batch_size=128, lr=3e-3, progress=False)
    return model, history, x


def test_a_short_training_run_lowers_the_loss(trained):
    _, h, x = trained
    assert len(h) == 400 and h.keys() == ["step", "loss", "recon", "kl"]
    first, last = h["loss"][0], h.mean(last=20)
    # the best model that ignores z: independent pixels with the data's mean grey levels (KL = 0)
    p = x.mean(0).clamp(1e-6, 1 - 1e-6)
    ignore_z = -(x * p.log() + (1 - x) * (1 - p).log()).sum(1).mean().item()
    assert last < 0.6 * first and last < ignore_z - 1.0, (first, last, ignore_z)
    assert h.mean("recon", last=20) < sum(h["recon"][:20]) / 20 and h.mean("kl", last=20) > 1.0


def test_kl_per_dim_and_unit_activity(trained):
    model, _, x = trained
    xb = x[:300]
    with torch.no_grad():
        mu, logvar = model.encode(xb)
    per_dim = model.kl_per_dim(xb)
    assert per_dim.shape == (8,) and torch.all(per_dim >= 0)
    # the dimensions add up to the loss's closed-form KL term
    assert torch.allclose(per_dim.sum(), model.loss(xb)["kl"].detach(), rtol=1e-5)
    ref = td.kl_divergence(td.Normal(mu, (0.5 * logvar).exp()), td.Normal(0.0, 1.0)).mean(0)
    assert torch.allclose(per_dim, ref, rtol=1e-5, atol=1e-6)
    activity = model.unit_activity(xb)
    assert torch.allclose(activity, mu.var(0))
    assert (activity > 0.01).sum() >= 1  # a trained digits VAE uses some of its latents
    # an encoder that ignores x (a collapsed posterior): no active unit, and KL = that of its constant q
    model_c = VAE(nn.Sequential(nn.Linear(64, 16), nn.Flatten()), MLP(8, (), 64), 8)
    with torch.no_grad():
        model_c.encoder[0].weight.zero_()
    assert torch.all(model_c.unit_activity(xb) == 0)
    with pytest.raises(ValueError, match="at least 2 data points"):
        model.unit_activity(xb[:1])


def test_importance_bounds_are_ordered(trained):
    model, _, x = trained
    xb = x[:200]
    torch.manual_seed(1)
    with torch.no_grad():
        elbo = model.elbo(xb, n_samples=50)
    lls = {k: model.log_likelihood(xb, k) for k in (5, 50, 500)}
    means = [elbo.mean().item()] + [v.mean().item() for v in lls.values()]
    assert means == sorted(means) and means[-1] - means[0] > 0.2, means
    # point by point, up to Monte Carlo error
    assert torch.all(lls[500] > elbo - 0.5)


def test_elbo_method_matches_the_loss_and_coursepkg_elbo(trained):
    model, _, x = trained
    xb = x[:64]
    torch.manual_seed(2)
    e1 = model.elbo(xb)                             # one sample: the same noise as the loss
    torch.manual_seed(2)
    assert torch.allclose(-e1.mean(), model.loss(xb)["loss"], rtol=1e-5)
    with torch.no_grad():
        closed = model.elbo(xb, n_samples=2000)      # closed-form KL
        sampled = E.elbo(xb, model.log_joint, model.q(xb), n_samples=2000)   # sampled KL (Eq. elbo-def)
    assert abs(closed.mean() - sampled.estimate.mean()) < 0.05      # Monte Carlo error of the means: ~0.005


class ExactPosteriorEncoder(nn.Module):
    """The posterior of a linear-Gaussian model, its mean shifted by ``shift`` standard deviations and its
    (diagonal) variances multiplied by ``scale``: an imperfect q."""

    def __init__(self, model: E.LinearGaussianModel, shift: float, scale: float):
        super().__init__()
        self.model, self.shift, self.scale = model, shift, scale

    def forward(self, x):
        post = self.model.posterior(x)
        var = post.covariance_matrix.diagonal(dim1=-2, dim2=-1)
        return post.mean + self.shift * var.sqrt(), torch.log(self.scale * var)


def test_log_likelihood_converges_to_the_exact_log_px_of_a_linear_gaussian_vae():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 2, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    lg = E.LinearGaussianModel(W, b, 0.3)
    decoder = nn.Linear(2, 6).double()
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(b)
    model = VAE(ExactPosteriorEncoder(lg, 0.5, 2.0), decoder, 2, "gaussian", sigma2=0.3)
    x = lg.sample(8, generator=g)[0]
    exact = lg.log_likelihood(x)
    torch.manual_seed(3)
    expected = {k: model.log_likelihood(x.repeat(200, 1), k).view(200, 8).mean(0) for k in (1, 5)}  # E[bound]
    assert torch.all(expected[1] < expected[5]) and torch.all(expected[5] < exact)   # q is imperfect: loose bounds
    ll = model.log_likelihood(x, 20_000, chunk_size=1000)    # 20 chunks, combined by log-sum-exp
    assert (ll - exact).abs().max() < 0.01, (ll - exact)
    ll_ones = model.log_likelihood(x, 1000, chunk_size=1)    # chunks of one sample: averaging them would be the ELBO
    assert (ll_ones - exact).abs().max() < 0.1, (ll_ones - exact)
    with torch.no_grad():
        assert torch.all(model.elbo(x, 2000) < exact)


def test_log_likelihood_chunks_to_bound_memory(monkeypatch):
    torch.manual_seed(0)
    model = VAE.mlp(784, (400,), 20)
    x = torch.bernoulli(torch.full((4, 784), 0.3))
    calls = []
    real = E.iwae_bound

    def spy(x, log_joint, q, k, n_estimates=1):
        calls.append(k)
        return real(x, log_joint, q, k, n_estimates)

    monkeypatch.setattr(V.E, "iwae_bound", spy)
    monkeypatch.setattr(V, "IWAE_CHUNK_ELEMENTS", 4 * 784 * 300)   # 300 samples a chunk
    ll = model.log_likelihood(x, 1000)
    assert calls == [300, 300, 300, 100] and ll.shape == (4,) and torch.all(torch.isfinite(ll))
    calls.clear()
    model.log_likelihood(x, 10, chunk_size=4)
    assert calls == [4, 4, 2]


# --------------------------------------------------------------------------------------------------
# constructors, generation, layouts
# --------------------------------------------------------------------------------------------------
def test_vae_mlp_is_the_classic_784_400_20_model():
    model = VAE.mlp(784, (400,), 20)
    # the PyTorch example: fc1 784->400, fc21 and fc22 400->20, fc3 20->400, fc4 400->784
    classic = 784 * 400 + 400 + 2 * (400 * 20 + 20) + 20 * 400 + 400 + 400 * 784 + 784
    assert sum(p.numel() for p in model.parameters()) == classic
    assert isinstance(model.encoder.net[1], nn.ReLU) and model.likelihood == "bernoulli"
    assert "latent_dim=20" in repr(model)
    mu, logvar = model.encode(torch.rand(3, 784))
    assert mu.shape == logvar.shape == (3, 20)


def test_sample_and_reconstruct():
    torch.manual_seed(0)
    model = VAE.mlp(64, (32,), 4)
    probs, z = model.sample(7, generator=torch.Generator().manual_seed(0))
    assert probs.shape == (7, 64) and probs.min() >= 0 and probs.max() <= 1 and z.shape == (7, 4)
    assert torch.equal(probs, model.sample(7, generator=torch.Generator().manual_seed(0)).x)
    assert torch.equal(probs, torch.sigmoid(model.decode(z)))       # x is the mean of p(x | z) at the z returned
    pixels = model.sample(7, mean=False).x
    assert set(pixels.unique().tolist()) <= {0.0, 1.0}
    assert model.reconstruct(torch.rand(3, 64)).shape == (3, 64)
    gauss = VAE.mlp(64, (32,), 4, likelihood="gaussian", sigma2=0.01)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    noisy, clean = gauss.sample(2000, mean=False, generator=g1).x, gauss.sample(2000, generator=g2).x
    assert abs((noisy - clean).std().item() - 0.1) < 0.005


def test_conv_vae_takes_images_or_flat_and_trains(tmp_path):
    x = digits()[0][:256]
    torch.manual_seed(0)
    model = VAE.conv((1, 8, 8), 4, channels=(8, 16))
    images = x.reshape(-1, 1, 8, 8)
    eps = torch.randn(256, 4)
    assert torch.equal(model.loss(images, eps=eps)["loss"], model.loss(x, eps=eps)["loss"])
    assert model.sample(3).x.shape == (3, 1, 8, 8) and model.reconstruct(x[:2]).shape == (2, 1, 8, 8)
    h = fit(model, images, steps=60, batch_size=64, lr=3e-3, progress=False)
    assert h.mean(last=10) < sum(h["loss"][:10]) / 10
    big = VAE.conv((1, 28, 28), 16)
    assert big.sample(2).x.shape == (2, 1, 28, 28)
    assert big.log_likelihood(torch.rand(2, 784), 8).shape == (2,)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------
def test_constructor_rejects_bad_arguments():
    enc, dec = MLP(D, (), 2 * DZ), MLP(DZ, (), D)
    for kwargs, error, words in [
        ({"likelihood": "poisson"}, ValueError, "likelihood"),
        ({"likelihood": "gaussian", "sigma2": 0.0}, ValueError, "sigma2"),
        ({"likelihood": "gaussian", "sigma2": float("nan")}, ValueError, "sigma2"),
        ({"learn_sigma2": True}, ValueError, "gaussian likelihood only"),
        ({"latent_dim": 0}, ValueError, "latent_dim"),
    ]:
        with pytest.raises(error, match=words):
            VAE(enc, dec, **{"latent_dim": DZ, **kwargs})
    with pytest.raises(TypeError, match="encoder must be an nn.Module"):
        VAE(lambda x: x, dec, DZ)


def test_methods_reject_bad_inputs():
    torch.manual_seed(0)
    model = VAE.mlp(D, (8,), DZ)
    x = torch.rand(N, D)
    for call, error, words in [
        (lambda: model.loss(x[0]), ValueError, "x must be a floating-point batch"),
        (lambda: model.loss(x.long()), TypeError, "x must be a floating-point batch"),
        (lambda: model.loss(x + 1.0), ValueError, r"\[0, 1\]"),
        (lambda: model.loss(x, beta=-1.0), ValueError, "beta"),
        (lambda: model.loss(x, free_bits=float("nan")), ValueError, "free_bits"),
        (lambda: model.loss(x, eps=torch.randn(N, DZ + 1)), ValueError, "broadcast"),
        (lambda: model.decode(torch.randn(N, DZ + 1)), ValueError, f"z must have shape \\(\\.\\.\\., {DZ}\\)"),
        (lambda: model.log_px_given_z(x, torch.randn(N + 1, DZ)), ValueError, "do not match"),
        (lambda: model.log_likelihood(x, 0), ValueError, "k must be"),
        (lambda: model.log_likelihood(x, 5, chunk_size=0), ValueError, "chunk_size"),
        (lambda: model.sample(0), ValueError, "n must be"),
        (lambda: model.elbo(x, 0), ValueError, "n_samples"),
    ]:
        with pytest.raises(error, match=words):
            call()
    wrong_encoder = VAE(MLP(D, (), 2 * DZ + 1), MLP(DZ, (), D), DZ)
    with pytest.raises(ValueError, match="encoder must return"):
        wrong_encoder.loss(x)
    wrong_decoder = VAE(MLP(D, (), 2 * DZ), MLP(DZ, (), D + 1), DZ)
    with pytest.raises(ValueError, match="do not match"):
        wrong_decoder.loss(x)


# --------------------------------------------------------------------------------------------------
# an autoregressive decoder
# --------------------------------------------------------------------------------------------------
def ar_model(seed: int = 0):
    torch.manual_seed(seed)
    return VAE(MLP(D, (16,), 2 * DZ), AutoregressiveDecoder(DZ, D, (16,)), DZ).double()


def bernoulli_log_lik(x, logits):
    """log p(x | z) of independent Bernoullis with these logits, written out: minus the summed BCE."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def test_an_autoregressive_decoder_is_teacher_forced_in_the_likelihood():
    model = ar_model()
    assert model.autoregressive and not VAE.mlp(D, (8,), DZ).autoregressive
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((N, D), 0.4, dtype=torch.float64), generator=g)
    z = torch.randn(4, N, DZ, generator=g, dtype=torch.float64)                     # (S, N, DZ)
    expected = torch.stack([bernoulli_log_lik(x, model.decoder(z[s], x)) for s in range(4)])
    assert torch.allclose(model.log_px_given_z(x, z), expected, rtol=1e-12)
    assert model.decode(z, x).shape == (4, N, D)
    # the loss is the negative ELBO with the closed-form KL, as for a plain decoder
    eps = torch.randn(N, DZ, generator=g, dtype=torch.float64)
    mu, logvar = model.encode(x)
    out = model.loss(x, eps=eps)
    recon = -bernoulli_log_lik(x, model.decoder(mu + torch.exp(0.5 * logvar) * eps, x))
    assert torch.allclose(out["recon"], recon.mean(), rtol=1e-12)
    assert torch.allclose(out["kl"] * N, lectures_kld(mu, logvar), rtol=1e-12)
    assert model.log_likelihood(x, 50).shape == (N,) and model.elbo(x, 3).shape == (N,)


def test_an_autoregressive_vae_samples_pixel_by_pixel_and_trains():
    model = ar_model()
    pixels, z = model.sample(6, mean=False, generator=torch.Generator().manual_seed(0))
    probs = model.sample(6, generator=torch.Generator().manual_seed(0)).x
    assert z.shape == (6, model.latent_dim) and pixels.shape == probs.shape == (6, D)
    assert set(pixels.unique().tolist()) <= {0.0, 1.0}
    assert torch.all((probs > 0) & (probs < 1))
    assert model.reconstruct(torch.rand(3, D, dtype=torch.float64)).shape == (3, D)
    x = (digits(dtype=torch.float64)[0][:256, :D] > 0.5).double()
    h = fit(model, x, steps=150, batch_size=64, lr=3e-3, progress=False)
    assert h.mean(last=20) < 0.8 * sum(h["loss"][:20]) / 20


def test_an_autoregressive_decoder_needs_x_and_the_bernoulli_likelihood():
    model = ar_model()
    z = torch.randn(N, DZ, dtype=torch.float64)
    with pytest.raises(ValueError, match="needs x"):
        model.decode(z)
    with pytest.raises(ValueError, match="rows of x"):
        model.decode(z, torch.zeros(N + 1, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="only for an autoregressive decoder"):
        VAE.mlp(D, (8,), DZ).decode(z.float(), torch.zeros(N, D))
    with pytest.raises(ValueError, match="bernoulli likelihood"):
        VAE(MLP(D, (), 2 * DZ), AutoregressiveDecoder(DZ, D), DZ, "gaussian")


# --------------------------------------------------------------------------------------------------
# the exact posterior on a grid, against a linear-Gaussian model (exact evidence and posterior)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("latent_dim", [1, 2])
def test_grid_posterior_gives_the_exact_evidence_and_posterior_of_a_linear_gaussian(latent_dim):
    g = torch.Generator().manual_seed(0)
    W = 0.8 * torch.randn(5, latent_dim, generator=g, dtype=torch.float64)
    model = E.LinearGaussianModel(W, noise_var=0.5)
    x = model.sample(4, generator=g).x
    ticks = torch.linspace(-6, 6, 241 if latent_dim == 2 else 2001, dtype=torch.float64)
    grid = V.grid_posterior(model.log_joint, x, ticks, latent_dim, chunk_size=1000)
    n_grid = len(ticks) ** latent_dim
    assert grid.z.shape == (n_grid, latent_dim) and grid.log_joint.shape == (n_grid, 4)
    assert grid.cell == pytest.approx((12 / (len(ticks) - 1)) ** latent_dim)
    torch.testing.assert_close(grid.log_evidence, model.log_likelihood(x), atol=1e-6, rtol=0)
    # the posterior is a density that integrates to one, and it is the exact Gaussian posterior
    torch.testing.assert_close(torch.logsumexp(grid.log_posterior, 0) + math.log(grid.cell),
                               torch.zeros(4, dtype=torch.float64), atol=1e-9, rtol=0)
    exact = model.posterior(x).log_prob(grid.z[:, None, :])                              # (G, N)
    torch.testing.assert_close(grid.log_posterior, exact, atol=1e-6, rtol=0)
    if latent_dim == 2:  # the meshgrid "xy" layout: reshape(n, n) is indexed [j_2, j_1]
        Z1, Z2 = torch.meshgrid(ticks, ticks, indexing="xy")
        torch.testing.assert_close(grid.z[:, 0].reshape(len(ticks), -1), Z1)
        torch.testing.assert_close(grid.z[:, 1].reshape(len(ticks), -1), Z2)


def test_grid_posterior_of_a_vae_and_its_errors():
    torch.manual_seed(0)
    model = VAE.mlp(D, (16,), 2).double()
    x = (torch.rand(3, D, dtype=torch.float64) > 0.5).double()
    grid = V.grid_posterior(model.log_joint, x, torch.linspace(-5, 5, 101, dtype=torch.float64))
    # importance sampling with many samples agrees with the quadrature
    torch.manual_seed(1)
    torch.testing.assert_close(model.log_likelihood(x, 20_000), grid.log_evidence, atol=0.02, rtol=0)
    ticks = torch.linspace(-1, 1, 5)
    with pytest.raises(ValueError, match="latent_dim=3"):
        V.grid_posterior(model.log_joint, x, ticks, 3)
    with pytest.raises(ValueError, match="evenly spaced"):
        V.grid_posterior(model.log_joint, x, torch.tensor([0.0, 0.1, 0.5]))
    with pytest.raises(ValueError, match="at least 2"):
        V.grid_posterior(model.log_joint, x, torch.tensor([0.0]))
    with pytest.raises(TypeError, match="log_joint must be callable"):
        V.grid_posterior(None, x, ticks)
    with pytest.raises(ValueError, match=r"must return \(S, N\)"):
        V.grid_posterior(lambda x, z: z.sum(-1).sum(0), x, ticks)
    with pytest.raises(ValueError, match="ticks must have shape"):
        V.grid_posterior(model.log_joint, x, ticks[None])


# --------------------------------------------------------------------------------------------------
# the aggregated posterior, the mutual information and KL(q(z) || p(z))
# --------------------------------------------------------------------------------------------------
def _posteriors(n=7, dz=2, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mu = scale * torch.randn(n, dz, generator=g, dtype=torch.float64)
    logvar = torch.empty(n, dz, dtype=torch.float64).uniform_(-2, 0.5, generator=g)
    return mu, logvar


def test_aggregated_log_prob_is_the_mixture_of_the_posteriors():
    mu, logvar = _posteriors()
    z = torch.randn(11, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    comps = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
    mixture = td.MixtureSameFamily(td.Categorical(probs=torch.full((7,), 1 / 7, dtype=torch.float64)), comps)
    torch.testing.assert_close(V.aggregated_log_prob(z, mu, logvar), mixture.log_prob(z))
    # one component: the Gaussian itself
    torch.testing.assert_close(V.aggregated_log_prob(z, mu[:1], logvar[:1]), P.gaussian_log_prob(z, mu[0], logvar[0]))


def test_aggregated_log_prob_chunks(monkeypatch):
    mu, logvar = _posteriors()
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    whole = V.aggregated_log_prob(z, mu, logvar)
    monkeypatch.setattr(V, "IWAE_CHUNK_ELEMENTS", 20)        # one point (7 x 2 numbers) a chunk
    torch.testing.assert_close(V.aggregated_log_prob(z, mu, logvar), whole)


def test_sample_aggregated_draws_component_then_gaussian():
    mu = torch.tensor([[-10.0, 0.0], [10.0, 5.0]], dtype=torch.float64)
    logvar = torch.log(torch.tensor([[0.01, 0.04], [0.25, 1.0]], dtype=torch.float64))
    z, index = V.sample_aggregated(mu, logvar, 40_000, seed=0)
    assert z.shape == (40_000, 2) and index.shape == (40_000,)
    assert abs(index.double().mean().item() - 0.5) < 0.01
    for k in (0, 1):
        zk = z[index == k]
        torch.testing.assert_close(zk.mean(0), mu[k], atol=0.05, rtol=0)
        torch.testing.assert_close(zk.var(0), logvar[k].exp(), atol=0.05, rtol=0.05)
    again, _ = V.sample_aggregated(mu, logvar, 40_000, seed=0)
    assert torch.equal(z, again)


def test_kl_prior_split_adds_up_and_matches_the_closed_forms():
    mu, logvar = _posteriors(n=20)
    split = V.kl_prior_split(mu, logvar, 40_000, seed=0)
    closed_kl = P.kl_standard_normal(mu, logvar).mean()
    assert abs(split.average_kl.estimate - closed_kl) < 4 * split.average_kl.stderr
    # the same samples: the first split adds up exactly
    torch.testing.assert_close(split.mutual_information.estimate + split.aggregated_kl.estimate,
                               split.average_kl.estimate)
    closed_cross = (0.5 * (math.log(2 * math.pi) + mu**2 + logvar.exp())).sum(1).mean()
    assert abs(split.cross_entropy.estimate - closed_cross) < 4 * split.cross_entropy.stderr
    assert 0 < split.mutual_information.estimate < math.log(20)
    assert split.aggregated_kl.estimate > 0
    # the thin wrappers return the same numbers for the same seed
    torch.testing.assert_close(V.mutual_information(mu, logvar, 40_000, seed=0).estimate,
                               split.mutual_information.estimate)
    torch.testing.assert_close(V.aggregated_kl(mu, logvar, 40_000, seed=0).estimate, split.aggregated_kl.estimate)


def test_kl_prior_split_limits():
    # posteriors equal to the prior: no information and no mismatch, exactly
    zeros = torch.zeros(5, 3, dtype=torch.float64)
    split = V.kl_prior_split(zeros, zeros, 1_000, seed=0)
    for term in (split.average_kl, split.mutual_information, split.aggregated_kl):
        assert abs(term.estimate.item()) < 1e-12
    # identical posteriors: the code says nothing about n
    mu, logvar = _posteriors(n=1)
    same = V.kl_prior_split(mu.expand(6, -1), logvar.expand(6, -1), 1_000, seed=0)
    assert abs(same.mutual_information.estimate.item()) < 1e-12
    # far apart, narrow posteriors: the code names n, I_q = log N
    far = V.kl_prior_split(torch.arange(8.0, dtype=torch.float64)[:, None] * 10, torch.full((8, 1), -4.0,
                           dtype=torch.float64), 1_000, seed=0)
    assert abs(far.mutual_information.estimate.item() - math.log(8)) < 1e-9


def test_aggregated_posterior_functions_reject_bad_inputs():
    mu, logvar = _posteriors()
    with pytest.raises(ValueError, match="mu and logvar must have the same shape"):
        V.kl_prior_split(mu, logvar[:, :1], 100)
    with pytest.raises(ValueError, match="mu must have shape"):
        V.aggregated_log_prob(torch.zeros(3, 2, dtype=torch.float64), mu[0], logvar[0])
    with pytest.raises(ValueError, match="z must have shape"):
        V.aggregated_log_prob(torch.zeros(3, 5, dtype=torch.float64), mu, logvar)
    with pytest.raises(ValueError, match="z is torch.float32"):
        V.aggregated_log_prob(torch.zeros(3, 2), mu, logvar)
    with pytest.raises(ValueError, match="n_samples"):
        V.kl_prior_split(mu, logvar, 1)
    with pytest.raises(TypeError, match="mu must be"):
        V.sample_aggregated(mu.numpy(), logvar, 10)
