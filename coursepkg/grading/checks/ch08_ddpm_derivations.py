r"""Checks of the chapter 08 exercises (``solutions/08_ddpm_derivations.ipynb``): the closed forms of a DDPM.

Every exercise is a deterministic formula, checked with :func:`~coursepkg.grading.kit.function_check` against
:mod:`coursepkg.diffusion`, run in float64 behind the exercise's signature. The answers work with the book's
quantities as plain tensors, in the package's indexing convention:

- ``betas`` and ``alpha_bar`` have ``T + 1`` entries indexed by ``t`` itself: entry 0 is the boundary
  (``beta_0 = 0``, ``alpha_bar_0 = 1``), entries ``1..T`` the steps (``Schedule.betas``, ``Schedule.alpha_bar``);
- ``t`` is an integer tensor ``(N,)``, one step in ``1..T`` per row of a batch-first ``x`` of shape ``(N, ...)``.

The inputs are chosen so that every catalogued mistake has a value of its own:

- the schedules are random, with every ``beta_t`` in [0.02, 0.3]: ``alpha_t`` and ``alpha_bar_t`` differ clearly
  from ``t = 2`` on, ``beta_t`` from its square root, and ``alpha_bar_T`` stays above 0.01 (no round-off blow-up in
  the divisions by ``sqrt(alpha_bar_t)``);
- every batch's steps include the first and the last (``t = 1``, where ``alpha_bar_{t-1} = 1`` and an index
  ``t - 2`` wraps around, and ``t = T``, where ``t + 1`` is out of range), and ``T`` changes from trial to trial
  (7, 12, 9), so a hard-coded ``T`` or schedule is caught;
- the shapes are ``(6, 6)`` (``N == D``: a per-row ``alpha_bar[t]`` left of shape ``(N,)`` broadcasts along the
  columns without an error), ``(9, 3)`` and ``(4, 2, 3, 4)`` (an image batch ``(N, C, H, W)``, with ``W == N``).

The ELBO term ``L_{t-1}`` is a KL between Gaussians only for ``t = 2..T`` (``L_0`` is the decoder's), so its steps
start at 2; it is also differentiated with respect to ``eps_theta``, as a training loss is.
"""

from __future__ import annotations

import torch

from coursepkg import diffusion as D
from coursepkg.grading.kit import Case, Slip, function_check

F64 = torch.float64
SPECS = [((6, 6), 7), ((9, 3), 12), ((4, 2, 3, 4), 9)]     # (shape of x, T)
BETA_RANGE = (0.02, 0.3)
DESCRIBE = ["x0", "t"]

INDEX_HINT = ("the schedule's tensors have T + 1 entries indexed by t itself (entry 0 is t = 0): alpha_bar_t is "
              "alpha_bar[t] and alpha_bar_{t-1} is alpha_bar[t - 1], with no shift")
ZERO_INDEXED = ("t off by one: the tensors indexed from 0 (alpha_bar[t - 1] taken for alpha_bar_t, betas[t - 1] for "
                "beta_t)", INDEX_HINT)


