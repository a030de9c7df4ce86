"""Chapter 02: Gaussian mixture models and the EM algorithm.

A mixture with K components in D dimensions is the generative story ``z ~ Cat(weights)``,
``x | z=k ~ N(means[k], covariances[k])`` (Eq. ``gmm-generative``). This module evaluates it, infers
``z`` (the E-step) and fits it by EM, on the CPU or a GPU, in float32 or float64:

- :class:`GMM` holds ``weights (K,)``, ``means (K, D)`` and ``covariances (K, D, D)``, and speaks the
  vocabulary of :class:`coursepkg.models.LatentVariableModel` (``gmm.log_likelihood(x)``, ``log_joint``,
  ``log_px_given_z``, ``sample``), by calling the functions below;
- :func:`joint_log_prob` ``log p(x, z=k)`` ``(N, K)``, :func:`log_likelihood` ``log p(x)`` ``(N,)``;
- :func:`e_step` responsibilities ``(N, K)``, :func:`m_step` the closed-form update, :func:`elbo`;
- :func:`fit` the EM loop, from a :class:`GMM` or a named initialisation (``"kmeans++"``, ``"random"``);
- what EM avoids, the naive Monte Carlo estimators that sample the latent from the prior:
  :func:`naive_mc_likelihood` and :func:`naive_mc_grad_means` for a mixture, and
  :func:`naive_mc_log_evidence` (with the effective sample size) for any latent variable model.

Everything is computed stably: Cholesky factors instead of inverses and determinants, log-sum-exp
instead of sums of exponentials. The E-step and the M-step are written as one matrix product per
chunk of rows for all K components at once, which is what makes :func:`fit` faster than
scikit-learn's ``GaussianMixture`` (see ``benchmarks/bench_gmm.py``). The update rules are the same
as scikit-learn's (including its ``10 * eps`` added to every component's mass, so that a component
that loses all its points keeps a finite mean and the covariance ``reg_covar * I``): from the same
initial parameters, the two agree to round-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from coursepkg import _validate as V
from coursepkg import probability as P
from coursepkg.models import Sample

LOG_2PI = math.log(2.0 * math.pi)
_CHUNK_ELEMENTS = 1 << 18  # rows per chunk * K * D: temporaries of ~2 MB stay in cache (measured fastest)


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GMM:
    """A Gaussian mixture: ``weights (K,)``, ``means (K, D)``, full ``covariances (K, D, D)``.

    The constructor checks shapes, that the weights are a probability vector and that every
    covariance is symmetric positive definite, and raises ``ValueError`` naming what is wrong.
    """

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor

    def __post_init__(self):
        w, m, c = self.weights, self.means, self.covariances
        for name, t in (("weights", w), ("means", m), ("covariances", c)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"GMM {name} must be a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"GMM {name} must be floating point, got {t.dtype}")
            if not torch.isfinite(t).all():
                raise ValueError(f"GMM {name} contain NaN or inf")
        if w.dim() != 1 or m.dim() != 2 or c.dim() != 3:
            raise ValueError(f"GMM expects weights (K,), means (K, D), covariances (K, D, D); got "
                             f"{list(w.shape)}, {list(m.shape)}, {list(c.shape)}")
        K, D = m.shape
        if w.shape[0] != K or c.shape != (K, D, D):
            raise ValueError(f"GMM shapes disagree: weights {list(w.shape)}, means {list(m.shape)}, "
                             f"covariances {list(c.shape)} (expected ({K},), ({K}, {D}), ({K}, {D}, {D}))")
        if len({w.dtype, m.dtype, c.dtype}) != 1 or len({w.device, m.device, c.device}) != 1:
            raise ValueError("GMM weights, means and covariances must share one dtype and one device")
        if torch.any(w < 0) or abs(w.sum().item() - 1.0) > 1e-4:
            raise ValueError(f"GMM weights must be non-negative and sum to 1 (they sum to {w.sum().item():.6g})")
        sym_tol = math.sqrt(torch.finfo(c.dtype).eps) * c.abs().amax().clamp_min(1.0)
        bad_sym = ((c - c.mT).abs().amax(dim=(1, 2)) > sym_tol).nonzero().flatten().tolist()
        if bad_sym:
            raise ValueError(f"GMM covariance of component(s) {bad_sym} is not symmetric")
        info = torch.linalg.cholesky_ex(c).info
        bad = (info != 0).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"GMM covariance of component(s) {bad} is not positive definite")

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, device=None, dtype=None) -> GMM:
        """A copy on ``device`` and/or in ``dtype``."""
        return GMM(*(t.to(device=device, dtype=dtype) for t in (self.weights, self.means, self.covariances)))

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Sample:
        """Draw ``n`` points by ancestral sampling (Eq. ``gmm-generative``): ``z ~ Cat(weights)``, then
        ``x = means[z] + L[z] eps`` with ``L L^T = covariances[z]``. Returns ``Sample(x (n, D), z (n,))``
        like scikit-learn's ``GaussianMixture.sample``."""
        V.positive_int("n", n)
        dev = self.device if generator is None else generator.device
        z = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=generator).to(self.device)
        eps = torch.randn(n, self.dim, 1, generator=generator, dtype=self.dtype, device=dev).to(self.device)
        L = torch.linalg.cholesky(self.covariances)
        return Sample(self.means[z] + (L[z] @ eps).squeeze(-1), z)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x_n)``, ``(N,)``: :func:`log_likelihood` (Eq. ``gmm-marginal``)."""
        return log_likelihood(x, self)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x_n, z_n) = log pi_z + log N(x_n; mu_z, Sigma_z)`` for component indices ``z`` (long)
        of shape ``(..., N)``, returning ``(..., N)``: the entries of :func:`joint_log_prob` (Eq. ``gmm-joint``)."""
        return _pick(joint_log_prob(x, self), z)

    def log_px_given_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x_n | z_n) = log N(x_n; mu_z, Sigma_z)`` for component indices ``z`` ``(..., N)`` -> ``(..., N)``."""
        x = _check_x(x)
        gmm = _match(x, self)
        return _pick(_log_gaussians(x, gmm.means, precision_cholesky(gmm.covariances)), z)


def _pick(table: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``table[n, z[..., n]]`` for a table ``(N, K)`` and component indices ``z`` ``(..., N)``."""
    N, K = table.shape
    V.tensor("z", z)
    if z.is_floating_point() or z.dtype == torch.bool:
        raise TypeError(f"z must be a tensor of component indices (long), got dtype {z.dtype}")
    if z.dim() < 1 or z.shape[-1] != N:
        raise ValueError(f"z must have shape (..., {N}), one component index per row of x; got {list(z.shape)}")
    if z.numel() and (z.min() < 0 or z.max() >= K):
        raise ValueError(f"z must hold component indices in 0..{K - 1}")
    z = z.to(table.device)
    return table[torch.arange(N, device=table.device).expand_as(z), z]


