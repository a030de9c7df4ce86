"""Checks of the chapter 02 exercises (``solutions/02_latent_variables_em.ipynb``).

The student's functions work on plain tensors: ``weights (K,)``, ``means (K, D)``,
``covariances (K, D, D)``, ``x (N, D)``, ``resp (N, K)``. Every exercise is a deterministic function,
checked with :class:`coursepkg.grading.kit.FunctionCheck` on random Gaussian mixtures
(:mod:`coursepkg.grading.problems`; float64 and float32, several N, D, K) against :mod:`coursepkg.gmm`,
and a wrong answer is matched with the chapter's catalogue of mistakes. What this chapter adds to the
form is :class:`MixtureCheck`: a ``GMM`` object refused where its tensors are asked for, wrong shapes
named from N and K, and points far from every component, where ``exp(log N(x))`` underflows to 0 and
only a log-sum-exp computation stays finite.
"""

from __future__ import annotations

import math

import torch

from coursepkg import gmm as G
from coursepkg.grading.kit import (
    CheckFailure,
    FunctionCheck,
    Mistake,
    Slip,
    close,
    compare,
    distinct,
    fmt,
    random_cases,
    unpack,
)
from coursepkg.grading.problems import SHAPES, mixture_case, mixture_sample, random_mixture

F64 = torch.float64
FAR = 100.0   # distance from the origin of the far points: log N(x) < -1000 for every component
GMM_REFUSED = (G.GMM, "a coursepkg.gmm.GMM: return the plain tensors")


# --------------------------------------------------------------------------------------------------
# the form: a function of a mixture
# --------------------------------------------------------------------------------------------------
class MixtureCheck(FunctionCheck):
    """:class:`FunctionCheck` with this chapter's extras.

    - ``shapes(got, N, K)`` raises a failure naming a wrong shape it recognises (a mean over the points,
      ``keepdim=True``, a transpose), before the comparison;
    - a tuple answer that is a ``GMM`` is told to return the plain tensors;
    - on inputs with far points (``|x| > FAR / 2``), a wrong answer that is NaN or inf, or right on the
      near points only, has met an exponential that underflows: it is named even when it matches no
      catalogued value (a clamp or an epsilon added to hide the -inf, say);
    - ``verdict``: the PASS message, a function of the number of random cases (default the form's).
    """

    def __init__(self, *args, shapes=None, verdict=None, **kwargs):
        self.shapes, self.verdict = shapes, verdict
        super().__init__(*args, **kwargs)

    def __call__(self, answer):
        message = super().__call__(answer)
        return self.verdict(len(random_cases(self.seed, self.dtypes))) if self.verdict else message

    def judge(self, got, args, case):
        if self.outputs:
            got = unpack(got, len(self.outputs), self.returns, refuse=[GMM_REFUSED])
        if self.shapes is not None and isinstance(got, torch.Tensor):
            self.shapes(got, args["x"].shape[0], args["weights"].shape[0])
        try:
            super().judge(got, args, case)
        except Mistake:
            raise
        except CheckFailure:
            far = args["x"].norm(dim=-1) > FAR / 2
            if not self.outputs and far.any():
                self.underflow(got, args, case, far)
            raise

    def underflow(self, got, args, case, far):
        with torch.no_grad():
            ref = self.run(self.reference, self.detached(args))
        if not isinstance(got, torch.Tensor) or got.shape != ref.shape or not got.is_floating_point() \
                or got.device != ref.device:
            return
        rtol, atol = self.tolerance(case)
        if not torch.isfinite(got).all() or (close(got[~far], ref[~far], rtol, atol)
                                             and not close(got[far], ref[far], rtol, atol)):
            raise Mistake("exp underflow without log-sum-exp", UNDERFLOW_HINT) from None


UNDERFLOW_HINT = ("for points far from every component, exp(log N(x)) underflows to 0, so a sum of "
                  "exponentials is 0 (its log is -inf, and dividing by it gives NaN); stay in log space "
                  "and use torch.logsumexp over the components")


