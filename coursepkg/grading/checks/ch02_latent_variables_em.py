"""Checks of the chapter 02 exercises (``solutions/02_latent_variables_em.ipynb``).

The student's functions work on plain tensors: ``weights (K,)``, ``means (K, D)``,
``covariances (K, D, D)``, ``x (N, D)``, ``resp (N, K)``. Each check runs the student's function on
several random Gaussian mixtures (float64 and float32, several N, D, K), compares with
:mod:`coursepkg.gmm`, and names the typical mistake a wrong answer matches. The E-step and the
log-likelihood are also tried on points far from every component, where ``exp(log N(x))``
underflows to 0 and only a log-sum-exp computation stays finite.
"""

from __future__ import annotations

import math

import torch

from coursepkg import gmm as G
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
)

# (N, D, K): the first shape is the most general one, so that a mistake is named there first
SHAPES = [(50, 2, 4), (7, 1, 2), (50, 3, 1), (7, 3, 4)]
F64 = torch.float64


# --------------------------------------------------------------------------------------------------
# random inputs
# --------------------------------------------------------------------------------------------------
def _to(case, *tensors):
    out = tuple(t.to(dtype=case["dtype"], device=case["device"]) for t in tensors)
    return out if len(out) > 1 else out[0]


def _random_params(gen: torch.Generator, K: int, D: int, spread: float = 2.5):
    """A random mixture in float64 on the CPU: non-uniform weights, SPD covariances with
    eigenvalues roughly in [0.3, 3]."""
    weights = torch.softmax(0.8 * torch.randn(K, generator=gen, dtype=F64), 0)
    means = spread * torch.randn(K, D, generator=gen, dtype=F64)
    A = 0.6 * torch.randn(K, D, D, generator=gen, dtype=F64)
    covariances = A @ A.mT + 0.3 * torch.eye(D, dtype=F64)
    return weights, means, covariances


def _sample(gen: torch.Generator, weights, means, covariances, n: int) -> torch.Tensor:
    x, _ = G.GMM(weights, means, covariances).sample(n, generator=gen)
    return x


def _mixture_case(case, N, D, K):
    """Random parameters and data drawn from another random mixture of the same D (so that some
    points sit between or away from the components), in the case's dtype and device."""
    g = case["gen"]
    w, m, c = _random_params(g, K, D)
    x = _sample(g, *_random_params(g, max(K, 2), D), N)
    return _to(case, x, w, m, c)


def _far_case(case):
    """Points near a 3-component mixture plus points at distance 100 from the origin. For those,
    ``log N(x; mu_k, Sigma_k)`` is below -1000 for every component: ``exp`` of it is 0 in float32 and
    float64, and a sum of exponentials is 0. Component 0 is much broader than the others, so the
    exact responsibilities of the far points are one-hot, whatever the round-off."""
    g = case["gen"]
    means = 1.5 * torch.randn(3, 2, generator=g, dtype=F64)
    A = 0.4 * torch.randn(3, 2, 2, generator=g, dtype=F64)
    covariances = A @ A.mT + 0.2 * torch.eye(2, dtype=F64)
    covariances = covariances / torch.linalg.eigvalsh(covariances).amax(-1)[:, None, None]  # largest eigenvalue 1
    covariances[0] = 4.0 * torch.eye(2, dtype=F64)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    near = _sample(g, weights, means, covariances, 10)
    angles = 2 * math.pi * torch.rand(6, generator=g, dtype=F64)
    far = 100.0 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    x = torch.cat([near[:5], far[:3], near[5:], far[3:]])
    is_far = torch.zeros(16, dtype=torch.bool)
    is_far[5:8] = is_far[13:] = True
    return (*_to(case, x, weights, means, covariances), is_far.to(case["device"]))


def _tol(case) -> tuple[float, float]:
    return (1e-4, 1e-5) if case["dtype"] == torch.float32 else (1e-7, 1e-9)


def _distinct(mistakes, ref: torch.Tensor, rtol: float, atol: float):
    """Only the mistakes whose value differs clearly from the reference on these inputs (with one
    component, forgetting the weights changes nothing, for example): a correct answer must never
    be taken for a mistake."""
    rtol, atol = 4 * max(rtol, 1e-4), 4 * max(atol, 1e-6)
    return [m for m in mistakes if m[2] is not None and not close(m[2], ref, rtol, atol, equal_nan=True)]


