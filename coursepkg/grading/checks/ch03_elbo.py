"""Checks of the chapter 03 exercises (``solutions/03_elbo.ipynb``), written with :mod:`coursepkg.grading.kit`.

``03.posterior_gap`` and ``03.gmm_elbo`` are deterministic: :func:`~coursepkg.grading.kit.function_check`
compares them to round-off with the reference and names the typical mistakes.

The other two answers are random (Monte Carlo estimates), so their checks are statistical. Each hands the
answer a function of a random linear-Gaussian model (:func:`coursepkg.grading.problems.random_linear_gaussian`),
recorded by a :class:`~coursepkg.grading.kit.Recorder`, and judges, on every trial, first the value, then the
samples the answer evaluated the function at:

- ``03.elbo``: the ELBO is known in closed form for any Gaussian ``q``, and so is the standard error of its
  estimate with ``n_samples`` samples (``log p(x | z)`` is a quadratic form of the Gaussian noise); the answer
  is accepted within 5 standard errors. Each typical mistake changes what the estimator converges to, and its
  value is computed exactly too; a rejected answer within 5 standard errors of some of them gets the name of
  the closest. A last trial differentiates the answer: the gradient must reach ``mu`` and ``logvar`` through
  the sample.
- ``03.iwae``: a few data points are replicated many times in one batch, so one call gives thousands of
  independent bounds per point; their mean is compared with :func:`coursepkg.elbo.iwae_bound` by a z-test, and
  a wrong one is named by :func:`coursepkg.grading.problems.judge_iwae` (shared with ``05.log_likelihood``).
  A point far from the data, whose log-weights are about -1000, tells a log-sum-exp from a log of a mean of
  exponentials (which underflows to -inf).

Then the samples ``z`` the answer passed to the model function are turned back into their noise,
``(z - mu) / exp(logvar / 2)``, which must look like independent standard normal draws (no noise shared by
the data points, the samples or the coordinates), and a second call on the first trial must give a different
estimate. Torch's global generator is seeded per trial (the notebook's random state is restored by
:func:`coursepkg.grading.check`), so a given answer always gets the same verdict.
"""

from __future__ import annotations

import math

import torch

from coursepkg import gmm as G
from coursepkg import probability as P
from coursepkg.elbo import LinearGaussianModel, gaussian_kl, iwae_bound
from coursepkg.grading.kit import (
    N_SIGMA,
    RANDOM_MESSAGES,
    Also,
    Case,
    CheckFailure,
    Mistake,
    Recorder,
    Slip,
    call,
    close,
    closest_mistake,
    compare,
    describe_inputs,
    fresh,
    function_check,
    random_cases,
    register,
    require_callable,
    require_like,
    require_standard_normal,
    statistical_failure,
    within,
)
from coursepkg.grading.problems import SHAPES as GMM_SHAPES
from coursepkg.grading.problems import (
    ModelFunction,
    diag_gaussian,
    far_problem,
    judge_iwae,
    mixture_case,
    random_linear_gaussian,
    random_q,
    roundoff,
)

F64 = torch.float64

KEEP_POINTS = "did you sum or average over the data points too? Keep one value per data point"
SAME_CALLS = ("the same value at every call", "a Monte Carlo estimate draws fresh samples at every call: do not "
              "reseed the generator (torch.manual_seed) or reuse stored noise inside the function")
SAME_NOISE_FOR_POINTS = ("the same noise for every data point", "each data point needs its own samples: draw the "
                         "noise with the full shape (n, *mu.shape), e.g. torch.randn(n, *mu.shape), not (n, 1, Dz)")


def _samples_problem(case: Case, N: int, Dx: int, Dz: int):
    """A random model and ``N`` points drawn from it (float64, rounded to the case's dtype)."""
    model = random_linear_gaussian(case, Dx, Dz)
    return model, case.rounded(model.sample(N, generator=case.gen).x)