# --------------------------------------------------------------------------------------------------
# random inputs
# --------------------------------------------------------------------------------------------------
def _far_case(case):
    """Points near a 3-component mixture plus points at distance ``FAR`` from the origin. For those,
    ``log N(x; mu_k, Sigma_k)`` is below -1000 for every component: ``exp`` of it is 0 in float32 and
    float64, and a sum of exponentials is 0. Component 0 is much broader than the others, so the
    exact responsibilities of the far points are one-hot, whatever the round-off."""
    g = case.gen
    means = 1.5 * torch.randn(3, 2, generator=g, dtype=F64)
    A = 0.4 * torch.randn(3, 2, 2, generator=g, dtype=F64)
    covariances = A @ A.mT + 0.2 * torch.eye(2, dtype=F64)
    covariances = covariances / torch.linalg.eigvalsh(covariances).amax(-1)[:, None, None]  # largest eigenvalue 1
    covariances[0] = 4.0 * torch.eye(2, dtype=F64)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    near = mixture_sample(g, weights, means, covariances, 10)
    angles = 2 * math.pi * torch.rand(6, generator=g, dtype=F64)
    far = FAR * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    x = torch.cat([near[:5], far[:3], near[5:], far[3:]])
    return case.to(x, weights, means, covariances)


def _mixture_inputs(case, spec):
    """A random mixture and data (``spec`` = (N, D, K)), or the far points (``spec`` = "far")."""
    x, w, m, c = _far_case(case) if spec == "far" else mixture_case(case, *spec)
    return {"x": x, "weights": w, "means": m, "covariances": c}


def _evaluation_verdict(n_cases: int) -> str:
    return (f"matches the reference on {n_cases * len(SHAPES)} random inputs and on points far from every "
            f"component ({n_cases} more)")


def _joint(x, w, m, c) -> torch.Tensor:
    """``log pi_k + log N(x_n; mu_k, Sigma_k)``, ``(N, K)``, from the reference."""
    return G.joint_log_prob(x, G.GMM(w, m, c))


def _log_n(x, w, m, c) -> torch.Tensor:
    """``log N(x_n; mu_k, Sigma_k)``, ``(N, K)``."""
    return _joint(x, w, m, c) - torch.log(w)


# --------------------------------------------------------------------------------------------------
def _log_likelihood(x, weights, means, covariances):
    return G.log_likelihood(x, G.GMM(weights, means, covariances))


def _log_likelihood_shapes(got, N, K):
    if got.numel() == 1:
        raise Mistake("one number for all the points (a mean or a sum over the points) instead of one value per "
                      "point", f"return log p(x_n) for each of the N={N} points, shape ({N},); average only later "
                      "(the EM history is the mean)")
    if tuple(got.shape) == (N, 1):
        raise CheckFailure(f"log p(x) has shape [{N}, 1], expected [{N}]: drop keepdim=True")
    if tuple(got.shape) == (N, K) and K > 1:
        raise CheckFailure(f"log p(x) has shape [{N}, {K}], expected [{N}]: combine the components with a "
                           "log-sum-exp over dim=1")


MixtureCheck(
    "02.log_likelihood", "per-point log-likelihood of a Gaussian mixture",
    solution=_log_likelihood, inputs=_mixture_inputs, specs=[*SHAPES, "far"], seed=2100, what="log p(x)",
    describe=["x", "weights"], shapes=_log_likelihood_shapes, verdict=_evaluation_verdict,
    mistakes=[
        Slip("exp underflow without log-sum-exp", UNDERFLOW_HINT,
             lambda x, w, m, c: torch.log(torch.exp(_joint(x, w, m, c)).sum(1))),
        Slip("a sum of logs instead of the log of a sum", "log p(x) = log sum_k pi_k N(x; mu_k, Sigma_k): the log "
             "of a sum is not the sum of the logs; use torch.logsumexp(log pi + log N, dim=1)",
             lambda x, w, m, c: _joint(x, w, m, c).sum(1)),
        Slip("a sum of logs instead of the log of a sum (a weighted sum of log-densities)", "sum_k pi_k log N is "
             "only a lower bound of log p(x) (Jensen); use torch.logsumexp(log pi + log N, dim=1)",
             lambda x, w, m, c: (w * _log_n(x, w, m, c)).sum(1)),
        Slip("the mixture weights forgotten", "each component's density is weighted by pi_k: add torch.log(weights) "
             "to the log-densities before the log-sum-exp", lambda x, w, m, c: torch.logsumexp(_log_n(x, w, m, c), 1)),
        Slip("an average over components (log-mean-exp) instead of the weighted sum", "p(x) = sum_k pi_k "
             "N(x; mu_k, Sigma_k) weights component k by pi_k, not by 1/K: add torch.log(weights)",
             lambda x, w, m, c: torch.logsumexp(_log_n(x, w, m, c), 1) - math.log(w.shape[0])),
        Slip("pi_k added instead of log pi_k", "in log space the weights enter as log(pi_k): "
             "torch.logsumexp(torch.log(weights) + log N, dim=1)",
             lambda x, w, m, c: torch.logsumexp(_log_n(x, w, m, c) + w, 1)),
        Slip("the largest component only (a max instead of a log-sum-exp)", "log p(x) sums over all components: "
             "torch.logsumexp, not .max", lambda x, w, m, c: _joint(x, w, m, c).max(1).values),
    ])


