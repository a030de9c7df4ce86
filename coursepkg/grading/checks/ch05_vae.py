r"""Checks of the chapter 05 exercises (``solutions/05_vae.ipynb``).

Three of the four answers are random, so their checks are statistical; every check seeds torch's global
generator inside the check (:func:`coursepkg.grading.check` restores the notebook's state), so a given
answer always gets the same verdict.

- ``05.reparameterize`` recovers the noise from the answer, ``eps = (z - mu) / std``, and tests that it
  looks like independent standard normal draws: per coordinate, mean and variance within 5 standard
  errors; pooled, the kurtosis too (a uniform ``torch.rand`` noise, even rescaled, fails there). A
  sampling slip (``logvar`` used as the variance, ``std = exp(logvar)``, ...) is recognised by the same
  test against the distribution that slip gives. Then the answer is differentiated: ``dz/dmu = 1`` and
  ``dz/dlogvar = (z - mu) / 2`` exactly, on the answer's own sample.
- ``05.vae_loss`` is deterministic and compared to round-off with the negative ELBO of
  :class:`coursepkg.vae.VAE` (:func:`coursepkg.probability.bernoulli_log_prob`,
  :func:`~coursepkg.probability.gaussian_log_prob`, :func:`~coursepkg.probability.kl_standard_normal`),
  values and gradients. A wrong answer is explained by a catalogue of slips in its independent parts
  (the reconstruction's formula, its sum over pixels and its sign, the KL, the reduction over the batch):
  every combination of at most three slips is evaluated on every trial, and the simplest combination
  that explains *all* trials is named. Trials vary ``sigma2`` (0.3, 2 and the default 1), so slips that
  coincide at ``sigma2 = 1`` are told apart.
- ``05.sample_prior`` hands the answer a small decoder network that records the latents it is called
  with: they must be ``n`` standard normal draws of the decoder's dtype and device (moments within 5
  standard errors), and the answer must be the decoder's output on them, through a sigmoid for a
  Bernoulli likelihood.
- ``05.log_likelihood`` is chapter 03's importance-weighted bound wired to an encoder: a linear-Gaussian
  model (:class:`coursepkg.elbo.LinearGaussianModel`) and a linear encoder near its posterior; data
  points replicated in one batch give thousands of independent estimates per point, whose mean is
  compared with :func:`coursepkg.elbo.iwae_bound` for the same ``q`` by a z-test. The mistakes'
  expectations are simulated (chapter 03's catalogue), and a point far from the data tells a
  log-sum-exp from a log of a mean of exponentials.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from coursepkg import probability as P
from coursepkg.elbo import iwae_bound
from coursepkg.grading.checks.ch03_elbo import (
    UNDERFLOW,
    _diag_q,
    _far_model,
    _judge_iwae,
    _ModelFunction,
    _random_model,
    _rounded,
    _to,
    _validate,
)
from coursepkg.grading.core import (
    CheckFailure,
    Mistake,
    call,
    close,
    describe_inputs,
    fmt,
    random_cases,
    register,
    require_callable,
)

F64 = torch.float64
N_SIGMA = 5.0  # a random answer is accepted within this many standard errors


def _vec(t: torch.Tensor) -> str:
    return "[" + ", ".join(fmt(v) for v in t.reshape(-1).tolist()) + "]"


# --------------------------------------------------------------------------------------------------
# is this standard normal noise?
# --------------------------------------------------------------------------------------------------
def _normal_test(u: torch.Tensor) -> str | None:
    """None when the rows of ``u`` (n, m), float64, look like independent standard normal draws: per
    column, mean and variance within 5 standard errors; pooled, mean, variance and kurtosis. Otherwise
    which moment failed: "mean", "variance" or "kurtosis"."""
    n = u.shape[0]
    if n < 2 or not bool(torch.isfinite(u).all()):
        return "mean"
    if not bool((u.mean(0).abs() * math.sqrt(n) <= N_SIGMA).all()):
        return "mean"
    if not bool(((u.var(0) - 1).abs() <= N_SIGMA * math.sqrt(2.0 / (n - 1))).all()):
        return "variance"
    flat = u.reshape(-1)
    m = flat.numel()
    if abs(flat.mean().item()) * math.sqrt(m) > N_SIGMA:
        return "mean"
    var = flat.var().item()
    if abs(var - 1) > N_SIGMA * math.sqrt(2.0 / (m - 1)):
        return "variance"
    kurt = (((flat - flat.mean()) ** 4).mean() / var**2).item() - 3.0
    if abs(kurt) > N_SIGMA * math.sqrt(24.0 / m):
        return "kurtosis"
    return None


def _looks_uniform(u: torch.Tensor) -> bool:
    """Whether ``u`` looks like ``torch.rand`` draws: all in [0, 1], mean 1/2 and variance 1/12."""
    if not bool(torch.isfinite(u).all()) or u.numel() < 2:
        return False
    if u.min().item() < -1e-6 or u.max().item() > 1 + 1e-6:
        return False
    m = u.numel()
    return (abs(u.mean().item() - 0.5) * math.sqrt(12 * m) <= N_SIGMA
            and abs(u.var().item() - 1 / 12) <= N_SIGMA * math.sqrt(1 / 180 / m) + 1e-12)


def _rows_identical(u: torch.Tensor) -> bool:
    """Every row of ``u`` (n, m) equals the first (to round-off): the same noise for every sample."""
    return u.shape[0] > 1 and close(u, u[:1].expand_as(u), 1e-4, 1e-5)


UNIFORM = ("eps from torch.rand (uniform on [0, 1)) instead of torch.randn",
           "the noise of the reparameterization trick is standard *normal*: torch.randn(...) or "
           "torch.randn_like(mu), not torch.rand (uniform), even rescaled")
NOT_REPARAMETERIZED = (
    "the sample is detached: no gradient",
    "the gradient must reach mu and logvar through z: compute z = mu + torch.exp(0.5 * logvar) * eps with torch "
    "operations, not with td.Normal(...).sample(), torch.normal, torch.no_grad(), .detach() or numpy "
    "(.rsample() is fine)")
LOGVAR_AS_VAR = ("logvar used as the variance (std = logvar or sqrt(logvar))",
                 "logvar is log(sigma^2): the standard deviation is sigma = exp(logvar / 2) = "
                 "torch.exp(0.5 * logvar); sqrt(logvar) is NaN wherever logvar < 0")
EXP_NO_HALF = ("std = exp(logvar): the 1/2 is missing",
               "exp(logvar) is the variance sigma^2; the noise is scaled by the standard deviation "
               "sigma = exp(logvar / 2) = torch.exp(0.5 * logvar)")


# --------------------------------------------------------------------------------------------------
# 05.reparameterize
# --------------------------------------------------------------------------------------------------
# (shape, logvar range): mixed signs first ("sqrt(logvar)" is NaN exactly where logvar < 0), then all
# positive (where that slip is finite), then all negative (where "std = logvar" is a negative scale)
REPARAM_TRIALS = [((3000, 4), (-3.0, 1.5)), ((400, 5, 3), (0.2, 1.5)), ((4000, 1), (-2.5, -0.5))]
REPARAM_HINT = "z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)"


def _reparam_slips(mu, lv, std):
    """``(name, hint, mean, scale)`` of the sampling slips: the answer's ``(z - mean) / scale`` is then
    standard normal."""
    slips = [
        (*LOGVAR_AS_VAR, mu, lv.abs()),
        (*EXP_NO_HALF, mu, torch.exp(lv)),
        ("the standard deviation treated as a variance (its square root taken: exp(logvar / 4))",
         "sigma = exp(logvar / 2) is already the standard deviation: multiply the noise by it, no square root",
         mu, torch.exp(lv / 4)),
        ("the noise not scaled by the standard deviation (z = mu + eps)", REPARAM_HINT, mu, torch.ones_like(mu)),
        ("the noise divided by the standard deviation instead of multiplied", REPARAM_HINT, mu, 1 / std),
        ("mu not added (z = std * eps)", REPARAM_HINT, torch.zeros_like(mu), std),
        ("z = eps: the standard normal noise itself", REPARAM_HINT, torch.zeros_like(mu), torch.ones_like(mu)),
    ]
    if bool((lv > 0).all()):
        slips.insert(0, (*LOGVAR_AS_VAR, mu, lv.sqrt()))
    return slips


def _check_reparam_sample(z: torch.Tensor, mu, lv, std, inputs: str) -> None:
    """``z`` (float64, mu's shape) must look like draws of N(mu, exp(logvar)); name the slip otherwise."""
    n = mu.shape[0]
    if not bool(torch.isfinite(z).all()):
        bad = ~torch.isfinite(z)
        if bool((lv < 0).any()) and torch.equal(bad, lv < 0):
            raise Mistake(*LOGVAR_AS_VAR)
        raise CheckFailure(f"z contains NaN or inf (for inputs {inputs}): look for a square root or log of a "
                           f"negative number, or an exp that overflows; {REPARAM_HINT}")
    if close(z, mu, 1e-6, 1e-7):
        raise Mistake("eps not random: z = mu (eps = 0, or no noise at all)",
                      f"the sample is random: {REPARAM_HINT}; torch.randn_like draws the noise")
    u = ((z - mu) / std).reshape(n, -1)
    if u.numel() > 1 and close(u, u.reshape(-1)[:1].expand_as(u), 1e-4, 1e-5):
        raise Mistake("eps not random: the same number everywhere",
                      f"draw one independent standard normal number per entry of mu: {REPARAM_HINT}")
    if _rows_identical(u):
        raise Mistake("eps the same for every row",
                      f"eps must have mu's full shape, one independent draw per row and coordinate: {REPARAM_HINT}")
    if u.shape[1] > 1 and all(close(u[:, 0], u[:, j], 1e-4, 1e-5) for j in range(1, u.shape[1])):
        raise Mistake("eps the same for every coordinate",
                      f"eps must have mu's full shape (torch.randn_like(mu)): {REPARAM_HINT}")
    failed = _normal_test(u)
    if failed is None:
        return
    for name, hint, mean, scale in _reparam_slips(mu, lv, std):
        if bool((scale > 0).all()) and _normal_test(((z - mean) / scale).reshape(n, -1)) is None:
            raise Mistake(name, hint)
    if _looks_uniform(u) or failed == "kurtosis":
        raise Mistake(*UNIFORM)
    raise CheckFailure(f"z does not look like draws of N(mu, exp(logvar)) (for inputs {inputs}): the noise "
                       f"(z - mu) / exp(logvar / 2) has mean {fmt(u.mean().item())} and standard deviation "
                       f"{fmt(u.std().item())} where 0 and 1 are expected (its {failed} is off by more than "
                       f"{N_SIGMA:g} standard errors); {REPARAM_HINT}")


@register("05.reparameterize", "the reparameterization trick z = mu + exp(logvar / 2) * eps")
def check_reparameterize(answer):
    f = require_callable(answer)
    torch.manual_seed(5100)
    trials = [(case, spec) for case in random_cases(5100) for spec in REPARAM_TRIALS]
    for case, (shape, (lo, hi)) in trials:
        g, dtype, device = case["gen"], case["dtype"], case["device"]
        mu = _rounded(case, 1.5 * torch.randn(shape, generator=g, dtype=F64))
        lv = _rounded(case, lo + (hi - lo) * torch.rand(shape, generator=g, dtype=F64))
        std = torch.exp(0.5 * lv)
        w = torch.randn(shape, generator=g, dtype=F64)
        mu_leaf = mu.to(dtype=dtype, device=device).clone().requires_grad_(True)    # copies: the answer may
        lv_leaf = lv.to(dtype=dtype, device=device).clone().requires_grad_(True)    # modify its inputs
        inputs = describe_inputs(mu=mu_leaf, logvar=lv_leaf)
        got = call(f, mu_leaf, lv_leaf)
        _validate(got, shape, case, "z", inputs, [
            (shape[:-1], "z has mu's shape: do not sum or average over the last dimension"),
            ((1, *shape), "z has mu's shape, one sample per entry: draw eps of shape mu.shape")])
        z = got.detach().to(F64).cpu()
        _check_reparam_sample(z, mu, lv, std, inputs)

        # the gradient, on the answer's own sample: dz/dmu = 1, dz/dlogvar = std * eps / 2 = (z - mu) / 2
        if not got.requires_grad:
            raise Mistake(*NOT_REPARAMETERIZED)
        try:
            g_mu, g_lv = torch.autograd.grad((got * w.to(dtype=dtype, device=device)).sum(), (mu_leaf, lv_leaf),
                                             allow_unused=True)
        except RuntimeError as err:
            raise CheckFailure(f"differentiating z with respect to mu and logvar failed: {err}") from None
        rtol = 1e-3 if dtype == torch.float32 else 1e-8
        for name, grad, expected in (("mu", g_mu, w), ("logvar", g_lv, w * (z - mu) / 2)):
            if grad is None or not bool(grad.abs().gt(0).any()):
                raise Mistake(NOT_REPARAMETERIZED[0].replace("no gradient", f"no gradient reaches {name}"),
                              NOT_REPARAMETERIZED[1])
            atol = rtol * (expected.abs().max().item() + 1e-30)
            if not close(grad, expected, rtol, atol):
                raise CheckFailure(f"the gradient of z with respect to {name} is wrong (for inputs {inputs}): "
                                   f"dz/dmu = 1 and dz/dlogvar = exp(logvar / 2) * eps / 2; {REPARAM_HINT}, with eps "
                                   "drawn independently of mu and logvar")

        again = call(f, mu_leaf.detach().clone(), lv_leaf.detach().clone())
        if isinstance(again, torch.Tensor) and again.shape == got.shape and torch.equal(again.detach(), got.detach()):
            raise Mistake("eps not random: the same noise at every call",
                          "do not reseed the generator (torch.manual_seed) or reuse a stored eps inside the function: "
                          "each call draws fresh noise")
    return (f"draws N(mu, exp(logvar)) on {len(trials)} random inputs (the noise's moments within {N_SIGMA:g} "
            "standard errors), and the gradient reaches mu and logvar through the sample")


# --------------------------------------------------------------------------------------------------
# 05.vae_loss
# --------------------------------------------------------------------------------------------------
# (likelihood, N, D, Dz, sigma2 (None: the default 1.0), logvar range)
LOSS_TRIALS = [("bernoulli", 7, 10, 3, None, (-2.5, 1.0)), ("gaussian", 6, 8, 2, 0.3, (-2.0, 1.0)),
               ("gaussian", 5, 12, 4, 2.0, (0.1, 1.2)), ("bernoulli", 6, 6, 1, None, (0.1, 1.0)),
               ("gaussian", 8, 5, 3, None, (-1.5, 0.8))]
MAX_SLIPS = 3

KL_FORMULA = "KL(q || N(0, I)) = 0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)"
BCE_HINT = ("x_out holds logits: -log p(x | z) = F.binary_cross_entropy_with_logits(x_out, x, reduction='none')"
            ".sum(-1), i.e. sum_d softplus(x_out_d) - x_d * x_out_d")
GAUSS_HINT = "-log p(x | z) = ||x - x_out||^2 / (2 sigma2) + D/2 log(2 pi sigma2), summed over the D pixels"

# Each aspect of the loss has options: the first is right, the others are slips (key, name, hint).
LOSS_ASPECTS = {
    "bernoulli": [
        ("ok", None, None),
        ("sigmoid_twice", "sigmoid applied to the logits before binary_cross_entropy_with_logits (applied twice)",
         "binary_cross_entropy_with_logits applies the sigmoid itself: give it x_out as is"),
        ("as_probs", "BCE applied to logits as if they were probabilities (sigmoid forgotten)",
         f"{BCE_HINT}; F.binary_cross_entropy expects probabilities, so it would need torch.sigmoid(x_out)"),
        ("swapped", "x and x_out swapped in the cross-entropy",
         "F.binary_cross_entropy_with_logits(input, target): the logits x_out come first, the data x second"),
    ],
    "coef": [
        ("ok", None, None),
        ("no_half", "1/(2 sigma2) written as 1/sigma2", f"the Gaussian's exponent has a 2: {GAUSS_HINT}"),
        ("ignored", "sigma2 ignored in the squared-error term", f"sigma2 = 1 only by default; {GAUSS_HINT}"),
        ("plain", "the squared error not divided by 2 sigma2 (the lectures' F.mse_loss(..., reduction='sum'))",
         f"the exercise asks for the exact negative log-likelihood, not a plain sum of squares; {GAUSS_HINT}"),
        ("std", "sigma2 taken for the standard deviation (divided by 2 sigma2^2)",
         f"sigma2 is the variance: {GAUSS_HINT}"),
    ],
    "const": [
        ("ok", None, None),
        ("none", "Gaussian constant D/2 log(2 pi sigma2) forgotten",
         f"the exercise asks for the exact negative log-likelihood, normalising constant included; {GAUSS_HINT}"),
        ("no_sigma", "sigma2 ignored in the constant (D/2 log(2 pi) instead of D/2 log(2 pi sigma2))", GAUSS_HINT),
        ("no_2pi", "the 2 pi forgotten in the constant (D/2 log(sigma2))", GAUSS_HINT),
        ("no_half", "the 1/2 of the constant forgotten (D log(2 pi sigma2))", GAUSS_HINT),
        ("std", "sigma2 taken for the standard deviation in the constant (D/2 log(2 pi sigma2^2))",
         f"sigma2 is the variance: {GAUSS_HINT}"),
    ],
    "pixels": [
        ("ok", None, None),
        ("mean", "mean over dimensions instead of sum (over the D pixels, in the reconstruction)",
         "log p(x | z) of independent pixels is a sum over the D pixels: .sum(-1) or reduction='sum', not a "
         "mean (the default reduction='mean' of F.binary_cross_entropy_with_logits and F.mse_loss averages)"),
    ],
    "recon_sign": [
        ("ok", None, None),
        ("flipped", "the reconstruction term with the wrong sign (+log p(x | z) added)",
         "the loss is the *negative* ELBO: -log p(x | z) + KL, and -log p(x | z) >= 0 for binary pixels"),
    ],
    "kl": [
        ("ok", None, None),
        ("sign", "KL with the wrong sign", f"the negative ELBO *adds* the KL, which is >= 0: {KL_FORMULA}; the "
         "lectures' KLD = -0.5 * sum(1 + logvar - mu^2 - exp(logvar)) is the same number"),
        ("logvar_var", "logvar used as variance in the KL",
         f"logvar = log sigma^2: the variance is exp(logvar) and its log is logvar itself; {KL_FORMULA}"),
        ("logvar_var2", "logvar used as variance in the KL (exp forgotten)",
         f"logvar = log sigma^2: the variance is exp(logvar); {KL_FORMULA}"),
        ("exp2", "std = exp(logvar) without the half inside the KL (sigma^2 = exp(2 logvar))",
         f"sigma = exp(logvar / 2), so sigma^2 = exp(logvar) and log sigma^2 = logvar; {KL_FORMULA}"),
        ("exp2b", "std = exp(logvar) without the half inside the KL (sigma^2 = exp(2 logvar))",
         f"sigma = exp(logvar / 2), so sigma^2 = exp(logvar); {KL_FORMULA}"),
        ("mean", "mean over dimensions instead of sum (over the latent dimensions, in the KL)",
         f"the KL of a diagonal Gaussian is a sum over the latent dimensions: .sum(-1), not .mean(-1); "
         f"{KL_FORMULA}"),
        ("none", "the KL term forgotten", f"the negative ELBO is -log p(x | z) + KL: {KL_FORMULA}"),
        ("no_half", "the factor 1/2 of the KL forgotten", KL_FORMULA),
        ("no_one", "the -1 of the KL forgotten", KL_FORMULA),
        ("no_mu", "the mu^2 of the KL forgotten", KL_FORMULA),
    ],
    "batch": [
        ("ok", None, None),
        ("sum", "sum over the batch instead of the mean",
         "the loss is the *mean* over the N points of the per-point negative ELBO: .mean() over the batch "
         "(reduction='sum' in F.binary_cross_entropy_with_logits or F.mse_loss sums over the batch too)"),
        ("recon_sum", "sum over the batch instead of the mean (in the reconstruction term)",
         "average both terms over the batch: the per-point -log p(x | z) + KL, then .mean()"),
        ("kl_sum", "sum over the batch instead of the mean (in the KL term)",
         "average both terms over the batch: the per-point -log p(x | z) + KL, then .mean()"),
    ],
}


def _loss_parts(likelihood, x, out, mu, lv, sigma2):
    """Per aspect, per option key: the per-point tensors (N,) of the reconstruction's and the KL's pieces
    (float64). Gaussian reconstructions are split in two pieces, the squared-error term ("coef") and the
    constant ("const"), whose slips combine freely."""
    D = x.shape[1]
    parts = {}
    if likelihood == "bernoulli":
        def bce(logits):
            return (nn.functional.softplus(logits) - x * logits).sum(-1)

        c = out.clamp(0, 1)
        parts["bernoulli"] = {
            "ok": bce(out), "sigmoid_twice": bce(torch.sigmoid(out)),
            "as_probs": -(x * torch.log(out) + (1 - x) * torch.log(1 - out)).sum(-1),
            "as_probs_clamped": -(x * torch.log(c).clamp(min=-100)
                                  + (1 - x) * torch.log(1 - c).clamp(min=-100)).sum(-1),
            "swapped": (nn.functional.softplus(x) - out * x).sum(-1),
        }
    else:
        sq = ((x - out) ** 2).sum(-1)
        s2 = float(sigma2)
        parts["coef"] = {"ok": sq / (2 * s2), "no_half": sq / s2, "ignored": sq / 2, "plain": sq,
                         "std": sq / (2 * s2**2)}
        c = {"ok": D / 2 * math.log(2 * math.pi * s2), "none": 0.0, "no_sigma": D / 2 * math.log(2 * math.pi),
             "no_2pi": D / 2 * math.log(s2), "no_half": D * math.log(2 * math.pi * s2),
             "std": D / 2 * math.log(2 * math.pi * s2**2)}
        parts["const"] = {k: torch.full_like(sq, v) for k, v in c.items()}
    e = torch.exp(lv)
    Dz = mu.shape[1]
    kl = 0.5 * (mu**2 + e - 1 - lv).sum(-1)
    parts["kl"] = {
        "ok": kl, "sign": -kl, "logvar_var": 0.5 * (mu**2 + lv - 1 - torch.log(lv)).sum(-1),
        "logvar_var2": 0.5 * (mu**2 + lv - 1 - lv).sum(-1),
        "exp2": 0.5 * (mu**2 + torch.exp(2 * lv) - 1 - 2 * lv).sum(-1),
        "exp2b": 0.5 * (mu**2 + torch.exp(2 * lv) - 1 - lv).sum(-1),
        "mean": kl / Dz, "none": torch.zeros_like(kl), "no_half": 2 * kl, "no_one": kl + Dz / 2,
        "no_mu": 0.5 * (e - 1 - lv).sum(-1),
    }
    return parts


class _LossRecord:
    """One trial of ``05.vae_loss``: the answer's value, and every piece's mean and sum over the batch, as
    Python floats, so that the value of any combination of slips is a few additions."""

    def __init__(self, got: float, likelihood: str, D: int, parts: dict, tol: float):
        self.got, self.likelihood, self.D, self.tol = got, likelihood, D, tol
        self.mean = {a: {k: v.mean().item() for k, v in opts.items()} for a, opts in parts.items()}
        self.sum = {a: {k: v.sum().item() for k, v in opts.items()} for a, opts in parts.items()}

    def value(self, choice: dict) -> float:
        """The loss of one combination of options (a dict aspect -> key)."""
        def recon(stat):
            if self.likelihood == "bernoulli":
                return stat["bernoulli"][choice["bernoulli"]]
            return stat["coef"][choice["coef"]] + stat["const"][choice["const"]]

        b = choice["batch"]
        r = recon(self.sum if b in ("sum", "recon_sum") else self.mean)
        if choice["pixels"] == "mean":
            r = r / self.D
        if choice["recon_sign"] == "flipped":
            r = -r
        return r + (self.sum if b in ("sum", "kl_sum") else self.mean)["kl"][choice["kl"]]


def _option_name(aspect: str, key: str) -> tuple[str, str]:
    if aspect == "bernoulli" and key == "as_probs_clamped":
        key = "as_probs"
    for k, name, hint in LOSS_ASPECTS[aspect]:
        if k == key:
            return name, hint
    raise KeyError(key)  # pragma: no cover


def _combinations(max_slips: int):
    """Every combination of options with 1 to ``max_slips`` slips, fewest slips first. The Bernoulli
    aspect has one more option, the clamped variant of "as_probs" (the same name)."""
    options = {a: [k for k, _, _ in opts] for a, opts in LOSS_ASPECTS.items()}
    options["bernoulli"] = options["bernoulli"] + ["as_probs_clamped"]
    aspects = list(options)
    for s in range(1, max_slips + 1):
        for chosen in itertools.combinations(aspects, s):
            for keys in itertools.product(*[options[a][1:] for a in chosen]):
                choice = {a: "ok" for a in aspects}
                choice.update(dict(zip(chosen, keys, strict=True)))
                yield choice


def _matches(got: float, value: float, tol: float) -> bool:
    if math.isnan(got) or math.isnan(value):
        return math.isnan(got) and math.isnan(value)
    if math.isinf(got) or math.isinf(value):
        return got == value
    return abs(got - value) <= tol


def _name_loss_mistake(records: list[_LossRecord]) -> None:
    """Raise the :class:`Mistake` of the simplest combination of slips that explains every trial, if one does."""
    for choice in _combinations(MAX_SLIPS):
        if all(_matches(r.got, r.value(choice), 4 * r.tol) for r in records):
            names, hints = [], []
            for name, hint in (_option_name(a, k) for a, k in choice.items() if k != "ok"):
                if name not in names:
                    names.append(name)
                hints += [h for h in hint.split("; ") if h not in hints]    # shared formulas once
            raise Mistake(", and ".join(names), "; ".join(hints))


def _loss_trial(case, spec):
    """Random inputs of one trial: float64 values rounded to the case's dtype."""
    likelihood, N, D, Dz, sigma2, (lo, hi) = spec
    g = case["gen"]
    if likelihood == "bernoulli":
        x = torch.rand(N, D, generator=g, dtype=F64)
        r = torch.rand(N, D, generator=g, dtype=F64)
        x = torch.where(r < 0.2, 0.0, torch.where(r > 0.8, 1.0, x))       # grey values, and exact 0s and 1s
        out = 2.0 * torch.randn(N, D, generator=g, dtype=F64)              # logits
    else:
        x = torch.randn(N, D, generator=g, dtype=F64)
        out = x + 0.8 * torch.randn(N, D, generator=g, dtype=F64)          # means
    mu = 1.2 * torch.randn(N, Dz, generator=g, dtype=F64)
    lv = lo + (hi - lo) * torch.rand(N, Dz, generator=g, dtype=F64)
    return tuple(_rounded(case, t) for t in (x, out, mu, lv))


def _reference_loss(likelihood, x, out, mu, lv, sigma2):
    """The negative ELBO, mean over the batch, as coursepkg.vae.VAE.loss computes it."""
    if likelihood == "bernoulli":
        recon = -P.bernoulli_log_prob(x, out)
    else:
        recon = -P.gaussian_log_prob(x, out, torch.full_like(out, math.log(sigma2)))
    return (recon + P.kl_standard_normal(mu, lv)).mean()


@register("05.vae_loss", "the VAE's loss: the negative ELBO with one sample, averaged over the batch")
def check_vae_loss(answer):
    f = require_callable(answer)
    trials = [(case, spec) for case in random_cases(5200) for spec in LOSS_TRIALS]
    records, first_wrong = [], None
    for case, spec in trials:
        likelihood, N, D, Dz, sigma2, _ = spec
        dtype, device = case["dtype"], case["device"]
        x, out, mu, lv = _loss_trial(case, spec)
        s2 = 1.0 if sigma2 is None else sigma2
        leaves = [t.to(dtype=dtype, device=device).clone().requires_grad_(True) for t in (out, mu, lv)]
        xc = x.to(dtype=dtype, device=device)
        args = (xc.clone(), *leaves, likelihood) + (() if sigma2 is None else (sigma2,))
        inputs = describe_inputs(x=xc, mu=leaves[1], likelihood=likelihood) + \
            ("" if likelihood == "bernoulli" else f", sigma2={s2:g}" + (" (the default)" if sigma2 is None else ""))
        try:
            got = call(f, *args)
        except CheckFailure as fail:
            if "between 0 and 1" in str(fail):
                raise Mistake(*_option_name("bernoulli", "as_probs")) from None
            raise
        _validate(got, (), case, "the loss", inputs, [
            ((N,), "the loss is one number: average the per-point negative ELBO over the batch (.mean())"),
            ((1,), "return a 0-dimensional tensor (a scalar): .mean() or .sum() without keepdim"),
            ((N, D), "sum the reconstruction term over the pixels, then average over the batch"),
            ((N, Dz), "sum the KL over the latent dimensions, then average over the batch")])

        leaves64 = [t.to(F64).cpu().clone().requires_grad_(True) for t in (out, mu, lv)]
        ref = _reference_loss(likelihood, x, *leaves64, s2)
        parts = _loss_parts(likelihood, x, out, mu, lv, s2)
        recon = parts["bernoulli"]["ok"] if likelihood == "bernoulli" else parts["coef"]["ok"] + parts["const"]["ok"]
        rtol = 1e-4 if dtype == torch.float32 else 1e-9
        tol = rtol * (recon.abs().mean() + parts["kl"]["ok"].abs().mean()).item()
        g = got.detach().to(F64).cpu().item()
        records.append(_LossRecord(g, likelihood, D, parts, tol))
        if not _matches(g, ref.item(), tol):
            if first_wrong is None:
                first_wrong = (g, ref.item(), recon.mean().item(), parts["kl"]["ok"].mean().item(), likelihood, inputs)
            continue

        # the right value; the gradient must reach x_out, mu and logvar (fit() trains with it)
        if not got.requires_grad:
            raise Mistake("the loss is detached from x_out, mu and logvar: no gradient",
                          "compute it with torch operations on the inputs (no .item(), .detach(), numpy or "
                          "torch.no_grad()), so that the optimiser can differentiate it")
        grads = torch.autograd.grad(got, leaves, allow_unused=True)
        ref_grads = torch.autograd.grad(ref, leaves64)
        for name, gr, rg in zip(("x_out", "mu", "logvar"), grads, ref_grads, strict=True):
            gr = torch.zeros_like(rg) if gr is None else gr.detach().to(F64).cpu()
            if not close(gr, rg, 10 * rtol, 10 * rtol * (rg.abs().max().item() + 1e-30)):
                raise CheckFailure(f"the loss has the right value but the wrong gradient with respect to {name} (for "
                                   f"inputs {inputs}): part of it is cut from the graph (.item(), .detach(), "
                                   "numpy or torch.no_grad()), so training would not see it")
    if first_wrong is None:
        return (f"matches the negative ELBO of coursepkg.vae (values and gradients) on {len(trials)} random inputs: "
                "Bernoulli logits, and Gaussian means with sigma2 = 0.3, 2 and the default 1")
    _name_loss_mistake(records)
    g, ref, recon, kl, likelihood, inputs = first_wrong
    if not math.isfinite(g):
        raise CheckFailure(f"the loss is {g} (for inputs {inputs}), the reference is finite: look for a log of a "
                           "non-positive number (probabilities from logits need a sigmoid; the variance is "
                           "exp(logvar)) or an exp that overflows")
    raise CheckFailure(f"the loss is {fmt(g)}, the reference {fmt(ref)} (for inputs {inputs}): the mean over the "
                       f"batch of -log p(x | z) is {fmt(recon)} and of the KL {fmt(kl)}. "
                       f"{BCE_HINT if likelihood == 'bernoulli' else GAUSS_HINT}; {KL_FORMULA}")


# --------------------------------------------------------------------------------------------------
# 05.sample_prior
# --------------------------------------------------------------------------------------------------
PRIOR_HINT = ("z = torch.randn(n, latent_dim, dtype=p.dtype, device=p.device) with p = next(decoder.parameters()), "
              "then x = decoder(z)")


class RecordingDecoder(nn.Module):
    """A small decoder ``z (n, latent_dim) -> (n, D)`` that records the latents it is called with (detached,
    float64, on the CPU) and refuses, with a clear message, a ``z`` of the wrong shape, dtype or device."""

    def __init__(self, gen: torch.Generator, n: int, latent_dim: int, D: int, dtype, device):
        super().__init__()
        self.n, self.latent_dim, self.D = n, latent_dim, D
        self.linear = nn.Linear(latent_dim, D, dtype=dtype, device=device)
        w = 1.2 * torch.randn(D, latent_dim, generator=gen, dtype=F64)
        b = 0.8 * torch.randn(D, generator=gen, dtype=F64)
        with torch.no_grad():
            self.linear.weight.copy_(w.to(dtype))
            self.linear.bias.copy_(b.to(dtype))
        self.w64, self.b64 = w.to(dtype).to(F64), b.to(dtype).to(F64)
        self.calls: list[torch.Tensor] = []
        self.problem: tuple[str, str] | None = None     # (kind, message) of a refused call

    def __repr__(self) -> str:
        return f"<the check's decoder: z ({self.n}, {self.latent_dim}) -> ({self.n}, {self.D})>"

    def output64(self, z: torch.Tensor) -> torch.Tensor:
        h = z @ self.w64.T + self.b64
        return h + 0.5 * torch.sin(h)

    def _refuse(self, kind: str, message: str):
        self.problem = (kind, message)
        raise ValueError(message)

    def forward(self, z):
        if not isinstance(z, torch.Tensor):
            self._refuse("type", f"the decoder takes a tensor z of shape (n, latent_dim), got a {type(z).__name__}")
        p = self.linear.weight
        if tuple(z.shape) == (self.latent_dim, self.n):
            self._refuse("swapped", f"the decoder received z of shape {list(z.shape)}: (latent_dim, n) instead of "
                                    f"(n, latent_dim) = ({self.n}, {self.latent_dim})")
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            self._refuse("shape", f"the decoder takes z of shape (n, latent_dim) = ({self.n}, {self.latent_dim}), "
                                  f"got {list(z.shape)}")
        if z.dtype != p.dtype or z.device != p.device:
            self._refuse("dtype", f"the decoder received z of dtype {str(z.dtype).replace('torch.', '')} on "
                                  f"{z.device}, but its parameters are {str(p.dtype).replace('torch.', '')} on "
                                  f"{p.device}: draw z with the decoder's dtype and device, {PRIOR_HINT}")
        self.calls.append(z.detach().to(F64).cpu().clone())
        h = self.linear(z)
        return h + 0.5 * torch.sin(h)


def _recorded_latents(dec: RecordingDecoder) -> torch.Tensor:
    calls, seen = [], set()
    for z in dec.calls:  # a batch decoded twice counts once
        key = (tuple(z.shape), z.numpy().tobytes())
        if key not in seen:
            seen.add(key)
            calls.append(z)
    if not calls:
        raise CheckFailure(f"your function never called the decoder: {PRIOR_HINT}")
    z = torch.cat(calls)
    if z.shape[0] != dec.n:
        raise CheckFailure(f"the decoder was called on {z.shape[0]} latents in all, expected n = {dec.n}: draw "
                           f"z of shape (n, latent_dim) and decode it once")
    return z


def _check_prior_latents(z: torch.Tensor, inputs: str) -> None:
    if not bool(torch.isfinite(z).all()):
        raise CheckFailure(f"the latents contain NaN or inf (for inputs {inputs}): {PRIOR_HINT}")
    zero = ("z = zeros (the mean of the prior: every sample identical)",
            f"generating means drawing z from the prior N(0, I), a different z for every sample: {PRIOR_HINT}")
    if bool((z == 0).all()):
        raise Mistake(*zero)
    if _rows_identical(z):
        raise Mistake(zero[0].replace("z = zeros (the mean of the prior: ", "the same z for every sample ("), zero[1])
    failed = _normal_test(z)
    if failed is None:
        return
    if _looks_uniform(z) or failed == "kurtosis":
        raise Mistake("z drawn from torch.rand (uniform on [0, 1)) instead of the prior N(0, I)",
                      f"the prior is standard normal: {PRIOR_HINT}")
    raise CheckFailure(f"the latents the decoder received do not look like draws of the prior N(0, I) (for inputs "
                       f"{inputs}): their mean is {_vec(z.mean(0))} and their standard deviation {_vec(z.std(0))}, "
                       f"where 0 and 1 are expected; {PRIOR_HINT}")


# (n, latent_dim, D, likelihood)
PRIOR_TRIALS = [(2000, 2, 6, "bernoulli"), (1500, 3, 5, "gaussian"), (2500, 1, 4, "bernoulli"),
                (1200, 5, 3, "gaussian")]


@register("05.sample_prior", "generating: decode latents drawn from the prior")
def check_sample_prior(answer):
    f = require_callable(answer)
    torch.manual_seed(5300)
    trials = [(case, spec) for case in random_cases(5300) for spec in PRIOR_TRIALS]
    for case, (n, latent_dim, D, likelihood) in trials:
        dtype, device = case["dtype"], case["device"]
        dec = RecordingDecoder(case["gen"], n, latent_dim, D, dtype, device)
        inputs = describe_inputs(n=n, latent_dim=latent_dim, likelihood=likelihood) + \
            f", a decoder with {str(dtype).replace('torch.', '')} parameters"
        try:
            got = call(f, dec, n, latent_dim, likelihood)
        except CheckFailure:
            if dec.problem is None:
                raise
            kind, message = dec.problem
            if kind == "swapped":
                raise Mistake("z of the wrong shape (latent_dim and n swapped)",
                              f"one latent per row: z has shape (n, latent_dim); {PRIOR_HINT}") from None
            raise CheckFailure(message) from None
        z = _recorded_latents(dec)
        _check_prior_latents(z, inputs)
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (n, latent_dim):
            raise CheckFailure(f"the result has shape [{n}, {latent_dim}], that of the latents: return the decoded "
                               f"x, shape ({n}, {D})")
        if isinstance(got, torch.Tensor) and got.is_floating_point() and got.dtype != dtype:
            raise CheckFailure(f"the generated x has dtype {str(got.dtype).replace('torch.', '')}, expected "
                               f"{str(dtype).replace('torch.', '')}, the decoder's (for inputs {inputs}): return "
                               "what the decoder gives, without converting it")
        _validate(got, (n, D), case, "the generated x", inputs, [((n,), "one row of D numbers per sample")])
        out = dec.output64(z)
        expected = torch.sigmoid(out) if likelihood == "bernoulli" else out
        g = got.detach().to(F64).cpu()
        if not bool(torch.isfinite(g).all()):
            raise CheckFailure(f"the generated x contains NaN or inf (for inputs {inputs}); the decoder's output on "
                               "your latents does not")
        tol = (1e-4, 1e-5) if dtype == torch.float32 else (1e-9, 1e-12)
        if close(g, expected, *tol):
            again = call(f, dec, n, latent_dim, likelihood)
            if isinstance(again, torch.Tensor) and torch.equal(again.detach().to(F64).cpu(), g):
                raise Mistake("the same samples at every call",
                              "do not reseed the generator (torch.manual_seed) inside the function: each call draws "
                              "fresh latents")
            continue
        if likelihood == "bernoulli":
            if close(g, out, *tol):
                raise Mistake("sigmoid forgotten for bernoulli (returned logits)",
                              "for a Bernoulli likelihood the decoder gives logits; the mean of p(x | z), the pixel "
                              "probabilities, is torch.sigmoid(decoder(z))")
            if bool(((g == 0) | (g == 1)).all()):
                raise Mistake("binary samples returned instead of the probabilities",
                              "return the mean of p(x | z), torch.sigmoid(decoder(z)), not a draw of the pixels")
        elif close(g, torch.sigmoid(out), *tol):
            raise Mistake("sigmoid applied to gaussian means",
                          "for a Gaussian likelihood the decoder's output is already the mean of p(x | z): return "
                          "decoder(z) as is")
        what = "torch.sigmoid(decoder(z))" if likelihood == "bernoulli" else "decoder(z)"
        err = (g - expected).abs().max().item()
        raise CheckFailure(f"the generated x is not {what} for the latents the decoder received (for inputs "
                           f"{inputs}): largest absolute error {fmt(err)}; decode the z you drew, once")
    return (f"decodes n standard normal latents and returns the mean of p(x | z) (sigmoid of the logits, or the "
            f"Gaussian means) on {len(trials)} random decoders")


# --------------------------------------------------------------------------------------------------
# 05.log_likelihood
# --------------------------------------------------------------------------------------------------
IW_REPLICAS = 2000
# ((P, Dx, Dz), k, logvar offset): P data points, each replicated IW_REPLICAS times in the batch; the
# offset widens q (a broad q makes the weights spread, and the slips differ more)
IW_TRIALS = [((3, 4, 2), 8, 0.0), ((2, 3, 1), 4, 1.0), ((3, 5, 3), 16, 0.3), ((2, 4, 2), 1, 0.0)]


class LinearEncoder:
    """``encode(x) -> (mu, logvar)``, each ``(N, Dz)``, near the exact posterior of a linear-Gaussian model:
    its mean shifted at random, its mean-field log-variances shifted by ``lv_offset`` and modulated by ``x``;
    in the case's dtype and on its device. Counts its calls."""

    def __init__(self, case, model, lv_offset: float):
        g = case["gen"]
        Dx, Dz = model.x_dim, model.z_dim
        lam = model.posterior_precision()
        M = torch.linalg.solve(lam, model.W.T / model.noise_var)                 # posterior mean: M (x - b)
        c = -model.b @ M.T + 0.4 * torch.randn(Dz, generator=g, dtype=F64)       # shifted
        V = 0.3 * torch.randn(Dz, Dx, generator=g, dtype=F64)
        base = torch.log(1.0 / torch.diagonal(lam)) + lv_offset
        self.M, self.c, self.V, self.base = _to(case, M, c, V, base)
        self.b = _to(case, model.b)
        self.Dx, self.calls = Dx, 0
        self.__name__ = "encode"

    def __repr__(self) -> str:
        return "<the check's encoder: x (N, Dx) -> (mu, logvar), each (N, Dz)>"

    def __call__(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.Dx:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"encode(x) takes x of shape (N, {self.Dx}), got {got}")
        if x.dtype != self.M.dtype or x.device != self.M.device:
            raise ValueError(f"encode(x): x is {x.dtype} on {x.device}, expected {self.M.dtype} on {self.M.device}")
        self.calls += 1
        mu = x @ self.M.T + self.c
        logvar = self.base + 0.4 * torch.tanh((x - self.b) @ self.V.T)
        return mu, logvar


@register("05.log_likelihood", "the importance-weighted estimate of log p(x), from an encoder and a model")
def check_log_likelihood(answer):
    f = require_callable(answer)
    torch.manual_seed(5400)
    R = IW_REPLICAS
    trials = [(case, spec) for case in random_cases(5400) for spec in IW_TRIALS]
    trials += [(case, None) for case in random_cases(5450)]
    for case, spec in trials:
        g = case["gen"]
        if spec is None:
            model, x, is_far = _far_model(case)
            k, lv_offset = 8, 0.0
        else:
            (P_, Dx, Dz), k, lv_offset = spec
            model = _random_model(case, Dx, Dz)
            x, _ = model.sample(P_, generator=g)
            x, is_far = _rounded(case, x), None
        enc = LinearEncoder(case, model, lv_offset)
        mu, logvar = (t.to(F64).cpu() for t in enc(_to(case, x)))             # exactly what the answer sees
        P_, Dz = mu.shape
        ref_est = iwae_bound(x, model.log_joint, _diag_q(mu, logvar.exp()), k, n_estimates=R)
        ref, ref_se = ref_est.estimate, ref_est.stderr

        xc = _to(case, x.repeat(R, 1))
        inputs = describe_inputs(x=xc, k=k)
        enc.calls = 0
        got = call(f, xc.clone(), enc, _ModelFunction(case, model, joint=True), k)
        if enc.calls == 0:
            raise CheckFailure("your function never called encode(x): q(z | x) = N(mu, diag exp(logvar)) with "
                               "(mu, logvar) = encode(x)")
        _judge_iwae(got, case, inputs, model, x, mu, logvar, k, R, ref, ref_se, is_far, what="estimate",
                    recipe=f"with k={k}: (mu, logvar) = encode(x), k samples z_i = mu + exp(logvar / 2) * "
                           "eps_i, then logsumexp_i [log_joint(x, z_i) - log q(z_i | x)] - log k",
                    underflow=(UNDERFLOW[0].replace("exp underflow", "naive log(mean(exp)) underflows"),
                               UNDERFLOW[1]))
    return (f"matches coursepkg.elbo.iwae_bound with the encoder's q in distribution ({R} estimates per point) on "
            f"{len(trials)} random inputs, k = 1 to 16, including a point far from the data")
