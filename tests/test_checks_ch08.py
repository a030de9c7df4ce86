"""Chapter 08 checks (the closed forms of a DDPM): the solutions pass; a blank exercise fails; every catalogued
mistake, written here as the wrong code a student would write, fails with its name; wrong answers the catalogue
does not name fail all the same; correct answers written unlike the reference pass; hostile answers fail; and the
checks' references agree with :mod:`coursepkg.diffusion` (the KL of the ELBO term, Tweedie's formula on a diffused
Gaussian mixture)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import distributions as td

from coursepkg import diffusion as D
from coursepkg import gmm as G
from coursepkg.diffusion import exact
from coursepkg.grading import check, get_check
from coursepkg.grading.checks import ch08_ddpm_derivations as C
from coursepkg.grading.kit import Case

from .helpers import check_fails, check_passes

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py
F64 = torch.float64
IDS = ["08.q_sample", "08.q_step", "08.q_posterior", "08.x0_from_eps", "08.eps_from_x0", "08.elbo_term",
       "08.tweedie"]


def rows(x):
    """The shape (N, 1, ..., 1) that a per-row value takes to broadcast against x."""
    return (-1,) + (1,) * (x.dim() - 1)


# ---------------------------------------------------------------------------------------------- the solutions
# as in solutions/08_ddpm_derivations.ipynb
def q_sample(x0, t, eps, alpha_bar):
    ab = alpha_bar[t].view(rows(x0))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def q_step(x_prev, t, eps, betas):
    beta = betas[t].view(rows(x_prev))
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * eps


def q_posterior(x0, xt, t, betas, alpha_bar):
    beta = betas[t].view(rows(x0))
    ab, ab_prev = alpha_bar[t].view(rows(x0)), alpha_bar[t - 1].view(rows(x0))
    mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * xt
    return mean, (1 - ab_prev) / (1 - ab) * beta


def x0_from_eps(xt, t, eps, alpha_bar):
    ab = alpha_bar[t].view(rows(xt))
    return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(xt, t, x0, alpha_bar):
    ab = alpha_bar[t].view(rows(xt))
    return (xt - ab.sqrt() * x0) / (1 - ab).sqrt()


def elbo_term(eps, eps_theta, t, betas, alpha_bar):
    beta, ab, ab_prev = betas[t], alpha_bar[t], alpha_bar[t - 1]          # (N,)
    var = (1 - ab_prev) / (1 - ab) * beta                                  # beta-tilde_t
    weight = beta**2 / (2 * var * (1 - beta) * (1 - ab))
    return weight * ((eps - eps_theta) ** 2).flatten(1).sum(1)


def posterior_mean_x0(xt, t, score, alpha_bar):
    ab = alpha_bar[t].view(rows(xt))
    return (xt + (1 - ab) * score) / ab.sqrt()


SOLUTIONS = dict(zip(IDS, [q_sample, q_step, q_posterior, x0_from_eps, eps_from_x0, elbo_term, posterior_mean_x0],
                     strict=True))


@pytest.mark.parametrize("exercise_id", IDS)
def test_the_solutions_pass(exercise_id):
    check_passes(exercise_id, SOLUTIONS[exercise_id])


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_blank_exercise_fails(exercise_id):
    def blank(*args, **kwargs):
        raise NotImplementedError()
    check_fails(exercise_id, blank, "not implemented")


# ---------------------------------------------------------------------------------------------- the inputs
def test_the_inputs_exercise_the_indexing_convention():
    """Every trial's steps include 1 and T (2 and T for the ELBO term), T changes from trial to trial, alpha_t and
    alpha_bar_t differ, and there is an (N, D) batch with N == D and an image batch with W == N."""
    seen_T = set()
    for spec in C.SPECS:
        shape, T = spec
        case = Case(torch.Generator().manual_seed(0), torch.float32, torch.device("cpu"))
        args = C._posterior_inputs(case, spec)
        t, b, ab = args["t"], args["betas"], args["alpha_bar"]
        assert b.shape == ab.shape == (T + 1,) and b[0] == 0 and ab[0] == 1 and b.dtype == torch.float32
        assert t.dtype == torch.int64 and t.shape == (shape[0],) and {1, T} <= set(t.tolist())
        assert set(C._elbo_inputs(case, spec)["t"].tolist()) >= {2, T} and min(C._elbo_inputs(case, spec)["t"]) == 2
        assert ((1 - b[2:]) - ab[2:]).abs().min() > 0.01                    # alpha_t is not alpha_bar_t
        assert torch.allclose(ab.double(), torch.cumprod(1 - b.double(), 0), rtol=1e-6)
        seen_T.add(T)
    assert len(seen_T) == len(C.SPECS)
    shapes = [s for s, _ in C.SPECS]
    assert any(len(s) == 2 and s[0] == s[1] for s in shapes)
    assert any(len(s) == 4 and s[-1] == s[0] for s in shapes)


def test_the_references_agree_with_the_package_and_the_exact_mixture():
    """The ELBO term is the KL between q(x_{t-1} | x_t, x_0) and the model's reverse step (mean written with its
    noise prediction, variance beta-tilde); Tweedie's formula with the exact score of a diffused mixture is the
    exact E[x_0 | x_t]."""
    case = Case(torch.Generator().manual_seed(1), F64, torch.device("cpu"))
    betas, alpha_bar = C._schedule(case, 9)
    sched = D.Schedule(betas)
    x0, eps, eps_theta = (torch.randn(5, 4, 3, generator=case.gen, dtype=F64) for _ in range(3))
    t = torch.tensor([2, 3, 5, 8, 9])
    xt = D.q_sample(x0, t, eps, sched)
    mu_q, var_q = D.q_posterior(x0, xt, t, sched)
    mu_p = D.mean_from_eps(xt, t, eps_theta, sched)
    assert torch.allclose(D.mean_from_eps(xt, t, eps, sched), mu_q, atol=1e-12)   # the eps form of the mean
    logvar = var_q.log().expand_as(x0).flatten(1)
    kl = torch.stack([td.kl_divergence(td.Normal(a, s), td.Normal(b, s)).sum()
                      for a, b, s in zip(mu_q.flatten(1), mu_p.flatten(1), (logvar / 2).exp(), strict=True)])
    assert torch.allclose(C._elbo_term(eps, eps_theta, t, betas, alpha_bar), kl, rtol=1e-10)
    assert torch.allclose(elbo_term(eps, eps_theta, t, betas, alpha_bar), kl, rtol=1e-10)

    data = G.GMM(torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[-1.0, 0.5], [1.5, -0.5]], dtype=F64),
                 torch.stack([0.2 * torch.eye(2, dtype=F64), torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=F64)]))
    for step in (1, 4, 9):
        xt = exact.marginal(data, step, sched).sample(50, generator=case.gen).x
        score = exact.score(data, xt, step, sched)
        ts = torch.full((50,), step)
        expected = exact.posterior_mean_x0(data, xt, step, sched)
        assert torch.allclose(C._tweedie(xt, ts, score, sched.alpha_bar), expected, atol=1e-12)
        assert torch.allclose(posterior_mean_x0(xt, ts, score, sched.alpha_bar), expected, atol=1e-12)


# ---------------------------------------------------------------------------------------------- catalogued mistakes
def qs_no_sqrt_ab(x0, t, eps, ab):
    a = ab[t].view(rows(x0))
    return a * x0 + (1 - a).sqrt() * eps


def qs_no_sqrt_noise(x0, t, eps, ab):
    a = ab[t].view(rows(x0))
    return a.sqrt() * x0 + (1 - a) * eps


def qs_no_sqrt_at_all(x0, t, eps, ab):
    a = ab[t].view(rows(x0))
    return a * x0 + (1 - a) * eps


def qs_one_minus_sqrt(x0, t, eps, ab):
    a = ab[t].view(rows(x0)).sqrt()
    return a * x0 + (1 - a) * eps


def qs_not_shrunk(x0, t, eps, ab):
    return x0 + (1 - ab[t].view(rows(x0))).sqrt() * eps


def qs_off_by_one(x0, t, eps, ab):              # the diffusers habit: timestep k = t - 1
    return q_sample(x0, t - 1, eps, ab)


def qs_swapped(x0, t, eps, ab):
    return q_sample(eps, t, x0, ab)


def st_beta_scale(x, t, eps, b):
    beta = b[t].view(rows(x))
    return (1 - beta).sqrt() * x + beta * eps


def st_no_sqrt_signal(x, t, eps, b):
    beta = b[t].view(rows(x))
    return (1 - beta) * x + beta.sqrt() * eps


def st_one_minus_sqrt(x, t, eps, b):
    beta = b[t].view(rows(x)).sqrt()
    return (1 - beta) * x + beta * eps


def st_exploding(x, t, eps, b):
    return x + b[t].view(rows(x)).sqrt() * eps


def st_alpha_bar(x, t, eps, b):                 # the marginal's jump, from x_{t-1}
    return q_sample(x, t, eps, torch.cumprod(1 - b, 0))


def st_off_by_one(x, t, eps, b):
    return q_step(x, t - 1, eps, b)


def st_swapped(x, t, eps, b):
    return q_step(eps, t, x, b)


def _posterior_with(x0, xt, t, b, ab, c0, ct, var):
    """A posterior built from coefficient functions of (ab_t, ab_prev, beta), each (N, 1, ..., 1)."""
    beta, a, ap = b[t].view(rows(x0)), ab[t].view(rows(x0)), ab[t - 1].view(rows(x0))
    return c0(a, ap, beta) * x0 + ct(a, ap, beta) * xt, var(a, ap, beta)


def _right_c0(a, ap, beta):
    return ap.sqrt() * beta / (1 - a)


def _right_ct(a, ap, beta):
    return (1 - beta).sqrt() * (1 - ap) / (1 - a)


def _right_var(a, ap, beta):
    return (1 - ap) / (1 - a) * beta


def posterior(c0=_right_c0, ct=_right_ct, var=_right_var):
    return lambda x0, xt, t, b, ab: _posterior_with(x0, xt, t, b, ab, c0, ct, var)


def qp_zero_indexed(x0, xt, t, b, ab):          # every tensor read as if entry 0 were step 1
    beta, a, ap = b[t - 1].view(rows(x0)), ab[t - 1].view(rows(x0)), ab[t - 2].view(rows(x0))
    return _right_c0(a, ap, beta) * x0 + _right_ct(a, ap, beta) * xt, _right_var(a, ap, beta)


def qp_alpha_prev_in_x0(x0, xt, t, b, ab):      # sqrt(alpha_{t-1}) for sqrt(alpha_bar_{t-1})
    mean, var = q_posterior(x0, xt, t, b, ab)
    beta, a, ap = b[t].view(rows(x0)), ab[t].view(rows(x0)), ab[t - 1].view(rows(x0))
    return mean + ((1 - b[t - 1].view(rows(x0))).sqrt() - ap.sqrt()) * beta / (1 - a) * x0, var


def qp_mean_var_swapped_order(x0, xt, t, b, ab):
    mean, var = q_posterior(x0, xt, t, b, ab)
    return var, mean


def el_no_weight(eps, eps_theta, t, b, ab):
    return ((eps - eps_theta) ** 2).flatten(1).sum(1)


def _elbo_with(weight):
    """An ELBO term with the weight a function of (beta, alpha_bar_t, alpha_bar_{t-1}), each (N,)."""
    def answer(eps, eps_theta, t, b, ab):
        return weight(b[t], ab[t], ab[t - 1]) * ((eps - eps_theta) ** 2).flatten(1).sum(1)
    return answer


def _w(beta, ab, abp):
    return beta**2 / (2 * (1 - abp) / (1 - ab) * beta * (1 - beta) * (1 - ab))


def el_off_by_one(eps, eps_theta, t, b, ab):
    return elbo_term(eps, eps_theta, t - 1, b, ab)


def el_norm_not_squared(eps, eps_theta, t, b, ab):
    return _w(b[t], ab[t], ab[t - 1]) * (eps - eps_theta).flatten(1).norm(dim=1)


def tw_slide(xt, t, score, ab):                 # the lecture's slide: no division by sqrt(alpha_bar_t)
    return xt + (1 - ab[t].view(rows(xt))) * score


def tw_sign(xt, t, score, ab):
    return posterior_mean_x0(xt, t, -score, ab)


def tw_sqrt_variance(xt, t, score, ab):
    a = ab[t].view(rows(xt))
    return (xt + (1 - a).sqrt() * score) / a.sqrt()


def tw_divided_by_ab(xt, t, score, ab):
    a = ab[t].view(rows(xt))
    return (xt + (1 - a) * score) / a


def tw_multiplied(xt, t, score, ab):
    a = ab[t].view(rows(xt))
    return (xt + (1 - a) * score) * a.sqrt()


def tw_off_by_one(xt, t, score, ab):
    return posterior_mean_x0(xt, t - 1, score, ab)


def _conversion(signal_root, noise_root, sign=-1.0, divide=True, swap=False, shift=0):
    """x0_from_eps (or, swap=True, eps_from_x0) with its slips: (xt + sign * noise_root(.) other) / signal_root(.)."""
    def answer(xt, t, other, ab):
        a = ab[t - shift].view(rows(xt))
        sig, noi = (1 - a, a) if swap else (a, 1 - a)
        top = xt + sign * noise_root(noi) * other
        return top / signal_root(sig) if divide else top * signal_root(sig)
    return answer


def _same(v):
    return v


SQ = torch.sqrt
CATALOGUED = [
    ("08.q_sample", qs_no_sqrt_ab, "square root forgotten on alpha_bar_t"),
    ("08.q_sample", qs_no_sqrt_noise, "square root forgotten on 1 - alpha_bar_t"),
    ("08.q_sample", qs_no_sqrt_at_all, "both square roots forgotten"),
    ("08.q_sample", qs_one_minus_sqrt, "1 - sqrt(alpha_bar_t)"),
    ("08.q_sample", qs_not_shrunk, "the signal not shrunk"),
    ("08.q_sample", qs_off_by_one, "t off by one"),
    ("08.q_sample", qs_swapped, "x0 and eps swapped"),
    ("08.q_step", st_beta_scale, "beta_t instead of sqrt(beta_t)"),
    ("08.q_step", st_no_sqrt_signal, "square root forgotten on 1 - beta_t"),
    ("08.q_step", st_one_minus_sqrt, "1 - sqrt(beta_t)"),
    ("08.q_step", st_exploding, "the signal not shrunk"),
    ("08.q_step", st_alpha_bar, "alpha_bar_t where alpha_t belongs"),
    ("08.q_step", st_off_by_one, "t off by one"),
    ("08.q_step", st_swapped, "x_{t-1} and eps swapped"),
    ("08.q_posterior", posterior(ct=lambda a, ap, beta: a.sqrt() * (1 - ap) / (1 - a)),
     "alpha_bar_t where alpha_t belongs"),
    ("08.q_posterior", qp_alpha_prev_in_x0, "alpha_{t-1} where alpha_bar_{t-1} belongs"),
    ("08.q_posterior", posterior(c0=lambda a, ap, beta: ap * beta / (1 - a)),
     "square root forgotten on alpha_bar_{t-1}"),
    ("08.q_posterior", posterior(ct=lambda a, ap, beta: (1 - beta) * (1 - ap) / (1 - a)),
     "square root forgotten on alpha_t"),
    ("08.q_posterior", posterior(ct=lambda a, ap, beta: (1 - beta).sqrt() * (1 - a) / (1 - a)),
     "1 - alpha_bar_t where 1 - alpha_bar_{t-1} belongs (in the coefficient of x_t)"),
    ("08.q_posterior", posterior(var=lambda a, ap, beta: (1 - a) / (1 - a) * beta), "beta_t instead of beta-tilde_t"),
    ("08.q_posterior", posterior(var=lambda a, ap, beta: beta), "beta_t instead of beta-tilde_t"),
    ("08.q_posterior", posterior(var=lambda a, ap, beta: (1 - a) / (1 - ap) * beta), "the ratio upside down"),
    ("08.q_posterior", posterior(c0=lambda a, ap, beta: a.sqrt() * beta / (1 - a),
                                 ct=lambda a, ap, beta: (1 - beta).sqrt() * (1 - a) / (1 - a),
                                 var=lambda a, ap, beta: beta), "alpha_bar_t where alpha_bar_{t-1} belongs"),
    ("08.q_posterior", qp_zero_indexed, "indexed from 0"),
    ("08.q_posterior", posterior(c0=_right_ct, ct=_right_c0), "coefficients of x0 and x_t swapped"),
    ("08.x0_from_eps", _conversion(_same, SQ), "square root forgotten on alpha_bar_t"),
    ("08.x0_from_eps", _conversion(SQ, _same), "square root forgotten on 1 - alpha_bar_t"),
    ("08.x0_from_eps", _conversion(SQ, SQ, divide=False), "multiplied by sqrt(alpha_bar_t) instead of divided"),
    ("08.x0_from_eps", _conversion(lambda a: 1.0, SQ), "division by sqrt(alpha_bar_t) forgotten"),
    ("08.x0_from_eps", _conversion(SQ, SQ, sign=1.0), "noise added instead of subtracted"),
    ("08.x0_from_eps", _conversion(SQ, SQ, shift=1), "t off by one"),
    ("08.x0_from_eps", _conversion(SQ, SQ, swap=True), "x0 and eps swapped"),
    ("08.eps_from_x0", _conversion(_same, SQ, swap=True), "square root forgotten on 1 - alpha_bar_t"),
    ("08.eps_from_x0", _conversion(SQ, _same, swap=True), "square root forgotten on alpha_bar_t"),
    ("08.eps_from_x0", _conversion(SQ, SQ, swap=True, divide=False), "multiplied by sqrt(1 - alpha_bar_t)"),
    ("08.eps_from_x0", _conversion(lambda a: 1.0, SQ, swap=True), "division by sqrt(1 - alpha_bar_t) forgotten"),
    ("08.eps_from_x0", _conversion(SQ, SQ, swap=True, sign=1.0), "signal added instead of subtracted"),
    ("08.eps_from_x0", lambda xt, t, x0, ab: (ab[t].view(rows(xt)).sqrt() * x0 - xt)
     / (1 - ab[t].view(rows(xt))).sqrt(), "in the wrong order"),
    ("08.eps_from_x0", _conversion(SQ, SQ, swap=True, shift=1), "t off by one"),
    ("08.eps_from_x0", _conversion(SQ, SQ), "x0 and eps swapped"),
    ("08.elbo_term", el_no_weight, "the weight dropped"),
    ("08.elbo_term", _elbo_with(lambda beta, ab, abp: 1 / _w(beta, ab, abp)), "the weight inverted"),
    ("08.elbo_term", _elbo_with(lambda beta, ab, abp: beta**2 / (2 * beta * (1 - beta) * (1 - ab))),
     "beta_t instead of beta-tilde_t"),
    ("08.elbo_term", _elbo_with(lambda beta, ab, abp: 2 * _w(beta, ab, abp)), "the 1/2 of the Gaussian KL missing"),
    ("08.elbo_term", _elbo_with(lambda beta, ab, abp: beta**2 / (2 * (1 - abp) / (1 - ab) * beta * ab * (1 - ab))),
     "alpha_bar_t where alpha_t belongs"),
    ("08.elbo_term", _elbo_with(lambda beta, ab, abp: beta**2 / (2 * (1 - abp) / (1 - ab) * beta * (1 - beta)
                                                                 * (1 - (1 - beta)))),
     "alpha_t where alpha_bar_t belongs"),
    ("08.elbo_term", _elbo_with(lambda beta, ab, abp: beta / (2 * (1 - abp) / (1 - ab) * beta)
                                / ((1 - beta) * (1 - ab)).sqrt()), "coefficient of eps not squared"),
    ("08.elbo_term", _elbo_with(lambda beta, ab, abp: beta / (2 * (1 - abp) / (1 - ab) * beta * (1 - beta)
                                                              * (1 - ab))), "beta_t not squared"),
    ("08.elbo_term", el_norm_not_squared, "the norm not squared"),
    ("08.elbo_term", el_off_by_one, "indexed from 0"),
    ("08.tweedie", tw_slide, "division by sqrt(alpha_bar_t) dropped"),
    ("08.tweedie", tw_sign, "sign of the score term flipped"),
    ("08.tweedie", tw_sqrt_variance, "sqrt(1 - alpha_bar_t) where the variance"),
    ("08.tweedie", tw_divided_by_ab, "divided by alpha_bar_t instead of its square root"),
    ("08.tweedie", tw_multiplied, "multiplied by sqrt(alpha_bar_t) instead of divided"),
    ("08.tweedie", tw_off_by_one, "t off by one"),
]


@pytest.mark.parametrize("exercise_id, fn, words", CATALOGUED,
                         ids=[f"{i}-{k}" for k, (i, _, _) in enumerate(CATALOGUED)])
def test_catalogued_mistakes_fail_with_their_hint(exercise_id, fn, words):
    check_fails(exercise_id, fn, "likely mistake", words)


def test_every_catalogued_slip_is_written_as_a_student_mistake():
    """Each slip of the checks' catalogues is named by at least one student-written mistake above."""
    for exercise_id in IDS:
        names = {s.name for s in get_check(exercise_id).func.mistakes}
        covered = {n for n in names if any(w in n for i, _, w in CATALOGUED if i == exercise_id)}
        assert covered == names, f"{exercise_id}: no student-written mistake for {names - covered}"


