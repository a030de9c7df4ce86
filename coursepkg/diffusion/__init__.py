"""Chapters 08-10: denoising diffusion models, the forward process and its closed forms.

This is the first part of the module chapter 08 builds (issue 12): the noise schedule, the forward
process ``q(x_t | x_0)``, the posterior ``q(x_{t-1} | x_t, x_0)`` and the conversions between the
quantities a network may predict. :mod:`coursepkg.diffusion.exact` diffuses a Gaussian mixture in
closed form, so that every identity can be checked against exact numbers. Chapter 09 adds the training
loss and the samplers (:mod:`~coursepkg.diffusion.sampling`), chapter 10 conditioning and guidance
(:mod:`coursepkg.diffusion.guidance`, and the labelled mixtures of :mod:`~coursepkg.diffusion.exact`).

**One indexing convention.** The book numbers the steps ``t = 1, ..., T`` and writes ``x_0`` for the
data. Every per-step tensor of a :class:`Schedule` has ``T + 1`` entries and is indexed by ``t``
itself: entry ``0`` is the boundary ``t = 0`` (``beta_0 = 0``, ``alpha_bar_0 = 1``: no noise), entries
``1..T`` are the steps. So ``schedule.alpha_bar[t]`` is the book's :math:`\\bar\\alpha_t` with no
shift, and ``schedule.alpha_bar[t - 1]`` is :math:`\\bar\\alpha_{t-1}`. (diffusers' schedulers index
the same steps ``0..T-1``: their timestep ``k`` is the book's ``t = k + 1``.) Functions that take a
step ``t`` accept an int or an integer tensor of shape ``(N,)``, one step per row of a batch-first
``x``, and refuse any ``t`` outside ``1..T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from coursepkg import _validate as V

SCHEDULES = ("linear", "quadratic", "cosine", "constant")
MAX_BETA = 0.999  # Nichol and Dhariwal (2021) clip the cosine schedule's betas here, to avoid beta_T = 1


@dataclass(frozen=True)
class Schedule:
    """A variance-preserving noise schedule ``beta_1..beta_T`` and what follows from it (Eq. ``ddpm-forward``).

    Build one with :meth:`from_betas` or :meth:`named`. All tensors have ``T + 1`` entries indexed by
    ``t`` (see the module docstring): ``betas``, ``alphas = 1 - betas``, ``alpha_bar`` (their running
    product), ``posterior_variance`` (:math:`\\tilde\\beta_t`, Eq. ``ddpm-posterior``), the two
    posterior-mean coefficients and ``snr = alpha_bar / (1 - alpha_bar)``.
    """

    betas: torch.Tensor

    def __post_init__(self):
        b = self.betas
        if not isinstance(b, torch.Tensor) or b.dim() != 1 or b.numel() < 2 or not b.is_floating_point():
            raise ValueError("betas must be a 1-D floating tensor of T + 1 entries (entry 0 is t = 0); "
                             "build a Schedule with Schedule.from_betas or Schedule.named")
        if b[0] != 0:
            raise ValueError(f"betas[0] is the boundary t = 0 and must be 0, got {float(b[0])}")
        steps = b[1:]
        if not torch.isfinite(steps).all() or not ((steps > 0) & (steps < 1)).all():
            raise ValueError(f"every beta_t, t = 1..T, must lie in (0, 1); got values in "
                             f"[{float(steps.min()):.3g}, {float(steps.max()):.3g}]")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas) -> Schedule:
        """The schedule of ``betas = (beta_1, ..., beta_T)`` (the boundary ``beta_0 = 0`` is added)."""
        betas = torch.as_tensor(betas, dtype=torch.float64) if not isinstance(betas, torch.Tensor) else betas
        if betas.dim() != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a 1-D sequence (beta_1, ..., beta_T), got shape {tuple(betas.shape)}")
        betas = betas.to(torch.float64)
        return cls(torch.cat([betas.new_zeros(1), betas]))

    @classmethod
    def named(cls, name: str, T: int, **kwargs) -> Schedule:
        """A schedule by name (Eq. ``beta-schedules``), with ``T`` steps:

        - ``"linear"``: ``beta_t`` from ``beta_start=1e-4`` to ``beta_end=0.02`` evenly (Ho et al. 2020,
          whose values are meant for ``T = 1000``);
        - ``"quadratic"``: the square roots evenly spaced between those of ``beta_start`` and ``beta_end``;
        - ``"cosine"``: ``alpha_bar_t = f(t) / f(0)``, ``f(t) = cos((t / T + s) / (1 + s) * pi / 2)^2`` with
          the offset ``s=0.008``, and ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}`` clipped at 0.999
          (Nichol and Dhariwal 2021);
        - ``"constant"``: ``beta_t = beta`` for every ``t`` (``beta=0.02``).
        """
        T = V.positive_int("T", T)
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; use one of {', '.join(SCHEDULES)}")
        allowed = {"linear": {"beta_start", "beta_end"}, "quadratic": {"beta_start", "beta_end"},
                   "cosine": {"s"}, "constant": {"beta"}}[name]
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f"the {name} schedule takes {', '.join(sorted(allowed))}, not {', '.join(sorted(unknown))}")
        if name in ("linear", "quadratic"):
            lo = V.number("beta_start", kwargs.get("beta_start", 1e-4), positive=True)
            hi = V.number("beta_end", kwargs.get("beta_end", 0.02), positive=True)
            if name == "linear":
                betas = torch.linspace(lo, hi, T, dtype=torch.float64)
            else:
                betas = torch.linspace(math.sqrt(lo), math.sqrt(hi), T, dtype=torch.float64) ** 2
        elif name == "cosine":
            s = V.number("s", kwargs.get("s", 0.008), nonnegative=True)
            t = torch.arange(T + 1, dtype=torch.float64)
            f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
            alpha_bar = f / f[0]
            betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=MAX_BETA)
        else:
            beta = V.number("beta", kwargs.get("beta", 0.02), positive=True)
            betas = torch.full((T,), beta, dtype=torch.float64)
        return cls.from_betas(betas)

    # --- what follows from the betas ------------------------------------------------------------
    @property
    def T(self) -> int:
        return self.betas.numel() - 1

    @property
    def alphas(self) -> torch.Tensor:
        return 1 - self.betas

    @property
    def alpha_bar(self) -> torch.Tensor:
        """:math:`\\bar\\alpha_t = \\prod_{s \\le t} \\alpha_s`, with :math:`\\bar\\alpha_0 = 1`
        (Eq. ``ddpm-marginal``)."""
        return torch.cumprod(self.alphas, 0)

    @property
    def posterior_variance(self) -> torch.Tensor:
        """:math:`\\tilde\\beta_t = \\frac{1 - \\bar\\alpha_{t-1}}{1 - \\bar\\alpha_t}\\beta_t`
        (``0`` at ``t = 0`` and ``t = 1``; diffusers returns ``1e-20`` at ``t = 1`` to keep its log finite)."""
        ab = self.alpha_bar
        out = torch.zeros_like(ab)
        out[1:] = (1 - ab[:-1]) / (1 - ab[1:]) * self.betas[1:]
        return out

    @property
    def posterior_mean_coef_x0(self) -> torch.Tensor:
        """The coefficient of ``x_0`` in the posterior mean:
        :math:`\\sqrt{\\bar\\alpha_{t-1}}\\beta_t / (1 - \\bar\\alpha_t)`."""
        ab = self.alpha_bar
        out = torch.zeros_like(ab)
        out[1:] = ab[:-1].sqrt() * self.betas[1:] / (1 - ab[1:])
        return out

    @property
    def posterior_mean_coef_xt(self) -> torch.Tensor:
        """The coefficient of ``x_t`` in the posterior mean:
        :math:`\\sqrt{\\alpha_t}(1 - \\bar\\alpha_{t-1}) / (1 - \\bar\\alpha_t)`."""
        ab = self.alpha_bar
        out = torch.zeros_like(ab)
        out[1:] = self.alphas[1:].sqrt() * (1 - ab[:-1]) / (1 - ab[1:])
        return out

    @property
    def snr(self) -> torch.Tensor:
        """The signal-to-noise ratio :math:`\\bar\\alpha_t / (1 - \\bar\\alpha_t)` (infinite at ``t = 0``)."""
        ab = self.alpha_bar
        return ab / (1 - ab)

    def at(self, values: torch.Tensor, t, like: torch.Tensor) -> torch.Tensor:
        """``values[t]`` shaped to broadcast against the batch-first ``like`` (one step per row), in its
        dtype and device. ``t`` is an int or an integer tensor ``(N,)`` with every entry in ``1..T``."""
        t = self.check_t(t, like)
        out = values.to(like.device)[t].to(like.dtype)
        return out.reshape(out.shape + (1,) * (like.dim() - out.dim()))

    def check_t(self, t, like: torch.Tensor | None = None) -> torch.Tensor:
        """``t`` as an integer tensor, after checking it lies in ``1..T`` (and has one entry per row of ``like``)."""
        if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
            raise TypeError(f"t must be an int or an integer tensor, got {type(t).__name__}")
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.dtype == torch.bool or t.dim() > 1:
            raise TypeError(f"t must be an int or a 1-D integer tensor (one step per row), got {t.dtype} "
                            f"of shape {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 1 or int(t.max()) > self.T):
            raise ValueError(f"t must lie in 1..T = 1..{self.T} (t = 0 is the data itself); got values in "
                             f"{int(t.min())}..{int(t.max())}")
        if like is not None and t.dim() == 1 and (like.dim() == 0 or t.shape[0] != like.shape[0]):
            raise ValueError(f"t has {t.shape[0]} entries but x has {like.shape[0] if like.dim() else 0} rows: "
                             "give one step per row, or one int for all")
        return t.to("cpu")


def _x(name: str, x) -> torch.Tensor:
    return V.tensor(name, x, floating=True, min_dim=1)


def _same(name: str, a: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if a.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(a.shape)} but {ref_name} has {tuple(ref.shape)}; they must match")


def q_sample(x0: torch.Tensor, t, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """A draw of :math:`q(x_t \\mid x_0)`,
    :math:`x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1 - \\bar\\alpha_t}\\,\\varepsilon` (Eq. ``ddpm-marginal``),
    with the noise ``eps`` given (same shape as ``x0``)."""
    x0, eps = _x("x0", x0), _x("eps", eps)
    _same("eps", eps, "x0", x0)
    ab = schedule.at(schedule.alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def q_posterior(x0: torch.Tensor, xt: torch.Tensor, t, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of :math:`q(x_{t-1} \\mid x_t, x_0)` (Eq. ``ddpm-posterior``):
    :math:`\\tilde\\mu_t = \\frac{\\sqrt{\\bar\\alpha_{t-1}}\\beta_t}{1-\\bar\\alpha_t} x_0
    + \\frac{\\sqrt{\\alpha_t}(1-\\bar\\alpha_{t-1})}{1-\\bar\\alpha_t} x_t` and :math:`\\tilde\\beta_t`.
    The variance is returned shaped to broadcast against ``x0``."""
    x0, xt = _x("x0", x0), _x("xt", xt)
    _same("xt", xt, "x0", x0)
    mean = schedule.at(schedule.posterior_mean_coef_x0, t, x0) * x0 + \
        schedule.at(schedule.posterior_mean_coef_xt, t, x0) * xt
    return mean, schedule.at(schedule.posterior_variance, t, x0)


