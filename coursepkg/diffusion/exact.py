"""The diffusion of a Gaussian mixture, in closed form (chapter 08).

If ``x_0`` is a mixture of Gaussians ``sum_k pi_k N(mu_k, Sigma_k)``, then so is every noised ``x_t``: each
component is pushed through the same linear-Gaussian map ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``,

.. math:: q(x_t) = \\sum_k \\pi_k\\,\\mathcal N\\big(x_t;\\ \\sqrt{\\bar\\alpha_t}\\,\\mu_k,\\
          \\bar\\alpha_t\\Sigma_k + (1 - \\bar\\alpha_t) I\\big).

So the score :math:`\\nabla\\log q(x_t)`, the optimal denoiser :math:`\\mathbb E[x_0 \\mid x_t]` and the best
possible noise predictor are exact, and a trained network can be compared with the optimum.
:class:`OptimalDenoiser` is that optimum with a network's call signature, ``model(xt, t) -> eps``.
:func:`posterior_x0` and :func:`reverse_kernel` give, for one point, the posterior of the data and the
true reverse step :math:`q(x_{t-1} \\mid x_t)`, both mixtures too.
"""

from __future__ import annotations

import torch

from coursepkg import gmm as G
from coursepkg.diffusion import Schedule


def _alpha_bar(schedule: Schedule, t: int) -> float:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a coursepkg.diffusion.Schedule, got {type(schedule).__name__}")
    if isinstance(t, torch.Tensor) and t.dim() > 0:
        raise TypeError("t must be one step (an int) here: the marginal q(x_t) is one distribution per t")
    return float(schedule.alpha_bar[int(schedule.check_t(t))])


def marginal(data: G.GMM, t: int, schedule: Schedule) -> G.GMM:
    """The mixture :math:`q(x_t)` of the noised data at step ``t`` (Eq. ``gmm-diffusion-marginal``)."""
    if not isinstance(data, G.GMM):
        raise TypeError(f"data must be a coursepkg.gmm.GMM, got {type(data).__name__}")
    ab = _alpha_bar(schedule, t)
    eye = torch.eye(data.dim, dtype=data.dtype, device=data.device)
    return G.GMM(data.weights, ab ** 0.5 * data.means, ab * data.covariances + (1 - ab) * eye)


def score(data: G.GMM, xt: torch.Tensor, t: int, schedule: Schedule) -> torch.Tensor:
    """:math:`\\nabla_{x_t}\\log q(x_t) = \\sum_k r_k(x_t)\\,C_k^{-1}(m_k - x_t)`, with ``m_k, C_k`` the noised
    components and ``r_k`` their responsibilities for ``x_t``; ``xt`` is ``(N, D)``."""
    noised = marginal(data, t, schedule)
    resp = G.e_step(xt, noised)                                                   # (N, K)
    diff = noised.means[None] - xt[:, None]                                       # (N, K, D)
    pulls = torch.linalg.solve(noised.covariances[None], diff.unsqueeze(-1)).squeeze(-1)
    return (resp.unsqueeze(-1) * pulls).sum(1)


def posterior_mean_x0(data: G.GMM, xt: torch.Tensor, t: int, schedule: Schedule) -> torch.Tensor:
    """The optimal denoiser :math:`\\mathbb E[x_0 \\mid x_t]` by Tweedie's formula,
    :math:`(x_t + (1 - \\bar\\alpha_t)\\nabla\\log q(x_t)) / \\sqrt{\\bar\\alpha_t}` (Eq. ``tweedie``)."""
    ab = _alpha_bar(schedule, t)
    return (xt + (1 - ab) * score(data, xt, t, schedule)) / ab ** 0.5


class OptimalDenoiser:
    """The best noise predictor for data ``data`` under ``schedule``: ``model(xt, t)`` returns
    :math:`\\mathbb E[\\varepsilon \\mid x_t] = -\\sqrt{1 - \\bar\\alpha_t}\\,\\nabla\\log q(x_t)`, the minimiser of the
    simplified loss, with the call signature of a network (``t`` one int, or one step per row)."""

    def __init__(self, data: G.GMM, schedule: Schedule):
        if not isinstance(data, G.GMM):
            raise TypeError(f"data must be a coursepkg.gmm.GMM, got {type(data).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a coursepkg.diffusion.Schedule, got {type(schedule).__name__}")
        self.data, self.schedule = data, schedule

    def __call__(self, xt: torch.Tensor, t) -> torch.Tensor:
        t = self.schedule.check_t(t, xt)
        if t.dim() == 0:
            return -(1 - float(self.schedule.alpha_bar[int(t)])) ** 0.5 * score(self.data, xt, int(t), self.schedule)
        out = torch.empty_like(xt)
        for step in t.unique().tolist():  # one closed form per distinct step
            rows = t == step
            out[rows] = self(xt[rows], step)
        return out


def _one_point(name: str, x: torch.Tensor, data: G.GMM) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.shape != (data.dim,):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be one point of shape ({data.dim},), got {got}")
    return x.to(data.dtype)


def posterior_x0(data: G.GMM, xt: torch.Tensor, t: int, schedule: Schedule) -> G.GMM:
    """:math:`q(x_0 \\mid x_t)` for one point ``xt`` ``(D,)``: a mixture again, each component's linear-Gaussian
    posterior (:math:`C_k = (\\Sigma_k^{-1} + \\frac{\\bar\\alpha_t}{1-\\bar\\alpha_t} I)^{-1}`) weighted by the
    responsibility of its noised component for ``xt``."""
    ab = _alpha_bar(schedule, t)
    xt = _one_point("xt", xt, data)
    resp = G.e_step(xt[None], marginal(data, t, schedule))[0]
    eye = torch.eye(data.dim, dtype=data.dtype, device=data.device)
    prec = torch.linalg.inv(data.covariances) + ab / (1 - ab) * eye                  # (K, D, D)
    cov = torch.linalg.inv(prec)
    cov = 0.5 * (cov + cov.mT)
    rhs = torch.linalg.solve(data.covariances, data.means.unsqueeze(-1)).squeeze(-1) + ab ** 0.5 / (1 - ab) * xt
    means = (cov @ rhs.unsqueeze(-1)).squeeze(-1)
    return G.GMM(resp, means, cov)


def reverse_kernel(data: G.GMM, xt: torch.Tensor, t: int, schedule: Schedule) -> G.GMM:
    """The true reverse step :math:`q(x_{t-1} \\mid x_t)` for one point ``xt`` ``(D,)`` (Eq. ``true-reverse-kernel``).

    It averages the posterior :math:`q(x_{t-1} \\mid x_t, x_0) = \\mathcal N(a x_0 + b x_t, \\tilde\\beta_t I)` over
    :math:`q(x_0 \\mid x_t)`; both are Gaussian given a component, so the result is a mixture with
    means :math:`a\\,m_k + b\\,x_t` and covariances :math:`a^2 C_k + \\tilde\\beta_t I`. It is close to one
    Gaussian only when :math:`\\beta_t` is small: the reason a diffusion takes many small steps.
    """
    post = posterior_x0(data, xt, t, schedule)
    t = int(schedule.check_t(t))
    a = float(schedule.posterior_mean_coef_x0[t])
    b = float(schedule.posterior_mean_coef_xt[t])
    var = float(schedule.posterior_variance[t])
    eye = torch.eye(data.dim, dtype=data.dtype, device=data.device)
    return G.GMM(post.weights, a * post.means + b * xt.to(data.dtype), a ** 2 * post.covariances + var * eye)
