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