def _z_by_point(rec: Recorder, x: torch.Tensor, Dz: int) -> torch.Tensor | None:
    """The samples z the answer passed, ``(S, N, Dz)``, when its calls each covered only some of the N data
    points (a loop over the points, a vmap over them): each call's rows of x are matched to the check's x
    (identical rows, copies of one point, are filled in turn) and its z columns go to those points. None when
    a call's x or z cannot be read that way, or the points did not all get the same number of samples."""
    x = x.detach().to("cpu", F64)
    distinct, group = torch.unique(x, dim=0, return_inverse=True)             # copies of a point: one group
    members = [torch.nonzero(group == g).flatten().tolist() for g in range(len(distinct))]
    turn = [0] * len(distinct)
    samples: list[list[torch.Tensor]] = [[] for _ in range(x.shape[0])]
    pairs = []
    for c in rec.calls:
        xc, zc = (c.args + (None, None))[:2]
        if isinstance(xc, torch.Tensor) and isinstance(zc, torch.Tensor) and xc.dim() == 3 and zc.dim() >= 3 \
                and zc.shape[0] == xc.shape[0]:
            pairs += zip(xc, zc, strict=True)  # under vmap over the points: the recorder put that dimension first
        else:
            pairs.append((xc, zc))
    for xc, zc in pairs:
        if not (isinstance(xc, torch.Tensor) and isinstance(zc, torch.Tensor)) or xc.dim() != 2 \
                or zc.dim() < 2 or tuple(zc.shape[-2:]) != (xc.shape[0], Dz):
            return None
        zc = zc.to(F64).reshape(-1, xc.shape[0], Dz)
        which = (xc.to(F64)[:, None, :] == distinct[None]).all(-1)            # (n_c, groups)
        for j in range(xc.shape[0]):
            g = torch.nonzero(which[j]).flatten().tolist()
            if not g:
                return None
            g = g[0]
            samples[members[g][turn[g] % len(members[g])]].append(zc[:, j])
            turn[g] += 1
    counts = {sum(len(t) for t in s) for s in samples}
    if len(counts) != 1 or 0 in counts:
        return None
    return torch.stack([torch.cat(s) for s in samples], dim=1)


def _q_noise(rec: Recorder, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *,
             by_point: bool) -> torch.Tensor | None:
    """The noise ``(z - mu) / exp(logvar / 2)`` of the samples ``z`` the answer passed to ``rec``, for q =
    N(mu, diag exp(logvar)) (float64, ``(N, Dz)``), one row per sample (``by_point``: one row per data point,
    the samples side by side); None when nothing could be recorded (no call, or a call the recorder could not unwrap).
    No noise at all, or noise shared by the data points, fails here, before the value is judged (the other
    tests of the noise, :func:`_require_q_draws`, assume q's mean and scale: they come after the value)."""
    z = rec.rows(1)
    if z is not None and z.numel() == 0:
        z = rec.rows("z")
    if z is None or z.numel() == 0:
        return None
    N, Dz = mu.shape
    partial = any(isinstance(a := (c.args + (None, None))[1], torch.Tensor) and a.dim() >= 2 and a.shape[-2] != N
                  for c in rec.calls)
    if partial:  # the answer went through the points a few at a time: put its samples back in place
        z = _z_by_point(rec, x, Dz)
        if z is None:
            return None
    u = (z.reshape(-1, N, Dz) - mu) / torch.exp(0.5 * logvar)                      # (S, N, Dz)
    if u.numel() > 1 and close(u, u.reshape(-1)[:1].expand_as(u), 1e-4, 1e-5):
        raise Mistake(*RANDOM_MESSAGES["constant"])
    if N > 1 and close(u, u[:, :1].expand_as(u), 1e-4, 1e-5):
        raise Mistake(*SAME_NOISE_FOR_POINTS)
    return u.transpose(0, 1).reshape(N, -1) if by_point else u.reshape(u.shape[0], -1)


def _require_q_draws(u: torch.Tensor | None, rec: Recorder, inputs: str, *, samples: int, name: str,
                     by_point: bool, Dz: int) -> bool:
    """After the value is accepted: exactly ``samples`` samples per data point (``name``: n_samples or k), whose
    noise looks like independent standard normal draws (True when tested). Fewer samples give an unbiased but
    noisier estimate that a value within Monte Carlo error does not reveal."""
    if u is None:
        return False
    seen = u.shape[1] // Dz if by_point else u.shape[0]
    if seen != samples:
        raise CheckFailure(f"{rec.__name__} was evaluated on {seen} samples per data point in all, expected "
                           f"{name} = {samples} (for inputs {inputs}): draw exactly {name} samples z, shape "
                           f"({name}, N, Dz), and evaluate {rec.__name__} on them once")
    require_standard_normal(u, inputs=inputs,
                            what=f"the noise (z - mu) / exp(logvar / 2) of the samples z passed to {rec.__name__}")
    return True


def _require_fresh(f, got, *args) -> None:
    """A second call with the same inputs must give another estimate."""
    again = call(f, *args)
    if isinstance(again, torch.Tensor) and isinstance(got, torch.Tensor) and not fresh(got, again):
        raise Mistake(*SAME_CALLS)


# --------------------------------------------------------------------------------------------------
# 03.elbo: the Monte Carlo ELBO, reconstruction minus prior matching
# --------------------------------------------------------------------------------------------------
ELBO_SAMPLES = 4000
# ((N, Dx, Dz), log-variance range, rows with positive log-variances). The first trial has a narrow q
# (a small Monte Carlo error and a large KL: the KL slips are told apart best there) and two rows of
# positive log-variances: "logvar used as the variance" is NaN exactly in the other rows. The second
# trial has positive log-variances only, where that mistake has a finite value.
ELBO_TRIALS = [((6, 4, 2), (-2.5, -1.0), 2), ((6, 4, 2), (0.05, 0.7), 0), ((5, 3, 1), (-2.0, 1.0), 0),
               ((4, 5, 3), (-2.0, 0.5), 0)]

