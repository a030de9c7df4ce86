"""Checks of the chapter 03 exercises (``solutions/03_elbo.ipynb``).

Two of the four answers are random (Monte Carlo estimates), so their checks are statistical:

- ``03.elbo`` runs the student's estimator with many samples on random linear-Gaussian models
  (:class:`coursepkg.elbo.LinearGaussianModel`), whose ELBO is known in closed form for any Gaussian
  ``q``, and accepts it within 5 Monte Carlo standard errors. The typical mistakes change what the
  estimator converges to; each one's value is computed exactly (the closed-form ELBO terms of a
  modified ``q``), and a rejected answer within 5 standard errors of some of them gets the name of the
  closest. A last trial differentiates the answer: the gradient must reach ``mu`` and ``logvar``
  through the sample.
- ``03.iwae`` replicates a few data points many times in one batch, so one call gives thousands of
  independent bounds per point; their mean is compared with :func:`coursepkg.elbo.iwae_bound` by a
  z-test (5 combined standard errors). What the mistakes converge to is simulated, and named the
  same way. A point far from the data, whose log-weights are about -1000, tells a log-sum-exp from a
  log of a mean of exponentials (which underflows to -inf).

The functions the student's code calls (``log_likelihood``, ``log_joint``) are lean versions of the
model's methods that also say clearly when ``z`` has the wrong shape, dtype or device.

Every check seeds torch's global generator inside the check (the notebook's random state is left
untouched by :func:`coursepkg.grading.check`), so a given answer always gets the same verdict.
``03.posterior_gap`` and ``03.gmm_elbo`` are deterministic and compared to round-off.
"""

from __future__ import annotations

import math

import torch
from torch import distributions as td

from coursepkg import gmm as G
from coursepkg import probability as P
from coursepkg.elbo import LinearGaussianModel, gaussian_kl, iwae_bound
from coursepkg.grading.checks.ch02_latent_variables_em import SHAPES as GMM_SHAPES
from coursepkg.grading.checks.ch02_latent_variables_em import _mixture_case
from coursepkg.grading.core import (
    CheckFailure,
    Mistake,
    call,
    close,
    compare,
    describe_inputs,
    fmt,
    random_cases,
    register,
    require_callable,
    require_tensor,
)

F64 = torch.float64
N_SIGMA = 5.0  # a Monte Carlo answer is accepted within this many standard errors


# --------------------------------------------------------------------------------------------------
# random linear-Gaussian models and diagonal q's
# --------------------------------------------------------------------------------------------------
def _rounded(case, t: torch.Tensor) -> torch.Tensor:
    """``t`` (float64) rounded to the case's dtype and back: the exact value the student receives."""
    return t.to(case["dtype"]).to(F64)


def _to(case, *tensors):
    out = tuple(t.to(dtype=case["dtype"], device=case["device"]) for t in tensors)
    return out if len(out) > 1 else out[0]


def _random_model(case, Dx: int, Dz: int) -> LinearGaussianModel:
    """``z ~ N(0, I)``, ``x | z ~ N(W z + b, diag(noise_var))`` with random parameters, in float64 on the
    CPU, already rounded to the case's dtype."""
    g = case["gen"]
    W = 0.8 * torch.randn(Dx, Dz, generator=g, dtype=F64)
    b = torch.randn(Dx, generator=g, dtype=F64)
    noise_var = 0.3 + 1.2 * torch.rand(Dx, generator=g, dtype=F64)
    return LinearGaussianModel(_rounded(case, W), _rounded(case, b), _rounded(case, noise_var))


class _ModelFunction:
    """``log p(x | z)`` (or ``log p(x, z)`` with ``joint=True``) of a linear-Gaussian model in the case's
    dtype and on its device: the function the student's code calls, ``x (N, Dx)``, ``z (..., N, Dz)`` ->
    ``(..., N)``. The same values as :meth:`LinearGaussianModel.log_likelihood` / ``log_joint``, without
    their checks of ``x`` (the check passes a valid one): an answer that loops over thousands of samples
    calls it thousands of times."""

    def __init__(self, case, model: LinearGaussianModel, joint: bool):
        self.W, self.b, self.noise_var = _to(case, model.W, model.b, model.noise_var)
        self.z_dim, self.joint = model.z_dim, joint
        self.const = torch.log(2 * math.pi * self.noise_var).sum()
        self.__name__ = "log_joint" if joint else "log_likelihood"

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


def _diag_q(mean: torch.Tensor, var: torch.Tensor) -> td.Independent:
    return td.Independent(td.Normal(mean, var.sqrt()), 1)


