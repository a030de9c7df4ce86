"""coursepkg.models and coursepkg._validate: one vocabulary for every model, one policy for bad input.

Every latent-variable model of the package satisfies the protocol, ``log_likelihood(x)`` is log p(x) in
all of them (checked against exact values, and for the VAE against quadrature), ``sample(n)`` returns a
``Sample(x, z)``, and the shared validation helpers raise the errors the policy promises.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as td

from coursepkg import _validate as V
from coursepkg import config
from coursepkg import gmm as G
from coursepkg.elbo import LinearGaussianModel
from coursepkg.models import LatentVariableModel, Sample, TrainableModel
from coursepkg.nn import MLP
from coursepkg.vae import VAE

F64 = torch.float64


def make_gmm() -> G.GMM:
    chol = torch.tensor([[[0.8, 0.0], [0.5, 0.4]], [[0.5, 0.0], [-0.3, 0.7]], [[1.0, 0.0], [0.0, 0.35]]], dtype=F64)
    return G.GMM(torch.tensor([0.35, 0.25, 0.4], dtype=F64), torch.tensor([[-2.0, -1.0], [2.0, -1.5], [0.0, 2.2]],
                                                                         dtype=F64), chol @ chol.mT)


def make_linear_gaussian() -> LinearGaussianModel:
    g = torch.Generator().manual_seed(0)
    return LinearGaussianModel(torch.randn(4, 2, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64),
                               torch.tensor([0.3, 0.5, 0.2, 0.4], dtype=F64))


def make_vae() -> VAE:
    """A VAE with one latent dimension, so that log p(x) can be computed by quadrature over z."""
    torch.manual_seed(0)
    return VAE(MLP(6, (16,), 2), MLP(1, (16,), 6), latent_dim=1).double()


MODELS = {"gmm": make_gmm, "linear_gaussian": make_linear_gaussian, "vae": make_vae}


# --------------------------------------------------------------------------------------------------
# the protocol
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_every_model_satisfies_the_protocol(name):
    model = MODELS[name]()
    assert isinstance(model, LatentVariableModel)
    assert isinstance(model, TrainableModel) == (name == "vae")    # the VAE is the one fit() trains by itself
    assert not isinstance(object(), LatentVariableModel)


@pytest.mark.parametrize("name, x_shape, z_shape, z_dtype", [
    ("gmm", (7, 2), (7,), torch.long), ("linear_gaussian", (7, 4), (7, 2), F64), ("vae", (7, 6), (7, 1), F64)])
def test_sample_returns_a_sample_of_x_and_z(name, x_shape, z_shape, z_dtype):
    model = MODELS[name]()
    s = model.sample(7, generator=torch.Generator().manual_seed(1))
    assert type(s) is Sample
    x, z = s                                                          # unpacks like a tuple
    assert x is s.x and z is s.z
    assert tuple(x.shape) == x_shape and tuple(z.shape) == z_shape and z.dtype == z_dtype
    again = model.sample(7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.x, x) and torch.equal(again.z, z)      # the generator makes it repeatable
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        model.sample(0)


@pytest.mark.parametrize("name", MODELS)
def test_log_joint_is_the_prior_plus_log_px_given_z(name):
    model = MODELS[name]()
    x, z = model.sample(5, generator=torch.Generator().manual_seed(2))
    if name == "gmm":
        log_prior = model.weights.log()[z]
        z_many = torch.stack([z, (z + 1) % 3])                                     # (2, N): samples of z
    else:
        log_prior = td.Normal(0.0, 1.0).log_prob(z).sum(-1)
        z_many = torch.stack([z, z + 0.5])                                          # (2, N, Dz)
    assert torch.allclose(model.log_joint(x, z), log_prior + model.log_px_given_z(x, z), atol=1e-12)
    assert model.log_joint(x, z_many).shape == (2, 5)
    assert torch.allclose(model.log_joint(x, z_many)[0], model.log_joint(x, z))


# --------------------------------------------------------------------------------------------------
# log_likelihood is log p(x) in every model
# --------------------------------------------------------------------------------------------------
def test_gmm_log_likelihood_is_the_exact_log_px():
    gmm = make_gmm()
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=F64) * 3
    ref = td.MixtureSameFamily(td.Categorical(probs=gmm.weights),
                               td.MultivariateNormal(gmm.means, covariance_matrix=gmm.covariances)).log_prob(x)
    assert torch.allclose(gmm.log_likelihood(x), ref, atol=1e-12)
    assert torch.equal(gmm.log_likelihood(x), G.log_likelihood(x, gmm))            # the method is the function
    # log p(x) = log sum_z p(x, z), and p(x | z) is the z-th Gaussian
    joint = torch.stack([gmm.log_joint(x, torch.full((50,), k)) for k in range(3)])
    assert torch.allclose(torch.logsumexp(joint, 0), ref, atol=1e-12)
    for k in range(3):
        comp = td.MultivariateNormal(gmm.means[k], covariance_matrix=gmm.covariances[k]).log_prob(x)
        assert torch.allclose(gmm.log_px_given_z(x, torch.full((50,), k)), comp, atol=1e-12)


def test_gmm_rejects_bad_latents():
    gmm, x = make_gmm(), torch.zeros(4, 2, dtype=F64)
    with pytest.raises(TypeError, match=r"z must be a tensor of component indices \(long\), got dtype torch.float"):
        gmm.log_joint(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"z must have shape \(\.\.\., 4\)"):
        gmm.log_px_given_z(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"component indices in 0\.\.2"):
        gmm.log_joint(x, torch.full((4,), 3))


def test_linear_gaussian_log_likelihood_is_the_exact_log_px():
    model = make_linear_gaussian()
    x = model.sample(40, generator=torch.Generator().manual_seed(4)).x
    ref = td.MultivariateNormal(model.b, covariance_matrix=model.W @ model.W.T + torch.diag(model.noise_var))
    assert torch.allclose(model.log_likelihood(x), ref.log_prob(x), atol=1e-12)
    # Bayes' rule: log p(x, z) - log p(x) is the exact posterior's log-density
    z = torch.randn(3, 40, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert torch.allclose(model.log_joint(x, z) - model.log_likelihood(x), model.posterior(x).log_prob(z), atol=1e-10)


def test_vae_log_likelihood_estimates_log_px_and_converges():
    model = make_vae()
    x = (torch.rand(4, 6, generator=torch.Generator().manual_seed(6), dtype=F64) > 0.5).double()
    # log p(x) = log int p(x, z) dz by quadrature on a fine grid of the one latent dimension
    grid = torch.linspace(-10.0, 10.0, 8001, dtype=F64)
    with torch.no_grad():
        log_joint = model.log_joint(x, grid[:, None, None].expand(-1, 4, 1))        # (grid, N)
    exact = torch.logsumexp(log_joint, 0) + math.log(grid[1] - grid[0])
    torch.manual_seed(7)
    errors = {k: (model.log_likelihood(x, k) - exact).abs().mean().item() for k in (1, 100, 20_000)}
    assert errors[20_000] < 0.02                        # close to log p(x) with many samples
    assert errors[20_000] < errors[100] < errors[1]     # and closer as k grows


# --------------------------------------------------------------------------------------------------
# the shared validation
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, error, message", [
    (0, ValueError, "n must be a positive int, got 0"),
    (-2, ValueError, "n must be a positive int, got -2"),
    (2.0, TypeError, "n must be a positive int, got 2.0"),
    (True, TypeError, "n must be a positive int, got True"),
    ("3", TypeError, "n must be a positive int, got '3'"),
    ({"quick": 1, "full": 2}, TypeError, r"n must be an int; .* n=coursepkg.config.budget\(quick=..., full=...\)"),
])
def test_positive_int_errors_name_the_argument(value, error, message):
    with pytest.raises(error, match=f"^{message}"):
        V.positive_int("n", value)


def test_integers_and_numbers():
    import numpy as np

    assert V.positive_int("n", np.int64(3)) == 3 and type(V.positive_int("n", np.int64(3))) is int
    assert V.positive_int("batch_size", None, none="the whole data set") is None
    with pytest.raises(ValueError, match=r"batch_size must be a positive int or None \(the whole data set\), got 0"):
        V.positive_int("batch_size", 0, none="the whole data set")
    assert V.integer("max_iter", 0, minimum=0) == 0
    with pytest.raises(ValueError, match="max_iter must be a non-negative int, got -1"):
        V.integer("max_iter", -1, minimum=0)
    with pytest.raises(ValueError, match="n_samples must be an int >= 2, got 1"):
        V.integer("n_samples", 1, minimum=2)
    assert V.number("lr", 1) == 1.0 and V.number("tau", torch.tensor([0.5]), positive=True) == 0.5
    with pytest.raises(ValueError, match="lr must be a positive number, got 0.0"):
        V.number("lr", 0, positive=True)
    with pytest.raises(ValueError, match="beta must be a non-negative number, got nan"):
        V.number("beta", float("nan"), nonnegative=True)
    with pytest.raises(TypeError, match="beta must be a non-negative number, got '1'"):
        V.number("beta", "1", nonnegative=True)
    with pytest.raises(TypeError, match="f must be callable, got int"):
        V.function("f", 3)


def test_tensor_checks():
    x = torch.zeros(5, 3)
    assert V.tensor("x", x, shape=("N", 3), floating=True, finite=True) is x
    with pytest.raises(TypeError, match="^x must be a torch.Tensor, got list"):
        V.tensor("x", [1.0])
    with pytest.raises(ValueError, match=r"^x must have shape \(N, 4\), got \[5, 3\]"):
        V.tensor("x", x, shape=("N", 4))
    with pytest.raises(TypeError, match="^x must be a floating-point tensor, got dtype torch.int64"):
        V.tensor("x", x.long(), floating=True)
    with pytest.raises(ValueError, match=r"^x must be a batch \(N, D\), got shape \[3\]"):
        V.tensor("x", x[0], min_dim=2, expected="a batch (N, D)")
    with pytest.raises(ValueError, match="^x contains NaN or inf"):
        V.tensor("x", torch.tensor([1.0, math.inf]), finite=True)
    like = torch.zeros(2, dtype=F64)
    made = V.tensor("var", 2, numbers=True, like=like)
    assert made.dtype == F64 and made.item() == 2.0
    with pytest.raises(TypeError, match="^var must be a torch.Tensor or a number, got str"):
        V.tensor("var", "2", numbers=True)
    with pytest.raises(ValueError, match=r"^z is torch.float32 on cpu but the model is torch.float64 on cpu; convert"):
        V.same_dtype_device("z", x, like, "the model")


def test_generator_policy():
    with pytest.raises(ValueError, match="give either seed or generator, not both"):
        V.generator(1, torch.Generator())
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got int"):
        V.generator(generator=3)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\), got -1"):
        V.generator(-1)
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        V.generator(1.5)
    g = torch.Generator()
    assert V.generator(generator=g) is g
    draw = lambda g: torch.rand(4, generator=g)                                      # noqa: E731
    assert torch.equal(draw(V.generator(3)), draw(V.generator(3)))
    # seed=None: seeded from torch's global generator, so seed_everything makes it reproducible
    config.seed_everything(11)
    first, second = draw(V.generator()), draw(V.generator())
    config.seed_everything(11)
    assert torch.equal(draw(V.generator()), first) and not torch.equal(first, second)
