"""Chapter 01, the probability toolkit: log-densities, KL divergences, Monte Carlo, Gaussian identities.

Conventions. Tensors are batch-first; the *last* dimension is the event dimension, and the
log-densities and KL divergences below sum over it, returning one number per batch element.
Diagonal Gaussians are given by a mean ``mu`` and a log-variance ``logvar`` (``logvar = log sigma^2``),
the parameterisation the VAE chapters use. Each function names the book's equation it implements.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from coursepkg import _validate as V

LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------------
# input checking: a clear error naming the argument, never a broadcasting error from deep in torch
# --------------------------------------------------------------------------------------------------
def _tensor(name: str, value, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """An argument of the formulas below: a floating-point tensor, or a number (in ``like``'s dtype and device)."""
    return V.tensor(name, value, floating=True, numbers=True, like=like)


def _broadcast(**named: torch.Tensor) -> torch.Size:
    shapes = {k: tuple(v.shape) for k, v in named.items()}
    try:
        return torch.broadcast_shapes(*shapes.values())
    except RuntimeError:
        desc = ", ".join(f"{k}{list(s)}" for k, s in shapes.items())
        raise ValueError(f"shapes do not broadcast together: {desc}") from None


def _event_dims(shape: torch.Size, what: str) -> None:
    if len(shape) == 0:
        raise ValueError(f"{what}: inputs are scalars; give the event dimension explicitly, e.g. shape (N, 1)")


def _is_symmetric(S: torch.Tensor) -> bool:
    """``S == S^T`` up to round-off (Cholesky reads only the lower triangle, so it cannot tell)."""
    tol = math.sqrt(torch.finfo(S.dtype).eps) * S.abs().amax()
    return bool(((S - S.mT).abs() <= tol).all())


# --------------------------------------------------------------------------------------------------
# log-densities
# --------------------------------------------------------------------------------------------------
def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""Log-density of a diagonal Gaussian, summed over the last dimension (Eq. ``gaussian-log-density``).

    .. math:: \log \mathcal N(x; \mu, \operatorname{diag}\sigma^2)
              = -\tfrac12 \sum_d \Big[\log 2\pi + \log\sigma_d^2 + \frac{(x_d-\mu_d)^2}{\sigma_d^2}\Big]

    ``x``, ``mu`` and ``logvar`` broadcast together to ``(..., D)``; returns shape ``(...)``.
    """
    x = _tensor("x", x)
    mu, logvar = _tensor("mu", mu, like=x), _tensor("logvar", logvar, like=x)
    shape = _broadcast(x=x, mu=mu, logvar=logvar)
    _event_dims(shape, "gaussian_log_prob")
    return -0.5 * (LOG_2PI + logvar + (x - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    r"""Log-probability of a product of Bernoullis with logits, summed over the last dimension
    (Eq. ``bernoulli-log-density``).

    .. math:: \log p(x) = \sum_d \big[x_d \log \pi_d + (1-x_d)\log(1-\pi_d)\big],\quad \pi_d=\sigma(\ell_d)

    computed stably as ``x * logits - softplus(logits)``, which is minus the binary cross-entropy
    with logits. ``x`` may hold values in [0, 1] (the continuous relaxation used for grey images).
    """
    x = _tensor("x", x)
    logits = _tensor("logits", logits, like=x)
    shape = _broadcast(x=x, logits=logits)
    _event_dims(shape, "bernoulli_log_prob")
    if torch.any((x < 0) | (x > 1)):
        raise ValueError("x must lie in [0, 1] for a Bernoulli log-probability")
    return (x * logits - torch.nn.functional.softplus(logits)).sum(-1)


def mvn_log_prob(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    r"""Log-density of a full-covariance Gaussian through a Cholesky factor (Eq. ``mvn-log-density``).

    With :math:`\Sigma = LL^\top`: :math:`\log\mathcal N(x;m,\Sigma) = -\tfrac12\big[D\log2\pi
    + 2\sum_d\log L_{dd} + \|L^{-1}(x-m)\|^2\big]`. ``x`` is ``(..., D)``, ``mean`` ``(..., D)`` or
    ``(D,)``, ``cov`` ``(D, D)`` (or batched ``(..., D, D)``).
    """
    x = _tensor("x", x)
    mean, cov = _tensor("mean", mean, like=x), _tensor("cov", cov, like=x)
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"cov must be a (D, D) matrix, got shape {list(cov.shape)}")
    D = cov.shape[-1]
    _event_dims(x.shape, "mvn_log_prob")
    _event_dims(mean.shape, "mvn_log_prob")
    if x.shape[-1] != D or mean.shape[-1] != D:
        raise ValueError(f"x{list(x.shape)}, mean{list(mean.shape)} and cov{list(cov.shape)} disagree on D")
    try:
        batch = torch.broadcast_shapes(x.shape[:-1], mean.shape[:-1], cov.shape[:-2])
    except RuntimeError:
        raise ValueError(f"batch shapes do not broadcast together: x{list(x.shape)}, mean{list(mean.shape)}, "
                         f"cov{list(cov.shape)}") from None
    L, info = torch.linalg.cholesky_ex(cov)
    if torch.any(info != 0) or not _is_symmetric(cov):
        raise ValueError("cov is not symmetric positive definite (its Cholesky factorisation failed)")
    diff = x - mean
    if L.dim() == 2:  # one covariance for the whole batch: a single solve with N right-hand sides
        flat = diff.reshape(-1, D)
        sol = torch.linalg.solve_triangular(L, flat.T, upper=False).T.reshape(diff.shape)
    else:
        L_b = L.expand(*batch, D, D)
        sol = torch.linalg.solve_triangular(L_b, diff.expand(*batch, D).unsqueeze(-1), upper=False).squeeze(-1)
    half_logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (D * LOG_2PI + (sol**2).sum(-1)) - half_logdet


# --------------------------------------------------------------------------------------------------
# KL divergences
# --------------------------------------------------------------------------------------------------
def kl_categorical(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""KL(p || q) between categorical distributions over the last dimension (Eq. ``kl-def``).

    :math:`\sum_k p_k \log(p_k/q_k)`, with the convention :math:`0 \log 0 = 0`; infinite when some
    :math:`q_k = 0 < p_k`.
    """
    p, q = _tensor("p", p), _tensor("q", q)
    shape = _broadcast(p=p, q=q)
    _event_dims(shape, "kl_categorical")
    for name, t in (("p", p), ("q", q)):
        if torch.any(t < 0) or not torch.allclose(t.sum(-1), torch.ones((), dtype=t.dtype, device=t.device),
                                                    atol=1e-5):
            raise ValueError(f"{name} must be a probability vector: non-negative, summing to 1 over the last dim")
    terms = torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros((), dtype=p.dtype, device=p.device))
    return terms.sum(-1)


