r"""Sampling a diffusion model (chapter 09): ancestral DDPM steps, DDIM steps, one loop, Langevin dynamics.

Every sampler has one interface, as diffusers' schedulers do: it holds a :class:`~coursepkg.diffusion.Schedule`
and a descending list of steps ``sampler.timesteps`` (book indices, ``T`` down to ``1``, or ``S`` of them when
skipping), and ``sampler.step(model_output, t, xt, generator=None)`` takes ``x_t`` to the next step in that list
(``x_0`` after the last one), returning a :class:`StepOutput` ``(prev, x0)``. :func:`sample` runs any sampler with
any model ``model(xt, t) -> eps`` (or ``-> x0`` for ``prediction="x0"``): a network, or the exact optimum
:class:`coursepkg.diffusion.exact.OptimalDenoiser`.

- :class:`DDPMSampler`: the reverse chain of Ho et al. (2020), :math:`x_{t'} = \tilde\mu + \sigma z` with the
  posterior mean of the predicted :math:`\hat x_0` and the variance :math:`\beta` or :math:`\tilde\beta`
  (Eq. ``ddpm-sampling-step``); no noise is added at the last step.
- :class:`DDIMSampler`: Song et al. (2021), deterministic at ``eta = 0`` and the DDPM's posterior at
  ``eta = 1`` (Eq. ``ddim-step``), on ``S`` of the ``T`` steps.
- :func:`langevin` and :func:`annealed_langevin`: Langevin dynamics on a score (Eq. ``langevin``).

Skipped steps. With ``S < T`` steps the timesteps are diffusers' ``"leading"`` spacing: ``k = 0, r, 2r, ...,
(S-1) r`` with ``r = T // S``, i.e. the book's ``t = k + 1``; the step from ``t`` to the previous timestep ``t'``
uses :math:`\bar\alpha_t / \bar\alpha_{t'}` as its :math:`\alpha`, and after ``t = 1`` comes ``t' = 0``
(:math:`\bar\alpha_0 = 1`, the data).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from coursepkg import _validate as V
from coursepkg import chains
from coursepkg import diffusion as D

PREDICTIONS = ("eps", "x0")
SPACINGS = ("leading", "trailing", "linspace")


class StepOutput(NamedTuple):
    """One sampler step: ``prev`` the sample at the next timestep (``x_0`` after the last), ``x0`` the
    prediction of the data made on the way."""

    prev: torch.Tensor
    x0: torch.Tensor


class Samples(NamedTuple):
    """What :func:`sample` returns: ``x`` the final samples; with ``trajectory=True``, ``trajectory`` the states
    ``(S + 1, *shape)`` from ``x_T`` to ``x_0`` and ``x0`` the predictions of the data ``(S, *shape)`` at each step
    (both ``None`` otherwise)."""

    x: torch.Tensor
    trajectory: torch.Tensor | None
    x0: torch.Tensor | None


def timesteps(T: int, steps: int | None = None, spacing: str = "leading") -> torch.Tensor:
    """The descending book steps a sampler visits: all of ``T..1`` (``steps=None``), or ``steps`` of them chosen as
    diffusers' schedulers do (``spacing`` ``"leading"``: ``1, r + 1, ..., (S-1) r + 1`` with ``r = T // S``;
    ``"trailing"``: ``T, T - r, ...``; ``"linspace"``: rounded ``linspace(1, T, S)``)."""
    T = V.positive_int("T", T)
    if steps is None:
        return torch.arange(T, 0, -1)
    S = V.positive_int("steps", steps)
    if S > T:
        raise ValueError(f"steps must be at most T = {T}, got {S}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(map(repr, SPACINGS))}, got {spacing!r}")
    if spacing == "leading":
        k = torch.arange(S) * (T // S)
    elif spacing == "trailing":
        k = torch.round(torch.arange(T, 0, -T / S)).long() - 1
    else:
        k = torch.round(torch.linspace(0, T - 1, S)).long()
    return (k + 1).flip(0) if spacing != "trailing" else k + 1


class _Sampler:
    """What DDPM and DDIM steps share: the schedule, the timesteps, the previous step, the x_0 prediction."""

    def __init__(self, schedule: D.Schedule, steps: int | None, spacing: str, prediction: str, clip_x0):
        if not isinstance(schedule, D.Schedule):
            raise TypeError(f"schedule must be a coursepkg.diffusion.Schedule, got {type(schedule).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(map(repr, PREDICTIONS))}, got {prediction!r}")
        self.schedule, self.prediction = schedule, prediction
        self.clip_x0 = None if clip_x0 is None else V.number("clip_x0", clip_x0, positive=True)
        self.timesteps = timesteps(schedule.T, steps, spacing)
        self._prev = {int(t): int(p) for t, p in zip(self.timesteps, torch.cat([self.timesteps[1:],
                                                                                 torch.zeros(1, dtype=torch.long)]),
                                                     strict=True)}

    def prev(self, t: int) -> int:
        """The step that follows ``t`` in :attr:`timesteps` (``0`` after the last)."""
        t = int(t)
        if t not in self._prev:
            raise ValueError(f"t = {t} is not one of this sampler's timesteps ({self.timesteps[0].item()}, ..., "
                             f"{self.timesteps[-1].item()})")
        return self._prev[t]

    def _alpha_bars(self, t: int) -> tuple[float, float]:
        return float(self.schedule.alpha_bar[t]), float(self.schedule.alpha_bar[self.prev(t)])

    def _x0_and_eps(self, model_output: torch.Tensor, t: int, xt: torch.Tensor):
        if not isinstance(model_output, torch.Tensor) or model_output.shape != xt.shape:
            got = tuple(model_output.shape) if isinstance(model_output, torch.Tensor) else type(model_output).__name__
            raise ValueError(f"model_output must be shaped like xt {tuple(xt.shape)}, got {got}")
        ab = float(self.schedule.alpha_bar[t])
        if self.prediction == "eps":
            x0 = (xt - math.sqrt(1 - ab) * model_output) / math.sqrt(ab)
        else:
            x0 = model_output
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        eps = model_output if self.prediction == "eps" else (xt - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        return x0, eps

    def _noise(self, like: torch.Tensor, generator) -> torch.Tensor:
        dev = like.device if generator is None else generator.device
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=dev).to(like.device)

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in self._describe().items())
        return f"{type(self).__name__}(T={self.schedule.T}, steps={len(self.timesteps)}, {extra})"


class DDPMSampler(_Sampler):
    r"""Ancestral sampling, one reverse step :math:`p_\theta(x_{t'} \mid x_t)` at a time (Eq. ``ddpm-sampling-step``):

    .. math:: x_{t'} = \tilde\mu(\hat x_0, x_t) + \sigma_t z,\qquad z \sim \mathcal N(0, I),

    where :math:`\hat x_0` is the model's prediction of the data (from its noise prediction by
    :func:`~coursepkg.diffusion.x0_from_eps`, clipped to ``[-clip_x0, clip_x0]`` when asked, for bounded data),
    :math:`\tilde\mu` the posterior mean (Eq. ``ddpm-posterior``) and :math:`\sigma_t^2` ``variance``: ``"beta"``
    (:math:`\beta_t`) or ``"beta_tilde"`` (:math:`\tilde\beta_t`), diffusers' ``"fixed_large"`` and
    ``"fixed_small"``. The last step (to ``t' = 0``) adds no noise: it returns the mean. ``steps`` skips steps
    (see the module docstring), with :math:`\beta_t` replaced by :math:`1 - \bar\alpha_t / \bar\alpha_{t'}`.
    """

    def __init__(self, schedule: D.Schedule, *, variance: str = "beta_tilde", steps: int | None = None,
                 spacing: str = "leading", prediction: str = "eps", clip_x0: float | None = None):
        if variance not in D.VARIANCES:
            raise ValueError(f"variance must be one of {', '.join(map(repr, D.VARIANCES))}, got {variance!r}")
        super().__init__(schedule, steps, spacing, prediction, clip_x0)
        self.variance = variance

    def _describe(self):
        return {"variance": self.variance, "prediction": self.prediction, "clip_x0": self.clip_x0}

    def step(self, model_output: torch.Tensor, t: int, xt: torch.Tensor, *,
             generator: torch.Generator | None = None) -> StepOutput:
        """From ``x_t`` to the next timestep, given the model's output at ``(xt, t)``."""
        t = int(t)
        ab, ab_prev = self._alpha_bars(t)
        x0, _ = self._x0_and_eps(model_output, t, xt)
        beta = 1 - ab / ab_prev                              # beta_t, or its skipped-step version
        mean = (math.sqrt(ab_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - ab_prev) * xt) / (1 - ab)
        if self.prev(t) == 0:
            return StepOutput(mean, x0)
        var = beta if self.variance == "beta" else (1 - ab_prev) / (1 - ab) * beta
        return StepOutput(mean + math.sqrt(var) * self._noise(xt, generator), x0)


class DDIMSampler(_Sampler):
    r"""The DDIM step of Song et al. (2021, Eq. 12; Eq. ``ddim-step``), on ``steps`` of the ``T`` steps:

    .. math:: x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1 - \bar\alpha_{t'} - \sigma_t^2}\,\hat\varepsilon
              + \sigma_t z,

    .. math:: \sigma_t = \eta\,\sqrt{\frac{1 - \bar\alpha_{t'}}{1 - \bar\alpha_t}}
              \sqrt{1 - \frac{\bar\alpha_t}{\bar\alpha_{t'}}}.

    ``eta = 0`` is deterministic (an ODE-like map from noise to data, invertible: :func:`ddim_invert`);
    ``eta = 1`` is the DDPM's posterior with :math:`\tilde\beta`. :math:`\hat\varepsilon` is the model's noise
    prediction, kept as predicted when :math:`\hat x_0` is clipped (as diffusers does).
    """

    def __init__(self, schedule: D.Schedule, *, steps: int | None = None, eta: float = 0.0,
                 spacing: str = "leading", prediction: str = "eps", clip_x0: float | None = None):
        super().__init__(schedule, steps, spacing, prediction, clip_x0)
        self.eta = V.number("eta", eta, nonnegative=True)

    def _describe(self):
        return {"eta": self.eta, "prediction": self.prediction, "clip_x0": self.clip_x0}

    def step(self, model_output: torch.Tensor, t: int, xt: torch.Tensor, *,
             generator: torch.Generator | None = None) -> StepOutput:
        """From ``x_t`` to the next timestep, given the model's output at ``(xt, t)``."""
        t = int(t)
        ab, ab_prev = self._alpha_bars(t)
        x0, eps = self._x0_and_eps(model_output, t, xt)
        sigma = self.eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            prev = prev + sigma * self._noise(xt, generator)
        return StepOutput(prev, x0)


def _call(model, x: torch.Tensor, t: int) -> torch.Tensor:
    out = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model(xt, t) must return a tensor shaped like xt {tuple(x.shape)}, got {got}")
    return out


@torch.no_grad()
def sample(model, sampler, shape, *, x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
           device=None, dtype: torch.dtype = torch.float32, progress: bool = True, trajectory: bool = False) -> Samples:
    """Draw samples: start from ``x_T ~ N(0, I)`` of ``shape`` (batch first) or from the given ``x_T``, and take
    ``sampler.step`` at each of ``sampler.timesteps``, calling ``model(xt, t)`` with one step per row. A
    ``tqdm.auto`` progress bar when ``progress``; ``trajectory=True`` keeps every state and prediction
    (:class:`Samples`). ``device`` defaults to the model's (its first parameter's), else the CPU."""
    V.function("model", model)
    if not isinstance(sampler, _Sampler):
        raise TypeError(f"sampler must be a DDPMSampler or DDIMSampler, got {type(sampler).__name__}")
    if device is None:
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    if x_T is None:
        shape = tuple(V.positive_int("shape", s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        x = sampler._noise(torch.empty(shape, dtype=dtype, device=device), generator)
    else:
        x = V.tensor("x_T", x_T, floating=True, min_dim=1).to(device)
    states, preds = ([x], []) if trajectory else (None, None)
    steps = sampler.timesteps.tolist()
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=type(sampler).__name__, leave=False)
    for t in steps:
        out = sampler.step(_call(model, x, t), t, x, generator=generator)
        x = out.prev
        if trajectory:
            states.append(x)
            preds.append(out.x0)
    if trajectory:
        return Samples(x, torch.stack(states), torch.stack(preds))
    return Samples(x, None, None)


@torch.no_grad()
def ddim_invert(model, x0: torch.Tensor, sampler: DDIMSampler, *, progress: bool = False) -> torch.Tensor:
    r"""Run the deterministic DDIM map backwards, from data ``x0`` to its code ``x_T``: for each step up the
    timesteps, :math:`x_t = \sqrt{\bar\alpha_t}\hat x_0 + \sqrt{1 - \bar\alpha_t}\hat\varepsilon` with the noise
    predicted at the target step from the current point (the usual first-order inversion, exact as the steps
    shrink). Decoding the result with :func:`sample` (same sampler, ``eta = 0``) gives ``x0`` back approximately."""
    V.function("model", model)
    if not isinstance(sampler, DDIMSampler) or sampler.eta != 0:
        raise ValueError("ddim_invert needs a DDIMSampler with eta = 0 (the deterministic map)")
    x = V.tensor("x0", x0, floating=True, min_dim=1)
    ab = sampler.schedule.alpha_bar
    up = sampler.timesteps.flip(0).tolist()
    if progress:
        from tqdm.auto import tqdm
        up = tqdm(up, desc="DDIM inversion", leave=False)
    for t in up:
        prev = sampler.prev(t)
        eps = _call(model, x, t)
        a_prev, a = float(ab[prev]), float(ab[t])
        x0_hat = (x - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
        x = math.sqrt(a) * x0_hat + math.sqrt(1 - a) * eps
    return x


# --------------------------------------------------------------------------------------------------
# Langevin dynamics
# --------------------------------------------------------------------------------------------------
def langevin(score: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, step_size: float, n_steps: int, *,
             keep=(), generator: torch.Generator | None = None) -> chains.Chain:
    r"""Langevin dynamics on the score :math:`\nabla\log p` (Eq. ``langevin``; lecture 000's sampler),

    .. math:: x_{k+1} = x_k + \eta\,\nabla\log p(x_k) + \sqrt{2\eta}\,\varepsilon_k,

    from the start points ``x`` for ``n_steps`` steps of size ``step_size`` (:math:`\eta`). Its stationary law is
    :math:`p` as :math:`\eta \to 0`; a finite step biases it (the step-size trade-off of chapter 09). It is
    chapter 02's chain (:func:`coursepkg.chains.sample_chain`) with the score as drift and noise variance
    :math:`2\eta`; ``keep`` lists the steps whose states are returned."""
    eta = V.number("step_size", step_size, positive=True)
    return chains.sample_chain(x, score, eta, 2 * eta, n_steps, keep=keep, generator=generator)


@torch.no_grad()
def annealed_langevin(model, schedule: D.Schedule, x: torch.Tensor, levels, n_steps: int, step_scale: float, *,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Annealed Langevin dynamics (Song and Ermon 2019) with a noise predictor: for each noise level ``t`` in
    ``levels`` (descending book steps), ``n_steps`` Langevin steps on :math:`q(x_t)`, whose score is
    :math:`-\varepsilon_\theta(x_t, t)/\sqrt{1 - \bar\alpha_t}` (:func:`~coursepkg.diffusion.score_from_eps`), with
    the step size :math:`\eta_t = \text{step\_scale}\,(1 - \bar\alpha_t)`, proportional to the level's noise
    variance. Returns the final state (near :math:`q(x_{t_\min})`)."""
    V.function("model", model)
    n_steps = V.positive_int("n_steps", n_steps)
    scale = V.number("step_scale", step_scale, positive=True)
    levels = [int(t) for t in levels]
    if not levels or levels != sorted(levels, reverse=True):
        raise ValueError("levels must be a non-empty list of steps in descending order")
    x = V.tensor("x", x, floating=True, min_dim=1)
    for t in levels:
        ab = float(schedule.alpha_bar[int(schedule.check_t(t))])
        score = lambda y, t=t: D.score_from_eps(y, t, _call(model, y, t), schedule)  # noqa: E731
        x = langevin(score, x, scale * (1 - ab), n_steps, generator=generator).x
    return x


class DDPM(torch.nn.Module):
    """A noise-predicting network and its schedule, trainable with :func:`coursepkg.train.fit`:
    ``fit(DDPM(net, schedule), x0, steps=...)`` minimises :meth:`loss`, the simplified loss
    (Eq. ``ddpm-simple-loss``) with ``t`` uniform on ``1..T``. Calling it is calling the network,
    ``ddpm(xt, t) -> eps``, so it is also the model :func:`sample` takes."""

    def __init__(self, net: torch.nn.Module, schedule: D.Schedule):
        super().__init__()
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"net must be an nn.Module, got {type(net).__name__}")
        if not isinstance(schedule, D.Schedule):
            raise TypeError(f"schedule must be a coursepkg.diffusion.Schedule, got {type(schedule).__name__}")
        self.net, self.schedule = net, schedule

    def forward(self, xt: torch.Tensor, t) -> torch.Tensor:
        return self.net(xt, t)

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        return D.simplified_loss(self.net, x0, self.schedule)
