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

Expectations over a mixture (:func:`expectation`) are computed by Gauss-Hermite quadrature, component by
component: with them :func:`optimal_elbo` gives the ELBO of the best DDPM *exactly* (to quadrature precision,
far below any Monte Carlo error), to compare with :func:`expected_log_likelihood`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from coursepkg import _validate as V
from coursepkg import gmm as G
from coursepkg import probability as P
from coursepkg.diffusion import ELBOTerms, Schedule, elbo_weight, reverse_variance

QUADRATURE_NODES = {1: 80, 2: 32, 3: 12}
"""Gauss-Hermite nodes per dimension (so ``n ** D`` points per component) used by default."""


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


# --------------------------------------------------------------------------------------------------
# exact expectations, and the exact ELBO of the optimal model
# --------------------------------------------------------------------------------------------------
def _mixture(name: str, m) -> G.GMM:
    if not isinstance(m, G.GMM):
        raise TypeError(f"{name} must be a coursepkg.gmm.GMM, got {type(m).__name__}")
    return m


def _hermite(d: int, nodes: int | None, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Hermite points ``z (n^D, D)`` and weights ``(n^D,)`` for the standard normal in ``D`` dimensions."""
    if d > 3:
        raise ValueError(f"quadrature needs nodes ** D points; D = {d} is too many, use Monte Carlo instead")
    n = QUADRATURE_NODES[d] if nodes is None else V.positive_int("nodes", nodes)
    z1, w1 = np.polynomial.hermite_e.hermegauss(n)                      # weight exp(-z^2 / 2)
    z1 = torch.as_tensor(z1, dtype=dtype, device=device)
    w1 = torch.as_tensor(w1 / math.sqrt(2 * math.pi), dtype=dtype, device=device)
    z = torch.cartesian_prod(*[z1] * d).reshape(-1, d)
    return z, torch.cartesian_prod(*[w1] * d).reshape(-1, d).prod(1)


def expectation(f, mixture: G.GMM, *, nodes: int | None = None) -> torch.Tensor:
    """:math:`\\mathbb E_{x \\sim \\text{mixture}}[f(x)]` by Gauss-Hermite quadrature in each component:
    ``sum_k pi_k sum_i w_i f(mu_k + L_k z_i)`` on a tensor grid of ``nodes ** D`` points ``z_i`` (exact for
    polynomials of degree below ``2 * nodes``; for the smooth functions here, to about machine precision).
    ``f`` maps points ``(M, D)`` to ``(M,)`` or ``(M, ...)``. For ``D <= 3``; beyond, use Monte Carlo."""
    mixture = _mixture("mixture", mixture)
    V.function("f", f)
    d = mixture.dim
    z, w = _hermite(d, nodes, mixture.dtype, mixture.device)
    L = torch.linalg.cholesky(mixture.covariances)                     # (K, D, D)
    points = mixture.means[:, None] + torch.einsum("kij,mj->kmi", L, z)  # (K, n^D, D)
    values = f(points.reshape(-1, d))
    values = values.reshape(mixture.n_components, z.shape[0], *values.shape[1:])
    weights = (mixture.weights[:, None] * w[None]).reshape(mixture.n_components, -1, *([1] * (values.dim() - 2)))
    return (weights * values).sum((0, 1))


def expected_log_likelihood(data: G.GMM, *, nodes: int | None = None) -> torch.Tensor:
    """:math:`\\mathbb E_{x_0 \\sim q}[\\log q(x_0)]`, minus the entropy of the data: the best any model's
    average log-likelihood can be, and so the target of every ELBO below."""
    data = _mixture("data", data)
    return expectation(data.log_likelihood, data, nodes=nodes)


def denoising_error(data: G.GMM, t, schedule: Schedule, *, nodes: int | None = None) -> torch.Tensor:
    """The smallest possible noise error at step ``t`` (an int, or a 1-D tensor of steps),
    :math:`\\mathbb E\\|\\varepsilon - \\mathbb E[\\varepsilon \\mid x_t]\\|^2
    = D - \\mathbb E\\|\\varepsilon^*(x_t)\\|^2` (the error is orthogonal to the prediction):
    the floor of the simplified loss at ``t``, by quadrature over
    :math:`q(x_t)`. Vectorised over the steps (the same computation as :func:`score`, for every ``t`` at once)."""
    data = _mixture("data", data)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a coursepkg.diffusion.Schedule, got {type(schedule).__name__}")
    ts = schedule.check_t(t)
    flat = ts.reshape(-1)
    d, K = data.dim, data.n_components
    z, w = _hermite(d, nodes, data.dtype, data.device)
    eye = torch.eye(d, dtype=data.dtype, device=data.device)
    log_pi = data.weights.log()
    qw = (data.weights[:, None] * w[None]).reshape(-1)                  # (K M,) quadrature weights
    out = []
    chunk = max(1, 2_000_000 // (K * K * z.shape[0] * d))
    for part in flat.split(chunk):
        ab = schedule.alpha_bar[part].to(data.dtype)[:, None, None, None]                    # (c, 1, 1, 1)
        means = ab[..., 0].sqrt() * data.means                                               # (c, K, D)
        L = torch.linalg.cholesky(ab * data.covariances + (1 - ab) * eye)                    # (c, K, D, D)
        x = (means[:, :, None] + torch.einsum("ckij,mj->ckmi", L, z)).flatten(1, 2)          # (c, K M, D)
        diff = (means[:, None] - x[:, :, None]).unsqueeze(-1)                                # (c, K M, K, D, 1)
        y = torch.linalg.solve_triangular(L[:, None], diff, upper=False)                     # L^-1 (m - x)
        log_det = torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)[:, None]                 # (c, 1, K)
        log_n = -0.5 * (y ** 2).sum((-2, -1)) - log_det - d / 2 * math.log(2 * math.pi)
        resp = torch.softmax(log_pi + log_n, -1)                                             # (c, K M, K)
        pull = torch.linalg.solve_triangular(L[:, None].mT, y, upper=True).squeeze(-1)      # C^-1 (m - x)
        sc = (resp.unsqueeze(-1) * pull).sum(-2)                                             # (c, K M, D)
        eps_sq = (1 - ab[:, 0, 0, 0])[:, None] * (sc ** 2).sum(-1)                           # |eps*|^2
        out.append(d - (eps_sq * qw).sum(-1))
    return torch.cat(out).reshape(ts.shape)


def optimal_elbo(data: G.GMM, schedule: Schedule, *, variance: str = "beta_tilde",
                 nodes: int | None = None) -> ELBOTerms:
    """Every term of the negative ELBO of the optimal DDPM (:class:`OptimalDenoiser`, reverse variance
    ``variance``, Gaussian decoder), averaged over the data exactly: an :class:`ELBOTerms` with one row.

    With the optimal noise prediction each :math:`L_{t-1}` is its weight times :func:`denoising_error`,
    plus the variance mismatch :math:`\\frac D2(r - 1 - \\log r)`, :math:`r = \\tilde\\beta_t/\\sigma_t^2`;
    :math:`L_0 = \\frac D2\\log(2\\pi\\beta_1) + \\mathbb E\\|\\varepsilon - \\varepsilon^*\\|^2 / (2\\alpha_1)`
    and :math:`L_T` is the Gaussian KL averaged with the data's second moment. ``total`` minus
    :func:`expected_log_likelihood` is the gap of the bound (Eq. ``gmm-exact-elbo``)."""
    data = _mixture("data", data)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a coursepkg.diffusion.Schedule, got {type(schedule).__name__}")
    d, T = data.dim, schedule.T
    sigma2 = reverse_variance(schedule, variance)
    err = denoising_error(data, torch.arange(1, T + 1), schedule, nodes=nodes).to(torch.float64)   # t = 1..T
    steps = torch.zeros(1, T + 1, dtype=torch.float64)
    steps[0, 1] = d / 2 * math.log(2 * math.pi * float(schedule.betas[1])) + err[0] / (2 * float(schedule.alphas[1]))
    if T >= 2:
        ts = torch.arange(2, T + 1)
        r = schedule.posterior_variance[ts] / sigma2[ts]
        steps[0, 2:] = d / 2 * (r - 1 - r.log()) + elbo_weight(ts, schedule, variance=variance) * err[1:]
    ab = float(schedule.alpha_bar[T])
    second_moment = float((data.weights * ((data.means ** 2).sum(1) +
                                           torch.diagonal(data.covariances, dim1=1, dim2=2).sum(1))).sum())
    prior = 0.5 * (ab * second_moment + d * (1 - ab) - d - d * math.log(1 - ab))
    return ELBOTerms(steps, torch.tensor([prior], dtype=torch.float64))


def moments(mixture: G.GMM) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean ``(D,)`` and covariance ``(D, D)`` of a mixture: the Gaussian that matches its first two moments."""
    mixture = _mixture("mixture", mixture)
    w, m = mixture.weights, mixture.means
    mean = (w[:, None] * m).sum(0)
    second = (w[:, None, None] * (mixture.covariances + m[:, :, None] * m[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None, :]


def gaussian_fit_kl(mixture: G.GMM, *, nodes: int | None = None) -> torch.Tensor:
    """:math:`\\mathrm{KL}(\\text{mixture} \\,\\|\\, \\mathcal N(m, S))` for the moment-matched Gaussian
    (:func:`moments`), the closest Gaussian in this direction: 0 exactly when the mixture is one Gaussian.
    Applied to :func:`reverse_kernel` it measures how far the true reverse step is from the Gaussian a DDPM
    assumes."""
    mean, cov = moments(mixture)
    return expectation(lambda x: mixture.log_likelihood(x) - P.mvn_log_prob(x, mean, cov), mixture, nodes=nodes)


# --------------------------------------------------------------------------------------------------
# Labelled mixtures: the exact quantities of guidance (chapter 10)
# --------------------------------------------------------------------------------------------------
def _labels(data: G.GMM, labels) -> torch.Tensor:
    """``labels`` (K,): the class of each component, classes ``0..C-1`` each used at least once."""
    if not isinstance(data, G.GMM):
        raise TypeError(f"data must be a coursepkg.gmm.GMM, got {type(data).__name__}")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.shape != (data.n_components,):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor ({data.n_components},), the class of each component, "
                         f"got {got}")
    labels = labels.long().cpu()
    if int(labels.min()) < 0 or set(labels.tolist()) != set(range(int(labels.max()) + 1)):
        raise ValueError(f"labels must use every class 0..C-1 (one or more components each), got {labels.tolist()}")
    return labels


def _class(y, n_classes: int) -> int:
    y = V.integer("y", y, minimum=0)
    if y >= n_classes:
        raise ValueError(f"y must be a class 0..{n_classes - 1} of this mixture, got {y}")
    return y


def class_conditional(data: G.GMM, labels: torch.Tensor, y: int) -> G.GMM:
    """:math:`p(x_0 \\mid y)`: the components of class ``y``, their weights renormalised (Eq. ``labelled-mixture``)."""
    labels = _labels(data, labels)
    y = _class(y, int(labels.max()) + 1)
    keep = (labels == y).to(data.device)
    w = data.weights[keep]
    return G.GMM(w / w.sum(), data.means[keep], data.covariances[keep])


def _noised(data: G.GMM, t: int, schedule: Schedule) -> G.GMM:
    """:math:`q(x_t)` for ``t`` in ``1..T``, and the data itself at ``t = 0``."""
    return data if int(t) == 0 else marginal(data, t, schedule)


def class_log_posterior(data: G.GMM, labels: torch.Tensor, xt: torch.Tensor, t: int,
                        schedule: Schedule) -> torch.Tensor:
    """:math:`\\log p(y \\mid x_t)` for every class, ``(N, C)`` (Eq. ``noised-class-posterior``): Bayes' rule on
    the noised mixture, the responsibilities of each class's components summed. ``t = 0`` gives the classifier
    of the clean data, :math:`p(y \\mid x_0)`. Differentiable in ``xt``."""
    labels = _labels(data, labels)
    n_classes = int(labels.max()) + 1
    if int(t) != 0:
        _alpha_bar(schedule, t)
    joint = G.joint_log_prob(xt, _noised(data, t, schedule))                       # (N, K): log pi_k N_k(xt)
    per_class = torch.stack([torch.logsumexp(joint[:, labels.to(joint.device) == c], 1) for c in range(n_classes)], 1)
    return per_class - torch.logsumexp(joint, 1, keepdim=True)


def class_score(data: G.GMM, labels: torch.Tensor, xt: torch.Tensor, t: int, schedule: Schedule,
                y: int) -> torch.Tensor:
    """:math:`\\nabla_{x_t}\\log p(y \\mid x_t) = \\nabla\\log q(x_t \\mid y) - \\nabla\\log q(x_t)`
    (Eq. ``bayes-score``), in closed form: the score of class ``y``'s noised mixture minus the score of the
    whole one."""
    return score(class_conditional(data, labels, y), xt, t, schedule) - score(data, xt, t, schedule)


class ExactClassifier:
    """The exact noise-aware classifier of a labelled mixture: ``classifier(xt, t)`` returns
    :math:`\\log p(y \\mid x_t)` ``(N, C)`` (:func:`class_log_posterior`), with a network's call signature (``t`` one
    int or one step per row) and differentiable in ``xt``, so that
    :func:`coursepkg.diffusion.guidance.classifier_guidance` can run on it."""

    def __init__(self, data: G.GMM, labels: torch.Tensor, schedule: Schedule):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a coursepkg.diffusion.Schedule, got {type(schedule).__name__}")
        self.labels = _labels(data, labels)
        self.data, self.schedule = data, schedule
        self.num_classes = int(self.labels.max()) + 1

    def __call__(self, xt: torch.Tensor, t) -> torch.Tensor:
        t = self.schedule.check_t(t, xt)
        if t.dim() == 0 or bool((t == t[0]).all()):
            return class_log_posterior(self.data, self.labels, xt, int(t.reshape(-1)[0]), self.schedule)
        rows = [t == step for step in t.unique().tolist()]
        parts = [class_log_posterior(self.data, self.labels, xt[r], int(t[r][0]), self.schedule) for r in rows]
        out = torch.zeros(xt.shape[0], self.num_classes, dtype=parts[0].dtype, device=xt.device)
        for r, p in zip(rows, parts, strict=True):
            out = out.index_put((r.nonzero().squeeze(1).to(xt.device),), p)
        return out


def tilted_log_density(data: G.GMM, labels: torch.Tensor, y: int, gamma: float, x: torch.Tensor) -> torch.Tensor:
    """The unnormalised log density of the target of classifier guidance at scale ``gamma``,
    :math:`\\log p(x) + \\gamma \\log p(y \\mid x)` (Eq. ``tilted-target``), at the points ``x`` ``(N, D)``. With
    ``gamma = 1`` it is :math:`\\log p(x \\mid y) + \\log p(y)`; with ``gamma = 0``, :math:`\\log p(x)`."""
    gamma = V.number("gamma", gamma, nonnegative=True)
    labels = _labels(data, labels)
    y = _class(y, int(labels.max()) + 1)
    return G.log_likelihood(x, data) + gamma * class_log_posterior(data, labels, x, 0, None)[:, y]
