"""Chapter 03: the evidence lower bound, its importance-weighted version, and a model where both are exact.

For a latent variable model with joint ``log p(x, z)`` and any distribution ``q(z | x)`` that can
``rsample`` and give its ``log_prob`` (a :mod:`torch.distributions` object with batch shape ``(N,)``),

- :func:`elbo` estimates ``E_q[log p(x, z) - log q(z | x)]`` (Eq. ``elbo-def``) per data point;
- :func:`iwae_bound` estimates ``E[log (1/k) sum_i p(x, z_i) / q(z_i | x)]`` (Eq. ``iwae-bound``),
  which grows with ``k`` towards ``log p(x)``;
- :class:`LinearGaussianModel` (probabilistic PCA / factor analysis) has an exact ``log p(x)``, an
  exact Gaussian posterior, and a closed-form ELBO for any Gaussian ``q``, so every identity of the
  chapter can be checked to round-off;
- :class:`GaussianEncoder` and :func:`inference_gaps` do amortized inference and split what it loses
  into the approximation gap and the amortization gap (Eq. ``gap-split``); :func:`bottleneck_floor`
  is the least amortization gap of an encoder that sees ``x`` through ``r`` linear features (Eq.
  ``bottleneck-floor``), and :func:`optimal_bottleneck_encoder` the encoder that attains it. The
  encoder is trained by the one training loop, :func:`coursepkg.train.fit`, on the negative ELBO::

      fit(encoder, x, lambda xb: -elbo(xb, model, encoder.q(xb), n_samples=4).estimate.mean(),
          steps=2_000, lr=1e-2, batch_size=256, device=x.device)

``log_joint`` is a callable ``log_joint(x, z)`` or any model with a ``log_joint`` method (the vocabulary of
:mod:`coursepkg.models`, which :class:`LinearGaussianModel` and :class:`coursepkg.vae.VAE` speak).

Conventions: ``x`` is ``(N, Dx)``; samples of ``z`` are ``(S, N, Dz)``; ``log_joint(x, z)`` returns
``(S, N)``. Estimates are per data point, ``(N,)``, with their standard errors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import distributions as td
from torch import nn

from coursepkg import _validate as V
from coursepkg import probability as P
from coursepkg.models import Sample
from coursepkg.probability import MonteCarloEstimate


# --------------------------------------------------------------------------------------------------
# the bounds
# --------------------------------------------------------------------------------------------------
def _log_weights(x: torch.Tensor, log_joint, q, n: int) -> torch.Tensor:
    """``log p(x, z_s) - log q(z_s | x)`` for ``z_s ~ q``, shape ``(n, N)``, differentiable through rsample."""
    V.tensor("x", x, min_dim=1, expected="a tensor with a batch dimension first, e.g. (N, Dx)")
    log_joint = _log_joint_function(log_joint)
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


def _log_joint_function(log_joint):
    """The ``log_joint(x, z)`` callable: the argument itself, or the ``log_joint`` method of a model."""
    fn = getattr(log_joint, "log_joint", log_joint)
    if not callable(fn):
        raise TypeError(f"log_joint must be a callable log_joint(x, z) or a model with a log_joint method, "
                        f"got {type(log_joint).__name__}")
    return fn


def _estimate(values: torch.Tensor) -> MonteCarloEstimate:
    """Mean over dim 0 with its standard error (NaN when there is a single value)."""
    if values.shape[0] == 1:
        return MonteCarloEstimate(values[0], torch.full_like(values[0], float("nan")), 1)
    return P.mean_and_stderr(values, dim=0)


def elbo(x: torch.Tensor, log_joint, q, n_samples: int = 1) -> MonteCarloEstimate:
    """Monte Carlo estimate of the ELBO per data point (Eq. ``elbo-def``):
    ``(1/S) sum_s [log p(x, z_s) - log q(z_s | x)]``, ``z_s ~ q(z | x)`` reparameterized, so the
    estimate can be differentiated with respect to the parameters of ``q`` and of the model.
    ``log_joint`` is a callable ``log_joint(x, z)`` or a model with a ``log_joint`` method.

    Returns ``MonteCarloEstimate(estimate (N,), stderr (N,), S)``; the standard error is NaN when
    ``n_samples == 1``.
    """
    V.positive_int("n_samples", n_samples)
    return _estimate(_log_weights(x, log_joint, q, n_samples))


def iwae_bound(x: torch.Tensor, log_joint, q, k: int, n_estimates: int = 1) -> MonteCarloEstimate:
    """The importance-weighted bound with ``k`` samples per data point (Eq. ``iwae-bound``):
    ``log (1/k) sum_i exp(log p(x, z_i) - log q(z_i | x))``, computed by log-mean-exp.

    ``k = 1`` is the ELBO; the bound's expectation does not decrease with ``k`` and tends to
    ``log p(x)``. ``n_estimates`` independent bounds are averaged, and their standard error returned
    (NaN when ``n_estimates == 1``). ``log_joint`` is as in :func:`elbo`.
    """
    V.positive_int("k", k)
    V.positive_int("n_estimates", n_estimates)
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

    It speaks the vocabulary of :class:`coursepkg.models.LatentVariableModel`: :meth:`log_likelihood` is
    the exact ``log p(x)``, :meth:`log_px_given_z` is ``log p(x | z)``, :meth:`log_joint` and :meth:`sample`.
    """

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None = None, noise_var: float | torch.Tensor = 1.0):
        V.tensor("W", W, shape=("Dx", "Dz"), floating=True)
        Dx, Dz = W.shape
        b = torch.zeros(Dx, dtype=W.dtype, device=W.device) if b is None else b
        noise_var = torch.as_tensor(noise_var, dtype=W.dtype, device=W.device)
        if noise_var.dim() == 0:
            noise_var = noise_var.expand(Dx).clone()
        V.tensor("b", b, shape=(Dx,))
        if tuple(noise_var.shape) != (Dx,) or torch.any(noise_var <= 0):
            raise ValueError(f"noise_var must be a positive number or a positive vector of shape ({Dx},)")
        self.W, self.b, self.noise_var = W, b.to(W), noise_var
        self.x_dim, self.z_dim = Dx, Dz

    def _eye(self) -> torch.Tensor:
        return torch.eye(self.z_dim, dtype=self.W.dtype, device=self.W.device)

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        V.tensor("x", x, shape=("N", self.x_dim))
        return V.same_dtype_device("x", x, self.W, "the model")

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

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """The exact ``log p(x) = log N(x; b, W W^T + Psi)``, ``(N,)`` (Eq. ``linear-gaussian-marginal``).

        With ``Psi = diag(noise_var)``, ``r = x - b`` and the posterior precision
        ``Lambda = I + W^T Psi^-1 W``, the matrix determinant lemma and the Woodbury identity give
        ``log det(W W^T + Psi) = log det Psi + log det Lambda`` and
        ``r^T (W W^T + Psi)^-1 r = r^T Psi^-1 r - u^T Lambda^-1 u`` with ``u = W^T Psi^-1 r``:
        ``O(N Dx Dz)`` work, and the ``(Dx, Dx)`` covariance is never formed.
        """
        r = self._check_x(x) - self.b
        L = torch.linalg.cholesky(self.posterior_precision())
        u = (r / self.noise_var) @ self.W                                        # (N, Dz)
        v = torch.linalg.solve_triangular(L, u.T, upper=False)                  # L^-1 u, (Dz, N)
        quad = (r**2 / self.noise_var).sum(-1) - (v**2).sum(0)
        logdet = torch.log(self.noise_var).sum() + 2 * torch.log(torch.diagonal(L)).sum()
        return -0.5 * (self.x_dim * math.log(2 * math.pi) + logdet + quad)

    def log_px_given_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x | z) = log N(x; W z + b, diag(noise_var))``: ``x`` (N, Dx), ``z`` (..., N, Dz) -> (..., N)."""
        x = self._check_x(x)
        V.tensor("z", z, min_dim=2)
        if z.shape[-1] != self.z_dim or z.shape[-2] != x.shape[0]:
            raise ValueError(f"z must have shape (..., {x.shape[0]}, {self.z_dim}) for x of shape {list(x.shape)}; "
                             f"got {list(z.shape)}")
        V.same_dtype_device("z", z, self.W, "the model")
        return P.gaussian_log_prob(x, z @ self.W.T + self.b, torch.log(self.noise_var))

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x, z) = log p(z) + log p(x | z)``: ``x`` (N, Dx), ``z`` (..., N, Dz) -> (..., N)."""
        return self.log_px_given_z(x, z) + P.gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))

    def posterior(self, x: torch.Tensor) -> td.MultivariateNormal:
        """The exact posterior ``p(z | x) = N(Lambda^-1 W^T Psi^-1 (x - b), Lambda^-1)``, one Gaussian per data
        point (batch shape ``(N,)``), with ``Lambda`` the :meth:`posterior_precision`
        (Eq. ``linear-gaussian-posterior`` with a standard normal prior)."""
        r = self._check_x(x) - self.b
        L = torch.linalg.cholesky(self.posterior_precision())
        cov = torch.cholesky_inverse(L)
        mean = torch.cholesky_solve(((r / self.noise_var) @ self.W).T, L).T      # (N, Dz)
        return td.MultivariateNormal(mean, scale_tril=torch.linalg.cholesky(cov).expand(x.shape[0], -1, -1))

    def posterior_precision(self) -> torch.Tensor:
        """``Lambda = I + W^T diag(noise_var)^-1 W``, ``(Dz, Dz)``: the posterior's inverse covariance (any x)."""
        return self._eye() + self.W.T @ (self.W / self.noise_var[:, None])

    def mean_field_posterior(self, x: torch.Tensor) -> td.Independent:
        """The best *diagonal* Gaussian ``q(z | x)``: it maximises the ELBO among factorised Gaussians
        (Eq. ``mean-field-gaussian``): the exact posterior mean, and variances ``1 / Lambda_jj`` (the
        inverse of the *diagonal of the precision*, not the diagonal of the covariance)."""
        mean = self.posterior(x).mean
        var = 1.0 / torch.diagonal(self.posterior_precision())
        return td.Independent(td.Normal(mean, var.sqrt().expand_as(mean)), 1)

    def elbo_terms(self, x: torch.Tensor, q) -> tuple[torch.Tensor, torch.Tensor]:
        """The two terms of the ELBO in closed form for a Gaussian ``q(z | x)`` (Eq. ``elbo-recon-kl``):
        ``(E_q[log p(x | z)], KL(q(z | x) || p(z)))``, each ``(N,)``.

        ``q`` is a :class:`torch.distributions.MultivariateNormal` or a diagonal Gaussian
        (``Independent(Normal)``) with batch shape ``(N,)``. With ``m`` and ``S`` its mean and covariance,
        ``E_q[(x - W z - b)_i^2] = (x - W m - b)_i^2 + (W S W^T)_ii``: no sampling is involved.
        """
        x = self._check_x(x)
        m, S = gaussian_mean_cov(q, x.shape[0], self.z_dim)
        m, S = m.to(self.W), S.to(self.W)
        resid = x - m @ self.W.T - self.b                                       # (N, Dx)
        spread = torch.einsum("ij,njk,ik->ni", self.W, S, self.W)                # diag(W S W^T), (N, Dx)
        recon = -0.5 * (torch.log(2 * math.pi * self.noise_var) + (resid**2 + spread) / self.noise_var).sum(-1)
        logdet = torch.linalg.slogdet(S)[1]
        kl = 0.5 * (torch.diagonal(S, dim1=-2, dim2=-1).sum(-1) + (m**2).sum(-1) - self.z_dim - logdet)
        return recon, kl

    def exact_elbo(self, x: torch.Tensor, q) -> torch.Tensor:
        """The ELBO of a Gaussian ``q`` in closed form, reconstruction minus prior matching, ``(N,)``."""
        recon, kl = self.elbo_terms(x, q)
        return recon - kl

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Sample:
        """Ancestral samples ``Sample(x (n, Dx), z (n, Dz))``: ``z ~ N(0, I)``, then ``x ~ p(x | z)``."""
        V.positive_int("n", n)
        opts = {"dtype": self.W.dtype, "device": self.W.device, "generator": generator}
        z = torch.randn(n, self.z_dim, **opts)
        x = z @ self.W.T + self.b + self.noise_var.sqrt() * torch.randn(n, self.x_dim, **opts)
        return Sample(x, z)


