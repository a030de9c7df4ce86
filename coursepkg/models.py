"""The one vocabulary of the course's models, written once as :class:`typing.Protocol` classes.

Every latent-variable model of the book speaks it: :class:`coursepkg.gmm.GMM` (chapter 02),
:class:`coursepkg.elbo.LinearGaussianModel` (chapters 03-04), :class:`coursepkg.vae.VAE` (chapter 05),
and the models of chapters 06-10 (VAE variants, hierarchical VAEs, diffusion models), which implement
these protocols rather than inventing their own names.

:class:`LatentVariableModel`, a model ``p(x, z) = p(z) p(x | z)``:

- ``log_likelihood(x)`` is always ``log p(x)``, per data point ``(N,)``: exact where it has a closed form
  (a Gaussian mixture, the linear-Gaussian model), estimated otherwise (a VAE's importance-weighted bound);
- ``log_px_given_z(x, z)`` is ``log p(x | z)`` and ``log_joint(x, z)`` is ``log p(x, z)``, for latents
  ``z`` of shape ``(..., N, ...)`` (leading sample dimensions allowed), returning ``(..., N)``;
- ``sample(n, *, generator=None)`` returns a :class:`Sample` ``(x, z)``: ``x, z = model.sample(n)`` and
  ``model.sample(n).x`` both work. ``generator`` makes it repeatable.

:class:`TrainableModel`, a model :func:`coursepkg.train.fit` can train without being told how: an
``nn.Module`` whose ``loss(x)`` returns a dict of scalars, ``"loss"`` (what to minimise) first and the terms
it is made of (e.g. ``"recon"`` and ``"kl"``) after it, which ``fit`` logs.

Who relies on it:

- :func:`coursepkg.elbo.elbo` and :func:`coursepkg.elbo.iwae_bound` take either a ``log_joint(x, z)``
  callable or any model with a ``log_joint`` method;
- :func:`coursepkg.train.fit` calls ``model.loss(batch)`` when no ``loss=`` is given;
- the graders and the chapters call ``log_likelihood``, ``log_joint``, ``log_px_given_z`` and ``sample`` by
  these names on every model.

Both protocols are :func:`typing.runtime_checkable`: ``isinstance(model, LatentVariableModel)`` checks
that the methods exist (not their signatures).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol, runtime_checkable

import torch


class Sample(NamedTuple):
    """What every model's ``sample(n)`` returns: the data ``x`` (``n`` rows) and the latents ``z`` that
    generated them (``n`` rows: component indices for a mixture, vectors for a VAE)."""

    x: torch.Tensor
    z: torch.Tensor


@runtime_checkable
class LatentVariableModel(Protocol):
    """A model ``p(x, z) = p(z) p(x | z)`` in the course's vocabulary (see the module docstring)."""

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)``, exact or estimated, ``(N,)``."""
        ...

    def log_px_given_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x | z)``: ``x`` ``(N, ...)``, ``z`` ``(..., N, ...)`` -> ``(..., N)``."""
        ...

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``log p(x, z) = log p(z) + log p(x | z)``, shapes as :meth:`log_px_given_z`."""
        ...

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Sample:
        """``n`` ancestral samples, ``Sample(x, z)``."""
        ...


@runtime_checkable
class TrainableModel(Protocol):
    """An ``nn.Module`` that :func:`coursepkg.train.fit` trains by minimising ``loss(x)["loss"]``."""

    def loss(self, x: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """A dict of scalars: ``"loss"``, what to minimise, then its terms (logged by ``fit``)."""
        ...

    def parameters(self, recurse: bool = True):
        """The trainable parameters (as ``nn.Module.parameters``)."""
        ...