def _random_q(case, model: LinearGaussianModel, x: torch.Tensor, shift: float, lv_range=None, positive_rows=0):
    """``(mu, logvar)`` of a diagonal q near the posterior (its mean shifted at random), rounded to the
    case's dtype. ``lv_range=(lo, hi)`` draws the log-variances uniformly instead, except in the first
    ``positive_rows`` rows, where they are drawn in (0.1, 0.5)."""
    g = case["gen"]
    N, Dz = x.shape[0], model.z_dim
    mu = model.posterior(x).mean + shift * torch.randn(N, Dz, generator=g, dtype=F64)
    if lv_range is None:
        base = torch.log(1.0 / torch.diagonal(model.posterior_precision()))          # mean-field log-variances
        logvar = base + 0.5 * torch.randn(N, Dz, generator=g, dtype=F64)
    else:
        lo, hi = lv_range
        logvar = lo + (hi - lo) * torch.rand(N, Dz, generator=g, dtype=F64)
        logvar[:positive_rows] = 0.1 + 0.4 * torch.rand(positive_rows, Dz, generator=g, dtype=F64)
    return _rounded(case, mu), _rounded(case, logvar)


def _atol(case, value: torch.Tensor) -> torch.Tensor:
    """Round-off allowance of a float32 or float64 computation of ``value``, elementwise."""
    return (1e-4 if case["dtype"] == torch.float32 else 1e-7) * (1.0 + value.abs())


# --------------------------------------------------------------------------------------------------
# the structure of an answer (what compare() checks before the values), with shape hints
# --------------------------------------------------------------------------------------------------
def _validate(got, shape: tuple[int, ...], case, what: str, inputs: str = "", shape_hints=()) -> torch.Tensor:
    """Fail unless ``got`` is a tensor of ``shape`` with the case's dtype and device. ``shape_hints`` is
    a list of ``(shape, hint)``: a wrong shape that is one of them gets that hint."""
    at = f" (for inputs {inputs})" if inputs else ""
    require_tensor(got, what)
    if tuple(got.shape) != tuple(shape):
        hint = next((f": {h}" for s, h in shape_hints if tuple(got.shape) == tuple(s)), "")
        if not hint and got.numel() == 1 and math.prod(shape) > 1:
            hint = ": did you sum or average over the data points too? Keep one value per data point"
        raise CheckFailure(f"{what} has shape {list(got.shape)}, expected {list(shape)}{at}{hint}")
    device = torch.empty(0, device=case["device"]).device          # "cuda" -> "cuda:0", as tensors report it
    if got.device != device:
        raise CheckFailure(f"{what} is on device {got.device}, but the inputs were on {device}: "
                           f"create new tensors with device=x.device (or use torch.*_like)")
    if got.dtype != case["dtype"]:
        raise CheckFailure(f"{what} has dtype {str(got.dtype).replace('torch.', '')}, expected "
                           f"{str(case['dtype']).replace('torch.', '')} (the inputs' dtype){at}: "
                           f"avoid hard-coded dtypes; build constants (and random numbers) from the inputs")
    if not got.is_floating_point():
        raise CheckFailure(f"{what} should be a floating-point tensor")
    return got


def _within(got: torch.Tensor, value: torch.Tensor, tol: torch.Tensor) -> bool:
    """Every ``|got - value| <= tol``, False (not an error) with NaN."""
    return bool(((got - value).abs() <= tol).all())


def _likeliest_mistake(got: torch.Tensor, ref: torch.Tensor, ref_tol: torch.Tensor, candidates) -> None:
    """Name the mistake that explains a (rejected) random answer best.

    ``candidates`` holds ``(name, hint, value, tol)``: the answer is compatible with a mistake when every
    point is within ``tol`` of its value. Several mistakes can be (the noise of the estimate does not
    always tell a KL averaged over 2 dimensions from a KL forgotten): the closest one, in units of its
    tolerance, is named. A mistake that is itself within the reference's tolerance is never named.
    """
    best = None
    for name, hint, value, tol in candidates:
        if _within(value, ref, ref_tol) or not _within(got, value, tol):
            continue
        score = (((got - value) / tol) ** 2).sum().item()
        if best is None or score < best[0]:
            best = (score, name, hint)
    if best is not None:
        raise Mistake(best[1], best[2])


def _statistical_failure(what: str, got: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor,
                         se: torch.Tensor, inputs: str, advice: str, ref_name: str = "the exact value") -> CheckFailure:
    err = (got - ref).abs()
    i = int(torch.argmax(err / tol))
    n_se = err[i].item() / max(se[i].item(), 1e-300)
    return CheckFailure(f"{what} differs from {ref_name} by more than Monte Carlo error (for inputs {inputs}): "
                        f"{fmt(got[i].item())} instead of {fmt(ref[i].item())}, {fmt(n_se)} standard errors "
                        f"away; {advice}")


# --------------------------------------------------------------------------------------------------
# 03.elbo: the Monte Carlo ELBO, reconstruction minus prior matching
# --------------------------------------------------------------------------------------------------
ELBO_SAMPLES = 4000
# ((N, Dx, Dz), log-variance range, rows with positive log-variances). The first trial has a narrow q
# (a small Monte Carlo error and a large KL: the KL slips are told apart best there) and two rows of
# positive log-variances: "logvar used as the variance" is NaN exactly in the other rows. The second
# trial has positive log-variances only, where that mistake has a finite value.
ELBO_TRIALS = [((6, 4, 2), (-2.5, -1.0), 2), ((6, 4, 2), (0.05, 0.7), 0), ((5, 3, 1), (-2.0, 1.0), 0),
               ((4, 5, 3), (-2.0, 0.5), 0)]

