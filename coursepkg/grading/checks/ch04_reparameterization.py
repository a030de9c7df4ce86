r"""Checks of the chapter 04 exercises (``solutions/04_reparameterization.ipynb``), written with the check kit.

The estimators work with a diagonal Gaussian :math:`q = \mathcal N(\mu, \operatorname{diag}\sigma^2)`,
:math:`\sigma = \exp(\tfrac12\log\sigma^2)`, given as two leaf tensors ``mu`` and ``logvar`` (the log-variance
:math:`\log\sigma^2`, what the book's networks output) of shape ``(D,)``, and an objective ``f`` mapping samples
``(n, D)`` to values ``(n,)``; they return ``(grad_mu, grad_logvar)``.

How a random estimate is checked, deterministically. The check's ``f`` is a known function (quadratic, sine
and, for the score function, step terms) handed to the answer through a :class:`~coursepkg.grading.kit.Recorder`,
so the check knows the samples the answer drew. The answer is called twice on the first Gaussian (nothing the
check expects exists yet), then:

1. its samples, standardised, ``(z - mu) / sigma``, must look like independent standard normal draws (the kit's
   :func:`~coursepkg.grading.kit.independence_test` and :func:`~coursepkg.grading.kit.normal_test`), fresh at
   the second call; a sampling slip (``logvar`` used as the standard deviation, the 1/2 of
   ``exp(logvar / 2)`` missing, one noise for every sample,
   ...) is named when the samples standardised *its* way look normal;
2. the estimate must equal the estimator's formula evaluated on those very samples, to round-off: the
   per-sample terms are the closed forms, for this Gaussian, of what :mod:`coursepkg.estimators` computes with
   autograd (``tests/test_checks_ch04.py`` verifies that they agree), and each typical mistake gives another
   exact value, so the failure names it;
3. the estimate must lie within 5 standard errors of the exact gradient of ``E[f]``, known in closed form.

An answer that evaluates ``f`` inside a ``torch.func`` transform is recorded unwrapped (a ``vmap`` over the
samples as one batch); where the :class:`~coursepkg.grading.kit.Recorder` cannot unwrap a call, only its
structure, its freshness and test 3 run for it. ``04.variance`` hands the answer a recorded estimator;
``04.gumbel_softmax`` takes the uniform noise as an input, so it is a deterministic
:func:`~coursepkg.grading.kit.function_check`.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import distributions as td

from coursepkg import estimators as E
from coursepkg.grading import CheckFailure, Mistake, register
from coursepkg.grading.kit import (
    F64,
    N_SIGMA,
    RANDOM_MESSAGES,
    Also,
    Case,
    Recorder,
    Slip,
    call,
    close,
    compare,
    compare_gradients,
    describe_inputs,
    distinct,
    fresh,
    function_check,
    independence_test,
    looks_uniform,
    normal_test,
    random_cases,
    require_callable,
    require_like,
    statistical_failure,
    tolerance,
    unpack,
    vec,
    ztest,
)

ZTEST_MIN_N = 400               # the z-test against the exact gradient needs an estimate close to normal
# (n_samples, D): several dimensions, enough samples for the distribution test to tell slips apart
SHAPES = [(2000, 3), (3000, 1), (1500, 4)]
BASELINE_SHAPES = [(40, 3), (2500, 2), (400, 1)]   # a small n first: there the own-sample bias is (n - 1) / n
PAIR = "a tuple (grad_mu, grad_logvar)"
NAMES = ("grad_mu", "grad_logvar")


# --------------------------------------------------------------------------------------------------
# the Gaussian, the objective, and the estimators' per-sample terms (float64)
# --------------------------------------------------------------------------------------------------
class Objective:
    r"""``f(z) = sum_d [a_d (z_d - m_d)^2 + b_d sin(z_d) + h_d 1{z_d > t_d}] + c`` for samples ``z (n, D)``, with
    random coefficients in the case's dtype and device (``p``; ``p64`` holds the same numbers in float64).
    ``step=False`` drops the (non-differentiable) step terms; :meth:`exact` is the gradient of ``E_q[f]``."""

    def __init__(self, case: Case, D: int, step: bool):
        self.D, self.dtype, self.step = D, case.dtype, step
        zero = torch.zeros(D, **case.like)
        self.p = dict(a=case.rand(D, low=0.3, high=1.0), m=case.randn(D), b=case.randn(D),
                      h=case.randn(D, scale=0.8) if step else zero, t=case.randn(D, scale=0.5))
        self.c = case.rand(1, low=-1.0, high=2.0).item()
        self.p64 = {k: v.to(F64).cpu() for k, v in self.p.items()}
        self.device = self.p["a"].device           # with its index: torch.device("cuda") becomes cuda:0

    def __repr__(self) -> str:
        return f"<the check's objective f: samples (n, {self.D}) -> values (n,)>"

    def _value(self, z: torch.Tensor, p: dict) -> torch.Tensor:
        out = (p["a"] * (z - p["m"]) ** 2 + p["b"] * torch.sin(z)).sum(-1) + self.c
        return out + (p["h"] * (z > p["t"]).to(z.dtype)).sum(-1) if self.step else out

    def value64(self, z: torch.Tensor) -> torch.Tensor:
        return self._value(z, self.p64)

    def grad64(self, z: torch.Tensor) -> torch.Tensor:
        """``df/dz`` per sample, ``(n, D)`` (the step terms have derivative 0 almost everywhere)."""
        p = self.p64
        return 2 * p["a"] * (z - p["m"]) + p["b"] * torch.cos(z)

    def exact(self, mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact ``(d/dmu, d/dlogvar) E_q[f]``, from ``E[(z-m)^2] = (mu-m)^2 + s^2``,
        ``E[sin z] = sin(mu) exp(-s^2/2)`` and ``P(z > t) = Phi((mu-t)/s)``; ``d/dlogvar = (s^2) d/d(s^2)``."""
        p, s2 = self.p64, sigma**2
        damp = torch.exp(-s2 / 2)
        g_mu = 2 * p["a"] * (mu - p["m"]) + p["b"] * torch.cos(mu) * damp
        g_lv = p["a"] * s2 - 0.5 * p["b"] * s2 * torch.sin(mu) * damp
        if self.step:
            alpha = (mu - p["t"]) / sigma
            phi = torch.exp(-alpha**2 / 2) / math.sqrt(2 * math.pi)
            g_mu, g_lv = g_mu + p["h"] * phi / sigma, g_lv - 0.5 * p["h"] * phi * alpha
        return g_mu, g_lv

    def __call__(self, z):
        D, name = self.D, lambda dt: str(dt).replace("torch.", "")
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"f takes a tensor of samples of shape (n, {D}), got a {type(z).__name__}")
        if z.dim() != 2 or z.shape[-1] != D:
            raise ValueError(f"f takes samples of shape (n, {D}), one row per sample, got shape {list(z.shape)}")
        if z.device != self.device:
            raise ValueError(f"f received samples on {z.device}, but mu is on {self.device}: create the noise "
                             "with device=mu.device")
        if z.dtype != self.dtype:
            raise TypeError(f"f received samples of dtype {name(z.dtype)}, but mu is {name(self.dtype)}: create the "
                            "noise with dtype=mu.dtype")
        return self._value(z, self.p)