# --------------------------------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------------------------------
def _check_x(x) -> torch.Tensor:
    V.tensor("x", x, shape=("N", "D"), floating=True, expected="a floating-point tensor of shape (N, D)")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x is empty: shape {list(x.shape)}")
    return V.tensor("x", x, finite=True)


def _match(x: torch.Tensor, gmm: GMM) -> GMM:
    if not isinstance(gmm, GMM):
        raise TypeError(f"expected a coursepkg.gmm.GMM, got {type(gmm).__name__}")
    if gmm.dim != x.shape[1]:
        raise ValueError(f"x has D={x.shape[1]} features but the GMM has D={gmm.dim}")
    if gmm.dtype != x.dtype or gmm.device != x.device:
        gmm = gmm.to(device=x.device, dtype=x.dtype)
    return gmm


def _chunks(n: int, k: int, d: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, k * d))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------
def precision_cholesky(covariances: torch.Tensor) -> torch.Tensor:
    """Upper-triangular ``P_k = L_k^{-T}`` with ``L_k L_k^T = covariances[k]``, so that
    ``Sigma_k^{-1} = P_k P_k^T`` and ``(x - mu)^T Sigma^{-1} (x - mu) = ||(x - mu) P_k||^2``."""
    L, info = torch.linalg.cholesky_ex(covariances)
    if torch.any(info != 0):
        bad = (info != 0).nonzero().flatten().tolist()
        raise ValueError(f"covariance of component(s) {bad} is not positive definite: the component has "
                         "collapsed onto too few points; increase reg_covar")
    eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
    return torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False).mT


