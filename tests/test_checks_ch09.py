"""Chapter 09 checks (training and sampling a DDPM): the solutions pass; a blank exercise fails; every catalogued
mistake, written here as the wrong code a student would write, fails with its name; wrong answers the catalogue
does not name fail all the same; correct answers written unlike the reference pass; hostile answers fail; and the
checks' references agree with :mod:`coursepkg.diffusion.sampling` and :mod:`coursepkg.metrics`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from coursepkg import diffusion as D
from coursepkg import metrics
from coursepkg.diffusion import sampling as S
from coursepkg.grading import check, get_check
from coursepkg.grading.checks import ch09_ddpm_training_sampling as C
from coursepkg.grading.kit import Case, Recorder

from .helpers import check_fails, check_passes, first_tensor, zeros_like_first

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py
F64 = torch.float64
IDS = ["09.diffusion_loss", "09.ddpm_step", "09.ddim_step", "09.langevin_step", "09.chamfer"]


def rows(x):
    return (-1,) + (1,) * (x.dim() - 1)


# ---------------------------------------------------------------------------------------------- the solutions
# as in solutions/09_ddpm_training_sampling.ipynb
def diffusion_loss(model, x0, alpha_bar, generator):
    T = alpha_bar.shape[0] - 1
    t = torch.randint(1, T + 1, (x0.shape[0],), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    ab = alpha_bar[t].view(rows(x0))
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return ((eps - model(xt, t)) ** 2).mean()


def ddpm_step(eps_hat, t, xt, z, betas, alpha_bar, variance):
    beta, ab = betas[t], alpha_bar[t]
    mean = (xt - beta / (1 - ab).sqrt() * eps_hat) / (1 - beta).sqrt()
    if t == 1:
        return mean
    var = beta if variance == "beta" else (1 - alpha_bar[t - 1]) / (1 - ab) * beta
    return mean + var.sqrt() * z


def ddim_step(eps_hat, t, t_prev, xt, alpha_bar, eta, z):
    ab, ab_prev = alpha_bar[t], alpha_bar[t_prev]
    x0 = (xt - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
    return ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).sqrt() * eps_hat + sigma * z


def langevin_step(x, score, step_size, z):
    return x + step_size * score(x) + math.sqrt(2 * step_size) * z


def chamfer(x, y):
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return d2.min(1).values.sum() + d2.min(0).values.sum()


SOLUTIONS = dict(zip(IDS, [diffusion_loss, ddpm_step, ddim_step, langevin_step, chamfer], strict=True))


@pytest.mark.parametrize("exercise_id", IDS)
def test_the_solutions_pass(exercise_id):
    check_passes(exercise_id, SOLUTIONS[exercise_id])


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_blank_exercise_fails(exercise_id):
    def blank(*args, **kwargs):
        raise NotImplementedError()
    check_fails(exercise_id, blank, "not implemented")


# ---------------------------------------------------------------------------------------------- the references
def test_the_references_are_the_packages_samplers():
    """The DDPM and DDIM references are the samplers' steps (their noise reproduced from a seeded generator), the
    Langevin reference is one step of coursepkg.diffusion.sampling.langevin, the Chamfer reference is
    coursepkg.metrics.chamfer and the formula of its docstring, and the loss reference is the simplified loss."""
    case = Case(torch.Generator().manual_seed(3), F64, torch.device("cpu"))
    betas, alpha_bar = C._schedule(case, 12)
    sched = D.Schedule(betas)
    x, e = torch.randn(7, 3, dtype=F64), torch.randn(7, 3, dtype=F64)
    z = torch.randn(7, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    for variance in ("beta", "beta_tilde"):
        sampler = S.DDPMSampler(sched, variance=variance)
        for t in (12, 5, 2, 1):
            got = sampler.step(e, t, x, generator=torch.Generator().manual_seed(5)).prev
            assert torch.allclose(C._ddpm_step(e, t, x, z, betas, alpha_bar, variance), got, atol=1e-12)
            assert torch.allclose(ddpm_step(e, t, x, z, betas, alpha_bar, variance), got, atol=1e-12)
    for eta in (0.0, 0.5, 1.0):
        sampler = S.DDIMSampler(sched, steps=4, eta=eta)                    # timesteps 10, 7, 4, 1
        for t in sampler.timesteps.tolist():
            got = sampler.step(e, t, x, generator=torch.Generator().manual_seed(5)).prev
            tp = sampler.prev(t)
            assert torch.allclose(C._ddim_step(e, t, tp, x, alpha_bar, eta, z), got, atol=1e-12)
            assert torch.allclose(ddim_step(e, t, tp, x, alpha_bar, eta, z), got, atol=1e-12)
    score = C._Score(torch.randn(3, dtype=F64), torch.rand(3, dtype=F64) + 0.5)
    one = S.langevin(score, x, 0.1, 1, generator=torch.Generator().manual_seed(5)).x
    assert torch.allclose(C._langevin_step(x, score, 0.1, z), one, atol=1e-12)
    a, b = torch.randn(30, 2, dtype=F64), torch.randn(45, 2, dtype=F64) + 0.5
    d2 = torch.cdist(a, b) ** 2
    assert torch.allclose(C._chamfer(a, b), d2.min(1).values.sum() + d2.min(0).values.sum(), rtol=1e-10)
    assert torch.allclose(metrics.chamfer(a, b), chamfer(a, b), rtol=1e-10)
    model = C._Denoiser.random(case, (20, 3), 12)
    g1, g2 = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    x0 = torch.randn(20, 3, dtype=F64)
    assert torch.allclose(C._diffusion_loss(model, x0, alpha_bar, g1), diffusion_loss(model, x0, alpha_bar, g2),
                          rtol=1e-12)


def test_the_loss_check_reads_the_steps_and_the_noise():
    """The recorded batch of the solution: int64 steps, one per row, covering 1..T, and the noise recovered from
    x_t is the noise the solution drew."""
    case = Case(torch.Generator().manual_seed(0), F64, torch.device("cpu"))
    _, alpha_bar = C._schedule(case, 8)
    x0 = case.randn(512, 2, scale=1.5, shift=2.0)
    model = C._Denoiser.random(case, (512, 2), 8)
    rec = Recorder.on_module(model)
    diffusion_loss(model, x0, alpha_bar, torch.Generator().manual_seed(1))
    xt, t = C._recorded_batch(rec, x0, 8)
    g = torch.Generator().manual_seed(1)
    t_drawn = torch.randint(1, 9, (512,), generator=g)
    eps = torch.randn(512, 2, generator=g, dtype=F64)
    assert torch.equal(t, t_drawn) and set(t.tolist()) == set(range(1, 9))
    assert torch.allclose(C._judge_noise(x0, xt, t, alpha_bar, ""), eps, atol=1e-10)


# ---------------------------------------------------------------------------------------------- catalogued mistakes
def _loss_with(draw_t=None, make_xt=None, target=None, reduce=None):
    """The solution with one of its parts replaced: ``draw_t(T, N, g, device)``, ``make_xt(x0, eps, ab_rows, ab, t)``,
    ``target(x0, xt, eps)``, ``reduce(err)``."""
    def answer(model, x0, alpha_bar, generator):
        T, N = alpha_bar.shape[0] - 1, x0.shape[0]
        t = (draw_t or (lambda T, N, g, d: torch.randint(1, T + 1, (N,), generator=g, device=d)))(
            T, N, generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        ab = alpha_bar[t].view(rows(x0)) if torch.is_tensor(t) and t.dim() else alpha_bar[t]
        xt = (make_xt or (lambda x0, e, a, alpha_bar, t: a.sqrt() * x0 + (1 - a).sqrt() * e))(x0, eps, ab, alpha_bar, t)
        err = (target or (lambda x0, xt, e: e))(x0, xt, eps) - model(xt, t)
        return (reduce or (lambda r: (r**2).mean()))(err)
    return answer


def _ddpm_with(mean=None, var=None, last_noise=False, noise=True, root=torch.sqrt):
    def answer(eps_hat, t, xt, z, betas, alpha_bar, variance):
        beta, ab, ab_prev = betas[t], alpha_bar[t], alpha_bar[t - 1]
        m = (mean or (lambda e, x, beta, ab, abp: (x - beta / (1 - ab).sqrt() * e) / (1 - beta).sqrt()))(
            eps_hat, xt, beta, ab, ab_prev)
        if not noise or (t == 1 and not last_noise):
            return m
        v = (var or (lambda beta, ab, abp, variance: beta if variance == "beta" else (1 - abp) / (1 - ab) * beta))(
            beta, ab, ab_prev, variance)
        return m + root(v) * z
    return answer


def ddpm_zero_indexed(eps_hat, t, xt, z, betas, alpha_bar, variance):   # the diffusers habit, k = t - 1
    beta, ab, abp = betas[t - 1], alpha_bar[t - 1], alpha_bar[t - 2]
    mean = (xt - beta / (1 - ab).sqrt() * eps_hat) / (1 - beta).sqrt()
    if t == 1:
        return mean
    var = beta if variance == "beta" else (1 - abp) / (1 - ab) * beta
    return mean + var.sqrt() * z


def ddpm_coefficient_form_wrong_prev(eps_hat, t, xt, z, betas, alpha_bar, variance):
    beta, ab, abp = betas[t], alpha_bar[t], alpha_bar[t - 1]
    x0 = (xt - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
    mean = ab.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - abp) / (1 - ab) * xt
    return mean if t == 1 else mean + ((1 - abp) / (1 - ab) * beta if variance != "beta" else beta).sqrt() * z


def _ddim_with(a_t=None, a_prev=None, x0_ab=None, sigma=None, coef=None, noise=True):
    def answer(eps_hat, t, t_prev, xt, alpha_bar, eta, z):
        ab = (a_t or (lambda al, t: al[t]))(alpha_bar, t)
        abp = (a_prev or (lambda al, t, tp: al[tp]))(alpha_bar, t, t_prev)
        a0 = (x0_ab or (lambda al, t: ab))(alpha_bar, t)
        x0 = (xt - (1 - a0).sqrt() * eps_hat) / a0.sqrt()
        s = (sigma or (lambda eta, ab, abp: eta * ((1 - abp) / (1 - ab) * (1 - ab / abp)).sqrt()))(eta, ab, abp)
        c = (coef or (lambda abp, s: (1 - abp - s**2).clamp_min(0).sqrt()))(abp, s)
        out = abp.sqrt() * x0 + c * eps_hat
        return out + s * z if noise else out
    return answer


def _langevin_with(drift=None, scale=None, keep_x=True):
    def answer(x, score, step_size, z):
        d = (drift or (lambda x, s, eta: eta * s(x)))(x, score, step_size)
        return (x if keep_x else 0) + d + (scale or (lambda eta: math.sqrt(2 * eta)))(step_size) * z
    return answer


def lv_after_the_noise(x, score, step_size, z):
    noised = x + math.sqrt(2 * step_size) * z
    return noised + step_size * score(noised)


def _chamfer_with(dist=lambda d2: d2, nearest=torch.amin, combine=lambda a, b: a.sum() + b.sum()):
    def answer(x, y):
        d = dist(torch.cdist(x, y) ** 2)
        return combine(nearest(d, 1), nearest(d, 0))
    return answer


def _sqrt_abs(d2):
    return d2.clamp_min(0).sqrt()


CATALOGUED = [
    ("09.diffusion_loss", _loss_with(draw_t=lambda T, N, g, d: torch.randint(0, T, (N,), generator=g, device=d)),
     "t drawn from 0..T-1"),
    ("09.diffusion_loss", _loss_with(draw_t=lambda T, N, g, d: torch.randint(0, T + 1, (N,), generator=g, device=d)),
     "including t = 0"),
    ("09.diffusion_loss", _loss_with(draw_t=lambda T, N, g, d: torch.randint(1, T, (N,), generator=g, device=d)),
     "t drawn from 1..T-1"),
    ("09.diffusion_loss", _loss_with(draw_t=lambda T, N, g, d: int(torch.randint(1, T + 1, (), generator=g))),
     "one t for the whole batch"),
    ("09.diffusion_loss", _loss_with(draw_t=lambda T, N, g, d: torch.randint(1, T + 1, (1,), generator=g,
                                                                              device=d).expand(N)),
     "one t for the whole batch"),
    ("09.diffusion_loss", _loss_with(target=lambda x0, xt, e: x0), "the target x0 instead of eps"),
    ("09.diffusion_loss", _loss_with(target=lambda x0, xt, e: xt), "the target x_t instead of eps"),
    ("09.diffusion_loss", _loss_with(reduce=lambda r: (r**2).sum()), "a sum instead of a mean"),
    ("09.diffusion_loss", _loss_with(reduce=lambda r: (r**2).flatten(1).sum(1).mean()),
     "summed over the dimensions and averaged over the batch"),
    ("09.diffusion_loss", _loss_with(reduce=lambda r: r.abs().mean()), "the absolute error"),
    ("09.diffusion_loss", _loss_with(reduce=lambda r: (r**2).mean().sqrt()), "the square root of the mean"),
    ("09.diffusion_loss", _loss_with(make_xt=lambda x0, e, a, ab, t: a * x0 + (1 - a).sqrt() * e),
     "the square root forgotten on alpha_bar_t"),
    ("09.diffusion_loss", _loss_with(make_xt=lambda x0, e, a, ab, t: a.sqrt() * x0 + (1 - a) * e),
     "the square root forgotten on 1 - alpha_bar_t"),
    ("09.diffusion_loss", _loss_with(make_xt=lambda x0, e, a, ab, t: a * x0 + (1 - a) * e),
     "both square roots forgotten"),
    ("09.diffusion_loss", _loss_with(make_xt=lambda x0, e, a, ab, t: a.sqrt() * e + (1 - a).sqrt() * x0),
     "x0 and eps swapped"),
    ("09.diffusion_loss", _loss_with(make_xt=lambda x0, e, a, ab, t: ab[t - 1].view(rows(x0)).sqrt() * x0
                                     + (1 - ab[t - 1].view(rows(x0))).sqrt() * e), "t off by one"),
    ("09.diffusion_loss", _loss_with(make_xt=lambda x0, e, a, ab, t: x0), "the model called on x0"),
    ("09.ddpm_step", _ddpm_with(last_noise=True), "noise added at the last step"),
    ("09.ddpm_step", _ddpm_with(var=lambda beta, ab, abp, v: beta), "beta_t used where beta-tilde_t was asked"),
    ("09.ddpm_step", _ddpm_with(var=lambda beta, ab, abp, v: (1 - abp) / (1 - ab) * beta),
     "beta-tilde_t used where beta_t was asked"),
    ("09.ddpm_step", _ddpm_with(var=lambda beta, ab, abp, v: (1 - abp) / (1 - ab) * beta if v == "beta" else beta),
     "beta"),                                             # the two swapped: each trial names one of the two
    ("09.ddpm_step", _ddpm_with(root=lambda v: v), "the variance times z"),
    ("09.ddpm_step", _ddpm_with(var=lambda beta, ab, abp, v: beta if v == "beta" else (1 - ab) / (1 - abp) * beta),
     "ratio upside down"),
    ("09.ddpm_step", _ddpm_with(noise=False), "no noise added"),
    ("09.ddpm_step", _ddpm_with(mean=lambda e, x, beta, ab, abp: (x - beta / (1 - ab).sqrt() * e) / ab.sqrt()),
     "sqrt(alpha_bar_t) where sqrt(alpha_t) belongs"),
    ("09.ddpm_step", _ddpm_with(mean=lambda e, x, beta, ab, abp: (x - beta / (1 - (1 - beta)).sqrt() * e)
                                / (1 - beta).sqrt()), "alpha_t where alpha_bar_t belongs"),
    ("09.ddpm_step", _ddpm_with(mean=lambda e, x, beta, ab, abp: (x - beta / (1 - ab) * e) / (1 - beta).sqrt()),
     "square root forgotten on 1 - alpha_bar_t"),
    ("09.ddpm_step", _ddpm_with(mean=lambda e, x, beta, ab, abp: (x - beta / (1 - ab).sqrt() * e) / (1 - beta)),
     "square root forgotten on alpha_t"),
    ("09.ddpm_step", _ddpm_with(mean=lambda e, x, beta, ab, abp: (x - (1 - ab).sqrt() * e) / (1 - beta).sqrt()),
     "sqrt(1 - alpha_bar_t) as the coefficient"),
    ("09.ddpm_step", _ddpm_with(mean=lambda e, x, beta, ab, abp: (x - (1 - ab).sqrt() * e) / ab.sqrt()),
     "x0_hat taken for the posterior mean"),
    ("09.ddpm_step", ddpm_coefficient_form_wrong_prev, "alpha_bar_t where alpha_bar_{t-1} belongs"),
    ("09.ddpm_step", ddpm_zero_indexed, "t off by one"),
    ("09.ddim_step", _ddim_with(x0_ab=lambda al, t: al[t] / al[t - 1]), "alpha_t (one step"),
    ("09.ddim_step", _ddim_with(coef=lambda abp, s: 1 - abp - s**2), "without its square root"),
    ("09.ddim_step", _ddim_with(sigma=lambda eta, ab, abp: eta * (1 - ab / abp).sqrt()), "sigma without its factor"),
    ("09.ddim_step", _ddim_with(sigma=lambda eta, ab, abp: eta * ((1 - ab) / (1 - abp) * (1 - ab / abp)).sqrt()),
     "ratio upside down"),
    ("09.ddim_step", _ddim_with(sigma=lambda eta, ab, abp: (eta * (1 - abp) / (1 - ab) * (1 - ab / abp)).sqrt()),
     "eta under the square root"),
    ("09.ddim_step", _ddim_with(sigma=lambda eta, ab, abp: 0 * ab), "sigma = 0 always"),
    ("09.ddim_step", _ddim_with(sigma=lambda eta, ab, abp: ((1 - abp) / (1 - ab) * (1 - ab / abp)).sqrt()),
     "sigma as at eta = 1"),
    ("09.ddim_step", _ddim_with(coef=lambda abp, s: (1 - abp).sqrt()), "sigma^2 not subtracted"),
    ("09.ddim_step", _ddim_with(noise=False), "sigma * z not added"),
    ("09.ddim_step", _ddim_with(a_prev=lambda al, t, tp: al[t - 1]), "t_prev = t - 1 assumed"),
    ("09.ddim_step", _ddim_with(a_prev=lambda al, t, tp: al[tp] if tp > 0 else al[1]), "alpha_bar_0 is not 1"),
    ("09.ddim_step", _ddim_with(a_t=lambda al, t: al[t - 1], a_prev=lambda al, t, tp: al[tp - 1]), "t off by one"),
    ("09.langevin_step", _langevin_with(scale=lambda eta: eta), "noise scaled by eta instead of sqrt(2 eta)"),
    ("09.langevin_step", _langevin_with(scale=lambda eta: math.sqrt(eta)), "sqrt(eta) instead of sqrt(2 eta)"),
    ("09.langevin_step", _langevin_with(scale=lambda eta: 2 * eta), "2 eta instead of sqrt(2 eta)"),
    ("09.langevin_step", _langevin_with(drift=lambda x, s, eta: -eta * s(x)), "the score with the wrong sign"),
    ("09.langevin_step", _langevin_with(drift=lambda x, s, eta: s(x)), "not multiplied by the step size"),
    ("09.langevin_step", lv_after_the_noise, "the score evaluated at the noised point"),
    ("09.langevin_step", _langevin_with(drift=lambda x, s, eta: eta / 2 * s(x), scale=lambda eta: math.sqrt(eta)),
     "the other convention"),
    ("09.langevin_step", _langevin_with(keep_x=False), "the increment returned without x"),
    ("09.chamfer", _chamfer_with(dist=_sqrt_abs), "the distances not squared"),
    ("09.chamfer", _chamfer_with(combine=lambda a, b: a.sum()), "one direction only (from x to y)"),
    ("09.chamfer", _chamfer_with(combine=lambda a, b: b.sum()), "one direction only (from y to x)"),
    ("09.chamfer", _chamfer_with(combine=lambda a, b: a.mean() + b.mean()), "a mean over each set"),
    ("09.chamfer", _chamfer_with(combine=lambda a, b: (a.sum() + b.sum()) / 2), "the two directions averaged"),
    ("09.chamfer", _chamfer_with(nearest=torch.amax), "max instead of min"),
]


@pytest.mark.parametrize("exercise_id, fn, words", CATALOGUED,
                         ids=[f"{i}-{k}" for k, (i, _, _) in enumerate(CATALOGUED)])
def test_catalogued_mistakes_fail_with_their_hint(exercise_id, fn, words):
    check_fails(exercise_id, fn, "likely mistake", words)


def test_every_catalogued_slip_is_written_as_a_student_mistake():
    """Each slip of the function checks' catalogues is named by at least one student-written mistake above."""
    for exercise_id in IDS[1:]:
        names = {s.name for s in get_check(exercise_id).func.mistakes}
        covered = {n for n in names if any(w in n for i, _, w in CATALOGUED if i == exercise_id)}
        assert covered == names, f"{exercise_id}: no student-written mistake for {names - covered}"


