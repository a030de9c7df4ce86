"""Chapter 05 checks: the reference passes, and so do correct answers written differently; typical
mistakes, written here as small wrong implementations, fail with a message that names the mistake; bad
answers never crash a check. Three checks are statistical: they seed torch inside the check, so each
verdict below is reproducible."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import distributions as td

from coursepkg import probability as P
from coursepkg.elbo import iwae_bound
from coursepkg.grading import check
from coursepkg.grading.checks import ch05_vae as C
from coursepkg.grading.kit import slip_combinations
from coursepkg.vae import VAE

from .helpers import check_fails, check_passes

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = ["05.reparameterize", "05.vae_loss", "05.sample_prior", "05.log_likelihood"]

_ok, _fails = check_passes, check_fails


# ---------------------------------------------------------------------------------------------- references
def ref_reparameterize(mu, logvar):
    return P.reparameterize(mu, logvar)


def ref_vae_loss(x, x_out, mu, logvar, likelihood, sigma2=1.0):
    if likelihood == "bernoulli":
        recon = -P.bernoulli_log_prob(x, x_out)
    else:
        recon = -P.gaussian_log_prob(x, x_out, torch.full_like(x_out, math.log(sigma2)))
    return (recon + P.kl_standard_normal(mu, logvar)).mean()


def ref_sample_prior(decoder, n, latent_dim, likelihood):
    p = next(decoder.parameters())
    out = decoder(torch.randn(n, latent_dim, dtype=p.dtype, device=p.device))
    return torch.sigmoid(out) if likelihood == "bernoulli" else out


def ref_log_likelihood(x, encode, log_joint, k):
    mu, logvar = encode(x)
    q = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
    return iwae_bound(x, log_joint, q, k).estimate


REFERENCES = {"05.reparameterize": ref_reparameterize, "05.vae_loss": ref_vae_loss,
              "05.sample_prior": ref_sample_prior, "05.log_likelihood": ref_log_likelihood}


@pytest.mark.parametrize("exercise_id", IDS)
def test_reference_implementations_pass(exercise_id):
    _ok(exercise_id, REFERENCES[exercise_id])


def test_the_loss_check_agrees_with_the_vae_module():
    """The check's reference is VAE.loss: the same number for the same network outputs and noise."""
    torch.manual_seed(0)
    for likelihood, sigma2 in (("bernoulli", 1.0), ("gaussian", 0.3)):
        vae = VAE.mlp(6, (8,), 2, likelihood=likelihood, sigma2=sigma2).double()
        x = torch.rand(5, 6, dtype=torch.float64)
        eps = torch.randn(5, 2, dtype=torch.float64)
        mu, logvar = vae.encode(x)
        x_out = vae.decode(mu + torch.exp(0.5 * logvar) * eps)
        expected = vae.loss(x, eps=eps)["loss"]
        assert torch.allclose(ref_vae_loss(x, x_out, mu, logvar, likelihood, sigma2), expected, rtol=1e-6)
        right = {aspect: options[0].key for aspect, options in C.LOSS_ASPECTS.items()}   # the check's own reference
        parts = C._loss_parts(x, x_out.detach(), mu.detach(), logvar.detach(), likelihood, sigma2)
        assert torch.allclose(C._combine(right, parts), expected.detach(), rtol=1e-6)  # log sigma2: a float32 buffer


# ---------------------------------------------------------------------------------- 05.reparameterize
def make_reparam(*, std=lambda lv: torch.exp(0.5 * lv), noise=torch.randn_like, shift=True, detach=False):
    """z = mu + std(logvar) * noise(mu), with switches for the slips."""
    def reparameterize(mu, logvar):
        z = (mu if shift else 0) + std(logvar) * noise(mu)
        return z.detach() if detach else z
    return reparameterize


def reparam_distributions(mu, logvar):
    return td.Normal(mu, torch.exp(logvar / 2)).rsample()


def reparam_loop(mu, logvar):
    rows = [m + torch.sqrt(torch.exp(lv)) * torch.randn(m.shape, dtype=m.dtype, device=m.device)
            for m, lv in zip(mu, logvar, strict=True)]
    return torch.stack(rows)


def reparam_explicit(mu, logvar):
    eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device)
    std = logvar.mul(0.5).exp()
    return eps.mul(std).add(mu)


def test_reparameterize_correct_but_differently_written_answers_pass():
    _ok("05.reparameterize", make_reparam())
    _ok("05.reparameterize", reparam_distributions)
    _ok("05.reparameterize", reparam_loop)
    _ok("05.reparameterize", reparam_explicit)


def _uniform_rescaled(mu):
    return (torch.rand_like(mu) - 0.5) * math.sqrt(12.0)


def _seeded(mu):
    g = torch.Generator(device=mu.device).manual_seed(0)
    return torch.randn(mu.shape, generator=g, dtype=mu.dtype, device=mu.device)


def _torch_normal(mu, logvar):
    return torch.normal(mu, torch.exp(0.5 * logvar))


def _no_grad(mu, logvar):
    with torch.no_grad():
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


