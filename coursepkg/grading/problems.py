"""Random problems the checks pose: mixtures, linear-Gaussian models, and the judge of importance-weighted answers.

What the checks of several chapters share lives here, with public names, so that no check module
imports another one's private names. Every builder draws from a :class:`coursepkg.grading.kit.Case`
(a seeded generator, a dtype and a device) and returns tensors in the case's dtype and device.
"""

from __future__ import annotations

import math

import torch
from torch import distributions as td

from coursepkg import gmm as G
from coursepkg import probability as P
from coursepkg.elbo import LinearGaussianModel
from coursepkg.grading.kit import (
    N_SIGMA,
    Case,
    CheckFailure,
    Mistake,
    closest_mistake,
    require_like,
    statistical_failure,
    within,
)

F64 = torch.float64

# --------------------------------------------------------------------------------------------------
# Gaussian mixtures (chapters 02 and 03)
# --------------------------------------------------------------------------------------------------
# (N, D, K) of the mixture problems: the first shape is the most general one, so that a mistake is
# named there first; then one dimension, one component, few points.
SHAPES = [(50, 2, 4), (7, 1, 2), (50, 3, 1), (7, 3, 4)]


def random_mixture(gen: torch.Generator, K: int, D: int, spread: float = 2.5):
    """``(weights (K,), means (K, D), covariances (K, D, D))`` of a random mixture, float64 on the CPU:
    non-uniform weights, means of scale ``spread``, SPD covariances with eigenvalues roughly in [0.3, 3]."""
    weights = torch.softmax(0.8 * torch.randn(K, generator=gen, dtype=F64), 0)
    means = spread * torch.randn(K, D, generator=gen, dtype=F64)
    A = 0.6 * torch.randn(K, D, D, generator=gen, dtype=F64)
    covariances = A @ A.mT + 0.3 * torch.eye(D, dtype=F64)
    return weights, means, covariances


def mixture_sample(gen: torch.Generator, weights, means, covariances, n: int) -> torch.Tensor:
    """``n`` points ``(n, D)`` drawn from the mixture with ``gen``."""
    return G.GMM(weights, means, covariances).sample(n, generator=gen).x


def mixture_case(case: Case, N: int, D: int, K: int):
    """``(x (N, D), weights (K,), means (K, D), covariances (K, D, D))`` in the case's dtype and device:
    a random mixture, and data drawn from *another* random mixture of the same D (so that some points
    sit between or away from the components, not only on them)."""
    g = case["gen"]
    w, m, c = random_mixture(g, K, D)
    x = mixture_sample(g, *random_mixture(g, max(K, 2), D), N)
    return case.to(x, w, m, c)


# --------------------------------------------------------------------------------------------------
# linear-Gaussian models, diagonal q's, and the judge of importance-weighted answers (chapters 03 and 05)
# --------------------------------------------------------------------------------------------------
UNDERFLOW = ("exp underflow: a log of a mean of exponentials instead of a log-mean-exp",
             "for a point far from the data the log-weights are about -1000 and exp of them is 0, so "
             "log(mean(exp(log_w))) is -inf; compute torch.logsumexp(log_w, dim=0) - log(k)")


def random_linear_gaussian(case: Case, Dx: int, Dz: int) -> LinearGaussianModel:
    """``z ~ N(0, I)``, ``x | z ~ N(W z + b, diag(noise_var))`` with random parameters, float64 on the CPU,
    already rounded to the case's dtype (so the model the answer sees is exactly this one)."""
    g = case.gen
    W = 0.8 * torch.randn(Dx, Dz, generator=g, dtype=F64)
    b = torch.randn(Dx, generator=g, dtype=F64)
    noise_var = 0.3 + 1.2 * torch.rand(Dx, generator=g, dtype=F64)
    return LinearGaussianModel(case.rounded(W), case.rounded(b), case.rounded(noise_var))


def diag_gaussian(mean: torch.Tensor, var: torch.Tensor) -> td.Independent:
    """The diagonal Gaussian ``N(mean, diag(var))`` as a distribution over the last dimension."""
    return td.Independent(td.Normal(mean, var.sqrt()), 1)


def roundoff(case: Case, value: torch.Tensor) -> torch.Tensor:
    """Round-off allowance of a computation of ``value`` in the case's dtype, elementwise."""
    return case.tol[0] * (1.0 + value.abs())