class Trial:
    """One random Gaussian (``mu``, ``logvar`` in the case's dtype and device, ``|log sigma|`` in [0.4, 0.9], so
    ``|logvar|`` in [0.8, 1.8]) and objective, for estimates from ``n`` samples of dimension ``D``."""

    def __init__(self, case: Case, n: int, D: int, step: bool):
        self.case, self.n, self.D = case, n, D
        self.mu = case.randn(D, scale=1.2)
        sign = torch.where(case.rand(D) < 0.5, -1.0, 1.0).to(**case.like)
        self.lv = 2 * sign * case.rand(D, low=0.4, high=0.9)
        self.mu64, self.lv64 = self.mu.to(F64).cpu(), self.lv.to(F64).cpu()
        self.sigma64 = (self.lv64 / 2).exp()
        self.f = Objective(case, D, step)
        self.inputs = describe_inputs(mu=self.mu, n_samples=n)

    def leaves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh ``(mu, logvar)``: leaf tensors with ``requires_grad=True``."""
        return self.mu.clone().requires_grad_(), self.lv.clone().requires_grad_()


def _score(trial: Trial, z: torch.Tensor):
    """The scores ``d/dmu log q(z)`` and ``d/dlogvar log q(z)``, ``(n, D)`` each."""
    u = (z - trial.mu64) / trial.sigma64
    return u / trial.sigma64, (u**2 - 1) / 2


def _score_terms(trial: Trial, z: torch.Tensor):
    fz = trial.f.value64(z)[:, None]
    return tuple(fz * s for s in _score(trial, z))


def _path_terms(trial: Trial, z: torch.Tensor):
    df = trial.f.grad64(z)
    return df, df * (z - trial.mu64) / 2                 # dz/dlogvar = sigma * eps / 2 = (z - mu) / 2


def _loo_baseline(fz: torch.Tensor) -> torch.Tensor:
    return (fz.sum() - fz) / (fz.shape[0] - 1)


def _baseline_terms(trial: Trial, z: torch.Tensor):
    fz = trial.f.value64(z)
    w = (fz - _loo_baseline(fz))[:, None]
    return tuple(w * s for s in _score(trial, z))


def _mean(terms):
    return tuple(t.mean(0) for t in terms)


def _gaussian(mu, logvar):
    return td.Independent(td.Normal(mu, (logvar / 2).exp()), 1)


def _score_solution(f, mu, logvar, n_samples, baseline=None):
    """:func:`coursepkg.estimators.score_function_grad` behind the exercise's signature."""
    g_mu, g_lv = E.score_function_grad(f, _gaussian, [mu, logvar], n_samples, baseline=baseline)
    return g_mu.grad, g_lv.grad


def _baseline_solution(f, mu, logvar, n_samples):
    return _score_solution(f, mu, logvar, n_samples, baseline="mean")


def _reparam_solution(f, mu, logvar, n_samples):
    """:func:`coursepkg.estimators.reparam_grad` behind the exercise's signature."""
    g_mu, g_lv = E.reparam_grad(f, _gaussian, [mu, logvar], n_samples)
    return g_mu.grad, g_lv.grad


# --------------------------------------------------------------------------------------------------
# the samples f saw
# --------------------------------------------------------------------------------------------------
SAMPLE_HINT = ("z = mu + torch.exp(logvar / 2) * eps, with eps = torch.randn(n_samples, D) (dtype and device of "
               "mu)")
