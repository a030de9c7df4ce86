"""Tests of the helpers added to ``coursepkg.probability`` for the text of chapter 01."""

from __future__ import annotations

import math

import pytest
import torch

from coursepkg import probability as P


def test_bayes_rule_matches_a_hand_computation():
    prior = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    lik = torch.tensor([[0.1, 0.4, 0.2], [0.9, 0.05, 0.3]], dtype=torch.float64)
    log_ev, log_post = P.bayes_rule(prior.log(), lik.log())
    evidence = (prior * lik).sum(-1)
    assert log_ev.shape == (2,) and log_post.shape == (2, 3)
    torch.testing.assert_close(log_ev.exp(), evidence)
    torch.testing.assert_close(log_post.exp(), prior * lik / evidence[:, None])
    torch.testing.assert_close(log_post.exp().sum(-1), torch.ones(2, dtype=torch.float64))


def test_bayes_rule_evidence_is_a_gaussian_mixture_density():
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    means, stds = torch.tensor([-2.0, 1.5], dtype=torch.float64), torch.tensor([0.6, 1.0], dtype=torch.float64)
    x = torch.linspace(-5, 5, 41, dtype=torch.float64)
    log_lik = P.gaussian_log_prob(x[:, None, None], means[:, None], 2 * stds.log()[:, None])  # (41, 2)
    log_ev, _ = P.bayes_rule(weights.log(), log_lik)
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(weights),
                                                torch.distributions.Normal(means, stds))
    torch.testing.assert_close(log_ev, mix.log_prob(x))


def test_bayes_rule_is_stable_and_handles_zero_prior_mass():
    log_prior = torch.tensor([0.0, -math.inf])  # all mass on the first value
    log_lik = torch.tensor([[-1000.0, -999.0], [-2000.0, 0.0]])  # exp underflows in float32
    log_ev, log_post = P.bayes_rule(log_prior, log_lik)
    torch.testing.assert_close(log_ev, torch.tensor([-1000.0, -2000.0]))
    torch.testing.assert_close(log_post.exp(), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.isfinite(log_ev).all()


def test_bayes_rule_along_another_dim():
    g = torch.Generator().manual_seed(0)
    log_prior = torch.log_softmax(torch.randn(4, 1, generator=g, dtype=torch.float64), 0)
    log_lik = torch.randn(4, 5, generator=g, dtype=torch.float64)
    log_ev, log_post = P.bayes_rule(log_prior, log_lik, dim=0)
    ev_t, post_t = P.bayes_rule(log_prior.T, log_lik.T, dim=-1)
    torch.testing.assert_close(log_ev, ev_t)
    torch.testing.assert_close(log_post, post_t.T)


def test_bayes_rule_rejects_bad_input():
    with pytest.raises(ValueError, match="broadcast"):
        P.bayes_rule(torch.zeros(3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="dim"):
        P.bayes_rule(torch.zeros(3), torch.zeros(2, 3), dim=2)
    with pytest.raises(ValueError, match="scalar"):
        P.bayes_rule(torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(TypeError):
        P.bayes_rule([0.0, 0.0], torch.zeros(2))


def test_self_normalized_importance_matches_a_hand_computation():
    f = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    w = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64) * 8.0  # unnormalised
    est = P.self_normalized_importance(f, w.log())
    assert isinstance(est, P.MonteCarloEstimate) and est.n == 3
    torch.testing.assert_close(est.estimate, torch.tensor(2.0, dtype=torch.float64))
    se = math.sqrt(0.25 * 1.0 + 0.0625 * 0.0 + 0.0625 * 4.0)
    torch.testing.assert_close(est.stderr, torch.tensor(se, dtype=torch.float64))
    # equal weights: the plain sample mean
    vals = torch.randn(7, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(P.self_normalized_importance(vals, torch.zeros(7, dtype=torch.float64)).estimate,
                               vals.mean(0))


def test_self_normalized_importance_against_a_closed_form():
    # target N(1, 0.5), proposal N(0, 2): E[z] = 1, E[z^2] = 1.5
    g = torch.Generator().manual_seed(0)
    S = 200_000
    z = math.sqrt(2.0) * torch.randn(S, generator=g, dtype=torch.float64)
    log_w = P.gaussian_log_prob(z[:, None], 1.0, math.log(0.5)) - P.gaussian_log_prob(z[:, None], 0.0, math.log(2.0))
    est = P.self_normalized_importance(torch.stack([z, z**2], -1), log_w)
    assert est.estimate.shape == (2,) and est.n == S
    exact = torch.tensor([1.0, 1.5], dtype=torch.float64)
    assert ((est.estimate - exact).abs() <= 4 * est.stderr).all()
    # the standard error is the actual spread of the estimate over repetitions
    reps = []
    for _ in range(200):
        zr = math.sqrt(2.0) * torch.randn(500, generator=g, dtype=torch.float64)
        lw = P.gaussian_log_prob(zr[:, None], 1.0, math.log(0.5)) - P.gaussian_log_prob(zr[:, None], 0.0, math.log(2.0))
        reps.append(P.self_normalized_importance(zr, lw))
    spread = torch.stack([r.estimate for r in reps]).std()
    mean_se = torch.stack([r.stderr for r in reps]).mean()
    assert 0.8 < float(mean_se / spread) < 1.25


def test_self_normalized_importance_is_invariant_to_a_constant_and_follows_dim():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(50, 4, generator=g, dtype=torch.float64)
    log_w = torch.randn(50, generator=g, dtype=torch.float64)
    ref = P.self_normalized_importance(f, log_w)
    shifted = P.self_normalized_importance(f, log_w + 1000.0)  # exp would overflow
    torch.testing.assert_close(shifted.estimate, ref.estimate)
    torch.testing.assert_close(shifted.stderr, ref.stderr)
    full = P.self_normalized_importance(f, log_w[:, None].expand(50, 4))  # the same weights, full shape
    torch.testing.assert_close(full.estimate, ref.estimate)
    along = P.self_normalized_importance(f.T, log_w, dim=1)
    torch.testing.assert_close(along.estimate, ref.estimate)
    torch.testing.assert_close(along.stderr, ref.stderr)
    # zero weights (log 0 = -inf) drop samples
    lw0 = log_w.clone()
    lw0[10:] = -math.inf
    torch.testing.assert_close(P.self_normalized_importance(f, lw0).estimate,
                               P.self_normalized_importance(f[:10], log_w[:10]).estimate)


def test_self_normalized_importance_rejects_bad_input():
    f = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="4 weights but f_values has 5 samples"):
        P.self_normalized_importance(f, torch.zeros(4))
    with pytest.raises(ValueError, match="one weight per sample"):
        P.self_normalized_importance(f, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        P.self_normalized_importance(torch.zeros(3), torch.tensor([0.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match="every weight is zero"):
        P.self_normalized_importance(torch.zeros(3), torch.full((3,), -math.inf))
    with pytest.raises(ValueError, match="scalar"):
        P.self_normalized_importance(torch.tensor(1.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match="at least 2 samples"):
        P.self_normalized_importance(torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="dim=2"):
        P.self_normalized_importance(f, torch.zeros(5), dim=2)
    with pytest.raises(TypeError):
        P.self_normalized_importance([1.0, 2.0], torch.zeros(2))