# ---------------------------------------------------------------------------------------------- generator and noise
GLOBAL_T = torch.randint(1, 9, (512,))


def loss_t_from_a_global(model, x0, alpha_bar, generator):       # a t left over from the notebook
    T = alpha_bar.shape[0] - 1
    t = GLOBAL_T[: x0.shape[0]].clamp(max=T).to(x0.device)
    t = torch.cat([t, torch.randint(1, T + 1, (x0.shape[0] - len(t),))]) if len(t) < x0.shape[0] else t
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    ab = alpha_bar[t].view(rows(x0))
    return ((eps - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)) ** 2).mean()


def loss_eps_without_the_generator(model, x0, alpha_bar, generator):
    T = alpha_bar.shape[0] - 1
    t = torch.randint(1, T + 1, (x0.shape[0],), generator=generator, device=x0.device)
    eps = torch.randn_like(x0)
    ab = alpha_bar[t].view(rows(x0))
    return ((eps - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)) ** 2).mean()


def loss_t_without_the_generator(model, x0, alpha_bar, generator):
    T = alpha_bar.shape[0] - 1
    t = torch.randint(1, T + 1, (x0.shape[0],), device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    ab = alpha_bar[t].view(rows(x0))
    return ((eps - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)) ** 2).mean()


def loss_own_seed(model, x0, alpha_bar, generator):                # a seed of its own: always the same draws
    return diffusion_loss(model, x0, alpha_bar, torch.Generator(device=x0.device).manual_seed(0))