NOT_REPARAMETERIZED = (
    "the sample is not reparameterized",
    "no gradient reaches mu and logvar through z: draw z = mu + exp(logvar / 2) * eps with "
    "eps = torch.randn(...) (or .rsample()), not with .sample(), torch.no_grad(), .detach() or numpy; "
    "the reparameterization trick makes the estimate a differentiable function of mu and logvar")
LOGVAR_AS_VAR = ("logvar used as the variance", "logvar is log(sigma^2): the variance is exp(logvar) and the "
                 "standard deviation exp(logvar / 2); taking sqrt or log of logvar itself is wrong "
                 "(and NaN wherever logvar < 0)")


def _elbo_solution(x, log_px_given_z, mu, logvar, n_samples):
    """The exercise's answer: the mean of log p(x | z_s) over reparameterized samples, minus the closed-form KL."""
    eps = torch.randn(n_samples, *mu.shape, dtype=mu.dtype, device=mu.device)
    return log_px_given_z(x, P.reparameterize(mu, logvar, eps)).mean(0) - P.kl_standard_normal(mu, logvar)


def _recon_se(model: LinearGaussianModel, x, mean, std, S: int) -> torch.Tensor:
    """Standard error of the S-sample mean of ``log p(x | z)``, ``z ~ N(mean, diag std^2)``, ``(N,)``, exactly:
    with ``a`` the whitened residual at the mean and ``B`` the whitened ``W diag(std)``, ``log p(x | z)`` is
    ``const - |a - B eps|^2 / 2``, whose variance is ``|B^T B|_F^2 / 2 + |B^T a|^2``."""
    s = model.noise_var.rsqrt()
    a = (x - mean @ model.W.T - model.b) * s                                      # (N, Dx)
    B = (model.W * s[:, None])[None] * std[:, None, :]                             # (N, Dx, Dz)
    var = 0.5 * (B.mT @ B).pow(2).sum((-2, -1)) + (a[:, None, :] @ B)[:, 0].pow(2).sum(-1)
    return (var / S).sqrt()


def _elbo_mistakes(model, x, mu, logvar, recon, kl, se):
    """``(name, hint, value, standard error)`` of the typical mistakes, each value exact."""
    S, Dz = ELBO_SAMPLES, mu.shape[1]
    zeros, ones = torch.zeros_like(mu), torch.ones_like(mu)

    def terms(mean, var):
        return model.elbo_terms(x, diag_gaussian(mean, var))

    recon_prior, _ = terms(zeros, ones)
    recon_exp, kl_exp = terms(mu, torch.exp(2 * logvar))                         # std = exp(logvar)
    se_prior = _recon_se(model, x, zeros, ones, S)
    se_exp = _recon_se(model, x, mu, torch.exp(logvar), S)
    mistakes = [
        ("+KL instead of -KL (a sign error in the prior-matching term)", "ELBO = reconstruction - KL(q || p(z)): "
         "the KL is subtracted", recon + kl, se),
        ("z sampled from the prior N(0, I) instead of q", "the reconstruction term is an expectation under "
         "q(z | x): z = mu + exp(logvar / 2) * eps, not z = eps", recon_prior - kl, se_prior),
        ("std = exp(logvar) (the 1/2 is missing)", "logvar = log(sigma^2), so sigma = exp(logvar / 2) = "
         "exp(0.5 * logvar)", recon_exp - kl, se_exp),
        ("std = exp(logvar) (the 1/2 is missing)", "logvar = log(sigma^2), so sigma = exp(logvar / 2) and "
         "sigma^2 = exp(logvar)", recon_exp - kl_exp, se_exp),
        ("the KL term forgotten", "ELBO = E_q[log p(x | z)] - KL(q(z | x) || N(0, I)): subtract "
         "0.5 * sum(mu^2 + exp(logvar) - 1 - logvar) over the latent dimensions", recon, se),
        ("the KL averaged over the latent dimensions instead of summed", "KL(q || N(0, I)) of a diagonal Gaussian "
         "is a sum over the Dz dimensions: .sum(-1), not .mean(-1)", recon - kl / Dz, se),
        ("the reconstruction summed over the samples instead of averaged", "the Monte Carlo estimate of an "
         "expectation is the mean over the n_samples samples: .mean(0), not .sum(0)", S * recon - kl, S * se),
    ]
    if bool((logvar > 0).all()):  # logvar taken for the variance: finite only for positive logvar
        recon_lv, kl_lv = terms(mu, logvar)
        se_lv = _recon_se(model, x, mu, logvar.sqrt(), S)
        mistakes += [(*LOGVAR_AS_VAR, recon_lv - kl_lv, se_lv), (*LOGVAR_AS_VAR, recon_lv - kl, se_lv),
                     (*LOGVAR_AS_VAR, recon - kl_lv, se)]
    return mistakes


