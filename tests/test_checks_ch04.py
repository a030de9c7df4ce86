"""Chapter 04 checks: the reference passes; correct answers written differently pass; typical mistakes,
written here as small wrong implementations, fail with a message that names the mistake; bad answers
never crash a check."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import distributions as td

from coursepkg import estimators as E
from coursepkg.grading import check, kit
from coursepkg.grading.checks import ch04_reparameterization as C
from coursepkg.grading.kit import Case

from .helpers import check_fails, check_passes

# torch's own first use of forward-mode AD (coursepkg.estimators) scripts its decompositions, which warns

IDS = ["04.score_function", "04.reparam", "04.variance", "04.baseline", "04.gumbel_softmax"]

_ok, _fails = check_passes, check_fails


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


# ---------------------------------------------------------------------------------------------- the solutions
def noise(mu, n):
    return torch.randn(n, mu.shape[0], dtype=mu.dtype, device=mu.device)


def half_exp(t):
    return torch.exp(t / 2)


def sample(mu, logvar, n, *, std=half_exp, shift=True, shared=False):
    """z = mu + std(logvar) * eps, with switches for the sampling slips."""
    eps = torch.randn(1 if shared else n, mu.shape[0], dtype=mu.dtype, device=mu.device).expand(n, -1)
    return (mu if shift else 0) + std(logvar) * eps


def make_score(*, sample_fn=sample, score_mu=None, score_lv=None, weight=lambda fz, z: fz, reduce=lambda t: t.mean(0)):
    """The score-function estimator with switches: ``score_*(z, mu, sigma)`` replace the scores,
    ``weight(fz, z)`` what multiplies them."""
    def estimator(f, mu, logvar, n_samples):
        with torch.no_grad():
            sigma = torch.exp(logvar / 2)
            z = sample_fn(mu, logvar, n_samples)
            fz = f(z)
            s_mu = (z - mu) / sigma**2 if score_mu is None else score_mu(z, mu, sigma)
            s_lv = ((z - mu) ** 2 / sigma**2 - 1) / 2 if score_lv is None else score_lv(z, mu, sigma)
            w = weight(fz, z)
            w = w[:, None] if w.dim() == 1 else w
            return reduce(w * s_mu), reduce(w * s_lv)
    return estimator


good_score = make_score()


def good_reparam(f, mu, logvar, n_samples):
    z = mu + torch.exp(logvar / 2) * noise(mu, n_samples)
    return torch.autograd.grad(f(z).mean(), (mu, logvar))


def good_variance(estimator, f, mu, logvar, n_samples, n_repeats):
    return torch.stack([estimator(f, mu, logvar, n_samples)[0] for _ in range(n_repeats)]).var(0)


def loo(fz):
    return (fz.sum() - fz) / (fz.shape[0] - 1)


good_baseline = make_score(weight=lambda fz, z: fz - loo(fz))


def good_gumbel(logits, tau, u, hard=False):
    y = torch.softmax((logits - torch.log(-torch.log(u))) / tau, dim=-1)
    if hard:
        y_hard = torch.nn.functional.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
        y = y_hard - y.detach() + y
    return y


# the reference module, behind the exercises' signatures
def gaussian(mu, logvar):
    return td.Independent(td.Normal(mu, (logvar / 2).exp()), 1)


def ref_score(f, mu, logvar, n_samples, baseline=None):
    est = E.score_function_grad(f, gaussian, [mu, logvar], n_samples, baseline=baseline)
    return est[0].grad, est[1].grad


def ref_reparam(f, mu, logvar, n_samples):
    est = E.reparam_grad(f, gaussian, [mu, logvar], n_samples)
    return est[0].grad, est[1].grad


def ref_baseline(f, mu, logvar, n_samples):
    return ref_score(f, mu, logvar, n_samples, baseline="mean")


def ref_gumbel(logits, tau, u, hard=False):
    # the reference draws its own noise; with the uniform given, it is the same formula
    y = torch.softmax((logits - torch.log(-torch.log(u))) / tau, -1)
    return E.straight_through(torch.nn.functional.one_hot(y.argmax(-1), y.shape[-1]), y) if hard else y


@pytest.mark.parametrize("exercise_id, fn", [
    ("04.score_function", good_score), ("04.score_function", ref_score),
    ("04.reparam", good_reparam), ("04.reparam", ref_reparam),
    ("04.variance", good_variance),
    ("04.baseline", good_baseline), ("04.baseline", ref_baseline),
    ("04.gumbel_softmax", good_gumbel), ("04.gumbel_softmax", ref_gumbel),
])
def test_reference_implementations_pass(exercise_id, fn):
    _ok(exercise_id, fn)


def test_check_formulas_agree_with_coursepkg_estimators():
    """The checks' closed-form per-sample terms are what coursepkg.estimators computes with autograd."""
    case = Case(torch.Generator().manual_seed(0), torch.float64, torch.device("cpu"))
    trial = C.Trial(case, 50, 3, step=True)
    mu, lv = trial.leaves()
    for estimator, terms_fn, kw in ((E.score_function_grad, C._score_terms, {}),
                                    (E.score_function_grad, C._baseline_terms, {"baseline": "mean"}),
                                    (E.reparam_grad, C._path_terms, {})):
        torch.manual_seed(1)
        est = estimator(trial.f.value64, gaussian, [mu, lv], 50, **kw)
        torch.manual_seed(1)
        d = gaussian(mu.detach(), lv.detach())
        z = d.rsample((50,)) if estimator is E.reparam_grad else d.sample((50,))
        for e, t in zip(est, terms_fn(trial, z), strict=True):
            assert torch.allclose(e.per_sample, t, rtol=1e-10, atol=1e-12)
    # and the exact gradient of E[f] is the gradient of the closed-form expectation
    z = trial.mu64 + trial.sigma64 * torch.randn(400_000, 3, generator=torch.Generator().manual_seed(2),
                                                 dtype=torch.float64)
    exact = trial.f.exact(trial.mu64, trial.sigma64)
    for t, ex in zip(C._score_terms(trial, z), exact, strict=True):
        assert torch.all((t.mean(0) - ex).abs() < 5 * t.std(0) / math.sqrt(len(z)))