SAME_NOISE = ("the same noise for every sample", f"draw one noise vector per sample: {SAMPLE_HINT}")
SAMPLE_MESSAGES = {
    **RANDOM_MESSAGES, "constant": SAME_NOISE, "same rows": SAME_NOISE,
    "same columns": ("the same noise for every coordinate (eps of shape (n_samples, 1))",
                     f"each coordinate needs its own noise: eps = torch.randn(n_samples, D), {SAMPLE_HINT}"),
}


def _samples(f: Recorder, n: int) -> torch.Tensor | None:
    """The samples ``(n, D)`` (float64) the answer evaluated ``f`` on, a batch evaluated twice counted once (a
    ``vmap`` of ``f(z[None])`` over the samples is recorded as ``(n, 1, D)``: one row each); None when a call of
    ``f`` could not be recorded."""
    z = f.rows(0)
    if z is None:
        return None
    z = z.reshape(-1, z.shape[-1]) if z.dim() > 2 else z
    total = z.shape[0]
    if total == 0:
        raise CheckFailure("your function never evaluated f: draw the samples z, shape (n_samples, D), and "
                           "compute f(z)")
    if total == 1 and n > 1:
        raise Mistake("one sample only", f"the estimate averages over n_samples = {n} independent samples: "
                      f"{SAMPLE_HINT}")
    if total != n:
        raise CheckFailure(f"f was evaluated on {total} samples in all, expected n_samples = {n}: draw exactly "
                           "n_samples samples and evaluate f on them (once)")
    return z


def _sampling_slips(trial: Trial):
    """``(name, hint, mean, std)``: the Gaussian each sampling slip draws from."""
    mu, lv, sigma = trial.mu64, trial.lv64, trial.sigma64
    one, zero = torch.ones_like(mu), torch.zeros_like(mu)
    return [
        ("logvar used as the standard deviation (std = logvar instead of exp(logvar / 2))",
         "sigma = torch.exp(logvar / 2): logvar can be negative, sigma is always positive", mu, lv.abs()),
        ("the 1/2 missing: std = exp(logvar), the variance used as the standard deviation (logvar taken for "
         "log sigma)", "logvar is the log of the variance sigma^2: sigma = torch.exp(logvar / 2)", mu, sigma**2),
        ("the square root taken twice (std = exp(logvar / 4), sigma taken for the variance)",
         "sigma = torch.exp(logvar / 2) is already the standard deviation: scale the noise by it", mu, sigma.sqrt()),
        ("the noise not scaled by sigma", "z = mu + sigma * eps: multiply the noise by sigma = exp(logvar / 2)",
         mu, one),
        ("the noise divided by sigma instead of multiplied", "z = mu + sigma * eps", mu, 1 / sigma),
        ("the mean mu not added to the noise", "z = mu + sigma * eps: shift the scaled noise by mu", zero, sigma),
        ("z = eps: the standard normal noise itself", f"transform the noise: {SAMPLE_HINT}", zero, one),
    ]


def _judge_samples(z: torch.Tensor, trial: Trial) -> None:
    """Fail unless ``z`` looks like ``n`` independent draws of ``N(mu, sigma^2)``; name the sampling slip."""
    mu, sigma = trial.mu64, trial.sigma64
    u = (z - mu) / sigma
    dependence = independence_test(u)
    if dependence is not None:
        raise Mistake(*SAMPLE_MESSAGES[dependence])
    failed = normal_test(u)
    if failed is None:
        return
    # the slips whose Gaussian the samples look like; with few samples several may, so name the likeliest
    fits = [(td.Normal(mean, std).log_prob(z).sum().item(), name, hint)
            for name, hint, mean, std in _sampling_slips(trial) if normal_test((z - mean) / std) is None]
    if fits:
        _, name, hint = max(fits, key=lambda t: t[0])
        raise Mistake(name, hint)
    if looks_uniform(u):
        raise Mistake(*RANDOM_MESSAGES["uniform"])
    raise CheckFailure(f"the samples f was evaluated on do not look like draws of N(mu, sigma^2) (for inputs "
                       f"{trial.inputs}): their mean is {vec(z.mean(0))} for mu = {vec(mu)}, their std "
                       f"{vec(z.std(0))} for sigma = {vec(sigma)} (their {failed} is off by more than chance "
                       f"allows); {SAMPLE_HINT}")


# --------------------------------------------------------------------------------------------------
# judging the answer's pair of gradients
# --------------------------------------------------------------------------------------------------
def _shape_hints(trial: Trial):
    per_coordinate = "one value per coordinate of mu; average over the samples (dim 0) only"
    return [((trial.n, trial.D), "these are per-sample gradients; average them over the samples (.mean(0)) to get "
             "one (D,) estimate"), ((), per_coordinate), ((1,), per_coordinate)]


def _pair(got) -> tuple:
    return unpack(got, 2, PAIR, refuse=[(E.GradientEstimate, "a coursepkg GradientEstimate: return its .grad")])


