r"""Checks of the chapter 04 exercises (``solutions/04_reparameterization.ipynb``).

Every estimator exercise works with a diagonal Gaussian :math:`q = \mathcal N(\mu, \operatorname{diag}\sigma^2)`,
:math:`\sigma = \exp(\log\sigma)`, given as two tensors ``mu`` and ``log_sigma`` of shape ``(D,)``
(leaf tensors with ``requires_grad=True``, like parameters), and with an objective ``f`` mapping samples
``(n, D)`` to values ``(n,)``. The estimators return ``(grad_mu, grad_log_sigma)``, two ``(D,)``
tensors.

How a random answer is checked, deterministically. The ``f`` that a check passes is a known function
(quadratic, sine and, for the score function, step terms) that also *records the samples it is
evaluated on*. So the check knows the student's samples, and:

1. the samples must be ``n_samples`` independent draws of ``N(mu, sigma^2)``: the standardised samples
   ``(z - mu) / sigma`` have mean 0 and variance 1 within 5 standard errors per coordinate; a
   sampling slip (``log_sigma`` used as the standard deviation, the same noise for every sample,
   ...) is recognised by the same test against the distribution that slip gives;
2. the estimate must equal the estimator's formula evaluated *on those very samples*, to round-off:
   the per-sample terms are the closed forms, for this Gaussian, of what
   :func:`coursepkg.estimators.score_function_grad` and :func:`coursepkg.estimators.reparam_grad`
   compute with autograd (``tests/test_checks_ch04.py`` verifies that they agree). Each typical
   mistake (a missing log, a flipped score, a forgotten -1, a detached sample, a baseline that
   includes its own sample, ...) gives another exact value, so the failure names it;
3. the estimate must lie within 5 standard errors (of the reference estimator, on those samples) of
   the exact gradient of ``E[f]``, known in closed form.

An answer that evaluates ``f`` inside a ``torch.func`` transform cannot be recorded; only test 3
runs for it (the standard error then comes from fresh reference samples). Every check seeds torch's
global generator inside the check (:func:`coursepkg.grading.check` restores the notebook's state), so
an answer always gets the same verdict. ``04.variance`` and ``04.gumbel_softmax`` are deterministic:
the first hands the student a recording estimator, the second takes the uniform noise as an input.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import distributions as td

from coursepkg import estimators as E
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

F64 = torch.float64
N_SIGMA = 5.0                   # a Monte Carlo answer is accepted within this many standard errors
ZTEST_MIN_N = 400               # the z-test against the exact gradient needs an estimate close to normal
# (n_samples, D): several dimensions, enough samples for the distribution test to tell slips apart
SHAPES = [(2000, 3), (3000, 1), (1500, 4)]
BASELINE_SHAPES = [(40, 3), (2500, 2), (400, 1)]   # a small n first: there the own-sample bias is (n - 1) / n


# --------------------------------------------------------------------------------------------------
# the recording objective
# --------------------------------------------------------------------------------------------------
def _functorch_wrapped(t: torch.Tensor) -> bool:
    try:
        return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch
        return False


class Objective:
    r"""``f(z) = sum_d [a_d (z_d - m_d)^2 + b_d sin(z_d) + h_d 1{z_d > t_d}] + c``, for samples ``z (n, D)``.

    Calling it records the samples (detached, as float64 rows) and whether they required grad.
    ``step=False`` drops the (non-differentiable) step terms. The exact gradient of ``E_q[f]`` with
    respect to ``(mu, log_sigma)`` is :meth:`exact`.
    """

    def __init__(self, gen: torch.Generator, D: int, dtype: torch.dtype, device: torch.device, step: bool):
        self.D, self.dtype, self.device, self.step = D, dtype, device, step
        a = 0.3 + 0.7 * torch.rand(D, generator=gen, dtype=F64)
        m = torch.randn(D, generator=gen, dtype=F64)
        b = torch.randn(D, generator=gen, dtype=F64)
        h = (0.8 * torch.randn(D, generator=gen, dtype=F64)) if step else torch.zeros(D, dtype=F64)
        t = 0.5 * torch.randn(D, generator=gen, dtype=F64)
        self.c = float(torch.empty((), dtype=F64).uniform_(-1.0, 2.0, generator=gen))
        # the values the answer's dtype sees, and the same numbers in float64 for the reference
        self._p = {k: v.to(dtype=dtype, device=device) for k, v in dict(a=a, m=m, b=b, h=h, t=t).items()}
        self.p64 = {k: v.to(dtype).to(F64) for k, v in dict(a=a, m=m, b=b, h=h, t=t).items()}
        self.device = self._p["a"].device   # with its index: torch.device("cuda") becomes cuda:0
        self.reset()

    def reset(self) -> None:
        self.calls: list[tuple[torch.Tensor, bool]] = []
        self.wrapped = False

    def __repr__(self) -> str:
        return f"<the check's objective f: samples (n, {self.D}) -> values (n,)>"

    # the function
    @staticmethod
    def _value(z, p, c, step):
        out = (p["a"] * (z - p["m"]) ** 2 + p["b"] * torch.sin(z)).sum(-1) + c
        if step:
            out = out + (p["h"] * (z > p["t"]).to(z.dtype)).sum(-1)
        return out

    def value64(self, z: torch.Tensor) -> torch.Tensor:
        return self._value(z, self.p64, self.c, self.step)

    def grad64(self, z: torch.Tensor) -> torch.Tensor:
        """``df/dz`` per sample, ``(n, D)``, float64 (the step terms have derivative 0 almost everywhere)."""
        p = self.p64
        return 2 * p["a"] * (z - p["m"]) + p["b"] * torch.cos(z)

    def exact(self, mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact ``(d/dmu, d/dlog_sigma) E_q[f]`` (float64), with
        ``E[(z-m)^2] = (mu-m)^2 + s^2``, ``E[sin z] = sin(mu) exp(-s^2/2)``, ``P(z > t) = Phi((mu-t)/s)``."""
        p, s2 = self.p64, sigma**2
        damp = torch.exp(-s2 / 2)
        g_mu = 2 * p["a"] * (mu - p["m"]) + p["b"] * torch.cos(mu) * damp
        g_ls = 2 * p["a"] * s2 - p["b"] * s2 * torch.sin(mu) * damp
        if self.step:
            alpha = (mu - p["t"]) / sigma
            phi = torch.exp(-alpha**2 / 2) / math.sqrt(2 * math.pi)
            g_mu = g_mu + p["h"] * phi / sigma
            g_ls = g_ls - p["h"] * phi * alpha
        return g_mu, g_ls

    def __call__(self, z):
        D = self.D
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"f takes a tensor of samples of shape (n, {D}), got a {type(z).__name__}")
        if z.dim() == 0 or z.shape[-1] != D:
            raise ValueError(f"f takes samples of shape (n, {D}), one row per sample, got shape {list(z.shape)}")
        if z.device != self.device:
            raise ValueError(f"f received samples on {z.device}, but mu is on {self.device}: create the noise "
                             "with device=mu.device")
        if z.dtype != self.dtype:
            raise TypeError(f"f received samples of dtype {str(z.dtype).replace('torch.', '')}, but mu is "
                            f"{str(self.dtype).replace('torch.', '')}: create the noise with dtype=mu.dtype")
        if _functorch_wrapped(z):
            self.wrapped = True
        else:
            self.calls.append((z.detach().reshape(-1, D).to(F64).cpu().clone(), bool(z.requires_grad)))
        return self._value(z, self._p, self.c, self.step)