# --------------------------------------------------------------------------------------------------
# inputs, and the package behind the exercises' signatures
# --------------------------------------------------------------------------------------------------
def _schedule(case: Case, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random increasing ``betas`` (``T + 1`` entries, ``betas[0] = 0``) and their ``alpha_bar``, in the case's
    dtype and device (``alpha_bar`` computed in float64 from the betas as rounded)."""
    lo, hi = BETA_RANGE
    steps = (lo + (hi - lo) * torch.rand(T, generator=case.gen, dtype=F64)).sort().values
    betas = torch.cat([steps.new_zeros(1), steps]).to(case.dtype)
    alpha_bar = torch.cumprod(1 - betas.to(F64), 0).to(case.dtype)
    return betas.to(case.device), alpha_bar.to(case.device)


def _steps(case: Case, N: int, T: int, first: int = 1) -> torch.Tensor:
    """``t`` ``(N,)``, int64: random steps in ``first..T``, both ends included, in random rows."""
    t = torch.randint(first, T + 1, (N,), generator=case.gen)
    t[:2] = torch.tensor([first, T])
    return t[torch.randperm(N, generator=case.gen)].to(case.device)


def _from_betas(betas: torch.Tensor) -> D.Schedule:
    return D.Schedule(betas.detach().to("cpu", F64))


def _from_alpha_bar(alpha_bar: torch.Tensor) -> D.Schedule:
    """The schedule whose ``alpha_bar`` this is: ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}``."""
    ab = alpha_bar.detach().to("cpu", F64)
    return D.Schedule(torch.cat([ab.new_zeros(1), 1 - ab[1:] / ab[:-1]]))


def _64(x: torch.Tensor) -> torch.Tensor:
    return x.to("cpu", F64)        # no detach: the ELBO term's gradient flows through


def _row(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped ``(N, 1, ..., 1)`` to broadcast against ``like`` (what the slips are written with)."""
    return values[t].reshape(-1, *[1] * (like.dim() - 1))


def _shape_hints(hint: str, *, full: str | None = None, per_row: str | None = None):
    """``(shape, hint)`` for every spec: a result of shape ``(N,)`` gets ``hint``, one of x's shape ``full``, one
    of shape ``(N, 1, ..., 1)`` ``per_row``."""
    out = [((shape[0],), hint) for shape, _ in SPECS]
    out += [(shape, full) for shape, _ in SPECS] if full else []
    return out + ([((shape[0],) + (1,) * (len(shape) - 1), per_row) for shape, _ in SPECS] if per_row else [])


# --------------------------------------------------------------------------------------------------
# 08.q_sample
# --------------------------------------------------------------------------------------------------
def _q_sample(x0, t, eps, alpha_bar):
    """:func:`coursepkg.diffusion.q_sample` behind the exercise's signature."""
    return D.q_sample(_64(x0), t.cpu(), _64(eps), _from_alpha_bar(alpha_bar)).to(x0)


def _x0_inputs(case: Case, spec) -> dict:
    shape, T = spec
    _, alpha_bar = _schedule(case, T)
    return {"x0": case.randn(*shape), "t": _steps(case, shape[0], T), "eps": case.randn(*shape),
            "alpha_bar": alpha_bar}


Q_SAMPLE_HINT = ("x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps, with alpha_bar_t = alpha_bar[t] "
                 "reshaped to (N, 1, ..., 1)")

function_check(
    "08.q_sample", "a draw of q(x_t | x_0), given the noise",
    solution=_q_sample, inputs=_x0_inputs, specs=SPECS, seed=8100, what="x_t", describe=DESCRIBE,
    mistakes=[
        Slip("the square root forgotten on alpha_bar_t", f"alpha_bar_t multiplies the signal's variance, so x0 is "
             f"scaled by its square root: {Q_SAMPLE_HINT}",
             lambda x0, t, eps, ab: _row(ab, t, x0) * x0 + (1 - _row(ab, t, x0)).sqrt() * eps),
        Slip("the square root forgotten on 1 - alpha_bar_t", f"1 - alpha_bar_t is the noise's variance; scale eps "
             f"by its square root, the standard deviation: {Q_SAMPLE_HINT}",
             lambda x0, t, eps, ab: _row(ab, t, x0).sqrt() * x0 + (1 - _row(ab, t, x0)) * eps),
        Slip("both square roots forgotten", Q_SAMPLE_HINT,
             lambda x0, t, eps, ab: _row(ab, t, x0) * x0 + (1 - _row(ab, t, x0)) * eps),
        Slip("1 - sqrt(alpha_bar_t) as the noise's scale", f"the variances add up to 1, not the scales: "
             f"{Q_SAMPLE_HINT}", lambda x0, t, eps, ab: _row(ab, t, x0).sqrt() * x0
             + (1 - _row(ab, t, x0).sqrt()) * eps),
        Slip("the signal not shrunk (x0 + sqrt(1 - alpha_bar_t) * eps)", f"a variance-preserving process scales "
             f"x0 down as it adds noise: {Q_SAMPLE_HINT}", lambda x0, t, eps, ab: x0
             + (1 - _row(ab, t, x0)).sqrt() * eps),
        Slip("t off by one: alpha_bar_{t-1} where alpha_bar_t belongs", INDEX_HINT,
             lambda x0, t, eps, ab: _row(ab, t - 1, x0).sqrt() * x0 + (1 - _row(ab, t - 1, x0)).sqrt() * eps),
        Slip("x0 and eps swapped", Q_SAMPLE_HINT,
             lambda x0, t, eps, ab: _row(ab, t, x0).sqrt() * eps + (1 - _row(ab, t, x0)).sqrt() * x0),
    ])