# --------------------------------------------------------------------------------------------------
def _e_step(x, weights, means, covariances):
    return G.e_step(x, G.GMM(weights, means, covariances))


def _e_step_shapes(got, N, K):
    if K > 1 and tuple(got.shape) == (K, N) and K != N:
        raise CheckFailure(f"the responsibilities have shape {list(got.shape)}, expected [{N}, {K}] (N points by K "
                           "components): you returned the transpose")


def _log_resp(x, w, m, c):
    joint = _joint(x, w, m, c)
    return joint - torch.logsumexp(joint, 1, keepdim=True)


def _naive_resp(x, w, m, c):
    p = torch.exp(_joint(x, w, m, c))
    return p / p.sum(1, keepdim=True)


MixtureCheck(
    "02.e_step", "responsibilities (the E-step)",
    solution=_e_step, inputs=_mixture_inputs, specs=[*SHAPES, "far"], seed=2200, what="the responsibilities",
    describe=["x", "weights"], shapes=_e_step_shapes, verdict=_evaluation_verdict,
    mistakes=[
        Slip("exp underflow without log-sum-exp", UNDERFLOW_HINT, _naive_resp),
        Slip("normalised over the wrong axis (over the points instead of the components)", "r_nk = p(z=k | x_n) is a "
             "distribution over the components k for each point n: normalise each row (dim=1), so that resp.sum(1) "
             "is all ones", lambda x, w, m, c: torch.exp(_joint(x, w, m, c) - torch.logsumexp(_joint(x, w, m, c), 0))),
        Slip("the mixture weights forgotten", "Bayes' rule multiplies each density by its prior pi_k: "
             "log p(x, z=k) = log pi_k + log N(x; mu_k, Sigma_k)",
             lambda x, w, m, c: torch.softmax(_log_n(x, w, m, c), 1)),
        Slip("log-responsibilities returned instead of responsibilities", "you computed log r_nk: return torch.exp "
             "of it", _log_resp),
        Slip("not normalised: the joint p(x, z=k) instead of the posterior p(z=k | x)", "divide by p(x) = "
             "sum_k p(x, z=k), i.e. subtract the log-sum-exp over the components in log space",
             lambda x, w, m, c: torch.exp(_joint(x, w, m, c))),
        Slip("not normalised: the log of the joint p(x, z=k)", "subtract log p(x) (a log-sum-exp over the "
             "components), then take torch.exp", _joint),
    ])


# --------------------------------------------------------------------------------------------------
def _m_step(x, resp, reg_covar=1e-6):
    g = G.m_step(x, resp, reg_covar)
    return g.weights, g.means, g.covariances


def _m_step_inputs(case, spec):
    """Data from a random 3-component mixture and random soft responsibilities; ``spec`` = ((N, D, K), reg)."""
    (N, D, K), reg = spec
    g = case.gen
    x = mixture_sample(g, *random_mixture(g, 3, D), N)
    resp = torch.softmax(1.5 * torch.randn(N, K, generator=g, dtype=F64), 1)
    return {"x": case.to(x), "resp": case.to(resp), "reg_covar": reg}


def _scatter(x, resp, center, denom):
    """``sum_n resp[n, k] (x_n - c_k)(x_n - c_k)^T / denom_k``, ``(K, D, D)``; ``center`` is (K, D) or (D,)."""
    diff = x[:, None, :] - center                        # (N, K, D)
    return torch.einsum("nk,nkd,nke->kde", resp, diff, diff) / denom[:, None, None]