def gaussian_mean_cov(q, n: int | None = None, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(N, D)`` and covariance ``(N, D, D)`` of a Gaussian ``q``: a ``MultivariateNormal`` or an
    ``Independent(Normal, 1)``; ``n`` and ``dim``, when given, are the batch size and dimension it must have."""
    if isinstance(q, td.MultivariateNormal):
        m, S = q.mean, q.covariance_matrix
    elif isinstance(q, td.Independent) and isinstance(q.base_dist, td.Normal) and q.reinterpreted_batch_ndims == 1:
        m, S = q.mean, torch.diag_embed(q.variance)
    else:
        raise TypeError(f"q must be a MultivariateNormal or an Independent(Normal, 1), got {type(q).__name__}")
    if m.dim() != 2 or (n is not None and m.shape[0] != n) or (dim is not None and m.shape[1] != dim):
        raise ValueError(f"q must have batch shape ({n},) and event shape ({dim},); "
                         f"got batch shape {tuple(q.batch_shape)} and event shape {tuple(q.event_shape)}")
    return m, S.expand(m.shape[0], m.shape[1], m.shape[1])


def gaussian_kl(q, p) -> torch.Tensor:
    """``KL(q || p)`` between two batches of Gaussians (diagonal or full covariance), ``(N,)``
    (chapter 01, the multivariate form of Eq. ``kl-diag-gaussians``)."""
    mq, Sq = gaussian_mean_cov(q)
    mp, Sp = gaussian_mean_cov(p, mq.shape[0], mq.shape[1])
    return td.kl_divergence(td.MultivariateNormal(mq, covariance_matrix=Sq),
                            td.MultivariateNormal(mp.to(mq), covariance_matrix=Sp.to(mq)))


# --------------------------------------------------------------------------------------------------
# amortized inference
# --------------------------------------------------------------------------------------------------
class GaussianEncoder(nn.Module):
    """An inference network ``x -> q(z | x) = N(mu(x), diag exp(logvar(x)))`` (Eq. ``amortized-q``).

    ``hidden=()`` makes ``mu`` and ``logvar`` affine in ``x``; ``hidden=(64, 64)`` puts an MLP with
    those widths (and SiLU activations) in between. ``bottleneck=r`` first squeezes ``x`` through ``r``
    linear features: an encoder that cannot see all of ``x``, for the amortization-gap experiment.
    """

    def __init__(self, x_dim: int, z_dim: int, hidden: tuple[int, ...] = (), bottleneck: int | None = None):
        super().__init__()
        for name, v in (("x_dim", x_dim), ("z_dim", z_dim), *((f"hidden[{i}]", h) for i, h in enumerate(hidden))):
            V.positive_int(name, v)
        layers: list[nn.Module] = []
        width = x_dim
        if bottleneck is not None:
            layers.append(nn.Linear(x_dim, V.positive_int("bottleneck", bottleneck), bias=False))
            width = bottleneck
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, 2 * z_dim))
        self.net = nn.Sequential(*layers)
        self.x_dim, self.z_dim = x_dim, z_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)``, each ``(N, Dz)``."""
        V.tensor("x", x, shape=("N", self.x_dim))
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar

    def q(self, x: torch.Tensor) -> td.Independent:
        """``q(z | x)`` as a torch distribution with batch shape ``(N,)``."""
        mu, logvar = self(x)
        return td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)


