"""Chapter 01 checks: the reference passes; typical mistakes, written here as small wrong
implementations, fail with a message that names the mistake; bad answers never crash a check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coursepkg import probability as P
from coursepkg.grading import check

from .helpers import check_fails, check_passes

LOG2PI = math.log(2 * math.pi)


_ok, _fails = check_passes, check_fails  # short names for the many assertions below


# ---------------------------------------------------------------------------------------------- references
@pytest.mark.parametrize("exercise_id, fn", [
    ("01.gaussian_log_prob", P.gaussian_log_prob),
    ("01.kl_diag_gaussians", P.kl_diag_gaussians),
    ("01.mean_and_stderr", lambda v: (P.mean_and_stderr(v).estimate, P.mean_and_stderr(v).stderr)),
    ("01.reparameterize", lambda mu, lv, eps: P.reparameterize(mu, lv, eps)),
    ("01.gaussian_posterior", P.gaussian_posterior),
])
def test_reference_implementations_pass(exercise_id, fn):
    _ok(exercise_id, fn)


def test_a_correct_but_differently_written_answer_passes():
    # sigma computed with sqrt, the log-density through torch.distributions: still correct
    def log_prob(x, mu, logvar):
        return torch.distributions.Normal(mu, torch.sqrt(torch.exp(logvar))).log_prob(x).sum(dim=1)

    _ok("01.gaussian_log_prob", log_prob)
    _ok("01.reparameterize", lambda mu, lv, eps: mu + lv.exp().sqrt() * eps)

    def by_hand(v):
        n = len(v)
        return v.sum(0) / n, torch.sqrt(((v - v.mean(0)) ** 2).sum(0) / (n - 1) / n)

    _ok("01.mean_and_stderr", by_hand)


# ---------------------------------------------------------------------------------------------- mistakes
def test_gaussian_log_prob_mistakes():
    _fails("01.gaussian_log_prob",
           lambda x, mu, lv: (-0.5 * (LOG2PI + torch.log(lv) + (x - mu) ** 2 / lv)).sum(-1),
           "log-variance used as the variance")
    _fails("01.gaussian_log_prob",
           lambda x, mu, lv: (-0.5 * LOG2PI - torch.log(torch.exp(lv)) - 0.5 * ((x - mu) / torch.exp(lv)) ** 2).sum(-1),
           "without the 1/2")
    _fails("01.gaussian_log_prob",
           lambda x, mu, lv: (-0.5 * (lv + (x - mu) ** 2 / lv.exp())).sum(-1),
           "log(2*pi)")
    _fails("01.gaussian_log_prob",
           lambda x, mu, lv: (-0.5 * (LOG2PI + lv + (x - mu) ** 2 / lv.exp())).mean(-1),
           "mean over dimensions")


def test_kl_mistakes():
    def kl(mq, lq, mp, lp):
        return 0.5 * (lp - lq + (lq.exp() + (mq - mp) ** 2) / lp.exp() - 1).sum(-1)

    _fails("01.kl_diag_gaussians", lambda mq, lq, mp, lp: kl(mp, lp, mq, lq), "swapped")
    _fails("01.kl_diag_gaussians", lambda mq, lq, mp, lp: -kl(mq, lq, mp, lp), "sign")
    _fails("01.kl_diag_gaussians", lambda mq, lq, mp, lp: 2 * kl(mq, lq, mp, lp), "factor of 2")
    _fails("01.kl_diag_gaussians",
           lambda mq, lq, mp, lp: 0.5 * (torch.log(lp / lq) + (lq + (mq - mp) ** 2) / lp - 1).sum(-1),
           "log-variance used as the variance")
    _fails("01.kl_diag_gaussians",
           lambda mq, lq, mp, lp: 0.5 * (lp - lq + (lq.exp() + (mq - mp) ** 2) / lp.exp()).sum(-1),
           "missing -1")


def test_mean_and_stderr_mistakes():
    _fails("01.mean_and_stderr", lambda v: (v.mean(0), v.std(0)), "standard deviation returned as the standard error")
    _fails("01.mean_and_stderr", lambda v: (v.mean(0), v.std(0) / v.shape[0]), "dividing by n instead of sqrt(n)")
    _fails("01.mean_and_stderr", lambda v: (v.mean(0), v.var(0) / math.sqrt(v.shape[0])), "variance")
    _fails("01.mean_and_stderr",
           lambda v: (v.mean(0), torch.sqrt(((v - v.mean(0)) ** 2).mean(0)) / math.sqrt(v.shape[0])), "biased")


def test_reparameterize_mistakes():
    _fails("01.reparameterize", lambda mu, lv, eps: mu + torch.exp(lv) * eps, "without the 1/2")
    _fails("01.reparameterize", lambda mu, lv, eps: mu + lv * eps, "log-variance used as the standard deviation")
    _fails("01.reparameterize", lambda mu, lv, eps: (mu + torch.exp(0.5 * lv) * eps).detach(), "detached")
    _fails("01.reparameterize", lambda mu, lv, eps: mu.detach() + torch.exp(0.5 * lv) * eps, "no gradient reaches mu")

    def via_numpy(mu, lv, eps):
        z = mu.detach().numpy() + np.exp(0.5 * lv.detach().numpy()) * eps.numpy()
        return torch.from_numpy(z)

    _fails("01.reparameterize", via_numpy, "detached")


def test_gaussian_posterior_mistakes():
    _fails("01.gaussian_posterior",
           lambda x, m0, v0, vn: ((m0 / v0 + x / vn) / (1 / v0 + 1 / vn), v0 + vn), "variances added")
    _fails("01.gaussian_posterior",
           lambda x, m0, v0, vn: ((m0 * v0 + x * vn) / (v0 + vn), 1 / (1 / v0 + 1 / vn)), "weighted by variances")
    _fails("01.gaussian_posterior",
           lambda x, m0, v0, vn: ((m0 + x) / 2, 1 / (1 / v0 + 1 / vn)), "unweighted average")


# ---------------------------------------------------------------------------------------------- bad answers
def _not_implemented(*args):
    raise NotImplementedError()


@pytest.mark.parametrize("exercise_id", ["01.gaussian_log_prob", "01.kl_diag_gaussians", "01.mean_and_stderr",
                                         "01.reparameterize", "01.gaussian_posterior"])
def test_bad_answers_are_failures_not_crashes(exercise_id):
    _fails(exercise_id, _not_implemented, "not implemented")
    _fails(exercise_id, lambda *a: 1 / 0, "ZeroDivisionError")
    _fails(exercise_id, lambda *a: None, "None")
    _fails(exercise_id, "not a function", "expected a function")
    _fails(exercise_id, 42, "expected a function")


def test_wrong_type_shape_dtype_nan_are_named():
    _fails("01.gaussian_log_prob", lambda x, mu, lv: P.gaussian_log_prob(x, mu, lv).numpy(), "torch.Tensor")
    _fails("01.gaussian_log_prob", lambda x, mu, lv: P.gaussian_log_prob(x, mu, lv).sum(), "shape", "batch")
    _fails("01.gaussian_log_prob",
           lambda x, mu, lv: -0.5 * (LOG2PI + lv + (x - mu) ** 2 / lv.exp()), "shape", "last (event) dimension")
    _fails("01.gaussian_log_prob", lambda x, mu, lv: P.gaussian_log_prob(x, mu, lv).float(), "dtype")
    _fails("01.gaussian_log_prob", lambda x, mu, lv: P.gaussian_log_prob(x, mu, lv) * float("nan"), "NaN")
    _fails("01.mean_and_stderr", lambda v: v.mean(0), "expected a pair")
    _fails("01.mean_and_stderr", lambda v: (v.mean(0), v.std(0) / 2, 0), "expected a pair")


def test_exercise_id_errors_are_clear():
    with pytest.raises(ValueError, match="did you mean '01.gaussian_log_prob'"):
        check("01.gausian_log_prob", P.gaussian_log_prob)


def test_verdict_is_one_stable_line(capsys):
    r = check("01.kl_diag_gaussians", P.kl_diag_gaussians)
    out = capsys.readouterr().out
    assert out == "[01.kl_diag_gaussians] PASSED: matches the reference on 6 random inputs, and KL(q || q) = 0\n"
    assert bool(r) and r.passed and str(r) == out.strip()
    r2 = check("01.kl_diag_gaussians", _not_implemented)
    assert capsys.readouterr().out.startswith("[01.kl_diag_gaussians] FAILED: not implemented yet")
    assert not r2


def test_checks_do_not_disturb_the_random_state():
    torch.manual_seed(123)
    expected = torch.randn(3)
    torch.manual_seed(123)
    check("01.reparameterize", lambda mu, lv, eps: mu + torch.exp(0.5 * lv) * torch.randn_like(eps), verbose=False)
    assert torch.equal(torch.randn(3), expected)


def test_a_random_answer_fails():
    _fails("01.reparameterize", lambda mu, lv, eps: mu + torch.exp(0.5 * lv) * torch.randn_like(eps), "differs")