def _ztest(grads, trial: Trial, terms_fn) -> bool:
    """Fail unless both estimates lie within ``N_SIGMA`` standard errors of the exact gradient of ``E[f]``; the
    standard error is the reference estimator's, from 20,000 fresh samples (an answer's own samples would
    underestimate it when the per-sample terms are heavy-tailed). Skipped (False) below ``ZTEST_MIN_N`` samples,
    where the estimate is far from normal."""
    if trial.n < ZTEST_MIN_N:
        return False
    gen = torch.Generator().manual_seed(4_000 + trial.D)
    z = trial.mu64 + trial.sigma64 * torch.randn(20_000, trial.D, generator=gen, dtype=F64)
    se = [t.std(0) / math.sqrt(trial.n) for t in terms_fn(trial, z)]
    for name, g, ex, s in zip(NAMES, grads, trial.f.exact(trial.mu64, trial.sigma64), se, strict=True):
        g = g.detach().to(F64).cpu()
        if not ztest(g, ex, s, atol=1e-6 * (1 + ex.abs())):
            raise statistical_failure(name, g, ex, s, inputs=trial.inputs, expected_name="the exact gradient of E[f]",
                                      advice="the estimator is biased")
    return True


def _judge(got, z, trial: Trial, terms_fn, mistakes_fn, extra=()) -> tuple | None:
    """Judge one call's ``got`` on its samples ``z`` (None: not recorded, the structure only); return the
    reference estimate on those samples. ``extra``: more ``(name, hint, value_mu, value_ls)`` mistakes."""
    like, inputs, hints = trial.case.like, trial.inputs, _shape_hints(trial)
    if z is None:
        for name, g in zip(NAMES, _pair(got), strict=True):
            require_like(g, (trial.D,), **like, what=name, inputs=inputs, shape_hints=hints)
            if not bool(torch.isfinite(g).all()):
                raise CheckFailure(f"{name} contains NaN or inf (for inputs {inputs})")
        return None
    _judge_samples(z, trial)
    terms = terms_fn(trial, z)
    ref = _mean(terms)
    mistakes = [*mistakes_fn(trial, z), *extra]
    rtol = 2 * tolerance(trial.case.dtype)[0]
    for k, (name, g) in enumerate(zip(NAMES, _pair(got), strict=True)):
        atol = rtol * terms[k].abs().mean().item() + 1e-12
        values = [(m[0], m[1], None if m[2 + k] is None else m[2 + k].to(**like)) for m in mistakes]
        r = ref[k].to(**like)
        compare(g.detach() if isinstance(g, torch.Tensor) else g, r, what=name, inputs=inputs, rtol=rtol, atol=atol,
                mistakes=distinct(values, r, rtol, atol), shape_hints=hints)
    return ref


def _calls(fn, trial: Trial, times: int, pathwise: bool) -> list[tuple]:
    """Call the answer ``times`` times on the same leaves (a ``.backward()`` would accumulate into ``mu.grad``),
    before anything expected is computed; return ``[(output, samples), ...]``. ``pathwise``: fail with the
    detached-sample mistake when ``f`` only ever saw samples without a graph."""
    mu, lv = trial.leaves()
    out = []
    for _ in range(times):
        f = Recorder(trial.f, name="f")
        try:
            got = call(fn, f, mu, lv, trial.n)
        except CheckFailure:
            if pathwise and _detached(f):
                raise Mistake(*DETACHED) from None
            raise
        if pathwise and _detached(f):
            raise Mistake(*(SCORE_INSTEAD if _is_score(got, f, trial) else DETACHED))
        out.append((_as_returned(got), f))
    return [(got, _samples(f, trial.n)) for got, f in out]


def _as_returned(got):
    """The answer's output as it was when returned: a later call may change a returned ``mu.grad`` in place."""
    if isinstance(got, torch.Tensor):
        return got.detach().clone()
    if type(got) in (tuple, list):
        return type(got)(_as_returned(g) for g in got)
    return got


def _fresh(calls) -> None:
    """Fail unless the second call drew other samples than the first (unrecorded: gave another estimate)."""
    (got, z), (got2, z2) = calls
    if z is None or z2 is None:
        z, z2 = (torch.cat([t.detach().reshape(-1) for t in _pair(g)]) for g in (got, got2))
    if not fresh(z, z2):
        raise Mistake(*RANDOM_MESSAGES["same calls"])


def _accumulated(ref, trial: Trial, z2, terms_fn):
    """The mistake of a second call that returns the sum of both calls' estimates."""
    if ref is None or z2 is None:
        return []
    ref2 = _mean(terms_fn(trial, z2))
    return [("gradients accumulated over calls (in mu.grad and logvar.grad)",
             ".backward() adds to the .grad of the leaves, so a second call returns the sum of both calls' gradients: "
             "use torch.autograd.grad(loss, (mu, logvar)), which returns them without storing them",
             ref[0] + ref2[0], ref[1] + ref2[1])]


def _estimator_check(answer, *, seed: int, shapes, step: bool, terms_fn, mistakes_fn, pathwise: bool = False) -> str:
    """The check of a gradient estimator: see the module's docstring."""
    fn = require_callable(answer)
    trials = [Trial(case, n, D, step=step and i % 2 == 0) for case in random_cases(seed)
              for i, (n, D) in enumerate(shapes)]
    recorded = ztested = 0
    for k, trial in enumerate(trials):
        torch.manual_seed(seed + k)                   # the same answer always gets the same verdict
        calls = _calls(fn, trial, 2 if k == 0 else 1, pathwise)
        got, z = calls[0]
        ref = _judge(got, z, trial, terms_fn, mistakes_fn)
        recorded += z is not None
        ztested += _ztest(_pair(got), trial, terms_fn)
        if k == 0:                                    # the second call, then: are the two calls' draws fresh?
            got2, z2 = calls[1]
            _judge(got2, z2, trial, terms_fn, mistakes_fn, extra=_accumulated(ref, trial, z2, terms_fn))
            _fresh(calls)
    n = len(trials)
    on = f"on {n} random Gaussians" if recorded == n else f"on {recorded} of {n} random Gaussians"
    own = (f"its samples look like independent draws of N(mu, sigma^2), fresh at every call, and it matches the "
           f"estimator on those samples, {on}" if recorded else
           f"fresh at every call, on {n} random Gaussians (f ran inside a torch.func transform the check could not "
           "unwrap, so its samples were not tested)")
    return (f"{own}; within {N_SIGMA:g} standard errors of the exact gradient on the {ztested} with n_samples >= "
            f"{ZTEST_MIN_N}")