def bottleneck_floor(model: LinearGaussianModel, rank: int) -> torch.Tensor:
    """The smallest mean amortization gap of an encoder whose mean sees ``x`` through ``rank`` linear
    features, for data from the model (Eq. ``bottleneck-floor``): ``(1/2) sum_{i > rank} (lambda_i - 1)``
    with ``lambda_1 >= ... >= lambda_Dz`` the eigenvalues of the posterior precision ``Lambda``.
    A scalar tensor; zero for ``rank >= Dz``."""
    if not isinstance(model, LinearGaussianModel):
        raise TypeError(f"model must be a LinearGaussianModel, got {type(model).__name__}")
    rank = V.positive_int("rank", rank)
    eig = torch.linalg.eigvalsh(model.posterior_precision()).flip(0)          # lambda_1 >= ... >= lambda_Dz
    return 0.5 * (eig[rank:] - 1).sum()


def optimal_bottleneck_encoder(model: LinearGaussianModel, rank: int) -> GaussianEncoder:
    """The rank-``rank`` affine encoder that attains :func:`bottleneck_floor` (the dropdown after
    Eq. ``bottleneck-floor``): with ``L L^T = Lambda``, ``F = Lambda^-1 W^T Psi^-1`` and ``U_r`` the
    ``rank`` leading eigenvectors of ``L^T L - I`` (the covariance of ``y = L^T mu(x)``), its mean is
    ``L^-T U_r U_r^T L^T F (x - b)``, the projection of ``y`` on its leading principal components, and
    its variances are the mean field's ``1 / Lambda_jj``. A :class:`GaussianEncoder` with
    ``bottleneck=rank`` (features ``B x`` with ``B = U_r^T L^T F``), in the model's dtype."""
    if not isinstance(model, LinearGaussianModel):
        raise TypeError(f"model must be a LinearGaussianModel, got {type(model).__name__}")
    rank = V.positive_int("rank", rank)
    if rank > model.z_dim:
        raise ValueError(f"rank={rank} must be at most the latent dimension Dz={model.z_dim}")
    Lam = model.posterior_precision()
    L = torch.linalg.cholesky(Lam)
    F = torch.linalg.solve(Lam, model.W.T / model.noise_var)                  # posterior mean = F (x - b)
    eigvecs = torch.linalg.eigh(L.T @ L - torch.eye(model.z_dim, dtype=L.dtype, device=L.device)).eigenvectors
    U = eigvecs.flip(1)[:, :rank]                                              # (Dz, rank), leading first
    B = U.T @ L.T @ F                                                          # (rank, Dx): the features
    G = torch.linalg.solve_triangular(L.T, U, upper=True)                      # L^-T U_r, (Dz, rank)
    encoder = GaussianEncoder(model.x_dim, model.z_dim, bottleneck=rank).to(model.W)
    with torch.no_grad():
        first, last = encoder.net[0], encoder.net[-1]
        first.weight.copy_(B)
        last.weight.zero_()
        last.weight[: model.z_dim].copy_(G)
        last.bias[: model.z_dim].copy_(-G @ (B @ model.b))
        last.bias[model.z_dim:].copy_(-torch.log(torch.diagonal(Lam)))
    return encoder


class InferenceGaps(NamedTuple):
    """Exact per-point quantities of Eq. ``gap-split``, each ``(N,)``.

    ``log_px - elbo_amortized = approximation_gap + amortization_gap``: the first is what the family of
    diagonal Gaussians loses at its best, the second what one shared network loses on top of it.
    """

    log_px: torch.Tensor
    elbo_best: torch.Tensor
    elbo_amortized: torch.Tensor

    @property
    def approximation_gap(self) -> torch.Tensor:
        return self.log_px - self.elbo_best

    @property
    def amortization_gap(self) -> torch.Tensor:
        return self.elbo_best - self.elbo_amortized


def inference_gaps(model: LinearGaussianModel, x: torch.Tensor, encoder: GaussianEncoder) -> InferenceGaps:
    """Exact ``log p(x)``, the best diagonal-Gaussian ELBO and the encoder's ELBO on ``x`` (no sampling)."""
    with torch.no_grad():
        q_enc = encoder.q(x.to(next(encoder.parameters())))
        return InferenceGaps(model.log_likelihood(x), model.exact_elbo(x, model.mean_field_posterior(x)),
                             model.exact_elbo(x, q_enc))
