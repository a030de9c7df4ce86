r"""Checks of the chapter 05 exercises (``solutions/05_vae.ipynb``), written with the check kit
(:mod:`coursepkg.grading.kit`).

Three of the four answers are random, so their checks are statistical; torch's global generator is seeded
inside each check (:func:`coursepkg.grading.check` restores the notebook's state), so a given answer always
gets the same verdict.

- ``05.reparameterize`` is a :func:`~coursepkg.grading.kit.random_check`: the noise is recovered from the
  answer, ``eps = (z - mu) / exp(logvar / 2)``, and must look like fresh, independent standard normal
  draws; a sampling slip (``logvar`` used as the variance, ``std = exp(logvar)``, ...) is the slip whose
  own noise looks normal. The gradient must reach ``mu`` and ``logvar`` through the answer's own sample.
- ``05.vae_loss`` is a :func:`~coursepkg.grading.kit.loss_check`: the negative ELBO of
  :class:`coursepkg.vae.VAE` (:func:`coursepkg.probability.bernoulli_log_prob`, the Gaussian
  log-density, :func:`~coursepkg.probability.kl_standard_normal`), values and gradients; a wrong value is
  explained by the simplest combination of slips in its parts (the reconstruction's formula, its sum over
  pixels and its sign, the KL, the reduction over the batch) that matches *every* trial. Trials vary
  ``sigma2`` (0.3, 2 and the default 1), so slips that coincide at ``sigma2 = 1`` are told apart.
- ``05.sample_prior`` hands the answer a small decoder whose inputs a
  :class:`~coursepkg.grading.kit.Recorder` records: the latents must be ``n`` fresh, independent standard
  normal draws of the decoder's dtype and device, and the answer the decoder's output on them (through a
  sigmoid for a Bernoulli likelihood).
- ``05.log_likelihood`` is chapter 03's importance-weighted bound wired to an encoder: a linear-Gaussian
  model and a linear encoder near its posterior; data points replicated in one batch give thousands of
  independent estimates per point, judged by :func:`coursepkg.grading.problems.judge_iwae` against
  :func:`coursepkg.elbo.iwae_bound` for the same ``q`` (a point far from the data tells a log-sum-exp
  from a log of a mean of exponentials).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from coursepkg import probability as P
from coursepkg.elbo import LinearGaussianModel, iwae_bound
from coursepkg.grading.kit import (
    RANDOM_MESSAGES,
    CheckFailure,
    LossCheck,
    Mistake,
    Option,
    RandomCheck,
    Recorder,
    Slip,
    as_rows,
    call,
    close,
    describe_inputs,
    distinct,
    explaining_errors,
    fmt,
    fresh,
    independence_test,
    looks_uniform,
    mirrored_rows,
    normal_test,
    random_cases,
    register,
    require_callable,
    require_like,
    tolerance,
    vec,
)
from coursepkg.grading.problems import (
    UNDERFLOW,
    ModelFunction,
    diag_gaussian,
    far_problem,
    judge_iwae,
    random_linear_gaussian,
)

F64 = torch.float64
LOG2PI = math.log(2 * math.pi)


def _gradient_advice(run, say):
    """``run()``, a kit check; its mistake "no gradient reaches NAME" is raised again as ``say(NAME)``, a failure
    in this chapter's words (what cuts the graph in a VAE: torch.normal, .sample(), .item(), ...)."""
    try:
        return run()
    except Mistake as mistake:
        prefix = "no gradient reaches "
        if mistake.name.startswith(prefix):
            raise say(mistake.name[len(prefix):]) from None
        raise


# --------------------------------------------------------------------------------------------------
# 05.reparameterize
# --------------------------------------------------------------------------------------------------
# (shape, logvar range): mixed signs first ("sqrt(logvar)" is NaN exactly where logvar < 0), then all
# positive (where that slip is finite), then all negative (where "std = logvar" is a negative scale)
REPARAM_SPECS = [((3000, 4), (-3.0, 1.5)), ((400, 5, 3), (0.2, 1.5)), ((4000, 1), (-2.5, -0.5))]
REPARAM_HINT = "z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)"

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
MIRRORED = ("some rows of the noise are the negatives of others (antithetic noise: eps and -eps)",
            "the samples must be independent: draw fresh noise for every row, not pairs eps and -eps")
NO_NOISE = ("eps not random: z = mu (eps = 0, or no noise at all)",
            f"the sample is random: {REPARAM_HINT}; torch.randn_like draws the noise")