def _log_gaussians(x: torch.Tensor, means: torch.Tensor, prec_chol: torch.Tensor) -> torch.Tensor:
    """``log N(x_n; mu_k, Sigma_k)`` for all n, k: ``(N, K)``, one matrix product per chunk of rows."""
    N, D = x.shape
    K = means.shape[0]
    W = prec_chol.permute(1, 0, 2).reshape(D, K * D)      # x @ W = [x P_1, ..., x P_K]
    b = (means.unsqueeze(1) @ prec_chol).reshape(K * D)    # [mu_1 P_1, ..., mu_K P_K]
    parts = []
    for rows in _chunks(N, K, D):
        y = torch.addmm(-b, x[rows], W).square()            # ((x - mu_k) P_k)^2, all k at once
        parts.append(y.view(-1, K, D).sum(-1))
    maha = torch.cat(parts)                                  # differentiable, unlike sum(out=...)
    half_log_det = torch.log(torch.diagonal(prec_chol, dim1=-2, dim2=-1)).sum(-1)  # = -0.5 log|Sigma_k|
    return -0.5 * (D * LOG_2PI + maha) + half_log_det


def joint_log_prob(x: torch.Tensor, gmm: GMM) -> torch.Tensor:
    """``log p(x_n, z=k) = log pi_k + log N(x_n; mu_k, Sigma_k)`` for every point and component, ``(N, K)``
    (Eq. ``gmm-joint``)."""
    x = _check_x(x)
    gmm = _match(x, gmm)
    return torch.log(gmm.weights) + _log_gaussians(x, gmm.means, precision_cholesky(gmm.covariances))


def log_likelihood(x: torch.Tensor, gmm: GMM) -> torch.Tensor:
    """Per-sample ``log p(x_n) = log sum_k pi_k N(x_n; mu_k, Sigma_k)``, ``(N,)`` (Eq. ``gmm-marginal``),
    by log-sum-exp over the components."""
    return torch.logsumexp(joint_log_prob(x, gmm), dim=1)


def _e_step(x: torch.Tensor, gmm: GMM) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log responsibilities (N, K), mean log-likelihood)``, x already checked and matched."""
    joint = torch.log(gmm.weights) + _log_gaussians(x, gmm.means, precision_cholesky(gmm.covariances))
    log_px = torch.logsumexp(joint, dim=1, keepdim=True)
    return joint - log_px, log_px.mean()


def e_step(x: torch.Tensor, gmm: GMM) -> torch.Tensor:
    """The E-step: responsibilities ``r_nk = p(z=k | x_n)``, ``(N, K)``, each row summing to one
    (Eq. ``em-e-step``): Bayes' rule, computed as ``exp(log p(x, z=k) - log p(x))``."""
    x = _check_x(x)
    log_resp, _ = _e_step(x, _match(x, gmm))
    return torch.exp(log_resp)


