"""Chapter 02 checks: the reference passes; typical mistakes, written here as small wrong
implementations, fail with a message that names the mistake; bad answers never crash a check."""

from __future__ import annotations

import inspect
import math
import sys

import pytest
import torch

from coursepkg import gmm as G
from coursepkg.grading import check

from .helpers import check_fails, check_passes

IDS = ["02.log_likelihood", "02.e_step", "02.m_step", "02.em"]


_ok, _fails = check_passes, check_fails  # short names for the many assertions below


# ---------------------------------------------------------------------------------------------- references
def ref_log_likelihood(x, weights, means, covariances):
    return G.log_likelihood(x, G.GMM(weights, means, covariances))


def ref_e_step(x, weights, means, covariances):
    return G.e_step(x, G.GMM(weights, means, covariances))


def ref_m_step(x, resp, reg_covar=1e-6):
    g = G.m_step(x, resp, reg_covar)
    return g.weights, g.means, g.covariances


def ref_em(x, weights, means, covariances, n_iter, reg_covar=1e-6):
    res = G.fit(x, weights.shape[0], init=G.GMM(weights, means, covariances), max_iter=n_iter, tol=0.0,
                reg_covar=reg_covar)
    return res.gmm.weights, res.gmm.means, res.gmm.covariances, res.history


@pytest.mark.parametrize("exercise_id, fn", [
    ("02.log_likelihood", ref_log_likelihood),
    ("02.e_step", ref_e_step),
    ("02.m_step", ref_m_step),
    ("02.em", ref_em),
])
def test_reference_implementations_pass(exercise_id, fn):
    _ok(exercise_id, fn)


# ------------------------------------------------------------------- a student's way: torch.distributions
def log_n(x, means, covariances):
    """log N(x_n; mu_k, Sigma_k), (N, K), the way a student may write it."""
    return torch.distributions.MultivariateNormal(means, covariance_matrix=covariances).log_prob(x[:, None, :])


def good_log_likelihood(x, w, m, c):
    return torch.logsumexp(torch.log(w) + log_n(x, m, c), dim=1)


def good_e_step(x, w, m, c):
    return torch.softmax(torch.log(w) + log_n(x, m, c), dim=1)


def good_m_step(x, resp, reg_covar=1e-6):
    N, D = x.shape
    nk = resp.sum(0)
    means = (resp.T @ x) / nk[:, None]
    covs = []
    for k in range(resp.shape[1]):
        d = x - means[k]
        covs.append((resp[:, k, None] * d).T @ d / nk[k] + reg_covar * torch.eye(D, dtype=x.dtype, device=x.device))
    return nk / N, means, torch.stack(covs)


def make_em(e_step=good_e_step, m_step=good_m_step, ll=good_log_likelihood, *, iters=lambda n: n,
            initial=True, final=True, before_m=False, pass_reg=True, reduce=lambda v: v.mean()):
    """An EM loop built from the given steps, with switches for the typical slips."""
    def em(x, w, m, c, n_iter, reg_covar=1e-6):
        history = [reduce(ll(x, w, m, c)).item()] if initial else []
        for _ in range(iters(n_iter)):
            resp = e_step(x, w, m, c)
            if before_m:
                history.append(reduce(ll(x, w, m, c)).item())
            w, m, c = m_step(x, resp, reg_covar) if pass_reg else m_step(x, resp)
            if not before_m and (final or _ < iters(n_iter) - 1):
                history.append(reduce(ll(x, w, m, c)).item())
        return w, m, c, history
    return em


def test_correct_but_differently_written_answers_pass():
    _ok("02.log_likelihood", good_log_likelihood)
    _ok("02.e_step", good_e_step)
    _ok("02.m_step", good_m_step)
    _ok("02.em", make_em())
    # the history as a 1-D tensor, and E-step / M-step from the reference: still correct
    def em_tensor_history(x, w, m, c, n_iter, reg_covar=1e-6):
        *params, hist = make_em()(x, w, m, c, n_iter, reg_covar)
        return (*params, torch.tensor(hist))

    _ok("02.em", em_tensor_history)
    _ok("02.em", make_em(ref_e_step, ref_m_step, ref_log_likelihood))