REPARAM_MESSAGES = {
    "constant": ("eps not random: the same number everywhere",
                 f"draw one independent standard normal number per entry of mu: {REPARAM_HINT}"),
    "same rows": ("eps the same for every row",
                  f"eps must have mu's full shape, one independent draw per row and coordinate: {REPARAM_HINT}"),
    "same columns": ("eps the same for every coordinate",
                     f"eps must have mu's full shape (torch.randn_like(mu)): {REPARAM_HINT}"),
    "same calls": ("eps not random: the same noise at every call",
                   "do not reseed the generator (torch.manual_seed) or reuse a stored eps inside the function: each "
                   "call draws fresh noise"),
    "uniform": ("eps from torch.rand (uniform on [0, 1)) instead of torch.randn",
                "the noise of the reparameterization trick is standard *normal*: torch.randn(...) or "
                "torch.randn_like(mu), not torch.rand (uniform), even rescaled"),
}


def _reparam_inputs(case, spec):
    shape, (lo, hi) = spec
    return {"mu": case.randn(*shape, scale=1.5), "logvar": case.rand(*shape, low=lo, high=hi)}


def _std(logvar):
    return torch.exp(0.5 * logvar)


def _reparam_noise(z, mu, logvar):
    """The noise a correct answer's ``z`` was made of."""
    return (z - mu) / _std(logvar)


def _reparam_from_noise(u, mu, logvar):
    """The reference given its noise ``u`` (one row per draw)."""
    return P.reparameterize(mu, logvar, eps=u.reshape(mu.shape))


# The slips' noise: what the answer's z is made of under each slip (NaN where the slip cannot apply).
REPARAM_SLIPS = [
    Slip(*LOGVAR_AS_VAR, lambda z, mu, lv: (z - mu) / lv.sqrt()),
    Slip(*LOGVAR_AS_VAR, lambda z, mu, lv: (z - mu) / lv.abs()),
    Slip(*EXP_NO_HALF, lambda z, mu, lv: (z - mu) / torch.exp(lv)),
    Slip("the standard deviation treated as a variance (its square root taken: exp(logvar / 4))",
         "sigma = exp(logvar / 2) is already the standard deviation: multiply the noise by it, no square root",
         lambda z, mu, lv: (z - mu) / torch.exp(lv / 4)),
    Slip("the noise not scaled by the standard deviation (z = mu + eps)", REPARAM_HINT, lambda z, mu, lv: z - mu),
    Slip("the noise divided by the standard deviation instead of multiplied", REPARAM_HINT,
         lambda z, mu, lv: (z - mu) * _std(lv)),
    Slip("mu not added (z = std * eps)", REPARAM_HINT, lambda z, mu, lv: z / _std(lv)),
    Slip("z = eps: the standard normal noise itself", REPARAM_HINT, lambda z, mu, lv: z),
]


class ReparameterizeCheck(RandomCheck):
    """:class:`~coursepkg.grading.kit.RandomCheck` with three slips its noise tests cannot show: ``sqrt(logvar)``,
    NaN exactly where ``logvar < 0``, no noise at all (``z = mu``), and antithetic noise (rows paired as
    ``eps`` and ``-eps``); a gradient that does not reach an input is explained as a detached sample."""

    def __call__(self, answer):
        return _gradient_advice(lambda: super(ReparameterizeCheck, self).__call__(answer), lambda name: Mistake(
            f"{NOT_REPARAMETERIZED[0]} reaches {name}", NOT_REPARAMETERIZED[1]))

    def judge_sample(self, z, args, args64, ran):
        negative, bad = args64["logvar"] < 0, ~torch.isfinite(z)
        if bool(bad.any()) and bool(negative.any()) and torch.equal(bad, negative):
            raise Mistake(*LOGVAR_AS_VAR)
        if close(z, args64["mu"], 1e-6, 1e-7):
            raise Mistake(*NO_NOISE)
        u = as_rows(_reparam_noise(z, args64["mu"], args64["logvar"]))
        if independence_test(u, n_sigma=self.n_sigma) is None and mirrored_rows(u):
            raise Mistake(*MIRRORED)
        return super().judge_sample(z, args, args64, ran)


ReparameterizeCheck(
    "05.reparameterize", "the reparameterization trick z = mu + exp(logvar / 2) * eps",
    solution=P.reparameterize, inputs=_reparam_inputs, specs=REPARAM_SPECS, seed=5100,
    noise=_reparam_noise, from_noise=_reparam_from_noise, slips=REPARAM_SLIPS, what="z",
    describe=["mu", "logvar"], grad=["mu", "logvar"], detached=NOT_REPARAMETERIZED, messages=REPARAM_MESSAGES,
    shape_hints=[h for shape, _ in REPARAM_SPECS for h in (
        (shape[:-1], "z has mu's shape: do not sum or average over the last dimension"),
        ((1, *shape), "z has mu's shape, one sample per entry: draw eps of shape mu.shape"))])