def _elbo_shape_hints(S: int, N: int, Dz: int) -> list[tuple[tuple[int, ...], str]]:
    return [((S, N), "average the reconstruction over the n_samples samples (dim 0)"),
            ((N, Dz), "sum the KL over the latent dimensions"),
            ((S,), "reduce over the samples (dim 0), not over the data points"), ((), KEEP_POINTS), ((1,), KEEP_POINTS)]


def _judge_elbo(got: torch.Tensor, case: Case, model, x, mu, logvar, inputs: str) -> None:
    """``got`` (float64) within ``N_SIGMA`` standard errors of the exact ELBO, or the likeliest mistake named."""
    recon, kl = model.elbo_terms(x, diag_gaussian(mu, logvar.exp()))
    exact = recon - kl
    se = _recon_se(model, x, mu, torch.exp(0.5 * logvar), ELBO_SAMPLES)
    tol = N_SIGMA * se + roundoff(case, exact)
    if within(got, exact, tol):
        return
    mistake = closest_mistake(got, [(name, hint, value, N_SIGMA * m_se + roundoff(case, value)) for name, hint, value,
                                    m_se in _elbo_mistakes(model, x, mu, logvar, recon, kl, se)],
                              reference=exact, reference_tol=tol)
    if mistake is not None:
        raise mistake
    bad = ~torch.isfinite(got)
    if bad.any():
        negative = (logvar < 0).any(-1)
        if negative.any() and torch.equal(bad, negative):
            raise Mistake(*LOGVAR_AS_VAR)
        raise CheckFailure(f"your ELBO contains NaN or inf (for inputs {inputs}), the exact one does not: look for a "
                           "log or square root of a negative number, or an exp that overflows")
    raise statistical_failure("your ELBO", got, exact, se, inputs=inputs, expected_name="the exact value",
                              advice=f"with n_samples={ELBO_SAMPLES} a correct estimate is within {N_SIGMA:g} "
                                     "standard errors: average log p(x | z_s) over n_samples reparameterized samples "
                                     "and subtract the closed-form KL")


def _check_elbo_gradient(f, case: Case, seed: int) -> None:
    """Differentiate the answer: its gradient with respect to mu and logvar must be an unbiased estimate of
    the exact ELBO's gradient, which it is not when the sample is detached from them."""
    case = Case(torch.Generator().manual_seed(seed), case.dtype, case.device)
    g, S = case.gen, ELBO_SAMPLES
    N, Dx, Dz = 5, 4, 2
    model, x = _samples_problem(case, N, Dx, Dz)
    mu, logvar = random_q(case, model, x, shift=1.0, lv_range=(-1.0, 0.5))
    xc, muc, lvc = case.to(x, mu, logvar)
    mu_leaf, lv_leaf = muc.clone().requires_grad_(True), lvc.clone().requires_grad_(True)
    inputs = describe_inputs(x=xc, mu=muc, n_samples=S) + ", mu and logvar requiring grad"
    got = call(f, xc, ModelFunction(case, model, joint=False), mu_leaf, lv_leaf, S)
    require_like(got, (N,), dtype=case.dtype, device=case.device, what="your ELBO", inputs=inputs,
                 shape_hints=_elbo_shape_hints(S, N, Dz))
    if not got.requires_grad:
        raise Mistake(*NOT_REPARAMETERIZED)
    g_mu, g_lv = torch.autograd.grad(got.sum(), (mu_leaf, lv_leaf), allow_unused=True)
    if g_mu is None or g_lv is None:
        raise Mistake(*NOT_REPARAMETERIZED)
    g_mu, g_lv = g_mu.double().cpu(), g_lv.double().cpu()

    # the exact gradient, and the standard errors of its reparameterized estimate
    mu_r, lv_r = mu.clone().requires_grad_(True), logvar.clone().requires_grad_(True)
    e_mu, e_lv = torch.autograd.grad(model.exact_elbo(x, diag_gaussian(mu_r, lv_r.exp())).sum(), (mu_r, lv_r))
    std = torch.exp(0.5 * logvar)
    eps = torch.randn(S, N, Dz, generator=g, dtype=F64)
    z = mu + std * eps
    grad_z = ((x - z @ model.W.T - model.b) / model.noise_var) @ model.W           # d log p(x|z) / dz, (S, N, Dz)
    se_mu = grad_z.std(0) / math.sqrt(S)
    se_lv = (grad_z * eps * 0.5 * std).std(0) / math.sqrt(S)
    tol_mu, tol_lv = N_SIGMA * se_mu + roundoff(case, e_mu), N_SIGMA * se_lv + roundoff(case, e_lv)
    ok_mu, ok_lv = within(g_mu, e_mu, tol_mu), within(g_lv, e_lv, tol_lv)
    if ok_mu and ok_lv:
        return
    # the reconstruction's share of the student's gradient (the KL's gradient is exact: mu, (exp(logvar) - 1) / 2)
    rec_mu, rec_lv = g_mu + mu, g_lv + 0.5 * (logvar.exp() - 1.0)
    if (not ok_mu and within(rec_mu, torch.zeros_like(rec_mu), tol_mu)) or \
            (not ok_lv and within(rec_lv, torch.zeros_like(rec_lv), tol_lv)):
        raise Mistake(*NOT_REPARAMETERIZED)
    which = "mu" if not ok_mu else "logvar"
    raise CheckFailure(f"your ELBO has the right value but the wrong gradient with respect to {which} (for inputs "
                       f"{inputs}): compute it with torch operations from mu and logvar, through "
                       "z = mu + exp(logvar / 2) * eps")


