"""Chapter 03 checks: the reference passes, and so do correct answers written differently; typical
mistakes, written here as small wrong implementations, fail with a message that names the mistake; bad
answers never crash a check. Two checks are statistical: they seed torch inside the check, so each
verdict below is reproducible."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as td

from coursepkg import gmm as G
from coursepkg import probability as P
from coursepkg.elbo import LinearGaussianModel, gaussian_kl
from coursepkg.grading import check

from .helpers import check_fails, check_passes

IDS = ["03.elbo", "03.posterior_gap", "03.iwae", "03.gmm_elbo"]

_ok, _fails = check_passes, check_fails


# ---------------------------------------------------------------------------------------------- references
def ref_elbo(x, log_px_given_z, mu, logvar, n_samples):
    eps = torch.randn(n_samples, *mu.shape, dtype=mu.dtype, device=mu.device)
    return log_px_given_z(x, P.reparameterize(mu, logvar, eps)).mean(0) - P.kl_standard_normal(mu, logvar)


def ref_posterior_gap(x, W, b, noise_var, q_mean, q_var):
    q = td.Independent(td.Normal(q_mean, q_var.sqrt()), 1)
    return gaussian_kl(q, LinearGaussianModel(W, b, noise_var).posterior(x))


def ref_iwae(x, log_joint, mu, logvar, k):
    z = P.reparameterize(mu, logvar, torch.randn(k, *mu.shape, dtype=mu.dtype, device=mu.device))
    return P.log_mean_exp(log_joint(x, z) - P.gaussian_log_prob(z, mu, logvar), 0)


def ref_gmm_elbo(x, weights, means, covariances, q):
    joint = G.joint_log_prob(x, G.GMM(weights, means, covariances))
    return (q * joint).sum(1) - torch.xlogy(q, q).sum(1)


REFERENCES = {"03.elbo": ref_elbo, "03.posterior_gap": ref_posterior_gap, "03.iwae": ref_iwae,
              "03.gmm_elbo": ref_gmm_elbo}


@pytest.mark.parametrize("exercise_id", IDS)
def test_reference_implementations_pass(exercise_id):
    _ok(exercise_id, REFERENCES[exercise_id])


# ---------------------------------------------------------------------------------- the ELBO, and its slips
def make_elbo(*, std=lambda lv: torch.exp(0.5 * lv), kl_var=torch.exp, kl_log=lambda lv: lv, kl_sign=-1.0,
              kl_reduce=lambda t: t.sum(-1), recon_reduce=lambda t: t.mean(0), prior=False, detach=False):
    """A Monte Carlo ELBO written out in plain torch, with switches for the typical slips."""
    def elbo(x, log_px_given_z, mu, logvar, n_samples):
        eps = torch.randn(n_samples, *mu.shape, dtype=mu.dtype, device=mu.device)
        z = eps if prior else mu + std(logvar) * eps
        if detach:
            z = z.detach()
        kl = 0.5 * kl_reduce(mu**2 + kl_var(logvar) - 1.0 - kl_log(logvar))
        return recon_reduce(log_px_given_z(x, z)) + kl_sign * kl
    return elbo


def elbo_torch_distributions(x, log_px_given_z, mu, logvar, n_samples):
    q = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
    prior = td.Independent(td.Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    return log_px_given_z(x, q.rsample((n_samples,))).mean(0) - td.kl_divergence(q, prior)


def elbo_loop(x, log_px_given_z, mu, logvar, n_samples):
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(n_samples):
        total = total + log_px_given_z(x, mu + torch.exp(logvar / 2) * torch.randn_like(mu))
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return total / n_samples - kl


def elbo_expand(x, log_px_given_z, mu, logvar, n_samples):
    S = n_samples
    mu_s = mu.expand(S, *mu.shape)
    std_s = torch.exp(0.5 * logvar).expand(S, *mu.shape)
    z = mu_s + std_s * torch.randn_like(mu_s)
    return log_px_given_z(x, z).sum(0) / S - P.kl_standard_normal(mu, logvar)


def elbo_vmap(x, log_px_given_z, mu, logvar, n_samples):
    """log p(x | z) evaluated one sample at a time under torch.func.vmap: the samples are recorded all the same."""
    z = P.reparameterize(mu, logvar, torch.randn(n_samples, *mu.shape, dtype=mu.dtype, device=mu.device))
    return torch.func.vmap(lambda zs: log_px_given_z(x, zs))(z).mean(0) - P.kl_standard_normal(mu, logvar)


def elbo_point_by_point(x, log_px_given_z, mu, logvar, n_samples):
    """A Python loop over the data points, each with its own samples: log p(x_n | z) one point at a time."""
    out = []
    for n in range(x.shape[0]):
        eps = torch.randn(n_samples, 1, mu.shape[1], dtype=mu.dtype, device=mu.device)
        z = mu[n:n + 1] + torch.exp(0.5 * logvar[n:n + 1]) * eps                        # (S, 1, Dz)
        out.append(log_px_given_z(x[n:n + 1], z).mean(0))
    return torch.cat(out) - P.kl_standard_normal(mu, logvar)


def elbo_vmap_over_points(x, log_px_given_z, mu, logvar, n_samples):
    """vmap over the data points (the samples drawn first, one set per point)."""
    z = P.reparameterize(mu, logvar, torch.randn(n_samples, *mu.shape, dtype=mu.dtype, device=mu.device))
    ll = torch.func.vmap(lambda xi, zi: log_px_given_z(xi[None], zi[:, None])[:, 0], in_dims=(0, 1))(x, z)  # (N, S)
    return ll.mean(1) - P.kl_standard_normal(mu, logvar)


def elbo_point_by_point_shared_noise(x, log_px_given_z, mu, logvar, n_samples):
    """Wrong: the loop over the points reuses one set of noise for every point."""
    eps = torch.randn(n_samples, 1, mu.shape[1], dtype=mu.dtype, device=mu.device)
    out = [log_px_given_z(x[n:n + 1], mu[n:n + 1] + torch.exp(0.5 * logvar[n:n + 1]) * eps).mean(0)
           for n in range(x.shape[0])]
    return torch.cat(out) - P.kl_standard_normal(mu, logvar)


def test_elbo_answers_that_go_point_by_point_are_judged_on_their_samples():
    for answer in (elbo_point_by_point, elbo_vmap_over_points):
        r = _ok("03.elbo", answer)
        assert "independent draws from q" in r.message, r.message   # the samples, put back per point, were tested
    _fails("03.elbo", elbo_point_by_point_shared_noise, "the same noise for every data point")


def test_elbo_correct_but_differently_written_answers_pass():
    _ok("03.elbo", make_elbo())
    _ok("03.elbo", elbo_torch_distributions)
    _ok("03.elbo", elbo_loop)
    _ok("03.elbo", elbo_expand)
    r = _ok("03.elbo", elbo_vmap)
    assert "independent draws from q" in r.message                 # the samples inside vmap were tested


@pytest.mark.parametrize("wrong, words", [
    (make_elbo(kl_sign=+1.0), ["+KL"]),
    (make_elbo(prior=True), ["prior"]),
    (make_elbo(std=torch.exp), ["1/2 is missing"]),
    (make_elbo(std=torch.exp, kl_var=lambda lv: torch.exp(2 * lv), kl_log=lambda lv: 2 * lv), ["1/2 is missing"]),
    (make_elbo(std=torch.sqrt, kl_var=lambda lv: lv, kl_log=torch.log), ["logvar used as the variance"]),
    (make_elbo(std=torch.sqrt), ["logvar used as the variance"]),
    (make_elbo(kl_var=lambda lv: lv, kl_log=torch.log), ["logvar used as the variance"]),
    (make_elbo(kl_sign=0.0), ["KL term forgotten"]),
    (make_elbo(kl_reduce=lambda t: t.mean(-1)), ["averaged over the latent dimensions"]),
    (make_elbo(recon_reduce=lambda t: t.sum(0)), ["summed over the samples"]),
    (make_elbo(detach=True), ["not reparameterized"]),
], ids=["plus_kl", "prior", "exp_std", "exp_std_everywhere", "logvar_as_var", "logvar_as_var_sampling",
        "logvar_as_var_kl", "no_kl", "kl_mean", "recon_sum", "detached_sample"])
def test_elbo_mistakes(wrong, words):
    _fails("03.elbo", wrong, *words)


def test_elbo_without_reparameterization_is_named():
    def with_sample(x, log_px_given_z, mu, logvar, n_samples):   # .sample() instead of .rsample()
        q = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
        return log_px_given_z(x, q.sample((n_samples,))).mean(0) - P.kl_standard_normal(mu, logvar)

    def no_grad(x, log_px_given_z, mu, logvar, n_samples):
        with torch.no_grad():
            return ref_elbo(x, log_px_given_z, mu, logvar, n_samples)

    _fails("03.elbo", with_sample, "not reparameterized")
    _fails("03.elbo", no_grad, "not reparameterized")
    _fails("03.elbo", lambda *a: ref_elbo(*a).detach(), "not reparameterized")


def test_elbo_shape_dtype_and_nan_slips_are_explained():
    def per_sample(x, log_px_given_z, mu, logvar, n_samples):              # the mean over samples forgotten
        z = P.reparameterize(mu, logvar, torch.randn(n_samples, *mu.shape, dtype=mu.dtype))
        return log_px_given_z(x, z) - P.kl_standard_normal(mu, logvar)

    def kl_per_dimension(x, log_px_given_z, mu, logvar, n_samples):        # the KL not summed
        z = P.reparameterize(mu, logvar, torch.randn(n_samples, *mu.shape, dtype=mu.dtype))
        return log_px_given_z(x, z).mean(0)[:, None] - 0.5 * (mu**2 + logvar.exp() - 1 - logvar)

    def float64_noise(x, log_px_given_z, mu, logvar, n_samples):           # a hard-coded dtype
        z = mu + torch.exp(0.5 * logvar) * torch.randn(n_samples, *mu.shape, dtype=torch.float64)
        return log_px_given_z(x, z).mean(0) - P.kl_standard_normal(mu, logvar)

    def samples_last(x, log_px_given_z, mu, logvar, n_samples):            # z laid out (N, S, Dz)
        z = mu[:, None, :] + torch.exp(0.5 * logvar)[:, None, :] * torch.randn(mu.shape[0], n_samples, mu.shape[1],
                                                                              dtype=mu.dtype)
        return log_px_given_z(x, z).mean(1) - P.kl_standard_normal(mu, logvar)

    _fails("03.elbo", per_sample, "shape", "average the reconstruction over the n_samples samples")
    _fails("03.elbo", kl_per_dimension, "shape", "sum the KL over the latent dimensions")
    _fails("03.elbo", float64_noise, "dtype=mu.dtype")
    _fails("03.elbo", samples_last, "z must have shape")
    r = _fails("03.elbo", lambda *a: ref_elbo(*a) * float("nan"), "contains NaN")
    assert "logvar" not in r.message


def test_elbo_noisy_or_wrong_estimates_fail_with_a_statistical_message():
    _fails("03.elbo", lambda x, ll, mu, lv, S: ref_elbo(x, ll, mu, lv, 1), "standard errors", "n_samples")
    _fails("03.elbo", lambda x, ll, mu, lv, S: ref_elbo(x, ll, mu, lv, S) - 0.5, "standard errors")


# ---------------------------------------------------------------------------------- the gap, and its slips
def make_gap(*, prior=True, invert=True, precision_noise=False, subtract_b=True, logdet=1.0, half=0.5,
             reverse=False, q_var_is_std=False):
    """KL(q || p(z | x)) written out, with switches for the typical slips."""
    def gap(x, W, b, noise_var, q_mean, q_var):
        Dz = W.shape[1]
        Dinv = noise_var if precision_noise else 1.0 / noise_var
        Lam = W.T @ (W * Dinv[:, None]) + (torch.eye(Dz, dtype=W.dtype, device=W.device) if prior else 0.0)
        Sig = torch.linalg.inv(Lam)
        m_p = ((x - b if subtract_b else x) * Dinv) @ W @ Sig                    # (N, Dz); Sig is symmetric
        if not invert:
            Sig = Lam
        S_q = torch.diag_embed(q_var**2 if q_var_is_std else q_var)
        m_q = q_mean
        if reverse:
            (m_q, S_q), m_p, Sig = (m_p, Sig.expand_as(S_q)), q_mean, S_q
        prec = torch.linalg.inv(Sig).expand_as(S_q)
        d = m_p - m_q
        trace = torch.einsum("nij,nji->n", prec, S_q)
        maha = torch.einsum("ni,nij,nj->n", d, prec, d)
        logdets = torch.logdet(Sig) - torch.logdet(S_q)
        return half * (trace + maha - Dz + logdet * logdets)
    return gap


def gap_cholesky(x, W, b, noise_var, q_mean, q_var):
    """Another correct way: Cholesky factors, and the mean from a solve."""
    Dz = W.shape[1]
    Lam = torch.eye(Dz, dtype=W.dtype, device=W.device) + W.T @ torch.diag(1 / noise_var) @ W
    L = torch.linalg.cholesky(Lam)
    m_p = torch.cholesky_solve((W.T @ ((x - b) / noise_var).T), L).T
    d = m_p - q_mean
    return 0.5 * ((torch.diagonal(Lam) * q_var).sum(-1) + ((d @ L) ** 2).sum(-1) - Dz
                  - 2 * torch.log(torch.diagonal(L)).sum() - torch.log(q_var).sum(-1))


def test_gap_correct_but_differently_written_answers_pass():
    _ok("03.posterior_gap", make_gap())
    _ok("03.posterior_gap", gap_cholesky)


@pytest.mark.parametrize("wrong, words", [
    (make_gap(reverse=True), ["wrong direction"]),
    (make_gap(invert=False), ["Lambda instead of its inverse"]),
    (make_gap(prior=False), ["prior precision"]),
    (make_gap(logdet=0.0), ["log-determinant terms forgotten"]),
    (make_gap(logdet=-1.0), ["wrong sign"]),
    (make_gap(half=1.0), ["1/2"]),
    (make_gap(subtract_b=False), ["b not subtracted"]),
    (make_gap(precision_noise=True), ["noise_var used as a precision"]),
    (make_gap(q_var_is_std=True), ["standard deviation"]),
], ids=["reverse", "lambda_as_cov", "no_prior", "no_logdet", "logdet_sign", "no_half", "no_b", "noise_precision",
        "q_var_std"])
def test_gap_mistakes(wrong, words):
    _fails("03.posterior_gap", wrong, *words)


def test_gap_lambda_used_everywhere_is_named():
    def lam_everywhere(x, W, b, noise_var, q_mean, q_var):        # covariance Lambda, and Lambda in the mean too
        Dz = W.shape[1]
        Lam = torch.eye(Dz, dtype=W.dtype) + W.T @ (W / noise_var[:, None])
        m_p = ((x - b) / noise_var) @ W @ Lam
        q = td.Independent(td.Normal(q_mean, q_var.sqrt()), 1)
        return gaussian_kl(q, td.MultivariateNormal(m_p, covariance_matrix=Lam))

    _fails("03.posterior_gap", lam_everywhere, "Lambda instead of its inverse")


# ---------------------------------------------------------------------------------- the IWAE bound, and its slips
def make_iwae(*, reduce=lambda lw, k: torch.logsumexp(lw, 0) - math.log(k), sample="q", log_q="q",
              std=lambda lv: torch.exp(0.5 * lv)):
    """The importance-weighted bound in plain torch, with switches for the typical slips."""
    def iwae(x, log_joint, mu, logvar, k):
        eps = torch.randn(k, *mu.shape, dtype=mu.dtype, device=mu.device)
        s = std(logvar)
        z = eps if sample == "prior" else mu + s * eps
        log_w = log_joint(x, z)
        if log_q == "q":
            log_w = log_w - P.gaussian_log_prob(z, mu, logvar)
        elif log_q == "sampling":                            # the density of the (wrong) sampling distribution
            log_w = log_w - td.Independent(td.Normal(mu, s), 1).log_prob(z)
        elif log_q == "prior":
            log_w = log_w - P.gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
        return reduce(log_w, k)
    return iwae


def iwae_loop(x, log_joint, mu, logvar, k):
    """Another correct way: a loop over the k samples, a torch.distributions q, a running log-sum-exp."""
    q = td.Independent(td.Normal(mu, torch.exp(logvar / 2)), 1)
    acc = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
    for _ in range(k):
        z = q.rsample()
        acc = torch.logaddexp(acc, log_joint(x, z[None])[0] - q.log_prob(z))
    return acc - math.log(k)


def iwae_max_shift(x, log_joint, mu, logvar, k):
    """Another correct way: log-mean-exp by hand, with the maximum subtracted."""
    z = mu + torch.exp(0.5 * logvar) * torch.randn((k, *mu.shape), dtype=mu.dtype, device=mu.device)
    log_q = (-0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 / logvar.exp())).sum(-1)
    log_w = log_joint(x, z) - log_q
    m = log_w.max(0).values
    return m + torch.log(torch.exp(log_w - m).mean(0))


def iwae_vmap(x, log_joint, mu, logvar, k):
    """Another correct way: the log-weights of the k samples by torch.func.vmap, one sample at a time."""
    q = td.Independent(td.Normal(mu, torch.exp(logvar / 2)), 1)
    z = q.rsample((k,))
    log_w = torch.func.vmap(lambda zi: log_joint(x, zi[None])[0] - q.log_prob(zi))(z)
    return torch.logsumexp(log_w, 0) - math.log(k)


def iwae_point_by_point(x, log_joint, mu, logvar, k):
    """A loop over the data points (here each point's copies too), k samples for each."""
    out = []
    for n in range(x.shape[0]):
        eps = torch.randn(k, 1, mu.shape[1], dtype=mu.dtype, device=mu.device)
        log_q = (-0.5 * (eps ** 2 + math.log(2 * math.pi) + logvar[n:n + 1])).sum(-1)
        out.append(torch.logsumexp(log_joint(x[n:n + 1], mu[n:n + 1] + torch.exp(0.5 * logvar[n:n + 1]) * eps)
                                   - log_q, 0) - math.log(k))
    return torch.cat(out)


def test_iwae_correct_but_differently_written_answers_pass():
    _ok("03.iwae", make_iwae())
    _ok("03.iwae", iwae_loop)
    _ok("03.iwae", iwae_max_shift)
    r = _ok("03.iwae", iwae_vmap)
    assert "independent draws from q" in r.message
    r = _ok("03.iwae", iwae_point_by_point)                        # copies of a point are told apart in turn
    assert "independent draws from q" in r.message


def naive(log_w, k):
    return torch.log(torch.exp(log_w).mean(0))


@pytest.mark.parametrize("wrong, words", [
    (make_iwae(reduce=lambda lw, k: lw.mean(0)), ["averaged", "ELBO"]),
    (make_iwae(reduce=lambda lw, k: torch.logsumexp(lw, 0)), ["log k"]),
    (make_iwae(sample="prior"), ["prior"]),
    (make_iwae(sample="prior", log_q="prior"), ["prior"]),
    (make_iwae(log_q="none"), ["log q(z | x) forgotten"]),
    (make_iwae(reduce=naive), ["underflow", "logsumexp"]),
    (make_iwae(reduce=lambda lw, k: torch.log(torch.exp(lw).mean(0).clamp_min(1e-30))), ["underflow"]),
    (make_iwae(std=torch.exp), ["1/2 is missing"]),
    (make_iwae(std=torch.exp, log_q="sampling"), ["1/2 is missing"]),
], ids=["averaged", "no_log_k", "prior_sample", "prior_proposal", "no_log_q", "naive", "naive_clamped",
        "exp_std", "exp_std_everywhere"])
def test_iwae_mistakes(wrong, words):
    _fails("03.iwae", wrong, *words)


def test_iwae_shape_slips_are_explained():
    _fails("03.iwae", make_iwae(reduce=lambda lw, k: lw), "reduce over the k samples")
    _fails("03.iwae", make_iwae(reduce=lambda lw, k: P.log_mean_exp(lw, 0).mean()), "one value per data point")


# ---------------------------------------------------------------------------------- the GMM ELBO, and its slips
def log_joint_gmm(x, w, m, c):
    return torch.log(w) + td.MultivariateNormal(m, covariance_matrix=c).log_prob(x[:, None, :])


def test_gmm_elbo_correct_but_differently_written_answers_pass():
    def with_where(x, w, m, c, q):
        log_q = torch.where(q > 0, torch.log(q), torch.zeros_like(q))
        return (q * (log_joint_gmm(x, w, m, c) - log_q)).sum(1)

    def with_mvn_log_prob(x, w, m, c, q):
        joint = torch.log(w) + P.mvn_log_prob(x[:, None, :], m, c)
        return torch.einsum("nk,nk->n", q, joint) - torch.special.xlogy(q, q).sum(-1)

    _ok("03.gmm_elbo", with_where)
    _ok("03.gmm_elbo", with_mvn_log_prob)


@pytest.mark.parametrize("wrong, words", [
    (lambda x, w, m, c, q: (q * log_joint_gmm(x, w, m, c)).sum(1), ["entropy term forgotten", "Q function"]),
    (lambda x, w, m, c, q: (q * log_joint_gmm(x, w, m, c) + torch.xlogy(q, q)).sum(1), ["wrong sign"]),
    (lambda x, w, m, c, q: (q * (log_joint_gmm(x, w, m, c) - torch.log(q))).sum(1), ["0 log 0"]),
    (lambda x, w, m, c, q: (q * log_joint_gmm(x, w, m, c)).sum(1) - (q * torch.log(q)).sum(1), ["0 log 0"]),
    (lambda x, w, m, c, q: ref_gmm_elbo(x, w, m, c, q).mean(), ["one value per point"]),
    (lambda x, w, m, c, q: ref_gmm_elbo(x, w, m, c, q) - (q * torch.log(w)).sum(1), ["weights pi_k forgotten"]),
    (lambda x, w, m, c, q: torch.logsumexp(log_joint_gmm(x, w, m, c), 1), ["q ignored"]),
    (lambda x, w, m, c, q: (q * log_joint_gmm(x, w, m, c) - torch.xlogy(q, q)), ["sum over the K components"]),
], ids=["no_entropy", "entropy_sign", "nan", "nan_split", "mean", "no_weights", "q_ignored", "not_summed"])
def test_gmm_elbo_mistakes(wrong, words):
    _fails("03.gmm_elbo", wrong, *words)


# ---------------------------------------------------------------------------------------------- bad answers
def _not_implemented(*args):
    raise NotImplementedError()


@pytest.mark.parametrize("exercise_id", IDS)
def test_bad_answers_are_failures_not_crashes(exercise_id):
    ref = REFERENCES[exercise_id]
    _fails(exercise_id, _not_implemented, "not implemented")
    _fails(exercise_id, lambda *a: 1 / 0, "ZeroDivisionError")
    _fails(exercise_id, lambda *a: None, "None")
    _fails(exercise_id, lambda *a: "a string", "torch.Tensor")
    _fails(exercise_id, lambda *a: ref(*a) * float("nan"), "NaN")
    _fails(exercise_id, lambda *a: ref(*a)[:-1], "shape")
    _fails(exercise_id, lambda *a: ref(*a)[:, None], "shape")
    _fails(exercise_id, lambda *a: ref(*a).numpy(force=True), "torch.Tensor")
    _fails(exercise_id, lambda *a: ref(*a).double() if a[0].dtype == torch.float32 else ref(*a).float(), "dtype")
    _fails(exercise_id, "not a function", "expected a function")
    _fails(exercise_id, 42, "expected a function")


def test_verdicts_are_one_stable_line(capsys):
    check("03.gmm_elbo", ref_gmm_elbo)
    assert capsys.readouterr().out == ("[03.gmm_elbo] PASSED: matches the reference on 8 random inputs, and equals "
                                       "log p(x) when q is the posterior\n")
    check("03.elbo", _not_implemented)
    assert capsys.readouterr().out.startswith("[03.elbo] FAILED: not implemented yet")


def test_statistical_verdicts_are_reproducible():
    first = [check(i, REFERENCES[i], verbose=False).message for i in ("03.elbo", "03.iwae")]
    again = [check(i, REFERENCES[i], verbose=False).message for i in ("03.elbo", "03.iwae")]
    assert first == again
    wrong = make_iwae(reduce=lambda lw, k: lw.mean(0))
    assert check("03.iwae", wrong, verbose=False).message == check("03.iwae", wrong, verbose=False).message


def test_checks_do_not_disturb_the_random_state():
    torch.manual_seed(123)
    expected = torch.randn(3)
    torch.manual_seed(123)
    for exercise_id in IDS:
        check(exercise_id, REFERENCES[exercise_id], verbose=False)
    assert torch.equal(torch.randn(3), expected)


def test_an_answer_that_changes_its_inputs_in_place_fails_naming_the_input():
    def in_place_gap(x, W, b, noise_var, q_mean, q_var):
        out = ref_posterior_gap(x, W, b, noise_var, q_mean, q_var)
        q_var.mul_(3)
        W.zero_()
        return out

    def in_place_iwae(x, log_joint, mu, logvar, k):
        out = ref_iwae(x, log_joint, mu, logvar, k)
        mu.zero_()
        logvar.add_(1)
        return out

    _fails("03.posterior_gap", in_place_gap, "changed its input `W` in place")
    _fails("03.iwae", in_place_iwae, "changed its input `mu` in place")


# ---------------------------------------------------------------------------------------------- hostile answers
# Answers a student could write that are not in any catalogue: the wrong ones must fail (with the words the
# check should find), the correct ones written differently must pass.
def elbo_same_noise_for_every_point(x, log_px_given_z, mu, logvar, n_samples):
    eps = torch.randn(n_samples, 1, mu.shape[1], dtype=mu.dtype, device=mu.device)     # broadcast over the points
    return log_px_given_z(x, mu + torch.exp(0.5 * logvar) * eps).mean(0) - P.kl_standard_normal(mu, logvar)


def elbo_reseeded(x, log_px_given_z, mu, logvar, n_samples):
    torch.manual_seed(0)                                                                 # "for reproducibility"
    return ref_elbo(x, log_px_given_z, mu, logvar, n_samples)


def elbo_uniform_noise(x, log_px_given_z, mu, logvar, n_samples):
    # mean 0 and variance 1, so the estimate is even unbiased here (log p(x | z) is quadratic in z): only the
    # noise it is made of tells it from a correct answer
    eps = (torch.rand(n_samples, *mu.shape, dtype=mu.dtype, device=mu.device) - 0.5) * math.sqrt(12.0)
    return log_px_given_z(x, mu + torch.exp(0.5 * logvar) * eps).mean(0) - P.kl_standard_normal(mu, logvar)


def elbo_plug_in_mean(x, log_px_given_z, mu, logvar, n_samples):
    return log_px_given_z(x, mu[None]).mean(0) - P.kl_standard_normal(mu, logvar)         # z = mu: no sampling


def elbo_std_in_place(x, log_px_given_z, mu, logvar, n_samples):
    std = logvar.mul_(0.5).exp_()                                                        # overwrites logvar
    z = mu + std * torch.randn(n_samples, *mu.shape, dtype=mu.dtype, device=mu.device)
    return log_px_given_z(x, z).mean(0) - 0.5 * (mu**2 + std**2 - 1 - 2 * torch.log(std)).sum(-1)


def iwae_same_noise_for_every_point(x, log_joint, mu, logvar, k):
    z = mu + torch.exp(0.5 * logvar) * torch.randn(k, 1, mu.shape[1], dtype=mu.dtype, device=mu.device)
    return P.log_mean_exp(log_joint(x, z) - P.gaussian_log_prob(z, mu, logvar), 0)


def gap_mean_field_posterior(x, W, b, noise_var, q_mean, q_var):
    # the posterior's covariance replaced by its diagonal: right for Dz = 1 only
    post = LinearGaussianModel(W, b, noise_var).posterior(x)
    var = torch.diagonal(post.covariance_matrix, dim1=-2, dim2=-1)
    return P.kl_diag_gaussians(q_mean, torch.log(q_var), post.mean, torch.log(var))


def gmm_elbo_entropy_in_bits(x, w, m, c, q):
    return (q * log_joint_gmm(x, w, m, c)).sum(1) - (torch.xlogy(q, q) / math.log(2)).sum(1)


def _frame_reader(n_out):
    """An answer that looks through the caller's frames for any tensor of the output's shape it was not given."""
    import sys

    def answer(*args):
        mine = {id(a) for a in args}
        frame, found = sys._getframe(1), None
        while frame is not None and found is None:
            for value in frame.f_locals.values():
                if isinstance(value, torch.Tensor) and id(value) not in mine and value.dim() == 1 \
                        and value.shape[0] == n_out(*args) and value.is_floating_point():
                    found = value
                    break
            frame = frame.f_back
        return (found if found is not None else torch.zeros(n_out(*args))).to(dtype=args[0].dtype,
                                                                             device=args[0].device)
    return answer


@pytest.mark.parametrize("exercise_id, wrong, words", [
    ("03.elbo", elbo_same_noise_for_every_point, ["the same noise for every data point"]),
    ("03.elbo", elbo_reseeded, ["the same value at every call", "manual_seed"]),
    ("03.elbo", elbo_uniform_noise, ["uniform noise"]),
    ("03.elbo", elbo_plug_in_mean, ["not random"]),
    ("03.elbo", elbo_std_in_place, ["changed its input `logvar` in place"]),
    ("03.iwae", iwae_same_noise_for_every_point, ["the same noise for every data point"]),
    ("03.posterior_gap", gap_mean_field_posterior, ["differs from the reference"]),
    ("03.gmm_elbo", gmm_elbo_entropy_in_bits, ["differs from the reference"]),
    ("03.posterior_gap", _frame_reader(lambda x, *a: x.shape[0]), []),
    ("03.gmm_elbo", _frame_reader(lambda x, *a: x.shape[0]), []),
    ("03.elbo", _frame_reader(lambda x, *a: x.shape[0]), []),
    ("03.iwae", _frame_reader(lambda x, *a: x.shape[0]), []),
], ids=["elbo_shared_noise", "elbo_reseeded", "elbo_uniform", "elbo_plug_in", "elbo_in_place", "iwae_shared_noise",
        "gap_mean_field", "gmm_bits", "gap_frames", "gmm_frames", "elbo_frames", "iwae_frames"])
def test_hostile_wrong_answers_fail(exercise_id, wrong, words):
    _fails(exercise_id, wrong, *words)


def elbo_antithetic(x, log_px_given_z, mu, logvar, n_samples):
    half = torch.randn(n_samples // 2, *mu.shape, dtype=mu.dtype, device=mu.device)
    eps = torch.cat([half, -half])                                              # antithetic pairs: still unbiased
    return log_px_given_z(x, mu + torch.exp(0.5 * logvar) * eps).mean(0) - P.kl_standard_normal(mu, logvar)


def elbo_multivariate_normal(x, log_px_given_z, mu, logvar, n_samples):
    q = td.MultivariateNormal(mu, covariance_matrix=torch.diag_embed(logvar.exp()))
    prior = td.MultivariateNormal(torch.zeros_like(mu), covariance_matrix=torch.diag_embed(torch.ones_like(mu)))
    return log_px_given_z(x, q.rsample((n_samples,))).mean(0) - td.kl_divergence(q, prior)


def iwae_normal_log_prob(x, log_joint, mu, logvar, k):
    std = logvar.mul(0.5).exp()
    z = torch.distributions.Normal(mu, std).rsample((k,))
    log_w = log_joint(x, z) - torch.distributions.Normal(mu, std).log_prob(z).sum(-1)
    return torch.logsumexp(log_w - math.log(k), dim=0)


def gap_by_the_identity(x, W, b, noise_var, q_mean, q_var):
    model = LinearGaussianModel(W, b, noise_var)                         # log p(x) - ELBO(q), both exact
    return model.log_likelihood(x) - model.exact_elbo(x, td.Independent(td.Normal(q_mean, q_var.sqrt()), 1))


def gmm_elbo_small_epsilon(x, w, m, c, q):
    return (q * (log_joint_gmm(x, w, m, c) - torch.log(q + 1e-30))).sum(1)


@pytest.mark.parametrize("exercise_id, right", [
    ("03.elbo", elbo_antithetic), ("03.elbo", elbo_multivariate_normal), ("03.iwae", iwae_normal_log_prob),
    ("03.posterior_gap", gap_by_the_identity), ("03.gmm_elbo", gmm_elbo_small_epsilon),
], ids=["elbo_antithetic", "elbo_mvn", "iwae_normal", "gap_identity", "gmm_epsilon"])
def test_hostile_correct_answers_pass(exercise_id, right):
    _ok(exercise_id, right)