# ---------------------------------------------------------------------------------------------- mistakes
def test_log_likelihood_mistakes():
    _fails("02.log_likelihood", lambda x, w, m, c: (torch.log(w) + log_n(x, m, c)).sum(1), "sum of logs")
    _fails("02.log_likelihood", lambda x, w, m, c: torch.logsumexp(log_n(x, m, c), 1), "weights forgotten")
    _fails("02.log_likelihood", lambda x, w, m, c: torch.logsumexp(log_n(x, m, c), 1) - math.log(w.shape[0]),
           "log-mean-exp")
    _fails("02.log_likelihood", lambda x, w, m, c: torch.log((w * torch.exp(log_n(x, m, c))).sum(1)),
           "log-sum-exp")
    _fails("02.log_likelihood", lambda x, w, m, c: good_log_likelihood(x, w, m, c).mean(), "one value per point")
    _fails("02.log_likelihood", lambda x, w, m, c: good_log_likelihood(x, w, m, c).sum(), "one value per point")
    _fails("02.log_likelihood", lambda x, w, m, c: (torch.log(w) + log_n(x, m, c)).max(1).values, "max")
    _fails("02.log_likelihood", lambda x, w, m, c: torch.logsumexp(w + log_n(x, m, c), 1), "log pi_k")


def test_log_likelihood_underflow_is_named_even_when_computed_differently():
    # exp then a weighted sum, via a matrix product: NaN/-inf only on the far points
    def naive(x, w, m, c):
        return torch.log(torch.exp(log_n(x, m, c)) @ w)

    _fails("02.log_likelihood", naive, "log-sum-exp")

    def clamped(x, w, m, c):  # a clamp hides the -inf but not the mistake
        return torch.log((w * torch.exp(log_n(x, m, c))).sum(1).clamp_min(1e-300))

    _fails("02.log_likelihood", clamped, "log-sum-exp")

    def eps_added(x, w, m, c):  # the usual epsilon inside the normalisation: no NaN, still wrong far away
        p = w * torch.exp(log_n(x, m, c))
        return p / (p.sum(1, keepdim=True) + 1e-300)

    _fails("02.e_step", eps_added, "log-sum-exp")


def test_e_step_mistakes():
    def naive(x, w, m, c, dim=1):
        p = w * torch.exp(log_n(x, m, c))
        return p / p.sum(dim, keepdim=True)

    _fails("02.e_step", lambda x, w, m, c: naive(x, w, m, c, dim=0), "wrong axis")
    _fails("02.e_step", lambda x, w, m, c: torch.softmax(torch.log(w) + log_n(x, m, c), 0), "wrong axis")
    _fails("02.e_step", naive, "log-sum-exp")
    _fails("02.e_step", lambda x, w, m, c: torch.softmax(log_n(x, m, c), 1), "weights forgotten")
    _fails("02.e_step", lambda x, w, m, c: torch.log_softmax(torch.log(w) + log_n(x, m, c), 1),
           "log-responsibilities")
    _fails("02.e_step", lambda x, w, m, c: w * torch.exp(log_n(x, m, c)), "not normalised")
    _fails("02.e_step", lambda x, w, m, c: good_e_step(x, w, m, c).T, "transpose")


def test_m_step_mistakes():
    def m_step(x, resp, reg_covar=1e-6, *, weight_cov=True, denom=lambda nk: nk, center=None, reg=True,
               norm_weights=True, divide_means=True):
        N, D = x.shape
        nk = resp.sum(0)
        means = resp.T @ x / (nk[:, None] if divide_means else 1)
        covs = []
        for k in range(resp.shape[1]):
            d = x - (means[k] if center is None else center(x))
            r = resp[:, k, None] if weight_cov else torch.ones_like(resp[:, k, None])
            eye = torch.eye(D, dtype=x.dtype, device=x.device)
            covs.append((r * d).T @ d / denom(nk)[k] + (reg_covar if reg else 0) * eye)
        return (nk / N if norm_weights else nk), means, torch.stack(covs)

    _fails("02.m_step", lambda x, r, reg: m_step(x, r, reg, weight_cov=False), "not weighted")
    _fails("02.m_step", lambda x, r, reg: m_step(x, r, reg, weight_cov=False, denom=lambda nk: nk * 0 + len(x)),
           "not weighted")
    _fails("02.m_step", lambda x, r, reg: m_step(x, r, reg, denom=lambda nk: nk - 1), "N_k - 1")
    _fails("02.m_step", lambda x, r, reg: m_step(x, r, reg, norm_weights=False), "not normalised")
    _fails("02.m_step", lambda x, r, reg: m_step(x, r, reg, divide_means=False), "not divided by N_k")
    _fails("02.m_step", lambda x, r, reg: m_step(x, r, reg, reg=False), "reg_covar forgotten")
    _fails("02.m_step", lambda x, r, reg: m_step(x, r, reg, center=lambda x: x.mean(0)), "data mean")
    _fails("02.m_step", lambda x, r, reg: G.m_step(x, r, reg), "GMM")
    _fails("02.m_step", lambda x, r, reg: good_m_step(x, r, reg)[:2], "expected a tuple")