def kl_diag_gaussians(mu_q: torch.Tensor, logvar_q: torch.Tensor,
                      mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    r"""KL(q || p) between diagonal Gaussians, summed over the last dimension (Eq. ``kl-diag-gaussians``).

    .. math:: \mathrm{KL} = \tfrac12 \sum_d \Big[\log\frac{\sigma_{p,d}^2}{\sigma_{q,d}^2}
              + \frac{\sigma_{q,d}^2 + (\mu_{q,d}-\mu_{p,d})^2}{\sigma_{p,d}^2} - 1\Big]
    """
    mu_q = _tensor("mu_q", mu_q)
    logvar_q, mu_p, logvar_p = (_tensor(n, v, like=mu_q) for n, v in
                                (("logvar_q", logvar_q), ("mu_p", mu_p), ("logvar_p", logvar_p)))
    shape = _broadcast(mu_q=mu_q, logvar_q=logvar_q, mu_p=mu_p, logvar_p=logvar_p)
    _event_dims(shape, "kl_diag_gaussians")
    return 0.5 * (logvar_p - logvar_q + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p)
                  - 1.0).sum(-1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""KL(N(mu, diag exp(logvar)) || N(0, I)), summed over the last dimension (Eq. ``kl-std-normal``).

    .. math:: \tfrac12\sum_d\big[\mu_d^2 + \sigma_d^2 - 1 - \log\sigma_d^2\big]

    This is the VAE's prior-matching term; in code ``-0.5 * sum(1 + logvar - mu**2 - logvar.exp())``.
    """
    mu = _tensor("mu", mu)
    logvar = _tensor("logvar", logvar, like=mu)
    shape = _broadcast(mu=mu, logvar=logvar)
    _event_dims(shape, "kl_standard_normal")
    return 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar).sum(-1)


def kl_equal_variance(mu_q: torch.Tensor, mu_p: torch.Tensor, var: float | torch.Tensor) -> torch.Tensor:
    r"""KL between two Gaussians sharing the isotropic variance ``var`` (Eq. ``kl-equal-variance``).

    .. math:: \mathrm{KL}\big(\mathcal N(\mu_q,\sigma^2 I)\,\|\,\mathcal N(\mu_p,\sigma^2 I)\big)
              = \frac{\|\mu_q-\mu_p\|^2}{2\sigma^2}

    The log-determinant and trace terms cancel; this is why the diffusion loss is a weighted MSE.
    """
    mu_q = _tensor("mu_q", mu_q)
    mu_p = _tensor("mu_p", mu_p, like=mu_q)
    var = _tensor("var", var, like=mu_q)
    if torch.any(var <= 0):
        raise ValueError("var must be positive")
    shape = _broadcast(mu_q=mu_q, mu_p=mu_p)
    _event_dims(shape, "kl_equal_variance")
    try:  # one variance per distribution: a number, or a tensor broadcasting to the batch shape
        fits = torch.broadcast_shapes(var.shape, shape[:-1]) == shape[:-1]
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"var must be a number or broadcast to the batch shape {list(shape[:-1])}; "
                         f"got shape {list(var.shape)}") from None
    return ((mu_q - mu_p) ** 2).sum(-1) / (2.0 * var)


# --------------------------------------------------------------------------------------------------
# Monte Carlo
# --------------------------------------------------------------------------------------------------
class MonteCarloEstimate(NamedTuple):
    """A Monte Carlo estimate with its standard error (Eq. ``mc-standard-error``)."""

    estimate: torch.Tensor
    stderr: torch.Tensor
    n: int

    def __str__(self) -> str:
        est, se = self.estimate, self.stderr
        if est.numel() == 1:
            return f"{est.item():.4f} ± {se.item():.4f} (n={self.n})"
        return f"MonteCarloEstimate(shape={list(est.shape)}, n={self.n})"


def compare(name: str, exact, mc: MonteCarloEstimate, tol: float = 4.0) -> float:
    """The book's numerical check: print a closed form beside a Monte Carlo estimate, one line, and
    raise ``AssertionError`` if they differ by more than ``tol`` standard errors. Returns that
    difference in standard errors (0 for an exact match with a zero standard error)."""
    if not (hasattr(mc, "estimate") and hasattr(mc, "stderr")):
        raise TypeError(f"mc must be a MonteCarloEstimate (from mean_and_stderr), got {type(mc).__name__}")
    tol = V.number("tol", tol, positive=True)
    exact, est, se = float(exact), float(mc.estimate), float(mc.stderr)
    print(f"{name}: exact {exact:.4f} | Monte Carlo {est:.4f} ± {se:.4f}")
    gap = abs(est - exact) / se if se > 0 else (0.0 if est == exact else math.inf)
    if not gap <= tol:
        raise AssertionError(f"{name}: {est:.5f} is {gap:.1f} standard errors from {exact:.5f}")
    return gap


def mean_and_stderr(values: torch.Tensor, dim: int = 0) -> MonteCarloEstimate:
    r"""Sample mean and its standard error :math:`\hat\sigma/\sqrt n` along ``dim`` (Eq. ``mc-standard-error``).

    :math:`\hat\sigma` is the unbiased sample standard deviation (divide by :math:`n-1`).
    """
    values = _tensor("values", values)
    if values.dim() == 0:
        raise ValueError("values must have a sample dimension; got a scalar")
    n = values.shape[dim]
    if n < 2:
        raise ValueError(f"need at least 2 samples for a standard error, got {n}")
    return MonteCarloEstimate(values.mean(dim), values.std(dim, unbiased=True) / math.sqrt(n), n)


def monte_carlo(f: Callable[[torch.Tensor], torch.Tensor], sample: Callable[[int], torch.Tensor],
                n_samples: int, *, batch_size: int | None = None) -> MonteCarloEstimate:
    r"""Estimate :math:`\mathbb E_{p}[f(x)]` by :math:`\frac1n\sum_i f(x_i)`, :math:`x_i \sim p` (Eq. ``mc-estimator``).

    ``sample(m)`` returns ``m`` samples (first dimension ``m``); ``f`` maps them to ``(m, ...)`` values.
    Evaluates in batches of ``batch_size`` (default: all at once) to bound memory.
    Returns the estimate and its standard error.
    """
    V.integer("n_samples", n_samples, minimum=2)
    if batch_size is not None:
        V.positive_int("batch_size", batch_size)
    chunks, done = [], 0
    step = batch_size or n_samples
    while done < n_samples:
        m = min(step, n_samples - done)
        xs = sample(m)
        if not isinstance(xs, torch.Tensor) or xs.dim() == 0 or xs.shape[0] != m:
            raise ValueError(f"sample({m}) must return a tensor with first dimension {m}")
        fx = f(xs)
        if not isinstance(fx, torch.Tensor) or fx.dim() == 0 or fx.shape[0] != m:
            raise ValueError(f"f must return a tensor with first dimension {m} (one value per sample)")
        chunks.append(fx.detach())
        done += m
    return mean_and_stderr(torch.cat(chunks), dim=0)


def log_mean_exp(a: torch.Tensor, dim: int = 0) -> torch.Tensor:
    r""":math:`\log \frac1n \sum_i e^{a_i}` computed stably (Eq. ``log-mean-exp``)."""
    a = _tensor("a", a)
    if a.dim() == 0:
        raise ValueError("a must have a sample dimension; got a scalar")
    return torch.logsumexp(a, dim) - math.log(a.shape[dim])


def effective_sample_size(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""Kish's effective sample size :math:`(\sum_s w_s)^2 / \sum_s w_s^2` of importance weights,
    from their logarithms along ``dim`` (Eq. ``ess``): between 1 (one weight dominates) and ``S``
    (equal weights). Computed from normalised weights, so any constant in ``log_w`` cancels."""
    log_w = _tensor("log_w", log_w)
    if log_w.dim() == 0:
        raise ValueError("log_w must have a sample dimension; got a scalar")
    if torch.isnan(log_w).any() or torch.isposinf(log_w).any():
        raise ValueError("log_w holds NaN or +inf; importance weights must be finite (log 0 = -inf is allowed)")
    w = torch.softmax(log_w, dim=dim)
    return 1.0 / (w ** 2).sum(dim)


def self_normalized_importance(f_values: torch.Tensor, log_w: torch.Tensor, dim: int = 0) -> MonteCarloEstimate:
    r"""Self-normalised importance sampling estimate of an expectation, with its standard error (Eq. ``snis``).

    .. math:: \hat f = \sum_{s=1}^S \bar w_s\, f(z_s),\qquad \bar w_s = \frac{w_s}{\sum_{s'} w_{s'}},\qquad
              \operatorname{se}(\hat f) \approx \Big(\sum_{s=1}^S \bar w_s^2\,\big(f(z_s) - \hat f\big)^2\Big)^{1/2}

    for samples :math:`z_s` of a proposal and unnormalised weights :math:`w_s` (target over proposal, known
    up to a constant factor). ``f_values`` holds :math:`f(z_s)` with the ``S`` samples along ``dim``; ``log_w``
    holds :math:`\log w_s`, either with shape ``(S,)`` (one weight per sample, shared by every value of
    ``f``) or with a shape that broadcasts to ``f_values``. The weights are normalised with a softmax, so
    any constant added to ``log_w`` cancels and nothing overflows. The standard error is the delta-method
    approximation (Robert and Casella, 2004). Returns a :class:`MonteCarloEstimate` of shape
    ``f_values.shape`` without ``dim``, with ``n = S``.
    """
    f = _tensor("f_values", f_values)
    log_w = _tensor("log_w", log_w, like=f)
    if f.dim() == 0 or log_w.dim() == 0:
        raise ValueError("f_values and log_w must have a sample dimension; got a scalar")
    if not -f.dim() <= dim < f.dim():
        raise ValueError(f"dim={dim} is out of range for f_values of shape {list(f.shape)}")
    dim = dim % f.dim()
    n = f.shape[dim]
    if n < 2:
        raise ValueError(f"need at least 2 samples for a standard error, got {n}")
    if log_w.dim() == 1 and f.dim() > 1:  # one weight per sample: put the samples along dim
        if log_w.shape[0] != n:
            raise ValueError(f"log_w has {log_w.shape[0]} weights but f_values has {n} samples along dim={dim}")
        log_w = log_w.reshape([n if d == dim else 1 for d in range(f.dim())])
    if log_w.dim() < f.dim():
        log_w = log_w.reshape((1,) * (f.dim() - log_w.dim()) + tuple(log_w.shape))
    try:
        fits = torch.broadcast_shapes(log_w.shape, f.shape) == f.shape and log_w.shape[dim] == n
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"log_w of shape {list(log_w.shape)} does not give one weight per sample of f_values "
                         f"of shape {list(f.shape)} (samples along dim={dim})")
    if torch.isnan(log_w).any() or torch.isposinf(log_w).any():
        raise ValueError("log_w holds NaN or +inf; importance weights must be finite (log 0 = -inf is allowed)")
    if torch.isneginf(log_w).all(dim=dim).any():
        raise ValueError("every weight is zero (log_w = -inf along dim): the estimate is undefined")
    w = torch.softmax(log_w, dim=dim).expand(f.shape)
    estimate = (w * f).sum(dim)
    stderr = (w ** 2 * (f - estimate.unsqueeze(dim)) ** 2).sum(dim).sqrt()
    return MonteCarloEstimate(estimate, stderr, n)