class ModelFunction:
    """``log p(x | z)`` (``joint=False``, named ``log_px_given_z``) or ``log p(x, z)`` (``joint=True``, named
    ``log_joint``) of a linear-Gaussian model, in the case's dtype and on its device: the function handed to
    the answer, ``x (N, Dx)``, ``z (..., N, Dz)`` -> ``(..., N)``. The same values as
    :meth:`LinearGaussianModel.log_px_given_z` / ``log_joint``, lean (an answer that loops over thousands of
    samples calls it thousands of times), and saying clearly when ``z`` has the wrong shape, dtype or device."""

    def __init__(self, case: Case, model: LinearGaussianModel, joint: bool, name: str | None = None):
        self.W, self.b, self.noise_var = case.to(model.W, model.b, model.noise_var)
        self.z_dim, self.joint = model.z_dim, joint
        self.const = torch.log(2 * math.pi * self.noise_var).sum()
        self.__name__ = name or ("log_joint" if joint else "log_px_given_z")

    def __call__(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.dim() < 2 or z.shape[-1] != self.z_dim or z.shape[-2] != x.shape[0]:
            got = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{self.__name__}(x, z): z must have shape (..., {x.shape[0]}, {self.z_dim}) for x of "
                             f"shape {list(x.shape)}, e.g. (n_samples, N, Dz); got {got}")
        if z.dtype != self.W.dtype or z.device != self.W.device:
            raise ValueError(f"{self.__name__}(x, z): z is {str(z.dtype).replace('torch.', '')} on {z.device}, but the "
                             f"inputs are {str(self.W.dtype).replace('torch.', '')} on {self.W.device}: draw the noise "
                             "with dtype=mu.dtype, device=mu.device (or torch.randn_like)")
        r = x - z @ self.W.T - self.b
        out = -0.5 * (self.const + (r * r / self.noise_var).sum(-1))
        if self.joint:
            out = out - 0.5 * (self.z_dim * math.log(2 * math.pi) + (z * z).sum(-1))
        return out

    def __repr__(self) -> str:
        return f"<{self.__name__} of a linear-Gaussian model>"