NOT_REPARAMETERIZED = (
    "the sample is not reparameterized",
    "no gradient reaches mu and logvar through z: draw z = mu + exp(logvar / 2) * eps with "
    "eps = torch.randn(...) (or .rsample()), not with .sample(), torch.no_grad(), .detach() or numpy; "
    "the reparameterization trick makes the estimate a differentiable function of mu and logvar")
LOGVAR_AS_VAR = ("logvar used as the variance", "logvar is log(sigma^2): the variance is exp(logvar) and the "
                 "standard deviation exp(logvar / 2); taking sqrt or log of logvar itself is wrong "
                 "(and NaN wherever logvar < 0)")


def _recon_se(model: LinearGaussianModel, x, mean, std, S: int, gen: torch.Generator) -> torch.Tensor:
    """Standard error of the S-sample average of ``log p(x | z)``, ``z ~ N(mean, diag std^2)``, ``(N,)``."""
    eps = torch.randn(S, *mean.shape, generator=gen, dtype=F64)
    values = model.log_likelihood(x, mean + std * eps)                          # (S, N)
    return values.std(0) / math.sqrt(S)


def _elbo_mistakes(model, x, mu, logvar, S, gen, recon, kl, se):
    """``(name, hint, value, standard error)`` of the typical mistakes, each value exact."""
    N, Dz = mu.shape
    zeros, ones = torch.zeros_like(mu), torch.ones_like(mu)

    def terms(mean, var):
        return model.elbo_terms(x, _diag_q(mean, var))

    recon_prior, _ = terms(zeros, ones)
    recon_exp, kl_exp = terms(mu, torch.exp(2 * logvar))                         # std = exp(logvar)
    se_prior = _recon_se(model, x, zeros, ones, S, gen)
    se_exp = _recon_se(model, x, mu, torch.exp(logvar), S, gen)
    mistakes = [
        ("+KL instead of -KL (a sign error in the prior-matching term)", "ELBO = reconstruction - KL(q || p(z)): "
         "the KL is subtracted", recon + kl, se),
        ("z sampled from the prior N(0, I) instead of q", "the reconstruction term is an expectation under "
         "q(z | x): z = mu + exp(logvar / 2) * eps, not z = eps", recon_prior - kl, se_prior),
        ("std = exp(logvar) (the 1/2 is missing)", "logvar = log(sigma^2), so sigma = exp(logvar / 2) = "
         "exp(0.5 * logvar)", recon_exp - kl, se_exp),
        ("std = exp(logvar) (the 1/2 is missing)", "logvar = log(sigma^2), so sigma = exp(logvar / 2) and "
         "sigma^2 = exp(logvar)", recon_exp - kl_exp, se_exp),
        ("the KL term forgotten", "ELBO = E_q[log p(x | z)] - KL(q(z | x) || N(0, I)): subtract "
         "0.5 * sum(mu^2 + exp(logvar) - 1 - logvar) over the latent dimensions", recon, se),
        ("the KL averaged over the latent dimensions instead of summed", "KL(q || N(0, I)) of a diagonal Gaussian "
         "is a sum over the Dz dimensions: .sum(-1), not .mean(-1)", recon - kl / Dz, se),
        ("the reconstruction summed over the samples instead of averaged", "the Monte Carlo estimate of an "
         "expectation is the mean over the n_samples samples: .mean(0), not .sum(0)", S * recon - kl, S * se),
    ]
    if bool((logvar > 0).all()):  # logvar taken for the variance: finite only for positive logvar
        recon_lv, kl_lv = terms(mu, logvar)
        se_lv = _recon_se(model, x, mu, logvar.sqrt(), S, gen)
        mistakes += [(*LOGVAR_AS_VAR, recon_lv - kl_lv, se_lv), (*LOGVAR_AS_VAR, recon_lv - kl, se_lv),
                     (*LOGVAR_AS_VAR, recon - kl_lv, se)]
    return mistakes


def _elbo_shape_hints(S: int, N: int, Dz: int) -> list[tuple[tuple[int, ...], str]]:
    return [((S, N), "average the reconstruction over the n_samples samples (dim 0)"),
            ((N, Dz), "sum the KL over the latent dimensions"),
            ((S,), "reduce over the samples (dim 0), not over the data points")]