# --------------------------------------------------------------------------------------------------
# random trials
# --------------------------------------------------------------------------------------------------
class Trial:
    """One random Gaussian and objective, in the case's dtype and device."""

    def __init__(self, case, n: int, D: int, step: bool):
        g = case["gen"]
        self.case, self.n, self.D = case, n, D
        self.dtype, self.device = case["dtype"], case["device"]
        mu = 1.2 * torch.randn(D, generator=g, dtype=F64)
        sign = torch.where(torch.rand(D, generator=g, dtype=F64) < 0.5, -1.0, 1.0).to(F64)
        ls = sign * (0.4 + 0.5 * torch.rand(D, generator=g, dtype=F64))    # |log sigma| in [0.4, 0.9]
        self._mu, self._ls = mu.to(self.dtype), ls.to(self.dtype)
        self.mu64, self.ls64 = self._mu.to(F64), self._ls.to(F64)
        self.sigma64 = torch.exp(self.ls64)
        self.f = Objective(g, D, self.dtype, self.device, step)

    def leaves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh ``(mu, log_sigma)``: leaf tensors with ``requires_grad=True``."""
        return (self._mu.to(self.device).clone().requires_grad_(),
                self._ls.to(self.device).clone().requires_grad_())

    @property
    def inputs(self) -> str:
        return describe_inputs(mu=self._mu, n_samples=self.n)

    def tol(self) -> float:
        return 2e-4 if self.dtype == torch.float32 else 1e-8


def _trials(seed: int, shapes, step_first: bool = False) -> list[Trial]:
    out = []
    for case in random_cases(seed):
        for i, (n, D) in enumerate(shapes):
            out.append(Trial(case, n, D, step=step_first and i % 2 == 0))
    return out


# --------------------------------------------------------------------------------------------------
# the samples f saw
# --------------------------------------------------------------------------------------------------
SAMPLE_HINT = "z = mu + torch.exp(log_sigma) * eps, with eps = torch.randn(n_samples, D) (dtype and device of mu)"


def _recorded_samples(f: Objective, n: int) -> torch.Tensor | None:
    """The samples ``(n, D)`` (float64) the answer evaluated ``f`` on; None when ``f`` ran inside a
    ``torch.func`` transform. When the calls hold more than ``n`` samples, a batch evaluated twice
    (identical tensors) counts once."""
    if f.wrapped:
        return None
    unique = [z for z, _ in f.calls]
    if sum(u.shape[0] for u in unique) > n:
        unique, seen = [], set()
        for z, _ in f.calls:
            key = (tuple(z.shape), z.numpy().tobytes())
            if key not in seen:
                seen.add(key)
                unique.append(z)
    total = sum(u.shape[0] for u in unique)
    if total == 0:
        raise CheckFailure("your function never evaluated f: draw the samples z, shape (n_samples, D), and "
                           "compute f(z)")
    if total == 1 and n > 1:
        raise Mistake("one sample only", f"the estimate averages over n_samples = {n} independent samples: "
                      f"{SAMPLE_HINT}")
    if total != n:
        raise CheckFailure(f"f was evaluated on {total} samples in all, expected n_samples = {n}: draw exactly "
                           "n_samples samples and evaluate f on them (once)")
    return torch.cat(unique)


def _fits(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> bool:
    """Whether the rows of ``z`` look like independent draws of ``N(mean, std^2)`` (per coordinate:
    the standardised mean and variance within 5 standard errors)."""
    n = z.shape[0]
    if n < 2 or not bool((std > 0).all()):
        return False
    u = (z - mean) / std
    mean_ok = bool((u.mean(0).abs() * math.sqrt(n) <= N_SIGMA).all())
    var_ok = bool(((u.var(0) - 1).abs() <= N_SIGMA * math.sqrt(2.0 / (n - 1))).all())
    return mean_ok and var_ok


def _check_samples(z: torch.Tensor, trial: Trial) -> None:
    """Fail unless ``z`` looks like ``n`` independent draws of ``N(mu, sigma^2)``; name the sampling slip."""
    mu, ls, sigma = trial.mu64, trial.ls64, trial.sigma64
    n, D = z.shape
    if n > 1 and bool((z == z[0]).all()):
        raise Mistake("the same noise for every sample", f"draw one noise vector per sample: {SAMPLE_HINT}")
    u = (z - mu) / sigma
    if D > 1 and all(close(u[:, 0], u[:, j], 1e-3, 1e-3) for j in range(1, D)):
        raise Mistake("the same noise for every coordinate (eps of shape (n_samples, 1))",
                      f"each coordinate needs its own noise: eps = torch.randn(n_samples, D), {SAMPLE_HINT}")
    if _fits(z, mu, sigma):
        return
    one, zero = torch.ones_like(mu), torch.zeros_like(mu)
    slips = [
        ("log_sigma used as the standard deviation (std = log_sigma instead of exp(log_sigma))",
         "sigma = torch.exp(log_sigma): log_sigma can be negative, sigma is always positive", mu, ls.abs()),
        ("log_sigma taken for the log-variance (std = exp(log_sigma / 2))",
         "here log_sigma is the log of the standard deviation: sigma = torch.exp(log_sigma)", mu, sigma.sqrt()),
        ("the variance used as the standard deviation (std = sigma^2)",
         "scale the noise by sigma = exp(log_sigma), not by sigma^2", mu, sigma**2),
        ("the noise not scaled by sigma", "z = mu + sigma * eps: multiply the noise by sigma = exp(log_sigma)",
         mu, one),
        ("the noise divided by sigma instead of multiplied", "z = mu + sigma * eps", mu, 1 / sigma),
        ("the mean mu not added to the noise", "z = mu + sigma * eps: shift the scaled noise by mu", zero, sigma),
        ("z = eps: the standard normal noise itself", f"transform the noise: {SAMPLE_HINT}", zero, one),
    ]
    for name, hint, mean, std in slips:
        if _fits(z, mean, std):
            raise Mistake(name, hint)
    def vec(t):
        return "[" + ", ".join(fmt(v) for v in t.tolist()) + "]"

    raise CheckFailure(f"the samples f was evaluated on do not look like draws of N(mu, sigma^2) (for inputs "
                       f"{trial.inputs}): their mean is {vec(z.mean(0))} for mu = {vec(mu)}, their std "
                       f"{vec(z.std(0))} for sigma = {vec(sigma)}; {SAMPLE_HINT}")


# --------------------------------------------------------------------------------------------------
# the answer's pair of gradients
# --------------------------------------------------------------------------------------------------
def _unpack(got, what: str = "(grad_mu, grad_log_sigma)"):
    if isinstance(got, torch.Tensor):
        raise CheckFailure(f"expected a tuple {what}, got a single tensor of shape {list(got.shape)}: return both "
                           "gradients, in this order")
    if isinstance(got, E.GradientEstimate):
        raise CheckFailure(f"expected a tuple {what} of tensors, got a coursepkg GradientEstimate")
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        kind = type(got).__name__ + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
        raise CheckFailure(f"expected a tuple {what}, got a {kind}")
    return got


def _shape_hint(got, trial: Trial, what: str) -> None:
    n, D = trial.n, trial.D
    if isinstance(got, torch.Tensor) and tuple(got.shape) != (D,):
        if tuple(got.shape) == (n, D):
            raise CheckFailure(f"{what} has shape [{n}, {D}]: these are per-sample gradients; average them over the "
                               "samples (.mean(0)) to get one (D,) estimate")
        if got.numel() == 1 and D > 1:
            raise CheckFailure(f"{what} has shape {list(got.shape)}, expected [{D}]: one value per coordinate of mu; "
                               "average over the samples (dim 0) only")


def _near(value: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> bool:
    """Whether a mistake's value is too close to the reference to be told apart from it by
    :func:`coursepkg.grading.compare` (which matches mistakes within ``max(rtol, 1e-4)``, ``max(atol, 1e-6)``):
    such a mistake is left out, so that a correct answer is never taken for it."""
    return close(value, ref, 4 * max(rtol, 1e-4), 4 * max(atol, 1e-6), equal_nan=True)


def _compare_pair(got, trial: Trial, ref_mu, ref_ls, terms_scale, mistakes_mu, mistakes_ls) -> tuple:
    """Compare ``got = (grad_mu, grad_log_sigma)`` with the float64 references, in the answer's dtype."""
    g_mu, g_ls = _unpack(got)
    like = dict(dtype=trial.dtype, device=trial.device)
    tol = trial.tol()
    out = []
    for name, g, ref, scale, mistakes in (("grad_mu", g_mu, ref_mu, terms_scale[0], mistakes_mu),
                                          ("grad_log_sigma", g_ls, ref_ls, terms_scale[1], mistakes_ls)):
        _shape_hint(g, trial, name)
        if isinstance(g, torch.Tensor) and g.is_floating_point():
            g = g.detach()
        atol = tol * scale + 1e-12
        ref_t = ref.to(**like)
        mist = [(nm, h, v.to(**like)) for nm, h, v in mistakes if v is not None and not _near(v, ref, tol, atol)]
        compare(g, ref_t, what=name, inputs=trial.inputs, rtol=tol, atol=atol, mistakes=mist)
        out.append(g)
    return tuple(out)