# ---------------------------------------------------------------------------------------------- not catalogued
def qs_not_reshaped(x0, t, eps, ab):            # (N,) against (N, D): broadcasts along the columns when N == D
    return ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * eps


def qs_own_schedule(x0, t, eps, ab):            # T = 1000 and the linear schedule hard-coded
    betas = torch.cat([torch.zeros(1), torch.linspace(1e-4, 0.02, 1000)]).to(x0)
    return q_sample(x0, t, eps, torch.cumprod(1 - betas, 0))


def qs_reads_the_wrong_end(x0, t, eps, ab):     # alpha_bar read backwards, as if t counted down from T
    return q_sample(x0, ab.shape[0] - t, eps, ab)


def qp_cumprod_of_betas(x0, xt, t, b, ab):       # alpha_bar computed from the betas, as their product
    return q_posterior(x0, xt, t, b, torch.cumprod(b, 0))


def qp_std(x0, xt, t, b, ab):                    # the standard deviation returned as the variance
    mean, var = q_posterior(x0, xt, t, b, ab)
    return mean, var.sqrt()


def qp_clamped_prev(x0, xt, t, b, ab):           # t - 1 clamped to 1: alpha_bar_0 = 1 never read
    beta, a, ap = b[t].view(rows(x0)), ab[t].view(rows(x0)), ab[(t - 1).clamp(min=1)].view(rows(x0))
    return _right_c0(a, ap, beta) * x0 + _right_ct(a, ap, beta) * xt, _right_var(a, ap, beta)


