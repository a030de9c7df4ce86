"""coursepkg.diffusion.sampling: the DDPM and DDIM samplers, the sampling loop, DDIM inversion and Langevin
dynamics; checked on a mixture whose optimal denoiser is exact, and step for step against diffusers."""

from __future__ import annotations

import math

import pytest
import torch

from coursepkg import diffusion as D
from coursepkg.diffusion import exact as E

from .helpers import seeded, skewed_mixture_1d

F64 = torch.float64


_gen = seeded


@pytest.fixture
def data():
    return skewed_mixture_1d()


def _model(x, t):
    """A fixed smooth 'network' for step-by-step comparisons."""
    return torch.sin(3 * x) + 0.01 * t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


# --------------------------------------------------------------------------------------------------
# against diffusers
# --------------------------------------------------------------------------------------------------
def _diffusers_like(cls, schedule, **kwargs):
    diffusers = pytest.importorskip("diffusers")
    sch = getattr(diffusers, cls)(num_train_timesteps=schedule.T, clip_sample=False, **kwargs)
    # the same schedule in float64, so that the comparison tests the steps, not float32 rounding
    sch.betas = schedule.betas[1:].clone()
    sch.alphas = 1 - sch.betas
    sch.alphas_cumprod = schedule.alpha_bar[1:].clone()
    return sch


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [10, 37, 100])
def test_timesteps_are_diffusers_plus_one(spacing, steps):
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    sch.set_timesteps(steps)
    assert torch.equal(D.timesteps(1000, steps, spacing), sch.timesteps + 1)


@pytest.mark.parametrize("steps", [None, 10, 25])
@pytest.mark.parametrize("variance, variance_type", [("beta_tilde", "fixed_small"), ("beta", "fixed_large")])
@pytest.mark.parametrize("prediction, prediction_type", [("eps", "epsilon"), ("x0", "sample")])
def test_ddpm_sampler_equals_diffusers_over_a_whole_loop(steps, variance, variance_type, prediction, prediction_type):
    s = D.Schedule.named("linear", 100, beta_start=1e-3, beta_end=0.05)
    theirs = _diffusers_like("DDPMScheduler", s, variance_type=variance_type, prediction_type=prediction_type)
    theirs.set_timesteps(steps or 100)
    ours = D.DDPMSampler(s, variance=variance, steps=steps, prediction=prediction)
    assert torch.equal(theirs.timesteps + 1, ours.timesteps)
    x = torch.randn(6, 3, generator=_gen(1), dtype=F64)
    y = x.clone()
    for k in theirs.timesteps.tolist():
        a = theirs.step(_model(y, torch.tensor([k + 1])), k, y, generator=_gen(k)).prev_sample
        b = ours.step(_model(x, torch.tensor([k + 1])), k + 1, x, generator=_gen(k)).prev
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        x, y = b, a


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction, prediction_type", [("eps", "epsilon"), ("x0", "sample")])
def test_ddim_sampler_equals_diffusers_over_a_whole_loop(steps, eta, prediction, prediction_type):
    s = D.Schedule.named("cosine", 200)
    theirs = _diffusers_like("DDIMScheduler", s, prediction_type=prediction_type)
    theirs.set_timesteps(steps)
    ours = D.DDIMSampler(s, steps=steps, eta=eta, prediction=prediction)
    x = torch.randn(5, 2, 2, generator=_gen(2), dtype=F64)
    y = x.clone()
    for k in theirs.timesteps.tolist():
        a = theirs.step(_model(y, torch.tensor([k + 1])), k, y, eta=eta, generator=_gen(k)).prev_sample
        b = ours.step(_model(x, torch.tensor([k + 1])), k + 1, x, generator=_gen(k)).prev
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        x, y = b, a