# --------------------------------------------------------------------------------------------------
# 08.q_step
# --------------------------------------------------------------------------------------------------
def _q_step(x_prev, t, eps, betas):
    """:func:`coursepkg.diffusion.q_step` behind the exercise's signature."""
    return D.q_step(_64(x_prev), t.cpu(), _64(eps), _from_betas(betas)).to(x_prev)


def _step_inputs(case: Case, spec) -> dict:
    shape, T = spec
    betas, _ = _schedule(case, T)
    return {"x_prev": case.randn(*shape), "t": _steps(case, shape[0], T), "eps": case.randn(*shape),
            "betas": betas}


Q_STEP_HINT = ("x_t = sqrt(1 - beta_t) * x_{t-1} + sqrt(beta_t) * eps, with beta_t = betas[t] reshaped to "
               "(N, 1, ..., 1)")

function_check(
    "08.q_step", "one forward step, a draw of q(x_t | x_{t-1})",
    solution=_q_step, inputs=_step_inputs, specs=SPECS, seed=8200, what="x_t", describe=["x_prev", "t"],
    mistakes=[
        Slip("beta_t instead of sqrt(beta_t) as the noise's scale", f"beta_t is the variance of the added noise; "
             f"eps is scaled by the standard deviation sqrt(beta_t): {Q_STEP_HINT}",
             lambda x, t, eps, b: (1 - _row(b, t, x)).sqrt() * x + _row(b, t, x) * eps),
        Slip("the square root forgotten on 1 - beta_t", Q_STEP_HINT,
             lambda x, t, eps, b: (1 - _row(b, t, x)) * x + _row(b, t, x).sqrt() * eps),
        Slip("1 - sqrt(beta_t) as the signal's scale", f"the variances add up to 1: (1 - beta_t) + beta_t, so the "
             f"signal is scaled by sqrt(1 - beta_t): {Q_STEP_HINT}",
             lambda x, t, eps, b: (1 - _row(b, t, x).sqrt()) * x + _row(b, t, x).sqrt() * eps),
        Slip("the signal not shrunk (x_{t-1} + sqrt(beta_t) * eps, a variance-exploding step)", Q_STEP_HINT,
             lambda x, t, eps, b: x + _row(b, t, x).sqrt() * eps),
        Slip("alpha_bar_t where alpha_t belongs (the jump from x_0 applied to x_{t-1})", f"one step uses its own "
             f"alpha_t = 1 - beta_t, not the running product alpha_bar_t: {Q_STEP_HINT}",
             lambda x, t, eps, b: _row(torch.cumprod(1 - b, 0), t, x).sqrt() * x
             + (1 - _row(torch.cumprod(1 - b, 0), t, x)).sqrt() * eps),
        Slip("t off by one: betas[t - 1] taken for beta_t", INDEX_HINT,
             lambda x, t, eps, b: (1 - _row(b, t - 1, x)).sqrt() * x + _row(b, t - 1, x).sqrt() * eps),
        Slip("x_{t-1} and eps swapped", Q_STEP_HINT,
             lambda x, t, eps, b: (1 - _row(b, t, x)).sqrt() * eps + _row(b, t, x).sqrt() * x),
    ])