def qp_var_per_entry(x0, xt, t, b, ab):
    mean, var = q_posterior(x0, xt, t, b, ab)
    return mean, var.expand_as(x0)


def qp_var_flat(x0, xt, t, b, ab):
    mean, var = q_posterior(x0, xt, t, b, ab)
    return mean, var.reshape(-1)


def el_mean_over_dims(eps, eps_theta, t, b, ab):
    return _w(b[t], ab[t], ab[t - 1]) * ((eps - eps_theta) ** 2).flatten(1).mean(1)


def el_cumprod_of_betas(eps, eps_theta, t, b, ab):
    return elbo_term(eps, eps_theta, t, b, torch.cumprod(b, 0))


def el_hard_coded_T(eps, eps_theta, t, b, ab):  # T = 10 hard-coded: the steps clamped into 2..10
    return elbo_term(eps, eps_theta, t.clamp(2, 10), b, ab)


def el_last_dim_only(eps, eps_theta, t, b, ab):
    return _w(b[t], ab[t], ab[t - 1]).view(rows(eps))[..., 0] * ((eps - eps_theta) ** 2).sum(-1)


def el_detached(eps, eps_theta, t, b, ab):
    return elbo_term(eps, eps_theta.detach(), t, b, ab)


def el_batch_mean(eps, eps_theta, t, b, ab):
    return elbo_term(eps, eps_theta, t, b, ab).mean()