# --------------------------------------------------------------------------------------------------
# Gaussian identities
# --------------------------------------------------------------------------------------------------
def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None,
                   *, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Sample :math:`z = \mu + \sigma\odot\varepsilon`, :math:`\sigma=\exp(\tfrac12\log\sigma^2)`,
    :math:`\varepsilon\sim\mathcal N(0,I)` (Eq. ``reparam``).

    Gradients flow to ``mu`` and ``logvar``. Pass ``eps`` to fix the noise (tests, figures).
    """
    mu = _tensor("mu", mu)
    logvar = _tensor("logvar", logvar, like=mu)
    shape = _broadcast(mu=mu, logvar=logvar)
    if eps is None:
        eps = torch.randn(shape, dtype=mu.dtype, device=mu.device, generator=generator)
    else:
        eps = _tensor("eps", eps, like=mu)
        shape = _broadcast(mu=mu, logvar=logvar, eps=eps)
    return mu + torch.exp(0.5 * logvar) * eps


def sum_of_gaussians(mu1, var1, mu2, var2) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Distribution of :math:`x_1 + x_2` for independent :math:`x_i\sim\mathcal N(\mu_i,\sigma_i^2)`
    (Eq. ``sum-of-gaussians``): :math:`\mathcal N(\mu_1+\mu_2,\ \sigma_1^2+\sigma_2^2)`.

    Means add, *variances* add (standard deviations do not). Returns ``(mean, var)``.
    """
    mu1 = _tensor("mu1", mu1)
    var1, mu2, var2 = (_tensor(n, v, like=mu1) for n, v in (("var1", var1), ("mu2", mu2), ("var2", var2)))
    _broadcast(mu1=mu1, var1=var1, mu2=mu2, var2=var2)
    if torch.any(var1 < 0) or torch.any(var2 < 0):
        raise ValueError("variances must be non-negative")
    return mu1 + mu2, var1 + var2


