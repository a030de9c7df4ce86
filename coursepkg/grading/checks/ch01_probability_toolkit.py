"""Checks of the chapter 01 exercises (``solutions/01_probability_toolkit.ipynb``).

Each check runs the student's function on several random inputs (float64 and float32, several
shapes), compares with :mod:`coursepkg.probability`, and names the typical mistake a wrong answer
matches.
"""

from __future__ import annotations

import math

import torch

from coursepkg import probability as P
from coursepkg.grading.core import (
    CheckFailure,
    Mistake,
    call,
    compare,
    describe_inputs,
    random_cases,
    register,
    require_callable,
)

# The first shape of each case draws positive log-variances, so that a mistake which only makes
# sense for positive numbers (log-variance used as a variance) is recognised before the later
# shapes, with log-variances of both signs, make it NaN.
SHAPES = [(5, 3), (7, 1), (4, 6)]


def _randn(case, *shape, scale=1.0, shift=0.0):
    return (torch.randn(*shape, generator=case["gen"], dtype=torch.float64) * scale + shift).to(
        dtype=case["dtype"], device=case["device"])


def _logvar(case, n, d):
    lv = _randn(case, n, d, scale=0.8)
    return lv.abs() + 0.1 if (n, d) == SHAPES[0] else lv


def _rtol(case) -> float:
    return 1e-4 if case["dtype"] == torch.float32 else 1e-7


def _applicable(mistakes, d):
    """With one dimension, a mean over dimensions is a sum: that mistake cannot be told apart."""
    return mistakes if d > 1 else [m for m in mistakes if "mean over" not in m[0]]