def _nk(r):
    return r.sum(0)


def _mu(x, r):
    return r.T @ x / _nk(r)[:, None]


def _eye(x, reg):
    return reg * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)


def _all(x, r):
    """Every point with weight 1 (the responsibilities ignored), and the count N for every component."""
    return torch.ones_like(r), torch.full((r.shape[1],), float(x.shape[0]), dtype=x.dtype, device=x.device)


def _weighted_cov(x, r):
    """``torch.cov(x.T, aweights=r[:, k])`` for every component, with torch's default correction, ``(K, D, D)``."""
    D = x.shape[1]
    return torch.stack([torch.cov(x.T, aweights=r[:, k]).reshape(D, D) for k in range(r.shape[1])])


def _not_weighted(x, r, reg, center):
    ones, n = _all(x, r)
    return _scatter(x, ones, center, n) + _eye(x, reg)


M_STEP_OUTPUTS = ["the weights", "the means", "the covariances"]
NOT_WEIGHTED_HINT = "Sigma_k = sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / N_k: multiply each outer product by r_nk"

MixtureCheck(
    "02.m_step", "the closed-form M-step",
    solution=_m_step, inputs=_m_step_inputs, seed=2300, describe=["x", "resp", "reg_covar"],
    specs=list(zip(SHAPES, (1e-2, 1e-3, 0.05, 1e-2), strict=True)),  # reg_covar large enough that forgetting it shows
    outputs=M_STEP_OUTPUTS, returns="a tuple (weights, means, covariances)",
    mistakes=[
        Slip("weights not normalised: N_k returned instead of N_k / N", "pi_k = N_k / N, with N_k = resp[:, k].sum(); "
             "the weights must sum to 1", lambda x, r, reg: _nk(r), output=0),
        Slip("weights normalised by K instead of N", "pi_k = N_k / N: divide by the number of points",
             lambda x, r, reg: _nk(r) / r.shape[1], output=0),
        Slip("means not divided by N_k", "mu_k = sum_n r_nk x_n / N_k: a weighted average, so divide by the "
             "component's total responsibility N_k", lambda x, r, reg: r.T @ x, output=1),
        Slip("means divided by N instead of N_k", "mu_k = sum_n r_nk x_n / N_k: each component's average is over its "
             "own (soft) points", lambda x, r, reg: r.T @ x / x.shape[0], output=1),
        Slip("means not weighted by the responsibilities (the data mean)", "mu_k = sum_n r_nk x_n / N_k",
             lambda x, r, reg: x.mean(0).expand(r.shape[1], x.shape[1]), output=1),
        Slip("the covariance not weighted by the responsibilities (the covariance of all the points)",
             "Sigma_k = sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / N_k: each point counts with its responsibility",
             lambda x, r, reg: _not_weighted(x, r, reg, x.mean(0)), output=2),
        Slip("the covariance not weighted by the responsibilities", NOT_WEIGHTED_HINT,
             lambda x, r, reg: _not_weighted(x, r, reg, _mu(x, r)), output=2),
        Slip("the covariance not weighted by the responsibilities", NOT_WEIGHTED_HINT,
             lambda x, r, reg: _scatter(x, _all(x, r)[0], _mu(x, r), _nk(r)) + _eye(x, reg), output=2),
        Slip("dividing by N_k - 1 (the unbiased estimate) instead of N_k", "the maximum-likelihood covariance divides "
             "by N_k, not N_k - 1", lambda x, r, reg: _scatter(x, r, _mu(x, r), _nk(r) - 1) + _eye(x, reg), output=2),
        Slip("the covariance divided by N instead of N_k", "Sigma_k is a weighted average over the component's "
             "points: divide by N_k", lambda x, r, reg: _scatter(x, r, _mu(x, r), _all(x, r)[1]) + _eye(x, reg),
             output=2),
        Slip("torch.cov with aweights and its default correction (an unbiased weighted covariance)", "torch.cov("
             "x.T, aweights=resp[:, k]) divides by N_k - sum_n r_nk^2 / N_k; the maximum-likelihood covariance "
             "divides by N_k: pass correction=0", lambda x, r, reg: _weighted_cov(x, r) + _eye(x, reg), output=2),
        Slip("the covariance centred at the data mean instead of the new mu_k", "centre each point at the "
             "component's updated mean: x_n - mu_k",
             lambda x, r, reg: _scatter(x, r, x.mean(0), _nk(r)) + _eye(x, reg), output=2),
        Slip("the covariance not centred (a second moment)", "subtract the new mean: "
             "sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / N_k",
             lambda x, r, reg: _scatter(x, r, torch.zeros_like(x[0]), _nk(r)) + _eye(x, reg), output=2),
        Slip("reg_covar forgotten", "add reg_covar * I to every covariance (it keeps them invertible when a "
             "component shrinks onto a few points)", lambda x, r, reg: _scatter(x, r, _mu(x, r), _nk(r)), output=2),
        Slip("reg_covar added to every entry instead of the diagonal", "add reg_covar times the identity: "
             "reg_covar * torch.eye(D)", lambda x, r, reg: _scatter(x, r, _mu(x, r), _nk(r)) + reg, output=2),
    ])


