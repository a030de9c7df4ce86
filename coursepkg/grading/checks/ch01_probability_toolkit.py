"""Checks of the chapter 01 exercises (``solutions/01_probability_toolkit.ipynb``).

Every exercise is a deterministic function, checked with :func:`coursepkg.grading.kit.function_check`:
the student's function runs on several random inputs (float64 and float32, several shapes), is
compared with :mod:`coursepkg.probability`, and a wrong answer is matched with the typical mistakes.
"""

from __future__ import annotations

import math

import torch

from coursepkg import probability as P
from coursepkg.grading.kit import Also, Slip, compare, function_check

LOG2PI = math.log(2 * math.pi)
F64 = torch.float64

# The first shape draws positive log-variances, so that a mistake which only makes sense for positive
# numbers (log-variance used as a variance) is recognised before the later shapes, with log-variances
# of both signs, make it NaN.
SHAPES = [(5, 3), (7, 1), (4, 6)]


def _logvar(case, n, d):
    lv = case.randn(n, d, scale=0.8)
    return lv.abs() + 0.1 if (n, d) == SHAPES[0] else lv


# ----------------------------------------------------------------------------------------------------
def _log_prob_inputs(case, shape):
    x, mu = case.randn(*shape), case.randn(*shape)
    return {"x": x, "mu": mu, "logvar": _logvar(case, *shape)}


function_check(
    "01.gaussian_log_prob", "log-density of a diagonal Gaussian",
    solution=P.gaussian_log_prob, inputs=_log_prob_inputs, specs=SHAPES, seed=100, what="log p(x)",
    mistakes=[
        Slip("log-variance used as the variance", "logvar is log(sigma^2); the variance is torch.exp(logvar)",
             lambda x, mu, lv: -0.5 * (LOG2PI + torch.log(lv) + (x - mu) ** 2 / lv).sum(-1)),
        Slip("std = exp(logvar), without the 1/2", "sigma = exp(0.5 * logvar), so sigma^2 = exp(logvar)",
             lambda x, mu, lv: P.gaussian_log_prob(x, mu, 2 * lv)),
        Slip("missing the log(2*pi) constant", "each dimension contributes -0.5 * log(2*pi)",
             lambda x, mu, lv: P.gaussian_log_prob(x, mu, lv) + 0.5 * x.shape[-1] * LOG2PI),
        Slip("dividing by sigma instead of sigma^2", "the quadratic term is (x - mu)^2 / sigma^2",
             lambda x, mu, lv: -0.5 * (LOG2PI + lv + (x - mu) ** 2 / torch.exp(0.5 * lv)).sum(-1)),
        Slip("a mean over dimensions instead of a sum", "independent dimensions multiply, so log-densities add: "
             "use .sum(-1)", lambda x, mu, lv: P.gaussian_log_prob(x, mu, lv) / x.shape[-1]),
        Slip("the log-variance term without its 1/2", "log N = -0.5*log(2*pi) - 0.5*log(sigma^2) - ... per dimension",
             lambda x, mu, lv: P.gaussian_log_prob(x, mu, lv) - 0.5 * lv.sum(-1)),
    ])


# ----------------------------------------------------------------------------------------------------
def _kl_inputs(case, shape):
    mu_q, mu_p = case.randn(*shape), case.randn(*shape)
    lv_q, lv_p = _logvar(case, *shape), _logvar(case, *shape)
    return {"mu_q": mu_q, "logvar_q": lv_q, "mu_p": mu_p, "logvar_p": lv_p}


def _kl_of_q_with_itself(f):
    """KL(q || q) = 0: catches a constant offset the random cases might miss."""
    g = torch.Generator().manual_seed(201)
    mu, lv = torch.randn(3, 2, generator=g, dtype=F64), torch.randn(3, 2, generator=g, dtype=F64)
    compare(f(mu, lv, mu, lv), torch.zeros(3, dtype=F64), what="KL(q || q)", atol=1e-8)


function_check(
    "01.kl_diag_gaussians", "closed-form KL between diagonal Gaussians",
    solution=P.kl_diag_gaussians, inputs=_kl_inputs, specs=SHAPES, seed=200, what="the KL",
    also=[Also("KL(q || q) = 0", _kl_of_q_with_itself)],
    mistakes=[
        Slip("the arguments swapped: KL(p || q) instead of KL(q || p)", "KL is not symmetric; the expectation is "
             "under q, the first argument", lambda mq, lq, mp, lp: P.kl_diag_gaussians(mp, lp, mq, lq)),
        Slip("log-variance used as the variance", "the variance is torch.exp(logvar), and the log-ratio of "
             "variances is logvar_p - logvar_q",
             lambda mq, lq, mp, lp: 0.5 * (torch.log(lp) - torch.log(lq) + (lq + (mq - mp) ** 2) / lp - 1).sum(-1)),
        Slip("the log-ratio of variances upside down", "the term is log(sigma_p^2 / sigma_q^2) = logvar_p - logvar_q",
             lambda mq, lq, mp, lp: 0.5 * (lq - lp + (torch.exp(lq) + (mq - mp) ** 2) * torch.exp(-lp) - 1).sum(-1)),
        Slip("a missing -1 per dimension", "KL(q || q) must be 0: the formula has a -1 for each dimension",
             lambda mq, lq, mp, lp: P.kl_diag_gaussians(mq, lq, mp, lp) + 0.5 * mq.shape[-1]),
        Slip("a mean over dimensions instead of a sum", "the KL of independent dimensions is the sum of their KLs: "
             "use .sum(-1)", lambda mq, lq, mp, lp: P.kl_diag_gaussians(mq, lq, mp, lp) / mq.shape[-1]),
    ])