def m_step(x: torch.Tensor, resp: torch.Tensor, reg_covar: float = 1e-6) -> GMM:
    """The M-step: the parameters that maximise ``sum_n sum_k r_nk log p(x_n, z=k)`` (Eqs.
    ``em-m-step-weights``, ``em-m-step-means``, ``em-m-step-covariances``):

    ``N_k = sum_n r_nk``, ``pi_k = N_k / N``, ``mu_k = sum_n r_nk x_n / N_k``,
    ``Sigma_k = sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / N_k + reg_covar * I``.

    As in scikit-learn, ``10 * eps`` is added to every ``N_k``, so that a component with no points
    gets a finite mean and the covariance ``reg_covar * I`` instead of NaN.
    """
    x = _check_x(x)
    if not isinstance(resp, torch.Tensor) or resp.dim() != 2 or resp.shape[0] != x.shape[0]:
        raise ValueError(f"resp must have shape (N, K) with N={x.shape[0]}, got "
                         f"{list(resp.shape) if isinstance(resp, torch.Tensor) else type(resp).__name__}")
    if resp.dtype != x.dtype or resp.device != x.device:
        resp = resp.to(dtype=x.dtype, device=x.device)
    if not torch.isfinite(resp).all() or torch.any(resp < 0):
        raise ValueError("resp must be finite and non-negative")
    return _m_step(x, resp, V.number("reg_covar", reg_covar, nonnegative=True))


def _m_step(x: torch.Tensor, resp: torch.Tensor, reg_covar: float) -> GMM:
    N, D = x.shape
    K = resp.shape[1]
    nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
    means = (resp.T @ x) / nk[:, None]
    # sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T = W_k^T W_k with W_k = sqrt(r_k) (x - mu_k): one batched
    # product per chunk of rows for all K. Centring each component at its own mean (rather than
    # computing E[x x^T] - mu mu^T) keeps float32 accurate for tight clusters far from the origin.
    second = torch.zeros(K, D, D, dtype=x.dtype, device=x.device)
    sqrt_resp = resp.sqrt()
    for rows in _chunks(N, K, D):
        w = sqrt_resp[rows].T.unsqueeze(-1) * (x[rows].unsqueeze(0) - means.unsqueeze(1))   # (K, rows, D)
        second.baddbmm_(w.mT, w)
    cov = second / nk[:, None, None]
    cov = 0.5 * (cov + cov.mT)
    if reg_covar == 0:
        _check_not_collapsed(cov, x)
    cov.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
    return GMM(nk / nk.sum(), means, cov)


def _check_not_collapsed(cov: torch.Tensor, x: torch.Tensor) -> None:
    """Without regularisation, a component that shrinks onto one point (or a line) has a covariance
    made of round-off: its likelihood is unbounded and the numbers are noise. Say so."""
    # round-off in x - mu_k is about eps * |x|: a variance below (100 eps |x|)^2 is made of it
    floor = (100 * torch.finfo(cov.dtype).eps * x.abs().amax()) ** 2
    L, info = torch.linalg.cholesky_ex(cov)
    tiny = torch.diagonal(L, dim1=-2, dim2=-1).square().amin(-1) < floor
    bad = ((info != 0) | tiny).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"component(s) {bad} collapsed onto too few points (a singular covariance, so an "
                         "unbounded likelihood); increase reg_covar (it is 0) or use fewer components")


def elbo(x: torch.Tensor, gmm: GMM, resp: torch.Tensor) -> torch.Tensor:
    """The mean evidence lower bound for the distributions ``q(z=k | x_n) = resp[n, k]``
    (Eq. ``gmm-elbo``): ``(1/N) sum_n sum_k r_nk [log p(x_n, z=k) - log r_nk]``.

    It is at most the mean log-likelihood, with equality when ``resp`` is the exact posterior
    (the E-step); terms with ``r_nk = 0`` contribute zero.
    """
    joint = joint_log_prob(x, gmm)
    if not isinstance(resp, torch.Tensor) or resp.shape != joint.shape:
        raise ValueError(f"resp must have shape {list(joint.shape)}")
    resp = resp.to(joint)
    safe = torch.where(resp > 0, resp, torch.ones_like(resp))
    return (resp * (joint - torch.log(safe))).sum(1).mean()


# --------------------------------------------------------------------------------------------------
# initialisation and the EM loop
# --------------------------------------------------------------------------------------------------
INITS = ("kmeans++", "random")