@pytest.mark.parametrize("wrong, words", [
    (make_reparam(std=lambda lv: lv), ["logvar used as the variance"]),
    (make_reparam(std=torch.sqrt), ["logvar used as the variance"]),
    (make_reparam(std=torch.exp), ["1/2 is missing"]),
    (make_reparam(std=lambda lv: torch.exp(0.5 * lv) ** 2), ["1/2 is missing", "variance"]),
    (make_reparam(std=lambda lv: torch.sqrt(torch.exp(0.5 * lv))), ["standard deviation treated as a variance"]),
    (make_reparam(noise=torch.zeros_like), ["not random"]),
    (make_reparam(noise=lambda mu: torch.ones_like(mu)), ["not random"]),
    (make_reparam(noise=lambda mu: torch.randn(mu.shape[-1], dtype=mu.dtype, device=mu.device)),
     ["the same for every row"]),
    (make_reparam(noise=lambda mu: torch.randn(*mu.shape[:-1], 1, dtype=mu.dtype, device=mu.device)),
     ["the same for every coordinate"]),
    (make_reparam(noise=_seeded), ["not random", "every call"]),
    (make_reparam(detach=True), ["detached", "no gradient"]),
    (_no_grad, ["detached"]),
    (lambda mu, lv: td.Normal(mu, torch.exp(0.5 * lv)).sample(), ["detached"]),
    (_torch_normal, ["no gradient reaches mu"]),
    (make_reparam(std=lambda lv: torch.exp(0.5 * lv).detach()), ["no gradient reaches logvar"]),
    (make_reparam(noise=torch.rand_like), ["torch.rand", "uniform"]),
    (make_reparam(noise=_uniform_rescaled), ["torch.rand"]),
    (make_reparam(shift=False), ["mu not added"]),
    (make_reparam(std=lambda lv: torch.ones_like(lv)), ["not scaled"]),
    (lambda mu, lv: torch.randn_like(mu), ["z = eps"]),
], ids=["std_logvar", "sqrt_logvar", "exp_no_half", "var_times_eps", "sqrt_std", "zeros", "ones", "same_row",
        "same_coordinate", "reseeded", "detached", "no_grad", "sample", "torch_normal", "std_detached", "uniform",
        "uniform_rescaled", "no_mu", "not_scaled", "eps_only"])
def test_reparameterize_mistakes(wrong, words):
    _fails("05.reparameterize", wrong, *words)


# ---------------------------------------------------------------------------------- 05.vae_loss
def make_loss(*, bern="ok", coef=lambda s2: 1 / (2 * s2), const=lambda D, s2: D / 2 * math.log(2 * math.pi * s2),
              pixels=lambda t: t.sum(-1), kl="ok", kl_reduce=lambda t: t.sum(-1), batch_recon=lambda t: t.mean(),
              batch_kl=lambda t: t.mean(), recon_sign=1.0):
    """The loss in plain torch, with switches for the slips."""
    def vae_loss(x, x_out, mu, logvar, likelihood, sigma2=1.0):
        if likelihood == "bernoulli":
            if bern == "ok":
                terms = F.binary_cross_entropy_with_logits(x_out, x, reduction="none")
            elif bern == "sigmoid_twice":
                terms = F.binary_cross_entropy_with_logits(torch.sigmoid(x_out), x, reduction="none")
            elif bern == "as_probs_manual":
                terms = -(x * torch.log(x_out) + (1 - x) * torch.log(1 - x_out))
            elif bern == "as_probs_torch":
                terms = F.binary_cross_entropy(x_out, x, reduction="none")
            elif bern == "swapped":
                terms = F.binary_cross_entropy_with_logits(x, x_out, reduction="none")
            recon = pixels(terms)
        else:
            D = x.shape[-1]
            recon = coef(sigma2) * pixels((x - x_out) ** 2) + const(D, sigma2) * pixels(torch.ones_like(x)) / D
        var = {"ok": logvar.exp(), "logvar": logvar, "exp2": torch.exp(2 * logvar)}[kl if kl in ("logvar", "exp2")
                                                                                    else "ok"]
        log_var = {"logvar": torch.log(logvar), "exp2": 2 * logvar}.get(kl, logvar)
        kl_terms = 0.5 * (mu**2 + var - 1 - log_var)
        if kl == "sign":
            kl_terms = -kl_terms
        if kl == "none":
            kl_terms = 0 * kl_terms
        return batch_recon(recon_sign * recon) + batch_kl(kl_reduce(kl_terms))
    return vae_loss


def loss_torch_functional(x, x_out, mu, logvar, likelihood, sigma2=1.0):
    N = x.shape[0]
    if likelihood == "bernoulli":
        recon = F.binary_cross_entropy(torch.sigmoid(x_out), x, reduction="sum")
    else:
        recon = F.mse_loss(x_out, x, reduction="sum") / (2 * sigma2) + x.numel() / 2 * math.log(2 * math.pi * sigma2)
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (recon + kld) / N