def loss_detached(model, x0, alpha_bar, generator):
    T = alpha_bar.shape[0] - 1
    t = torch.randint(1, T + 1, (x0.shape[0],), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    ab = alpha_bar[t].view(rows(x0))
    with torch.no_grad():
        pred = model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)
    return ((eps - pred) ** 2).mean()


def loss_not_reshaped(model, x0, alpha_bar, generator):           # alpha_bar[t] of shape (N,) against (N, D)
    T = alpha_bar.shape[0] - 1
    t = torch.randint(1, T + 1, (x0.shape[0],), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    ab = alpha_bar[t]
    return ((eps - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)) ** 2).mean()


def loss_uniform_noise(model, x0, alpha_bar, generator):
    T = alpha_bar.shape[0] - 1
    t = torch.randint(1, T + 1, (x0.shape[0],), generator=generator, device=x0.device)
    eps = (torch.rand(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) - 0.5) * math.sqrt(12)
    ab = alpha_bar[t].view(rows(x0))
    return ((eps - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)) ** 2).mean()


def loss_noise_per_row(model, x0, alpha_bar, generator):           # one noise value per row, broadcast
    T = alpha_bar.shape[0] - 1
    t = torch.randint(1, T + 1, (x0.shape[0],), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape[0], *[1] * (x0.dim() - 1), generator=generator, dtype=x0.dtype,
                      device=x0.device).expand_as(x0)
    ab = alpha_bar[t].view(rows(x0))
    return ((eps - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)) ** 2).mean()