# --------------------------------------------------------------------------------------------------
# the samplers' own identities
# --------------------------------------------------------------------------------------------------
def test_ddim_with_eta_one_on_every_step_is_the_ddpm_posterior_step():
    s = D.Schedule.named("linear", 50, beta_start=1e-3, beta_end=0.1)
    ddpm, ddim = D.DDPMSampler(s, variance="beta_tilde"), D.DDIMSampler(s, eta=1.0)
    x = torch.randn(7, 2, generator=_gen(3), dtype=F64)
    for t in (50, 20, 2, 1):
        out = _model(x, torch.tensor([t]))
        a = ddpm.step(out, t, x, generator=_gen(t))
        b = ddim.step(out, t, x, generator=_gen(t))
        torch.testing.assert_close(a.prev, b.prev)
        torch.testing.assert_close(a.x0, D.x0_from_eps(x, t, out, s))


def test_ddpm_step_mean_is_the_posterior_mean_and_the_last_step_adds_no_noise():
    s = D.Schedule.named("cosine", 30)
    sampler = D.DDPMSampler(s, variance="beta")
    x = torch.randn(4, 3, generator=_gen(4), dtype=F64)
    out = _model(x, torch.tensor([9]))
    draws = torch.stack([sampler.step(out, 9, x, generator=_gen(i)).prev for i in range(4000)])
    mean, _ = D.q_posterior(D.x0_from_eps(x, 9, out, s), x, 9, s)
    torch.testing.assert_close(draws.mean(0), mean, atol=5 * math.sqrt(float(s.betas[9]) / 4000), rtol=0)
    assert float(draws.var(0).mean()) == pytest.approx(float(s.betas[9]), rel=0.05)
    last = sampler.step(_model(x, torch.tensor([1])), 1, x, generator=_gen(5)).prev
    assert torch.equal(last, sampler.step(_model(x, torch.tensor([1])), 1, x, generator=_gen(6)).prev)


@pytest.mark.parametrize("make", [lambda s: D.DDPMSampler(s, variance="beta"), lambda s: D.DDPMSampler(s),
                                  lambda s: D.DDIMSampler(s, steps=50, eta=0.0)])
def test_sampling_with_the_optimal_denoiser_reproduces_the_data(data, make):
    s = D.Schedule.named("cosine", 200)
    out = D.sample(E.OptimalDenoiser(data, s), make(s), (6000, 1), generator=_gen(7), dtype=F64, progress=False)
    x = out.x[:, 0]
    # the mixture's mean and variance, and the share of points nearer the second component
    mean, cov = E.moments(data)
    assert float(x.mean()) == pytest.approx(float(mean[0]), abs=0.05)
    assert float(x.var()) == pytest.approx(float(cov[0, 0]), rel=0.06)
    assert float((x > 0.25).double().mean()) == pytest.approx(0.7, abs=0.03)


def test_trajectory_and_errors(data):
    s = D.Schedule.named("cosine", 20)
    sampler = D.DDIMSampler(s, steps=5)
    out = D.sample(E.OptimalDenoiser(data, s), sampler, (8, 1), generator=_gen(8), dtype=F64, progress=False,
                   trajectory=True)
    assert out.trajectory.shape == (6, 8, 1) and out.x0.shape == (5, 8, 1)
    assert torch.equal(out.trajectory[-1], out.x)
    with pytest.raises(ValueError, match="not one of this sampler's timesteps"):
        sampler.step(torch.zeros(8, 1), 7, torch.zeros(8, 1))
    with pytest.raises(ValueError, match="shaped like xt"):
        D.sample(lambda x, t: x[:, :0], sampler, (4, 1), progress=False)
    with pytest.raises(ValueError, match="at most T"):
        D.DDIMSampler(s, steps=21)
    with pytest.raises(ValueError, match="spacing must be one of"):
        D.timesteps(20, 5, "even")
    with pytest.raises(ValueError, match="variance must be one of"):
        D.DDPMSampler(s, variance="learned")
    with pytest.raises(TypeError, match="sampler must be"):
        D.sample(E.OptimalDenoiser(data, s), "ddim", (4, 1))


