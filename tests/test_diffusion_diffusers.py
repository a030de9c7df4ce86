"""coursepkg.diffusion against the reference implementation, diffusers' ``DDPMScheduler``.

diffusers is a ``dev`` extra, never a dependency of coursepkg: without it this module is skipped.

Two conventions differ and every comparison below goes through them:

- **the index shift.** diffusers numbers the steps ``k = 0..T-1``; the book and coursepkg number them
  ``t = 1..T`` and keep entry ``0`` of every tensor for the boundary ``t = 0``. So diffusers' ``k`` is our
  ``t = k + 1`` (:func:`_t`), and ``scheduler.betas[k]`` is ``schedule.betas[k + 1]``.
- **the schedule names.** Our ``"quadratic"`` (square roots evenly spaced) is diffusers' ``"scaled_linear"``
  (``linspace(beta_start**0.5, beta_end**0.5, T) ** 2``); our ``"cosine"`` is ``"squaredcos_cap_v2"``
  (Nichol and Dhariwal's ``alpha_bar``, betas clipped at 0.999).

diffusers computes in float32, we in float64; results are compared as float32 within relative
tolerances a little above diffusers' float32 error (see ``RTOL`` and :func:`_beta_rtol`), so that a shift
of ``t`` by one fails every test. The one real difference: at ``k = 0`` diffusers' ``_get_variance``
returns ``1e-20`` where our ``beta_tilde_1`` is ``0`` (it clamps the variance before taking logs);
``step`` adds no noise at ``k = 0``, so the two sample alike. diffusers' ``"v_prediction"`` is not
compared: coursepkg has no v conversions.
"""

from __future__ import annotations

import pytest
import torch

from coursepkg import diffusion as D

diffusers = pytest.importorskip("diffusers")

DIFFUSERS_NAME = {"linear": "linear", "quadratic": "scaled_linear", "cosine": "squaredcos_cap_v2"}
SCHEDULES = [("linear", {}), ("quadratic", {}), ("cosine", {}),  # {}: both defaults, beta from 1e-4 to 0.02
             ("linear", {"beta_start": 1e-3, "beta_end": 0.05}),
             ("quadratic", {"beta_start": 0.00085, "beta_end": 0.012})]  # Stable Diffusion's betas
CASES = [(name, kwargs, T) for name, kwargs in SCHEDULES for T in (10, 100, 1000)]
IDS = [f"{name}-{'-'.join(f'{v:g}' for v in kwargs.values()) or 'default'}-T{T}" for name, kwargs, T in CASES]

# Relative tolerances, about three times the largest float32 error of diffusers over every case [in brackets]
RTOL = {
    "betas": 1e-6,  # float32 linspace, or the cast of the cosine betas [3e-7]
    "alpha_bar": 5e-5,  # float32 cumprod, and the clipped cosine 1 - beta_T = 1e-3, off by 1.3e-5 in float32 [1.3e-5]
    "x": 2e-5,  # tensors in the space of x, relative to their largest entry, before _beta_rtol [7e-6]
}
F32 = 2.0 ** -24  # float32 unit roundoff


def _t(k):
    """Our step for diffusers' timestep ``k`` (int or tensor)."""
    return k + 1


def _beta_rtol(ours, k):
    """What diffusers loses where it recomputes, in float32, ``beta_t = 1 - ab_t / ab_{t-1}`` and
    ``1 - ab_{t-1}`` (variances, posterior-mean coefficients): both subtract numbers near 1 that are off by
    about ``F32``, so they are off by ``F32 / beta_t`` and ``F32 / (1 - ab_{t-1})`` relative, and the errors
    compound [measured: up to 2.4 times the sum]. At ``k = 0`` neither is recomputed (diffusers takes
    ``ab_{-1} = 1`` exactly)."""
    k = torch.as_tensor(k)
    t = _t(k)
    loss = F32 / ours.betas[t] + F32 / (1 - ours.alpha_bar[t - 1]).clamp(min=F32)
    return torch.where(k > 0, 6 * loss, 0.0)


def _close(actual, expected, rtol, *, entrywise=True):
    """Check diffusers' ``actual`` against our ``expected`` as float32, within ``rtol`` (a number or a tensor
    broadcasting against them): entry by entry for the positive schedule quantities (``entrywise``), else
    relative to the largest entry, for tensors in the space of x whose entries may cancel to near 0."""
    actual, expected = actual.to(torch.float32).double(), expected.to(torch.float32).double()
    assert actual.shape == expected.shape, f"diffusers gives shape {tuple(actual.shape)}, ours {tuple(expected.shape)}"
    scale = expected.abs() if entrywise else expected.abs().max()
    err = (actual - expected).abs() / scale
    over = err / rtol
    if bool((over > 1).any()):
        i = tuple(int(j) for j in torch.unravel_index(over.argmax(), over.shape))
        tol = torch.as_tensor(rtol).expand_as(err)[i]
        raise AssertionError(f"{int((over > 1).sum())} of {over.numel()} entries differ; worst at {i}: diffusers "
                             f"{float(actual[i]):.8g}, ours {float(expected[i]):.8g}, relative error "
                             f"{float(err[i]):.2e} > {float(tol):.2e}")