def _judge_elbo(got, case, exact, se, mistakes, logvar, inputs):
    """``mistakes()`` gives the catalogue; it is only computed for an answer that is wrong."""
    g = got.detach().double().cpu()
    tol = N_SIGMA * se + _atol(case, exact)
    if _within(g, exact, tol):
        return
    _likeliest_mistake(g, exact, tol, [(name, hint, value, N_SIGMA * m_se + _atol(case, value))
                                       for name, hint, value, m_se in mistakes()])
    if not torch.isfinite(g).all():
        bad = ~torch.isfinite(g)
        negative = (logvar < 0).any(-1)
        if negative.any() and torch.equal(bad, negative):
            raise Mistake(*LOGVAR_AS_VAR)
        raise CheckFailure(f"your ELBO contains NaN or inf (for inputs {inputs}), the exact one does not: look for a "
                           "log or square root of a negative number, or an exp that overflows")
    raise _statistical_failure("your ELBO", g, exact, tol, se, inputs,
                               f"with n_samples={ELBO_SAMPLES} a correct estimate is within {N_SIGMA:g} standard "
                               "errors: average log p(x | z_s) over n_samples reparameterized samples and subtract "
                               "the closed-form KL")


def _check_elbo_gradient(f, case, seed: int) -> None:
    """Differentiate the answer: its gradient with respect to mu and logvar must be an unbiased estimate of
    the exact ELBO's gradient, which it is not when the sample is detached from them."""
    g = torch.Generator().manual_seed(seed)
    case = {**case, "gen": g}
    N, Dx, Dz = 5, 4, 2
    model = _random_model(case, Dx, Dz)
    x, _ = model.sample(N, generator=g)
    x = _rounded(case, x)
    mu, logvar = _random_q(case, model, x, shift=1.0, lv_range=(-1.0, 0.5))
    xc, muc, lvc = _to(case, x, mu, logvar)
    mu_leaf, lv_leaf = muc.clone().requires_grad_(True), lvc.clone().requires_grad_(True)
    inputs = describe_inputs(x=xc, mu=muc, n_samples=ELBO_SAMPLES) + ", mu and logvar requiring grad"
    got = call(f, xc.clone(), _ModelFunction(case, model, joint=False), mu_leaf, lv_leaf, ELBO_SAMPLES)
    _validate(got, (N,), case, "your ELBO", inputs, _elbo_shape_hints(ELBO_SAMPLES, N, Dz))
    if not got.requires_grad:
        raise Mistake(*NOT_REPARAMETERIZED)
    g_mu, g_lv = torch.autograd.grad(got.sum(), (mu_leaf, lv_leaf), allow_unused=True)
    if g_mu is None or g_lv is None:
        raise Mistake(*NOT_REPARAMETERIZED)
    g_mu, g_lv = g_mu.double().cpu(), g_lv.double().cpu()

    # the exact gradient, and the standard errors of its reparameterized estimate
    mu_r, lv_r = mu.clone().requires_grad_(True), logvar.clone().requires_grad_(True)
    e_mu, e_lv = torch.autograd.grad(model.exact_elbo(x, _diag_q(mu_r, lv_r.exp())).sum(), (mu_r, lv_r))
    std = torch.exp(0.5 * logvar)
    eps = torch.randn(ELBO_SAMPLES, N, Dz, generator=g, dtype=F64)
    z = mu + std * eps
    grad_z = ((x - z @ model.W.T - model.b) / model.noise_var) @ model.W           # d log p(x|z) / dz, (S, N, Dz)
    se_mu = grad_z.std(0) / math.sqrt(ELBO_SAMPLES)
    se_lv = (grad_z * eps * 0.5 * std).std(0) / math.sqrt(ELBO_SAMPLES)
    tol_mu, tol_lv = N_SIGMA * se_mu + _atol(case, e_mu), N_SIGMA * se_lv + _atol(case, e_lv)
    ok_mu, ok_lv = _within(g_mu, e_mu, tol_mu), _within(g_lv, e_lv, tol_lv)
    if ok_mu and ok_lv:
        return
    # the reconstruction's share of the student's gradient (the KL's gradient is exact: mu, (exp(logvar) - 1) / 2)
    rec_mu, rec_lv = g_mu + mu, g_lv + 0.5 * (logvar.exp() - 1.0)
    if (not ok_mu and _within(rec_mu, torch.zeros_like(rec_mu), tol_mu)) or \
            (not ok_lv and _within(rec_lv, torch.zeros_like(rec_lv), tol_lv)):
        raise Mistake(*NOT_REPARAMETERIZED)
    which = "mu" if not ok_mu else "logvar"
    raise CheckFailure(f"your ELBO has the right value but the wrong gradient with respect to {which} (for inputs "
                       f"{inputs}): compute it with torch operations from mu and logvar, through "
                       "z = mu + exp(logvar / 2) * eps")