def test_ddim_inversion_round_trip(data):
    s = D.Schedule.named("cosine", 1000)
    model = E.OptimalDenoiser(data, s)
    x0 = data.sample(200, generator=_gen(9)).x
    errors = {}
    for steps in (20, 100):
        sampler = D.DDIMSampler(s, steps=steps)
        code = D.ddim_invert(model, x0, sampler)
        back = D.sample(model, sampler, None, x_T=code, progress=False).x
        errors[steps] = float((back - x0).abs().median())
        assert float(code.std()) == pytest.approx(1.0, abs=0.15)  # the codes look like noise
    assert errors[100] < 0.05 and errors[100] < errors[20] / 2     # first order: the error shrinks with the step
    with pytest.raises(ValueError, match="eta = 0"):
        D.ddim_invert(model, x0, D.DDIMSampler(s, steps=10, eta=1.0))


def test_clipping_keeps_the_prediction_in_range():
    s = D.Schedule.named("linear", 10, beta_start=0.01, beta_end=0.2)
    x = 5 * torch.randn(6, 2, generator=_gen(10), dtype=F64)
    out = D.DDPMSampler(s, clip_x0=1.0).step(torch.zeros_like(x), 10, x, generator=_gen(11))
    assert out.x0.abs().max() <= 1.0


# --------------------------------------------------------------------------------------------------
# Langevin dynamics
# --------------------------------------------------------------------------------------------------
def test_langevin_on_a_gaussian_has_the_closed_form_step_size_bias():
    # for p = N(0, s^2) the chain x' = (1 - eta / s^2) x + sqrt(2 eta) eps is linear: its stationary variance
    # is 2 eta / (1 - (1 - eta / s^2)^2) = s^2 / (1 - eta / (2 s^2)), above s^2 by a factor that grows with eta
    s2 = 2.0
    for eta in (0.05, 0.5, 1.5):
        chain = D.langevin(lambda x: -x / s2, torch.zeros(20_000, 1, dtype=F64), eta, 300, generator=_gen(12))
        expected = s2 / (1 - eta / (2 * s2))
        assert float(chain.x.var()) == pytest.approx(expected, rel=0.04), eta
    with pytest.raises(ValueError, match="step_size must be a positive number"):
        D.langevin(lambda x: -x, torch.zeros(3, 1), 0.0, 10)


def test_langevin_needs_annealing_to_weigh_the_modes(data):
    s = D.Schedule.named("cosine", 100)
    score = lambda x: E.score(data, x, 1, s)  # noqa: E731  (q(x_1) is the data, to within beta_1)
    x = D.langevin(score, torch.randn(4000, 1, generator=_gen(13), dtype=F64), 0.005, 400, generator=_gen(14)).x
    # each chain settles in the mode of its basin and rarely crosses: the weights stay those of the start
    assert abs(float((x > 0.25).double().mean()) - 0.7) > 0.08
    start = torch.randn(2000, 1, generator=_gen(15), dtype=F64)
    levels = [*range(100, 0, -10), 5, 2, 1]
    annealed = D.annealed_langevin(E.OptimalDenoiser(data, s), s, start, levels, 30, 0.5, generator=_gen(16))
    assert float((annealed > 0.25).double().mean()) == pytest.approx(0.7, abs=0.04)
    assert float(annealed.var()) == pytest.approx(float(E.moments(data)[1][0, 0]), rel=0.06)


def test_ddpm_wrapper_trains_with_fit():
    from coursepkg.train import fit

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2))

        def forward(self, x, t):
            t = torch.as_tensor(t, device=x.device).expand(x.shape[0]).to(x.dtype)[:, None] / 50
            return self.lin(torch.cat([x, t], 1))

    torch.manual_seed(0)
    s = D.Schedule.named("cosine", 50)
    ddpm = D.DDPM(Net(), s)
    x = torch.randn(2000, 2) * torch.tensor([1.0, 0.1]) + torch.tensor([2.0, 0.0])
    hist = fit(ddpm, x, steps=300, batch_size=256, lr=3e-3, progress=False)
    assert hist.mean("loss", last=30) < 0.8 * hist["loss"][0]
    assert ddpm(torch.zeros(4, 2), 3).shape == (4, 2)