# --------------------------------------------------------------------------------------------------
# 08.q_posterior
# --------------------------------------------------------------------------------------------------
def _q_posterior(x0, xt, t, betas, alpha_bar):
    """:func:`coursepkg.diffusion.q_posterior` behind the exercise's signature: ``(mean, var)``, the variance
    ``(N, 1, ..., 1)``."""
    mean, var = D.q_posterior(_64(x0), _64(xt), t.cpu(), _from_betas(betas))
    return mean.to(x0), var.to(x0)


def _posterior_inputs(case: Case, spec) -> dict:
    shape, T = spec
    betas, alpha_bar = _schedule(case, T)
    return {"x0": case.randn(*shape), "xt": case.randn(*shape), "t": _steps(case, shape[0], T), "betas": betas,
            "alpha_bar": alpha_bar}


def _parts(x0, t, b, ab):
    """``(alpha_bar_t, alpha_bar_{t-1}, beta_t, alpha_{t-1})``, each ``(N, 1, ..., 1)``."""
    return _row(ab, t, x0), _row(ab, t - 1, x0), _row(b, t, x0), 1 - _row(b, t - 1, x0)


def _coefficients(ab_t, ab_prev, beta, a_prev):
    """The right coefficients of x0 and x_t in the posterior mean."""
    return ab_prev.sqrt() * beta / (1 - ab_t), (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t)


def _mean_slip(name: str, hint: str, coefficients) -> Slip:
    """A slip of the mean: ``coefficients(ab_t, ab_prev, beta, a_prev)`` returns its (coefficient of x0, of x_t)."""
    def value(x0, xt, t, b, ab):
        c0, ct = coefficients(*_parts(x0, t, b, ab))
        return c0 * x0 + ct * xt
    return Slip(name, hint, value, output=0)


POSTERIOR_HINT = ("mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) "
                  "/ (1 - alpha_bar_t) * x_t, with alpha_t = 1 - beta_t")
TILDE_HINT = "beta-tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t, shaped (N, 1, ..., 1)"
VAR_SHAPE = ("one variance per row, shaped (N, 1, ..., 1) to broadcast against x0 (like the coefficients): "
             "reshape it, e.g. var.view(-1, *[1] * (x0.dim() - 1))")


def _zero_indexed(x0, xt, t, b, ab):
    """Mean and variance with every tensor indexed as if entry 0 were the first step (alpha_bar[t - 1] for
    alpha_bar_t, alpha_bar[t - 2] for alpha_bar_{t-1}, which wraps around at t = 1, betas[t - 1] for beta_t)."""
    ab_t, ab_prev, beta = _row(ab, t - 1, x0), _row(ab, t - 2, x0), _row(b, t - 1, x0)
    c0, ct = _coefficients(ab_t, ab_prev, beta, None)
    return c0 * x0 + ct * xt, (1 - ab_prev) / (1 - ab_t) * beta


