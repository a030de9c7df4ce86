r"""The DDPM's negative ELBO, term by term, and the simplified loss (chapter 08).

A model is anything with a network's call signature ``model(xt, t) -> eps``: it predicts the noise, and
its reverse step is :math:`p_\theta(x_{t-1} \mid x_t) = \mathcal N(\mu_\theta(x_t, t), \sigma_t^2 I)` with the
mean of :func:`coursepkg.diffusion.mean_from_eps` and a fixed variance (:func:`~coursepkg.diffusion.reverse_variance`).
:class:`coursepkg.diffusion.exact.OptimalDenoiser` is such a model.

Two ways to write the same bound (Eq. ``ddpm-elbo-consistency`` and Eq. ``ddpm-elbo-decomposed``):

- :func:`elbo` uses :math:`L_0 + \sum_{t=2}^T L_{t-1} + L_T`, every :math:`L_{t-1}` a KL between Gaussians in
  closed form given :math:`x_t \sim q(x_t \mid x_0)`: one noise draw per step, nothing else random;
- :func:`elbo_consistency` pairs each forward step with the reverse step that undoes it, over one
  simulated trajectory :math:`x_{1:T} \sim q(x_{1:T} \mid x_0)`: unbiased too, and far noisier.

Every term is in nats, summed over the dimensions of one example (batch-first ``x0``). Both return an
:class:`ELBOTerms` whose ``steps`` are indexed by ``t`` like the schedule's tensors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from coursepkg import _validate as V
from coursepkg import diffusion as D
from coursepkg.probability import kl_diag_gaussians

DECODERS = ("gaussian", "discrete")


class ELBOTerms(NamedTuple):
    """The negative ELBO of each example, term by term.

    ``steps`` ``(N, T + 1)`` is indexed by ``t``: ``steps[:, 1]`` is the reconstruction term :math:`L_0`,
    ``steps[:, t]`` for ``t >= 2`` the term of the reverse step from ``x_t`` (:math:`L_{t-1}`), ``steps[:, 0]``
    is 0. ``prior`` ``(N,)`` is :math:`L_T`. ``total`` is their sum, :math:`-\\mathrm{ELBO} \\ge -\\log p(x_0)`.
    """

    steps: torch.Tensor
    prior: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.steps.sum(1) + self.prior

    @property
    def terms(self) -> torch.Tensor:
        """The ``T + 1`` terms of each example side by side, ``(N, T + 1)``: :math:`L_0, \\dots, L_{T-1}, L_T`."""
        return torch.cat([self.steps[:, 1:], self.prior[:, None]], 1)

    def one_step_variance(self) -> torch.Tensor:
        """The variance of the estimator a training loop uses, one term drawn uniformly: ``n * terms[:, k]`` with
        ``k`` uniform over the ``n = T + 1`` terms, whose mean is ``total``'s. From the per-term samples,
        :math:`n \\sum_k \\mathbb E[\\ell_k^2] - (\\sum_k \\mathbb E[\\ell_k])^2`."""
        terms = self.terms
        n = terms.shape[1]
        return n * (terms ** 2).mean(0).sum() - terms.mean(0).sum() ** 2


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device (then moved)."""
    dev = like.device if generator is None else generator.device
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=dev).to(like.device)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _gaussian_kl(mu_q, var_q, mu_p, var_p) -> torch.Tensor:
    """KL(N(mu_q, var_q I) || N(mu_p, var_p I)) per example (variances are numbers)."""
    mu_q, mu_p = _flat(mu_q), _flat(mu_p)
    lq = torch.full_like(mu_q, math.log(var_q))
    lp = torch.full_like(mu_q, math.log(var_p))
    return kl_diag_gaussians(mu_q, lq, mu_p, lp)


def _gaussian_nll(x, mean, var) -> torch.Tensor:
    x, mean = _flat(x), _flat(mean)
    return 0.5 * (((x - mean) ** 2) / var + math.log(2 * math.pi * var)).sum(1)