def _ztest(grads, trial: Trial, terms_fn) -> None:
    """Fail unless both estimates lie within ``N_SIGMA`` standard errors of the exact gradient. The standard
    error is the reference estimator's, from many fresh samples (the answer's own n samples would
    underestimate it when the per-sample terms are heavy-tailed); skipped below ``ZTEST_MIN_N`` samples, where
    the estimate is far from normal (the comparison on the answer's own samples still runs)."""
    if trial.n < ZTEST_MIN_N:
        return
    exact = trial.f.exact(trial.mu64, trial.sigma64)
    se = _reference_se(trial, terms_fn)
    for name, g, ex, s in zip(("grad_mu", "grad_log_sigma"), grads, exact, se, strict=True):
        err = (g.double().cpu() - ex).abs()
        slack = N_SIGMA * s + 1e-6 * (1 + ex.abs())
        if bool((err > slack).any()):
            k = (err / s.clamp_min(1e-300)).max().item()
            raise CheckFailure(f"{name} is {k:.1f} standard errors away from the exact gradient of E[f] (for inputs "
                               f"{trial.inputs}): the estimator is biased")


def _reference_se(trial: Trial, terms_fn, m: int = 20_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard errors of the estimate from ``trial.n`` samples, from ``m`` fresh reference samples."""
    gen = torch.Generator().manual_seed(4_000 + trial.D)
    z = trial.mu64 + trial.sigma64 * torch.randn(m, trial.D, generator=gen, dtype=F64)
    t_mu, t_ls = terms_fn(trial, z)
    return t_mu.std(0) / math.sqrt(trial.n), t_ls.std(0) / math.sqrt(trial.n)


def _fallback(got, trial: Trial, terms_fn) -> None:
    """Answers that evaluated f inside torch.func: structure, then the z-test only."""
    g_mu, g_ls = _unpack(got)
    zero = torch.zeros(trial.D, dtype=trial.dtype, device=trial.device)
    for name, g in (("grad_mu", g_mu), ("grad_log_sigma", g_ls)):
        _shape_hint(g, trial, name)
        if isinstance(g, torch.Tensor) and g.is_floating_point():
            g = g.detach()
        compare(g, zero, what=name, inputs=trial.inputs, rtol=0.0, atol=math.inf)  # type, shape, dtype, finite
    _ztest((g_mu.detach(), g_ls.detach()), trial, terms_fn)


# --------------------------------------------------------------------------------------------------
# per-sample terms of the estimators (float64): the estimate is their mean
# --------------------------------------------------------------------------------------------------
def _score(trial: Trial, z: torch.Tensor):
    """The scores ``d/dmu log q(z)`` and ``d/dlog_sigma log q(z)``, ``(n, D)`` each."""
    u = (z - trial.mu64) / trial.sigma64
    return u / trial.sigma64, u**2 - 1


def _score_terms(trial: Trial, z: torch.Tensor):
    fz = trial.f.value64(z)[:, None]
    s_mu, s_ls = _score(trial, z)
    return fz * s_mu, fz * s_ls


def _path_terms(trial: Trial, z: torch.Tensor):
    df = trial.f.grad64(z)
    return df, df * (z - trial.mu64)


def _loo_baseline(fz: torch.Tensor) -> torch.Tensor:
    n = fz.shape[0]
    return (fz.sum() - fz) / (n - 1)


def _baseline_terms(trial: Trial, z: torch.Tensor):
    fz = trial.f.value64(z)
    w = (fz - _loo_baseline(fz))[:, None]
    s_mu, s_ls = _score(trial, z)
    return w * s_mu, w * s_ls


def _scale(terms) -> tuple[float, float]:
    return tuple(float(t.abs().mean()) for t in terms)


def _mean(terms):
    return tuple(t.mean(0) for t in terms)


# --------------------------------------------------------------------------------------------------
SCORE_HINT = ("the score of the diagonal Gaussian is d/dmu log q(z) = (z - mu) / sigma^2 and "
              "d/dlog_sigma log q(z) = (z - mu)^2 / sigma^2 - 1")


def _score_mistakes(trial: Trial, z: torch.Tensor):
    """(name, hint, value for grad_mu or None, value for grad_log_sigma or None)."""
    mu, sigma, n = trial.mu64, trial.sigma64, trial.n
    fz = trial.f.value64(z)[:, None]
    u = (z - mu) / sigma
    s_mu, s_ls = u / sigma, u**2 - 1
    log_q = td.Normal(mu, sigma).log_prob(z)                          # (n, D), per coordinate
    p_joint = log_q.sum(1, keepdim=True).exp()                       # q(z), (n, 1)
    p_coord = log_q.exp()                                             # q_d(z_d), (n, D)
    ref = _mean(_score_terms(trial, z))
    path = _mean(_path_terms(trial, z))
    missing_log = ("the log is missing in the score: grad q(z) instead of grad log q(z)",
                   "the log-derivative trick differentiates log q: grad q = q * grad log q, and the factor q(z) "
                   f"is already in the expectation; {SCORE_HINT}")
    return [
        (*missing_log, (fz * p_joint * s_mu).mean(0), (fz * p_joint * s_ls).mean(0)),
        (*missing_log, (fz * p_coord * s_mu).mean(0), (fz * p_coord * s_ls).mean(0)),
        ("f(z) multiplied by log q(z) instead of by its gradient (the score)",
         f"multiply f(z) by the gradient of log q(z) with respect to the parameter; {SCORE_HINT}",
         (fz * log_q).mean(0), (fz * log_q).mean(0)),
        ("the score's sign is flipped", f"{SCORE_HINT}: (z - mu), not (mu - z)", -ref[0], -ref[1]),
        ("f differentiated: that is the pathwise (reparameterization) estimator",
         "the score-function estimator never differentiates f (it may not even be differentiable): "
         f"average f(z) times the score of q; {SCORE_HINT}", *path),
        ("the score computed through a sample that is not detached",
         "if you differentiate log_prob with autograd, the sample must be a constant: use z.detach() (or "
         "torch.no_grad() when sampling); through z = mu + sigma * eps, log q(z) no longer depends on mu",
         torch.zeros_like(mu), -fz.mean() * torch.ones_like(mu)),
        ("f(z) forgotten: the mean of the score alone", "the estimate averages f(z_i) times the score",
         s_mu.mean(0), s_ls.mean(0)),
        ("sigma used where sigma^2 belongs", f"{SCORE_HINT}: divide by the variance sigma^2",
         (fz * u).mean(0), (fz * (u**2 * sigma - 1)).mean(0)),
        ("the 1 / sigma^2 missing in the score of mu", f"{SCORE_HINT}", (fz * u * sigma).mean(0), None),
        ("the -1 forgotten in the score of log_sigma", f"{SCORE_HINT}: the -1 comes from the normalising "
         "constant, -log sigma", None, (fz * u**2).mean(0)),
        ("the gradient with respect to sigma, not log_sigma", "by the chain rule, d/dlog_sigma = sigma * d/dsigma: "
         f"{SCORE_HINT}", None, (fz * s_ls / sigma).mean(0)),
        ("summed over the samples instead of averaged", "the Monte Carlo estimate is the mean over the n_samples "
         "samples: .mean(0), not .sum(0)", n * ref[0], n * ref[1]),
    ]


def _split(mistakes):
    return ([(n, h, m) for n, h, m, _ in mistakes if m is not None],
            [(n, h, s) for n, h, _, s in mistakes if s is not None])


def _check_score_estimator(answer, seed: int, shapes, terms_fn, mistakes_fn) -> str:
    """The check of a score-function estimator (with or without a baseline): on each trial, the answer's
    own samples are recorded, its result is compared with ``terms_fn`` on exactly those samples (naming
    the ``mistakes_fn`` it matches), the samples' distribution is tested, and the estimate is z-tested
    against the exact gradient. Answers whose samples cannot be recorded get the z-test alone."""
    fn = require_callable(answer)
    trials = _trials(100 * seed, shapes, step_first=True)
    for trial in trials:
        torch.manual_seed(seed + trial.n + trial.D)
        mu, ls = trial.leaves()
        got = call(fn, trial.f, mu, ls, trial.n)
        z = _recorded_samples(trial.f, trial.n)
        if z is None:
            _fallback(got, trial, terms_fn)
            continue
        _check_samples(z, trial)
        terms = terms_fn(trial, z)
        grads = _compare_pair(got, trial, *_mean(terms), _scale(terms), *_split(mistakes_fn(trial, z)))
        _ztest(grads, trial, terms_fn)
    return (f"matches the estimator on its own samples, and the exact gradient within {N_SIGMA:g} standard "
            f"errors, on {len(trials)} random Gaussians")


@register("04.score_function", "the score-function (REINFORCE) estimator")
def check_score_function(answer):
    return _check_score_estimator(answer, 41, SHAPES, _score_terms, _score_mistakes)


# --------------------------------------------------------------------------------------------------
DETACHED = ("the sample is detached: no gradient flows from f(z) back to mu and log_sigma",
            "the pathwise estimator differentiates through z = mu + exp(log_sigma) * eps, so z must be computed "
            "from mu and log_sigma with autograd on: no .detach(), .data, torch.no_grad() or .item() on the way, "
            "and with torch.distributions use rsample(), not sample()")
PATH_HINT = "z = mu + exp(log_sigma) * eps; average f(z) over the samples and differentiate with torch.autograd.grad"
SCORE_INSTEAD = ("that is the score-function estimator", f"this exercise asks for the pathwise one: {PATH_HINT}")


def _path_mistakes(trial: Trial, z: torch.Tensor):
    n = trial.n
    df = trial.f.grad64(z)
    eps = (z - trial.mu64) / trial.sigma64
    ref = _mean(_path_terms(trial, z))
    score = _mean(_score_terms(trial, z))
    return [
        ("summed over the samples instead of averaged", "the estimate is the gradient of the mean "
         "f(z).mean(), not of f(z).sum() (that is n_samples times larger)", n * ref[0], n * ref[1]),
        ("the gradient with respect to sigma, not log_sigma", "z depends on log_sigma through sigma = "
         "exp(log_sigma): dz/dlog_sigma = sigma * eps; differentiate with respect to log_sigma itself",
         None, (df * eps).mean(0)),
        ("grad_mu and grad_log_sigma swapped", "return (grad_mu, grad_log_sigma), in this order", ref[1], ref[0]),
        (*SCORE_INSTEAD, *score),
    ]


def _detached(f: Objective) -> bool:
    return bool(f.calls) and not f.wrapped and not any(flag for _, flag in f.calls)


def _run_path(fn, trial: Trial, mu, ls):
    """Call the answer; fail with the detached-sample mistake when f only ever saw samples without a graph
    (unless the answer is the score-function estimator, which draws them that way on purpose)."""
    trial.f.reset()
    try:
        got = call(fn, trial.f, mu, ls, trial.n)
    except CheckFailure:
        if _detached(trial.f):
            raise Mistake(*DETACHED) from None
        raise
    if _detached(trial.f):
        try:
            z = _recorded_samples(trial.f, trial.n)
            g_mu, g_ls = _unpack(got)
            terms = _score_terms(trial, z)
            tol = max(trial.tol(), 1e-4)
            is_score = all(close(g, t.mean(0), tol, tol * sc) for g, t, sc in zip((g_mu, g_ls), terms, _scale(terms),
                                                                                  strict=True))
        except CheckFailure:
            is_score = False
        raise Mistake(*(SCORE_INSTEAD if is_score else DETACHED))
    return got


@register("04.reparam", "the pathwise (reparameterization) estimator")
def check_reparam(answer):
    fn = require_callable(answer)
    trials = _trials(4200, SHAPES)
    for i, trial in enumerate(trials):
        torch.manual_seed(42 + trial.n + trial.D)
        mu, ls = trial.leaves()
        got = _run_path(fn, trial, mu, ls)
        z = _recorded_samples(trial.f, trial.n)
        if z is None:
            _fallback(got, trial, _path_terms)
            continue
        _check_samples(z, trial)
        terms = _path_terms(trial, z)
        ref = _mean(terms)
        mistakes = _split(_path_mistakes(trial, z))
        grads = _compare_pair(got, trial, *ref, _scale(terms), *mistakes)
        _ztest(grads, trial, _path_terms)
        if i == 0:  # a second call on the same parameters: .backward() would accumulate into mu.grad
            got2 = _run_path(fn, trial, mu, ls)
            z2 = _recorded_samples(trial.f, trial.n)
            if z2 is not None:
                terms2 = _path_terms(trial, z2)
                ref2 = _mean(terms2)
                accumulated = ("gradients accumulated over calls (in mu.grad and log_sigma.grad)",
                               ".backward() adds to the .grad of the leaves, so a second call returns the sum of "
                               "both calls' gradients: use torch.autograd.grad(loss, (mu, log_sigma)), which returns "
                               "them without storing them")
                mist = [(accumulated[0], accumulated[1], ref[k] + ref2[k]) for k in range(2)]
                _compare_pair(got2, trial, *ref2, _scale(terms2), [mist[0]], [mist[1]])
    return (f"matches the estimator on its own samples, and the exact gradient within {N_SIGMA:g} standard "
            f"errors, on {len(trials)} random Gaussians")


# --------------------------------------------------------------------------------------------------
BASELINE_HINT = ("the leave-one-out baseline of sample i is the mean of the other samples' values, "
                 "b_i = (sum_j f(z_j) - f(z_i)) / (n - 1); the estimate averages (f(z_i) - b_i) times the score")


def _baseline_mistakes(trial: Trial, z: torch.Tensor):
    n = trial.n
    fz = trial.f.value64(z)
    s_mu, s_ls = _score(trial, z)
    b = _loo_baseline(fz)

    def est(weight, sub=0.0):
        w = weight[:, None] if weight.dim() == 1 else weight
        return (w * (s_mu - sub)).mean(0), (w * (s_ls - sub)).mean(0)

    own = ("the baseline depends on the sample itself: b includes f(z_i) (biased)",
           "a baseline keeps the estimator unbiased only if it does not depend on z_i; the mean of all the "
           f"values includes f(z_i) and shrinks the estimate by (n - 1) / n; {BASELINE_HINT}")
    return [
        (*own, *est(fz - fz.mean())),
        (*own, *est(fz - fz)),
        ("the leave-one-out mean divided by n instead of n - 1", f"{BASELINE_HINT}: n - 1 other samples",
         *est(fz - (fz.sum() - fz) / n)),
        ("the baseline subtracted from the score instead of from f", f"{BASELINE_HINT}: the baseline is a "
         "control variate for f(z), so it is subtracted from f(z_i)", *est(fz, sub=b[:, None])),
        ("the baseline added instead of subtracted", BASELINE_HINT, *est(fz + b)),
        ("the baseline is missing (the plain score-function estimator)", BASELINE_HINT, *est(fz)),
        ("the score's sign is flipped", SCORE_HINT, *(-t for t in est(fz - b))),
        ("the -1 forgotten in the score of log_sigma", SCORE_HINT, None, ((fz - b)[:, None] * (s_ls + 1)).mean(0)),
        ("summed over the samples instead of averaged", "average over the samples: .mean(0)",
         *(n * t for t in est(fz - b))),
    ]


@register("04.baseline", "the score-function estimator with a leave-one-out baseline")
def check_baseline(answer):
    return _check_score_estimator(answer, 43, BASELINE_SHAPES, _baseline_terms, _baseline_mistakes)


# --------------------------------------------------------------------------------------------------
class RecordingEstimator:
    """An estimator ``(f, mu, log_sigma, n_samples) -> (grad_mu, grad_log_sigma)`` for the variance check:
    the reference score-function or pathwise estimator on the trial's Gaussian (closed-form per-sample
    terms), or a synthetic one; it records every gradient it returns and every argument it receives."""

    def __init__(self, kind: str, trial: Trial):
        self.kind, self.trial = kind, trial
        self.outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.bad_args: str | None = None

    def __repr__(self) -> str:
        return f"<the check's {self.kind} estimator>"

    def _bind(self, args, kwargs):
        names = ("f", "mu", "log_sigma", "n_samples")
        if len(args) > 4 or set(kwargs) - set(names):
            raise TypeError(f"the estimator takes (f, mu, log_sigma, n_samples), got {len(args)} positional "
                            f"arguments and {sorted(kwargs)}")
        bound = dict(zip(names, args, strict=False))
        for k, v in kwargs.items():
            if k in bound:
                raise TypeError(f"the estimator got two values for {k!r}")
            bound[k] = v
        missing = [k for k in names if k not in bound]
        if missing:
            raise TypeError(f"the estimator takes (f, mu, log_sigma, n_samples); missing {', '.join(missing)}")
        return bound

    def __call__(self, *args, **kwargs):
        t = self.trial
        a = self._bind(args, kwargs)
        if a["f"] is not t.f:
            self.bad_args = "call the estimator with the f you were given"
        elif not (isinstance(a["mu"], torch.Tensor) and close(a["mu"], t.mu64.to(t.dtype), 0, 0)):
            self.bad_args = "call the estimator with the mu you were given"
        elif not (isinstance(a["log_sigma"], torch.Tensor) and close(a["log_sigma"], t.ls64.to(t.dtype), 0, 0)):
            self.bad_args = "call the estimator with the log_sigma you were given (in that position)"
        elif a["n_samples"] != t.n:
            self.bad_args = (f"the estimator was called with n_samples = {a['n_samples']!r}, not the n_samples = {t.n} "
                             "you were given")
        if self.kind == "synthetic":
            g_mu = t.mu64 + t.sigma64 * torch.randn(t.D, dtype=F64)
            g_ls = 0.5 * torch.randn(t.D, dtype=F64) - 1.0
        else:
            z = t.mu64 + t.sigma64 * torch.randn(t.n, t.D, dtype=F64)
            g_mu, g_ls = _mean((_score_terms if self.kind == "score" else _path_terms)(t, z))
        g_mu, g_ls = g_mu.to(t.dtype), g_ls.to(t.dtype)
        self.outputs.append((g_mu.clone(), g_ls.clone()))
        return g_mu.to(t.device), g_ls.to(t.device)


VARIANCE_SHAPES = [(50, 3, 40, "score"), (20, 2, 25, "pathwise"), (10, 4, 30, "synthetic")]  # (n, D, n_repeats, kind)


@register("04.variance", "the variance of an estimator over repeated runs")
def check_variance(answer):
    fn = require_callable(answer)
    n_trials = 0
    for case in random_cases(4400):
        for n, D, n_repeats, kind in VARIANCE_SHAPES:
            n_trials += 1
            trial = Trial(case, n, D, step=False)
            torch.manual_seed(44 + n + D)
            est = RecordingEstimator(kind, trial)
            mu, ls = trial.leaves()
            inputs = describe_inputs(mu=trial._mu, n_samples=n, n_repeats=n_repeats)
            got = call(fn, est, trial.f, mu, ls, n, n_repeats)
            if est.bad_args:
                raise CheckFailure(est.bad_args)
            k = len(est.outputs)
            if k == 0:
                raise CheckFailure("your function never called the estimator: call estimator(f, mu, log_sigma, "
                                   "n_samples) n_repeats times")
            if k != n_repeats:
                raise CheckFailure(f"the estimator was called {k} times, expected n_repeats = {n_repeats}: one call "
                                   "per repeat")
            g_mu = torch.stack([o[0] for o in est.outputs]).to(F64)           # (n_repeats, D)
            g_ls = torch.stack([o[1] for o in est.outputs]).to(F64)
            if bool((g_mu == g_mu[0]).all()):  # never for the check's estimators, unless the answer reseeds
                raise Mistake("every repeat gave the same gradient", "do not reseed the generator inside the loop "
                              "(torch.manual_seed): the repeats must be independent runs")
            ref = g_mu.var(0)
            tol = 1e-4 if trial.dtype == torch.float32 else 1e-9
            atol = tol * float(ref.abs().mean()) + 1e-12
            if isinstance(got, torch.Tensor) and got.is_floating_point():
                got = got.detach()
                if got.shape == ref.shape and close(got, g_mu.var(0, correction=0), tol, atol):
                    continue  # the biased variance (divided by n_repeats) is fine too
                if tuple(got.shape) == (n_repeats,) and n_repeats != D:
                    raise CheckFailure(f"the variance has shape [{n_repeats}] (one value per repeat), expected [{D}]: "
                                       "take the variance over the repeats (dim=0), one value per coordinate of mu")
                if tuple(got.shape) == (n_repeats, D):
                    raise CheckFailure(f"the result has shape [{n_repeats}, {D}], the stacked gradients: return their "
                                       "variance over the repeats, .var(dim=0)")
            mistakes = [
                ("the standard deviation instead of the variance", "return the variance (no square root)", ref.sqrt()),
                ("the variance of the mean over the repeats (divided by n_repeats)", "the quantity asked for is the "
                 "variance of one estimate, i.e. of the n_repeats gradients: do not divide by n_repeats",
                 ref / n_repeats),
                ("the standard error of the mean over the repeats instead of the variance", "return the variance of "
                 "the n_repeats gradients: no square root, no division by n_repeats", (ref / n_repeats).sqrt()),
                ("the variance divided by n_samples", "each repeat is already an average over n_samples samples, so "
                 "the variance of the repeats already includes the 1 / n_samples: do not divide again", ref / n),
                ("the per-sample variance (multiplied by n_samples)", "each repeat is already an average over "
                 "n_samples samples: return the variance of those averages, without rescaling", ref * n),
                ("the variance of grad_log_sigma instead of grad_mu", "the estimator returns (grad_mu, "
                 "grad_log_sigma): take the first", g_ls.var(0)),
                ("the mean of the gradients instead of their variance", "return the variance over the repeats: "
                 ".var(dim=0)", g_mu.mean(0)),
                ("the second moment E[g^2] instead of the variance", "subtract the mean before squaring (or use "
                 ".var(dim=0))", (g_mu**2).mean(0)),
            ]
            like = dict(dtype=trial.dtype, device=trial.device)
            compare(got, ref.to(**like), what="the variance", inputs=inputs, rtol=tol, atol=atol,
                    mistakes=[(nm, h, v.to(**like)) for nm, h, v in mistakes if not _near(v, ref, tol, atol)])
    return f"matches the variance of the recorded gradients on {n_trials} runs (score-function, pathwise, synthetic)"


# --------------------------------------------------------------------------------------------------
GUMBEL_SHAPES = [((6, 5), 0.5), ((4,), 1.0), ((3, 2, 7), 2.0), ((10, 3), 0.3)]
GUMBEL_HINT = "y = softmax((logits + g) / tau, dim=-1), with the Gumbel noise g = -log(-log(u))"


def _uniform(shape, dtype, seed: int) -> torch.Tensor:
    """The noise ``torch.rand(shape, generator=Generator().manual_seed(seed))``, the draw that
    :func:`coursepkg.estimators.gumbel_softmax` makes with that generator; strictly inside (0, 1)."""
    while True:
        u = torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
        if bool((u > 0).all()):
            return u
        seed += 1_000_003  # pragma: no cover - a zero is drawn with probability ~1e-7


def _reference_gumbel(logits, tau, seed, hard):
    """The reference on the CPU: :func:`coursepkg.estimators.gumbel_softmax` with the generator that draws u."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return E.gumbel_softmax(logits, tau, hard=hard, generator=torch.Generator().manual_seed(seed))