def init_kmeans_pp(x: torch.Tensor, k: int, *, seed: int | None = None, reg_covar: float = 1e-6) -> GMM:
    """k-means++ seeding (Arthur and Vassilvitskii, 2007): the first centre uniformly at random, each
    next one with probability proportional to the squared distance to the nearest centre chosen so
    far. Points are assigned to their nearest centre, and one M-step turns that hard assignment
    into a GMM. ``seed=None`` draws the seed from torch's global generator (:func:`coursepkg._validate.generator`)."""
    x = _check_x(x)
    _check_k(x, k)
    g = V.generator(seed, device=x.device)
    N = x.shape[0]
    centres = [x[torch.randint(N, (1,), generator=g, device=x.device)]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / N)
        c = x[torch.multinomial(probs, 1, generator=g)]
        centres.append(c)
        d2 = torch.minimum(d2, ((x - c) ** 2).sum(1))
    C = torch.cat(centres)
    labels = torch.cdist(x, C).argmin(1)
    resp = torch.nn.functional.one_hot(labels, k).to(x.dtype)
    return _m_step(x, resp, reg_covar)


def init_random(x: torch.Tensor, k: int, *, seed: int | None = None, reg_covar: float = 1e-6) -> GMM:
    """``k`` distinct data points as means, the covariance of the whole data set for every
    component, equal weights. ``seed`` as in :func:`init_kmeans_pp`."""
    x = _check_x(x)
    _check_k(x, k)
    g = V.generator(seed, device=x.device)
    idx = torch.randperm(x.shape[0], generator=g, device=x.device)[:k]
    D = x.shape[1]
    if x.shape[0] > 1:
        cov = torch.cov(x.T, correction=0).reshape(D, D)
    else:
        cov = torch.zeros(D, D, dtype=x.dtype, device=x.device)
    cov = cov + reg_covar * torch.eye(D, dtype=x.dtype, device=x.device)
    return GMM(torch.full((k,), 1.0 / k, dtype=x.dtype, device=x.device), x[idx].clone(),
               cov.expand(k, D, D).clone())


def _check_k(x: torch.Tensor, k) -> None:
    V.positive_int("k", k)
    if k > x.shape[0]:
        raise ValueError(f"k={k} components is more than the N={x.shape[0]} data points")


class FitResult(NamedTuple):
    """What :func:`fit` returns: ``gmm, history, converged = fit(...)``.

    ``history[0]`` is the mean log-likelihood of the initial parameters, ``history[i]`` the one
    after ``i`` EM iterations; ``history[-1]`` is that of the returned ``gmm``.
    """

    gmm: GMM
    history: list[float]
    converged: bool

    @property
    def n_iter(self) -> int:
        """The number of EM iterations (M-steps) done."""
        return len(self.history) - 1


