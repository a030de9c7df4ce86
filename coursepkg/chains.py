"""Chapter 02: a Markov chain of latents, sampled ancestrally (Eq. ``markov-chain-latents``).

The chain starts from ``x_0 ~ p_0`` and takes ``T`` small steps along a vector field ``s`` plus Gaussian
noise, ``x_t | x_{t-1} ~ N(x_{t-1} + eta s(x_{t-1}), sigma^2 I)``; only ``x_T`` is observed, so every
earlier state is a latent. Diffusion models (chapters 08 and 09) are chains of this form.

- :func:`sample_chain` runs the chain forwards from given start points (ancestral sampling) and keeps
  the states of the steps asked for;
- :func:`linear_chain_moments` gives the mean and variance of ``x_T`` in closed form for the linear
  field ``s(x) = -x`` (Eq. ``chain-moments``), against which the samples are checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch

from coursepkg import _validate as V


class Chain(NamedTuple):
    """What :func:`sample_chain` returns: ``x`` the last state ``x_T`` (the shape of the start), and
    ``states`` a dict ``{t: x_t}`` for the steps in ``keep`` (``0`` is the start itself)."""

    x: torch.Tensor
    states: dict[int, torch.Tensor]


def sample_chain(x0: torch.Tensor, drift: Callable[[torch.Tensor], torch.Tensor], eta: float, noise_var: float,
                 n_steps: int, *, keep: Iterable[int] = (), generator: torch.Generator | None = None) -> Chain:
    """Run ``n_steps`` steps of the chain ``x_t = x_{t-1} + eta * drift(x_{t-1}) + sqrt(noise_var) * eps_t``,
    ``eps_t ~ N(0, I)`` (Eq. ``markov-chain-latents``), from the start points ``x0``.

    ``x0`` holds one start per chain (any shape, e.g. ``(N,)`` or ``(N, D)``: samples of ``p_0``), and
    ``drift`` maps a state to a tensor of the same shape (the vector field ``s``). Every element moves
    independently given the drift. ``keep`` lists the steps ``t`` in ``0..n_steps`` whose states are
    returned in :attr:`Chain.states`. ``generator`` makes the noise repeatable.
    """
    x = V.tensor("x0", x0, floating=True, finite=True)
    V.function("drift", drift)
    eta = V.number("eta", eta, positive=True)
    sd = math.sqrt(V.number("noise_var", noise_var, nonnegative=True))
    n_steps = V.positive_int("n_steps", n_steps)
    keep = {V.integer("keep", t, minimum=0) for t in keep}
    if keep and max(keep) > n_steps:
        raise ValueError(f"keep must list steps in 0..n_steps={n_steps}, got {sorted(keep)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    states = {0: x} if 0 in keep else {}
    for t in range(1, n_steps + 1):
        step = drift(x)
        if not isinstance(step, torch.Tensor) or step.shape != x.shape:
            got = tuple(step.shape) if isinstance(step, torch.Tensor) else type(step).__name__
            raise ValueError(f"drift must return a tensor of the state's shape {tuple(x.shape)}, got {got}")
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                            device=x.device if generator is None else generator.device).to(x.device)
        x = x + eta * step + sd * noise
        if t in keep:
            states[t] = x
    return Chain(x, states)


def linear_chain_moments(m0, v0, eta: float, n_steps: int, noise_var: float | None = None
                         ) -> tuple[float, float]:
    """Mean and variance of ``x_T`` for the linear field ``s(x) = -x`` (Eq. ``chain-moments``).

    With ``a = 1 - eta`` the recursion is ``m_t = a m_{t-1}`` and ``v_t = a^2 v_{t-1} + noise_var``, so
    ``m_T = a^T m0`` and ``v_T = a^{2T} v0 + noise_var (1 - a^{2T}) / (1 - a^2)``. With the default
    ``noise_var = 1 - a^2`` the stationary variance is 1 and ``v_T = 1 + a^{2T} (v0 - 1)``: the chain
    forgets its start geometrically fast and its marginal approaches ``N(0, 1)``. ``m0`` and ``v0`` are
    the mean and the variance of the start (numbers, one coordinate).
    """
    m0, v0 = V.number("m0", m0), V.number("v0", v0, nonnegative=True)
    eta = V.number("eta", eta, positive=True)
    n_steps = V.positive_int("n_steps", n_steps)
    a2 = (1.0 - eta) ** 2
    noise_var = 1.0 - a2 if noise_var is None else V.number("noise_var", noise_var, nonnegative=True)
    if noise_var < 0:
        raise ValueError(f"the default noise_var = 1 - (1 - eta)^2 is negative for eta={eta}; pass noise_var")
    decay2 = a2 ** n_steps
    grown = n_steps * noise_var if a2 == 1.0 else noise_var * (1.0 - decay2) / (1.0 - a2)
    return (1.0 - eta) ** n_steps * m0, decay2 * v0 + grown