def x0_from_eps(xt: torch.Tensor, t, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`x_0 = (x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\varepsilon) / \\sqrt{\\bar\\alpha_t}`
    (Eq. ``ddpm-marginal`` solved for x_0)."""
    xt, eps = _x("xt", xt), _x("eps", eps)
    _same("eps", eps, "xt", xt)
    ab = schedule.at(schedule.alpha_bar, t, xt)
    return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(xt: torch.Tensor, t, x0: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`\\varepsilon = (x_t - \\sqrt{\\bar\\alpha_t}\\,x_0) / \\sqrt{1-\\bar\\alpha_t}`."""
    xt, x0 = _x("xt", xt), _x("x0", x0)
    _same("x0", x0, "xt", xt)
    ab = schedule.at(schedule.alpha_bar, t, xt)
    return (xt - ab.sqrt() * x0) / (1 - ab).sqrt()


def mean_from_eps(xt: torch.Tensor, t, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """The posterior mean written with the noise: :math:`\\tilde\\mu_t = \\frac{1}{\\sqrt{\\alpha_t}}
    \\big(x_t - \\frac{\\beta_t}{\\sqrt{1-\\bar\\alpha_t}}\\varepsilon\\big)` (Eq. ``ddpm-mean-eps``)."""
    xt, eps = _x("xt", xt), _x("eps", eps)
    _same("eps", eps, "xt", xt)
    ab = schedule.at(schedule.alpha_bar, t, xt)
    beta = schedule.at(schedule.betas, t, xt)
    return (xt - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt()


def score_from_eps(xt: torch.Tensor, t, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """:math:`\\nabla_{x_t}\\log q(x_t \\mid x_0) = -\\varepsilon / \\sqrt{1-\\bar\\alpha_t}`: noise is a scaled score
    (and, for the optimal predictor, the score of the marginal :math:`q(x_t)`)."""
    xt, eps = _x("xt", xt), _x("eps", eps)
    _same("eps", eps, "xt", xt)
    return -eps / (1 - schedule.at(schedule.alpha_bar, t, xt)).sqrt()


def eps_from_score(xt: torch.Tensor, t, score: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """The inverse of :func:`score_from_eps`:
    :math:`\\varepsilon = -\\sqrt{1-\\bar\\alpha_t}\\,\\nabla\\log q(x_t)`."""
    xt, score = _x("xt", xt), _x("score", score)
    _same("score", score, "xt", xt)
    return -(1 - schedule.at(schedule.alpha_bar, t, xt)).sqrt() * score


def q_step(x_prev: torch.Tensor, t, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """One forward step, a draw of :math:`q(x_t \\mid x_{t-1}) = \\mathcal N(\\sqrt{\\alpha_t}\\,x_{t-1}, \\beta_t I)`:
    :math:`x_t = \\sqrt{1-\\beta_t}\\,x_{t-1} + \\sqrt{\\beta_t}\\,\\varepsilon` (Eq. ``ddpm-forward``). The noise is
    scaled by the *standard deviation* :math:`\\sqrt{\\beta_t}`, not by :math:`\\beta_t`."""
    x_prev, eps = _x("x_prev", x_prev), _x("eps", eps)
    _same("eps", eps, "x_prev", x_prev)
    beta = schedule.at(schedule.betas, t, x_prev)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * eps


def forward_chain(x0: torch.Tensor, schedule: Schedule, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """A whole forward trajectory from each row of ``x0``, one :func:`q_step` at a time: a tensor
    ``(T + 1, *x0.shape)`` whose entry ``t`` is ``x_t`` (entry 0 is ``x0`` itself)."""
    x0 = _x("x0", x0)
    out = [x0]
    dev = x0.device if generator is None else generator.device
    for t in range(1, schedule.T + 1):
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=dev).to(x0.device)
        out.append(q_step(out[-1], t, eps, schedule))
    return torch.stack(out)


def reverse_variance(schedule: Schedule, variance: str = "beta_tilde") -> torch.Tensor:
    """The reverse process's fixed variances :math:`\\sigma_t^2` (Ho et al. 2020, section 3.2), ``T + 1`` entries
    indexed by ``t``: ``"beta_tilde"`` (:math:`\\tilde\\beta_t`, the posterior's, right when the data is one
    point) or ``"beta"`` (:math:`\\beta_t`, right when the data is :math:`\\mathcal N(0, I)`). Entry 1 is
    :math:`\\beta_1` for both: it is the variance of the decoder :math:`p_\\theta(x_0 \\mid x_1)`, since
    :math:`\\tilde\\beta_1 = 0`."""
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(map(repr, VARIANCES))}, got {variance!r}")
    out = (schedule.posterior_variance if variance == "beta_tilde" else schedule.betas).clone()
    out[1] = schedule.betas[1]
    return out


VARIANCES = ("beta_tilde", "beta")
TARGETS = ("eps", "x0", "mean", "score")


def elbo_weight(t, schedule: Schedule, *, variance: str = "beta_tilde", target: str = "eps") -> torch.Tensor:
    r"""The weight :math:`w_t` of a predictor's squared error in the ELBO term :math:`L_{t-1}`
    (Eq. ``ddpm-elbo-weight``):

    .. math:: \mathrm{KL}\big(q(x_{t-1}\mid x_t, x_0)\,\|\,p_\theta(x_{t-1}\mid x_t)\big)
              = \frac{\|\tilde\mu_t - \mu_\theta\|^2}{2\sigma_t^2} + c_t = w_t\,\|y - y_\theta\|^2 + c_t,

    when both Gaussians have the variance :math:`\sigma_t^2 I` (:func:`reverse_variance`; ``c_t`` is 0 when
    :math:`\sigma_t^2 = \tilde\beta_t`) and the model's mean is written with its prediction :math:`y_\theta` of

    - ``target="eps"``, the noise: :math:`w_t = \beta_t^2 / (2\sigma_t^2\alpha_t(1-\bar\alpha_t))`;
    - ``"x0"``, the data: :math:`w_t = \bar\alpha_{t-1}\beta_t^2 / (2\sigma_t^2(1-\bar\alpha_t)^2)`;
    - ``"mean"``, the posterior mean itself: :math:`w_t = 1/(2\sigma_t^2)`;
    - ``"score"``, :math:`\nabla\log q(x_t)`: :math:`w_t = \beta_t^2 / (2\sigma_t^2\alpha_t)`.

    With :math:`\sigma_t^2 = \tilde\beta_t` the x0 weight is :math:`\frac12(\mathrm{SNR}_{t-1} - \mathrm{SNR}_t)` and
    the eps weight :math:`\frac12(\mathrm{SNR}_{t-1}/\mathrm{SNR}_t - 1)` (Kingma et al. 2021). The simplified
    loss sets the eps weight to 1. ``t`` is in ``2..T`` (:math:`L_0` is a decoder term, not this KL); returns
    one weight per entry of ``t``.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(map(repr, TARGETS))}, got {target!r}")
    sigma2 = reverse_variance(schedule, variance)
    t = schedule.check_t(t)
    if bool((t == 1).any()):
        raise ValueError("the weights are those of the KL terms L_{t-1}, t = 2..T; at t = 1 the term L_0 is the "
                         "decoder's log-likelihood (see coursepkg.diffusion.loss.elbo)")
    beta, alpha, ab, ab_prev = schedule.betas[t], schedule.alphas[t], schedule.alpha_bar[t], schedule.alpha_bar[t - 1]
    scale = {"eps": beta ** 2 / (alpha * (1 - ab)), "x0": ab_prev * beta ** 2 / (1 - ab) ** 2,
             "mean": torch.ones_like(beta), "score": beta ** 2 / alpha}[target]
    return scale / (2 * sigma2[t])


# --- the variance-exploding alternative ---------------------------------------------------------
def ve_sigmas(T: int, sigma_min: float = 0.01, sigma_max: float = 50.0) -> torch.Tensor:
    """The noise levels of a variance-exploding process (Song and Ermon 2019): ``T + 1`` entries indexed by
    ``t``, ``sigma_0 = 0`` and ``sigma_1..sigma_T`` geometric from ``sigma_min`` to ``sigma_max``
    (Eq. ``ve-forward``)."""
    T = V.positive_int("T", T)
    lo = V.number("sigma_min", sigma_min, positive=True)
    hi = V.number("sigma_max", sigma_max, positive=True)
    if hi <= lo:
        raise ValueError(f"sigma_max must exceed sigma_min, got {hi} <= {lo}")
    steps = torch.logspace(math.log10(lo), math.log10(hi), T, dtype=torch.float64)
    return torch.cat([steps.new_zeros(1), steps])


def ve_q_step(x_prev: torch.Tensor, t: int, eps: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """One variance-exploding step, a draw of
    :math:`q(x_t \\mid x_{t-1}) = \\mathcal N(x_{t-1}, (\\sigma_t^2 - \\sigma_{t-1}^2) I)` (Eq. ``ve-forward``):
    nothing shrinks the signal, so the variance grows by :math:`\\sigma_t^2` in all."""
    x_prev, eps = _x("x_prev", x_prev), _x("eps", eps)
    _same("eps", eps, "x_prev", x_prev)
    t = V.integer("t", t, minimum=1)
    if sigmas.dim() != 1 or t >= sigmas.numel():
        raise ValueError(f"t must lie in 1..{sigmas.numel() - 1} for these sigmas (T + 1 entries), got {t}")
    return x_prev + float(sigmas[t] ** 2 - sigmas[t - 1] ** 2) ** 0.5 * eps


from coursepkg.diffusion.loss import (  # noqa: E402  (the loss module uses the functions above)
    ELBOTerms,
    discretized_gaussian_log_likelihood,
    elbo,
    elbo_consistency,
    simplified_loss,
)
from coursepkg.diffusion.sampling import (  # noqa: E402
    DDPM,
    DDIMSampler,
    DDPMSampler,
    Samples,
    StepOutput,
    annealed_langevin,
    ddim_invert,
    langevin,
    sample,
    timesteps,
)

__all__ = ["Schedule", "SCHEDULES", "MAX_BETA", "VARIANCES", "TARGETS", "q_sample", "q_step", "forward_chain",
           "q_posterior", "x0_from_eps", "eps_from_x0", "mean_from_eps", "score_from_eps", "eps_from_score",
           "reverse_variance", "elbo_weight", "ve_sigmas", "ve_q_step", "ELBOTerms", "elbo", "elbo_consistency",
           "simplified_loss", "discretized_gaussian_log_likelihood", "DDPM", "DDPMSampler", "DDIMSampler", "Samples",
           "StepOutput", "sample", "timesteps", "ddim_invert", "langevin", "annealed_langevin"]