def tw_not_reshaped(xt, t, score, ab):
    return (xt + (1 - ab[t]) * score) / ab[t].sqrt()


def x0_float32(xt, t, eps, ab):                  # a hard-coded float32 result
    return x0_from_eps(xt, t, eps, ab).float()


UNCATALOGUED = [
    ("08.q_sample", qs_not_reshaped, ()), ("08.q_sample", qs_own_schedule, ()),
    ("08.q_sample", qs_reads_the_wrong_end, ()),
    ("08.q_step", lambda x, t, eps, b: q_step(x, t, eps, torch.cumprod(b, 0)), ()),
    ("08.q_posterior", qp_cumprod_of_betas, ()), ("08.q_posterior", qp_std, ()),
    ("08.q_posterior", qp_clamped_prev, ()),
    ("08.q_posterior", qp_mean_var_swapped_order, ("(mean, var) in this order",)),
    ("08.q_posterior", qp_var_per_entry, ("one variance per row",)),
    ("08.q_posterior", qp_var_flat, ("(N, 1, ..., 1)",)),
    ("08.x0_from_eps", x0_float32, ("dtype",)),
    ("08.elbo_term", el_mean_over_dims, ()), ("08.elbo_term", el_cumprod_of_betas, ()),
    ("08.elbo_term", el_hard_coded_T, ()), ("08.elbo_term", el_last_dim_only, ("one value per row",)),
    ("08.elbo_term", el_detached, ("detached",)), ("08.elbo_term", el_batch_mean, ("one value per row",)),
    ("08.tweedie", tw_not_reshaped, ()),
]