# --------------------------------------------------------------------------------------------------
SCORE_HINT = ("the score of the diagonal Gaussian is d/dmu log q(z) = (z - mu) / sigma^2 and "
              "d/dlogvar log q(z) = ((z - mu)^2 / sigma^2 - 1) / 2")


def _score_mistakes(trial: Trial, z: torch.Tensor):
    """``(name, hint, value for grad_mu or None, value for grad_logvar or None)``."""
    mu, sigma, n = trial.mu64, trial.sigma64, trial.n
    fz = trial.f.value64(z)[:, None]
    u = (z - mu) / sigma
    s_mu, s_lv = u / sigma, (u**2 - 1) / 2
    log_q = td.Normal(mu, sigma).log_prob(z)                          # (n, D), per coordinate
    p_joint = log_q.sum(1, keepdim=True).exp()                       # q(z), (n, 1)
    p_coord = log_q.exp()                                             # q_d(z_d), (n, D)
    ref = _mean(_score_terms(trial, z))
    missing_log = ("the log is missing in the score: grad q(z) instead of grad log q(z)",
                   "the log-derivative trick differentiates log q: grad q = q * grad log q, and the factor q(z) "
                   f"is already in the expectation; {SCORE_HINT}")
    return [
        (*missing_log, (fz * p_joint * s_mu).mean(0), (fz * p_joint * s_lv).mean(0)),
        (*missing_log, (fz * p_coord * s_mu).mean(0), (fz * p_coord * s_lv).mean(0)),
        ("f(z) multiplied by log q(z) instead of by its gradient (the score)",
         f"multiply f(z) by the gradient of log q(z) with respect to the parameter; {SCORE_HINT}",
         (fz * log_q).mean(0), (fz * log_q).mean(0)),
        ("the score's sign is flipped", f"{SCORE_HINT}: (z - mu), not (mu - z)", -ref[0], -ref[1]),
        ("f differentiated: that is the pathwise (reparameterization) estimator",
         "the score-function estimator never differentiates f (it may not even be differentiable): "
         f"average f(z) times the score of q; {SCORE_HINT}", *_mean(_path_terms(trial, z))),
        ("the score computed through a sample that is not detached",
         "if you differentiate log_prob with autograd, the sample must be a constant: use z.detach() (or "
         "torch.no_grad() when sampling); through z = mu + sigma * eps, log q(z) no longer depends on mu",
         torch.zeros_like(mu), -fz.mean() / 2 * torch.ones_like(mu)),
        ("f(z) forgotten: the mean of the score alone", "the estimate averages f(z_i) times the score",
         s_mu.mean(0), s_lv.mean(0)),
        ("sigma used where sigma^2 belongs", f"{SCORE_HINT}: divide by the variance sigma^2",
         (fz * u).mean(0), (fz * (u**2 * sigma - 1) / 2).mean(0)),
        ("the 1 / sigma^2 missing in the score of mu", f"{SCORE_HINT}", (fz * u * sigma).mean(0), None),
        ("the -1/2 forgotten in the score of logvar", f"{SCORE_HINT}: the -1/2 comes from the normalising "
         "constant, -logvar / 2", None, (fz * u**2 / 2).mean(0)),
        ("the 1/2 missing in the score of logvar (that is the score of log sigma)", "logvar = 2 log sigma, so "
         f"d/dlogvar = (1/2) d/dlog sigma: {SCORE_HINT}", None, (fz * 2 * s_lv).mean(0)),
        ("the gradient with respect to sigma, not logvar", "by the chain rule, d/dlogvar = (sigma / 2) d/dsigma: "
         f"{SCORE_HINT}", None, (fz * 2 * s_lv / sigma).mean(0)),
        ("the gradient with respect to the variance sigma^2, not logvar", "by the chain rule, d/dlogvar = "
         f"sigma^2 d/dsigma^2: {SCORE_HINT}", None, (fz * s_lv / sigma**2).mean(0)),
        ("summed over the samples instead of averaged", "the Monte Carlo estimate is the mean over the n_samples "
         "samples: .mean(0), not .sum(0)", n * ref[0], n * ref[1]),
    ]


@register("04.score_function", "the score-function (REINFORCE) estimator", solution=_score_solution)
def check_score_function(answer):
    return _estimator_check(answer, seed=4100, shapes=SHAPES, step=True, terms_fn=_score_terms,
                            mistakes_fn=_score_mistakes)