@register("03.elbo", "Monte Carlo ELBO: reconstruction minus prior matching")
def check_elbo(answer):
    f = require_callable(answer)
    torch.manual_seed(3100)
    cases = random_cases(3100)
    n_trials = 0
    for case in cases:
        for (N, Dx, Dz), lv_range, positive_rows in ELBO_TRIALS:
            g = case["gen"]
            model = _random_model(case, Dx, Dz)
            x, _ = model.sample(N, generator=g)
            x = _rounded(case, x)
            mu, logvar = _random_q(case, model, x, shift=0.5, lv_range=lv_range, positive_rows=positive_rows)
            recon, kl = model.elbo_terms(x, _diag_q(mu, logvar.exp()))
            exact = recon - kl
            se = _recon_se(model, x, mu, torch.exp(0.5 * logvar), ELBO_SAMPLES, g)
            mistakes = lambda: _elbo_mistakes(model, x, mu, logvar, ELBO_SAMPLES, g, recon, kl, se)  # noqa: E731
            xc, muc, lvc = _to(case, x, mu, logvar)
            inputs = describe_inputs(x=xc, mu=muc, n_samples=ELBO_SAMPLES)
            got = call(f, xc.clone(), _ModelFunction(case, model, joint=False), muc.clone(), lvc.clone(),
                       ELBO_SAMPLES)
            _validate(got, (N,), case, "your ELBO", inputs, _elbo_shape_hints(ELBO_SAMPLES, N, Dz))
            _judge_elbo(got, case, exact, se, mistakes, logvar, inputs)
            n_trials += 1
    _check_elbo_gradient(f, cases[0], 3199)
    return (f"matches the exact ELBO within Monte Carlo error on {n_trials} random inputs "
            f"(n_samples={ELBO_SAMPLES}), and its gradient flows through the sample")


# --------------------------------------------------------------------------------------------------
# 03.posterior_gap: log p(x) - ELBO(q) = KL(q || p(z | x)), exactly
# --------------------------------------------------------------------------------------------------
GAP_SHAPES = [(6, 4, 2), (5, 3, 1), (4, 6, 3)]   # (N, Dx, Dz), Dx > Dz so that W^T D^-1 W is invertible


def _kl_full(mq, Sq, mp, Sp, *, logdet: bool = True, half: bool = True, logdet_sign: float = 1.0):
    """``KL(N(mq, Sq) || N(mp, Sp))`` written out, with switches for the typical slips, ``(N,)``."""
    Dz = mq.shape[-1]
    Sp = Sp.expand(mq.shape[0], Dz, Dz)
    Sq = Sq.expand(mq.shape[0], Dz, Dz)
    P_ = torch.linalg.inv(Sp)
    d = (mp - mq).unsqueeze(-1)
    value = torch.einsum("nij,nji->n", P_, Sq) + (d.mT @ P_ @ d)[:, 0, 0] - Dz
    if logdet:
        value = value + logdet_sign * (torch.logdet(Sp) - torch.logdet(Sq))
    return 0.5 * value if half else value


def _posterior(x, W, b, noise_var, *, prior: bool = True, precision_noise: bool = False, subtract_b: bool = True):
    """``(mean (N, Dz), precision Lambda (Dz, Dz))`` of p(z | x), with switches for the typical slips."""
    Dinv = noise_var if precision_noise else 1.0 / noise_var
    Lam = W.T @ (W * Dinv[:, None])
    if prior:
        Lam = Lam + torch.eye(W.shape[1], dtype=W.dtype)
    r = x - b if subtract_b else x
    mean = torch.linalg.solve(Lam, (W.T @ (r * Dinv).T)).T
    return mean, Lam