def gaussian_posterior(x, mu0, var0, var_noise) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Posterior of :math:`z` in the scalar model :math:`z\sim\mathcal N(\mu_0,\sigma_0^2)`,
    :math:`x\mid z\sim\mathcal N(z,\sigma^2)` (Eq. ``gaussian-posterior``), by completing the square:

    .. math:: \frac1{\sigma_\text{post}^2} = \frac1{\sigma_0^2}+\frac1{\sigma^2},\qquad
              \mu_\text{post} = \sigma_\text{post}^2\Big(\frac{\mu_0}{\sigma_0^2}+\frac{x}{\sigma^2}\Big).

    Element-wise over broadcast inputs; returns ``(mean, var)``.
    """
    x = _tensor("x", x)
    mu0, var0, var_noise = (_tensor(n, v, like=x) for n, v in
                            (("mu0", mu0), ("var0", var0), ("var_noise", var_noise)))
    _broadcast(x=x, mu0=mu0, var0=var0, var_noise=var_noise)
    if torch.any(var0 <= 0) or torch.any(var_noise <= 0):
        raise ValueError("var0 and var_noise must be positive")
    precision = 1.0 / var0 + 1.0 / var_noise
    var = 1.0 / precision
    return var * (mu0 / var0 + x / var_noise), var


def linear_gaussian_posterior(x: torch.Tensor, A: torch.Tensor, b: torch.Tensor, prior_mean: torch.Tensor,
                              prior_cov: torch.Tensor, noise_cov: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Posterior :math:`p(z\mid x)` of the linear-Gaussian model (Eq. ``linear-gaussian-posterior``)

    .. math:: z\sim\mathcal N(m_0, S_0),\quad x\mid z \sim \mathcal N(Az+b, \Sigma),\qquad
              S_\text{post} = (S_0^{-1} + A^\top\Sigma^{-1}A)^{-1},\quad
              m_\text{post} = S_\text{post}\big(S_0^{-1}m_0 + A^\top\Sigma^{-1}(x-b)\big).

    ``x`` is ``(N, Dx)``, ``A`` ``(Dx, Dz)``, ``b`` ``(Dx,)``, ``prior_mean`` ``(Dz,)``,
    ``prior_cov`` ``(Dz, Dz)``, ``noise_cov`` ``(Dx, Dx)``. Returns ``(mean (N, Dz), cov (Dz, Dz))``:
    the posterior covariance does not depend on ``x``.
    """
    x, A, b, m0, S0, Sn = _linear_gaussian_args(x, A, b, prior_mean, prior_cov, noise_cov)
    S0_inv = torch.linalg.inv(S0)
    Sn_inv = torch.linalg.inv(Sn)
    precision = S0_inv + A.T @ Sn_inv @ A
    cov = torch.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    mean = (S0_inv @ m0 + (x - b) @ Sn_inv @ A) @ cov  # cov is symmetric
    return mean, cov