def loss_t_skewed(model, x0, alpha_bar, generator):                 # the max of two draws: not uniform
    T = alpha_bar.shape[0] - 1
    t = torch.maximum(torch.randint(1, T + 1, (x0.shape[0],), generator=generator, device=x0.device),
                      torch.randint(1, T + 1, (x0.shape[0],), generator=generator, device=x0.device))
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    ab = alpha_bar[t].view(rows(x0))
    return ((eps - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)) ** 2).mean()


def loss_float_t(model, x0, alpha_bar, generator):                  # t normalised to [0, 1] for the model
    T = alpha_bar.shape[0] - 1
    t = torch.randint(1, T + 1, (x0.shape[0],), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    ab = alpha_bar[t].view(rows(x0))
    return ((eps - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t / T)) ** 2).mean()


def loss_half_batch(model, x0, alpha_bar, generator):               # the model called on half the rows
    return diffusion_loss(model, x0[: x0.shape[0] // 2], alpha_bar, generator)


def loss_item(model, x0, alpha_bar, generator):
    return torch.tensor(diffusion_loss(model, x0, alpha_bar, generator).item(), dtype=x0.dtype, device=x0.device)


def ddpm_noise_at_every_step_and_beta(eps_hat, t, xt, z, betas, alpha_bar, variance):
    beta = betas[t]
    return (xt - beta / (1 - alpha_bar[t]).sqrt() * eps_hat) / (1 - beta).sqrt() + beta.sqrt() * z


def ddpm_tilde_of_one_step_alphas(eps_hat, t, xt, z, betas, alpha_bar, variance):   # 1 - alpha for 1 - alpha_bar
    beta = betas[t]
    tilde = betas[t - 1] / beta * beta
    return _ddpm_with(var=lambda b, ab, abp, v: b if v == "beta" else tilde)(eps_hat, t, xt, z, betas, alpha_bar,
                                                                              variance)


def ddpm_float32(eps_hat, t, xt, z, betas, alpha_bar, variance):
    return ddpm_step(eps_hat, t, xt, z, betas, alpha_bar, variance).float()


def ddim_sigma_squared_twice(eps_hat, t, t_prev, xt, alpha_bar, eta, z):
    return _ddim_with(coef=lambda abp, s: (1 - abp - s**4).sqrt())(eps_hat, t, t_prev, xt, alpha_bar, eta, z)


def ddim_sigma_squared_as_scale(eps_hat, t, t_prev, xt, alpha_bar, eta, z):
    out = _ddim_with(noise=False)(eps_hat, t, t_prev, xt, alpha_bar, eta, z)
    ab, abp = alpha_bar[t], alpha_bar[t_prev]
    return out + eta**2 * (1 - abp) / (1 - ab) * (1 - ab / abp) * z


def ddim_t_prev_as_difference(eps_hat, t, t_prev, xt, alpha_bar, eta, z):   # t_prev read as the stride
    return ddim_step(eps_hat, t, max(t - t_prev, 0), xt, alpha_bar, eta, z)


def ddim_x0_clipped(eps_hat, t, t_prev, xt, alpha_bar, eta, z):             # x0_hat clipped to [-1, 1], unasked
    ab, abp = alpha_bar[t], alpha_bar[t_prev]
    x0 = ((xt - (1 - ab).sqrt() * eps_hat) / ab.sqrt()).clamp(-1, 1)
    sigma = eta * ((1 - abp) / (1 - ab) * (1 - ab / abp)).sqrt()
    return abp.sqrt() * x0 + (1 - abp - sigma**2).sqrt() * eps_hat + sigma * z


def lv_score_of_z(x, score, step_size, z):
    return x + step_size * score(z) + math.sqrt(2 * step_size) * z


def lv_step_size_squared(x, score, step_size, z):
    return x + step_size**2 * score(x) + math.sqrt(2 * step_size) * z


def lv_noise_subtracted_scaled(x, score, step_size, z):
    return x + step_size * (score(x) + math.sqrt(2 / step_size) * z) * 0.5


def ch_euclidean_one_mean(x, y):
    d = torch.cdist(x, y)
    return torch.cat([d.min(1).values, d.min(0).values]).mean()


def ch_transposed_min(x, y):                           # the same axis twice: y to x counted two times
    d2 = torch.cdist(x, y) ** 2
    return d2.min(0).values.sum() + d2.T.min(1).values.sum()


def ch_mean_of_all_pairs(x, y):
    return (torch.cdist(x, y) ** 2).mean()


def ch_self_distances(x, y):                           # x to x: every point is its own nearest neighbour
    d2 = torch.cdist(x, x) ** 2
    return d2.min(1).values.sum() + (torch.cdist(x, y) ** 2).min(0).values.sum()


def ch_hausdorff(x, y):
    d2 = torch.cdist(x, y) ** 2
    return torch.maximum(d2.min(1).values.max(), d2.min(0).values.max())


UNCATALOGUED = [
    ("09.diffusion_loss", loss_t_from_a_global, ()), ("09.diffusion_loss", loss_eps_without_the_generator,
                                                      ("noise not drawn from the generator",)),
    ("09.diffusion_loss", loss_t_without_the_generator, ("t not drawn from the generator",)),
    ("09.diffusion_loss", loss_own_seed, ("whatever the generator",)),
    ("09.diffusion_loss", loss_detached, ("detached",)), ("09.diffusion_loss", loss_not_reshaped, ()),
    ("09.diffusion_loss", loss_uniform_noise, ("uniform",)), ("09.diffusion_loss", loss_noise_per_row, ()),
    ("09.diffusion_loss", loss_t_skewed, ("not uniform",)), ("09.diffusion_loss", loss_float_t, ("integer",)),
    ("09.diffusion_loss", loss_half_batch, ("rows",)), ("09.diffusion_loss", loss_item, ("detached",)),
    ("09.ddpm_step", ddpm_noise_at_every_step_and_beta, ()), ("09.ddpm_step", ddpm_tilde_of_one_step_alphas, ()),
    ("09.ddpm_step", ddpm_float32, ("dtype",)),
    ("09.ddim_step", ddim_sigma_squared_twice, ()), ("09.ddim_step", ddim_sigma_squared_as_scale, ()),
    ("09.ddim_step", ddim_t_prev_as_difference, ()), ("09.ddim_step", ddim_x0_clipped, ()),
    ("09.langevin_step", lv_score_of_z, ()), ("09.langevin_step", lv_step_size_squared, ()),
    ("09.langevin_step", lv_noise_subtracted_scaled, ()),
    ("09.chamfer", ch_euclidean_one_mean, ()), ("09.chamfer", ch_transposed_min, ()),
    ("09.chamfer", ch_mean_of_all_pairs, ()), ("09.chamfer", ch_self_distances, ()), ("09.chamfer", ch_hausdorff, ()),
]


@pytest.mark.parametrize("exercise_id, fn, words", UNCATALOGUED,
                         ids=[f"{i}-{k}" for k, (i, _, _) in enumerate(UNCATALOGUED)])
def test_uncatalogued_wrong_answers_fail(exercise_id, fn, words):
    r = check_fails(exercise_id, fn, *words)
    assert "could not evaluate" not in r.message, r.message


# ---------------------------------------------------------------------------------------------- written differently
def loss_float64_inside(model, x0, alpha_bar, generator):          # computed in float64, cast back
    return diffusion_loss(model, x0.double(), alpha_bar.double(), generator).to(x0.dtype)


def loss_mse(model, x0, alpha_bar, generator):
    T = len(alpha_bar) - 1
    t = torch.randint(1, T + 1, size=(len(x0),), generator=generator, device=x0.device)
    eps = torch.randn_like(x0, generator=generator)
    ab = alpha_bar[t].reshape(len(x0), *([1] * (x0.ndim - 1)))
    return F.mse_loss(model(torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * eps, t), eps)


def loss_eps_first(model, x0, alpha_bar, generator):               # the noise drawn before t
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    t = torch.randint(1, alpha_bar.shape[0], (x0.shape[0],), generator=generator, device=x0.device)
    ab = alpha_bar[t][(...,) + (None,) * (x0.dim() - 1)]
    return (eps - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)).pow(2).mean()


def loss_per_row_loop(model, x0, alpha_bar, generator):            # the model called row by row
    T = alpha_bar.shape[0] - 1
    t = torch.randint(1, T + 1, (x0.shape[0],), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    total = 0
    for i in range(x0.shape[0]):
        a = alpha_bar[t[i]]
        xt = a.sqrt() * x0[i:i + 1] + (1 - a).sqrt() * eps[i:i + 1]
        total = total + ((eps[i:i + 1] - model(xt, t[i:i + 1])) ** 2).sum()
    return total / x0.numel()


def loss_multinomial(model, x0, alpha_bar, generator):             # t by torch.multinomial, uniform weights
    T = alpha_bar.shape[0] - 1
    t = torch.multinomial(torch.ones(T, device=x0.device), x0.shape[0], replacement=True, generator=generator) + 1
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    ab = alpha_bar[t].view(rows(x0))
    return ((eps - model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)) ** 2).mean()


def ddpm_coefficient_form(eps_hat, t, xt, z, betas, alpha_bar, variance):   # x0_hat, then the posterior's mean
    beta, ab, abp = betas[t], alpha_bar[t], alpha_bar[t - 1]
    x0 = (xt - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
    mean = abp.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - abp) / (1 - ab) * xt
    sigma = torch.sqrt(beta if variance == "beta" else (1 - abp) / (1 - ab) * beta)
    return mean + (t > 1) * sigma * z


def ddpm_float64_inside(eps_hat, t, xt, z, betas, alpha_bar, variance):
    d = torch.float64
    return ddpm_step(eps_hat.to(d), t, xt.to(d), z.to(d), betas.to(d), alpha_bar.to(d), variance).to(xt.dtype)


def ddim_via_sampler(eps_hat, t, t_prev, xt, alpha_bar, eta, z):     # the alpha ratio written with alpha_bar_t'
    ab, abp = alpha_bar[t], alpha_bar[t_prev]
    sigma2 = eta**2 * (1 - abp) / (1 - ab) * (1 - ab / abp)
    x0 = xt / ab.sqrt() - torch.sqrt(1 / ab - 1) * eps_hat
    direction = torch.sqrt(torch.clamp(1 - abp - sigma2, min=0)) * eps_hat
    return abp.sqrt() * x0 + direction + sigma2.sqrt() * z


def ddim_special_case_end(eps_hat, t, t_prev, xt, alpha_bar, eta, z):   # returns x0_hat itself at t' = 0
    if t_prev == 0:
        return (xt - (1 - alpha_bar[t]).sqrt() * eps_hat) / alpha_bar[t].sqrt()
    return ddim_step(eps_hat, t, t_prev, xt, alpha_bar, eta, z)


def lv_addcmul(x, score, step_size, z):
    return torch.addcmul(x + step_size * score(x), torch.full_like(x, 2 * step_size).sqrt(), z)


def lv_per_row(x, score, step_size, z):
    return torch.stack([x[i] + step_size * score(x[i:i + 1])[0] + (2 * step_size) ** 0.5 * z[i]
                        for i in range(x.shape[0])])


def ch_cdist(x, y):
    d2 = torch.cdist(x, y) ** 2
    return d2.min(dim=1).values.sum() + d2.min(dim=0).values.sum()


def ch_einsum(x, y):
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * torch.einsum("nd,md->nm", x, y)
    return d2.clamp_min(0).amin(1).sum() + d2.clamp_min(0).amin(0).sum()


def ch_chunked(x, y, chunk=7):
    def one_way(a, b):
        return sum(((a[i:i + chunk, None] - b[None]) ** 2).sum(-1).min(1).values.sum()
                   for i in range(0, len(a), chunk))
    return one_way(x, y) + one_way(y, x)


def ch_float64_inside(x, y):
    return chamfer(x.double(), y.double()).to(x.dtype)


def ch_package(x, y):                                  # the course package's own metric: the reference itself
    return metrics.chamfer(x, y)


ALTERNATIVES = [
    ("09.diffusion_loss", loss_float64_inside), ("09.diffusion_loss", loss_mse), ("09.diffusion_loss", loss_eps_first),
    ("09.diffusion_loss", loss_per_row_loop), ("09.diffusion_loss", loss_multinomial),
    ("09.ddpm_step", ddpm_coefficient_form), ("09.ddpm_step", ddpm_float64_inside),
    ("09.ddim_step", ddim_via_sampler), ("09.ddim_step", ddim_special_case_end),
    ("09.langevin_step", lv_addcmul), ("09.langevin_step", lv_per_row),
    ("09.chamfer", ch_cdist), ("09.chamfer", ch_einsum), ("09.chamfer", ch_chunked), ("09.chamfer", ch_float64_inside),
    ("09.chamfer", ch_package),
]


@pytest.mark.parametrize("exercise_id, fn", ALTERNATIVES, ids=[f"{i}-{k}" for k, (i, _) in enumerate(ALTERNATIVES)])
def test_correct_answers_written_differently_pass(exercise_id, fn):
    check_passes(exercise_id, fn)


# ---------------------------------------------------------------------------------------------- hostile
def _zero_loss(*args):
    return torch.zeros((), dtype=first_tensor(*args).dtype)


def _loss_of_zeros(model, x0, alpha_bar, generator):   # the model called on zeros: no t, no noise
    return (model(torch.zeros_like(x0), torch.ones(x0.shape[0], dtype=torch.long)) ** 2).mean()


HOSTILE = {"returns its first tensor input": first_tensor, "returns zeros": zeros_like_first, "returns 0": _zero_loss}


@pytest.mark.parametrize("kind", list(HOSTILE))
@pytest.mark.parametrize("exercise_id", IDS)
def test_hostile_answers_fail(exercise_id, kind):
    r = check(exercise_id, HOSTILE[kind], verbose=False)
    assert not r.passed and "could not evaluate" not in r.message, r.message


def test_a_loss_that_ignores_the_recipe_fails():
    check_fails("09.diffusion_loss", _loss_of_zeros, "one t for the whole batch")