def _log_components(x, weights, means, covariances) -> torch.Tensor:
    """``log N(x_n; mu_k, Sigma_k)``, ``(N, K)``, from the reference."""
    return G.joint_log_prob(x, G.GMM(weights, means, covariances)) - torch.log(weights)


def _evaluation_trials(seed: int):
    """Random mixtures (every shape, every dtype) then mixtures with points far from every component:
    yields ``(case, x, weights, means, covariances, is_far, log N (N, K), joint log p (N, K))``."""
    trials = [(case, shape) for case in random_cases(seed) for shape in SHAPES]
    far = [(case, None) for case in random_cases(seed + 50)]
    for case, shape in trials + far:
        x, w, m, c, is_far = _far_case(case) if shape is None else (*_mixture_case(case, *shape), None)
        log_n = _log_components(x, w, m, c)
        yield case, x, w, m, c, is_far, log_n, torch.log(w) + log_n


def _evaluation_verdict() -> str:
    n_cases = len(random_cases(0))
    return (f"matches the reference on {n_cases * len(SHAPES)} random inputs and on points far from every "
            f"component ({n_cases} more)")


def _unpack(got, n: int, what: str):
    if isinstance(got, G.GMM):
        raise CheckFailure(f"expected the tuple {what}, got a coursepkg.gmm.GMM: return the plain tensors")
    if not isinstance(got, (tuple, list)) or len(got) != n:
        kind = type(got).__name__ + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
        raise CheckFailure(f"expected a tuple {what}, got a {kind}")
    return got


UNDERFLOW_HINT = ("for points far from every component, exp(log N(x)) underflows to 0, so a sum of "
                  "exponentials is 0 (its log is -inf, and dividing by it gives NaN); stay in log space "
                  "and use torch.logsumexp over the components")


def _underflow_fallback(got, ref: torch.Tensor, is_far: torch.Tensor, rtol: float, atol: float,
                        fail: CheckFailure):
    """On the far-away points, an answer with NaN or inf where the reference is finite, or one right
    on the near points only, has met an exponential that underflows: say log-sum-exp even when the
    answer matches no catalogued value (a clamp or an epsilon added to hide the -inf, say)."""
    if isinstance(fail, Mistake) or not isinstance(got, torch.Tensor) or got.shape != ref.shape \
            or not got.is_floating_point() or got.device != ref.device:
        return
    if not torch.isfinite(got).all() or (close(got[~is_far], ref[~is_far], rtol, atol)
                                         and not close(got[is_far], ref[is_far], rtol, atol)):
        raise Mistake("exp underflow without log-sum-exp", UNDERFLOW_HINT) from None