# --------------------------------------------------------------------------------------------------
# (N, K, n_iter), 2-D data; with one component EM converges in one iteration, so a loop that stops once the
# log-likelihood stops changing returns too few iterations there
EM_CASES = [(120, 3, 6), (60, 2, 1), (90, 3, 4), (40, 1, 5)]
EM_REG = 1e-3
EM_OUTPUTS = ["the weights", "the means", "the covariances"]


def _fit(x, weights, means, covariances, n_iter, reg_covar=1e-6):
    """``(weights, means, covariances, history)`` after ``n_iter`` EM iterations of the reference."""
    res = G.fit(x, weights.shape[0], init=G.GMM(weights, means, covariances), max_iter=n_iter, tol=0.0,
                reg_covar=reg_covar)
    return res.gmm.weights, res.gmm.means, res.gmm.covariances, res.history


def _em_inputs(case, spec):
    """2-D data from a random 3-component mixture; the initial mixture has K of the points as means,
    the data covariance for every component, and random weights."""
    N, K, n_iter = spec
    g = case.gen
    x = mixture_sample(g, *random_mixture(g, 3, 2, spread=3.0), N)
    idx = torch.randperm(N, generator=g)[:K]
    weights = torch.softmax(0.5 * torch.randn(K, generator=g, dtype=F64), 0)
    cov = torch.cov(x.T, correction=0) + 0.1 * torch.eye(2, dtype=F64)
    x, weights, means, covariances = case.to(x, weights, x[idx].clone(), cov.expand(K, 2, 2).clone())
    return {"x": x, "weights": weights, "means": means, "covariances": covariances, "n_iter": n_iter,
            "reg_covar": EM_REG}


def _once(x, w, m, c, n_iter, reg):
    """The E-step never redone: every iteration uses the initial responsibilities, so n_iter M-steps are one."""
    g = G.m_step(x, G.e_step(x, G.GMM(w, m, c)), reg)
    return g.weights, g.means, g.covariances


def _m_first(x, w, m, c, n_iter, reg):
    """An M-step from uniform responsibilities, as if the loop started with it."""
    g = G.m_step(x, torch.full((x.shape[0], w.shape[0]), 1.0 / w.shape[0], dtype=x.dtype, device=x.device), reg)
    return g.weights, g.means, g.covariances


LOOP_HINT = "run exactly n_iter iterations, each an E-step then an M-step: for _ in range(n_iter)"
EM_SLIPS = [   # (name, hint, the parameters (weights, means, covariances) that mistake returns)
    ("the initial parameters returned", "return the parameters after the last M-step (did you update new variables "
     "and return the old ones?)", lambda x, w, m, c, n, reg: (w, m, c)),
    ("one iteration too few (n_iter - 1 iterations)", LOOP_HINT,
     lambda x, w, m, c, n, reg: _fit(x, w, m, c, n - 1, reg)),
    ("one iteration too many (n_iter + 1 iterations)", LOOP_HINT,
     lambda x, w, m, c, n, reg: _fit(x, w, m, c, n + 1, reg)),
    ("the E-step not redone: responsibilities of the initial parameters in every iteration", "each iteration "
     "computes the responsibilities from the current parameters, then updates them", _once),
    ("the M-step before the E-step (from uniform responsibilities)", "the initial parameters are given: each "
     "iteration starts with resp = e_step(x, weights, means, covariances), then the M-step", _m_first),
    ("reg_covar not passed on to m_step", "call m_step(x, resp, reg_covar) with em's reg_covar",
     lambda x, w, m, c, n, reg: _fit(x, w, m, c, n, 1e-6)),
]


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


