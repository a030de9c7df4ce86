r"""Chapter 04, gradient estimators: the gradient of an expectation under a distribution that depends on the parameters.

We want :math:`\nabla_\theta\, \mathbb E_{z\sim p(z;\theta)}[f(z)]`, where the samples themselves move with
:math:`\theta`. Two unbiased Monte Carlo estimators:

- :func:`score_function_grad`, the score-function (log-derivative, REINFORCE) estimator
  :math:`\mathbb E[f(z)\,\nabla_\theta \log p(z;\theta)]` (Eq. ``score-function``), optionally with a baseline
  (Eq. ``score-function-baseline``): any distribution, discrete ones included, and any ``f`` (never
  differentiated), at the price of a high variance;
- :func:`reparam_grad`, the pathwise estimator
  :math:`\mathbb E_\varepsilon[\nabla_\theta f(g(\varepsilon;\theta))]` (Eq. ``reparam-grad``): needs
  ``z = g(eps; theta)`` (``rsample``) and a differentiable ``f``; usually a far lower variance.

Both return the estimate with its per-sample variance and standard error, so they can be compared.
Discrete samples have no ``rsample``; two biased, low-variance surrogates replace them:
:func:`gumbel_softmax` (Eq. ``gumbel-softmax``) and :func:`straight_through` (Eq. ``straight-through``).

Interface. ``params`` is a tensor, or a sequence of tensors, created with ``requires_grad=True``;
``dist(*params)`` builds the :class:`torch.distributions.Distribution` (the estimators rebuild it to
differentiate it); ``f`` maps a batch of samples ``(n, *sample_shape)`` to values ``(n,)``. Sampling uses
torch's global generator: seed it with ``torch.manual_seed`` or ``coursepkg.config.seed_everything``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple, Sequence

import torch
from torch import distributions as td

from coursepkg import _validate as V


class GradientEstimate(NamedTuple):
    """A Monte Carlo gradient: the mean of ``n`` per-sample gradients, their (unbiased) variance over the
    samples, and the standard error of the mean ``sqrt(variance / n)`` (Eq. ``mc-standard-error``).
    Each tensor has the shape of its parameter; ``variance`` and ``stderr`` are NaN when ``n == 1``.
    ``per_sample`` keeps the ``n`` per-sample gradients, ``(n, *param.shape)``, e.g. for a histogram."""

    grad: torch.Tensor
    variance: torch.Tensor
    stderr: torch.Tensor
    n: int
    per_sample: torch.Tensor

    def __str__(self) -> str:
        if self.grad.numel() == 1:
            return (f"{self.grad.item():.4f} ± {self.stderr.item():.4f} "
                    f"(n={self.n}, variance {self.variance.item():.4g})")
        return f"GradientEstimate(shape={list(self.grad.shape)}, n={self.n})"


Params = torch.Tensor | Sequence[torch.Tensor]


# --------------------------------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------------------------------
def _check_params(params: Params) -> tuple[list[torch.Tensor], bool]:
    """Detached copies of the parameters (the estimators differentiate functions of them) and whether one was given."""
    single = isinstance(params, torch.Tensor)
    seq = [params] if single else params
    if not isinstance(seq, (list, tuple)) or len(seq) == 0:
        raise TypeError(f"params must be a tensor or a non-empty list/tuple of tensors, got {type(params).__name__}")
    for i, p in enumerate(seq):
        name = "params" if single else f"params[{i}]"
        V.tensor(name, p, floating=True)
        if not p.requires_grad:
            raise ValueError(f"{name} must require grad: it is a parameter to differentiate "
                             "(create it with requires_grad=True)")
    return [p.detach() for p in seq], single


def _build(dist: Callable[..., td.Distribution], params: list[torch.Tensor]) -> td.Distribution:
    V.function("dist", dist)
    d = dist(*params)
    if not isinstance(d, td.Distribution):
        raise TypeError(f"dist(*params) must return a torch.distributions.Distribution, got {type(d).__name__}")
    return d


def _values(f: Callable, z: torch.Tensor, m: int) -> torch.Tensor:
    """``f(z)``, checked to hold one value per sample, shape ``(m,)``."""
    out = f(z)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (m,):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"f must map samples of shape {tuple(z.shape)} to one value per sample, shape ({m},); "
                         f"got {got}")
    return out


# --------------------------------------------------------------------------------------------------
# per-sample gradients, mean and variance
# --------------------------------------------------------------------------------------------------
def _per_sample_grads(fn: Callable, params: list[torch.Tensor], n: int,
                      randomness: str = "error") -> list[torch.Tensor]:
    """Row ``i`` of result ``k`` is the gradient of the ``i``-th of the ``n`` values ``fn(slice(0, n), *params)``
    with respect to ``params[k]``: shape ``(n, *params[k].shape)``, the Jacobian of the values.

    Forward mode computes it for all samples at once, one pass per parameter entry (there are few
    parameters and many samples); ``randomness="same"`` makes those passes share the same draws.
    Operations without a forward-mode rule (e.g. the Gamma's ``rsample``) fall back to one backward
    pass per sample, ``fn(slice(i, i + 1), *params)``.
    """
    try:
        jac = torch.func.jacfwd(partial(fn, slice(0, n)), argnums=tuple(range(len(params))), randomness=randomness)
        return [g.detach() for g in jac(*params)]
    except (NotImplementedError, RuntimeError):
        rows = []
        for i in range(n):
            leaves = [p.clone().requires_grad_() for p in params]
            value = fn(slice(i, i + 1), *leaves)[0]
            rows.append(torch.autograd.grad(value, leaves, allow_unused=True, materialize_grads=True))
        return [torch.stack(g) for g in zip(*rows, strict=True)]


def _estimates(per_sample: list[torch.Tensor], single: bool) -> GradientEstimate | list[GradientEstimate]:
    out = []
    for g in per_sample:
        n = g.shape[0]
        var = g.var(0) if n > 1 else torch.full_like(g[0], math.nan)
        out.append(GradientEstimate(g.mean(0), var, (var / n).sqrt(), n, g))
    return out[0] if single else out


def _baseline(baseline, fz: torch.Tensor) -> torch.Tensor | float:
    n = fz.shape[0]
    if baseline is None:
        return 0.0
    if isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(f"baseline must be None, a number, a one-element tensor or 'mean'; got {baseline!r}")
        if n < 2:
            raise ValueError("baseline='mean' (the mean of the other samples) needs n_samples >= 2")
        return (fz.sum() - fz) / (n - 1)                     # leave-one-out: b_i does not depend on z_i
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return float(baseline)
    if isinstance(baseline, torch.Tensor) and baseline.numel() == 1:
        return baseline.detach().reshape(()).to(fz)
    raise TypeError(f"baseline must be None, a number, a one-element tensor or 'mean'; got {type(baseline).__name__}"
                    + (f" of shape {tuple(baseline.shape)}" if isinstance(baseline, torch.Tensor) else ""))


# --------------------------------------------------------------------------------------------------
# the two unbiased estimators
# --------------------------------------------------------------------------------------------------
def score_function_grad(f: Callable[[torch.Tensor], torch.Tensor], dist: Callable[..., td.Distribution],
                        params: Params, n_samples: int, baseline: float | torch.Tensor | str | None = None,
                        ) -> GradientEstimate | list[GradientEstimate]:
    r"""The score-function (log-derivative, REINFORCE) estimator (Eq. ``score-function``)

    .. math:: \nabla_\theta \mathbb E_{p(z;\theta)}[f(z)] = \mathbb E\big[f(z)\,\nabla_\theta\log p(z;\theta)\big]
              \approx \frac1n\sum_i \big(f(z_i) - b_i\big)\,\nabla_\theta \log p(z_i;\theta),
              \quad z_i \sim p(z;\theta)

    The samples are drawn without gradient (``sample()``) and ``f`` is never differentiated: it may be
    discontinuous, and ``z`` discrete. ``log p(z_i)`` sums over the distribution's batch dimensions.
    A baseline ``b_i`` that does not depend on ``z_i`` keeps the estimator unbiased, since
    :math:`\mathbb E[\nabla_\theta\log p(z;\theta)] = 0` (Eq. ``score-function-baseline``), and one close
    to ``E[f]`` lowers its variance. ``baseline`` is ``None`` (``b = 0``), a constant, or ``"mean"``: the
    leave-one-out mean of the *other* samples' values, ``b_i = (sum_j f(z_j) - f(z_i)) / (n - 1)``. With
    ``"mean"`` the terms are no longer independent, so the reported standard error is approximate.

    Returns a :class:`GradientEstimate` per parameter (one, or a list when ``params`` is a sequence).
    """
    V.function("f", f)
    leaves, single = _check_params(params)
    n = V.positive_int("n_samples", n_samples)
    with torch.no_grad():
        z = _build(dist, leaves).sample((n,))
        fz = _values(f, z, n)
    fz = fz.detach() if fz.is_floating_point() else fz.to(leaves[0].dtype)
    weights = fz - _baseline(baseline, fz)                   # (n,)

    def log_p(rows: slice, *p: torch.Tensor) -> torch.Tensor:
        lp = dist(*p).log_prob(z[rows])
        return lp.reshape(lp.shape[0], -1).sum(-1)

    scores = _per_sample_grads(log_p, leaves, n)             # grad log p(z_i), (n, *param.shape)
    return _estimates([weights.view(n, *[1] * (s.dim() - 1)) * s for s in scores], single)


def reparam_grad(f: Callable[[torch.Tensor], torch.Tensor], dist: Callable[..., td.Distribution],
                 params: Params, n_samples: int) -> GradientEstimate | list[GradientEstimate]:
    r"""The pathwise (reparameterization) estimator (Eq. ``reparam-grad``)

    .. math:: \nabla_\theta \mathbb E_{p(z;\theta)}[f(z)]
              = \mathbb E_{\varepsilon}\big[\nabla_\theta f(g(\varepsilon;\theta))\big]
              \approx \frac1n\sum_i \nabla_\theta f(z_i),\quad z_i = g(\varepsilon_i;\theta)

    ``z = rsample()`` is a differentiable function of the parameters and of parameter-free noise
    (for a Gaussian, ``z = mu + sigma * eps``); ``f`` must be differentiable. Returns a
    :class:`GradientEstimate` per parameter (one, or a list when ``params`` is a sequence).
    """
    V.function("f", f)
    leaves, single = _check_params(params)
    n = V.positive_int("n_samples", n_samples)
    d = _build(dist, leaves)
    if not d.has_rsample:
        raise TypeError(f"{type(d).__name__} has no rsample: its samples are not a differentiable function of the "
                        "parameters (discrete?); use score_function_grad instead")

    def f_of_sample(rows: slice, *p: torch.Tensor) -> torch.Tensor:
        m = rows.stop - rows.start
        return _values(f, dist(*p).rsample((m,)), m)

    return _estimates(_per_sample_grads(f_of_sample, leaves, n, randomness="same"), single)


# --------------------------------------------------------------------------------------------------
# surrogates for discrete samples
# --------------------------------------------------------------------------------------------------
def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    r"""The straight-through estimator (Eq. ``straight-through``): the forward value of ``hard``, the
    gradient of ``soft``, as if :math:`\partial\,\mathrm{hard} / \partial\,\mathrm{soft} = I`.

    ``hard`` is the discrete (quantized, one-hot) output, ``soft`` the differentiable quantity it was
    computed from or relaxes: for VQ-VAE, ``straight_through(z_q, z_e)`` is the usual
    ``z_e + (z_q - z_e).detach()``; for a hard Gumbel-softmax, ``straight_through(one_hot, y_soft)``.
    It is computed as ``hard.detach() + (soft - soft.detach())``, equal in exact arithmetic, so that the
    forward value is *exactly* ``hard`` in floating point (for a finite ``soft``). No gradient reaches
    ``hard``. Both have the same shape; ``hard`` may be an integer or bool tensor.
    """
    V.tensor("soft", soft, floating=True)
    V.tensor("hard", hard)
    if hard.shape != soft.shape:
        raise ValueError(f"hard and soft must have the same shape, got {list(hard.shape)} and {list(soft.shape)}")
    return hard.detach().to(soft.dtype) + (soft - soft.detach())


def gumbel_softmax(logits: torch.Tensor, tau: float, hard: bool = False,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    r"""A relaxed one-hot sample of ``Categorical(logits)`` (Eq. ``gumbel-softmax``)

    .. math:: y = \operatorname{softmax}\big((\ell + g) / \tau\big),\quad g_k = -\log(-\log u_k),\ u_k \sim U(0, 1)

    over the last dimension of ``logits`` ``(..., K)``. The argmax of ``logits + g`` is an exact
    categorical sample (Gumbel-max), whatever ``tau > 0``; as ``tau -> 0`` ``y`` tends to that one-hot
    vector, and as ``tau -> inf`` to the uniform ``1/K``. ``hard=True`` returns the one-hot vector itself
    with the gradient of ``y`` (:func:`straight_through`). ``generator`` fixes the noise.
    """
    V.tensor("logits", logits, floating=True, min_dim=1, expected="a floating-point tensor of shape (..., K)")
    tau = V.number("tau", tau, positive=True)
    u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
    g = -torch.log(-torch.log(u.clamp_min(torch.finfo(logits.dtype).tiny)))
    y_soft = torch.softmax((logits + g) / tau, dim=-1)
    if not hard:
        return y_soft
    y_hard = torch.nn.functional.one_hot(y_soft.argmax(-1), logits.shape[-1])
    return straight_through(y_hard, y_soft)