@register("03.elbo", "Monte Carlo ELBO: reconstruction minus prior matching", solution=_elbo_solution)
def check_elbo(answer):
    f = require_callable(answer)
    S = ELBO_SAMPLES
    trials = [(case, spec) for case in random_cases(3100) for spec in ELBO_TRIALS]
    noise_tested = 0
    for i, (case, ((N, Dx, Dz), lv_range, positive_rows)) in enumerate(trials):
        torch.manual_seed(3100 + i)
        model, x = _samples_problem(case, N, Dx, Dz)
        mu, logvar = random_q(case, model, x, shift=0.5, lv_range=lv_range, positive_rows=positive_rows)
        xc, muc, lvc = case.to(x, mu, logvar)
        inputs = describe_inputs(x=xc, mu=muc, n_samples=S)
        rec = Recorder(ModelFunction(case, model, joint=False))
        got = call(f, xc, rec, muc, lvc, S)                        # the answer first: nothing expected exists yet
        require_like(got, (N,), dtype=case.dtype, device=case.device, what="your ELBO", inputs=inputs,
                     shape_hints=_elbo_shape_hints(S, N, Dz))
        u = _q_noise(rec, xc, mu, logvar, by_point=False)
        _judge_elbo(got.detach().double().cpu(), case, model, x, mu, logvar, inputs)
        noise_tested += _require_q_draws(u, rec, inputs, samples=S, name="n_samples", by_point=False, Dz=Dz)
        if i == 0:
            _require_fresh(f, got, xc, ModelFunction(case, model, joint=False), muc, lvc, S)
    _check_elbo_gradient(f, trials[0][0], 3199)
    noise = (f"; the samples it evaluates log_px_given_z at are independent draws from q (on {noise_tested} inputs)"
             if noise_tested else "")
    return (f"matches the exact ELBO within Monte Carlo error on {len(trials)} random inputs (n_samples={S}), "
            f"with a new estimate at every call{noise}; and its gradient flows through the sample")


# --------------------------------------------------------------------------------------------------
# 03.posterior_gap: log p(x) - ELBO = KL(q || p(z | x)), exactly
# --------------------------------------------------------------------------------------------------
GAP_SHAPES = [(6, 4, 2), (5, 3, 1), (4, 6, 3)]   # (N, Dx, Dz), Dx > Dz so that W^T D^-1 W is invertible


def _posterior_gap(x, W, b, noise_var, q_mean, q_var):
    """The exercise's answer: KL(q || p(z | x)) from the model's exact posterior."""
    return gaussian_kl(diag_gaussian(q_mean, q_var), LinearGaussianModel(W, b, noise_var).posterior(x))


def _gap_reference(*args):
    """:func:`_posterior_gap` computed in float64, in the inputs' dtype and device."""
    return _posterior_gap(*(t.to(F64).cpu() for t in args)).to(dtype=args[0].dtype, device=args[0].device)


def _gap_inputs(case: Case, shape):
    N, Dx, Dz = shape
    model, x = _samples_problem(case, N, Dx, Dz)
    mu, logvar = random_q(case, model, x, shift=0.5)
    q_var = case.rounded(logvar.exp())
    names = ["x", "W", "b", "noise_var", "q_mean", "q_var"]
    return dict(zip(names, case.to(x, model.W, model.b, model.noise_var, mu, q_var), strict=True))


def _kl_full(mq, Sq, mp, Sp, *, logdet: bool = True, half: bool = True, logdet_sign: float = 1.0):
    """``KL(N(mq, Sq) || N(mp, Sp))`` written out, with switches for the typical slips, ``(N,)``."""
    Dz = mq.shape[-1]
    Sp = Sp.expand(mq.shape[0], Dz, Dz)
    Sq = Sq.expand(mq.shape[0], Dz, Dz)
    P_ = torch.linalg.inv(Sp)
    d = (mp - mq).unsqueeze(-1)
    value = torch.einsum("nij,nji->n", P_, Sq) + (d.mT @ P_ @ d)[:, 0, 0] - Dz
    if logdet:
        value = value + logdet_sign * (torch.logdet(Sp) - torch.logdet(Sq))
    return 0.5 * value if half else value