# --------------------------------------------------------------------------------------------------
@register("02.log_likelihood", "per-point log-likelihood of a Gaussian mixture")
def check_log_likelihood(answer):
    f = require_callable(answer)
    for case, x, w, m, c, is_far, log_n, joint in _evaluation_trials(2100):
        K = w.shape[0]
        ref = torch.logsumexp(joint, 1)
        mistakes = [
            ("exp underflow without log-sum-exp", UNDERFLOW_HINT, torch.log(torch.exp(joint).sum(1))),
            ("a sum of logs instead of the log of a sum", "log p(x) = log sum_k pi_k N(x; mu_k, Sigma_k): "
             "the log of a sum is not the sum of the logs; use torch.logsumexp(log pi + log N, dim=1)",
             joint.sum(1)),
            ("a sum of logs instead of the log of a sum (a weighted sum of log-densities)", "sum_k pi_k log N "
             "is only a lower bound of log p(x) (Jensen); use torch.logsumexp(log pi + log N, dim=1)",
             (w * log_n).sum(1)),
            ("the mixture weights forgotten", "each component's density is weighted by pi_k: add "
             "torch.log(weights) to the log-densities before the log-sum-exp", torch.logsumexp(log_n, 1)),
            ("an average over components (log-mean-exp) instead of the weighted sum", "p(x) = sum_k pi_k "
             "N(x; mu_k, Sigma_k) weights component k by pi_k, not by 1/K: add torch.log(weights)",
             torch.logsumexp(log_n, 1) - math.log(K)),
            ("pi_k added instead of log pi_k", "in log space the weights enter as log(pi_k): "
             "torch.logsumexp(torch.log(weights) + log N, dim=1)", torch.logsumexp(log_n + w, 1)),
            ("the largest component only (a max instead of a log-sum-exp)", "log p(x) sums over all "
             "components: torch.logsumexp, not .max", joint.max(1).values),
        ]
        rtol, atol = _tol(case)
        got = call(f, x.clone(), w.clone(), m.clone(), c.clone())
        if isinstance(got, torch.Tensor) and got.shape != ref.shape:
            N = x.shape[0]
            if got.numel() == 1:
                raise Mistake("one number for all the points (a mean or a sum over the points) instead of "
                              "one value per point",
                              f"return log p(x_n) for each of the N={N} points, shape ({N},); average only "
                              "later (the EM history is the mean)")
            if tuple(got.shape) == (N, 1):
                raise CheckFailure(f"log p(x) has shape [{N}, 1], expected [{N}]: drop keepdim=True")
            if tuple(got.shape) == (N, K) and K > 1:
                raise CheckFailure(f"log p(x) has shape [{N}, {K}], expected [{N}]: combine the components "
                                   "with a log-sum-exp over dim=1")
        try:
            compare(got, ref, what="log p(x)", inputs=describe_inputs(x=x, K=K), rtol=rtol, atol=atol,
                    mistakes=_distinct(mistakes, ref, rtol, atol))
        except CheckFailure as fail:
            if is_far is not None:
                _underflow_fallback(got, ref, is_far, rtol, atol, fail)
            raise
    return _evaluation_verdict()


# --------------------------------------------------------------------------------------------------
@register("02.e_step", "responsibilities (the E-step)")
def check_e_step(answer):
    f = require_callable(answer)
    for case, x, w, m, c, is_far, log_n, joint in _evaluation_trials(2200):
        K = w.shape[0]
        log_resp = joint - torch.logsumexp(joint, 1, keepdim=True)
        ref = torch.exp(log_resp)
        p = torch.exp(joint)
        mistakes = [
            ("exp underflow without log-sum-exp", UNDERFLOW_HINT, p / p.sum(1, keepdim=True)),
            ("normalised over the wrong axis (over the points instead of the components)",
             "r_nk = p(z=k | x_n) is a distribution over the components k for each point n: normalise each "
             "row (dim=1), so that resp.sum(1) is all ones", torch.exp(joint - torch.logsumexp(joint, 0))),
            ("the mixture weights forgotten", "Bayes' rule multiplies each density by its prior pi_k: "
             "log p(x, z=k) = log pi_k + log N(x; mu_k, Sigma_k)", torch.softmax(log_n, 1)),
            ("log-responsibilities returned instead of responsibilities", "you computed log r_nk: return "
             "torch.exp of it", log_resp),
            ("not normalised: the joint p(x, z=k) instead of the posterior p(z=k | x)", "divide by p(x) = "
             "sum_k p(x, z=k), i.e. subtract the log-sum-exp over the components in log space",
             torch.exp(joint)),
            ("not normalised: the log of the joint p(x, z=k)", "subtract log p(x) (a log-sum-exp over the "
             "components), then take torch.exp", joint),
        ]
        rtol, atol = _tol(case)
        got = call(f, x.clone(), w.clone(), m.clone(), c.clone())
        if isinstance(got, torch.Tensor) and K > 1 and got.shape == ref.mT.shape and got.shape != ref.shape:
            raise CheckFailure(f"the responsibilities have shape {list(got.shape)}, expected {list(ref.shape)} "
                               "(N points by K components): you returned the transpose")
        try:
            compare(got, ref, what="the responsibilities", inputs=describe_inputs(x=x, K=K), rtol=rtol,
                    atol=atol, mistakes=_distinct(mistakes, ref, rtol, atol))
        except CheckFailure as fail:
            if is_far is not None:
                _underflow_fallback(got, ref, is_far, rtol, atol, fail)
            raise
    return _evaluation_verdict()