# --------------------------------------------------------------------------------------------------
DETACHED = ("the sample is detached: no gradient flows from f(z) back to mu and logvar",
            "the pathwise estimator differentiates through z = mu + exp(logvar / 2) * eps, so z must be computed "
            "from mu and logvar with autograd on: no .detach(), .data, torch.no_grad() or .item() on the way, "
            "and with torch.distributions use rsample(), not sample()")
PATH_HINT = ("z = mu + exp(logvar / 2) * eps; average f(z) over the samples and differentiate with "
             "torch.autograd.grad")
SCORE_INSTEAD = ("that is the score-function estimator", f"this exercise asks for the pathwise one: {PATH_HINT}")


def _path_mistakes(trial: Trial, z: torch.Tensor):
    n, df = trial.n, trial.f.grad64(z)
    eps = (z - trial.mu64) / trial.sigma64
    ref = _mean(_path_terms(trial, z))
    return [
        ("summed over the samples instead of averaged", "the estimate is the gradient of the mean "
         "f(z).mean(), not of f(z).sum() (that is n_samples times larger)", n * ref[0], n * ref[1]),
        ("the gradient with respect to sigma, not logvar", "z depends on logvar through sigma = "
         "exp(logvar / 2): dz/dlogvar = sigma * eps / 2; differentiate with respect to logvar itself",
         None, (df * eps).mean(0)),
        ("the gradient with respect to the variance sigma^2, not logvar", "z depends on logvar through sigma = "
         "exp(logvar / 2): dz/dlogvar = sigma * eps / 2; differentiate with respect to logvar itself",
         None, (df * eps / (2 * trial.sigma64)).mean(0)),
        ("the 1/2 missing in dz/dlogvar (that is the gradient with respect to log sigma)", "sigma = "
         "exp(logvar / 2), so dz/dlogvar = sigma * eps / 2", None, 2 * ref[1]),
        ("grad_mu and grad_logvar swapped", "return (grad_mu, grad_logvar), in this order", ref[1], ref[0]),
        (*SCORE_INSTEAD, *_mean(_score_terms(trial, z))),
    ]


def _detached(f: Recorder) -> bool:
    """Whether ``f`` was called, every call recorded, only on samples that neither required grad nor were tracked
    by a ``torch.func`` gradient transform."""
    return bool(f.calls) and not f.wrapped and not any(c.requires_grad[:1] == (True,) for c in f.calls)


def _is_score(got, f: Recorder, trial: Trial) -> bool:
    """Whether a detached answer to the pathwise exercise is the score-function estimator on its samples."""
    try:
        z = _samples(f, trial.n)
        terms = _score_terms(trial, z)
        return all(close(g, t.mean(0), 1e-4, 1e-4 * t.abs().mean().item()) for g, t in zip(_pair(got), terms,
                                                                                           strict=True))
    except CheckFailure:
        return False


@register("04.reparam", "the pathwise (reparameterization) estimator", solution=_reparam_solution)
def check_reparam(answer):
    return _estimator_check(answer, seed=4200, shapes=SHAPES, step=False, terms_fn=_path_terms,
                            mistakes_fn=_path_mistakes, pathwise=True)


# --------------------------------------------------------------------------------------------------
BASELINE_HINT = ("the leave-one-out baseline of sample i is the mean of the other samples' values, "
                 "b_i = (sum_j f(z_j) - f(z_i)) / (n - 1); the estimate averages (f(z_i) - b_i) times the score")


def _baseline_mistakes(trial: Trial, z: torch.Tensor):
    n, fz = trial.n, trial.f.value64(z)
    s_mu, s_lv = _score(trial, z)
    b = _loo_baseline(fz)

    def est(weight, sub=0.0):
        w = weight[:, None] if weight.dim() == 1 else weight
        return (w * (s_mu - sub)).mean(0), (w * (s_lv - sub)).mean(0)

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
        ("the -1/2 forgotten in the score of logvar", SCORE_HINT, None, ((fz - b)[:, None] * (s_lv + 0.5)).mean(0)),
        ("the 1/2 missing in the score of logvar (that is the score of log sigma)", SCORE_HINT, None,
         ((fz - b)[:, None] * 2 * s_lv).mean(0)),
        ("summed over the samples instead of averaged", "average over the samples: .mean(0)",
         *(n * t for t in est(fz - b))),
    ]


@register("04.baseline", "the score-function estimator with a leave-one-out baseline", solution=_baseline_solution)
def check_baseline(answer):
    return _estimator_check(answer, seed=4300, shapes=BASELINE_SHAPES, step=True, terms_fn=_baseline_terms,
                            mistakes_fn=_baseline_mistakes)


# --------------------------------------------------------------------------------------------------
VARIANCE_SPECS = [(50, 3, 40, "score"), (20, 2, 25, "pathwise"), (10, 4, 30, "synthetic")]  # (n, D, n_repeats, kind)


def _variance_solution(estimator, f, mu, logvar, n_samples, n_repeats):
    grads = torch.stack([estimator(f, mu, logvar, n_samples)[0] for _ in range(n_repeats)])
    return grads.var(dim=0)