@pytest.mark.parametrize("exercise_id, fn, words", UNCATALOGUED,
                         ids=[f"{i}-{k}" for k, (i, _, _) in enumerate(UNCATALOGUED)])
def test_uncatalogued_wrong_answers_fail(exercise_id, fn, words):
    r = check_fails(exercise_id, fn, *words)
    assert "could not evaluate" not in r.message, r.message


def test_a_wrong_broadcast_fails_silently_only_where_n_equals_d():
    """Left of shape (N,), alpha_bar[t] raises for most shapes: the (N, D) batch with N == D is the one where it
    silently multiplies columns, and the check fails it there too (its first trial)."""
    r = check("08.q_sample", qs_not_reshaped, verbose=False)
    assert not r.passed and "raised" not in r.message and "differs from the reference" in r.message, r.message


# ---------------------------------------------------------------------------------------------- written differently
def qs_none_index(x0, t, eps, ab):
    a = ab[t][(slice(None),) + (None,) * (x0.dim() - 1)]
    return torch.sqrt(a) * x0 + torch.sqrt(1 - a) * eps


def qs_einsum(x0, t, eps, ab):
    return torch.einsum("n,n...->n...", ab[t].sqrt(), x0) + torch.einsum("n,n...->n...", (1 - ab[t]).sqrt(), eps)