# --------------------------------------------------------------------------------------------------
def _scatter(x, resp, center, denom):
    """``sum_n resp[n, k] (x_n - c_k)(x_n - c_k)^T / denom_k``, ``(K, D, D)``; ``center`` is (K, D) or (D,)."""
    diff = x[:, None, :] - center                        # (N, K, D)
    return torch.einsum("nk,nkd,nke->kde", resp, diff, diff) / denom[:, None, None]


@register("02.m_step", "the closed-form M-step")
def check_m_step(answer):
    f = require_callable(answer)
    regs = (1e-2, 1e-3, 0.05, 1e-2)  # large enough that forgetting reg_covar shows
    trials = [(case, shape, reg) for case in random_cases(2300) for shape, reg in zip(SHAPES, regs, strict=True)]
    for case, (N, D, K), reg in trials:
        g = case["gen"]
        x = _to(case, _sample(g, *_random_params(g, 3, D), N))
        resp = _to(case, torch.softmax(1.5 * torch.randn(N, K, generator=g, dtype=F64), 1))
        ref = G.m_step(x, resp, reg)
        nk = resp.sum(0)
        mu = resp.T @ x / nk[:, None]
        eye = reg * torch.eye(D, dtype=x.dtype, device=x.device)
        ones = torch.ones_like(resp)
        xbar = x.mean(0)
        rtol, atol = _tol(case)
        inputs = describe_inputs(x=x, resp=resp, reg_covar=reg)

        got = call(f, x.clone(), resp.clone(), reg)
        weights, means, covariances = _unpack(got, 3, "(weights, means, covariances)")
        compare(weights, ref.weights, what="the weights", inputs=inputs, rtol=rtol, atol=atol,
                mistakes=_distinct([
                    ("weights not normalised: N_k returned instead of N_k / N", "pi_k = N_k / N, with "
                     "N_k = resp[:, k].sum(); the weights must sum to 1", nk),
                    ("weights normalised by K instead of N", "pi_k = N_k / N: divide by the number of points",
                     nk / K),
                ], ref.weights, rtol, atol))
        compare(means, ref.means, what="the means", inputs=inputs, rtol=rtol, atol=atol,
                mistakes=_distinct([
                    ("means not divided by N_k", "mu_k = sum_n r_nk x_n / N_k: a weighted average, so divide "
                     "by the component's total responsibility N_k", resp.T @ x),
                    ("means divided by N instead of N_k", "mu_k = sum_n r_nk x_n / N_k: each component's "
                     "average is over its own (soft) points", resp.T @ x / N),
                    ("means not weighted by the responsibilities (the data mean)", "mu_k = sum_n r_nk x_n / N_k",
                     xbar.expand(K, D)),
                ], ref.means, rtol, atol))
        cov_mistakes = [
            ("the covariance not weighted by the responsibilities (the covariance of all the points)",
             "Sigma_k = sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / N_k: each point counts with its responsibility",
             _scatter(x, ones, xbar, torch.full((K,), float(N), dtype=x.dtype, device=x.device)) + eye),
            ("the covariance not weighted by the responsibilities", "Sigma_k = sum_n r_nk (x_n - mu_k)"
             "(x_n - mu_k)^T / N_k: multiply each outer product by r_nk",
             _scatter(x, ones, mu, torch.full((K,), float(N), dtype=x.dtype, device=x.device)) + eye),
            ("the covariance not weighted by the responsibilities", "Sigma_k = sum_n r_nk (x_n - mu_k)"
             "(x_n - mu_k)^T / N_k: multiply each outer product by r_nk", _scatter(x, ones, mu, nk) + eye),
            ("dividing by N_k - 1 (the unbiased estimate) instead of N_k", "the maximum-likelihood covariance "
             "divides by N_k, not N_k - 1", _scatter(x, resp, mu, nk - 1) + eye),
            ("the covariance divided by N instead of N_k", "Sigma_k is a weighted average over the component's "
             "points: divide by N_k", _scatter(x, resp, mu, torch.full_like(nk, N)) + eye),
            ("the covariance centred at the data mean instead of the new mu_k", "centre each point at the "
             "component's updated mean: x_n - mu_k", _scatter(x, resp, xbar, nk) + eye),
            ("the covariance not centred (a second moment)", "subtract the new mean: "
             "sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / N_k", _scatter(x, resp, torch.zeros_like(xbar), nk) + eye),
            ("reg_covar forgotten", "add reg_covar * I to every covariance (it keeps them invertible when a "
             "component shrinks onto a few points)", ref.covariances - eye),
            ("reg_covar added to every entry instead of the diagonal", "add reg_covar times the identity: "
             "reg_covar * torch.eye(D)", ref.covariances - eye + reg),
        ]
        compare(covariances, ref.covariances, what="the covariances", inputs=inputs, rtol=rtol, atol=atol,
                mistakes=_distinct(cov_mistakes, ref.covariances, rtol, atol))
    return f"matches the reference on {len(trials)} random inputs"