def random_q(case: Case, model: LinearGaussianModel, x: torch.Tensor, shift: float, lv_range=None,
             positive_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, logvar)`` (float64, CPU, rounded to the case's dtype) of a diagonal q near the posterior of
    ``x``: its mean shifted at random by ``shift``, its log-variances the mean-field ones plus noise; or,
    with ``lv_range=(lo, hi)``, log-variances drawn uniformly, except in the first ``positive_rows`` rows,
    where they are drawn in (0.1, 0.5)."""
    g = case.gen
    N, Dz = x.shape[0], model.z_dim
    mu = model.posterior(x).mean + shift * torch.randn(N, Dz, generator=g, dtype=F64)
    if lv_range is None:
        base = torch.log(1.0 / torch.diagonal(model.posterior_precision()))          # mean-field log-variances
        logvar = base + 0.5 * torch.randn(N, Dz, generator=g, dtype=F64)
    else:
        lo, hi = lv_range
        logvar = lo + (hi - lo) * torch.rand(N, Dz, generator=g, dtype=F64)
        logvar[:positive_rows] = 0.1 + 0.4 * torch.rand(positive_rows, Dz, generator=g, dtype=F64)
    return case.rounded(mu), case.rounded(logvar)


def far_problem(case: Case) -> tuple[LinearGaussianModel, torch.Tensor, torch.Tensor]:
    """``(model, x, is_far)``: a random 3-D model, 2 points drawn from it and one point whose log p(x) is
    about -1000 (``is_far`` marks it), where a log of a mean of exponentials underflows."""
    g = case.gen
    model = random_linear_gaussian(case, 3, 2)
    near = model.sample(2, generator=g).x
    u = torch.randn(3, generator=g, dtype=F64)
    u = u / u.norm()
    cov = model.marginal().covariance_matrix
    t = math.sqrt(2000.0 / (u @ torch.linalg.solve(cov, u)).item())
    far = model.b + t * u
    return model, case.rounded(torch.cat([near, far[None]])), torch.tensor([False, False, True])


def _log_normal(z, mean, std):
    return P.gaussian_log_prob(z, mean, 2 * torch.log(std))


def simulate_iwae(model, x, mu, logvar, k: int, R: int, gen: torch.Generator, *, sample_mean=None,
                  sample_std=None, log_q="q", average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error (each ``(P,)``) of ``R`` simulated bounds of a (possibly wrong) recipe:
    ``z = sample_mean + sample_std * eps`` (default: q's), log-weight ``log p(x, z) - log_q(z)``, where
    ``log_q`` is "q", "prior" (the weight becomes log p(x | z)), "none", or a ``(mean, std)`` pair; a
    log-mean-exp over the k samples, or their mean with ``average``."""
    std = torch.exp(0.5 * logvar)
    sm = mu if sample_mean is None else sample_mean
    ss = std if sample_std is None else sample_std
    z = sm + ss * torch.randn(R, k, *mu.shape, generator=gen, dtype=F64)       # (R, k, P, Dz)
    log_w = model.log_joint(x, z)
    if log_q == "q":
        log_w = log_w - _log_normal(z, mu, std)
    elif log_q == "prior":
        log_w = log_w - _log_normal(z, torch.zeros_like(mu), torch.ones_like(mu))
    elif isinstance(log_q, tuple):
        log_w = log_w - _log_normal(z, *log_q)
    bounds = log_w.mean(1) if average else torch.logsumexp(log_w, 1) - math.log(k)
    return bounds.mean(0), bounds.std(0) / math.sqrt(R)


def iwae_mistakes(model, x, mu, logvar, k: int, R: int, gen: torch.Generator, ref, ref_se) -> list:
    """``(name, hint, mean, stderr)`` of what the typical mistakes of an importance-weighted bound converge
    to, for the model, the points ``x`` and q = N(mu, diag exp(logvar)) (float64), simulated with ``R`` draws."""
    zeros, ones = torch.zeros_like(mu), torch.ones_like(mu)

    def sim(**kw):
        return simulate_iwae(model, x, mu, logvar, k, R, gen, **kw)

    elbo = model.exact_elbo(x, diag_gaussian(mu, logvar.exp()))
    prior = ("z sampled from the prior instead of q", "the samples come from q(z | x): z_i = mu + exp(logvar / 2) * "
             "eps_i, and the weight is p(x, z_i) / q(z_i | x)")
    exp_std = ("std = exp(logvar) (the 1/2 is missing)", "logvar = log(sigma^2), so sigma = exp(logvar / 2)")
    return [
        ("the log-weights averaged (that is the ELBO, not the IWAE bound)", "the bound is the log of the *mean "
         "of the weights*, log (1/k) sum_i w_i (a log-mean-exp of the log-weights), not the mean of the "
         "log-weights, which estimates the ELBO", elbo, torch.zeros_like(elbo)),
        ("logsumexp without subtracting log k", "(1/k) sum_i w_i is a mean: torch.logsumexp(log_w, dim=0) - "
         "math.log(k)", ref + math.log(k), ref_se),
        (*prior, *sim(sample_mean=zeros, sample_std=ones)),
        (*prior, *sim(sample_mean=zeros, sample_std=ones, log_q="prior")),
        ("log q(z | x) forgotten in the weight", "the importance weight is p(x, z_i) / q(z_i | x): subtract "
         "log q(z_i | x), the diagonal-Gaussian log-density of the sample", *sim(log_q="none")),
        (*exp_std, *sim(sample_std=torch.exp(logvar))),
        (*exp_std, *sim(sample_std=torch.exp(logvar), log_q=(mu, torch.exp(logvar)))),
    ]


def judge_iwae(got, case: Case, inputs: str, model, x, mu, logvar, k: int, R: int, ref, ref_se, is_far, *,
               what: str, recipe: str, underflow: tuple[str, str] = UNDERFLOW) -> None:
    """Judge ``got``, ``R`` copies of one importance-weighted bound per data point (row ``r`` of
    ``got.view(R, P)`` is the ``r``-th copy of every point), against the reference mean ``ref`` (standard
    error ``ref_se``; ``x``, ``mu``, ``logvar`` float64, one row per point): its structure, then the mean of
    the copies within :data:`~coursepkg.grading.kit.N_SIGMA` combined standard errors. A rejected answer is
    matched with :func:`iwae_mistakes`; ``is_far`` (or None) marks the points far from the data, where a
    naive log-mean-exp underflows (``underflow`` names that mistake). Call it after the answer ran."""
    P_, Dz = mu.shape
    n = R * P_
    keep = "did you sum or average over the data points too? Keep one value per data point"
    require_like(got, (n,), dtype=case.dtype, device=case.device, what=f"the {what}", inputs=inputs, shape_hints=[
        ((k, n), "reduce over the k samples (dim 0) with a log-sum-exp"),
        ((k,), "reduce over the k samples (dim 0), not over the data points"),
        ((n, Dz), "log q(z | x) and log p(x, z) are sums over the latent dimensions"),
        ((), keep), ((1,), keep)])
    values = got.detach().double().cpu().view(R, P_)                # row r: the r-th copy of every point
    finite = torch.isfinite(values).all(0)
    mean, se = values.mean(0), values.std(0) / math.sqrt(R)
    tol = N_SIGMA * torch.sqrt(se**2 + ref_se**2) + roundoff(case, ref)
    if bool(finite.all()) and within(mean, ref, tol):
        return
    if is_far is not None and (not finite[is_far].all() or
                               (within(mean[~is_far], ref[~is_far], tol[~is_far]) and finite.all())):
        raise Mistake(*underflow)
    mistake = closest_mistake(mean, [
        (name, hint, value, N_SIGMA * torch.sqrt(se**2 + m_se**2) + roundoff(case, value))
        for name, hint, value, m_se in iwae_mistakes(model, x, mu, logvar, k, R, case.gen, ref, ref_se)],
        reference=ref, reference_tol=tol)
    if mistake is not None:
        raise mistake
    if not finite.all():
        raise CheckFailure(f"the {what} contains NaN or inf (for inputs {inputs}), the reference does not: look "
                           "for an exp that underflows or overflows, or a log of 0; use torch.logsumexp")
    raise statistical_failure(f"the mean of your {R} {what}s per point", mean, ref, torch.sqrt(se**2 + ref_se**2),
                              inputs=inputs, advice=recipe,
                              expected_name=f"the mean of as many {what}s from coursepkg.elbo.iwae_bound")