function_check(
    "08.q_posterior", "the posterior q(x_{t-1} | x_t, x_0): its mean and variance",
    solution=_q_posterior, inputs=_posterior_inputs, specs=SPECS, seed=8300, describe=DESCRIBE,
    outputs={0: "the posterior mean", 1: "the posterior variance"}, returns="a pair (mean, var)",
    shape_hints=_shape_hints(VAR_SHAPE, full="one variance per row (the covariance is var * I), not one per "
                             "entry: shape (N, 1, ..., 1)",
                             per_row="the mean has one value per entry of x0: return the pair (mean, var) in "
                             "this order"),
    mistakes=[
        _mean_slip("alpha_bar_t where alpha_t belongs (in the coefficient of x_t)", f"x_t came from x_{{t-1}} by "
                   f"one step, scaled by sqrt(alpha_t): {POSTERIOR_HINT}",
                   lambda ab, abp, b, ap: (_coefficients(ab, abp, b, ap)[0], ab.sqrt() * (1 - abp) / (1 - ab))),
        _mean_slip("alpha_{t-1} where alpha_bar_{t-1} belongs (in the coefficient of x0)", f"x_{{t-1}} came from "
                   f"x0 through t - 1 steps, scaled by sqrt(alpha_bar_{{t-1}}): {POSTERIOR_HINT}",
                   lambda ab, abp, b, ap: (ap.sqrt() * b / (1 - ab), _coefficients(ab, abp, b, ap)[1])),
        _mean_slip("the square root forgotten on alpha_bar_{t-1}", POSTERIOR_HINT,
                   lambda ab, abp, b, ap: (abp * b / (1 - ab), _coefficients(ab, abp, b, ap)[1])),
        _mean_slip("the square root forgotten on alpha_t", POSTERIOR_HINT,
                   lambda ab, abp, b, ap: (_coefficients(ab, abp, b, ap)[0], (1 - b) * (1 - abp) / (1 - ab))),
        _mean_slip("1 - alpha_bar_t where 1 - alpha_bar_{t-1} belongs (in the coefficient of x_t)", POSTERIOR_HINT,
                   lambda ab, abp, b, ap: (_coefficients(ab, abp, b, ap)[0], (1 - b).sqrt())),
        _mean_slip("t off by one: alpha_bar_t where alpha_bar_{t-1} belongs", f"{INDEX_HINT}; {POSTERIOR_HINT}",
                   lambda ab, abp, b, ap: _coefficients(ab, ab, b, ap)),
        Slip(*ZERO_INDEXED, lambda *a: _zero_indexed(*a)[0], output=0),
        _mean_slip("the coefficients of x0 and x_t swapped", POSTERIOR_HINT,
                   lambda ab, abp, b, ap: _coefficients(ab, abp, b, ap)[::-1]),
        Slip("beta_t instead of beta-tilde_t (1 - alpha_bar_t where 1 - alpha_bar_{t-1} belongs)", f"the posterior "
             f"is narrower than the forward step: {TILDE_HINT}", lambda x0, xt, t, b, ab: _row(b, t, x0), output=1),
        Slip("the ratio upside down: (1 - alpha_bar_t) / (1 - alpha_bar_{t-1}) * beta_t", TILDE_HINT,
             lambda x0, xt, t, b, ab: (1 - _row(ab, t, x0)) / (1 - _row(ab, t - 1, x0)) * _row(b, t, x0), output=1),
        Slip(*ZERO_INDEXED, lambda *a: _zero_indexed(*a)[1], output=1),
    ])


# --------------------------------------------------------------------------------------------------
# 08.x0_from_eps and 08.eps_from_x0
# --------------------------------------------------------------------------------------------------
def _x0_from_eps(xt, t, eps, alpha_bar):
    """:func:`coursepkg.diffusion.x0_from_eps` behind the exercise's signature."""
    return D.x0_from_eps(_64(xt), t.cpu(), _64(eps), _from_alpha_bar(alpha_bar)).to(xt)


def _eps_from_x0(xt, t, x0, alpha_bar):
    """:func:`coursepkg.diffusion.eps_from_x0` behind the exercise's signature."""
    return D.eps_from_x0(_64(xt), t.cpu(), _64(x0), _from_alpha_bar(alpha_bar)).to(xt)


def _conversion_inputs(other: str):
    def inputs(case: Case, spec) -> dict:
        shape, T = spec
        _, alpha_bar = _schedule(case, T)
        return {"xt": case.randn(*shape), "t": _steps(case, shape[0], T), other: case.randn(*shape),
                "alpha_bar": alpha_bar}
    return inputs


X0_HINT = ("solve x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps for x0: x0 = (x_t - sqrt(1 - alpha_bar_t) "
           "eps) / sqrt(alpha_bar_t)")
EPS_HINT = ("solve x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps for eps: eps = (x_t - sqrt(alpha_bar_t) "
            "x0) / sqrt(1 - alpha_bar_t)")