# --------------------------------------------------------------------------------------------------
EM_CASES = [(120, 3, 6), (60, 2, 1), (90, 3, 4)]   # (N, K, n_iter), 2-D data
EM_REG = 1e-3


def _em_inputs(case, N, K):
    """2-D data from a random 3-component mixture; the initial mixture has K of the points as means,
    the data covariance for every component, and random weights."""
    g = case["gen"]
    x = _sample(g, *_random_params(g, 3, 2, spread=3.0), N)
    idx = torch.randperm(N, generator=g)[:K]
    weights = torch.softmax(0.5 * torch.randn(K, generator=g, dtype=F64), 0)
    cov = torch.cov(x.T, correction=0) + 0.1 * torch.eye(2, dtype=F64)
    return _to(case, x, weights, x[idx].clone(), cov.expand(K, 2, 2).clone())


def _history(got) -> torch.Tensor:
    """The student's history as a float64 CPU tensor of shape (L,), or a clear failure."""
    if got is None:
        raise CheckFailure("the history is None: return a list of the mean log-likelihoods")
    if isinstance(got, torch.Tensor):
        if got.dim() != 1:
            raise CheckFailure(f"the history should be a list (or a 1-D tensor) of numbers, got a tensor of shape "
                               f"{list(got.shape)}: one mean log-likelihood per entry")
        return got.detach().double().cpu()
    if not isinstance(got, (list, tuple)):
        raise CheckFailure(f"the history should be a list of numbers, got a {type(got).__name__}")
    values = []
    for i, h in enumerate(got):
        if isinstance(h, torch.Tensor) and h.numel() != 1:
            raise CheckFailure(f"history[{i}] is a tensor of shape {list(h.shape)}: each entry should be one "
                               "number, the mean log-likelihood over the points (.mean().item())")
        try:
            values.append(float(h))
        except (TypeError, ValueError):
            raise CheckFailure(f"history[{i}] is a {type(h).__name__}, not a number") from None
    return torch.tensor(values, dtype=F64)


def _fit(x, w, m, c, n_iter, reg):
    """``(weights, means, covariances, history)`` after ``n_iter`` EM iterations of the reference."""
    res = G.fit(x, w.shape[0], init=G.GMM(w, m, c), max_iter=n_iter, tol=0.0, reg_covar=reg)
    return res.gmm.weights, res.gmm.means, res.gmm.covariances, torch.tensor(res.history, dtype=F64)