@register("04.gumbel_softmax", "the Gumbel-softmax relaxation (and its straight-through hard version)")
def check_gumbel_softmax(answer):
    fn = require_callable(answer)
    n_trials = 0
    for case in random_cases(4500):
        g = case["gen"]
        dtype, device = case["dtype"], case["device"]
        like = dict(dtype=dtype, device=device)
        tol = (1e-4, 1e-6) if dtype == torch.float32 else (1e-9, 1e-12)
        for shape, tau in GUMBEL_SHAPES:
            n_trials += 1
            seed = int(torch.randint(0, 2**31 - 1, (), generator=g))
            logits0 = (1.5 * torch.randn(shape, generator=g, dtype=F64)).to(dtype)
            u0 = _uniform(shape, dtype, seed)
            w = torch.randn(shape, generator=g, dtype=F64).to(dtype)         # weights of a test loss (y * w).sum()
            inputs = describe_inputs(logits=logits0, tau=tau)

            # the relaxed sample, hard=False
            ref = _reference_gumbel(logits0, tau, seed, hard=False)
            l64, u64 = logits0.to(F64), u0.to(F64)
            gumbel = -torch.log(-torch.log(u64))

            def sm(x, dim=-1):
                return torch.softmax(x, dim)

            soft_mistakes = [
                ("Gumbel noise computed as -log(u) (that is exponential noise: a log is missing)",
                 GUMBEL_HINT, sm((l64 - torch.log(u64)) / tau)),
                ("Gumbel noise computed as +log(u)", GUMBEL_HINT, sm((l64 + torch.log(u64)) / tau)),
                ("log(-log u) added instead of subtracted (the noise's sign is flipped)", GUMBEL_HINT,
                 sm((l64 + torch.log(-torch.log(u64))) / tau)),
                ("tau multiplies instead of divides", f"{GUMBEL_HINT}: a small tau sharpens the softmax",
                 sm((l64 + gumbel) * tau)),
                ("the temperature tau forgotten", GUMBEL_HINT, sm(l64 + gumbel)),
                ("only the logits divided by tau, not the noise", GUMBEL_HINT, sm(l64 / tau + gumbel)),
                ("the noise forgotten: softmax(logits / tau) is deterministic", f"{GUMBEL_HINT}: the noise makes y a "
                 "random sample", sm(l64 / tau)),
                ("log_softmax instead of softmax", f"{GUMBEL_HINT}: y is a point of the simplex (entries >= 0, "
                 "summing to 1)", torch.log_softmax((l64 + gumbel) / tau, -1)),
                ("a one-hot vector returned for hard=False", "hard=False returns the relaxed (soft) sample",
                 torch.nn.functional.one_hot(((l64 + gumbel) / tau).argmax(-1), shape[-1]).to(F64)),
            ]
            if len(shape) > 1:
                soft_mistakes.append(("softmax over the wrong dimension", f"{GUMBEL_HINT}: the K categories are the "
                                      "last dimension (dim=-1)", sm((l64 + gumbel) / tau, dim=0)))
            rtol, atol = tol
            mist = [(nm, h, v.to(**like)) for nm, h, v in soft_mistakes if not _near(v, ref, *tol)]
            got = call(fn, logits0.to(device).clone().requires_grad_(), tau, u0.to(device).clone(), hard=False)
            if isinstance(got, torch.Tensor) and got.is_floating_point():
                got = got.detach()
            compare(got, ref.to(**like), what="y (hard=False)", inputs=inputs, rtol=rtol, atol=atol, mistakes=mist)

            # hard=True: the one-hot forward value, the gradient of the soft sample
            ref_hard = _reference_gumbel(logits0, tau, seed, hard=True)
            leaf = logits0.to(device).clone().requires_grad_()
            got = call(fn, leaf, tau, u0.to(device).clone(), hard=True)
            hard_mistakes = [
                ("hard=True returns the soft sample", "for hard=True the forward value is the one-hot vector of the "
                 "argmax of y (straight-through: y_hard - y.detach() + y)", ref.to(**like)),
                ("the argmax of the logits without the noise", "take the argmax of the perturbed logits "
                 "(logits + g), i.e. of y", torch.nn.functional.one_hot(l64.argmax(-1), shape[-1]).to(**like)),
            ]
            compare(got.detach() if isinstance(got, torch.Tensor) and got.is_floating_point() else got,
                    ref_hard.to(**like), what="y (hard=True)", inputs=inputs, rtol=1e-5, atol=1e-6,
                    mistakes=[m for m in hard_mistakes if not _near(m[2], ref_hard, 1e-5, 1e-6)])
            no_grad = ("no gradient flows through the hard sample: the straight-through trick is missing",
                       "one_hot(argmax) has no gradient; return y_hard - y.detach() + y, whose forward value is "
                       "y_hard and whose gradient is that of the soft y")
            if not got.requires_grad:
                raise Mistake(*no_grad)
            try:
                (grad,) = torch.autograd.grad((got * w.to(device)).sum(), leaf, allow_unused=True)
            except RuntimeError as err:
                raise CheckFailure(f"differentiating y (hard=True) with respect to the logits failed: {err}") from None
            lr = logits0.clone().requires_grad_()
            ref_grad = torch.autograd.grad((_reference_gumbel(lr, tau, seed, hard=True) * w).sum(), lr)[0]
            if grad is None or not bool(grad.abs().gt(0).any()):
                raise Mistake(*no_grad)
            compare(grad, ref_grad.to(**like), what="the gradient of (y * w).sum() for hard=True", inputs=inputs,
                    rtol=1e-4, atol=1e-6, mistakes=[
                        ("the straight-through gradient has the wrong sign", "y_hard - y.detach() + y: the soft y "
                         "enters with a plus sign (its gradient passes through unchanged)", -ref_grad.to(**like))])
    return f"matches coursepkg.estimators.gumbel_softmax (soft and hard, values and gradients) on {n_trials} inputs"
