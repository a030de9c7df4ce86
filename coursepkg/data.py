"""Data sets the chapters use. All are made here or shipped with scikit-learn: nothing is downloaded.

- :func:`toy_2d`: the 2-D toy sets (``gmm``, ``eight_gaussians``, ``two_moons``, ``swiss_roll``,
  ``checkerboard``), as ``(n, 2)`` tensors, from an explicit seed.
- :func:`mixture_1d`: samples ``(x, z)`` of a 1-D Gaussian mixture with their latent components, for
  the examples of marginals, Bayes' rule and, in chapter 02, EM.
- :func:`digits`: scikit-learn's 8x8 digits, scaled to [0, 1].
"""

from __future__ import annotations

import math

import torch

TOY_2D = ("gmm", "eight_gaussians", "two_moons", "swiss_roll", "checkerboard")


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return n


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None and seed is not None:
        raise ValueError("give either seed or generator, not both")
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


def mixture_1d(n: int, weights=(0.3, 0.7), means=(-2.0, 1.5), stds=(0.6, 1.0), *, seed: int | None = None,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws of the generative story ``z ~ Cat(weights)``, ``x | z ~ N(means[z], stds[z]^2)``.

    Returns ``(x, z)`` with ``x`` of shape ``(n,)`` and the component indices ``z`` (long) of shape ``(n,)``.
    """
    n = _check_n(n)
    w = torch.as_tensor(weights, dtype=dtype)
    m, s = torch.as_tensor(means, dtype=dtype), torch.as_tensor(stds, dtype=dtype)
    if not (w.dim() == m.dim() == s.dim() == 1 and len(w) == len(m) == len(s)):
        raise ValueError(f"weights, means and stds must be 1-D of one length, got {len(w)}, {len(m)}, {len(s)}")
    if torch.any(w < 0) or abs(w.sum().item() - 1) > 1e-6:
        raise ValueError("weights must be non-negative and sum to 1")
    if torch.any(s <= 0):
        raise ValueError("stds must be positive")
    gen = _generator(seed, generator)
    z = torch.multinomial(w, n, replacement=True, generator=gen)
    x = m[z] + s[z] * torch.randn(n, generator=gen, dtype=dtype)
    return x, z


def toy_2d(name: str, n: int, *, noise: float = 0.05, seed: int | None = None,
           generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` samples of a 2-D toy distribution, shape ``(n, 2)``, roughly within [-4, 4]^2.

    ``name`` is one of ``gmm`` (three anisotropic Gaussians), ``eight_gaussians`` (a ring of eight),
    ``two_moons``, ``swiss_roll`` and ``checkerboard``. ``noise`` scales the jitter of the
    continuous-shape sets.
    """
    n = _check_n(n)
    if name not in TOY_2D:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY_2D)}")
    if noise < 0:
        raise ValueError("noise must be non-negative")
    g = _generator(seed, generator)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    if name == "gmm":
        means = torch.tensor([[-2.0, -1.0], [2.0, -1.5], [0.0, 2.2]], dtype=torch.float64)
        chol = torch.tensor([[[0.8, 0.0], [0.5, 0.4]], [[0.5, 0.0], [-0.3, 0.7]], [[1.0, 0.0], [0.0, 0.35]]],
                            dtype=torch.float64)
        z = torch.multinomial(torch.tensor([0.35, 0.25, 0.4], dtype=torch.float64), n, replacement=True, generator=g)
        x = means[z] + (chol[z] @ randn(n, 2, 1)).squeeze(-1)
    elif name == "eight_gaussians":
        angles = torch.randint(0, 8, (n,), generator=g, dtype=torch.float64) * (2 * math.pi / 8)
        x = 2.5 * torch.stack([torch.cos(angles), torch.sin(angles)], 1) + (0.1 + noise) * randn(n, 2)
    elif name == "two_moons":
        upper = rand(n) < 0.5
        t = math.pi * rand(n)
        top = torch.stack([torch.cos(t), torch.sin(t)], 1)
        bottom = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)
        x = torch.where(upper[:, None], top, bottom)
        x = 1.5 * (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) + 2 * noise * randn(n, 2)
    elif name == "swiss_roll":
        t = 1.5 * math.pi * (1 + 2 * rand(n))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 4.0 + 2 * noise * randn(n, 2)
    else:  # checkerboard: uniform on the black squares of a 4x4 board over [-4, 4]^2
        col = torch.randint(0, 4, (n,), generator=g)
        row = 2 * torch.randint(0, 2, (n,), generator=g) + (col % 2)
        x = torch.stack([col, row], 1).double() * 2 - 4 + 2 * rand(n, 2)
    return x.to(dtype)


def digits(*, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn, no download).

    Returns ``(images, labels)``: ``images`` of shape ``(1797, 64)`` scaled to [0, 1], ``labels`` long.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return torch.as_tensor(bunch.data / 16.0, dtype=dtype), torch.as_tensor(bunch.target, dtype=torch.long)