def test_em_mistakes():
    _fails("02.em", make_em(iters=lambda n: n - 1), "one iteration too few")
    _fails("02.em", make_em(iters=lambda n: n + 1), "one iteration too many")
    _fails("02.em", make_em(initial=False), "without the initial value")
    _fails("02.em", make_em(final=False), "final parameters")
    _fails("02.em", make_em(before_m=True), "before the M-step")
    _fails("02.em", make_em(pass_reg=False), "reg_covar not passed")
    _fails("02.em", make_em(reduce=lambda v: v.sum()), "total log-likelihood")

    def e_step_once(x, w, m, c, n_iter, reg_covar=1e-6):
        resp = good_e_step(x, w, m, c)
        history = [good_log_likelihood(x, w, m, c).mean().item()]
        for _ in range(n_iter):
            w, m, c = good_m_step(x, resp, reg_covar)
            history.append(good_log_likelihood(x, w, m, c).mean().item())
        return w, m, c, history

    _fails("02.em", e_step_once, "E-step not redone")

    def m_first(x, w, m, c, n_iter, reg_covar=1e-6):
        resp = torch.full((x.shape[0], w.shape[0]), 1.0 / w.shape[0], dtype=x.dtype, device=x.device)
        history = [good_log_likelihood(x, w, m, c).mean().item()]
        for _ in range(n_iter):
            w, m, c = good_m_step(x, resp, reg_covar)
            resp = good_e_step(x, w, m, c)
            history.append(good_log_likelihood(x, w, m, c).mean().item())
        return w, m, c, history

    _fails("02.em", m_first, "M-step before the E-step")

    def returns_initial(x, w, m, c, n_iter, reg_covar=1e-6):
        *_, hist = make_em()(x, w, m, c, n_iter, reg_covar)
        return w, m, c, hist

    _fails("02.em", returns_initial, "initial parameters returned")

    def decreasing(x, w, m, c, n_iter, reg_covar=1e-6):
        *params, hist = make_em()(x, w, m, c, n_iter, reg_covar)
        return (*params, [hist[0] - 0.5 * i for i in range(len(hist))])

    _fails("02.em", decreasing, "decreased")
    _fails("02.em", make_em(reduce=lambda v: -v.mean()), "negative log-likelihood")

    def per_point_history(x, w, m, c, n_iter, reg_covar=1e-6):
        *params, _ = make_em()(x, w, m, c, n_iter, reg_covar)
        return (*params, [good_log_likelihood(x, w, m, c)] * (n_iter + 1))

    _fails("02.em", per_point_history, "one number")
    _fails("02.em", lambda x, w, m, c, n, reg=1e-6: ref_em(x, w, m, c, n, reg)[:3], "expected a tuple")
    _fails("02.em", lambda x, w, m, c, n, reg=1e-6: (*ref_em(x, w, m, c, n, reg)[:3], None), "history is None")


# ---------------------------------------------------------------------------------------------- bad answers
def _not_implemented(*args):
    raise NotImplementedError()


@pytest.mark.parametrize("exercise_id", IDS)
def test_bad_answers_are_failures_not_crashes(exercise_id):
    _fails(exercise_id, _not_implemented, "not implemented")
    _fails(exercise_id, lambda *a: 1 / 0, "ZeroDivisionError")
    _fails(exercise_id, lambda *a: None, "None")
    _fails(exercise_id, lambda *a: "a string", "")
    _fails(exercise_id, lambda *a: (float("nan"),) * 4, "")
    _fails(exercise_id, "not a function", "expected a function")
    _fails(exercise_id, 42, "expected a function")