# --------------------------------------------------------------------------------------------------
# 05.vae_loss
# --------------------------------------------------------------------------------------------------
# (likelihood, N, D, Dz, sigma2 (None: the default 1.0), logvar range)
LOSS_SPECS = [("bernoulli", 7, 10, 3, None, (-2.5, 1.0)), ("gaussian", 6, 8, 2, 0.3, (-2.0, 1.0)),
              ("gaussian", 5, 12, 4, 2.0, (0.1, 1.2)), ("bernoulli", 6, 6, 1, None, (0.1, 1.0)),
              ("gaussian", 8, 5, 3, None, (-1.5, 0.8))]
MAX_SLIPS = 3

KL_FORMULA = "KL(q || N(0, I)) = 0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)"
BCE_HINT = ("x_out holds logits: -log p(x | z) = F.binary_cross_entropy_with_logits(x_out, x, reduction='none')"
            ".sum(-1), i.e. sum_d softplus(x_out_d) - x_d * x_out_d")
GAUSS_HINT = "-log p(x | z) = ||x - x_out||^2 / (2 sigma2) + D/2 log(2 pi sigma2), summed over the D pixels"
AS_PROBS = ("BCE applied to logits as if they were probabilities (sigmoid forgotten)",
            f"{BCE_HINT}; F.binary_cross_entropy expects probabilities, so it would need torch.sigmoid(x_out)")

# Each aspect of the loss: its options, the right one first. The Gaussian reconstruction is two aspects,
# the squared-error term ("coef") and the constant ("const"), whose slips combine freely.
LOSS_ASPECTS = {
    "bernoulli": [
        Option("ok"),
        Option("sigmoid_twice", "sigmoid applied to the logits before binary_cross_entropy_with_logits (applied "
               "twice)", "binary_cross_entropy_with_logits applies the sigmoid itself: give it x_out as is"),
        Option("as_probs", *AS_PROBS),
        Option("as_probs_clamped", *AS_PROBS),         # F.binary_cross_entropy clamps its logs at -100
        Option("swapped", "x and x_out swapped in the cross-entropy",
               "F.binary_cross_entropy_with_logits(input, target): the logits x_out come first, the data x second"),
    ],
    "coef": [
        Option("ok"),
        Option("no_half", "1/(2 sigma2) written as 1/sigma2", f"the Gaussian's exponent has a 2: {GAUSS_HINT}"),
        Option("ignored", "sigma2 ignored in the squared-error term", f"sigma2 = 1 only by default; {GAUSS_HINT}"),
        Option("plain", "the squared error not divided by 2 sigma2 (the lectures' F.mse_loss(..., reduction='sum'))",
               f"the exercise asks for the exact negative log-likelihood, not a plain sum of squares; {GAUSS_HINT}"),
        Option("std", "sigma2 taken for the standard deviation (divided by 2 sigma2^2)",
               f"sigma2 is the variance: {GAUSS_HINT}"),
    ],
    "const": [
        Option("ok"),
        Option("none", "Gaussian constant D/2 log(2 pi sigma2) forgotten",
               f"the exercise asks for the exact negative log-likelihood, normalising constant included; {GAUSS_HINT}"),
        Option("no_sigma", "sigma2 ignored in the constant (D/2 log(2 pi) instead of D/2 log(2 pi sigma2))",
               GAUSS_HINT),
        Option("no_2pi", "the 2 pi forgotten in the constant (D/2 log(sigma2))", GAUSS_HINT),
        Option("no_half", "the 1/2 of the constant forgotten (D log(2 pi sigma2))", GAUSS_HINT),
        Option("std", "sigma2 taken for the standard deviation in the constant (D/2 log(2 pi sigma2^2))",
               f"sigma2 is the variance: {GAUSS_HINT}"),
    ],
    "pixels": [
        Option("ok"),
        Option("mean", "mean over dimensions instead of sum (over the D pixels, in the reconstruction)",
               "log p(x | z) of independent pixels is a sum over the D pixels: .sum(-1) or reduction='sum', not a "
               "mean (the default reduction='mean' of F.binary_cross_entropy_with_logits and F.mse_loss averages)"),
    ],
    "recon_sign": [
        Option("ok"),
        Option("flipped", "the reconstruction term with the wrong sign (+log p(x | z) added)",
               "the loss is the *negative* ELBO: -log p(x | z) + KL, and -log p(x | z) >= 0 for binary pixels"),
    ],
    "kl": [
        Option("ok"),
        Option("sign", "KL with the wrong sign", f"the negative ELBO *adds* the KL, which is >= 0: {KL_FORMULA}; the "
               "lectures' KLD = -0.5 * sum(1 + logvar - mu^2 - exp(logvar)) is the same number"),
        Option("logvar_var", "logvar used as variance in the KL",
               f"logvar = log sigma^2: the variance is exp(logvar) and its log is logvar itself; {KL_FORMULA}"),
        Option("logvar_var2", "logvar used as variance in the KL (exp forgotten)",
               f"logvar = log sigma^2: the variance is exp(logvar); {KL_FORMULA}"),
        Option("exp2", "std = exp(logvar) without the half inside the KL (sigma^2 = exp(2 logvar))",
               f"sigma = exp(logvar / 2), so sigma^2 = exp(logvar) and log sigma^2 = logvar; {KL_FORMULA}"),
        Option("exp2b", "std = exp(logvar) without the half inside the KL (sigma^2 = exp(2 logvar))",
               f"sigma = exp(logvar / 2), so sigma^2 = exp(logvar); {KL_FORMULA}"),
        Option("mean", "mean over dimensions instead of sum (over the latent dimensions, in the KL)",
               f"the KL of a diagonal Gaussian is a sum over the latent dimensions: .sum(-1), not .mean(-1); "
               f"{KL_FORMULA}"),
        Option("none", "the KL term forgotten", f"the negative ELBO is -log p(x | z) + KL: {KL_FORMULA}"),
        Option("no_half", "the factor 1/2 of the KL forgotten", KL_FORMULA),
        Option("no_one", "the -1 of the KL forgotten", KL_FORMULA),
        Option("no_mu", "the mu^2 of the KL forgotten", KL_FORMULA),
    ],
    "batch": [
        Option("ok"),
        Option("sum", "sum over the batch instead of the mean",
               "the loss is the *mean* over the N points of the per-point negative ELBO: .mean() over the batch "
               "(reduction='sum' in F.binary_cross_entropy_with_logits or F.mse_loss sums over the batch too)"),
        Option("recon_sum", "sum over the batch instead of the mean (in the reconstruction term)",
               "average both terms over the batch: the per-point -log p(x | z) + KL, then .mean()"),
        Option("kl_sum", "sum over the batch instead of the mean (in the KL term)",
               "average both terms over the batch: the per-point -log p(x | z) + KL, then .mean()"),
    ],
}


