"""Chapter 03: the evidence lower bound, its importance-weighted version, and a model where both are exact.

For a latent variable model with joint ``log p(x, z)`` and any distribution ``q(z | x)`` that can
``rsample`` and give its ``log_prob`` (a :mod:`torch.distributions` object with batch shape ``(N,)``),

- :func:`elbo` estimates ``E_q[log p(x, z) - log q(z | x)]`` (Eq. ``elbo-def``) per data point;
- :func:`iwae_bound` estimates ``E[log (1/k) sum_i p(x, z_i) / q(z_i | x)]`` (Eq. ``iwae-bound``),
  which grows with ``k`` towards ``log p(x)``;
- :class:`LinearGaussianModel` (probabilistic PCA / factor analysis) has an exact ``log p(x)`` and an
  exact Gaussian posterior, so every identity of the chapter can be checked to round-off.

Conventions: ``x`` is ``(N, Dx)``; samples of ``z`` are ``(S, N, Dz)``; ``log_joint(x, z)`` returns
``(S, N)``. Estimates are per data point, ``(N,)``, with their standard errors.
"""

from __future__ import annotations

import math

import torch
from torch import distributions as td

from coursepkg import probability as P
from coursepkg.probability import MonteCarloEstimate


# --------------------------------------------------------------------------------------------------
# the bounds
# --------------------------------------------------------------------------------------------------
def _log_weights(x: torch.Tensor, log_joint, q, n: int) -> torch.Tensor:
    """``log p(x, z_s) - log q(z_s | x)`` for ``z_s ~ q``, shape ``(n, N)``, differentiable through rsample."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError("x must be a tensor with a batch dimension first, e.g. (N, Dx)")
    if not (hasattr(q, "rsample") and hasattr(q, "log_prob") and hasattr(q, "batch_shape")):
        raise TypeError(f"q must be a torch distribution with rsample and log_prob, got {type(q).__name__}")
    if not getattr(q, "has_rsample", True):
        raise TypeError(f"q ({type(q).__name__}) cannot be reparameterized (has_rsample is False)")
    N = x.shape[0]
    if tuple(q.batch_shape) != (N,):
        raise ValueError(f"q must have batch shape ({N},), one distribution per data point; "
                         f"got batch shape {tuple(q.batch_shape)}")
    z = q.rsample((n,))                                        # (n, N, Dz)
    log_p = log_joint(x, z)
    if not isinstance(log_p, torch.Tensor) or tuple(log_p.shape) != (n, N):
        got = tuple(log_p.shape) if isinstance(log_p, torch.Tensor) else type(log_p).__name__
        raise ValueError(f"log_joint(x, z) must return shape ({n}, {N}) for z of shape {tuple(z.shape)}; got {got}")
    return log_p - q.log_prob(z)


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _estimate(values: torch.Tensor) -> MonteCarloEstimate:
    """Mean over dim 0 with its standard error (NaN when there is a single value)."""
    if values.shape[0] == 1:
        return MonteCarloEstimate(values[0], torch.full_like(values[0], float("nan")), 1)
    return P.mean_and_stderr(values, dim=0)


def elbo(x: torch.Tensor, log_joint, q, n_samples: int = 1) -> MonteCarloEstimate:
    """Monte Carlo estimate of the ELBO per data point (Eq. ``elbo-def``):
    ``(1/S) sum_s [log p(x, z_s) - log q(z_s | x)]``, ``z_s ~ q(z | x)`` reparameterized, so the
    estimate can be differentiated with respect to the parameters of ``q`` and of the model.

    Returns ``MonteCarloEstimate(estimate (N,), stderr (N,), S)``; the standard error is NaN when
    ``n_samples == 1``.
    """
    _check_count("n_samples", n_samples)
    return _estimate(_log_weights(x, log_joint, q, n_samples))


def iwae_bound(x: torch.Tensor, log_joint, q, k: int, n_estimates: int = 1) -> MonteCarloEstimate:
    """The importance-weighted bound with ``k`` samples per data point (Eq. ``iwae-bound``):
    ``log (1/k) sum_i exp(log p(x, z_i) - log q(z_i | x))``, computed by log-mean-exp.

    ``k = 1`` is the ELBO; the bound's expectation does not decrease with ``k`` and tends to
    ``log p(x)``. ``n_estimates`` independent bounds are averaged, and their standard error returned
    (NaN when ``n_estimates == 1``).
    """
    _check_count("k", k)
    _check_count("n_estimates", n_estimates)
    log_w = _log_weights(x, log_joint, q, k * n_estimates).view(n_estimates, k, x.shape[0])
    bounds = torch.logsumexp(log_w, dim=1) - math.log(k)      # (n_estimates, N)
    return _estimate(bounds)


# --------------------------------------------------------------------------------------------------
# a model where everything is exact
# --------------------------------------------------------------------------------------------------
class LinearGaussianModel:
    """``z ~ N(0, I_Dz)``, ``x | z ~ N(W z + b, diag(noise_var))`` (Eq. ``linear-gaussian-model``).

    With an isotropic ``noise_var`` this is probabilistic PCA; with a diagonal one, factor analysis.
    The marginal ``p(x) = N(b, W W^T + diag(noise_var))`` and the posterior ``p(z | x)`` are Gaussian
    and exact (chapter 01, Eqs. ``linear-gaussian-marginal`` and ``linear-gaussian-posterior``).
    """

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None = None, noise_var: float | torch.Tensor = 1.0):
        if not isinstance(W, torch.Tensor) or W.dim() != 2 or not W.is_floating_point():
            raise ValueError("W must be a floating-point (Dx, Dz) matrix")
        Dx, Dz = W.shape
        b = torch.zeros(Dx, dtype=W.dtype, device=W.device) if b is None else b
        noise_var = torch.as_tensor(noise_var, dtype=W.dtype, device=W.device)
        if noise_var.dim() == 0:
            noise_var = noise_var.expand(Dx).clone()
        if not isinstance(b, torch.Tensor) or tuple(b.shape) != (Dx,):
            raise ValueError(f"b must have shape ({Dx},), got {tuple(b.shape) if isinstance(b, torch.Tensor) else b}")
        if tuple(noise_var.shape) != (Dx,) or torch.any(noise_var <= 0):
            raise ValueError(f"noise_var must be a positive number or a positive vector of shape ({Dx},)")
        self.W, self.b, self.noise_var = W, b.to(W), noise_var
        self.x_dim, self.z_dim = Dx, Dz

    def _eye(self) -> torch.Tensor:
        return torch.eye(self.z_dim, dtype=self.W.dtype, device=self.W.device)

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.x_dim:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, {self.x_dim}), got {got}")
        return x

    @property
    def prior(self) -> td.MultivariateNormal:
        return td.MultivariateNormal(torch.zeros(self.z_dim, dtype=self.W.dtype, device=self.W.device),
                                     covariance_matrix=self._eye())

    def marginal(self) -> td.MultivariateNormal:
        """``p(x) = N(b, W W^T + diag(noise_var))``."""
        mean, cov = P.linear_gaussian_marginal(self.W, self.b, torch.zeros(self.z_dim, dtype=self.W.dtype,
                                                                           device=self.W.device),
                                               self._eye(), torch.diag(self.noise_var))
        return td.MultivariateNormal(mean, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """The exact ``log p(x)``, ``(N,)``."""
        x = self._check_x(x)
        d = self.marginal()
        return P.mvn_log_prob(x, d.mean, d.covariance_matrix)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x | z)``: ``x`` (N, Dx), ``z`` (..., N, Dz) -> (..., N)."""
        x = self._check_x(x)
        if not isinstance(z, torch.Tensor) or z.dim() < 2 or z.shape[-1] != self.z_dim or z.shape[-2] != x.shape[0]:
            got = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must have shape (..., {x.shape[0]}, {self.z_dim}) for x of shape {list(x.shape)}; "
                             f"got {got}")
        return P.gaussian_log_prob(x, z @ self.W.T + self.b, torch.log(self.noise_var))

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x, z) = log p(z) + log p(x | z)``: ``x`` (N, Dx), ``z`` (..., N, Dz) -> (..., N)."""
        log_lik = self.log_likelihood(x, z)
        return log_lik + P.gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))

    def posterior(self, x: torch.Tensor) -> td.MultivariateNormal:
        """The exact posterior ``p(z | x)``, one Gaussian per data point (batch shape ``(N,)``)."""
        x = self._check_x(x)
        mean, cov = P.linear_gaussian_posterior(x, self.W, self.b,
                                                torch.zeros(self.z_dim, dtype=self.W.dtype, device=self.W.device),
                                                self._eye(), torch.diag(self.noise_var))
        return td.MultivariateNormal(mean, covariance_matrix=cov.expand(x.shape[0], self.z_dim, self.z_dim))

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral samples ``(x (n, Dx), z (n, Dz))``."""
        _check_count("n", n)
        opts = {"dtype": self.W.dtype, "device": self.W.device, "generator": generator}
        z = torch.randn(n, self.z_dim, **opts)
        x = z @ self.W.T + self.b + self.noise_var.sqrt() * torch.randn(n, self.x_dim, **opts)
        return x, z