# ----------------------------------------------------------------------------------------------------
def _mean_and_stderr(values):
    """The exercise's signature: the pair (estimate, stderr) along dim 0 (the package also returns n)."""
    est = P.mean_and_stderr(values, dim=0)
    return est.estimate, est.stderr


function_check(
    "01.mean_and_stderr", "Monte Carlo estimate and its standard error",
    solution=_mean_and_stderr, inputs=lambda case, shape: {"values": case.randn(*shape, scale=2.0, shift=1.0)},
    specs=[(5,), (40, 3), (1000,)], seed=300,
    outputs=["the estimate", "the standard error"], returns="a pair (estimate, stderr)",
    mistakes=[
        Slip("averaging over the wrong dimension", "samples run along dim 0: values.mean(0)",
             lambda v: v.mean(-1) if v.dim() > 1 else None, output=0),
        Slip("the standard deviation returned as the standard error", "the standard error of a mean of n samples "
             "is std / sqrt(n): it shrinks as n grows", lambda v: v.std(0), output=1),
        Slip("dividing by sqrt(n - 1) instead of sqrt(n)", "the standard error is std / sqrt(n); the n - 1 "
             "belongs inside the standard deviation, where values.std(0) already puts it",
             lambda v: v.std(0) / math.sqrt(v.shape[0] - 1) if v.shape[0] > 1 else None, output=1),
        Slip("dividing by n instead of sqrt(n)", "Var(mean) = sigma^2 / n, so its square root is sigma / sqrt(n)",
             lambda v: v.std(0) / v.shape[0], output=1),
        Slip("the variance where the standard deviation belongs", "use std / sqrt(n), not var / sqrt(n)",
             lambda v: v.var(0) / math.sqrt(v.shape[0]), output=1),
        Slip("the biased standard deviation (dividing by n, not n - 1)", "use the unbiased sample standard "
             "deviation: values.std(0) (correction=1, torch's default)",
             lambda v: v.std(0, correction=0) / math.sqrt(v.shape[0]), output=1),
    ])


# ----------------------------------------------------------------------------------------------------
def _reparameterize_inputs(case, shape):
    return {"mu": case.randn(*shape), "logvar": _logvar(case, *shape), "eps": case.randn(*shape)}


function_check(
    "01.reparameterize", "reparameterized Gaussian sample",
    solution=P.reparameterize, inputs=_reparameterize_inputs, specs=SHAPES, seed=400, what="z",
    describe=["mu"], grad=["mu", "logvar"],
    detached=("the sample is detached from mu and logvar", "no gradient reaches mu or logvar: avoid .detach(), "
              ".data, torch.no_grad() and numpy; the point of the trick is that z is a differentiable function of "
              "mu and logvar"),
    mistakes=[
        Slip("std = exp(logvar), without the 1/2", "sigma = exp(0.5 * logvar)",
             lambda mu, lv, eps: mu + torch.exp(lv) * eps),
        Slip("log-variance used as the standard deviation", "logvar is log(sigma^2); sigma = exp(0.5 * logvar)",
             lambda mu, lv, eps: mu + lv * eps),
        Slip("the noise added without scaling", "z = mu + sigma * eps, with sigma = exp(0.5 * logvar)",
             lambda mu, lv, eps: mu + eps),
        Slip("mu and sigma swapped", "z = mu + sigma * eps: eps is scaled by sigma and shifted by mu",
             lambda mu, lv, eps: torch.exp(0.5 * lv) + mu * eps),
    ])


# ----------------------------------------------------------------------------------------------------
def _posterior_inputs(case, n):
    x, mu0 = case.randn(n, scale=2.0), case.randn(n)
    var0, var_noise = torch.exp(case.randn(n, scale=0.7)), torch.exp(case.randn(n, scale=0.7))
    return {"x": x, "mu0": mu0, "var0": var0, "var_noise": var_noise}


function_check(
    "01.gaussian_posterior", "Gaussian posterior by completing the square",
    solution=P.gaussian_posterior, inputs=_posterior_inputs, specs=[1, 6], seed=500,
    outputs={1: "the posterior variance", 0: "the posterior mean"}, returns="a pair (mean, var)",
    mistakes=[
        Slip("variances added instead of precisions", "completing the square adds precisions (inverse variances): "
             "1/var = 1/var0 + 1/var_noise", lambda x, m0, v0, vn: v0 + vn, output=1),
        Slip("the posterior variance left at the prior's", "observing x shrinks the variance: "
             "1/var = 1/var0 + 1/var_noise", lambda x, m0, v0, vn: v0, output=1),
        Slip("means weighted by variances instead of precisions", "the more precise source gets more weight: "
             "mean = var * (mu0/var0 + x/var_noise)", lambda x, m0, v0, vn: (m0 * v0 + x * vn) / (v0 + vn), output=0),
        Slip("an unweighted average of mu0 and x", "weight mu0 and x by their precisions 1/var0 and 1/var_noise",
             lambda x, m0, v0, vn: (m0 + x) / 2, output=0),
        Slip("the prior mean ignored", "the posterior mean is pulled from x towards mu0",
             lambda x, m0, v0, vn: x, output=0),
    ])