def _loss_inputs(case, spec):
    likelihood, N, D, Dz, sigma2, (lo, hi) = spec
    if likelihood == "bernoulli":
        x, r = case.rand(N, D), case.rand(N, D)
        x = torch.where(r < 0.2, 0.0, torch.where(r > 0.8, 1.0, x))         # grey values, and exact 0s and 1s
        out = case.randn(N, D, scale=2.0)                                    # logits
    else:
        x = case.randn(N, D)
        out = x + case.randn(N, D, scale=0.8)                                # means
    args = {"x": x, "x_out": out, "mu": case.randn(N, Dz, scale=1.2), "logvar": case.rand(N, Dz, low=lo, high=hi),
            "likelihood": likelihood}
    if sigma2 is not None:                                                   # else: the default sigma2 = 1
        args["sigma2"] = sigma2
    return args


def _loss_parts(x, out, mu, lv, likelihood, sigma2=1.0):
    """Per aspect, per option key: the per-point tensor (N,) that option contributes (float64)."""
    N, D = x.shape
    parts = {"pixels": {"ok": torch.ones(N, dtype=F64), "mean": torch.full((N,), 1.0 / D, dtype=F64)}}
    if likelihood == "bernoulli":
        def bce(logits):
            return -P.bernoulli_log_prob(x, logits)

        c = out.clamp(0, 1)
        parts["bernoulli"] = {
            "ok": bce(out), "sigmoid_twice": bce(torch.sigmoid(out)),
            "as_probs": -(x * torch.log(out) + (1 - x) * torch.log(1 - out)).sum(-1),
            "as_probs_clamped": -(x * torch.log(c).clamp(min=-100)
                                  + (1 - x) * torch.log(1 - c).clamp(min=-100)).sum(-1),
            "swapped": (nn.functional.softplus(x) - out * x).sum(-1),       # logits x, "probabilities" out
        }
    else:
        sq, s2 = ((x - out) ** 2).sum(-1), float(sigma2)
        parts["coef"] = {"ok": sq / (2 * s2), "no_half": sq / s2, "ignored": sq / 2, "plain": sq,
                         "std": sq / (2 * s2**2)}
        const = {"ok": D / 2 * math.log(2 * math.pi * s2), "none": 0.0, "no_sigma": D / 2 * LOG2PI,
                 "no_2pi": D / 2 * math.log(s2), "no_half": D * math.log(2 * math.pi * s2),
                 "std": D / 2 * math.log(2 * math.pi * s2**2)}
        parts["const"] = {k: torch.full_like(sq, v) for k, v in const.items()}
    e, Dz = torch.exp(lv), mu.shape[1]
    kl = P.kl_standard_normal(mu, lv)
    parts["kl"] = {
        "ok": kl, "sign": -kl, "logvar_var": 0.5 * (mu**2 + lv - 1 - torch.log(lv)).sum(-1),
        "logvar_var2": 0.5 * (mu**2 + lv - 1 - lv).sum(-1),
        "exp2": 0.5 * (mu**2 + torch.exp(2 * lv) - 1 - 2 * lv).sum(-1),
        "exp2b": 0.5 * (mu**2 + torch.exp(2 * lv) - 1 - lv).sum(-1),
        "mean": kl / Dz, "none": torch.zeros_like(kl), "no_half": 2 * kl, "no_one": kl + Dz / 2,
        "no_mu": 0.5 * (e - 1 - lv).sum(-1),
    }
    return parts