# ------------------------------------------------------------------------------- differently written answers
def score_autograd(f, mu, logvar, n_samples):
    """autograd on log_prob of a detached sample, with torch.distributions."""
    q = td.Normal(mu, (logvar / 2).exp())
    z = q.sample((n_samples,))                       # sample() is detached
    fz = f(z).detach()
    surrogate = (fz * q.log_prob(z).sum(-1)).mean()
    return torch.autograd.grad(surrogate, (mu, logvar))


def score_loop(f, mu, logvar, n_samples):
    """one sample at a time, f evaluated on (1, D) rows."""
    sigma = (logvar / 2).exp().detach()
    g_mu, g_ls = torch.zeros_like(mu).detach(), torch.zeros_like(mu).detach()
    for _ in range(n_samples):
        z = (mu.detach() + sigma * torch.randn_like(sigma))[None]
        fz = f(z)[0]
        g_mu += fz * (z[0] - mu.detach()) / sigma**2
        g_ls += fz * ((z[0] - mu.detach()) ** 2 / sigma**2 - 1) / 2
    return g_mu / n_samples, g_ls / n_samples


def score_eps(f, mu, logvar, n_samples):
    """the scores written with eps, f evaluated twice (the same batch counts once)."""
    mu, sigma = mu.detach(), (logvar.detach() / 2).exp()
    eps = torch.randn(n_samples, mu.numel(), dtype=mu.dtype)
    z = mu + sigma * eps
    f(z)
    fz = f(z)
    return (fz[:, None] * eps / sigma).mean(0), (fz[:, None] * (eps**2 - 1) / 2).mean(0)


def reparam_rsample(f, mu, logvar, n_samples):
    z = td.Normal(mu, (logvar / 2).exp()).rsample((n_samples,))
    loss = f(z).mean()
    loss.backward()
    g = mu.grad.clone(), logvar.grad.clone()
    mu.grad, logvar.grad = None, None             # .backward() is fine when the .grad are reset
    return g


def reparam_own_leaves(f, mu, logvar, n_samples):
    """fresh leaves, and the chain rule by hand from the gradient with respect to z."""
    mu, sigma = mu.detach(), (logvar.detach() / 2).exp()
    eps = torch.randn(n_samples, mu.shape[0], dtype=mu.dtype)
    z = (mu + sigma * eps).requires_grad_()
    (dz,) = torch.autograd.grad(f(z).sum(), z)
    return dz.mean(0), (dz * sigma * eps / 2).mean(0)


def reparam_loop(f, mu, logvar, n_samples, chunk=256):
    """a loop over chunks of samples, f called once per chunk, the gradients summed over the chunks."""
    g_mu, g_ls = torch.zeros_like(mu), torch.zeros_like(logvar)
    for start in range(0, n_samples, chunk):
        m = min(chunk, n_samples - start)
        z = mu + (logvar / 2).exp() * noise(mu, m)
        d_mu, d_ls = torch.autograd.grad(f(z).sum() / n_samples, (mu, logvar))
        g_mu, g_ls = g_mu + d_mu, g_ls + d_ls
    return g_mu, g_ls


def reparam_func(f, mu, logvar, n_samples):
    """torch.func.grad: f runs on grad-tracking wrappers, which the check's recorder unwraps to the samples."""
    eps = noise(mu, n_samples)
    return torch.func.grad(lambda m, v: f(m + (v / 2).exp() * eps).mean(), argnums=(0, 1))(mu.detach(),
                                                                                         logvar.detach())


def variance_by_hand(estimator, f, mu, logvar, n_samples, n_repeats):
    grads = []
    for _ in range(n_repeats):
        g_mu, _ = estimator(f=f, mu=mu, logvar=logvar, n_samples=n_samples)
        grads.append(g_mu)
    g = torch.stack(grads)
    return ((g - g.mean(0)) ** 2).mean(0)            # the biased variance passes too


def baseline_from_mean(f, mu, logvar, n_samples):
    """(f_i - mean f) * n / (n - 1) is exactly f_i minus the leave-one-out mean."""
    n = n_samples
    return make_score(weight=lambda fz, z: (fz - fz.mean()) * n / (n - 1))(f, mu, logvar, n)


def gumbel_by_hand(logits, tau, u, hard=False):
    a = (logits + -torch.log(-torch.log(u))) / tau
    e = torch.exp(a - a.max(-1, keepdim=True).values)
    y = e / e.sum(-1, keepdim=True)
    if hard:
        y_hard = (a == a.max(-1, keepdim=True).values).to(y.dtype)
        y = E.straight_through(y_hard, y)
    return y