def _solved(signal, noise, root=torch.sqrt, root_noise=torch.sqrt, sign=-1.0, divide=True, shift=0):
    """``(x_t + sign * root_noise(noise(ab)) * other) / root(signal(ab))`` at ``alpha_bar[t - shift]``: the slips
    of solving the marginal for one of its two terms (``divide=False`` multiplies instead)."""
    def value(xt, t, other, ab):
        a = _row(ab, t - shift, xt)
        top = xt + sign * root_noise(noise(a)) * other
        return top / root(signal(a)) if divide else top * root(signal(a))
    return value


def _kept(a):
    return a


def _one_minus(a):
    return 1 - a


def _one(a):
    return torch.ones_like(a)


function_check(
    "08.x0_from_eps", "x_0 from x_t and the noise",
    solution=_x0_from_eps, inputs=_conversion_inputs("eps"), specs=SPECS, seed=8400, what="x0",
    describe=["xt", "t"],
    mistakes=[
        Slip("the square root forgotten on alpha_bar_t (divided by alpha_bar_t)", X0_HINT,
             _solved(_kept, _one_minus, root=_kept)),
        Slip("the square root forgotten on 1 - alpha_bar_t", X0_HINT, _solved(_kept, _one_minus, root_noise=_kept)),
        Slip("multiplied by sqrt(alpha_bar_t) instead of divided", X0_HINT, _solved(_kept, _one_minus, divide=False)),
        Slip("the division by sqrt(alpha_bar_t) forgotten", X0_HINT, _solved(_one, _one_minus)),
        Slip("the noise added instead of subtracted", X0_HINT, _solved(_kept, _one_minus, sign=1.0)),
        Slip("t off by one: alpha_bar_{t-1} where alpha_bar_t belongs", INDEX_HINT, _solved(_kept, _one_minus,
                                                                                            shift=1)),
        Slip("x0 and eps swapped: that is eps_from_x0's formula", X0_HINT, _solved(_one_minus, _kept)),
    ])

function_check(
    "08.eps_from_x0", "the noise from x_t and x_0",
    solution=_eps_from_x0, inputs=_conversion_inputs("x0"), specs=SPECS, seed=8500, what="eps",
    describe=["xt", "t"],
    mistakes=[
        Slip("the square root forgotten on 1 - alpha_bar_t (divided by 1 - alpha_bar_t)", EPS_HINT,
             _solved(_one_minus, _kept, root=_kept)),
        Slip("the square root forgotten on alpha_bar_t", EPS_HINT, _solved(_one_minus, _kept, root_noise=_kept)),
        Slip("multiplied by sqrt(1 - alpha_bar_t) instead of divided", EPS_HINT,
             _solved(_one_minus, _kept, divide=False)),
        Slip("the division by sqrt(1 - alpha_bar_t) forgotten", EPS_HINT, _solved(_one, _kept)),
        Slip("the signal added instead of subtracted", EPS_HINT, _solved(_one_minus, _kept, sign=1.0)),
        Slip("x_t and sqrt(alpha_bar_t) x0 in the wrong order (a flipped sign)", EPS_HINT,
             lambda xt, t, x0, ab: -_solved(_one_minus, _kept)(xt, t, x0, ab)),
        Slip("t off by one: alpha_bar_{t-1} where alpha_bar_t belongs", INDEX_HINT, _solved(_one_minus, _kept,
                                                                                            shift=1)),
        Slip("x0 and eps swapped: that is x0_from_eps's formula", EPS_HINT, _solved(_kept, _one_minus)),
    ])


# --------------------------------------------------------------------------------------------------
# 08.elbo_term: L_{t-1} of a noise-predicting model, reverse variance beta-tilde
# --------------------------------------------------------------------------------------------------
def _squared_error(eps, eps_theta):
    return ((eps - eps_theta) ** 2).flatten(1).sum(1)


def _elbo_term(eps, eps_theta, t, betas, alpha_bar):
    """:func:`coursepkg.diffusion.elbo_weight` (reverse variance beta-tilde, noise target) times the squared error
    summed over each example's dimensions, behind the exercise's signature."""
    w = D.elbo_weight(t.cpu(), _from_betas(betas))
    return (w * _squared_error(_64(eps), _64(eps_theta))).to(eps)