def loss_distributions(x, x_out, mu, logvar, likelihood, sigma2=1.0):
    if likelihood == "bernoulli":
        px = td.Independent(td.Bernoulli(logits=x_out, validate_args=False), 1)
    else:
        px = td.Independent(td.Normal(x_out, math.sqrt(sigma2)), 1)
    q = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
    prior = td.Independent(td.Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    return (-px.log_prob(x) + td.kl_divergence(q, prior)).mean()


def loss_loop(x, x_out, mu, logvar, likelihood, sigma2=1.0):
    total = 0.0
    s2 = torch.tensor(sigma2, dtype=x.dtype)
    for xi, oi, mi, li in zip(x, x_out, mu, logvar, strict=True):
        if likelihood == "bernoulli":
            p = torch.sigmoid(oi)
            recon = -(xi * torch.log(p) + (1 - xi) * torch.log(1 - p)).sum()
        else:
            recon = 0.5 * (((xi - oi) ** 2) / s2 + torch.log(2 * math.pi * s2)).sum()
        total = total + recon + 0.5 * (mi**2 + li.exp() - 1 - li).sum()
    return total / x.shape[0]


def test_vae_loss_correct_but_differently_written_answers_pass():
    _ok("05.vae_loss", make_loss())
    _ok("05.vae_loss", loss_torch_functional)
    _ok("05.vae_loss", loss_distributions)
    _ok("05.vae_loss", loss_loop)


def lectures_mse(x, x_out, mu, logvar, likelihood, sigma2=1.0):
    """The lectures' loss_function: sums over the batch, the squared error alone."""
    if likelihood == "bernoulli":
        recon = F.binary_cross_entropy_with_logits(x_out, x, reduction="sum")
    else:
        recon = F.mse_loss(x_out, x, reduction="sum")
    return recon - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def default_reductions(x, x_out, mu, logvar, likelihood, sigma2=1.0):
    """F.*_loss with the default reduction='mean' (over the pixels and the batch)."""
    if likelihood == "bernoulli":
        recon = F.binary_cross_entropy_with_logits(x_out, x)
    else:
        recon = F.mse_loss(x_out, x) / (2 * sigma2) + 0.5 * math.log(2 * math.pi * sigma2)
    return recon + P.kl_standard_normal(mu, logvar).mean()


def _mean(t):
    return t.mean(-1)


@pytest.mark.parametrize("wrong, words", [
    (make_loss(kl="sign"), ["KL with the wrong sign"]),
    (make_loss(kl="logvar"), ["logvar used as variance"]),
    (make_loss(kl="exp2"), ["std = exp(logvar) without the half"]),
    (make_loss(pixels=_mean), ["mean over dimensions instead of sum", "pixels"]),
    (make_loss(kl_reduce=_mean), ["mean over dimensions instead of sum", "latent"]),
    (make_loss(pixels=_mean, kl_reduce=_mean), ["mean over dimensions instead of sum", "pixels", "latent"]),
    (make_loss(batch_recon=torch.sum, batch_kl=torch.sum), ["sum over the batch instead of the mean"]),
    (make_loss(batch_recon=torch.sum), ["sum over the batch instead of the mean", "reconstruction"]),
    (make_loss(bern="as_probs_manual"), ["sigmoid forgotten"]),
    (make_loss(bern="as_probs_torch"), ["sigmoid forgotten"]),
    (make_loss(bern="sigmoid_twice"), ["applied twice"]),
    (make_loss(bern="swapped"), ["swapped"]),
    (make_loss(const=lambda D, s2: 0.0), ["constant", "forgotten"]),
    (make_loss(coef=lambda s2: 0.5, const=lambda D, s2: D / 2 * math.log(2 * math.pi)), ["sigma2 ignored"]),
    (make_loss(coef=lambda s2: 0.5), ["sigma2 ignored"]),
    (make_loss(coef=lambda s2: 1 / s2), ["1/(2 sigma2) written as 1/sigma2"]),
    (make_loss(coef=lambda s2: 1 / (2 * s2**2), const=lambda D, s2: D / 2 * math.log(2 * math.pi * s2**2)),
     ["standard deviation"]),
    (make_loss(kl="none"), ["KL term forgotten"]),
    (make_loss(recon_sign=-1.0), ["reconstruction term with the wrong sign"]),
    (lectures_mse, ["not divided by 2 sigma2", "constant", "forgotten", "sum over the batch"]),
    (default_reductions, ["mean over dimensions", "pixels"]),
], ids=["kl_sign", "kl_logvar_as_var", "kl_exp2", "recon_mean", "kl_mean", "both_mean", "batch_sum",
        "batch_sum_recon", "bce_manual_on_logits", "bce_torch_on_logits", "sigmoid_twice", "swapped",
        "no_constant", "sigma2_ignored", "sigma2_ignored_quadratic", "no_2", "sigma2_std", "no_kl",
        "recon_sign", "lectures", "default_reductions"])
def test_vae_loss_mistakes(wrong, words):
    _fails("05.vae_loss", wrong, *words)


def test_vae_loss_unexplained_errors_and_detached_losses():
    r = _fails("05.vae_loss", lambda *a, **k: ref_vae_loss(*a, **k) + 0.123, "the reference", "-log p(x | z)")
    assert "likely mistake" not in r.message
    _fails("05.vae_loss", lambda *a, **k: ref_vae_loss(*a, **k).detach(), "detached")

    def kl_item(x, x_out, mu, logvar, likelihood, sigma2=1.0):
        kl = P.kl_standard_normal(mu, logvar).mean().item()
        return ref_vae_loss(x, x_out, mu, logvar, likelihood, sigma2) - P.kl_standard_normal(mu, logvar).mean() + kl

    _fails("05.vae_loss", kl_item, "wrong gradient with respect to mu", "cut from the graph")


# ---------------------------------------------------------------------------------- 05.sample_prior
def make_sample_prior(*, draw=None, transform=None):
    def sample_prior(decoder, n, latent_dim, likelihood):
        p = next(decoder.parameters())
        like = dict(dtype=p.dtype, device=p.device)
        z = torch.randn(n, latent_dim, **like) if draw is None else draw(n, latent_dim, like)
        out = decoder(z)
        if transform is not None:
            return transform(out, likelihood)
        return torch.sigmoid(out) if likelihood == "bernoulli" else out
    return sample_prior


def sample_prior_distributions(decoder, n, latent_dim, likelihood):
    p = next(decoder.parameters())
    prior = td.Normal(torch.zeros(latent_dim, dtype=p.dtype, device=p.device), 1.0)
    out = decoder(prior.sample((n,)))
    return td.Bernoulli(logits=out).mean if likelihood == "bernoulli" else out


def sample_prior_chunks(decoder, n, latent_dim, likelihood):
    p = next(decoder.parameters())
    parts = []
    for start in range(0, n, 512):
        z = torch.randn(min(512, n - start), latent_dim).to(p)
        parts.append(decoder(z).sigmoid() if likelihood == "bernoulli" else decoder(z))
    return torch.cat(parts)


def test_sample_prior_correct_but_differently_written_answers_pass():
    _ok("05.sample_prior", make_sample_prior())
    _ok("05.sample_prior", sample_prior_distributions)
    _ok("05.sample_prior", sample_prior_chunks)

    @torch.no_grad()
    def no_grad(decoder, n, latent_dim, likelihood):
        return ref_sample_prior(decoder, n, latent_dim, likelihood)

    _ok("05.sample_prior", no_grad)


def _seeded_z(n, d, like):
    torch.manual_seed(0)
    return torch.randn(n, d, **like)


@pytest.mark.parametrize("wrong, words", [
    (make_sample_prior(draw=lambda n, d, like: torch.rand(n, d, **like)), ["torch.rand", "uniform"]),
    (make_sample_prior(draw=lambda n, d, like: torch.zeros(n, d, **like)), ["z = zeros", "identical"]),
    (make_sample_prior(draw=lambda n, d, like: torch.randn(1, d, **like).expand(n, d)), ["same z", "identical"]),
    (make_sample_prior(draw=lambda n, d, like: torch.randn(d, n, **like)), ["latent_dim and n swapped"]),
    (make_sample_prior(draw=_seeded_z), ["every call"]),
    (make_sample_prior(draw=lambda n, d, like: 3 * torch.randn(n, d, **like)), ["prior N(0, I)"]),
    (make_sample_prior(transform=lambda out, lik: out), ["sigmoid forgotten", "logits"]),
    (make_sample_prior(transform=lambda out, lik: torch.sigmoid(out)), ["sigmoid applied to gaussian means"]),
    (make_sample_prior(transform=lambda out, lik: torch.bernoulli(torch.sigmoid(out)) if lik == "bernoulli"
                       else out), ["binary samples"]),
    (make_sample_prior(transform=lambda out, lik: torch.softmax(out, -1) if lik == "bernoulli" else out),
     ["torch.sigmoid(decoder(z))"]),
], ids=["uniform", "zeros", "same_z", "swapped", "reseeded", "wide", "no_sigmoid", "sigmoid_gaussian",
        "binary", "softmax"])
def test_sample_prior_mistakes(wrong, words):
    _fails("05.sample_prior", wrong, *words)


def test_sample_prior_dtype_device_and_calls_are_explained():
    def default_dtype(decoder, n, latent_dim, likelihood):                  # float32 z for a float64 decoder
        out = decoder(torch.randn(n, latent_dim))
        return torch.sigmoid(out) if likelihood == "bernoulli" else out

    def returns_z(decoder, n, latent_dim, likelihood):
        p = next(decoder.parameters())
        z = torch.randn(n, latent_dim, dtype=p.dtype)
        decoder(z)
        return z

    _fails("05.sample_prior", default_dtype, "next(decoder.parameters())", "dtype")
    _fails("05.sample_prior", lambda dec, n, d, lik: torch.rand(n, 3), "never called the decoder")
    _fails("05.sample_prior", returns_z, "that of the latents")
    _fails("05.sample_prior", make_sample_prior(draw=lambda n, d, like: torch.randn(n + 1, d, **like)),
           "expected n =")


# ---------------------------------------------------------------------------------- 05.log_likelihood
def make_iw(*, reduce=lambda lw, k: torch.logsumexp(lw, 0) - math.log(k), sample="q", log_q="q",
            std=lambda lv: torch.exp(0.5 * lv)):
    """The importance-weighted estimate in plain torch, with switches for the slips."""
    def iw_log_likelihood(x, encode, log_joint, k):
        mu, logvar = encode(x)
        eps = torch.randn(k, *mu.shape, dtype=mu.dtype, device=mu.device)
        z = eps if sample == "prior" else mu + std(logvar) * eps
        log_w = log_joint(x, z)
        if log_q == "q":
            log_w = log_w - P.gaussian_log_prob(z, mu, logvar)
        elif log_q == "prior":
            log_w = log_w - P.gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
        return reduce(log_w, k)
    return iw_log_likelihood


def iw_loop(x, encode, log_joint, k):
    """Another correct way: a loop over the k samples, a running log-sum-exp, the log-density by hand."""
    mu, logvar = encode(x)
    std = torch.exp(logvar / 2)
    acc = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
    for _ in range(k):
        eps = torch.randn_like(mu)
        z = mu + std * eps
        log_q = (-0.5 * (math.log(2 * math.pi) + logvar + eps**2)).sum(-1)
        acc = torch.logaddexp(acc, log_joint(x, z[None])[0] - log_q)
    return acc - math.log(k)


def iw_max_shift(x, encode, log_joint, k):
    mu, logvar = encode(x)
    q = td.Independent(td.Normal(mu, logvar.mul(0.5).exp()), 1)
    z = q.rsample((k,))
    log_w = log_joint(x, z) - q.log_prob(z)
    m = log_w.max(0).values
    return m + torch.log(torch.exp(log_w - m).mean(0))


def test_log_likelihood_correct_but_differently_written_answers_pass():
    _ok("05.log_likelihood", make_iw())
    _ok("05.log_likelihood", iw_loop)
    _ok("05.log_likelihood", iw_max_shift)


def naive(log_w, k):
    return torch.log(torch.exp(log_w).mean(0))


@pytest.mark.parametrize("wrong, words", [
    (make_iw(log_q="none"), ["log q(z | x) forgotten"]),
    (make_iw(reduce=lambda lw, k: lw.mean(0)), ["averaged", "ELBO"]),
    (make_iw(reduce=lambda lw, k: torch.logsumexp(lw, 0)), ["log k"]),
    (make_iw(reduce=naive), ["naive log(mean(exp)) underflows", "logsumexp"]),
    (make_iw(std=torch.exp), ["1/2 is missing"]),
    (make_iw(sample="prior"), ["prior"]),
    (make_iw(sample="prior", log_q="prior"), ["prior"]),
], ids=["no_log_q", "averaged", "no_log_k", "naive", "exp_std", "prior_sample", "prior_proposal"])
def test_log_likelihood_mistakes(wrong, words):
    _fails("05.log_likelihood", wrong, *words)


def test_log_likelihood_wiring_slips_are_explained():
    def no_encoder(x, encode, log_joint, k):
        mu = torch.zeros(x.shape[0], 2, dtype=x.dtype)
        return make_iw()(x, lambda _: (mu, torch.zeros_like(mu)), log_joint, k)

    def samples_last(x, encode, log_joint, k):                             # z laid out (N, k, Dz)
        mu, logvar = encode(x)
        z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * torch.randn(mu.shape[0], k, mu.shape[1], dtype=mu.dtype)
        return torch.logsumexp(log_joint(x, z) - P.gaussian_log_prob(z, mu[:, None], logvar[:, None]), 1)

    _fails("05.log_likelihood", no_encoder, "never called encode")
    _fails("05.log_likelihood", samples_last, "z must have shape")
    _fails("05.log_likelihood", make_iw(reduce=lambda lw, k: lw), "reduce over the k samples")
    _fails("05.log_likelihood", make_iw(reduce=lambda lw, k: P.log_mean_exp(lw, 0).mean()), "one value per data point")


# ---------------------------------------------------------------------------------------------- bad answers
def _not_implemented(*args):
    raise NotImplementedError()


def _other_dtype(t):
    return t.double() if t.dtype == torch.float32 else t.float()


@pytest.mark.parametrize("exercise_id", IDS)
def test_bad_answers_are_failures_not_crashes(exercise_id):
    ref = REFERENCES[exercise_id]
    _fails(exercise_id, _not_implemented, "not implemented")
    _fails(exercise_id, lambda *a: 1 / 0, "ZeroDivisionError")
    # (the answers below call the reference first: the decoder and the encoder must be called)
    _fails(exercise_id, lambda *a: (ref(*a), None)[1], "None")
    _fails(exercise_id, lambda *a: (ref(*a), "a string")[1], "torch.Tensor")
    _fails(exercise_id, lambda *a: ref(*a) * float("nan"), "NaN" if exercise_id != "05.vae_loss" else "nan")
    _fails(exercise_id, lambda *a: ref(*a)[None], "shape")
    _fails(exercise_id, lambda *a: ref(*a).numpy(force=True), "torch.Tensor")
    _fails(exercise_id, lambda *a: np.float64(ref(*a).sum().item()), "torch.Tensor")
    _fails(exercise_id, lambda *a: _other_dtype(ref(*a)), "dtype")
    _fails(exercise_id, lambda *a: ref(*a).to(torch.int64), "dtype")
    _fails(exercise_id, "not a function", "expected a function")
    _fails(exercise_id, 42, "expected a function")


def test_shape_slips_are_explained():
    _fails("05.reparameterize", lambda mu, lv: ref_reparameterize(mu, lv).sum(-1), "mu's shape")
    _fails("05.vae_loss", lambda *a: ref_vae_loss(*a)[None], "0-dimensional")
    _fails("05.vae_loss", lambda x, o, mu, lv, lik, s2=1.0: -P.bernoulli_log_prob(x, o) + P.kl_standard_normal(mu, lv)
           if lik == "bernoulli" else ref_vae_loss(x, o, mu, lv, lik, s2), "one number", "average")
    _fails("05.sample_prior", lambda *a: ref_sample_prior(*a)[:, :-1], "shape")


def test_verdicts_are_one_stable_line(capsys):
    check("05.vae_loss", ref_vae_loss)
    assert capsys.readouterr().out == ("[05.vae_loss] PASSED: matches the reference (values and gradients) on 10 "
                                       "random inputs: Bernoulli logits, and Gaussian means with sigma2 = 0.3, 2 and "
                                       "the default 1\n")
    check("05.reparameterize", _not_implemented)
    assert capsys.readouterr().out.startswith("[05.reparameterize] FAILED: not implemented yet")


def test_statistical_verdicts_are_reproducible():
    random_ids = ("05.reparameterize", "05.sample_prior", "05.log_likelihood")
    first = [check(i, REFERENCES[i], verbose=False).message for i in random_ids]
    again = [check(i, REFERENCES[i], verbose=False).message for i in random_ids]
    assert first == again
    wrong = make_iw(reduce=lambda lw, k: lw.mean(0))
    assert check("05.log_likelihood", wrong, verbose=False).message == \
        check("05.log_likelihood", wrong, verbose=False).message


def test_checks_do_not_disturb_the_random_state():
    torch.manual_seed(123)
    expected = torch.randn(3)
    torch.manual_seed(123)
    for exercise_id in IDS:
        check(exercise_id, REFERENCES[exercise_id], verbose=False)
    assert torch.equal(torch.randn(3), expected)


def test_an_answer_that_changes_its_inputs_in_place_fails_naming_the_argument():
    # an answer that modifies its inputs in place would corrupt the caller's tensors (and the check's)
    def in_place_reparameterize(mu, logvar):
        z = ref_reparameterize(mu.clone(), logvar.clone())
        with torch.no_grad():
            mu.zero_()
            logvar.add_(1.0)
        return z

    def in_place_loss(x, x_out, mu, logvar, likelihood, sigma2=1.0):
        out = ref_vae_loss(x.clone(), x_out.clone(), mu.clone(), logvar.clone(), likelihood, sigma2)
        x.zero_()
        return out

    def in_place_log_likelihood(x, encode, log_joint, k):
        out = ref_log_likelihood(x, encode, log_joint, k)
        x.add_(1.0)
        return out

    def in_place_decoder(decoder, n, latent_dim, likelihood):
        out = ref_sample_prior(decoder, n, latent_dim, likelihood)
        with torch.no_grad():
            decoder.linear.bias.mul_(2)
        return out

    _fails("05.reparameterize", in_place_reparameterize, "changed its input `mu` in place")
    _fails("05.vae_loss", in_place_loss, "changed its input `x` in place")
    _fails("05.log_likelihood", in_place_log_likelihood, "changed its input `x` in place")
    _fails("05.sample_prior", in_place_decoder, "changed its input `decoder` (its linear.bias) in place")


def test_the_loss_catalogue_names_are_the_hints_words():
    """Every slip of the catalogue has a name and a hint, and the catalogue's combinations are few enough to
    search quickly."""
    for options in C.LOSS_ASPECTS.values():
        assert options[0].name is None and options[0].key == "ok"
        assert all(o.name and o.hint for o in options[1:])
    assert sum(1 for _ in slip_combinations(C.LOSS_ASPECTS, C.MAX_SLIPS)) < 20_000


# ---------------------------------------------------------------------------------------------- hostile answers
# Wrong answers a student could write that the catalogue does not name, and correct ones written unlike the
# reference: the first must fail, the second pass.
def _stack_tensors(skip):
    """Every tensor in the callers' frames (locals, and one level into lists, tuples and dicts), except ``skip``."""
    found, frame = [], sys._getframe(2)
    while frame is not None:
        for v in list(frame.f_locals.values()):
            items = list(v.values()) if isinstance(v, dict) else list(v) if isinstance(v, (list, tuple)) else [v]
            found += [t for t in items if isinstance(t, torch.Tensor) and all(t is not s for s in skip)]
        frame = frame.f_back
    return found


def reparam_student_t(mu, logvar):                       # heavy-tailed noise, rescaled to variance 1
    eps = td.StudentT(5.0).sample(mu.shape).to(mu) * math.sqrt(3 / 5)
    return mu + torch.exp(0.5 * logvar) * eps


def reparam_clamped(mu, logvar):                         # "for stability": a clamped log-variance
    return mu + torch.exp(0.5 * logvar.clamp(-2, 2)) * torch.randn_like(mu)


_CACHE = {}


def reparam_cached(mu, logvar):                          # the noise drawn once per shape, then reused
    eps = _CACHE.setdefault(tuple(mu.shape), torch.randn(mu.shape, dtype=torch.float64))
    return mu + torch.exp(0.5 * logvar) * eps.to(mu)


def reparam_antithetic(mu, logvar):                      # variance reduction: rows paired as eps and -eps
    e = torch.randn((mu.shape[0] + 1) // 2, *mu.shape[1:], dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * torch.cat([e, -e])[: mu.shape[0]]


def reparam_from_the_stack(mu, logvar):                  # looks for a sample of mu's shape in the check's frames
    found = [t for t in _stack_tensors([mu, logvar]) if t.shape == mu.shape and not torch.equal(t, mu)]
    return found[0] if found else mu


def reparam_addcmul(mu, logvar):
    return torch.addcmul(mu, logvar.mul(0.5).exp(), torch.randn_like(mu))


def reparam_fills_a_new_tensor(mu, logvar):              # an in-place fill, of a tensor of its own
    eps = torch.empty_like(mu).normal_()
    return mu + eps * torch.sqrt(logvar.exp())


@pytest.mark.parametrize("wrong, words", [
    (reparam_student_t, ["does not look like the right distribution", "kurtosis"]),
    (reparam_clamped, ["does not look like the right distribution"]),
    (reparam_cached, ["the same noise at every call"]),
    (reparam_antithetic, ["antithetic"]),
    (reparam_from_the_stack, ["not random"]),
], ids=["student_t", "clamped_logvar", "cached_noise", "antithetic", "from_the_stack"])
def test_reparameterize_hostile_wrong_answers_fail(wrong, words):
    _fails("05.reparameterize", wrong, *words)


def test_reparameterize_hostile_correct_answers_pass():
    _ok("05.reparameterize", reparam_addcmul)
    _ok("05.reparameterize", reparam_fills_a_new_tensor)


def _recon(x, x_out, likelihood, sigma2):
    if likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(x_out, x, reduction="none").sum(-1)
    return ((x - x_out) ** 2).sum(-1) / (2 * sigma2) + x.shape[-1] / 2 * math.log(2 * math.pi * sigma2)


def loss_kl_of_swapped_roles(x, x_out, mu, logvar, likelihood, sigma2=1.0):
    return (_recon(x, x_out, likelihood, sigma2) + 0.5 * (logvar**2 + mu.exp() - 1 - mu).sum(-1)).mean()


def loss_always_bernoulli(x, x_out, mu, logvar, likelihood, sigma2=1.0):   # the `likelihood` argument ignored
    return (_recon(x, x_out, "bernoulli", sigma2) + P.kl_standard_normal(mu, logvar)).mean()


def loss_divided_by_the_latent_size(x, x_out, mu, logvar, likelihood, sigma2=1.0):
    return (_recon(x, x_out, likelihood, sigma2) + P.kl_standard_normal(mu, logvar)).sum() / mu.shape[-1]


def loss_constant_of_the_batch_size(x, x_out, mu, logvar, likelihood, sigma2=1.0):   # D taken from x.shape[0]
    recon = _recon(x, x_out, likelihood, sigma2)
    if likelihood == "gaussian":
        recon = recon + (x.shape[0] - x.shape[1]) / 2 * math.log(2 * math.pi * sigma2)
    return (recon + P.kl_standard_normal(mu, logvar)).mean()


FROM_THE_STACK_HITS = []


def loss_from_the_stack(x, x_out, mu, logvar, likelihood, sigma2=1.0):
    """Returns a scalar it finds in the check's frames; records any that is the expected value."""
    expected = ref_vae_loss(x.detach().clone(), x_out.detach().clone(), mu.detach().clone(), logvar.detach().clone(),
                            likelihood, sigma2)
    found = [t for t in _stack_tensors([x, x_out, mu, logvar]) if t.dim() == 0 and t.is_floating_point()]
    FROM_THE_STACK_HITS.extend(t for t in found if torch.allclose(t.detach().to(expected), expected))
    return (found[0].detach().to(x) if found else x.sum() * 0) + 0 * (x_out.sum() + mu.sum() + logvar.sum())


def loss_gaussian_nll_and_in_place_kl(x, x_out, mu, logvar, likelihood, sigma2=1.0):
    if likelihood == "bernoulli":
        recon = (x * F.softplus(-x_out) + (1 - x) * F.softplus(x_out)).sum(-1)
    else:
        recon = F.gaussian_nll_loss(x_out, x, torch.full_like(x, sigma2), full=True, reduction="none").sum(-1)
    kl = mu.pow(2)                                         # a new tensor: changing it in place is fine
    kl.add_(logvar.exp()).sub_(1).sub_(logvar)
    return (recon + 0.5 * kl.sum(-1)).mean()


@pytest.mark.parametrize("wrong", [loss_kl_of_swapped_roles, loss_always_bernoulli, loss_divided_by_the_latent_size,
                                   loss_constant_of_the_batch_size, loss_from_the_stack],
                         ids=["kl_swapped_roles", "always_bernoulli", "latent_size", "constant_of_N", "from_the_stack"])
def test_vae_loss_hostile_wrong_answers_fail(wrong):
    FROM_THE_STACK_HITS.clear()
    r = _fails("05.vae_loss", wrong, "the reference")
    assert "likely mistake" not in r.message           # no slip of the catalogue explains them
    assert FROM_THE_STACK_HITS == []                   # the expected loss is never on the stack


def test_vae_loss_hostile_correct_answer_passes():
    _ok("05.vae_loss", loss_gaussian_nll_and_in_place_kl)


def sample_prior_truncated(decoder, n, latent_dim, likelihood):          # latents clipped to [-2, 2]
    return make_sample_prior(draw=lambda n, d, like: torch.randn(n, d, **like).clamp(-2, 2))(
        decoder, n, latent_dim, likelihood)


def sample_prior_own_generator(decoder, n, latent_dim, likelihood):      # a fixed generator of its own
    g = torch.Generator().manual_seed(42)
    return make_sample_prior(draw=lambda n, d, like: torch.randn(n, d, generator=g, dtype=like["dtype"]))(
        decoder, n, latent_dim, likelihood)


def sample_prior_sorted(decoder, n, latent_dim, likelihood):             # sorted latents: not independent rows
    return make_sample_prior(draw=lambda n, d, like: torch.randn(n, d, **like).sort(0).values)(
        decoder, n, latent_dim, likelihood)


def sample_prior_forward_and_mvn(decoder, n, latent_dim, likelihood):
    p = next(decoder.parameters())
    prior = td.MultivariateNormal(torch.zeros(latent_dim, dtype=p.dtype, device=p.device),
                                  torch.eye(latent_dim, dtype=p.dtype, device=p.device))
    out = decoder.forward(prior.sample((n,)))
    return F.sigmoid(out) if likelihood == "bernoulli" else out


def sample_prior_transposed_noise(decoder, n, latent_dim, likelihood):
    p = next(decoder.parameters())
    out = decoder(torch.randn(latent_dim, n, dtype=p.dtype, device=p.device).T.contiguous())
    return out.sigmoid() if likelihood == "bernoulli" else out


@pytest.mark.parametrize("wrong, words", [
    (sample_prior_truncated, ["do not look like draws of the prior N(0, I)"]),
    (sample_prior_own_generator, ["the same samples at every call"]),
    (sample_prior_sorted, ["correlated"]),
], ids=["truncated", "own_generator", "sorted"])
def test_sample_prior_hostile_wrong_answers_fail(wrong, words):
    _fails("05.sample_prior", wrong, *words)


def test_sample_prior_hostile_correct_answers_pass():
    _ok("05.sample_prior", sample_prior_forward_and_mvn)      # decoder.forward(z) is seen too
    _ok("05.sample_prior", sample_prior_transposed_noise)


def iw_plus_log_q(x, encode, log_joint, k):                  # the weight p(x, z) * q(z | x)
    mu, logvar = encode(x)
    q = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
    z = q.rsample((k,))
    return torch.logsumexp(log_joint(x, z) + q.log_prob(z), 0) - math.log(k)


def iw_noise_shared_by_the_batch(x, encode, log_joint, k):    # eps of shape (k, 1, Dz): one noise for all points
    mu, logvar = encode(x)
    eps = torch.randn(k, 1, mu.shape[1], dtype=mu.dtype, device=mu.device)
    log_q = -0.5 * (math.log(2 * math.pi) + logvar + eps**2).sum(-1)
    return torch.logsumexp(log_joint(x, mu + torch.exp(0.5 * logvar) * eps) - log_q, 0) - math.log(k)


def iw_changes_the_encoder(x, encode, log_joint, k):
    out = ref_log_likelihood(x, encode, log_joint, k)
    with torch.no_grad():
        encode.c.add_(1.0)
    return out


def iw_from_the_stack(x, encode, log_joint, k):
    encode(x)
    found = [t for t in _stack_tensors([x]) if t.shape == x.shape[:1] and t.is_floating_point()]
    return found[0] if found else torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)


def iw_in_place_on_its_own_tensors(x, encode, log_joint, k):
    mu, logvar = encode(x)
    q = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
    z = q.rsample((k,))
    log_w = log_joint(x, z)
    log_w -= q.log_prob(z)
    return torch.special.logsumexp(log_w, 0) - torch.log(torch.tensor(float(k), dtype=x.dtype, device=x.device))


@pytest.mark.parametrize("wrong, words", [
    (iw_plus_log_q, ["differs from the mean", "standard errors away"]),
    (iw_noise_shared_by_the_batch, ["differs from the mean", "standard errors away"]),
    (iw_changes_the_encoder, ["changed its input `encode` (its c) in place"]),
    (iw_from_the_stack, ["differs from the mean"]),
], ids=["plus_log_q", "shared_noise", "changes_the_encoder", "from_the_stack"])
def test_log_likelihood_hostile_wrong_answers_fail(wrong, words):
    _fails("05.log_likelihood", wrong, *words)


def test_log_likelihood_hostile_correct_answer_passes():
    _ok("05.log_likelihood", iw_in_place_on_its_own_tensors)