class EMCheck(MixtureCheck):
    """The check of the EM loop: the parameters as in :class:`MixtureCheck` (a wrong value that is no known
    slip points at the loop), then the history of mean log-likelihoods: its known slips, its length, finite,
    never decreasing, and equal to the reference's."""

    def judge(self, got, args, case):
        *params, history = unpack(got, 4, "a tuple (weights, means, covariances, history)", refuse=[GMM_REFUSED])
        try:
            super().judge(tuple(params), args, case)
        except Mistake:
            raise
        except CheckFailure as fail:
            if "differs from the reference" not in str(fail):
                raise
            raise CheckFailure(f"{fail}; if your e_step and m_step pass their checks, look at the loop") from None
        self.judge_history(_history(history), args, case)

    def judge_history(self, hist, args, case):
        rtol, atol = self.tolerance(case)
        ref = torch.tensor(self.run(_fit, self.detached(args))[3], dtype=F64)
        mistakes = [
            ("the history without the initial value", "history[0] is the mean log-likelihood of the initial "
             "parameters, then one value after each iteration: n_iter + 1 values", ref[1:]),
            ("the history without the value of the final parameters", "after the loop, the returned parameters' mean "
             "log-likelihood is the last entry: n_iter + 1 values", ref[:-1]),
            ("the log-likelihood recorded before the M-step", "record the mean log-likelihood after each M-step, of "
             "the updated parameters", torch.cat([ref[:1], ref[:-1]])),
            ("the total log-likelihood instead of the mean", "each entry is log p(x_n) averaged over the points: "
             ".mean(), not .sum()", ref * args["x"].shape[0]),
            ("the negative log-likelihood recorded", "record the mean log-likelihood itself (EM increases it), not "
             "the loss -log p(x)", -ref),
        ]
        for name, hint, value in distinct(mistakes, ref, rtol, atol):
            if close(hist, value, max(rtol, 1e-4), max(atol, 1e-6), equal_nan=True):
                raise Mistake(name, hint)
        n = hist.numel()
        if 0 < n < ref.numel() and close(hist, ref[:n], max(rtol, 1e-4), max(atol, 1e-6)):
            raise CheckFailure(f"the history stops after {n - 1} of the n_iter = {ref.numel() - 1} iterations: run "
                               "exactly n_iter iterations, with no stopping rule (EM here has no tolerance)")
        if hist.shape != ref.shape:
            raise CheckFailure(f"the history has {hist.numel()} values, expected n_iter + 1 = {ref.numel()}: the mean "
                               "log-likelihood of the initial parameters, then one after each iteration")
        if not torch.isfinite(hist).all():
            raise CheckFailure("the history contains NaN or inf: see the log-likelihood and E-step checks "
                               "(log-sum-exp)")
        drop = hist[:-1] - hist[1:]
        if (drop > atol + rtol * hist.abs().amax().item()).any():
            i = int(torch.argmax(drop))
            raise CheckFailure(f"the mean log-likelihood decreased from {fmt(hist[i].item())} to "
                               f"{fmt(hist[i + 1].item())} at iteration {i + 1}: EM never decreases it, so an "
                               "E-step, an M-step or the recorded value is wrong")
        compare(hist, ref, what="the history", inputs=self.described(args), rtol=rtol, atol=atol)


EMCheck(
    "02.em", "the EM loop",
    solution=_fit, inputs=_em_inputs, specs=EM_CASES, seed=2400, describe=["x", "weights", "n_iter"],
    outputs=EM_OUTPUTS, returns="a tuple (weights, means, covariances)",
    tol=lambda case: tuple(10 * t for t in case.tol),   # n_iter iterations amplify the round-off
    verdict=lambda n: f"matches coursepkg.gmm.fit (parameters and history) on {n * len(EM_CASES)} random inputs",
    mistakes=[Slip(name, hint, lambda *a, fn=fn, i=i: fn(*a)[i], output=i)
              for i in range(3) for name, hint, fn in EM_SLIPS])