def _elbo_inputs(case: Case, spec) -> dict:
    shape, T = spec
    betas, alpha_bar = _schedule(case, T)
    eps = case.randn(*shape)
    return {"eps": eps, "eps_theta": eps + case.randn(*shape, scale=0.5), "t": _steps(case, shape[0], T, first=2),
            "betas": betas, "alpha_bar": alpha_bar}


WEIGHT_HINT = ("L_{t-1} = ||mu-tilde - mu_theta||^2 / (2 sigma_t^2) with mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) "
               "eps) / sqrt(alpha_t): the weight is beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)), sigma_t^2 = "
               "beta-tilde_t")


SUM_HINT = ("sum the squared error over every dimension of an example (all but the first, e.g. .flatten(1).sum(1)): "
            "one value per row")


def _weighted(weight):
    """A slip of the weight: ``weight(beta, alpha, ab, ab_prev)`` (per row, ``(N,)``) times the squared error."""
    def value(eps, eps_theta, t, b, ab):
        return weight(b[t], 1 - b[t], ab[t], ab[t - 1]) * _squared_error(eps, eps_theta)
    return value


def _tilde(beta, ab, ab_prev):
    return (1 - ab_prev) / (1 - ab) * beta


def _weight(beta, alpha, ab, ab_prev):
    return beta**2 / (2 * _tilde(beta, ab, ab_prev) * alpha * (1 - ab))


def _zero_indexed_weight(eps, eps_theta, t, b, ab):
    beta, ab_t, ab_prev = b[t - 1], ab[t - 1], ab[t - 2]
    return _weight(beta, 1 - beta, ab_t, ab_prev) * _squared_error(eps, eps_theta)


function_check(
    "08.elbo_term", "the ELBO term L_{t-1} of a noise predictor: a weighted squared error",
    solution=_elbo_term, inputs=_elbo_inputs, specs=SPECS, seed=8600, what="L_{t-1}", describe=["eps", "t"],
    grad=["eps_theta"],
    detached=("L_{t-1} is detached from eps_theta", "a loss must stay differentiable in the network's output: "
              "compute it with torch operations (no .item(), .detach(), numpy or torch.no_grad())"),
    shape_hints=[(shape[:k], SUM_HINT) for shape, _ in SPECS for k in range(2, len(shape) + 1)]
    + [((), "keep one value per row (N,): do not average or sum over the batch")],
    mistakes=[
        Slip("the weight dropped (that is the simplified loss)", f"the ELBO weights each step's error: "
             f"{WEIGHT_HINT}", lambda eps, eps_theta, t, b, ab: _squared_error(eps, eps_theta)),
        Slip("the weight inverted", WEIGHT_HINT, _weighted(lambda b, a, ab, abp: 1 / _weight(b, a, ab, abp))),
        Slip("beta_t instead of beta-tilde_t as the reverse variance sigma_t^2", f"the KL is between two Gaussians "
             f"of the posterior's variance beta-tilde_t = (1 - alpha_bar_{{t-1}}) / (1 - alpha_bar_t) beta_t; "
             f"{WEIGHT_HINT}", _weighted(lambda b, a, ab, abp: b / (2 * a * (1 - ab)))),
        Slip("the 1/2 of the Gaussian KL missing", WEIGHT_HINT,
             _weighted(lambda b, a, ab, abp: 2 * _weight(b, a, ab, abp))),
        Slip("alpha_bar_t where alpha_t belongs", f"the mean divides by sqrt(alpha_t) (one step), so its square "
             f"gives alpha_t: {WEIGHT_HINT}", _weighted(lambda b, a, ab, abp: _weight(b, ab, ab, abp))),
        Slip("alpha_t where alpha_bar_t belongs (1 - alpha_t = beta_t taken for 1 - alpha_bar_t)", WEIGHT_HINT,
             _weighted(lambda b, a, ab, abp: b**2 / (2 * _tilde(b, ab, abp) * a * (1 - a)))),
        Slip("the mean's coefficient of eps not squared", f"the squared distance squares the factor "
             f"beta_t / (sqrt(alpha_t) sqrt(1 - alpha_bar_t)) too: {WEIGHT_HINT}",
             _weighted(lambda b, a, ab, abp: b / (2 * _tilde(b, ab, abp) * (a * (1 - ab)).sqrt()))),
        Slip("beta_t not squared", WEIGHT_HINT, _weighted(lambda b, a, ab, abp: _weight(b, a, ab, abp) / b)),
        Slip("the norm not squared", f"the KL has the squared distance ||eps - eps_theta||^2: {WEIGHT_HINT}",
             lambda eps, eps_theta, t, b, ab: _weight(b[t], 1 - b[t], ab[t], ab[t - 1])
             * _squared_error(eps, eps_theta).sqrt()),
        Slip(*ZERO_INDEXED, _zero_indexed_weight),
    ])