def fit(x: torch.Tensor, k: int, init: str | GMM = "kmeans++", max_iter: int = 100, tol: float = 1e-3,
        reg_covar: float = 1e-6, seed: int | None = None, n_init: int = 1,
        callback: Callable[[int, GMM, torch.Tensor], None] | None = None) -> FitResult:
    """Fit a K-component GMM to ``x (N, D)`` by EM (Algorithm ``alg-em``).

    ``init`` is a :class:`GMM` (used as given, after checking it) or ``"kmeans++"`` / ``"random"``,
    seeded by ``seed``. Each iteration is an E-step then an M-step; EM stops after ``max_iter``
    iterations or once the mean log-likelihood changes by less than ``tol``, as scikit-learn does
    (``tol=0`` runs all ``max_iter`` iterations). ``n_init > 1`` restarts from that many named
    initialisations (seeds ``seed, seed + 1, ...``) and keeps the fit with the highest final
    log-likelihood. ``callback(iteration, gmm, resp)``, if given, is called before each M-step with
    the current parameters and their responsibilities (``iteration`` 0 is the initial model).
    Works on any device and in float32 or float64; the parameters follow ``x``'s device and dtype.
    """
    x = _check_x(x)
    _check_k(x, k)
    V.integer("max_iter", max_iter, minimum=0)
    tol = V.number("tol", tol, nonnegative=True)
    reg_covar = V.number("reg_covar", reg_covar, nonnegative=True)
    V.positive_int("n_init", n_init)
    if isinstance(init, GMM):
        if n_init != 1:
            raise ValueError("n_init > 1 needs a named initialisation, not a fixed GMM")
        gmm = _match(x, init)
        if gmm.n_components != k:
            raise ValueError(f"the initial GMM has {gmm.n_components} components, but k={k}")
        return _em(x, gmm, max_iter, tol, reg_covar, callback)
    if init not in INITS:
        raise ValueError(f"init must be a GMM or one of {', '.join(map(repr, INITS))}, got {init!r}")
    make = init_kmeans_pp if init == "kmeans++" else init_random
    best = None
    for i in range(n_init):
        start = make(x, k, seed=None if seed is None else seed + i, reg_covar=reg_covar)
        result = _em(x, start, max_iter, tol, reg_covar, callback)
        if best is None or result.history[-1] > best.history[-1]:
            best = result
    return best


def _em(x, gmm, max_iter, tol, reg_covar, callback) -> FitResult:
    log_resp, ll = _e_step(x, gmm)
    history, converged = [ll.item()], False
    for it in range(max_iter):
        resp = torch.exp(log_resp)
        if callback is not None:
            callback(it, gmm, resp)
        gmm = _m_step(x, resp, reg_covar)
        log_resp, ll = _e_step(x, gmm)
        history.append(ll.item())
        if abs(history[-1] - history[-2]) < tol:
            converged = True
            break
    return FitResult(gmm, history, converged)