def discretized_gaussian_log_likelihood(x0: torch.Tensor, mean: torch.Tensor, var: float, *,
                                        levels: int = 256) -> torch.Tensor:
    r"""The discrete decoder of Ho et al. (2020, Eq. 13), per example: data with ``levels`` values scaled to
    ``[-1, 1]``, each value given the mass of :math:`\mathcal N(\mu, \sigma^2)` over its bin of width
    :math:`2/(\mathrm{levels}-1)`, the two end bins reaching to :math:`\mp\infty` (Eq. ``ddpm-discrete-decoder``).
    Summed over every dimension of an example; ``x0`` must lie on the grid."""
    x0 = V.tensor("x0", x0, floating=True, min_dim=1)
    mean = V.tensor("mean", mean, floating=True, min_dim=1)
    if mean.shape != x0.shape:
        raise ValueError(f"mean has shape {tuple(mean.shape)} but x0 has {tuple(x0.shape)}; they must match")
    levels = V.integer("levels", levels, minimum=2)
    var = V.number("var", var, positive=True)
    k = (x0 + 1) * (levels - 1) / 2
    if (x0.abs() > 1 + 1e-6).any() or ((k - k.round()).abs() > 1e-4).any():
        raise ValueError(f"x0 must be on the grid of {levels} values in [-1, 1] (2k/{levels - 1} - 1); scale the "
                         "data with coursepkg.data before using the discrete decoder")
    half = 1.0 / (levels - 1)
    sd = var ** 0.5
    hi = torch.where(x0 > 1 - half, torch.full_like(x0, math.inf), (x0 + half - mean) / sd)
    lo = torch.where(x0 < -1 + half, torch.full_like(x0, -math.inf), (x0 - half - mean) / sd)
    # log(Phi(hi) - Phi(lo)), computed on the side of 0 where both tails are small
    flip = (lo + hi.clamp(max=1e30)) > 0
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    log_mass = log_b + torch.log(-torch.expm1((log_a - log_b).clamp(max=-1e-12)))
    return _flat(log_mass).sum(1)


def _decoder_nll(x0, mean, var, decoder, levels=256) -> torch.Tensor:
    if decoder == "gaussian":
        return _gaussian_nll(x0, mean, var)
    return -discretized_gaussian_log_likelihood(x0, mean, var, levels=levels)


def _check(model, x0, schedule, variance, decoder):
    V.function("model", model)
    if not isinstance(schedule, D.Schedule):
        raise TypeError(f"schedule must be a coursepkg.diffusion.Schedule, got {type(schedule).__name__}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(map(repr, DECODERS))}, got {decoder!r}")
    x0 = V.tensor("x0", x0, floating=True, min_dim=2)
    return x0, D.reverse_variance(schedule, variance)


def _eps(model, xt, t):
    out = model(xt, t)
    if not isinstance(out, torch.Tensor) or out.shape != xt.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model(xt, t) must return a noise prediction shaped like xt {tuple(xt.shape)}, got {got}")
    return out


def _prior_kl(mean, var) -> torch.Tensor:
    """KL(N(mean, var I) || N(0, I)) per example: the prior term."""
    return _gaussian_kl(mean, var, torch.zeros_like(mean), 1.0)


@torch.no_grad()
def elbo(model, x0: torch.Tensor, schedule: D.Schedule, *, variance: str = "beta_tilde",
         decoder: str = "gaussian", levels: int = 256, generator: torch.Generator | None = None) -> ELBOTerms:
    r"""Every term of the negative ELBO :math:`L_0 + \sum_{t=2}^T L_{t-1} + L_T` (Eq. ``ddpm-elbo-decomposed``)
    for each row of ``x0`` ``(N, ...)``:

    - :math:`L_T = \mathrm{KL}(q(x_T \mid x_0) \,\|\, \mathcal N(0, I))`, in closed form;
    - :math:`L_{t-1} = \mathrm{KL}(q(x_{t-1} \mid x_t, x_0) \,\|\, p_\theta(x_{t-1} \mid x_t))`, in closed form
      given one draw :math:`x_t \sim q(x_t \mid x_0)`;
    - :math:`L_0 = -\log p_\theta(x_0 \mid x_1)`, the decoder's (``"gaussian"``, variance :math:`\beta_1`, or
      ``"discrete"``, :func:`discretized_gaussian_log_likelihood` with ``levels`` values), given one draw of
      :math:`x_1`.

    ``variance`` is the reverse variance (:func:`~coursepkg.diffusion.reverse_variance`). Costs ``T`` calls of
    ``model``.
    """
    x0, sigma2 = _check(model, x0, schedule, variance, decoder)
    T, N = schedule.T, x0.shape[0]
    steps = x0.new_zeros(N, T + 1)
    for t in range(1, T + 1):
        xt = D.q_sample(x0, t, _randn(x0, generator), schedule)
        mean = D.mean_from_eps(xt, t, _eps(model, xt, t), schedule)
        if t == 1:
            steps[:, 1] = _decoder_nll(x0, mean, float(sigma2[1]), decoder, levels)
        else:
            mu_q, var_q = D.q_posterior(x0, xt, t, schedule)
            steps[:, t] = _gaussian_kl(mu_q, float(var_q.flatten()[0]), mean, float(sigma2[t]))
    ab = float(schedule.alpha_bar[T])
    return ELBOTerms(steps, _prior_kl(ab ** 0.5 * x0, 1 - ab))