def test_wrong_type_dtype_nan_are_named():
    _fails("02.log_likelihood", lambda x, w, m, c: good_log_likelihood(x, w, m, c).numpy(), "torch.Tensor")
    _fails("02.log_likelihood", lambda x, w, m, c: good_log_likelihood(x, w, m, c).double(), "dtype")
    _fails("02.e_step", lambda x, w, m, c: good_e_step(x, w, m, c) * float("nan"), "NaN")
    _fails("02.m_step", lambda x, r, reg: tuple(t.tolist() for t in good_m_step(x, r, reg)), "torch.Tensor")
    _fails("02.em", lambda x, w, m, c, n, reg=1e-6: (*ref_em(x, w, m, c, n, reg)[:3], "history"), "list")
    _fails("02.log_likelihood",
           lambda x, w, m, c: torch.logsumexp(torch.log(w) + log_n(x, m, c), 1, keepdim=True), "keepdim")
    _fails("02.log_likelihood", lambda x, w, m, c: torch.log(w) + log_n(x, m, c), "log-sum-exp over dim=1")


def test_verdict_is_one_stable_line(capsys):
    check("02.e_step", ref_e_step)
    assert capsys.readouterr().out == ("[02.e_step] PASSED: matches the reference on 8 random inputs and on "
                                       "points far from every component (2 more)\n")
    check("02.em", _not_implemented)
    assert capsys.readouterr().out.startswith("[02.em] FAILED: not implemented yet")


def test_checks_do_not_disturb_the_random_state():
    torch.manual_seed(123)
    expected = torch.randn(3)
    torch.manual_seed(123)
    for exercise_id, fn in zip(IDS, (good_log_likelihood, good_e_step, good_m_step, make_em()), strict=True):
        check(exercise_id, fn, verbose=False)
    assert torch.equal(torch.randn(3), expected)


def test_an_answer_that_changes_its_inputs_in_place_fails():
    # an in-place change of an input is caught, and named with the argument it changed
    def in_place_m_step(x, resp, reg_covar=1e-6):
        out = good_m_step(x, resp, reg_covar)
        resp.mul_(0)
        x.mul_(2)
        return out

    _fails("02.m_step", in_place_m_step, "changed its input `x` in place")

    def in_place_em(x, w, m, c, n_iter, reg_covar=1e-6):
        out = make_em()(x, w, m, c, n_iter, reg_covar)
        w.zero_()
        c.mul_(3)
        return out

    _fails("02.em", in_place_em, "changed its input `w` in place")


# ---------------------------------------------------------------------------------------------- hostile answers
def _diag_log_n(x, m, c):
    """log N with the off-diagonal covariances ignored."""
    var = c.diagonal(dim1=1, dim2=2)                                  # (K, D)
    d = x[:, None, :] - m
    return -0.5 * (math.log(2 * math.pi) * x.shape[1] + torch.log(var).sum(1) + (d**2 / var).sum(2))


def test_wrong_answers_outside_the_catalogue_fail():
    # the covariance matrix treated as diagonal
    _fails("02.log_likelihood", lambda x, w, m, c: torch.logsumexp(torch.log(w) + _diag_log_n(x, m, c), 1),
           "differs from the reference")
    # the covariance handed to MultivariateNormal as its precision matrix
    def as_precision(x, w, m, c):
        log_n = torch.distributions.MultivariateNormal(m, precision_matrix=c).log_prob(x[:, None])
        return torch.logsumexp(torch.log(w) + log_n, 1)

    _fails("02.log_likelihood", as_precision, "differs from the reference")

    # the E-step without the -1/2 log det(Sigma_k) term
    def no_log_det(x, w, m, c):
        d = x[:, None, :] - m
        quad = torch.einsum("nkd,kde,nke->nk", d, torch.linalg.inv(c), d)
        return torch.softmax(torch.log(w) - 0.5 * quad, 1)

    _fails("02.e_step", no_log_det, "differs from the reference")

    # the covariance weighted by r_nk squared
    def squared_resp(x, resp, reg_covar=1e-6):
        w, mu, _ = good_m_step(x, resp, reg_covar)
        d = x[:, None, :] - mu
        cov = torch.einsum("nk,nkd,nke->kde", resp**2, d, d) / resp.sum(0)[:, None, None]
        return w, mu, cov + reg_covar * torch.eye(x.shape[1], dtype=x.dtype)

    _fails("02.m_step", squared_resp, "the covariances differs from the reference")

    # EM that stops early once the log-likelihood stops changing (a tolerance nobody asked for)
    def early_stop(x, w, m, c, n_iter, reg_covar=1e-6):
        history = [good_log_likelihood(x, w, m, c).mean().item()]
        for _ in range(n_iter):
            w, m, c = good_m_step(x, good_e_step(x, w, m, c), reg_covar)
            history.append(good_log_likelihood(x, w, m, c).mean().item())
            if abs(history[-1] - history[-2]) < 1e-3:
                break
        return w, m, c, history

    _fails("02.em", early_stop, "the history stops after 2 of the n_iter = 5 iterations")