@register("03.posterior_gap", "the gap log p(x) - ELBO = KL(q || posterior), exactly")
def check_posterior_gap(answer):
    f = require_callable(answer)
    trials = [(case, shape) for case in random_cases(3200) for shape in GAP_SHAPES]
    for case, (N, Dx, Dz) in trials:
        g = case["gen"]
        model = _random_model(case, Dx, Dz)
        x, _ = model.sample(N, generator=g)
        x = _rounded(case, x)
        mu, logvar = _random_q(case, model, x, shift=0.5)
        q_var = _rounded(case, logvar.exp())
        W, b, nv = model.W, model.b, model.noise_var
        post = model.posterior(x)
        ref = gaussian_kl(_diag_q(mu, q_var), post)
        Sq = torch.diag_embed(q_var)
        m, Lam = _posterior(x, W, b, nv)
        Sig = torch.linalg.inv(Lam)
        m_noprior, Lam_noprior = _posterior(x, W, b, nv, prior=False)
        m_prec, Lam_prec = _posterior(x, W, b, nv, precision_noise=True)
        m_nob, _ = _posterior(x, W, b, nv, subtract_b=False)
        mistakes = [
            ("KL in the wrong direction, KL(p(z | x) || q)", "the gap is KL(q(z | x) || p(z | x)): the expectation "
             "is under q, so q's covariance goes in the trace, tr(Sigma_p^-1 S_q), and the mean difference is "
             "weighted by the posterior precision", _kl_full(m, Sig, mu, Sq)),
            ("the posterior covariance taken as Lambda instead of its inverse", "Lambda = I + W^T D^-1 W is the "
             "posterior *precision*; the covariance is Lambda^-1 (torch.linalg.inv or torch.linalg.solve)",
             _kl_full(mu, Sq, m, Lam)),
            ("the posterior covariance taken as Lambda instead of its inverse", "Lambda = I + W^T D^-1 W is the "
             "posterior *precision*; the covariance is Lambda^-1, and the mean Lambda^-1 W^T D^-1 (x - b)",
             _kl_full(mu, Sq, ((W.T @ ((x - b) / nv).T).T) @ Lam, Lam)),
            ("the prior precision I forgotten in Lambda", "p(z | x) combines the prior N(0, I) and the likelihood: "
             "Lambda = I + W^T diag(noise_var)^-1 W", _kl_full(mu, Sq, m_noprior, torch.linalg.inv(Lam_noprior))),
            ("noise_var used as a precision (multiplied instead of divided)", "noise_var is the variance of x | z: "
             "the likelihood contributes W^T diag(1 / noise_var) W to the precision",
             _kl_full(mu, Sq, m_prec, torch.linalg.inv(Lam_prec))),
            ("b not subtracted from x", "the posterior mean is Lambda^-1 W^T D^-1 (x - b): the offset b is part of "
             "the likelihood's mean W z + b", _kl_full(mu, Sq, m_nob, Sig)),
            ("the log-determinant terms forgotten", "KL = 1/2 [tr(Sigma_p^-1 S_q) + (m_p - m_q)^T Sigma_p^-1 "
             "(m_p - m_q) - Dz + log det Sigma_p - log det S_q]", _kl_full(mu, Sq, m, Sig, logdet=False)),
            ("the log-determinants with the wrong sign", "KL(q || p) has + log det Sigma_p - log det S_q "
             "(log det Sigma_p = -log det Lambda)", _kl_full(mu, Sq, m, Sig, logdet_sign=-1.0)),
            ("the factor 1/2 forgotten", "every term of the Gaussian KL is multiplied by 1/2",
             _kl_full(mu, Sq, m, Sig, half=False)),
            ("q_var used as a standard deviation", "q_var holds the variances of q: S_q = diag(q_var), "
             "log det S_q = sum(log q_var)", _kl_full(mu, Sq @ Sq, m, Sig)),
        ]
        rtol, atol = (1e-3, 1e-4) if case["dtype"] == torch.float32 else (1e-7, 1e-9)
        mistakes = [mk for mk in mistakes if not close(mk[2], ref, 4 * max(rtol, 1e-4), 4 * max(atol, 1e-6),
                                                       equal_nan=True)]
        xc, Wc, bc, nvc, muc, qvc = _to(case, x, W, b, nv, mu, q_var)
        got = call(f, xc.clone(), Wc.clone(), bc.clone(), nvc.clone(), muc.clone(), qvc.clone())
        inputs = describe_inputs(x=xc, W=Wc)
        _validate(got, (N,), case, "the gap", inputs, [
            ((N, Dz), "sum the KL over the latent dimensions (or, better, use the full Dz x Dz formula)"),
            ((N, N), "the mean difference is one vector per point: use an einsum or (d[:, None, :] @ P @ "
                     "d[:, :, None]) for the quadratic form, not d @ P @ d.T")])
        compare(got.detach().cpu().double(), ref, what="the gap", inputs=inputs, rtol=rtol, atol=atol,
                mistakes=mistakes)
    return f"matches KL(q || p(z | x)) on {len(trials)} random inputs"


# --------------------------------------------------------------------------------------------------
# 03.iwae: the importance-weighted bound
# --------------------------------------------------------------------------------------------------
IWAE_REPLICAS = 2000
# ((P, Dx, Dz), k): P data points, each replicated IWAE_REPLICAS times in the batch
IWAE_TRIALS = [((3, 4, 2), 8), ((2, 3, 1), 5), ((3, 5, 3), 1)]

UNDERFLOW = ("exp underflow: a log of a mean of exponentials instead of a log-mean-exp",
             "for a point far from the data the log-weights are about -1000 and exp of them is 0, so "
             "log(mean(exp(log_w))) is -inf; compute torch.logsumexp(log_w, dim=0) - log(k)")


def _log_normal(z, mean, std):
    return P.gaussian_log_prob(z, mean, 2 * torch.log(std))


def _iwae_sim(model, x, mu, logvar, k: int, R: int, gen, *, sample_mean=None, sample_std=None,
              log_q="q", average: bool = False):
    """Mean and standard error (each ``(P,)``) of R simulated bounds of a (possibly wrong) recipe:
    ``z = sample_mean + sample_std * eps`` (default: q), log-weight ``log p(x, z) - log_q(z)`` where
    ``log_q`` is "q", "prior" (the weight becomes log p(x | z)), "none", or a ``(mean, std)`` pair."""
    std = torch.exp(0.5 * logvar)
    sm = mu if sample_mean is None else sample_mean
    ss = std if sample_std is None else sample_std
    eps = torch.randn(R, k, *mu.shape, generator=gen, dtype=F64)
    z = sm + ss * eps                                                   # (R, k, P, Dz)
    log_w = model.log_joint(x, z)
    if log_q == "q":
        log_w = log_w - _log_normal(z, mu, std)
    elif log_q == "prior":
        log_w = log_w - _log_normal(z, torch.zeros_like(mu), torch.ones_like(mu))
    elif isinstance(log_q, tuple):
        log_w = log_w - _log_normal(z, *log_q)
    bounds = log_w.mean(1) if average else torch.logsumexp(log_w, 1) - math.log(k)
    return bounds.mean(0), bounds.std(0) / math.sqrt(R)