@pytest.mark.parametrize("exercise_id, fn", [
    ("04.score_function", score_autograd), ("04.score_function", score_loop), ("04.score_function", score_eps),
    ("04.reparam", reparam_rsample), ("04.reparam", reparam_own_leaves), ("04.reparam", reparam_loop),
    ("04.reparam", reparam_func),
    ("04.variance", variance_by_hand),
    ("04.baseline", baseline_from_mean),
    ("04.gumbel_softmax", gumbel_by_hand),
])
def test_correct_but_differently_written_answers_pass(exercise_id, fn):
    _ok(exercise_id, fn)


# ---------------------------------------------------------------------------------------------- mistakes
def density(z, mu, sigma, joint):
    p = td.Normal(mu, sigma).log_prob(z)
    return p.sum(-1, keepdim=True).exp() if joint else p.exp()


def test_score_function_mistakes():
    s_mu = lambda z, mu, s: (z - mu) / s**2          # noqa: E731
    s_lv = lambda z, mu, s: ((z - mu) ** 2 / s**2 - 1) / 2  # noqa: E731
    # the issue's: the log is missing (grad q instead of grad log q), joint or per-coordinate density
    for joint in (True, False):
        _fails("04.score_function", make_score(score_mu=lambda z, mu, s: density(z, mu, s, joint) * s_mu(z, mu, s),
                                               score_lv=lambda z, mu, s: density(z, mu, s, joint) * s_lv(z, mu, s)),
               "log is missing")

    def grad_q_autograd(f, mu, logvar, n_samples):
        q = td.Normal(mu, (logvar / 2).exp())
        z = q.sample((n_samples,))
        return torch.autograd.grad((f(z).detach() * q.log_prob(z).sum(-1).exp()).mean(), (mu, logvar))

    _fails("04.score_function", grad_q_autograd, "log is missing")
    _fails("04.score_function", make_score(score_mu=lambda z, mu, s: td.Normal(mu, s).log_prob(z),
                                           score_lv=lambda z, mu, s: td.Normal(mu, s).log_prob(z)), "log q(z)")
    _fails("04.score_function", make_score(score_mu=lambda z, mu, s: (mu - z) / s**2,
                                           score_lv=lambda z, mu, s: (1 - (z - mu) ** 2 / s**2) / 2),
           "sign is flipped")
    _fails("04.score_function", make_score(score_lv=lambda z, mu, s: (z - mu) ** 2 / s**2 / 2), "-1/2 forgotten")
    # the log sigma score where the logvar one belongs: the 1/2 missing
    _fails("04.score_function", make_score(score_lv=lambda z, mu, s: (z - mu) ** 2 / s**2 - 1), "1/2 missing",
           "log sigma")
    _fails("04.score_function", make_score(score_mu=lambda z, mu, s: (z - mu) / s,
                                           score_lv=lambda z, mu, s: ((z - mu) ** 2 / s - 1) / 2), "sigma^2")
    _fails("04.score_function", make_score(score_mu=lambda z, mu, s: (z - mu) / s), "sigma^2")
    _fails("04.score_function", make_score(score_mu=lambda z, mu, s: z - mu), "1 / sigma^2")
    _fails("04.score_function", make_score(score_lv=lambda z, mu, s: 2 * s_lv(z, mu, s) / s), "with respect to sigma")
    _fails("04.score_function", make_score(score_lv=lambda z, mu, s: s_lv(z, mu, s) / s**2),
           "with respect to the variance")
    _fails("04.score_function", make_score(weight=lambda fz, z: torch.ones_like(fz)), "f(z) forgotten")
    _fails("04.score_function", make_score(reduce=lambda t: t.sum(0)), "summed")
    _fails("04.score_function", good_reparam, "pathwise")

    def not_detached(f, mu, logvar, n_samples):
        q = td.Normal(mu, (logvar / 2).exp())
        z = q.rsample((n_samples,))
        return torch.autograd.grad((f(z).detach() * q.log_prob(z).sum(-1)).mean(), (mu, logvar))

    _fails("04.score_function", not_detached, "not detached")


def test_sampling_mistakes():
    for exercise_id, est in (("04.score_function", lambda s: make_score(sample_fn=s)),
                             ("04.baseline", lambda s: make_score(sample_fn=s, weight=lambda fz, z: fz - loo(fz)))):
        _fails(exercise_id, est(lambda m, lv, n: sample(m, lv, n, std=lambda t: t)), "std = logvar")
        # logvar taken for log sigma: the 1/2 missing, the variance used as the standard deviation
        _fails(exercise_id, est(lambda m, lv, n: sample(m, lv, n, std=torch.exp)), "1/2 missing", "variance used")
        _fails(exercise_id, est(lambda m, lv, n: sample(m, lv, n, std=lambda t: torch.exp(t / 4))),
               "square root taken twice")
        _fails(exercise_id, est(lambda m, ls, n: sample(m, ls, n, std=torch.ones_like)), "not scaled")
        _fails(exercise_id, est(lambda m, ls, n: sample(m, ls, n, shift=False)), "mu not added")
        _fails(exercise_id, est(lambda m, ls, n: sample(m, ls, n, shared=True)), "same noise for every sample")
        _fails(exercise_id, est(lambda m, ls, n: m + (ls / 2).exp() * torch.randn(n, 1, dtype=m.dtype)),
               "every coordinate")
        _fails(exercise_id, est(lambda m, ls, n: sample(m, ls, 1).expand(n, -1).clone()), "same noise")
        _fails(exercise_id, est(lambda m, ls, n: sample(m, ls, 1)), "one sample only")
        _fails(exercise_id, est(lambda m, ls, n: sample(m, ls, 1000)), "evaluated on 1000 samples")
        _fails(exercise_id, est(lambda m, ls, n: sample(m, ls, n).double()), "dtype")
        _fails(exercise_id, est(lambda m, ls, n: sample(m, ls, n) ** 2), "do not look like draws")