def qs_loop(x0, t, eps, ab):
    out = torch.empty_like(x0)
    for i in range(x0.shape[0]):
        a = ab[int(t[i])]
        out[i] = a.sqrt() * x0[i] + (1 - a).sqrt() * eps[i]
    return out


def qs_float64_inside(x0, t, eps, ab):          # float32 inputs computed in float64, cast back
    return q_sample(x0.double(), t, eps.double(), ab.double()).to(x0.dtype)


def st_addcmul(x, t, eps, b):
    beta = b[t].reshape(rows(x))
    return torch.addcmul(torch.sqrt(1 - beta) * x, beta.sqrt(), eps)


def st_via_alpha_bar_ratio(x, t, eps, b):       # alpha_t as a ratio of running products
    ab = torch.cumprod(1 - b, 0)
    alpha = (ab[t] / ab[t - 1]).view(rows(x))
    return alpha.sqrt() * x + (1 - alpha).sqrt() * eps


def qp_log_space(x0, xt, t, b, ab):             # alpha_bar as exp(cumsum(log alpha)), from the betas
    return q_posterior(x0, xt, t, b, torch.exp(torch.cumsum(torch.log1p(-b), 0)))


def qp_eps_form(x0, xt, t, b, ab):              # the mean written with the noise of (x_t, x_0)
    beta, a, ap = b[t].view(rows(x0)), ab[t].view(rows(x0)), ab[t - 1].view(rows(x0))
    eps = (xt - a.sqrt() * x0) / (1 - a).sqrt()
    return (xt - beta / (1 - a).sqrt() * eps) / (1 - beta).sqrt(), (1 - ap) / (1 - a) * beta