@register("02.em", "the EM loop")
def check_em(answer):
    f = require_callable(answer)
    trials = [(case, spec) for case in random_cases(2400) for spec in EM_CASES]
    for case, (N, K, n_iter) in trials:
        x, w, m, c = _em_inputs(case, N, K)
        rtol, atol = (1e-3, 1e-4) if case["dtype"] == torch.float32 else (1e-6, 1e-8)
        ref = _fit(x, w, m, c, n_iter, EM_REG)
        ref_hist = ref[3]
        fewer, more = _fit(x, w, m, c, n_iter - 1, EM_REG), _fit(x, w, m, c, n_iter + 1, EM_REG)
        default_reg = _fit(x, w, m, c, n_iter, 1e-6)
        once = G.m_step(x, G.e_step(x, G.GMM(w, m, c)), EM_REG)    # the E-step never redone
        uniform = G.m_step(x, torch.full((N, K), 1.0 / K, dtype=x.dtype, device=x.device), EM_REG)
        param_mistakes = [
            ("the initial parameters returned", "return the parameters after the last M-step (did you "
             "update new variables and return the old ones?)", (w, m, c)),
            ("one iteration too few (n_iter - 1 iterations)", "run exactly n_iter iterations, each an E-step "
             "then an M-step: for _ in range(n_iter)", fewer),
            ("one iteration too many (n_iter + 1 iterations)", "run exactly n_iter iterations, each an E-step "
             "then an M-step: for _ in range(n_iter)", more),
            ("the E-step not redone: responsibilities of the initial parameters in every iteration",
             "each iteration computes the responsibilities from the current parameters, then updates them",
             (once.weights, once.means, once.covariances)),
            ("the M-step before the E-step (from uniform responsibilities)", "the initial parameters are "
             "given: each iteration starts with resp = e_step(x, weights, means, covariances), then the M-step",
             (uniform.weights, uniform.means, uniform.covariances)),
            ("reg_covar not passed on to m_step", "call m_step(x, resp, reg_covar) with em's reg_covar",
             default_reg),
        ]
        inputs = describe_inputs(x=x, K=K, n_iter=n_iter)
        got = call(f, x.clone(), w.clone(), m.clone(), c.clone(), n_iter, EM_REG)
        weights, means, covariances, history = _unpack(got, 4, "(weights, means, covariances, history)")
        for i, (name, got_i) in enumerate((("the weights", weights), ("the means", means),
                                            ("the covariances", covariances))):
            ref_i = ref[i]
            mistakes = [(n, h, v[i]) for n, h, v in param_mistakes]
            try:
                compare(got_i, ref_i, what=f"{name} after {n_iter} iteration(s)", inputs=inputs, rtol=rtol,
                        atol=atol, mistakes=_distinct(mistakes, ref_i, rtol, atol))
            except Mistake:
                raise
            except CheckFailure as fail:
                if "differs from the reference" not in str(fail):
                    raise
                raise CheckFailure(f"{fail}; if your e_step and m_step pass their checks, look at the loop") \
                    from None

        hist = _history(history)
        L = n_iter + 1
        before_m = torch.cat([ref_hist[:1], ref_hist[:-1]])
        hist_mistakes = [
            ("the history without the initial value", "history[0] is the mean log-likelihood of the initial "
             "parameters, then one value after each iteration: n_iter + 1 values", ref_hist[1:]),
            ("the history without the value of the final parameters", "after the loop, the returned "
             "parameters' mean log-likelihood is the last entry: n_iter + 1 values", ref_hist[:-1]),
            ("the log-likelihood recorded before the M-step", "record the mean log-likelihood after each "
             "M-step, of the updated parameters", before_m),
            ("the total log-likelihood instead of the mean", "each entry is log p(x_n) averaged over the "
             "points: .mean(), not .sum()", ref_hist * N),
            ("the negative log-likelihood recorded", "record the mean log-likelihood itself (EM increases it), "
             "not the loss -log p(x)", -ref_hist),
        ]
        for name, hint, value in hist_mistakes:
            if value.shape == hist.shape and not close(value, ref_hist, 4 * max(rtol, 1e-4), 4 * max(atol, 1e-6)) \
                    and close(hist, value, max(rtol, 1e-4), max(atol, 1e-6), equal_nan=True):
                raise Mistake(name, hint)
        if hist.shape != ref_hist.shape:
            raise CheckFailure(f"the history has {hist.numel()} values, expected n_iter + 1 = {L}: the mean "
                               "log-likelihood of the initial parameters, then one after each iteration")
        if not torch.isfinite(hist).all():
            raise CheckFailure("the history contains NaN or inf: see the log-likelihood and E-step checks "
                               "(log-sum-exp)")
        drop = hist[:-1] - hist[1:]
        slack = atol + rtol * hist.abs().amax().item()
        if (drop > slack).any():
            i = int(torch.argmax(drop))
            raise CheckFailure(f"the mean log-likelihood decreased from {fmt(hist[i].item())} to "
                               f"{fmt(hist[i + 1].item())} at iteration {i + 1}: EM never decreases it, so an "
                               f"E-step, an M-step or the recorded value is wrong")
        compare(hist, ref_hist, what="the history", inputs=inputs, rtol=rtol, atol=atol)
    return f"matches coursepkg.gmm.fit (parameters and history) on {len(trials)} random inputs"