def _iwae_mistakes(model, x, mu, logvar, k, R, gen, ref, ref_se):
    zeros, ones = torch.zeros_like(mu), torch.ones_like(mu)
    sim = lambda **kw: _iwae_sim(model, x, mu, logvar, k, R, gen, **kw)  # noqa: E731
    elbo = model.exact_elbo(x, _diag_q(mu, logvar.exp()))
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


def _far_model(case):
    """A 3-D model with 2 near points and one point whose log p(x) is about -1000."""
    g = case["gen"]
    model = _random_model(case, 3, 2)
    near, _ = model.sample(2, generator=g)
    u = torch.randn(3, generator=g, dtype=F64)
    u = u / u.norm()
    cov = model.marginal().covariance_matrix
    t = math.sqrt(2000.0 / (u @ torch.linalg.solve(cov, u)).item())
    far = model.b + t * u
    x = _rounded(case, torch.cat([near, far[None]]))
    return model, x, torch.tensor([False, False, True])


def _judge_iwae(got, case, inputs: str, model, x, mu, logvar, k: int, R: int, ref, ref_se, is_far, *,
                what: str, recipe: str, underflow=UNDERFLOW) -> None:
    """Judge ``got``, ``R`` copies of one importance-weighted bound per data point (row ``r`` of
    ``got.view(R, P)`` is the ``r``-th copy), against the reference mean ``ref`` (standard error
    ``ref_se``): structure, then the mean of the copies within ``N_SIGMA`` standard errors; a rejected
    answer is matched with the catalogue of :func:`_iwae_mistakes`. ``is_far`` marks the points far from
    the data, where a naive log-mean-exp underflows. Shared by ``03.iwae`` and ``05.log_likelihood``."""
    P_, Dz = mu.shape
    n = R * P_
    _validate(got, (n,), case, f"the {what}", inputs, [
        ((k, n), "reduce over the k samples (dim 0) with a log-sum-exp"),
        ((k,), "reduce over the k samples (dim 0), not over the data points"),
        ((n, Dz), "log q(z | x) and log p(x, z) are sums over the latent dimensions")])
    values = got.detach().double().cpu().view(R, P_)                # row r: the r-th copy of every point
    finite = torch.isfinite(values).all(0)
    mean, se = values.mean(0), values.std(0) / math.sqrt(R)
    tol = N_SIGMA * torch.sqrt(se**2 + ref_se**2) + _atol(case, ref)
    if bool(finite.all()) and _within(mean, ref, tol):
        return
    if is_far is not None and (not finite[is_far].all() or
                               (_within(mean[~is_far], ref[~is_far], tol[~is_far]) and finite.all())):
        raise Mistake(*underflow)
    _likeliest_mistake(mean, ref, tol, [
        (name, hint, value, N_SIGMA * torch.sqrt(se**2 + m_se**2) + _atol(case, value))
        for name, hint, value, m_se in _iwae_mistakes(model, x, mu, logvar, k, R, case["gen"], ref, ref_se)])
    if not finite.all():
        raise CheckFailure(f"the {what} contains NaN or inf (for inputs {inputs}), the reference does not: look "
                           "for an exp that underflows or overflows, or a log of 0; use torch.logsumexp")
    raise _statistical_failure(f"the mean of your {R} {what}s per point", mean, ref, tol,
                               torch.sqrt(se**2 + ref_se**2), inputs, recipe,
                               ref_name=f"the mean of as many {what}s from coursepkg.elbo.iwae_bound")


@register("03.iwae", "the importance-weighted bound, by log-mean-exp")
def check_iwae(answer):
    f = require_callable(answer)
    torch.manual_seed(3300)
    R = IWAE_REPLICAS
    trials = [(case, spec) for case in random_cases(3300) for spec in IWAE_TRIALS]
    trials += [(case, None) for case in random_cases(3350)]
    for case, spec in trials:
        g = case["gen"]
        if spec is None:
            model, x, is_far = _far_model(case)
            k = 8
        else:
            (P_, Dx, Dz), k = spec
            model = _random_model(case, Dx, Dz)
            x, _ = model.sample(P_, generator=g)
            x, is_far = _rounded(case, x), None
        mu, logvar = _random_q(case, model, x, shift=0.4)
        P_, Dz = mu.shape
        ref_est = iwae_bound(x, model.log_joint, _diag_q(mu, logvar.exp()), k, n_estimates=R)
        ref, ref_se = ref_est.estimate, ref_est.stderr

        xc, muc, lvc = _to(case, x.repeat(R, 1), mu.repeat(R, 1), logvar.repeat(R, 1))
        inputs = describe_inputs(x=xc, mu=muc, k=k)
        got = call(f, xc.clone(), _ModelFunction(case, model, joint=True), muc.clone(), lvc.clone(), k)
        _judge_iwae(got, case, inputs, model, x, mu, logvar, k, R, ref, ref_se, is_far, what="bound",
                    recipe=f"with k={k}, the bound is log (1/k) sum_i exp(log p(x, z_i) - log q(z_i | x)) "
                           "for k reparameterized samples z_i from q")
    return (f"matches coursepkg.elbo.iwae_bound in distribution ({R} bounds per point) on {len(trials)} random "
            f"inputs, k = 1, 5 and 8, including a point far from the data")