def reparam_with(*, z_fn=None, reduce="mean", wrt_sigma=False, wrt_var=False, swap=False):
    def estimator(f, mu, logvar, n_samples):
        eps = noise(mu, n_samples)
        sigma = (logvar / 2).exp()
        if wrt_sigma:
            sigma = sigma.detach().requires_grad_()
        var = sigma**2
        if wrt_var:
            var = var.detach().requires_grad_()
            sigma = var.sqrt()
        z = mu + sigma * eps if z_fn is None else z_fn(mu, logvar, eps)
        loss = f(z).mean() if reduce == "mean" else f(z).sum()
        g = torch.autograd.grad(loss, (mu, sigma if wrt_sigma else var if wrt_var else logvar))
        return g[::-1] if swap else g
    return estimator


def test_reparam_mistakes():
    # the issue's: the sample is detached, in every way of detaching it
    _fails("04.reparam", reparam_with(z_fn=lambda m, lv, e: (m + (lv / 2).exp() * e).detach()), "detached")
    _fails("04.reparam", reparam_with(z_fn=lambda m, lv, e: m.detach() + (lv / 2).exp().detach() * e), "detached")
    _fails("04.reparam", reparam_with(z_fn=lambda m, lv, e: m.data + (lv.data / 2).exp() * e), "detached")

    def with_sample(f, mu, logvar, n_samples):            # sample() instead of rsample()
        z = td.Normal(mu, (logvar / 2).exp()).sample((n_samples,))
        return torch.autograd.grad(f(z).mean(), (mu, logvar), allow_unused=True)

    _fails("04.reparam", with_sample, "detached", "rsample")

    def under_no_grad(f, mu, logvar, n_samples):
        with torch.no_grad():
            z = mu + (logvar / 2).exp() * noise(mu, n_samples)
        f(z).mean()
        return torch.zeros_like(mu), torch.zeros_like(logvar)

    _fails("04.reparam", under_no_grad, "detached")
    _fails("04.reparam", reparam_with(z_fn=lambda m, lv, e: m + lv * e), "std = logvar")
    _fails("04.reparam", reparam_with(z_fn=lambda m, lv, e: m + lv.exp() * e), "1/2 missing", "variance used")
    _fails("04.reparam", reparam_with(reduce="sum"), "summed")
    _fails("04.reparam", reparam_with(wrt_sigma=True), "with respect to sigma")
    _fails("04.reparam", reparam_with(wrt_var=True), "with respect to the variance")

    def chain_rule_by_hand(f, mu, logvar, n_samples):     # dz/dlogvar written as sigma * eps: the 1/2 missing
        sigma, eps = (logvar.detach() / 2).exp(), noise(mu, n_samples)
        z = (mu.detach() + sigma * eps).requires_grad_()
        (dz,) = torch.autograd.grad(f(z).sum(), z)
        return dz.mean(0), (dz * sigma * eps).mean(0)

    _fails("04.reparam", chain_rule_by_hand, "1/2 missing in dz/dlogvar")
    _fails("04.reparam", reparam_with(swap=True), "swapped")
    _fails("04.reparam", reparam_with(z_fn=lambda m, lv, e: m + (lv / 2).exp() * e[:1].expand_as(e)), "same noise")
    _fails("04.reparam", good_score, "score-function estimator")

    def score_with_graph(f, mu, logvar, n_samples):   # the score-function estimator, samples not detached
        sigma = (logvar / 2).exp()
        z = mu + sigma * noise(mu, n_samples)
        fz = f(z)[:, None]
        return (fz * (z - mu) / sigma**2).mean(0), (fz * ((z - mu) ** 2 / sigma**2 - 1) / 2).mean(0)

    _fails("04.reparam", score_with_graph, "score-function estimator")
    _ok("04.score_function", score_with_graph)        # which is a correct answer to exercise 1

    def accumulates(f, mu, logvar, n_samples):
        z = mu + (logvar / 2).exp() * noise(mu, n_samples)
        f(z).mean().backward()
        return mu.grad, logvar.grad

    _fails("04.reparam", accumulates, "accumulated")