def _estimator(trial: Trial, kind: str) -> tuple[Recorder, list]:
    """The estimator ``(f, mu, logvar, n_samples) -> (grad_mu, grad_logvar)`` handed to the answer of
    04.variance, recorded, and the list of the gradients it returned: the score-function or pathwise estimator
    on the trial's Gaussian (closed-form per-sample terms), or a synthetic one."""
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def estimator(f, mu, logvar, n_samples):
        t = trial
        if kind == "synthetic":
            g = (t.mu64 + t.sigma64 * torch.randn(t.D, dtype=F64), 0.5 * torch.randn(t.D, dtype=F64) - 1.0)
        else:
            z = t.mu64 + t.sigma64 * torch.randn(t.n, t.D, dtype=F64)
            g = _mean((_score_terms if kind == "score" else _path_terms)(t, z))
        g = tuple(x.to(t.case.dtype) for x in g)
        outputs.append(g)
        return tuple(x.to(t.case.device) for x in g)

    return Recorder(estimator, name=f"the check's {kind} estimator"), outputs


def _misused(est: Recorder, trial: Trial) -> str | None:
    """What is wrong with the arguments the answer called the estimator with, or None."""
    for c in est.calls:
        a = inspect.signature(est.target).bind(*c.args, **c.kwargs).arguments
        if a["f"] is not trial.f:
            return "call the estimator with the f you were given"
        if not (isinstance(a["mu"], torch.Tensor) and close(a["mu"], trial.mu, 0, 0)):
            return "call the estimator with the mu you were given"
        if not (isinstance(a["logvar"], torch.Tensor) and close(a["logvar"], trial.lv, 0, 0)):
            return "call the estimator with the logvar you were given (in that position)"
        if a["n_samples"] != trial.n:
            return (f"the estimator was called with n_samples = {a['n_samples']!r}, not the n_samples = {trial.n} "
                    "you were given")
    return None


@register("04.variance", "the variance of an estimator over repeated runs", solution=_variance_solution)
def check_variance(answer):
    fn = require_callable(answer)
    n_trials = 0
    for case in random_cases(4400):
        for n, D, n_repeats, kind in VARIANCE_SPECS:
            n_trials += 1
            trial = Trial(case, n, D, step=False)
            torch.manual_seed(44 + n + D)
            est, outputs = _estimator(trial, kind)
            mu, lv = trial.leaves()
            got = call(fn, est, trial.f, mu, lv, n, n_repeats)
            misuse = _misused(est, trial)
            if misuse:
                raise CheckFailure(misuse)
            if not outputs:
                raise CheckFailure("your function never called the estimator: call estimator(f, mu, logvar, "
                                   "n_samples) n_repeats times")
            if len(outputs) != n_repeats:
                raise CheckFailure(f"the estimator was called {len(outputs)} times, expected n_repeats = {n_repeats}: "
                                   "one call per repeat")
            g_mu, g_lv = (torch.stack([o[j] for o in outputs]).to(F64) for j in (0, 1))     # (n_repeats, D)
            if bool((g_mu == g_mu[0]).all()):  # never for the check's estimators, unless the answer reseeds
                raise Mistake("every repeat gave the same gradient", "do not reseed the generator inside the loop "
                              "(torch.manual_seed): the repeats must be independent runs")
            rtol = tolerance(case.dtype)[0]
            ref, biased = g_mu.var(0), g_mu.var(0, correction=0)
            atol = rtol * ref.abs().mean().item() + 1e-12
            if isinstance(got, torch.Tensor) and close(got, biased, rtol, atol):
                ref = biased                                # the biased variance (divided by n_repeats) is fine too
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
                ("the variance of grad_logvar instead of grad_mu", "the estimator returns (grad_mu, "
                 "grad_logvar): take the first", g_lv.var(0)),
                ("the mean of the gradients instead of their variance", "return the variance over the repeats: "
                 ".var(dim=0)", g_mu.mean(0)),
                ("the second moment E[g^2] instead of the variance", "subtract the mean before squaring (or use "
                 ".var(dim=0))", (g_mu**2).mean(0)),
            ]
            expected = ref.to(**case.like)
            compare(got.detach() if isinstance(got, torch.Tensor) else got, expected, what="the variance",
                    inputs=describe_inputs(mu=trial.mu, n_samples=n, n_repeats=n_repeats), rtol=rtol, atol=atol,
                    mistakes=distinct([(m, h, v.to(**case.like)) for m, h, v in mistakes], expected, rtol, atol),
                    shape_hints=[((n_repeats,), "one value per repeat: take the variance over the repeats (dim=0), "
                                  "one value per coordinate of mu"),
                                 ((n_repeats, D), "the stacked gradients: return their variance over the repeats, "
                                  ".var(dim=0)")])
    return (f"matches the variance of the gradients it was given on {n_trials} runs (score-function, pathwise and "
            "synthetic estimators)")


# --------------------------------------------------------------------------------------------------
GUMBEL_SHAPES = [((6, 5), 0.5), ((4,), 1.0), ((3, 2, 7), 2.0), ((10, 3), 0.3)]
GUMBEL_HINT = "y = softmax((logits + g) / tau, dim=-1), with the Gumbel noise g = -log(-log(u))"
NO_GRADIENT = ("no gradient flows through the hard sample: the straight-through trick is missing",
               "one_hot(argmax) has no gradient; return y_hard - y.detach() + y, whose forward value is y_hard and "
               "whose gradient is that of the soft y")
WRONG_SIGN = ("the straight-through gradient has the wrong sign", "y_hard - y.detach() + y: the soft y enters with a "
              "plus sign (its gradient passes through unchanged)")