def _pair(got, what: str):
    """Unpack a ``(a, b)`` answer, failing clearly when it is not a pair."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        kind = type(got).__name__ + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
        raise CheckFailure(f"expected a pair {what}, got a {kind}")
    return got


def _cases(seed):
    return [(case, shape) for case in random_cases(seed) for shape in SHAPES]


# ----------------------------------------------------------------------------------------------------
@register("01.gaussian_log_prob", "log-density of a diagonal Gaussian")
def check_gaussian_log_prob(answer):
    f = require_callable(answer)
    cases = _cases(100)
    for case, (n, d) in cases:
        x, mu = _randn(case, n, d), _randn(case, n, d)
        logvar = _logvar(case, n, d)
        ref = P.gaussian_log_prob(x, mu, logvar)
        sq = (x - mu) ** 2
        mistakes = [
            ("log-variance used as the variance", "logvar is log(sigma^2); the variance is torch.exp(logvar)",
             -0.5 * (math.log(2 * math.pi) + torch.log(logvar) + sq / logvar).sum(-1)),
            ("std = exp(logvar), without the 1/2", "sigma = exp(0.5 * logvar), so sigma^2 = exp(logvar)",
             P.gaussian_log_prob(x, mu, 2 * logvar)),
            ("missing the log(2*pi) constant", "each dimension contributes -0.5 * log(2*pi)",
             ref + 0.5 * d * math.log(2 * math.pi)),
            ("dividing by sigma instead of sigma^2", "the quadratic term is (x - mu)^2 / sigma^2",
             -0.5 * (math.log(2 * math.pi) + logvar + sq / torch.exp(0.5 * logvar)).sum(-1)),
            ("a mean over dimensions instead of a sum", "independent dimensions multiply, so log-densities add: "
             "use .sum(-1)", ref / d),
            ("the log-variance term without its 1/2", "log N = -0.5*log(2*pi) - 0.5*log(sigma^2) - ... per dimension",
             ref - 0.5 * logvar.sum(-1)),
        ]
        compare(call(f, x, mu, logvar), ref, what="log p(x)", inputs=describe_inputs(x=x),
                rtol=_rtol(case), mistakes=_applicable(mistakes, d))
    return f"matches the reference on {len(cases)} random inputs"


# ----------------------------------------------------------------------------------------------------
@register("01.kl_diag_gaussians", "closed-form KL between diagonal Gaussians")
def check_kl_diag_gaussians(answer):
    f = require_callable(answer)
    cases = _cases(200)
    for case, (n, d) in cases:
        mu_q, mu_p = _randn(case, n, d), _randn(case, n, d)
        lv_q, lv_p = _logvar(case, n, d), _logvar(case, n, d)
        ref = P.kl_diag_gaussians(mu_q, lv_q, mu_p, lv_p)
        mistakes = [
            ("the arguments swapped: KL(p || q) instead of KL(q || p)", "KL is not symmetric; the expectation is "
             "under q, the first argument", P.kl_diag_gaussians(mu_p, lv_p, mu_q, lv_q)),
            ("log-variance used as the variance", "the variance is torch.exp(logvar), and the log-ratio of "
             "variances is logvar_p - logvar_q",
             0.5 * (torch.log(lv_p) - torch.log(lv_q) + (lv_q + (mu_q - mu_p) ** 2) / lv_p - 1).sum(-1)),
            ("the log-ratio of variances upside down", "the term is log(sigma_p^2 / sigma_q^2) = logvar_p - logvar_q",
             0.5 * (lv_q - lv_p + (torch.exp(lv_q) + (mu_q - mu_p) ** 2) * torch.exp(-lv_p) - 1).sum(-1)),
            ("a missing -1 per dimension", "KL(q || q) must be 0: the formula has a -1 for each dimension",
             ref + 0.5 * d),
            ("a mean over dimensions instead of a sum", "the KL of independent dimensions is the sum of "
             "their KLs: use .sum(-1)", ref / d),
        ]
        compare(call(f, mu_q, lv_q, mu_p, lv_p), ref, what="the KL", inputs=describe_inputs(mu_q=mu_q),
                rtol=_rtol(case), mistakes=_applicable(mistakes, d))
    # the KL of a distribution with itself is 0: catches a constant offset the random cases might miss
    mu, lv = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    same = call(f, mu, lv, mu, lv)
    compare(same, torch.zeros(3, dtype=torch.float64), what="KL(q || q)", atol=1e-8)
    return f"matches the reference on {len(cases)} random inputs, and KL(q || q) = 0"


# ----------------------------------------------------------------------------------------------------
@register("01.mean_and_stderr", "Monte Carlo estimate and its standard error")
def check_mean_and_stderr(answer):
    f = require_callable(answer)
    sizes = [(5,), (40, 3), (1000,)]
    n_cases = 0
    for case in random_cases(300):
        for shape in sizes:
            values = _randn(case, *shape, scale=2.0, shift=1.0)
            n = shape[0]
            ref = P.mean_and_stderr(values, dim=0)
            est, se = _pair(call(f, values), "(estimate, stderr)")
            compare(est, ref.estimate, what="the estimate", inputs=describe_inputs(values=values),
                    rtol=1e-4 if case["dtype"] == torch.float32 else 1e-8,
                    mistakes=[("averaging over the wrong dimension", "samples run along dim 0: values.mean(0)",
                               values.mean(-1) if values.dim() > 1 else None)])
            std = values.std(0)
            mistakes = [
                ("the standard deviation returned as the standard error", "the standard error of a mean of n "
                 "samples is std / sqrt(n): it shrinks as n grows", std),
                ("dividing by n instead of sqrt(n)", "Var(mean) = sigma^2 / n, so its square root is sigma / sqrt(n)",
                 std / n),
                ("the variance where the standard deviation belongs", "use std / sqrt(n), not var / sqrt(n)",
                 values.var(0) / math.sqrt(n)),
                ("the biased standard deviation (dividing by n, not n - 1)", "use the unbiased sample standard "
                 "deviation: values.std(0) (correction=1, torch's default)",
                 values.std(0, correction=0) / math.sqrt(n)),
            ]
            compare(se, ref.stderr, what="the standard error", inputs=describe_inputs(values=values),
                    rtol=1e-4 if case["dtype"] == torch.float32 else 1e-8, mistakes=mistakes)
            n_cases += 1
    return f"matches the reference on {n_cases} random inputs"


# ----------------------------------------------------------------------------------------------------
@register("01.reparameterize", "reparameterized Gaussian sample")
def check_reparameterize(answer):
    f = require_callable(answer)
    cases = _cases(400)
    for case, (n, d) in cases:
        mu, logvar, eps = _randn(case, n, d), _logvar(case, n, d), _randn(case, n, d)
        ref = P.reparameterize(mu, logvar, eps)
        mistakes = [
            ("std = exp(logvar), without the 1/2", "sigma = exp(0.5 * logvar)", mu + torch.exp(logvar) * eps),
            ("the variance used in place of the standard deviation", "scale eps by sigma = exp(0.5 * logvar), "
             "not by sigma^2", mu + torch.exp(logvar) * eps),
            ("log-variance used as the standard deviation", "logvar is log(sigma^2); sigma = exp(0.5 * logvar)",
             mu + logvar * eps),
            ("the noise added without scaling", "z = mu + sigma * eps, with sigma = exp(0.5 * logvar)", mu + eps),
            ("mu and sigma swapped", "z = mu + sigma * eps: eps is scaled by sigma and shifted by mu",
             torch.exp(0.5 * logvar) + mu * eps),
        ]
        mu_g = mu.clone().requires_grad_(True)
        lv_g = logvar.clone().requires_grad_(True)
        got = call(f, mu_g, lv_g, eps)
        compare(got, ref.detach(), what="z", inputs=describe_inputs(mu=mu), mistakes=mistakes,
                rtol=1e-4 if case["dtype"] == torch.float32 else 1e-8)
        if not got.requires_grad:
            raise Mistake("the sample is detached from mu and logvar", "no gradient reaches mu or logvar: avoid "
                          ".detach(), .data, torch.no_grad() and numpy; the point of the trick is that z is a "
                          "differentiable function of mu and logvar")
        w = torch.linspace(-1, 1, n * d, dtype=mu.dtype, device=mu.device).reshape(n, d)
        g_mu, g_lv = torch.autograd.grad((got * w).sum(), (mu_g, lv_g), allow_unused=True)
        exp_mu, exp_lv = w, w * 0.5 * torch.exp(0.5 * logvar) * eps
        if g_mu is None or g_lv is None:
            missing = "mu" if g_mu is None else "logvar"
            raise Mistake(f"no gradient reaches {missing}", f"z must be computed from {missing} with torch "
                          "operations, so that autograd can differentiate through it")
        compare(g_mu, exp_mu, what="dz/dmu", mistakes=[])
        compare(g_lv, exp_lv, what="dz/dlogvar", mistakes=[])
    return f"matches the reference and its gradients on {len(cases)} random inputs"


# ----------------------------------------------------------------------------------------------------
@register("01.gaussian_posterior", "Gaussian posterior by completing the square")
def check_gaussian_posterior(answer):
    f = require_callable(answer)
    n_cases = 0
    for case in random_cases(500):
        for n in (1, 6):
            x, mu0 = _randn(case, n, scale=2.0), _randn(case, n)
            var0 = torch.exp(_randn(case, n, scale=0.7))
            var_n = torch.exp(_randn(case, n, scale=0.7))
            mean_ref, var_ref = P.gaussian_posterior(x, mu0, var0, var_n)
            mean, var = _pair(call(f, x, mu0, var0, var_n), "(mean, var)")
            tol = 1e-4 if case["dtype"] == torch.float32 else 1e-8
            compare(var, var_ref, what="the posterior variance", inputs=describe_inputs(x=x), rtol=tol, mistakes=[
                ("variances added instead of precisions", "completing the square adds precisions (inverse "
                 "variances): 1/var = 1/var0 + 1/var_noise", var0 + var_n),
                ("the posterior variance left at the prior's", "observing x shrinks the variance: "
                 "1/var = 1/var0 + 1/var_noise", var0),
            ])
            compare(mean, mean_ref, what="the posterior mean", inputs=describe_inputs(x=x), rtol=tol, mistakes=[
                ("means weighted by variances instead of precisions", "the more precise source gets more "
                 "weight: mean = var * (mu0/var0 + x/var_noise)", (mu0 * var0 + x * var_n) / (var0 + var_n)),
                ("an unweighted average of mu0 and x", "weight mu0 and x by their precisions 1/var0 and 1/var_noise",
                 (mu0 + x) / 2),
                ("the prior mean ignored", "the posterior mean is pulled from x towards mu0", x),
            ])
            n_cases += 1
    return f"matches the reference on {n_cases} random inputs"