def _posterior(x, W, b, noise_var, *, prior: bool = True, precision_noise: bool = False, subtract_b: bool = True):
    """``(mean (N, Dz), precision Lambda (Dz, Dz))`` of p(z | x), with switches for the typical slips."""
    Dinv = noise_var if precision_noise else 1.0 / noise_var
    Lam = W.T @ (W * Dinv[:, None])
    if prior:
        Lam = Lam + torch.eye(W.shape[1], dtype=W.dtype)
    r = x - b if subtract_b else x
    mean = torch.linalg.solve(Lam, (W.T @ (r * Dinv).T)).T
    return mean, Lam


def _gap_slip(wrong):
    """A slip of the gap: ``wrong(x, W, b, noise_var, mu, Sq)`` in float64, with ``Sq = diag(q_var)``."""
    def value(*args):
        x, W, b, nv, mu, q_var = (t.to(F64).cpu() for t in args)
        return wrong(x, W, b, nv, mu, torch.diag_embed(q_var))
    return value


def _kl_to(mu, Sq, post, **switches):
    """KL(q || a wrong posterior) from ``post = (mean, precision)``."""
    m, Lam = post
    return _kl_full(mu, Sq, m, torch.linalg.inv(Lam), **switches)


LAMBDA_AS_COV = "the posterior covariance taken as Lambda instead of its inverse"

function_check(
    "03.posterior_gap", "the gap log p(x) - ELBO = KL(q || posterior), exactly",
    solution=_posterior_gap, reference=_gap_reference, inputs=_gap_inputs, specs=GAP_SHAPES, seed=3200,
    what="the gap", describe=["x", "W"], tol=lambda case: (1e-3, 1e-4) if case.dtype == torch.float32 else case.tol,
    shape_hints=[((N, Dz), "sum the KL over the latent dimensions (or, better, use the full Dz x Dz formula)")
                 for N, _, Dz in GAP_SHAPES] + [
        ((N, N), "the mean difference is one vector per point: use an einsum or (d[:, None, :] @ P @ d[:, :, None]) "
                 "for the quadratic form, not d @ P @ d.T") for N, _, _ in GAP_SHAPES],
    mistakes=[
        Slip("KL in the wrong direction, KL(p(z | x) || q)", "the gap is KL(q(z | x) || p(z | x)): the expectation "
             "is under q, so q's covariance goes in the trace, tr(Sigma_p^-1 S_q), and the mean difference is "
             "weighted by the posterior precision", _gap_slip(lambda x, W, b, nv, mu, Sq: _kl_full(
                 _posterior(x, W, b, nv)[0], torch.linalg.inv(_posterior(x, W, b, nv)[1]), mu, Sq))),
        Slip(LAMBDA_AS_COV, "Lambda = I + W^T D^-1 W is the posterior *precision*; the covariance is Lambda^-1 "
             "(torch.linalg.inv or torch.linalg.solve)", _gap_slip(lambda x, W, b, nv, mu, Sq: _kl_full(
                 mu, Sq, *_posterior(x, W, b, nv)))),
        Slip(LAMBDA_AS_COV, "Lambda = I + W^T D^-1 W is the posterior *precision*; the covariance is Lambda^-1, and "
             "the mean Lambda^-1 W^T D^-1 (x - b)", _gap_slip(lambda x, W, b, nv, mu, Sq: _kl_full(
                 mu, Sq, ((x - b) / nv) @ W @ _posterior(x, W, b, nv)[1], _posterior(x, W, b, nv)[1]))),
        Slip("the prior precision I forgotten in Lambda", "p(z | x) combines the prior N(0, I) and the likelihood: "
             "Lambda = I + W^T diag(noise_var)^-1 W", _gap_slip(lambda x, W, b, nv, mu, Sq: _kl_to(
                 mu, Sq, _posterior(x, W, b, nv, prior=False)))),
        Slip("noise_var used as a precision (multiplied instead of divided)", "noise_var is the variance of x | z: "
             "the likelihood contributes W^T diag(1 / noise_var) W to the precision",
             _gap_slip(lambda x, W, b, nv, mu, Sq: _kl_to(mu, Sq, _posterior(x, W, b, nv, precision_noise=True)))),
        Slip("b not subtracted from x", "the posterior mean is Lambda^-1 W^T D^-1 (x - b): the offset b is part of "
             "the likelihood's mean W z + b", _gap_slip(lambda x, W, b, nv, mu, Sq: _kl_to(
                 mu, Sq, (_posterior(x, W, b, nv, subtract_b=False)[0], _posterior(x, W, b, nv)[1])))),
        Slip("the log-determinant terms forgotten", "KL = 1/2 [tr(Sigma_p^-1 S_q) + (m_p - m_q)^T Sigma_p^-1 "
             "(m_p - m_q) - Dz + log det Sigma_p - log det S_q]",
             _gap_slip(lambda x, W, b, nv, mu, Sq: _kl_to(mu, Sq, _posterior(x, W, b, nv), logdet=False))),
        Slip("the log-determinants with the wrong sign", "KL(q || p) has + log det Sigma_p - log det S_q "
             "(log det Sigma_p = -log det Lambda)",
             _gap_slip(lambda x, W, b, nv, mu, Sq: _kl_to(mu, Sq, _posterior(x, W, b, nv), logdet_sign=-1.0))),
        Slip("the factor 1/2 forgotten", "every term of the Gaussian KL is multiplied by 1/2",
             _gap_slip(lambda x, W, b, nv, mu, Sq: _kl_to(mu, Sq, _posterior(x, W, b, nv), half=False))),
        Slip("q_var used as a standard deviation", "q_var holds the variances of q: S_q = diag(q_var), "
             "log det S_q = sum(log q_var)", _gap_slip(lambda x, W, b, nv, mu, Sq: _kl_to(
                 mu, Sq @ Sq, _posterior(x, W, b, nv)))),
    ])