def qp_padded_prev(x0, xt, t, b, ab):           # diffusers' alpha_bar_prev: the tensor shifted by one, padded with 1
    ab_prev = F.pad(ab[:-1], (1, 0), value=1.0)
    beta, a, ap = b[t].view(rows(x0)), ab[t].view(rows(x0)), ab_prev[t].view(rows(x0))
    return _right_c0(a, ap, beta) * x0 + _right_ct(a, ap, beta) * xt, _right_var(a, ap, beta)


def x0_rsqrt(xt, t, eps, ab):
    a = ab[t].view(rows(xt))
    return torch.rsqrt(a) * xt - torch.sqrt(1 / a - 1) * eps


def eps_via_snr(xt, t, x0, ab):                 # eps = (x_t / sqrt(1 - ab)) - sqrt(snr) x0
    a = ab[t].view(rows(xt))
    return xt / (1 - a).sqrt() - (a / (1 - a)).sqrt() * x0


def el_snr(eps, eps_theta, t, b, ab):           # Kingma et al.: w = (SNR_{t-1} / SNR_t - 1) / 2
    snr = ab / (1 - ab)
    return 0.5 * (snr[t - 1] / snr[t] - 1) * (eps - eps_theta).pow(2).sum(dim=tuple(range(1, eps.dim())))