def _combine(choice, parts):
    """The loss of one choice of options: the reconstruction (its reduction over the batch, times the pixel
    factor, with its sign) plus the KL (its reduction)."""
    b = choice["batch"]
    recon_reduce = "sum" if b in ("sum", "recon_sum") else "mean"
    kl_reduce = "sum" if b in ("sum", "kl_sum") else "mean"

    def reduced(part):
        return getattr(part, recon_reduce)()

    if "bernoulli" in parts:
        recon = reduced(parts["bernoulli"][choice["bernoulli"]])
    else:
        recon = reduced(parts["coef"][choice["coef"]]) + reduced(parts["const"][choice["const"]])
    recon = recon * parts["pixels"][choice["pixels"]].mean()
    if choice["recon_sign"] == "flipped":
        recon = -recon
    return recon + getattr(parts["kl"][choice["kl"]], kl_reduce)()


def _vae_loss(x, x_out, mu, logvar, likelihood, sigma2=1.0):
    """The exercise's answer from the package: the negative ELBO of :class:`coursepkg.vae.VAE`, mean over the batch."""
    if likelihood == "bernoulli":
        recon = -P.bernoulli_log_prob(x, x_out)
    else:
        recon = -P.gaussian_log_prob(x, x_out, torch.full_like(x_out, math.log(sigma2)))
    return (recon + P.kl_standard_normal(mu, logvar)).mean()


class VaeLossCheck(LossCheck):
    """:class:`~coursepkg.grading.kit.LossCheck` that names ``F.binary_cross_entropy`` given logits (it raises
    "between 0 and 1"), says which ``sigma2`` a trial used, and explains a gradient that does not reach an
    input as a part cut from the graph."""

    def __call__(self, answer):
        f = explaining_errors(require_callable(answer), [("between 0 and 1", *AS_PROBS)])
        verdict = _gradient_advice(lambda: super(VaeLossCheck, self).__call__(f), lambda name: CheckFailure(
            f"the loss has the right value but the wrong gradient with respect to {name}: part of it is cut from the "
            "graph (.item(), .detach(), numpy or torch.no_grad()), so training would not see it"))
        return f"{verdict}: Bernoulli logits, and Gaussian means with sigma2 = 0.3, 2 and the default 1"

    def described(self, args):
        text = describe_inputs(x=args["x"], mu=args["mu"], likelihood=args["likelihood"])
        if args["likelihood"] == "gaussian":
            text += f", sigma2={args['sigma2']:g}" if "sigma2" in args else ", sigma2=1 (the default)"
        return text


VaeLossCheck(
    "05.vae_loss", "the VAE's loss: the negative ELBO with one sample, averaged over the batch",
    solution=_vae_loss, inputs=_loss_inputs, specs=LOSS_SPECS, seed=5200, parts=_loss_parts, combine=_combine,
    aspects=LOSS_ASPECTS, max_slips=MAX_SLIPS, grad=["x_out", "mu", "logvar"],
    detached=("the loss is detached from x_out, mu and logvar: no gradient",
              "compute it with torch operations on the inputs (no .item(), .detach(), numpy or torch.no_grad()), so "
              "that the optimiser can differentiate it"),
    shape_hints=[h for _, N, D, Dz, _, _ in LOSS_SPECS for h in (
        ((N,), "the loss is one number: average the per-point negative ELBO over the batch (.mean())"),
        ((N, D), "sum the reconstruction term over the pixels, then average over the batch"),
        ((N, Dz), "sum the KL over the latent dimensions, then average over the batch"))]
    + [((1,), "return a 0-dimensional tensor (a scalar): .mean() or .sum() without keepdim")],
    explain=f"the loss is the batch mean of -log p(x | z) + KL. Bernoulli: {BCE_HINT}. Gaussian: {GAUSS_HINT}. "
            f"{KL_FORMULA}")


# --------------------------------------------------------------------------------------------------
# 05.sample_prior
# --------------------------------------------------------------------------------------------------
PRIOR_HINT = ("z = torch.randn(n, latent_dim, dtype=p.dtype, device=p.device) with p = next(decoder.parameters()), "
              "then x = decoder(z)")
# (n, latent_dim, D, likelihood)
PRIOR_SPECS = [(2000, 2, 6, "bernoulli"), (1500, 3, 5, "gaussian"), (2500, 1, 4, "bernoulli"),
               (1200, 5, 3, "gaussian")]