# --------------------------------------------------------------------------------------------------
# 03.iwae: the importance-weighted bound
# --------------------------------------------------------------------------------------------------
IWAE_REPLICAS = 2000
# ((P, Dx, Dz), k): P data points, each replicated IWAE_REPLICAS times in the batch
IWAE_TRIALS = [((3, 4, 2), 8), ((2, 3, 1), 5), ((3, 5, 3), 1)]


def _iwae_solution(x, log_joint, mu, logvar, k):
    """The exercise's answer: one draw of :func:`coursepkg.elbo.iwae_bound` per data point."""
    return iwae_bound(x, log_joint, diag_gaussian(mu, logvar.exp()), k).estimate


@register("03.iwae", "the importance-weighted bound, by log-mean-exp", solution=_iwae_solution)
def check_iwae(answer):
    f = require_callable(answer)
    R = IWAE_REPLICAS
    trials = [(case, spec) for case in random_cases(3300) for spec in IWAE_TRIALS]
    trials += [(case, None) for case in random_cases(3350)]
    noise_tested = 0
    for i, (case, spec) in enumerate(trials):
        torch.manual_seed(3300 + i)
        if spec is None:
            (model, x, is_far), k = far_problem(case), 8
        else:
            ((P_, Dx, Dz), k), is_far = spec, None
            model, x = _samples_problem(case, P_, Dx, Dz)
        mu, logvar = random_q(case, model, x, shift=0.4)
        xc, muc, lvc = case.to(x.repeat(R, 1), mu.repeat(R, 1), logvar.repeat(R, 1))
        inputs = describe_inputs(x=xc, mu=muc, k=k)
        rec = Recorder(ModelFunction(case, model, joint=True))
        got = call(f, xc, rec, muc, lvc, k)                        # the answer first: nothing expected exists yet
        with torch.random.fork_rng(devices=[]):                      # the reference's noise: not the answer's
            torch.manual_seed(3390 + i)
            ref = iwae_bound(x, model.log_joint, diag_gaussian(mu, logvar.exp()), k, n_estimates=R)
        u = _q_noise(rec, xc, mu.repeat(R, 1), logvar.repeat(R, 1), by_point=True)
        judge_iwae(got, case, inputs, model, x, mu, logvar, k, R, ref.estimate, ref.stderr, is_far, what="bound",
                   recipe=f"with k={k}, the bound is log (1/k) sum_i exp(log p(x, z_i) - log q(z_i | x)) "
                          "for k reparameterized samples z_i from q")
        noise_tested += _require_q_draws(u, rec, inputs, samples=k, name="k", by_point=True, Dz=mu.shape[1])
        if i == 0:
            _require_fresh(f, got, xc, ModelFunction(case, model, joint=True), muc, lvc, k)
    noise = (f"; the samples it evaluates log_joint at are independent draws from q (on {noise_tested} inputs)"
             if noise_tested else "")
    return (f"matches coursepkg.elbo.iwae_bound in distribution ({R} bounds per point) on {len(trials)} random "
            f"inputs, k = 1, 5 and 8, including a point far from the data, with a new bound at every call{noise}")


# --------------------------------------------------------------------------------------------------
# 03.gmm_elbo: the ELBO of a Gaussian mixture for a categorical q
# --------------------------------------------------------------------------------------------------
GMM_Q_KINDS = ["zeros", "posterior", "dense", "zeros"]   # one per shape of chapter 02's mixture problems


def _gmm_elbo(x, weights, means, covariances, q):
    """The exercise's answer: sum_k q_nk [log p(x_n, z=k) - log q_nk], with 0 log 0 = 0."""
    joint = G.joint_log_prob(x, G.GMM(weights, means, covariances))
    return (q * joint).sum(1) - torch.xlogy(q, q).sum(1)


