"""coursepkg.chains: ancestral sampling of a Markov chain of latents and its closed-form moments."""

from __future__ import annotations

import math

import pytest
import torch

from coursepkg import chains as C
from coursepkg import probability as P


def test_linear_chain_matches_its_closed_form_moments():
    eta, T, n = 0.1, 30, 200_000
    g = torch.Generator().manual_seed(0)
    x0 = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.3,
                     -2.0 + 0.6 * torch.randn(n, generator=g, dtype=torch.float64),
                     1.5 + torch.randn(n, generator=g, dtype=torch.float64))
    m0, v0 = x0.mean().item(), x0.var().item()
    chain = C.sample_chain(x0, lambda x: -x, eta, 1 - (1 - eta) ** 2, T, keep=(0, 10, T), generator=g)
    m_T, v_T = C.linear_chain_moments(m0, v0, eta, T)
    assert chain.x.shape == x0.shape and set(chain.states) == {0, 10, T}
    assert chain.states[0] is x0 and torch.equal(chain.states[T], chain.x)
    mean = P.mean_and_stderr(chain.x)
    assert abs(mean.estimate.item() - m_T) < 4.5 * mean.stderr.item()
    var = P.mean_and_stderr((chain.x - m_T) ** 2)
    assert abs(var.estimate.item() - v_T) < 4.5 * var.stderr.item()


def test_closed_form_moments_follow_the_recursion():
    for eta, noise_var in [(0.1, None), (0.3, 0.5), (2.0, 0.2)]:
        m, v = 1.7, 3.0
        for T in range(1, 12):
            m, v = (1 - eta) * m, (1 - eta) ** 2 * v + (1 - (1 - eta) ** 2 if noise_var is None else noise_var)
            assert C.linear_chain_moments(1.7, 3.0, eta, T, noise_var) == pytest.approx((m, v), rel=1e-12)
    m_T, v_T = C.linear_chain_moments(5.0, 9.0, 0.1, 200)                    # forgets the start: N(0, 1)
    assert abs(m_T) < 1e-8 and abs(v_T - 1) < 1e-8


def test_a_nonlinear_drift_and_a_two_dimensional_state():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(50_000, 2, generator=g, dtype=torch.float64) + 3.0
    chain = C.sample_chain(x0, lambda x: -x**3 / 10, 0.2, 0.01, 200, generator=g)   # settles near the origin
    assert chain.x.shape == (50_000, 2) and chain.states == {}
    assert chain.x.mean(0).abs().max() < 0.5
    again = C.sample_chain(x0, lambda x: -x**3 / 10, 0.2, 0.01, 200, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(again.x, chain.x)                                         # different noise
    first = C.sample_chain(x0, lambda x: -x, 0.1, 0.0, 1)                           # no noise: a plain step
    assert torch.allclose(first.x, 0.9 * x0)


def test_bad_input_is_a_clear_error():
    x0 = torch.zeros(4)
    with pytest.raises(TypeError, match="x0"):
        C.sample_chain([0.0, 1.0], lambda x: -x, 0.1, 0.1, 3)
    with pytest.raises(TypeError, match="drift"):
        C.sample_chain(x0, 3.0, 0.1, 0.1, 3)
    with pytest.raises(ValueError, match="eta"):
        C.sample_chain(x0, lambda x: -x, 0.0, 0.1, 3)
    with pytest.raises(ValueError, match="noise_var"):
        C.sample_chain(x0, lambda x: -x, 0.1, -1.0, 3)
    with pytest.raises(ValueError, match="n_steps"):
        C.sample_chain(x0, lambda x: -x, 0.1, 0.1, 0)
    with pytest.raises(ValueError, match="keep"):
        C.sample_chain(x0, lambda x: -x, 0.1, 0.1, 3, keep=(5,))
    with pytest.raises(ValueError, match="drift must return"):
        C.sample_chain(x0, lambda x: x.sum(), 0.1, 0.1, 3)
    with pytest.raises(ValueError, match="v0"):
        C.linear_chain_moments(0.0, -1.0, 0.1, 3)
    with pytest.raises(ValueError, match="noise_var"):
        C.linear_chain_moments(0.0, 1.0, 3.0, 3)
    assert math.isfinite(C.linear_chain_moments(0.0, 1.0, 3.0, 3, noise_var=0.5)[1])