# --------------------------------------------------------------------------------------------------
# 08.tweedie: E[x_0 | x_t] from the score
# --------------------------------------------------------------------------------------------------
def _tweedie(xt, t, score, alpha_bar):
    """Tweedie's formula with the package: the noise of the score (:func:`coursepkg.diffusion.eps_from_score`)
    turned into x_0 (:func:`coursepkg.diffusion.x0_from_eps`); for a diffused Gaussian mixture and its exact score
    this is :func:`coursepkg.diffusion.exact.posterior_mean_x0` (``tests/test_checks_ch08.py``)."""
    s = _from_alpha_bar(alpha_bar)
    xt64, t = _64(xt), t.cpu()
    return D.x0_from_eps(xt64, t, D.eps_from_score(xt64, t, _64(score), s), s).to(xt)


def _tweedie_inputs(case: Case, spec) -> dict:
    shape, T = spec
    _, alpha_bar = _schedule(case, T)
    return {"xt": case.randn(*shape), "t": _steps(case, shape[0], T), "score": case.randn(*shape),
            "alpha_bar": alpha_bar}


TWEEDIE_HINT = "E[x0 | x_t] = (x_t + (1 - alpha_bar_t) * score) / sqrt(alpha_bar_t)"


def _tweedie_slip(*, var=_one_minus, sign=1.0, root=torch.sqrt, divide=True, shift=0):
    def value(xt, t, score, ab):
        a = _row(ab, t - shift, xt)
        top = xt + sign * var(a) * score
        return top / root(a) if divide else top * root(a)
    return value


function_check(
    "08.tweedie", "Tweedie's formula: E[x_0 | x_t] from the score",
    solution=_tweedie, inputs=_tweedie_inputs, specs=SPECS, seed=8700, what="E[x0 | x_t]", describe=["xt", "t"],
    mistakes=[
        Slip("the division by sqrt(alpha_bar_t) dropped (x_t + (1 - alpha_bar_t) score is E[sqrt(alpha_bar_t) x0 | "
             "x_t])", f"Tweedie's formula gives the mean of the scaled signal sqrt(alpha_bar_t) x0; divide by "
             f"sqrt(alpha_bar_t) to get x0's: {TWEEDIE_HINT}", _tweedie_slip(root=_one)),
        Slip("the sign of the score term flipped", f"the score points towards the data, so x_t moves along it: "
             f"{TWEEDIE_HINT}", _tweedie_slip(sign=-1.0)),
        Slip("sqrt(1 - alpha_bar_t) where the variance 1 - alpha_bar_t belongs", f"Tweedie's formula multiplies "
             f"the score by the noise's variance: {TWEEDIE_HINT}", _tweedie_slip(var=lambda a: (1 - a).sqrt())),
        Slip("divided by alpha_bar_t instead of its square root", TWEEDIE_HINT, _tweedie_slip(root=_kept)),
        Slip("multiplied by sqrt(alpha_bar_t) instead of divided", TWEEDIE_HINT, _tweedie_slip(divide=False)),
        Slip("t off by one: alpha_bar_{t-1} where alpha_bar_t belongs", INDEX_HINT, _tweedie_slip(shift=1)),
    ])