SAME_Z = ("the same z for every sample (every sample identical)",
          f"generating means drawing z from the prior N(0, I), a different z for every sample: {PRIOR_HINT}")
PRIOR_MESSAGES = {
    **{k: (name, f"{hint}; {PRIOR_HINT}") for k, (name, hint) in RANDOM_MESSAGES.items()},
    "zeros": ("z = zeros (the mean of the prior: every sample identical)", SAME_Z[1]),
    "constant": SAME_Z, "same rows": SAME_Z,
    "same calls": ("the same samples at every call", "do not reseed the generator (torch.manual_seed) inside the "
                   "function: each call draws fresh latents"),
    "uniform": ("z drawn from torch.rand (uniform on [0, 1)) instead of the prior N(0, I)",
                f"the prior is standard normal: {PRIOR_HINT}"),
}


class PriorDecoder(nn.Module):
    """A small decoder ``z (n, latent_dim) -> (n, D)``, ``h + sin(h) / 2`` of a linear ``h``, in the case's
    dtype and device, that refuses a ``z`` of the wrong shape, dtype or device with a clear message (kept in
    ``problem``, the check reports it)."""

    def __init__(self, case, n: int, latent_dim: int, D: int):
        super().__init__()
        self.n, self.latent_dim, self.D = n, latent_dim, D
        self.linear = nn.Linear(latent_dim, D, **case.like)
        w, b = case.randn(D, latent_dim, scale=1.2), case.randn(D, scale=0.8)
        with torch.no_grad():
            self.linear.weight.copy_(w)
            self.linear.bias.copy_(b)
        self.problem: tuple[str, str] | None = None     # (kind, message) of a refused call

    def __repr__(self) -> str:
        return f"<the check's decoder: z ({self.n}, {self.latent_dim}) -> ({self.n}, {self.D})>"

    def output64(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's output on ``z``, in float64 on the CPU."""
        h = z.to(F64).cpu() @ self.linear.weight.detach().to(F64).cpu().T + self.linear.bias.detach().to(F64).cpu()
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
        h = self.linear(z)
        return h + 0.5 * torch.sin(h)


def _sample_prior(decoder, n, latent_dim, likelihood):
    """The exercise's answer: decode n draws of the prior, through a sigmoid for Bernoulli logits."""
    p = next(decoder.parameters())
    out = decoder(torch.randn(n, latent_dim, dtype=p.dtype, device=p.device))
    return torch.sigmoid(out) if likelihood == "bernoulli" else out


def _decode_with(f, decoder: PriorDecoder, *args):
    """Call the answer; a call of the decoder it refused is reported in the decoder's words."""
    try:
        return call(f, decoder, *args)
    except CheckFailure:
        if decoder.problem is None:
            raise
        kind, message = decoder.problem
        if kind == "swapped":
            raise Mistake("z of the wrong shape (latent_dim and n swapped)",
                          f"one latent per row: z has shape (n, latent_dim); {PRIOR_HINT}") from None
        raise CheckFailure(message) from None


def _judge_latents(rec: Recorder, n: int, inputs: str) -> torch.Tensor:
    """The latents the decoder accepted (float64 rows, recorded at its linear layer): ``n`` independent
    standard normal draws."""
    z = rec.rows(0)
    if z is None:
        raise CheckFailure("your function called the decoder inside a torch.func transform: call it directly")
    if z.numel() == 0:
        raise CheckFailure(f"your function never called the decoder: {PRIOR_HINT}")
    if z.shape[0] != n:
        raise CheckFailure(f"the decoder was called on {z.shape[0]} latents in all, expected n = {n}: draw "
                           f"z of shape (n, latent_dim) and decode it once")
    if not bool(torch.isfinite(z).all()):
        raise CheckFailure(f"the latents contain NaN or inf (for inputs {inputs}): {PRIOR_HINT}")
    if bool((z == 0).all()):
        raise Mistake(*PRIOR_MESSAGES["zeros"])
    dependence = independence_test(z)
    if dependence is not None:
        raise Mistake(*PRIOR_MESSAGES[dependence])
    if mirrored_rows(z):
        raise Mistake(MIRRORED[0].replace("of the noise", "of z"), f"{MIRRORED[1]}; {PRIOR_HINT}")
    if normal_test(z) is None:
        return z
    if looks_uniform(z):
        raise Mistake(*PRIOR_MESSAGES["uniform"])
    raise CheckFailure(f"the latents the decoder received do not look like draws of the prior N(0, I) (for inputs "
                       f"{inputs}): their mean is {vec(z.mean(0))} and their standard deviation {vec(z.std(0))}, "
                       f"where 0 and 1 are expected; {PRIOR_HINT}")


def _judge_decoded(got, decoder: PriorDecoder, z: torch.Tensor, likelihood: str, case, inputs: str) -> None:
    """``got`` must be the mean of p(x | z) for the recorded latents ``z``."""
    n, D = z.shape[0], decoder.D
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (n, decoder.latent_dim) != (n, D):
        raise CheckFailure(f"the result has shape [{n}, {decoder.latent_dim}], that of the latents: return the "
                           f"decoded x, shape ({n}, {D})")
    if isinstance(got, torch.Tensor) and got.is_floating_point() and got.dtype != case.dtype:
        raise CheckFailure(f"the generated x has dtype {str(got.dtype).replace('torch.', '')}, expected "
                           f"{str(case.dtype).replace('torch.', '')}, the decoder's (for inputs {inputs}): return "
                           "what the decoder gives, without converting it")
    require_like(got, (n, D), dtype=case.dtype, device=case.device, what="the generated x", inputs=inputs,
                 shape_hints=[((n,), "one row of D numbers per sample")])
    g = got.detach().to(F64).cpu()
    if not bool(torch.isfinite(g).all()):
        raise CheckFailure(f"the generated x contains NaN or inf (for inputs {inputs}); the decoder's output on "
                           "your latents does not")
    out = decoder.output64(z)
    expected = torch.sigmoid(out) if likelihood == "bernoulli" else out
    rtol, atol = tolerance(case.dtype)
    if close(g, expected, rtol, atol):
        return
    if likelihood == "bernoulli":
        if bool(((g == 0) | (g == 1)).all()):
            raise Mistake("binary samples returned instead of the probabilities",
                          "return the mean of p(x | z), torch.sigmoid(decoder(z)), not a draw of the pixels")
        mistakes = [("sigmoid forgotten for bernoulli (returned logits)", "for a Bernoulli likelihood the decoder "
                     "gives logits; the mean of p(x | z), the pixel probabilities, is torch.sigmoid(decoder(z))", out)]
    else:
        mistakes = [("sigmoid applied to gaussian means", "for a Gaussian likelihood the decoder's output is already "
                     "the mean of p(x | z): return decoder(z) as is", torch.sigmoid(out))]
    for name, hint, value in distinct(mistakes, expected, rtol, atol):
        if close(g, value, rtol, atol):
            raise Mistake(name, hint)
    what = "torch.sigmoid(decoder(z))" if likelihood == "bernoulli" else "decoder(z)"
    raise CheckFailure(f"the generated x is not {what} for the latents the decoder received (for inputs {inputs}): "
                       f"largest absolute error {fmt((g - expected).abs().max().item())}; decode the z you drew, once")


@register("05.sample_prior", "generating: decode latents drawn from the prior", solution=_sample_prior)
def check_sample_prior(answer):
    f = require_callable(answer)
    trials = [(case, spec) for case in random_cases(5300) for spec in PRIOR_SPECS]
    for i, (case, (n, latent_dim, D, likelihood)) in enumerate(trials):
        torch.manual_seed(5300 + i)                        # the same answer always gets the same verdict
        decoder = PriorDecoder(case, n, latent_dim, D)
        rec = Recorder.on_module(decoder.linear)           # decoder(z) and decoder.forward(z) both call it
        inputs = describe_inputs(n=n, latent_dim=latent_dim, likelihood=likelihood) + \
            f", a decoder with {str(case.dtype).replace('torch.', '')} parameters"
        got = _decode_with(f, decoder, n, latent_dim, likelihood)
        z = _judge_latents(rec, n, inputs)                 # everything expected is computed from here on
        _judge_decoded(got, decoder, z, likelihood, case, inputs)
        again = _decode_with(f, decoder, n, latent_dim, likelihood)
        if isinstance(again, torch.Tensor) and not fresh(got, again):
            raise Mistake(*PRIOR_MESSAGES["same calls"])
    return (f"decodes n latents that look like fresh, independent standard normal draws (moments, kurtosis, "
            f"Kolmogorov-Smirnov) and returns the mean of p(x | z) (sigmoid of the logits, or the Gaussian means) "
            f"on {len(trials)} random decoders")


# --------------------------------------------------------------------------------------------------
# 05.log_likelihood
# --------------------------------------------------------------------------------------------------
IW_REPLICAS = 2000
# ((P, Dx, Dz), k, logvar offset): P data points, each replicated IW_REPLICAS times in the batch; the
# offset widens q (a broad q makes the weights spread, and the slips differ more)
IW_SPECS = [((3, 4, 2), 8, 0.0), ((2, 3, 1), 4, 1.0), ((3, 5, 3), 16, 0.3), ((2, 4, 2), 1, 0.0)]


class LinearEncoder(nn.Module):
    """``encode(x) -> (mu, logvar)``, each ``(N, Dz)``, near the exact posterior of a linear-Gaussian model:
    its mean shifted at random, its mean-field log-variances shifted by ``lv_offset`` and modulated by ``x``;
    in the case's dtype and on its device. Its tensors are buffers, so that the kit's :func:`call` sees an
    answer that changes them in place."""

    def __init__(self, case, model, lv_offset: float):
        super().__init__()
        g = case.gen
        Dx, Dz = model.x_dim, model.z_dim
        lam = model.posterior_precision()
        M = torch.linalg.solve(lam, model.W.T / model.noise_var)                 # posterior mean: M (x - b)
        c = -model.b @ M.T + 0.4 * torch.randn(Dz, generator=g, dtype=F64)       # shifted
        V = 0.3 * torch.randn(Dz, Dx, generator=g, dtype=F64)
        base = torch.log(1.0 / torch.diagonal(lam)) + lv_offset
        for name, t in zip(("M", "c", "V", "base", "b"), case.to(M, c, V, base, model.b), strict=True):
            self.register_buffer(name, t.clone())
        self.Dx = Dx

    def __repr__(self) -> str:
        return "<the check's encoder: x (N, Dx) -> (mu, logvar), each (N, Dz)>"

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.Dx:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"encode(x) takes x of shape (N, {self.Dx}), got {got}")
        if x.dtype != self.M.dtype or x.device != self.M.device:
            raise ValueError(f"encode(x): x is {x.dtype} on {x.device}, expected {self.M.dtype} on {self.M.device}")
        mu = x @ self.M.T + self.c
        logvar = self.base + 0.4 * torch.tanh((x - self.b) @ self.V.T)
        return mu, logvar