def linear_gaussian_marginal(A, b, prior_mean, prior_cov, noise_cov) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Marginal :math:`p(x)=\mathcal N(Am_0+b,\ AS_0A^\top+\Sigma)` of the linear-Gaussian model
    (Eq. ``linear-gaussian-marginal``). Returns ``(mean (Dx,), cov (Dx, Dx))``."""
    A = _tensor("A", A)
    x = torch.zeros(1, A.shape[0], dtype=A.dtype, device=A.device) if A.dim() == 2 else A
    _, A, b, m0, S0, Sn = _linear_gaussian_args(x, A, b, prior_mean, prior_cov, noise_cov)
    return A @ m0 + b, A @ S0 @ A.T + Sn


def _linear_gaussian_args(x, A, b, prior_mean, prior_cov, noise_cov):
    x = _tensor("x", x)
    A, b, m0, S0, Sn = (_tensor(n, v, like=x) for n, v in (("A", A), ("b", b), ("prior_mean", prior_mean),
                                                           ("prior_cov", prior_cov), ("noise_cov", noise_cov)))
    if A.dim() != 2:
        raise ValueError(f"A must be a (Dx, Dz) matrix, got shape {list(A.shape)}")
    Dx, Dz = A.shape
    expect = {"x": (x, (None, Dx)), "b": (b, (Dx,)), "prior_mean": (m0, (Dz,)),
              "prior_cov": (S0, (Dz, Dz)), "noise_cov": (Sn, (Dx, Dx))}
    for name, (t, shape) in expect.items():
        if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape, strict=False)):
            want = "(N, Dx)" if name == "x" else str(tuple(shape))
            raise ValueError(f"{name} must have shape {want} for A of shape ({Dx}, {Dz}); got {list(t.shape)}")
    for name, S in (("prior_cov", S0), ("noise_cov", Sn)):
        if torch.linalg.cholesky_ex(S)[1] != 0 or not _is_symmetric(S):
            raise ValueError(f"{name} must be symmetric positive definite")
    return x, A, b, m0, S0, Sn


# --- added for chapter 01 text ---
def bayes_rule(log_prior: torch.Tensor, log_likelihood: torch.Tensor, dim: int = -1
               ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Evidence and posterior of a discrete latent, in log space (Eqs. ``sum-rule`` and ``bayes-rule``).

    .. math:: \log p(x) = \log\sum_k p(z=k)\,p(x\mid z=k),\qquad
              \log p(z=k\mid x) = \log p(z=k) + \log p(x\mid z=k) - \log p(x)

    The values of the latent run along ``dim`` of ``log_prior`` and ``log_likelihood`` (which broadcast
    together, e.g. ``(K,)`` and ``(N, K)``); the sum is a ``logsumexp``, so no probability underflows.
    Returns ``(log_evidence, log_posterior)``: the first without ``dim``, the second of the broadcast
    shape, summing (after ``exp``) to one along ``dim``. Zero prior mass (``-inf``) is allowed.
    """
    log_prior = _tensor("log_prior", log_prior)
    log_likelihood = _tensor("log_likelihood", log_likelihood, like=log_prior)
    shape = _broadcast(log_prior=log_prior, log_likelihood=log_likelihood)
    _event_dims(shape, "bayes_rule")
    if not -len(shape) <= dim < len(shape):
        raise ValueError(f"dim={dim} is out of range for inputs broadcasting to {list(shape)}")
    log_joint = log_prior + log_likelihood
    log_evidence = torch.logsumexp(log_joint, dim=dim, keepdim=True)
    return log_evidence.squeeze(dim), log_joint - log_evidence