def test_baseline_mistakes():
    # the issue's: a baseline that depends on the sample (the mean of all the values includes f(z_i))
    _fails("04.baseline", make_score(weight=lambda fz, z: fz - fz.mean()), "depends on the sample")
    _fails("04.baseline", make_score(weight=lambda fz, z: fz - fz), "depends on the sample")
    _fails("04.baseline", make_score(weight=lambda fz, z: fz - (fz.sum() - fz) / fz.shape[0]), "n - 1")
    _fails("04.baseline", make_score(weight=lambda fz, z: fz + loo(fz)), "added")
    _fails("04.baseline", make_score(), "baseline is missing")
    _fails("04.baseline", make_score(weight=lambda fz, z: fz - loo(fz), reduce=lambda t: t.sum(0)), "summed")

    def from_score(f, mu, logvar, n_samples):
        with torch.no_grad():
            sigma = (logvar / 2).exp()
            z = mu + sigma * noise(mu, n_samples)
            fz = f(z)
            b = loo(fz)[:, None]
            return ((fz[:, None]) * ((z - mu) / sigma**2 - b)).mean(0), \
                (fz[:, None] * (((z - mu) ** 2 / sigma**2 - 1) / 2 - b)).mean(0)

    _fails("04.baseline", from_score, "subtracted from the score")
    _fails("04.baseline", make_score(weight=lambda fz, z: fz - loo(fz),
                                     score_mu=lambda z, mu, s: (mu - z) / s**2,
                                     score_lv=lambda z, mu, s: (1 - (z - mu) ** 2 / s**2) / 2), "sign is flipped")
    _fails("04.baseline", make_score(weight=lambda fz, z: fz - loo(fz),
                                     score_lv=lambda z, mu, s: (z - mu) ** 2 / s**2 - 1), "1/2 missing")


def test_variance_mistakes():
    def grads(estimator, f, mu, ls, n, r, which=0):
        return torch.stack([estimator(f, mu, ls, n)[which] for _ in range(r)])

    _fails("04.variance", lambda *a: grads(*a).std(0), "standard deviation")
    _fails("04.variance", lambda *a: grads(*a).var(0) / a[-1], "divided by n_repeats")
    _fails("04.variance", lambda *a: grads(*a).var(0) * a[4], "per-sample variance")
    _fails("04.variance", lambda *a: grads(*a).var(0) / a[4], "divided by n_samples")
    _fails("04.variance", lambda *a: (grads(*a).var(0) / a[-1]).sqrt(), "standard error")
    _fails("04.variance", lambda *a: grads(*a, which=1).var(0), "grad_logvar")
    _fails("04.variance", lambda *a: grads(*a).mean(0), "mean of the gradients")
    _fails("04.variance", lambda *a: (grads(*a) ** 2).mean(0), "second moment")
    _fails("04.variance", lambda *a: grads(*a).var(1), "one value per repeat")
    _fails("04.variance", lambda *a: grads(*a), "stacked gradients")
    _fails("04.variance", lambda e, f, mu, ls, n, r: grads(e, f, mu, ls, n, r - 1).var(0), "called")
    _fails("04.variance", lambda e, f, mu, ls, n, r: grads(e, f, mu, ls, r, r).var(0), "n_samples")
    _fails("04.variance", lambda e, f, mu, ls, n, r: grads(e, f, ls, mu, n, r).var(0), "mu you were given")
    _fails("04.variance", lambda e, f, mu, ls, n, r: grads(e, lambda z: f(z), mu, ls, n, r).var(0), "the f you")
    _fails("04.variance", lambda *a: torch.zeros(a[2].shape), "never called")

    def reseeds(estimator, f, mu, ls, n, r):
        out = []
        for _ in range(r):
            torch.manual_seed(0)
            out.append(estimator(f, mu, ls, n)[0])
        return torch.stack(out).var(0)

    _fails("04.variance", reseeds, "same gradient", "reseed")


def gumbel_with(*, noise_fn=lambda u: -torch.log(-torch.log(u)), combine=lambda lg, g, tau: (lg + g) / tau, dim=-1,
                hard_fn=None):
    def fn(logits, tau, u, hard=False):
        y = torch.softmax(combine(logits, noise_fn(u), tau), dim=dim)
        if hard:
            y_hard = torch.nn.functional.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
            return hard_fn(y_hard, y, logits) if hard_fn else y_hard - y.detach() + y
        return y
    return fn


def test_gumbel_softmax_mistakes():
    _fails("04.gumbel_softmax", gumbel_with(noise_fn=lambda u: -torch.log(u)), "exponential noise")
    _fails("04.gumbel_softmax", gumbel_with(noise_fn=lambda u: torch.log(-torch.log(u))), "added instead of subtracted")
    _fails("04.gumbel_softmax", gumbel_with(combine=lambda lg, g, tau: (lg + g) * tau), "tau multiplies")
    _fails("04.gumbel_softmax", gumbel_with(combine=lambda lg, g, tau: lg + g), "tau forgotten")
    _fails("04.gumbel_softmax", gumbel_with(combine=lambda lg, g, tau: lg / tau + g), "only the logits")
    _fails("04.gumbel_softmax", gumbel_with(combine=lambda lg, g, tau: lg / tau), "noise forgotten")
    _fails("04.gumbel_softmax", gumbel_with(dim=0), "wrong dimension")
    _fails("04.gumbel_softmax", lambda lg, tau, u, hard=False: torch.log(good_gumbel(lg, tau, u)), "log_softmax")
    _fails("04.gumbel_softmax", lambda lg, tau, u, hard=False: good_gumbel(lg, tau, u, hard=True), "one-hot")
    # hard=True
    _fails("04.gumbel_softmax", gumbel_with(hard_fn=lambda h, y, lg: y), "returns the soft sample")
    _fails("04.gumbel_softmax", gumbel_with(hard_fn=lambda h, y, lg: h), "straight-through", "no gradient")
    _fails("04.gumbel_softmax", gumbel_with(hard_fn=lambda h, y, lg: h + 0 * y), "no gradient")
    _fails("04.gumbel_softmax", gumbel_with(hard_fn=lambda h, y, lg: h + y.detach() - y), "wrong sign")
    _fails("04.gumbel_softmax", gumbel_with(hard_fn=lambda h, y, lg: torch.nn.functional.one_hot(
        lg.argmax(-1), lg.shape[-1]).to(y.dtype) - y.detach() + y), "without the noise")
    _fails("04.gumbel_softmax", gumbel_with(hard_fn=lambda h, y, lg: h.long()), "dtype")