def _iw_log_likelihood(x, encode, log_joint, k):
    """The exercise's answer from the package: :func:`coursepkg.elbo.iwae_bound` with the encoder's q."""
    mu, logvar = encode(x)
    return iwae_bound(x, log_joint, diag_gaussian(mu, logvar.exp()), k).estimate


def _iw_problem(case, spec):
    """``(model, x, is_far, k, lv_offset)`` of one trial: P points of a random model, or (spec None) two near
    points and a far one; x float64, rounded to the case's dtype."""
    if spec is None:
        model, x, is_far = far_problem(case)
        return model, x, is_far, 8, 0.0
    (P_, Dx, Dz), k, lv_offset = spec
    model = random_linear_gaussian(case, Dx, Dz)
    return model, case.rounded(model.sample(P_, generator=case.gen).x), None, k, lv_offset


@register("05.log_likelihood", "the importance-weighted estimate of log p(x), from an encoder and a model",
          solution=_iw_log_likelihood)
def check_log_likelihood(answer):
    f = require_callable(answer)
    R = IW_REPLICAS
    trials = [(case, spec) for case in random_cases(5400) for spec in IW_SPECS]
    trials += [(case, None) for case in random_cases(5450)]
    for i, (case, spec) in enumerate(trials):
        torch.manual_seed(5400 + i)                          # the same answer always gets the same verdict
        model, x, is_far, k, lv_offset = _iw_problem(case, spec)
        encoder = LinearEncoder(case, model, lv_offset)
        calls = Recorder.on_module(encoder)
        xc = case.to(x.repeat(R, 1))
        inputs = describe_inputs(x=xc, k=k)
        log_joint = ModelFunction(case, LinearGaussianModel(model.W.clone(), model.b.clone(), model.noise_var.clone()),
                                  joint=True)                # the answer's copy: the check keeps `model`
        got = call(f, xc, encoder, log_joint, k)
        if not calls.calls and not calls.wrapped:
            raise CheckFailure("your function never called encode(x): q(z | x) = N(mu, diag exp(logvar)) with "
                               "(mu, logvar) = encode(x)")
        with torch.no_grad():                                # everything expected is computed from here on
            mu, logvar = (t.to(F64).cpu() for t in encoder(case.to(x)))
        ref = iwae_bound(x, model.log_joint, diag_gaussian(mu, logvar.exp()), k, n_estimates=R)
        judge_iwae(got, case, inputs, model, x, mu, logvar, k, R, ref.estimate, ref.stderr, is_far, what="estimate",
                   recipe=f"with k={k}: (mu, logvar) = encode(x), k samples z_i = mu + exp(logvar / 2) * "
                          "eps_i, then logsumexp_i [log_joint(x, z_i) - log q(z_i | x)] - log k",
                   underflow=(UNDERFLOW[0].replace("exp underflow", "naive log(mean(exp)) underflows"), UNDERFLOW[1]))
        if i == 0:                                           # a Monte Carlo estimate: fresh at every call
            again = call(f, xc, encoder, log_joint, k)
            if isinstance(again, torch.Tensor) and not fresh(got, again):
                raise Mistake(*RANDOM_MESSAGES["same calls"])
    return (f"matches coursepkg.elbo.iwae_bound with the encoder's q in distribution ({R} estimates per point) on "
            f"{len(trials)} random inputs, k = 1 to 16, including a point far from the data, with a new estimate at "
            "every call")