def el_distributions(eps, eps_theta, t, b, ab):  # the KL itself, of the two means written with the noise
    beta, a, ap = b[t].view(rows(eps)), ab[t].view(rows(eps)), ab[t - 1].view(rows(eps))
    coef = beta / ((1 - beta).sqrt() * (1 - a).sqrt())
    std = ((1 - ap) / (1 - a) * beta).sqrt().expand_as(eps)
    kl = td.kl_divergence(td.Normal(-coef * eps, std), td.Normal(-coef * eps_theta, std))
    return kl.flatten(1).sum(1)


def el_log_space(eps, eps_theta, t, b, ab):
    return elbo_term(eps, eps_theta, t, b, torch.exp(torch.cumsum(torch.log(1 - b), 0)))


def el_einsum(eps, eps_theta, t, b, ab):
    d = (eps - eps_theta).flatten(1)
    return _w(b[t], ab[t], ab[t - 1]) * torch.einsum("nd,nd->n", d, d)


def tw_via_noise(xt, t, score, ab):             # the score turned into the noise, then x_0
    a = ab[t].view(rows(xt))
    eps = -(1 - a).sqrt() * score
    return (xt - (1 - a).sqrt() * eps) / a.sqrt()


def with_a_seed(fn):
    """A correct answer that calls torch.manual_seed inside (harmless: it draws nothing)."""
    def answer(*args):
        torch.manual_seed(0)
        return fn(*args)
    return answer


ALTERNATIVES = [
    ("08.q_sample", qs_none_index), ("08.q_sample", qs_einsum), ("08.q_sample", qs_loop),
    ("08.q_sample", qs_float64_inside), ("08.q_step", st_addcmul), ("08.q_step", st_via_alpha_bar_ratio),
    ("08.q_posterior", qp_log_space), ("08.q_posterior", qp_eps_form), ("08.q_posterior", qp_padded_prev),
    ("08.x0_from_eps", x0_rsqrt), ("08.eps_from_x0", eps_via_snr),
    ("08.elbo_term", el_snr), ("08.elbo_term", el_distributions), ("08.elbo_term", el_log_space),
    ("08.elbo_term", el_einsum), ("08.tweedie", tw_via_noise),
] + [(i, with_a_seed(SOLUTIONS[i])) for i in IDS]


@pytest.mark.parametrize("exercise_id, fn", ALTERNATIVES, ids=[f"{i}-{k}" for k, (i, _) in enumerate(ALTERNATIVES)])
def test_correct_answers_written_differently_pass(exercise_id, fn):
    check_passes(exercise_id, fn)


# ---------------------------------------------------------------------------------------------- hostile
def _first_tensor(*args):
    return args[0]


def _zeros(*args):
    return torch.zeros_like(args[0])


HOSTILE = {
    "returns its first input": _first_tensor,
    "returns zeros": _zeros,
    "returns its inputs as the pair": lambda *a: (a[0], a[1]),
    "returns zeros as the pair": lambda *a: (torch.zeros_like(a[0]), torch.zeros_like(a[0][:, :1])),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
@pytest.mark.parametrize("exercise_id", IDS)
def test_hostile_answers_fail(exercise_id, kind):
    r = check(exercise_id, HOSTILE[kind], verbose=False)
    assert not r.passed and "could not evaluate" not in r.message, r.message


def test_own_noise_after_a_seed_fails_and_the_notebook_state_is_kept():
    """An answer that ignores the noise it is given and draws its own (seeded) is wrong, and the notebook's
    generators are as they were after the check."""
    def own_noise(x0, t, eps, ab):
        torch.manual_seed(0)
        return q_sample(x0, t, torch.randn_like(x0), ab)

    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    state = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    check_fails("08.q_sample", own_noise)
    check_passes("08.q_sample", with_a_seed(q_sample))
    assert torch.equal(torch.get_rng_state(), state[0])
    assert np.array_equal(np.random.get_state()[1], state[1]) and random.getstate() == state[2]