def _gumbel(logits, tau, u, hard=False):
    """:func:`coursepkg.estimators.gumbel_softmax` with the noise ``u`` given (the package draws its own from a
    generator; ``tests/test_checks_ch04.py`` verifies that the two agree)."""
    y = torch.softmax((logits - torch.log(-torch.log(u))) / tau, dim=-1)
    return E.straight_through(F.one_hot(y.argmax(-1), y.shape[-1]), y) if hard else y


def _gumbel_inputs(case: Case, spec) -> dict:
    shape, tau, hard = spec
    # u strictly inside (0, 1) in every dtype: -log(-log(u)) is finite
    return {"logits": case.randn(*shape, scale=1.5), "tau": tau, "u": case.rand(*shape, low=1e-6, high=1 - 1e-6),
            "hard": hard}


def _slip(name: str, hint: str, y, hard: bool = False) -> Slip:
    """A slip of the soft (or, ``hard=True``, of the hard) sample: ``y(logits, tau, g, u)``, g the Gumbel noise."""
    def value(logits, tau, u, hard=False, _for=hard):
        return y(logits, tau, -torch.log(-torch.log(u)), u) if hard == _for else None
    return Slip(name, hint, value)


def _softmax(x, dim=-1):
    return torch.softmax(x, dim)


def _one_hot(x):
    return F.one_hot(x.argmax(-1), x.shape[-1]).to(x.dtype)


def _gumbel_gradients(f) -> None:
    """The gradient with respect to the logits: the soft sample's, for hard=True too (straight-through)."""
    for case in random_cases(4600):
        for (shape, tau), hard in zip(GUMBEL_SHAPES, (True, False, True, True), strict=True):
            leaf = case.randn(*shape, scale=1.5).requires_grad_()
            u = case.rand(*shape, low=1e-6, high=1 - 1e-6)
            what = f"y (hard={hard})"
            y = f(leaf, tau, u, hard=hard)
            require_like(y, shape, **case.like, what=what)
            u64 = u.to(F64).cpu()
            try:
                compare_gradients(y, {"logits": leaf}, lambda leaves: _gumbel(leaves["logits"], tau, u64, hard),
                                  what=what, inputs=describe_inputs(logits=leaf, tau=tau),
                                  detached=NO_GRADIENT if hard else None)
            except Mistake as m:
                if hard and m.name == "a flipped sign":
                    raise Mistake(*WRONG_SIGN) from None
                if hard and m.name.startswith("no gradient reaches"):
                    raise Mistake(*NO_GRADIENT) from None
                raise


function_check(
    "04.gumbel_softmax", "the Gumbel-softmax relaxation (and its straight-through hard version)",
    solution=_gumbel, inputs=_gumbel_inputs, seed=4500, keywords=["hard"], describe=["logits", "tau", "hard"],
    specs=[(shape, tau, hard) for shape, tau in GUMBEL_SHAPES for hard in (False, True)], what="y",
    also=[Also("its gradients (soft, and straight-through for hard=True) on 4 more random inputs per dtype and device",
               _gumbel_gradients)],
    mistakes=[
        _slip("Gumbel noise computed as -log(u) (that is exponential noise: a log is missing)", GUMBEL_HINT,
              lambda lg, tau, g, u: _softmax((lg - torch.log(u)) / tau)),
        _slip("Gumbel noise computed as +log(u)", GUMBEL_HINT,
              lambda lg, tau, g, u: _softmax((lg + torch.log(u)) / tau)),
        _slip("log(-log u) added instead of subtracted (the noise's sign is flipped)", GUMBEL_HINT,
              lambda lg, tau, g, u: _softmax((lg - g) / tau)),
        _slip("tau multiplies instead of divides", f"{GUMBEL_HINT}: a small tau sharpens the softmax",
              lambda lg, tau, g, u: _softmax((lg + g) * tau)),
        _slip("the temperature tau forgotten", GUMBEL_HINT, lambda lg, tau, g, u: _softmax(lg + g)),
        _slip("only the logits divided by tau, not the noise", GUMBEL_HINT,
              lambda lg, tau, g, u: _softmax(lg / tau + g)),
        _slip("the noise forgotten: softmax(logits / tau) is deterministic", f"{GUMBEL_HINT}: the noise makes y a "
              "random sample", lambda lg, tau, g, u: _softmax(lg / tau)),
        _slip("log_softmax instead of softmax", f"{GUMBEL_HINT}: y is a point of the simplex (entries >= 0, summing "
              "to 1)", lambda lg, tau, g, u: torch.log_softmax((lg + g) / tau, -1)),
        _slip("a one-hot vector returned for hard=False", "hard=False returns the relaxed (soft) sample",
              lambda lg, tau, g, u: _one_hot((lg + g) / tau)),
        _slip("softmax over the wrong dimension", f"{GUMBEL_HINT}: the K categories are the last dimension (dim=-1)",
              lambda lg, tau, g, u: _softmax((lg + g) / tau, dim=0) if lg.dim() > 1 else None),
        _slip("hard=True returns the soft sample", "for hard=True the forward value is the one-hot vector of the "
              "argmax of y (straight-through: y_hard - y.detach() + y)", lambda lg, tau, g, u: _softmax((lg + g) / tau),
              hard=True),
        _slip("the argmax of the logits without the noise", "take the argmax of the perturbed logits (logits + g), "
              "i.e. of y", lambda lg, tau, g, u: _one_hot(lg), hard=True),
    ])