# --------------------------------------------------------------------------------------------------
# the naive Monte Carlo estimators of p(x) and of its gradient (what EM avoids)
# --------------------------------------------------------------------------------------------------
def naive_mc_likelihood(x: torch.Tensor, gmm: GMM, n_samples: int, *,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate ``p(x_n)`` by sampling the latent from the prior (Eq. ``naive-mc-likelihood``):
    ``p_hat(x) = (1/S) sum_s p(x | z_s)``, ``z_s ~ Cat(weights)``, the same ``z_s`` for every point.

    Returns ``(p_hat (N,), log_p_hat (N,))``. ``p_hat`` is unbiased; ``log_p_hat`` (a log-mean-exp,
    computed stably) is biased low by Jensen's inequality.
    """
    x, gmm, z, log_cond = _prior_samples(x, gmm, n_samples, generator)
    log_p_hat = torch.logsumexp(log_cond, dim=1) - math.log(n_samples)
    return torch.exp(log_p_hat), log_p_hat


class NaiveEvidence(NamedTuple):
    """What :func:`naive_mc_log_evidence` returns, one value per data point: ``log_p_hat (N,)``, the
    log of the naive estimate ``p_hat_S(x_n)``, and ``ess (N,)``, the effective sample size of its
    weights ``p(x_n | z_s)``."""

    log_p_hat: torch.Tensor
    ess: torch.Tensor


def naive_mc_log_evidence(x: torch.Tensor, model, n_samples: int, *,
                          generator: torch.Generator | None = None) -> NaiveEvidence:
    """The naive Monte Carlo estimate of ``log p(x_n)`` for any latent variable model
    (Eq. ``naive-mc-likelihood``): ``log p_hat_S(x_n) = log (1/S) sum_s p(x_n | z_s)``, ``z_s ~ p(z)``.

    ``model`` speaks :class:`coursepkg.models.LatentVariableModel`: the ``S`` prior samples are the
    latents of ``model.sample(S)`` (ancestral sampling draws ``z`` from the prior first), shared by all
    the points, and ``model.log_px_given_z`` gives ``log p(x_n | z_s)``, ``(S, N)``. The average is a
    log-mean-exp, computed stably. The weights ``w_s = p(x_n | z_s)`` are the importance weights of the
    prior as proposal; their effective sample size ``(sum_s w_s)^2 / sum_s w_s^2``
    (:func:`coursepkg.probability.effective_sample_size`) is about ``S / E[w^2] * p(x)^2`` for large ``S``
    (Eq. ``naive-mc-relative-variance``) and tells how many samples the estimate really rests on.
    ``p_hat_S`` is unbiased; its log is biased low (Eq. ``naive-mc-log-bias``).
    """
    for name in ("sample", "log_px_given_z"):
        if not callable(getattr(model, name, None)):
            raise TypeError(f"model must be a latent variable model with a {name}() method "
                            f"(coursepkg.models.LatentVariableModel), got {type(model).__name__}")
    S = V.positive_int("n_samples", n_samples)
    V.tensor("x", x, min_dim=1, floating=True)
    z = model.sample(S, generator=generator).z                                           # (S, ...) from p(z)
    z = z.unsqueeze(1).expand(S, x.shape[0], *z.shape[1:])                               # (S, N, ...)
    log_w = model.log_px_given_z(x, z)                                                   # (S, N)
    return NaiveEvidence(P.log_mean_exp(log_w, dim=0), P.effective_sample_size(log_w, dim=0))


def grad_log_likelihood_means(x: torch.Tensor, gmm: GMM) -> torch.Tensor:
    """The exact gradient of ``log p(x_n)`` with respect to the means (Eq. ``gmm-grad-means``):
    ``r_nk Sigma_k^{-1} (x_n - mu_k)``, shape ``(N, K, D)``."""
    x = _check_x(x)
    gmm = _match(x, gmm)
    resp = e_step(x, gmm)
    return resp.unsqueeze(-1) * _precision_times_diff(x, gmm)


def naive_mc_grad_means(x: torch.Tensor, gmm: GMM, n_samples: int, *,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """The ratio estimator of ``grad_mu log p(x_n)`` (Eq. ``naive-mc-gradient``):

    ``sum_s p(x | z_s) grad log p(x | z_s) / sum_s p(x | z_s)``, ``z_s ~ p(z)``: two unbiased Monte
    Carlo averages divided by each other, which is biased for finite ``S`` and, when no ``z_s`` lands
    on a component, gives that component's mean no gradient at all. Shape ``(N, K, D)``.
    """
    x, gmm, z, log_cond = _prior_samples(x, gmm, n_samples, generator)
    w = torch.softmax(log_cond, dim=1)                                                   # p(x|z_s) / sum_s'
    share = torch.zeros(x.shape[0], gmm.n_components, dtype=x.dtype, device=x.device)
    share.index_add_(1, z, w)                                                            # weight landing on each k
    return share.unsqueeze(-1) * _precision_times_diff(x, gmm)


def _prior_samples(x, gmm, n_samples, generator):
    """Check the inputs, draw ``z_s ~ Cat(weights)`` (S,) and return ``log p(x_n | z_s)`` (N, S)."""
    x = _check_x(x)
    gmm = _match(x, gmm)
    V.positive_int("n_samples", n_samples)
    dev = x.device if generator is None else generator.device
    z = torch.multinomial(gmm.weights.to(dev), n_samples, replacement=True, generator=generator).to(x.device)
    log_cond = _log_gaussians(x, gmm.means, precision_cholesky(gmm.covariances))[:, z]
    return x, gmm, z, log_cond


def _precision_times_diff(x: torch.Tensor, gmm: GMM) -> torch.Tensor:
    """``Sigma_k^{-1} (x_n - mu_k)`` for all n, k: ``(N, K, D)``."""
    diff = x.unsqueeze(1) - gmm.means                                                    # (N, K, D)
    return torch.linalg.solve(gmm.covariances, diff.transpose(0, 1).mT).mT.transpose(0, 1)