@torch.no_grad()
def elbo_consistency(model, x0: torch.Tensor, schedule: D.Schedule, *, variance: str = "beta_tilde",
                     decoder: str = "gaussian", generator: torch.Generator | None = None,
                     as_written: bool = False) -> ELBOTerms:
    r"""The same negative ELBO written with consistency terms (Eq. ``ddpm-elbo-consistency``), over one forward
    trajectory :math:`x_{1:T} \sim q(x_{1:T} \mid x_0)` per row of ``x0``:

    - ``prior``: :math:`\mathrm{KL}(q(x_T \mid x_{T-1}) \,\|\, \mathcal N(0, I))`, given the trajectory's
      :math:`x_{T-1}`;
    - ``steps[:, t]``, ``t = 2..T``: the consistency of the forward step into :math:`x_{t-1}` with the reverse step
      out of :math:`x_t`, :math:`\log q(x_{t-1} \mid x_{t-2}) - \log p_\theta(x_{t-1} \mid x_t)` at the
      trajectory's values (an expectation over *three* variables, since :math:`x_t` is drawn from :math:`x_{t-1}`);
    - ``steps[:, 1]``: :math:`-\log p_\theta(x_0 \mid x_1)`.

    ``as_written=True`` replaces each consistency log-ratio by
    :math:`\mathrm{KL}(q(x_{t-1} \mid x_{t-2}) \,\|\, p_\theta(x_{t-1} \mid x_t))` at the trajectory's
    :math:`(x_{t-2}, x_t)`, as the term is usually written (Luo 2022): that treats :math:`x_{t-1}` as independent
    of :math:`x_t` given :math:`x_{t-2}`, which it is not, so its expectation is *not* the ELBO (chapter 08 measures
    by how much).
    """
    x0, sigma2 = _check(model, x0, schedule, variance, decoder)
    T, N = schedule.T, x0.shape[0]
    chain = D.forward_chain(x0, schedule, generator=generator)           # (T + 1, N, ...)
    steps = x0.new_zeros(N, T + 1)
    for t in range(1, T + 1):
        xt, x_prev = chain[t], chain[t - 1]
        mean = D.mean_from_eps(xt, t, _eps(model, xt, t), schedule)
        if t == 1:
            steps[:, 1] = _decoder_nll(x0, mean, float(sigma2[1]), decoder)
            continue
        fwd_mean, beta = float(schedule.alphas[t - 1]) ** 0.5 * chain[t - 2], float(schedule.betas[t - 1])
        if as_written:
            steps[:, t] = _gaussian_kl(fwd_mean, beta, mean, float(sigma2[t]))
        else:
            steps[:, t] = _gaussian_nll(x_prev, mean, float(sigma2[t])) - _gaussian_nll(x_prev, fwd_mean, beta)
    prior = _prior_kl(float(schedule.alphas[T]) ** 0.5 * chain[T - 1], float(schedule.betas[T]))
    return ELBOTerms(steps, prior)


def simplified_loss(model, x0: torch.Tensor, schedule: D.Schedule, *, t: torch.Tensor | None = None,
                    eps: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Ho et al.'s simplified loss
    :math:`\mathbb E_{t, x_0, \varepsilon}\|\varepsilon - \varepsilon_\theta(x_t, t)\|^2`
    (Eq. ``ddpm-simple-loss``), averaged over the batch and, like ``F.mse_loss``, over the dimensions.

    Every weight of the ELBO's noise errors is set to 1. ``t`` (one step per row, uniform on ``1..T`` when
    not given) and ``eps`` (standard normal) may be passed to fix them. Differentiable in the model.
    """
    V.function("model", model)
    x0 = V.tensor("x0", x0, floating=True, min_dim=2)
    if t is None:
        dev = x0.device if generator is None else generator.device
        t = torch.randint(1, schedule.T + 1, (x0.shape[0],), generator=generator, device=dev).to(x0.device)
    if eps is None:
        eps = _randn(x0, generator)
    xt = D.q_sample(x0, t, eps, schedule)
    return ((eps - _eps(model, xt, t)) ** 2).mean()