def test_an_answer_that_reads_the_callers_frames_finds_nothing_to_copy():
    # a cheat: look through the check's frames for a tensor of the expected shape and return it
    def peek(shape_of):
        def answer(x, w, m, c):
            frame = inspect.currentframe().f_back
            while frame is not None:
                for value in frame.f_locals.values():
                    if isinstance(value, torch.Tensor) and value.shape == shape_of(x, w) and value.is_floating_point() \
                            and value is not x:
                        return value.detach().clone()
                frame = frame.f_back
            return torch.zeros(shape_of(x, w), dtype=x.dtype, device=x.device)
        return answer

    _fails("02.log_likelihood", peek(lambda x, w: x.shape[:1]))
    _fails("02.e_step", peek(lambda x, w: (x.shape[0], w.shape[0])))

    def peek_sys(x, w, m, c, n_iter, reg_covar=1e-6):   # sys._getframe, for the tuple of EM's results
        for depth in range(1, 12):
            try:
                frame = sys._getframe(depth)
            except ValueError:
                break
            for value in frame.f_locals.values():
                if isinstance(value, tuple) and len(value) == 4 and isinstance(value[3], list):
                    return value
        return w, m, c, [0.0] * (n_iter + 1)

    _fails("02.em", peek_sys)


def test_correct_answers_written_differently_pass():
    # log-likelihood by hand: Cholesky factor, triangular solve, log-determinant from its diagonal
    def cholesky_log_likelihood(x, w, m, c):
        L = torch.linalg.cholesky(c)                                                       # (K, D, D)
        d = (x[:, None, :] - m).unsqueeze(-1)                                              # (N, K, D, 1)
        sol = torch.linalg.solve_triangular(L, d, upper=False).squeeze(-1)                 # (N, K, D)
        log_det = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)               # (K,)
        log_n = -0.5 * ((sol**2).sum(-1) + log_det + x.shape[1] * math.log(2 * math.pi))
        return torch.logsumexp(torch.log(w) + log_n, 1)

    _ok("02.log_likelihood", cholesky_log_likelihood)

    # the E-step with the max subtracted by hand before exponentiating
    def max_shift_e_step(x, w, m, c):
        a = torch.log(w) + log_n(x, m, c)
        p = torch.exp(a - a.max(1, keepdim=True).values)
        return p / p.sum(1, keepdim=True)

    _ok("02.e_step", max_shift_e_step)

    # the M-step with torch.cov's weighted covariance, and weights normalised by their own sum
    def cov_m_step(x, resp, reg_covar=1e-6):
        nk = resp.sum(0)
        means = resp.T @ x / nk[:, None]
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        covs = [torch.cov(x.T, correction=0, aweights=resp[:, k]).reshape(x.shape[1], x.shape[1]) + reg_covar * eye
                for k in range(resp.shape[1])]
        return nk / nk.sum(), means, torch.stack(covs)

    _ok("02.m_step", cov_m_step)

    # EM on coursepkg.gmm objects, with a while loop, returning the tensors at the end
    def em_with_gmm_objects(x, w, m, c, n_iter, reg_covar=1e-6):
        gmm, history, it = G.GMM(w, m, c), [], 0
        history.append(G.log_likelihood(x, gmm).mean().item())
        while it < n_iter:
            gmm = G.m_step(x, G.e_step(x, gmm), reg_covar)
            history.append(G.log_likelihood(x, gmm).mean().item())
            it += 1
        return gmm.weights, gmm.means, gmm.covariances, history

    _ok("02.em", em_with_gmm_objects)