def _random_categorical(case: Case, N: int, K: int, kind: str) -> torch.Tensor:
    """A q of shape (N, K) in float64: "zeros" (random rows, about a third of the entries exactly 0, the
    first rows one-hot) or "dense" (random, no zero)."""
    g = case.gen
    logits = 1.5 * torch.randn(N, K, generator=g, dtype=F64)
    if kind == "dense":
        return torch.softmax(logits, 1)
    mask = torch.rand(N, K, generator=g, dtype=F64) < 0.35
    mask[torch.arange(N), torch.randint(K, (N,), generator=g)] = False    # each row keeps an entry
    mask[: max(1, N // 4)] = True                                           # the first rows one-hot
    mask[torch.arange(max(1, N // 4)), torch.randint(K, (max(1, N // 4),), generator=g)] = False
    return torch.softmax(logits.masked_fill(mask, -math.inf), 1)


def _gmm_inputs(case: Case, spec):
    (N, D, K), kind = spec
    x, w, m, c = mixture_case(case, N, D, K)
    q = G.e_step(x, G.GMM(w, m, c)) if kind == "posterior" else case.to(_random_categorical(case, N, K, kind))
    return {"x": x, "weights": w, "means": m, "covariances": c, "q": q}


def _joint(x, w, m, c):
    return G.joint_log_prob(x, G.GMM(w, m, c))


def _tight_at_the_posterior(f) -> None:
    """With q the posterior (the E-step's responsibilities), the ELBO is log p(x)."""
    case = random_cases(3450, (F64,))[0]
    x, w, m, c = mixture_case(case, 30, 2, 3)
    gmm = G.GMM(w, m, c)
    q = G.e_step(x, gmm)
    got = f(x, w, m, c, q)
    compare(got, G.log_likelihood(x, gmm), what="the ELBO of q = the posterior", rtol=1e-7, atol=1e-9)


ONE_NUMBER = ("one number for all the points (a mean over the points) instead of one value per point: return the "
              "ELBO of each of the N points, shape (N,)")

function_check(
    "03.gmm_elbo", "the ELBO of a Gaussian mixture for a categorical q",
    solution=_gmm_elbo, inputs=_gmm_inputs, specs=list(zip(GMM_SHAPES, GMM_Q_KINDS, strict=True)), seed=3400,
    what="the ELBO", describe=["x", "q"], tol=lambda case: (1e-4, 1e-5) if case.dtype == torch.float32 else case.tol,
    also=[Also("equals log p(x) when q is the posterior", _tight_at_the_posterior)],
    shape_hints=[((), ONE_NUMBER), ((1,), ONE_NUMBER)] + [((N, 1), "drop keepdim=True") for N, _, _ in GMM_SHAPES]
    + [((N, K), "sum over the K components (dim=1)") for N, _, K in GMM_SHAPES],
    mistakes=[
        Slip("the entropy term forgotten (that is EM's Q function, not the ELBO)", "ELBO = sum_k q_nk [log p(x_n, "
             "z=k) - log q_nk]: the - q log q part (the entropy of q) belongs to it",
             lambda x, w, m, c, q: (q * _joint(x, w, m, c)).sum(1)),
        Slip("the entropy with the wrong sign", "subtract log q_nk: sum_k q_nk (log p(x_n, z=k) - log q_nk), "
             "and the entropy -sum_k q_nk log q_nk is >= 0",
             lambda x, w, m, c, q: (q * _joint(x, w, m, c)).sum(1) + torch.xlogy(q, q).sum(1)),
        Slip("0 log 0 gives NaN", "q_nk = 0 must contribute 0, but 0 * log(0) = 0 * (-inf) is NaN in floating point: "
             "use torch.xlogy(q, q) or torch.where(q > 0, q * torch.log(q), 0)",
             lambda x, w, m, c, q: (q * (_joint(x, w, m, c) - torch.log(q))).sum(1)),
        Slip("the mixture weights pi_k forgotten", "log p(x_n, z=k) = log pi_k + log N(x_n; mu_k, Sigma_k)",
             lambda x, w, m, c, q: _gmm_elbo(x, w, m, c, q) - (q * torch.log(w)).sum(1)),
        Slip("q ignored: log p(x) returned", "the ELBO depends on q; it equals log p(x) only when q is the posterior",
             lambda x, w, m, c, q: torch.logsumexp(_joint(x, w, m, c), 1)),
        Slip("a mean over the components instead of the sum", "sum_k q_nk [...] is an expectation under q: the "
             "weights q_nk already sum to 1, so sum over k, do not also divide by K",
             lambda x, w, m, c, q: ((q * _joint(x, w, m, c)) - torch.xlogy(q, q)).mean(1)),
    ])