# --------------------------------------------------------------------------------------------------
# 03.gmm_elbo: the ELBO of a Gaussian mixture for a categorical q
# --------------------------------------------------------------------------------------------------
def _random_categorical(case, N: int, K: int, kind: str) -> torch.Tensor:
    """A q of shape (N, K) in float64: "zeros" (random rows, about a third of the entries exactly 0, the
    first rows one-hot) or "dense" (random, no zero)."""
    g = case["gen"]
    logits = 1.5 * torch.randn(N, K, generator=g, dtype=F64)
    if kind == "dense":
        return torch.softmax(logits, 1)
    mask = torch.rand(N, K, generator=g, dtype=F64) < 0.35
    mask[torch.arange(N), torch.randint(K, (N,), generator=g)] = False    # each row keeps an entry
    mask[: max(1, N // 4)] = True                                           # the first rows one-hot
    mask[torch.arange(max(1, N // 4)), torch.randint(K, (max(1, N // 4),), generator=g)] = False
    return torch.softmax(logits.masked_fill(mask, -math.inf), 1)


GMM_Q_KINDS = ["zeros", "posterior", "dense", "zeros"]   # one per shape of chapter 02


@register("03.gmm_elbo", "the ELBO of a Gaussian mixture for a categorical q")
def check_gmm_elbo(answer):
    f = require_callable(answer)
    trials = [(case, shape, kind) for case in random_cases(3400) for shape, kind in zip(GMM_SHAPES, GMM_Q_KINDS,
                                                                                        strict=True)]
    for case, (N, D, K), kind in trials:
        x, w, m, c = _mixture_case(case, N, D, K)
        joint = G.joint_log_prob(x, G.GMM(w, m, c))                            # (N, K), case dtype
        q = G.e_step(x, G.GMM(w, m, c)) if kind == "posterior" else _to(case, _random_categorical(case, N, K, kind))
        xlogq = torch.xlogy(q, q)
        ref = (q * joint).sum(1) - xlogq.sum(1)
        log_n = joint - torch.log(w)
        mistakes = [
            ("the entropy term forgotten (that is EM's Q function, not the ELBO)", "ELBO = sum_k q_nk [log p(x_n, "
             "z=k) - log q_nk]: the - q log q part (the entropy of q) belongs to it", (q * joint).sum(1)),
            ("the entropy with the wrong sign", "subtract log q_nk: sum_k q_nk (log p(x_n, z=k) - log q_nk), "
             "and the entropy -sum_k q_nk log q_nk is >= 0", (q * joint).sum(1) + xlogq.sum(1)),
            ("0 log 0 gives NaN", "q_nk = 0 must contribute 0, but 0 * log(0) = 0 * (-inf) is NaN in floating point: "
             "use torch.xlogy(q, q) or torch.where(q > 0, q * torch.log(q), 0)", (q * (joint - torch.log(q))).sum(1)),
            ("the mixture weights pi_k forgotten", "log p(x_n, z=k) = log pi_k + log N(x_n; mu_k, Sigma_k)",
             (q * log_n).sum(1) - xlogq.sum(1)),
            ("q ignored: log p(x) returned", "the ELBO depends on q; it equals log p(x) only when q is the posterior",
             torch.logsumexp(joint, 1)),
            ("a mean over the components instead of the sum", "sum_k q_nk [...] is an expectation under q: the "
             "weights q_nk already sum to 1, so sum over k, do not also divide by K",
             ((q * joint) - xlogq).mean(1)),
        ]
        rtol, atol = (1e-4, 1e-5) if case["dtype"] == torch.float32 else (1e-7, 1e-9)
        mistakes = [mk for mk in mistakes if not close(mk[2], ref, 4 * max(rtol, 1e-4), 4 * max(atol, 1e-6),
                                                       equal_nan=True)]
        got = call(f, x.clone(), w.clone(), m.clone(), c.clone(), q.clone())
        inputs = describe_inputs(x=x, K=K, q=kind)
        if isinstance(got, torch.Tensor) and got.numel() == 1 and N > 1:
            raise Mistake("one number for all the points (a mean over the points) instead of one value per point",
                          f"return the ELBO of each of the N={N} points, shape ({N},)")
        _validate(got, (N,), case, "the ELBO", inputs, [
            ((N, K), "sum over the K components (dim=1)"),
            ((N, 1), "drop keepdim=True")])
        compare(got, ref, what="the ELBO", inputs=inputs, rtol=rtol, atol=atol, mistakes=mistakes)
    return (f"matches the reference on {len(trials)} random inputs, including q's with zeros and q = the "
            f"posterior (where the ELBO is log p(x))")