def _pair(name, kwargs, T, **config):
    ours = D.Schedule.named(name, T, **kwargs)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_NAME[name], **kwargs, **config)
    return ours, theirs


def _steps(T):
    """diffusers timesteps to check: the first ones, the middle and the last ones."""
    return sorted({0, 1, 5, T // 2, T - 2, T - 1})


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name, kwargs, T", CASES, ids=IDS)
def test_betas_and_alpha_bar_match_with_the_index_shift(name, kwargs, T):
    ours, theirs = _pair(name, kwargs, T)
    assert theirs.betas.shape == (T,) and ours.betas.shape == (T + 1,)
    k = torch.arange(T)
    _close(theirs.betas, ours.betas[_t(k)], RTOL["betas"])
    _close(theirs.alphas_cumprod, ours.alpha_bar[_t(k)], RTOL["alpha_bar"])


@pytest.mark.parametrize("name, kwargs, T", CASES, ids=IDS)
def test_add_noise_is_q_sample_with_one_step_per_row(name, kwargs, T):
    ours, theirs = _pair(name, kwargs, T)
    gen = _gen(0)
    k = torch.tensor([0, T - 1, 1, T // 2, T - 2, 0])  # the first and the last, in any order
    x0 = torch.randn(len(k), 3, 2, generator=gen)
    eps = torch.randn(len(k), 3, 2, generator=gen)
    theirs_xt, ours_xt = theirs.add_noise(x0, eps, k), D.q_sample(x0, _t(k), eps, ours)
    for row in range(len(k)):  # one row at a time, so that each is measured on its own scale
        _close(theirs_xt[row], ours_xt[row], RTOL["x"], entrywise=False)


@pytest.mark.parametrize("name, kwargs, T", CASES, ids=IDS)
def test_fixed_small_variance_is_beta_tilde_and_fixed_large_is_beta(name, kwargs, T):
    ours, theirs = _pair(name, kwargs, T, variance_type="fixed_small")
    k = torch.arange(1, T)
    small = torch.stack([theirs._get_variance(int(i)) for i in k])
    large = torch.stack([theirs._get_variance(int(i), variance_type="fixed_large") for i in k])
    _close(small, ours.posterior_variance[_t(k)], RTOL["betas"] + _beta_rtol(ours, k))
    _close(large, ours.betas[_t(k)], RTOL["betas"] + _beta_rtol(ours, k))
    # k = 0 (our t = 1): q(x_0 | x_1, x_0) is a point mass, beta_tilde_1 = 0 exactly; diffusers clamps it to
    # 1e-20 so that the log-variance types stay finite. step() adds no noise at k = 0, so both sample alike.
    assert ours.posterior_variance[_t(0)] == 0
    assert float(theirs._get_variance(0)) == pytest.approx(1e-20)


def _noise(k, like, seed):
    """The noise z that ``step(..., generator=_gen(seed))`` draws at timestep ``k`` (none at ``k = 0``)."""
    return torch.randn(like.shape, generator=_gen(seed), dtype=like.dtype) if k > 0 else torch.zeros_like(like)


@pytest.mark.parametrize("name, kwargs, T", CASES, ids=IDS)
def test_step_with_epsilon_prediction_is_x0_from_eps_and_the_posterior_mean(name, kwargs, T):
    ours, theirs = _pair(name, kwargs, T, prediction_type="epsilon", clip_sample=False)
    gen = _gen(1)
    xt, eps = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    for k in _steps(T):
        t, rtol = _t(k), RTOL["x"] + _beta_rtol(ours, k)
        out = theirs.step(eps, k, xt, generator=_gen(100 + k))
        x0_hat = D.x0_from_eps(xt, t, eps, ours)
        _close(out.pred_original_sample, x0_hat, RTOL["x"], entrywise=False)
        mean, var = D.q_posterior(x0_hat, xt, t, ours)
        # step() returns mean + sqrt(variance) * z: take z off to compare the means, then compare the samples
        z = _noise(k, xt, 100 + k)
        their_mean = out.prev_sample - (theirs._get_variance(k).sqrt() * z if k > 0 else 0)
        _close(their_mean, mean, rtol, entrywise=False)
        _close(their_mean, D.mean_from_eps(xt, t, eps, ours), rtol, entrywise=False)
        _close(out.prev_sample, mean + var.sqrt() * z, rtol, entrywise=False)


@pytest.mark.parametrize("name, kwargs, T", CASES, ids=IDS)
def test_step_with_sample_prediction_is_the_posterior_mean_of_the_predicted_x0(name, kwargs, T):
    ours, theirs = _pair(name, kwargs, T, prediction_type="sample", clip_sample=False)
    gen = _gen(2)
    xt, x0_hat = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    for k in _steps(T):
        out = theirs.step(x0_hat, k, xt, generator=_gen(200 + k))
        assert torch.equal(out.pred_original_sample, x0_hat)
        mean, var = D.q_posterior(x0_hat, xt, _t(k), ours)
        _close(out.prev_sample, mean + var.sqrt() * _noise(k, xt, 200 + k), RTOL["x"] + _beta_rtol(ours, k),
               entrywise=False)