# ---------------------------------------------------------------------------------------------- bad answers
def _not_implemented(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("exercise_id", IDS)
def test_bad_answers_are_failures_not_crashes(exercise_id):
    _fails(exercise_id, _not_implemented, "not implemented")
    _fails(exercise_id, lambda *a, **k: 1 / 0, "ZeroDivisionError")
    _fails(exercise_id, lambda *a, **k: None, "")
    _fails(exercise_id, lambda *a, **k: "a string", "")
    _fails(exercise_id, lambda *a, **k: (float("nan"),) * 2, "")
    _fails(exercise_id, "not a function", "expected a function")
    _fails(exercise_id, 42, "expected a function")


def test_wrong_type_shape_dtype_nan_are_named():
    def per_sample(f, mu, logvar, n):
        est = make_score(reduce=lambda t: t)
        return est(f, mu, logvar, n)

    _fails("04.score_function", lambda *a: good_score(*a)[0], "single tensor")
    _fails("04.score_function", lambda *a: (good_score(*a)[0],), "tuple")
    _fails("04.score_function", per_sample, "per-sample")
    _fails("04.score_function", make_score(reduce=lambda t: t.mean()), "one value per coordinate")
    _fails("04.score_function", lambda *a: tuple(g.numpy() for g in good_score(*a)), "torch.Tensor")
    _fails("04.score_function", lambda *a: tuple(g * float("nan") for g in good_score(*a)), "NaN")
    _fails("04.score_function", lambda *a: tuple(g.double() if g.dtype == torch.float32 else g.float()
                                                 for g in good_score(*a)), "dtype")
    _fails("04.reparam", lambda *a: [g.tolist() for g in good_reparam(*a)], "torch.Tensor")
    _fails("04.reparam", lambda *a: tuple(g[None] for g in good_reparam(*a)), "shape")
    _fails("04.baseline", lambda *a: None, "")
    _fails("04.variance", lambda *a: good_variance(*a).numpy(), "torch.Tensor")
    _fails("04.gumbel_softmax", lambda lg, tau, u, hard=False: good_gumbel(lg, tau, u, hard).double()
           if lg.dtype == torch.float32 else good_gumbel(lg, tau, u, hard).float(), "dtype")
    _fails("04.gumbel_softmax", lambda lg, tau, u, hard=False: good_gumbel(lg, tau, u, hard)[..., :-1], "shape")
    _fails("04.gumbel_softmax", lambda lg, tau, u, hard=False: good_gumbel(lg, tau, u, hard) * float("nan"), "NaN")
    # f called the wrong way round: the check's f says what it expects
    _fails("04.score_function", lambda f, mu, ls, n: f(torch.randn(mu.shape[0], n + 1, dtype=mu.dtype)),
           "shape (n,")
    _fails("04.score_function", lambda f, mu, ls, n: f([0.0]), "f takes a tensor")


def test_verdict_is_one_stable_line(capsys):
    check("04.score_function", good_score)
    assert capsys.readouterr().out == (
        "[04.score_function] PASSED: its samples look like independent draws of N(mu, sigma^2), fresh at every call, "
        "and it matches the estimator on those samples, on 6 random Gaussians; within 5 standard errors of the exact "
        "gradient on the 6 with n_samples >= 400\n")
    check("04.reparam", reparam_func)                 # f inside torch.func: its samples are tested all the same
    out = capsys.readouterr().out
    assert out.startswith("[04.reparam] PASSED: its samples look like independent draws") and "not tested" not in out
    check("04.gumbel_softmax", _not_implemented)
    assert capsys.readouterr().out.startswith("[04.gumbel_softmax] FAILED: not implemented yet")


def test_calls_the_recorder_cannot_unwrap_leave_the_samples_untested_and_say_so(monkeypatch, capsys):
    """The fallback, where the private functorch API fails: the z-test alone runs, and the verdict says so."""
    def broken(t):
        raise RuntimeError("the private functorch API changed")

    monkeypatch.setattr(kit, "_unwrap_functorch", broken)
    check("04.reparam", reparam_func)
    out = capsys.readouterr().out
    assert out.startswith("[04.reparam] PASSED: fresh at every call") and "so its samples were not tested" in out
    check("04.reparam", good_reparam)                 # f called outside torch.func: recorded as before
    assert "not tested" not in capsys.readouterr().out


def test_checks_do_not_disturb_the_random_state():
    torch.manual_seed(123)
    expected = torch.randn(3)
    torch.manual_seed(123)
    for exercise_id, fn in zip(IDS, (good_score, good_reparam, good_variance, good_baseline, good_gumbel),
                               strict=True):
        check(exercise_id, fn, verbose=False)
    assert torch.equal(torch.randn(3), expected)


def test_verdicts_do_not_depend_on_the_notebook_random_state():
    for seed in (0, 1):
        torch.manual_seed(seed)
        r = check("04.reparam", good_reparam, verbose=False)
        assert r.passed


def test_many_correct_sample_draws_pass():
    """A correct answer passes whatever samples it draws: 6 different streams (the statistical tests
    allow 5 standard errors, so a false failure is a one-in-a-million event per coordinate)."""
    for k in range(6):
        def shifted(f, mu, logvar, n, k=k):
            torch.randn(k + 1)                        # consume a different amount of the stream first
            return good_score(f, mu, logvar, n)

        _ok("04.score_function", shifted)


def test_answers_that_change_their_inputs_in_place_fail():
    def in_place(f, mu, logvar, n):
        out = good_score(f, mu, logvar, n)
        with torch.no_grad():
            mu.mul_(3)
            logvar.zero_()
        return out

    _fails("04.score_function", in_place, "changed its input `mu` in place")

    def in_place_u(logits, tau, u, hard=False):
        y = good_gumbel(logits, tau, u, hard)
        u.fill_(0.5)
        return y

    _fails("04.gumbel_softmax", in_place_u, "changed its input `u` in place")


# ---------------------------------------------------------------------------------------------- hostile answers
# wrong answers a student could write that are not in the catalogue: each must fail
def score_two_draws(f, mu, logvar, n_samples):
    """f evaluated on one draw, the score on another: the two must be the same samples."""
    with torch.no_grad():
        sigma = (logvar / 2).exp()
        fz = f(sample(mu, logvar, n_samples))[:, None]
        z = sample(mu, logvar, n_samples)
        return (fz * (z - mu) / sigma**2).mean(0), (fz * ((z - mu) ** 2 / sigma**2 - 1) / 2).mean(0)


def score_reseeds(f, mu, logvar, n_samples):
    """reseeds inside the function: the same 'random' estimate at every call."""
    torch.manual_seed(0)
    return good_score(f, mu, logvar, n_samples)


def reparam_mu_only(f, mu, logvar, n_samples):
    """differentiates with respect to mu only, and returns zeros for logvar."""
    z = mu + (logvar / 2).exp().detach() * noise(mu, n_samples)
    (g,) = torch.autograd.grad(f(z).mean(), mu)
    return g, torch.zeros_like(logvar)


def reparam_uniform(f, mu, logvar, n_samples):
    """torch.rand where torch.randn belongs."""
    eps = torch.rand(n_samples, mu.shape[0], dtype=mu.dtype, device=mu.device)
    return torch.autograd.grad(f(mu + (logvar / 2).exp() * eps).mean(), (mu, logvar))


def baseline_precedence(f, mu, logvar, n_samples):
    """(sum - f) / n - 1: the parentheses around n - 1 forgotten."""
    return make_score(weight=lambda fz, z: fz - ((fz.sum() - fz) / fz.shape[0] - 1))(f, mu, logvar, n_samples)


def variance_of_sum(estimator, f, mu, logvar, n_samples, n_repeats):
    """the variance of grad_mu + grad_logvar, not of grad_mu."""
    return torch.stack([sum(estimator(f, mu, logvar, n_samples)) for _ in range(n_repeats)]).var(0)


def gumbel_round(logits, tau, u, hard=False):
    """hard=True by rounding y: all zeros in a row whose largest entry is below 1/2."""
    y = good_gumbel(logits, tau, u)
    return (torch.round(y) - y).detach() + y if hard else y


def _callers_tensors(like, exclude):
    """Every tensor shaped like ``like`` in the callers' frames (locals, and their objects' attributes), except
    ``exclude``: what an answer that tries to copy the expected value would find."""
    found, frame = [], sys._getframe(2)
    while frame is not None:
        for value in list(frame.f_locals.values()):
            for t in [value, *(vars(value).values() if hasattr(value, "__dict__") else [])]:
                if isinstance(t, torch.Tensor) and t.shape == like.shape and t.dtype == like.dtype \
                        and all(t is not e for e in exclude):
                    found.append(t.detach().clone())
        frame = frame.f_back
    return found


def score_from_frames(f, mu, logvar, n_samples):
    """draws its samples like a correct answer, then returns tensors found in the check's frames."""
    good_score(f, mu, logvar, n_samples)
    found = _callers_tensors(mu, (mu, logvar)) + [torch.zeros_like(mu)] * 2
    return found[0], found[1]


def gumbel_from_frames(logits, tau, u, hard=False):
    """returns a tensor found in the check's frames (the expected y, if it were there), else uniform weights."""
    found = _callers_tensors(logits, (logits, u))
    return found[0] if found else torch.full_like(logits, 1 / logits.shape[-1])


def reparam_mutates(f, mu, logvar, n_samples):
    """a correct estimate, then logvar clamped in place (a 'safety' step that changes the caller's tensor)."""
    out = good_reparam(f, mu, logvar, n_samples)
    with torch.no_grad():
        logvar.clamp_(min=0.0)
    return out


@pytest.mark.parametrize("exercise_id, fn, words", [
    ("04.score_function", score_two_draws, ["grad_mu differs"]),
    ("04.score_function", score_reseeds, ["same noise at every call"]),
    ("04.score_function", score_from_frames, []),
    ("04.reparam", reparam_mu_only, ["grad_logvar differs"]),
    ("04.reparam", reparam_uniform, ["uniform noise"]),
    ("04.reparam", reparam_mutates, ["changed its input `logvar` in place"]),
    ("04.baseline", baseline_precedence, ["differs"]),
    ("04.variance", variance_of_sum, ["the variance differs"]),
    ("04.gumbel_softmax", gumbel_round, ["hard=True", "differs"]),
    ("04.gumbel_softmax", gumbel_from_frames, []),
])
def test_hostile_wrong_answers_fail(exercise_id, fn, words):
    _fails(exercise_id, fn, *words)


# correct answers written differently from the reference: each must pass
def score_vmap(f, mu, logvar, n_samples):
    """the scores by torch.func.vmap of torch.func.grad of log q (f itself is evaluated outside torch.func)."""
    mu0, lv0 = mu.detach(), logvar.detach()
    z = td.Normal(mu0, (lv0 / 2).exp()).sample((n_samples,))
    fz = f(z)

    def log_q(m, v, zi):
        return td.Normal(m, (v / 2).exp()).log_prob(zi).sum()

    s_mu, s_lv = torch.func.vmap(torch.func.grad(log_q, argnums=(0, 1)), in_dims=(None, None, 0))(mu0, lv0, z)
    return (fz[:, None] * s_mu).mean(0), (fz[:, None] * s_lv).mean(0)


def score_f_in_vmap(f, mu, logvar, n_samples):
    """f evaluated on one sample at a time, f(z_i[None]), under torch.func.vmap: recorded as the whole batch."""
    with torch.no_grad():
        sigma = (logvar / 2).exp()
        z = mu + sigma * noise(mu, n_samples)
        fz = torch.func.vmap(lambda r: f(r[None])[0])(z)[:, None]
        u = (z - mu) / sigma
        return (fz * u / sigma).mean(0), (fz * (u**2 - 1) / 2).mean(0)


def reparam_vmap_of_grad(f, mu, logvar, n_samples):
    """per-sample gradients by torch.func.vmap of torch.func.grad, averaged."""
    per_sample = torch.func.grad(lambda m, v, e: f((m + (v / 2).exp() * e)[None])[0], argnums=(0, 1))
    g_mu, g_ls = torch.func.vmap(per_sample, in_dims=(None, None, 0))(mu.detach(), logvar.detach(),
                                                                       noise(mu, n_samples))
    return g_mu.mean(0), g_ls.mean(0)


def reparam_autograd_through_vmap(f, mu, logvar, n_samples):
    """f vmapped over the samples, ordinary autograd through it: the samples under the batch carry the graph."""
    z = mu + (logvar / 2).exp() * noise(mu, n_samples)
    return torch.autograd.grad(torch.func.vmap(lambda r: f(r[None])[0])(z).mean(), (mu, logvar))


def reparam_own_copies(f, mu, logvar, n_samples):
    """.backward() on fresh copies of the leaves (nothing accumulates in the caller's .grad)."""
    m, s = mu.detach().clone().requires_grad_(), logvar.detach().clone().requires_grad_()
    z = td.Independent(td.Normal(m, (s / 2).exp()), 1).rsample((n_samples,))
    f(z).mean().backward()
    return m.grad, s.grad


def baseline_matrix(f, mu, logvar, n_samples):
    """the leave-one-out means as a matrix product (ones - eye) @ f / (n - 1)."""
    def loo_matrix(fz):
        n = fz.shape[0]
        return (torch.ones(n, n, dtype=fz.dtype, device=fz.device) - torch.eye(n, dtype=fz.dtype, device=fz.device)) \
            @ fz / (n - 1)

    return make_score(weight=lambda fz, z: fz - loo_matrix(fz))(f, mu, logvar, n_samples)


def variance_welford(estimator, f, mu, logvar, n_samples, n_repeats):
    """Welford's running mean and sum of squares, one repeat at a time."""
    mean, m2 = 0.0, 0.0
    for k in range(1, n_repeats + 1):
        g = estimator(f, mu, logvar, n_samples)[0]
        delta = g - mean
        mean = mean + delta / k
        m2 = m2 + delta * (g - mean)
    return m2 / (n_repeats - 1)


def gumbel_scatter(logits, tau, u, hard=False):
    """F.softmax, and the one-hot vector by scatter, straight-through written as (y_hard - y).detach() + y."""
    y = torch.nn.functional.softmax((logits + -(-u.log()).log()) / tau, dim=-1)
    if not hard:
        return y
    y_hard = torch.zeros_like(y).scatter(-1, y.argmax(-1, keepdim=True), 1.0)
    return (y_hard - y).detach() + y


@pytest.mark.parametrize("exercise_id, fn", [
    ("04.score_function", score_vmap), ("04.score_function", score_f_in_vmap),
    ("04.reparam", reparam_vmap_of_grad), ("04.reparam", reparam_autograd_through_vmap),
    ("04.reparam", reparam_own_copies), ("04.baseline", baseline_matrix),
    ("04.variance", variance_welford), ("04.gumbel_softmax", gumbel_scatter),
])
def test_hostile_correct_answers_pass(exercise_id, fn):
    _ok(exercise_id, fn)


def test_the_gumbel_reference_is_the_package_s():
    """The check's reference, given the noise, is coursepkg.estimators.gumbel_softmax with the generator of it."""
    logits = torch.randn(5, 4, dtype=torch.float64)
    u = torch.rand(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for hard in (False, True):
        expected = E.gumbel_softmax(logits, 0.7, hard=hard, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(C._gumbel(logits, 0.7, u, hard), expected, rtol=1e-12, atol=1e-12)
