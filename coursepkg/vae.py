r"""Chapter 05: the variational autoencoder.

The model and its inference network:

- prior :math:`p(z) = \mathcal N(0, I)`, ``z`` of dimension ``latent_dim``;
- decoder :math:`p_\theta(x \mid z)`: ``"bernoulli"``, independent pixels with logits ``decoder(z)``, or
  ``"gaussian"``, :math:`\mathcal N(x;\ \mathrm{decoder}(z),\ \sigma^2 I)` with a fixed (or learned) ``sigma2``;
- encoder :math:`q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \operatorname{diag}\sigma_\phi^2(x))`, the
  encoder network returning ``(mu, logvar)``.

The decoder may also be autoregressive (:class:`coursepkg.nn.AutoregressiveDecoder`, Bernoulli only):
:math:`p_\theta(x\mid z) = \prod_i p_\theta(x_i \mid x_{<i}, z)`, its logits computed from ``(z, x)`` in one pass
(teacher forcing) and its samples drawn pixel by pixel. Chapter 05 uses it to show posterior collapse.

Training minimises the negative ELBO per data point (Eq. ``vae-loss``), with one reparameterized sample
:math:`z = \mu + \sigma \odot \varepsilon` (Eq. ``reparam``) and the KL term in closed form (Eq. ``kl-std-normal``):

.. math:: -\mathrm{ELBO}(x) = -\log p_\theta(x \mid z) + \mathrm{KL}\big(q_\phi(z\mid x)\,\|\,\mathcal N(0, I)\big)

Reconstruction terms (summed over the ``D`` pixels):

- Gaussian: :math:`-\log p(x\mid z) = \frac{1}{2\sigma^2}\|x - \hat x\|^2 + \frac D2 \log(2\pi\sigma^2)`, the
  squared error up to a constant (Eq. ``gaussian-mse``). The lectures' ``F.mse_loss(x_hat, x,
  reduction="sum") + KLD`` is this loss with ``sigma2 = 0.5``, less the constant ``D/2 log(pi)``; a smaller
  ``sigma2`` weighs reconstruction more against the KL term, like ``beta = 2 sigma2`` on a plain MSE.
- Bernoulli: :math:`-\log p(x\mid z)` is the binary cross-entropy of the logits, summed (Eq. ``bernoulli-bce``):
  ``F.binary_cross_entropy(sigmoid(logits), x, reduction="sum")``, computed stably from the logits.

:meth:`VAE.log_likelihood` estimates :math:`\log p(x)` by importance sampling with ``k`` samples of ``q``
(Eq. ``iwae-bound``), in chunks so that ``k = 5000`` fits in memory on MNIST.

The VAE speaks the vocabulary of :mod:`coursepkg.models`: :meth:`VAE.log_likelihood` is (an estimate of)
:math:`\log p(x)`, :meth:`VAE.log_px_given_z` is :math:`\log p(x\mid z)`, :meth:`VAE.log_joint`,
:meth:`VAE.sample` returns ``Sample(x, z)`` and :meth:`VAE.loss` the dict :func:`coursepkg.train.fit` minimises.

Shapes: ``x`` is batch-first, ``(N, D)`` for an MLP model, ``(N, C, H, W)`` or flat for a conv one; latents
are ``(N, latent_dim)``; per-point quantities ``(N,)``; losses are means over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import distributions as td
from torch import nn

from coursepkg import _validate as V
from coursepkg import elbo as E
from coursepkg import probability as P
from coursepkg.models import Sample
from coursepkg.nn import MLP, ConvDecoder, ConvEncoder

LIKELIHOODS = ("bernoulli", "gaussian")
IWAE_CHUNK_ELEMENTS = 2**24
"""How many decoded numbers (``samples x batch x D``) :meth:`VAE.log_likelihood` handles at once."""


class VAE(nn.Module):
    """A VAE from an ``encoder`` (``x -> (mu, logvar)``, or ``x -> (N, 2 * latent_dim)`` split in two) and a
    ``decoder`` (``z (N, latent_dim) -> logits or means``, flat ``(N, D)`` or any per-point shape).

    ``likelihood`` is ``"bernoulli"`` (data in [0, 1]; the decoder gives logits) or ``"gaussian"`` (the
    decoder gives means; ``sigma2`` is the observation variance, a parameter when ``learn_sigma2=True``).
    A decoder with a true attribute ``autoregressive`` (:class:`~coursepkg.nn.AutoregressiveDecoder`) is
    called as ``decoder(z, x)`` and must have ``sample(z) -> (x, probs)``; it needs the Bernoulli likelihood.
    :meth:`mlp` and :meth:`conv` build the usual architectures in one line.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood: str = "bernoulli",
                 sigma2: float = 1.0, learn_sigma2: bool = False):
        super().__init__()
        for name, net in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(net, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(net).__name__}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}")
        if learn_sigma2 and likelihood != "gaussian":
            raise ValueError("learn_sigma2 applies to the gaussian likelihood only")
        self.autoregressive = bool(getattr(decoder, "autoregressive", False))
        if self.autoregressive and likelihood != "bernoulli":
            raise ValueError("an autoregressive decoder needs the bernoulli likelihood")
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim = V.positive_int("latent_dim", latent_dim)
        self.likelihood = likelihood
        log_sigma2 = torch.tensor(math.log(V.number("sigma2", sigma2, positive=True)))
        if learn_sigma2:
            self.log_sigma2 = nn.Parameter(log_sigma2)
        else:
            self.register_buffer("log_sigma2", log_sigma2)

    @classmethod
    def mlp(cls, x_dim: int, hidden: int | Sequence[int] = (400,), latent_dim: int = 20, *,
            likelihood: str = "bernoulli", activation: type[nn.Module] = nn.ReLU, **kwargs) -> VAE:
        """MLP encoder ``x_dim -> hidden -> 2 latent_dim`` and decoder ``latent_dim -> reversed(hidden) -> x_dim``.

        ``VAE.mlp(784, (400,), 20)`` is the classic MNIST VAE (the PyTorch example: ReLU, one hidden layer
        of 400 units, 20 latents, Bernoulli likelihood). ``kwargs`` go to :class:`VAE` (``sigma2``,
        ``learn_sigma2``).
        """
        hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        encoder = MLP(x_dim, hidden, 2 * V.positive_int("latent_dim", latent_dim), activation)
        decoder = MLP(latent_dim, hidden[::-1], x_dim, activation)
        return cls(encoder, decoder, latent_dim, likelihood, **kwargs)

    @classmethod
    def conv(cls, in_shape: Sequence[int], latent_dim: int, channels: Sequence[int] = (32, 64), *,
             likelihood: str = "bernoulli", activation: type[nn.Module] = nn.SiLU, **kwargs) -> VAE:
        """:class:`~coursepkg.nn.ConvEncoder` and its mirror :class:`~coursepkg.nn.ConvDecoder` for images of
        shape ``in_shape = (C, H, W)``. It takes images ``(N, C, H, W)`` or flat ``(N, C*H*W)``; :meth:`sample`
        and :meth:`decode` give images ``(N, C, H, W)``."""
        channels = tuple(channels)
        encoder = ConvEncoder(in_shape, 2 * V.positive_int("latent_dim", latent_dim), channels, activation)
        decoder = ConvDecoder(latent_dim, in_shape, channels[::-1], activation)
        return cls(encoder, decoder, latent_dim, likelihood, **kwargs)

    def extra_repr(self) -> str:
        sigma = f", sigma2={self.sigma2.item():.4g}" if self.likelihood == "gaussian" else ""
        return f"latent_dim={self.latent_dim}, likelihood={self.likelihood!r}{sigma}"

    @property
    def sigma2(self) -> torch.Tensor:
        """The Gaussian likelihood's variance ``exp(log_sigma2)`` (a scalar tensor)."""
        return self.log_sigma2.exp()

    # ----------------------------------------------------------------------------------------------
    # the three pieces
    # ----------------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The parameters of :math:`q(z\mid x)`: ``(mu, logvar)``, each ``(N, latent_dim)`` (Eq. ``amortized-q``)."""
        x = self._check_x(x)
        out = self.encoder(x)
        if isinstance(out, torch.Tensor):
            if out.dim() != 2 or out.shape[1] != 2 * self.latent_dim:
                raise ValueError(f"the encoder must return (N, 2 * latent_dim) = (N, {2 * self.latent_dim}) numbers "
                                 f"or a pair (mu, logvar); got shape {list(out.shape)}")
            mu, logvar = out.chunk(2, dim=1)
        else:
            mu, logvar = out
        for name, t in (("mu", mu), ("logvar", logvar)):
            if tuple(t.shape) != (x.shape[0], self.latent_dim):
                raise ValueError(f"the encoder's {name} must have shape ({x.shape[0]}, {self.latent_dim}), "
                                 f"got {list(t.shape)}")
        return mu, logvar

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None, *,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        r""":math:`z = \mu + \exp(\tfrac12 \log\sigma^2) \odot \varepsilon` (Eq. ``reparam``).

        Uses :func:`coursepkg.probability.reparameterize`; ``eps`` fixes the noise."""
        return P.reparameterize(mu, logvar, eps, generator=generator)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's output for latents ``z (..., latent_dim)``: logits (Bernoulli) or means (Gaussian),
        shape ``(..., *decoder output shape)``; leading sample dimensions are folded into the batch.

        ``x (N, D)`` is for an autoregressive decoder only, and required by it: the pixels its logits are
        conditioned on (teacher forcing), shared by every sample of ``z (..., N, latent_dim)``."""
        if not isinstance(z, torch.Tensor) or z.dim() < 1 or z.shape[-1] != self.latent_dim:
            got = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must have shape (..., {self.latent_dim}), got {got}")
        if (x is None) == self.autoregressive:
            raise ValueError("an autoregressive decoder needs x, the pixels it conditions on (use sample() to "
                             "generate)" if self.autoregressive else "x is only for an autoregressive decoder")
        if x is None:
            out = self.decoder(z.reshape(-1, self.latent_dim))
        else:
            if z.dim() < 2 or z.shape[-2] != x.shape[0]:
                raise ValueError(f"z must have shape (..., N, {self.latent_dim}) with N = {x.shape[0]}, the rows "
                                 f"of x; got {list(z.shape)}")
            x = x.reshape(x.shape[0], -1).expand(*z.shape[:-1], -1)
            out = self.decoder(z.reshape(-1, self.latent_dim), x.reshape(-1, x.shape[-1]))
        return out.reshape(*z.shape[:-1], *out.shape[1:])

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        r"""The mean of :math:`p(x\mid z)` from the decoder's output: ``sigmoid(logits)`` or the Gaussian mean."""
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def log_px_given_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x\mid z)`, summed over the ``D`` pixels (Eqs. ``gaussian-mse`` and ``bernoulli-bce``).

        ``x`` is ``(N, ...)`` (flat or image, as long as it holds the ``D`` numbers the decoder gives per
        point); ``z`` is ``(N, latent_dim)`` or ``(S, N, latent_dim)``; returns ``(N,)`` or ``(S, N)``.
        """
        x = self._check_x(x)
        xf = x.reshape(x.shape[0], -1)
        out = self.decode(z, xf) if self.autoregressive else self.decode(z)
        of = out.reshape(*z.shape[:-1], -1)
        if z.dim() < 2 or z.shape[-2] != xf.shape[0] or of.shape[-1] != xf.shape[-1]:
            raise ValueError(f"x {list(x.shape)} and z {list(z.shape)} do not match: z must be (N, latent_dim) or "
                             f"(S, N, latent_dim) with N = {xf.shape[0]}, and the decoder must give as many numbers "
                             f"per point as x has ({xf.shape[-1]}); it gives {of.shape[-1]} ({list(out.shape)})")
        if self.likelihood == "bernoulli":
            return P.bernoulli_log_prob(xf, of)
        return P.gaussian_log_prob(xf, of, self.log_sigma2)

    # ----------------------------------------------------------------------------------------------
    # the objective
    # ----------------------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, *, beta: float = 1.0, free_bits: float = 0.0,
             eps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        r"""The negative ELBO averaged over the batch, with one reparameterized sample (Eq. ``vae-loss``).

        Returns a dict of scalars: ``loss``, what to minimise; ``recon``, the mean of
        :math:`-\log p(x\mid z)`; ``kl``, the mean of :math:`\mathrm{KL}(q(z\mid x)\,\|\,\mathcal N(0, I))`
        in closed form (Eq. ``kl-std-normal``). With the defaults ``loss = recon + kl``, the negative ELBO.

        - ``beta`` weighs the KL term, ``loss = recon + beta * kl``: the beta-VAE (``beta > 1``), and KL
          annealing (``beta`` grown from 0 to 1 over the first steps).
        - ``free_bits = lambda > 0`` (nats per latent dimension) replaces the KL term by
          :math:`\sum_j \max(\lambda, \overline{\mathrm{KL}}_j)`, with :math:`\overline{\mathrm{KL}}_j` the KL
          of latent ``j`` averaged over the batch (Kingma et al., 2016): no gradient pushes a latent below
          ``lambda`` nats, against posterior collapse. ``kl`` still reports the true KL.
        - ``eps`` ``(N, latent_dim)`` fixes the noise of the sample (tests, figures).
        """
        beta = V.number("beta", beta, nonnegative=True)
        free_bits = V.number("free_bits", free_bits, nonnegative=True)
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, eps)
        recon = -self.log_px_given_z(x, z)                                  # (N,)
        kl_dims = P.kl_standard_normal(mu.unsqueeze(-1), logvar.unsqueeze(-1))           # (N, latent_dim)
        kl = kl_dims.sum(-1)                                                              # (N,)
        kl_term = kl_dims.mean(0).clamp(min=free_bits).sum() if free_bits > 0 else kl.mean()
        recon_mean = recon.mean()
        return {"loss": recon_mean + beta * kl_term, "recon": recon_mean, "kl": kl.mean()}

    def elbo(self, x: torch.Tensor, n_samples: int = 1) -> torch.Tensor:
        r"""The ELBO per data point, ``(N,)``: the mean of :math:`\log p(x\mid z_s)` over ``n_samples``
        reparameterized samples, minus the KL in closed form (Eq. ``elbo-recon-kl``). Differentiable."""
        n_samples = V.positive_int("n_samples", n_samples)
        mu, logvar = self.encode(x)
        eps = torch.randn(n_samples, *mu.shape, dtype=mu.dtype, device=mu.device)
        z = self.reparameterize(mu, logvar, eps)                                          # (S, N, latent_dim)
        return self.log_px_given_z(x, z).mean(0) - P.kl_standard_normal(mu, logvar)

    def q(self, x: torch.Tensor) -> td.Independent:
        r""":math:`q(z\mid x)` as a torch distribution with batch shape ``(N,)``, for :mod:`coursepkg.elbo`."""
        mu, logvar = self.encode(x)
        return td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x, z) = \log p(x\mid z) + \log \mathcal N(z; 0, I)`: ``x`` ``(N, ...)``, ``z``
        ``(S, N, latent_dim)`` -> ``(S, N)``; the ``log_joint`` of :func:`coursepkg.elbo.elbo` and
        :func:`coursepkg.elbo.iwae_bound`."""
        log_prior = P.gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
        return self.log_px_given_z(x, z) + log_prior

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int = 1000, *, chunk_size: int | None = None) -> torch.Tensor:
        r"""Importance-sampled estimate of :math:`\log p(x)` per data point, ``(N,)`` (Eq. ``iwae-bound``):

        .. math:: \log \frac1k \sum_{i=1}^k \frac{p(x, z_i)}{q(z_i\mid x)},\qquad z_i \sim q(z\mid x),

        a lower bound in expectation that tightens as ``k`` grows (``k = 1`` is the ELBO, with a sampled KL).
        The ``k`` samples are drawn ``chunk_size`` at a time (default: about ``2**24`` decoded numbers a
        chunk), each chunk a :func:`coursepkg.elbo.iwae_bound`, combined by log-sum-exp. Not differentiable.
        """
        k = V.positive_int("k", k)
        x = self._check_x(x)
        n, d = x.shape[0], x[0].numel()
        chunk = chunk_size if chunk_size is not None else max(1, IWAE_CHUNK_ELEMENTS // (n * d))
        chunk = min(V.positive_int("chunk_size", chunk), k)
        q = self.q(x)
        parts, done = [], 0
        while done < k:
            s = min(chunk, k - done)
            parts.append(E.iwae_bound(x, self.log_joint, q, s).estimate + math.log(s))  # log sum_i w_i of the chunk
            done += s
        return torch.logsumexp(torch.stack(parts), dim=0) - math.log(k)

    # ----------------------------------------------------------------------------------------------
    # generation
    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = True, generator: torch.Generator | None = None) -> Sample:
        r"""``n`` new data points from the prior, ``Sample(x, z)``: :math:`z \sim \mathcal N(0, I)`
        ``(n, latent_dim)``, then ``x``, the mean of :math:`p(x\mid z)` (pixel probabilities or Gaussian means;
        ``mean=True``, what is usually shown) or a draw from it (``mean=False``: binary pixels, or the mean
        plus ``N(0, sigma2)`` noise). ``x`` has the decoder's output shape, ``(n, D)`` or ``(n, C, H, W)``;
        ``model.sample(n).x`` is the images. ``generator`` makes it repeatable.

        An autoregressive decoder draws the pixels one at a time (its mean has no closed form): ``mean=False``
        gives the binary sample, ``mean=True`` each pixel's probability given the pixels drawn before it."""
        n = V.positive_int("n", n)
        ref = next(self.parameters())
        where = generator.device if generator is not None else ref.device

        def draw(fn, shape):  # on the generator's device, then onto the model's
            return fn(shape, generator=generator, dtype=ref.dtype, device=where).to(ref.device)

        z = draw(torch.randn, (n, self.latent_dim))
        if self.autoregressive:
            pixels, probs = self.decoder.sample(z, generator=generator)
            return Sample(probs if mean else pixels, z)
        m = self.mean(self.decode(z))
        if mean:
            return Sample(m, z)
        if self.likelihood == "bernoulli":
            return Sample((draw(torch.rand, m.shape) < m).to(m.dtype), z)
        return Sample(m + self.sigma2.sqrt() * draw(torch.randn, m.shape), z)

    @torch.no_grad()
    def kl_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """``KL(q(z_j | x) || N(0, 1))`` of each latent dimension, averaged over the rows of ``x``,
        ``(latent_dim,)`` (Eq. ``kl-std-normal`` per dimension): where the KL term is spent. A dimension
        whose KL stays near 0 carries no information about ``x`` (it has collapsed onto the prior)."""
        mu, logvar = self.encode(x)
        return P.kl_standard_normal(mu.unsqueeze(-1), logvar.unsqueeze(-1)).mean(0)

    @torch.no_grad()
    def unit_activity(self, x: torch.Tensor) -> torch.Tensor:
        """``Cov_x(E_q[z_j | x])`` of each latent dimension, ``(latent_dim,)`` (Eq. ``active-units``): the
        variance over the rows of ``x`` of the posterior means. Burda et al. (2016) call unit ``j`` active
        when it exceeds 0.01: ``(model.unit_activity(x) > 0.01).sum()`` counts the active units."""
        mu, _ = self.encode(x)
        if mu.shape[0] < 2:
            raise ValueError("unit_activity needs at least 2 data points (a variance over x)")
        return mu.var(0)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, sample_z: bool = False) -> torch.Tensor:
        r"""The mean of :math:`p(x\mid z)` at the posterior mean :math:`z = \mu(x)` (or, ``sample_z=True``,
        at a sample of :math:`q(z\mid x)`): the VAE's reconstruction of ``x``, in the decoder's shape. An
        autoregressive decoder draws a sample given that ``z`` and returns its pixel probabilities (as in
        :meth:`sample`)."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar) if sample_z else mu
        if self.autoregressive:   # pixel by pixel; each pixel's probability given the ones drawn before it
            return self.decoder.sample(z)[1]
        return self.mean(self.decode(z))

    # ----------------------------------------------------------------------------------------------
    def _check_x(self, x) -> torch.Tensor:
        return V.tensor("x", x, floating=True, min_dim=2, expected="a floating-point batch (N, D) or (N, C, H, W)")


# --------------------------------------------------------------------------------------------------
# the exact posterior of a low-dimensional latent, by quadrature on a grid
# --------------------------------------------------------------------------------------------------
class GridPosterior(NamedTuple):
    r"""What :func:`grid_posterior` returns, every tensor in float64 on the device of the model's output.

    - ``z``: the grid points, ``(G, latent_dim)``; for ``latent_dim = 2`` the grid of
      ``torch.meshgrid(ticks, ticks, indexing="xy")``, flattened, so that ``t.reshape(n, n)`` of any
      per-point column ``t`` is indexed ``[j_2, j_1]``, ready for ``contour(Z1, Z2, ...)``;
    - ``log_joint``: :math:`\log p_\theta(x_n, z_g)`, ``(G, N)``;
    - ``log_evidence``: :math:`\log p_\theta(x_n)` by quadrature, ``(N,)``;
    - ``log_posterior``: :math:`\log p_\theta(z_g \mid x_n)`, a log-*density* on the grid, ``(G, N)``;
    - ``cell``: the volume :math:`h^{D_z}` of one grid cell.
    """

    z: torch.Tensor
    log_joint: torch.Tensor
    log_evidence: torch.Tensor
    log_posterior: torch.Tensor
    cell: float


@torch.no_grad()
def grid_posterior(log_joint, x: torch.Tensor, ticks: torch.Tensor, latent_dim: int = 2, *,
                   chunk_size: int = 2048) -> GridPosterior:
    r"""The evidence and the exact posterior of a model with a 1-D or 2-D latent, on a grid (Eq. ``grid-quadrature``).

    With grid points :math:`z_g` spaced by :math:`h` in every coordinate (``ticks``, evenly spaced, in
    each of the ``latent_dim`` coordinates),

    .. math:: \log p_\theta(x) \approx \log \sum_g p_\theta(x, z_g)\, h^{D_z}, \qquad
              p_\theta(z_g \mid x) \approx \frac{p_\theta(x, z_g)}{p_\theta(x)},

    the rectangle rule, by log-sum-exp. The error is the grid's: negligible when the grid covers the
    posterior's mass and its spacing is small against the posterior's width.

    ``log_joint(x, z)`` takes ``x`` ``(N, ...)`` and ``z`` ``(S, N, latent_dim)`` and returns
    :math:`\log p_\theta(x, z)` ``(S, N)``, like :meth:`VAE.log_joint` (pass ``model.log_joint``).
    The grid's points are passed ``chunk_size`` at a time, on ``x``'s device. Returns a
    :class:`GridPosterior`.
    """
    V.function("log_joint", log_joint)
    x = V.tensor("x", x, min_dim=2, expected="a batch (N, ...) of data points")
    ticks = V.tensor("ticks", ticks, shape=("n",), floating=True, finite=True)
    latent_dim = V.positive_int("latent_dim", latent_dim)
    chunk_size = V.positive_int("chunk_size", chunk_size)
    if latent_dim > 2:
        raise ValueError(f"latent_dim={latent_dim}: a grid of len(ticks)**latent_dim points is only practical for "
                         "a latent of 1 or 2 dimensions (use importance sampling, VAE.log_likelihood, beyond)")
    if len(ticks) < 2:
        raise ValueError(f"ticks must hold at least 2 evenly spaced points, got {len(ticks)}")
    steps = ticks.double().diff()
    h = steps.mean().item()
    if h <= 0 or not torch.allclose(steps, torch.full_like(steps, h), rtol=1e-4, atol=0.0):
        raise ValueError("ticks must be increasing and evenly spaced (e.g. torch.linspace(-4, 4, 121))")
    ticks = ticks.to(x.device)
    if latent_dim == 1:
        z = ticks[:, None]
    else:
        z1, z2 = torch.meshgrid(ticks, ticks, indexing="xy")
        z = torch.stack([z1.flatten(), z2.flatten()], 1)
    n = x.shape[0]
    parts = []
    for zc in z.split(chunk_size):
        out = log_joint(x, zc[:, None, :].expand(-1, n, -1))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(zc), n):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"log_joint(x, z) must return (S, N) = ({len(zc)}, {n}) for z of shape "
                             f"({len(zc)}, {n}, {latent_dim}); got {got}")
        parts.append(out.double())
    lj = torch.cat(parts)                                                               # (G, N)
    cell = h**latent_dim
    log_evidence = torch.logsumexp(lj, 0) + math.log(cell)
    return GridPosterior(z.double(), lj, log_evidence, lj - log_evidence, cell)


# --------------------------------------------------------------------------------------------------
# the aggregated posterior and the two splits of the prior-matching term
# --------------------------------------------------------------------------------------------------
def _posteriors(mu, logvar) -> tuple[torch.Tensor, torch.Tensor]:
    mu = V.tensor("mu", mu, shape=("N", "latent_dim"), floating=True)
    logvar = V.tensor("logvar", logvar, shape=("N", "latent_dim"), floating=True)
    if logvar.shape != mu.shape:
        raise ValueError(f"mu and logvar must have the same shape (N, latent_dim); got {list(mu.shape)} and "
                         f"{list(logvar.shape)}")
    return mu, V.same_dtype_device("logvar", logvar, mu, "mu")


def aggregated_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r""":math:`\log q_\phi(z)` of the aggregated posterior :math:`q_\phi(z) = \frac1N\sum_n q_\phi(z\mid x_n)`
    (Eq. ``aggregated-posterior``), a mixture of the ``N`` diagonal Gaussians
    :math:`q_\phi(z \mid x_n) = \mathcal N(\mu_n, \operatorname{diag}\exp(\mathrm{logvar}_n))`:

    .. math:: \log q_\phi(z) = \operatorname{logsumexp}_n \log\mathcal N(z;\ \mu_n, \operatorname{diag}\sigma_n^2)
              - \log N.

    ``mu`` and ``logvar`` are the encoder's outputs for the ``N`` data points, ``(N, latent_dim)``; ``z`` is
    ``(M, latent_dim)``; returns ``(M,)``. The points are taken a chunk at a time (about ``2**24`` numbers
    of ``(chunk, N, latent_dim)``), so that ``N`` in the tens of thousands fits in memory.
    """
    mu, logvar = _posteriors(mu, logvar)
    z = V.tensor("z", z, shape=("M", mu.shape[1]), floating=True)
    z = V.same_dtype_device("z", z, mu, "mu")
    n, dz = mu.shape
    chunk = max(1, IWAE_CHUNK_ELEMENTS // (n * dz))
    return torch.cat([torch.logsumexp(P.gaussian_log_prob(c[:, None, :], mu, logvar), 1) for c in z.split(chunk)]
                     ) - math.log(n)


def sample_aggregated(mu: torch.Tensor, logvar: torch.Tensor, n_samples: int, *, seed: int | None = None,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``n_samples`` draws of the aggregated posterior (Eq. ``aggregated-posterior``) and the index of the
    component each came from: draw :math:`n` uniformly, then :math:`z \sim q_\phi(z \mid x_n)`.

    Returns ``(z, index)``, ``(n_samples, latent_dim)`` and ``(n_samples,)``. ``seed`` or ``generator``
    (on ``mu``'s device) makes it repeatable."""
    mu, logvar = _posteriors(mu, logvar)
    n_samples = V.positive_int("n_samples", n_samples)
    g = V.generator(seed, generator, device=mu.device)
    index = torch.randint(0, mu.shape[0], (n_samples,), generator=g, device=mu.device)
    eps = torch.randn(n_samples, mu.shape[1], generator=g, dtype=mu.dtype, device=mu.device)
    return mu[index] + torch.exp(0.5 * logvar[index]) * eps, index


class KLPriorSplit(NamedTuple):
    r"""The terms of Eq. ``kl-prior-split``, each a :class:`~coursepkg.probability.MonteCarloEstimate` from
    the same samples of :math:`q_\phi(z)`, so that ``mutual_information + aggregated_kl`` equals
    ``average_kl`` exactly and ``cross_entropy`` minus the closed-form average entropy equals it in
    expectation:

    - ``average_kl``: :math:`\frac1N\sum_n \mathrm{KL}(q_\phi(z\mid x_n)\,\|\,p(z))`, the average KL term;
    - ``mutual_information``: :math:`I_q(x; z) = \frac1N\sum_n \mathrm{KL}(q_\phi(z\mid x_n)\,\|\,q_\phi(z))`;
    - ``aggregated_kl``: :math:`\mathrm{KL}(q_\phi(z)\,\|\,p(z))`;
    - ``cross_entropy``: :math:`H(q_\phi(z), p(z)) = -\mathbb E_{q_\phi(z)}[\log p(z)]`;
    - ``aggregated_entropy``: :math:`H(q_\phi(z)) = -\mathbb E_{q_\phi(z)}[\log q_\phi(z)]`.
    """

    average_kl: P.MonteCarloEstimate
    mutual_information: P.MonteCarloEstimate
    aggregated_kl: P.MonteCarloEstimate
    cross_entropy: P.MonteCarloEstimate
    aggregated_entropy: P.MonteCarloEstimate


@torch.no_grad()
def kl_prior_split(mu: torch.Tensor, logvar: torch.Tensor, n_samples: int, *, seed: int | None = None,
                   generator: torch.Generator | None = None) -> KLPriorSplit:
    r"""Monte Carlo estimates of the two splits of the average KL term (Eq. ``kl-prior-split``) for a
    standard normal prior, from ``n_samples`` draws :math:`(n, z)` of :math:`q(n, z) = \frac1N q_\phi(z\mid x_n)`:

    .. math:: I_q(x; z) \approx \frac1S\sum_s \big[\log q_\phi(z_s\mid x_{n_s}) - \log q_\phi(z_s)\big], \qquad
              \mathrm{KL}(q_\phi(z)\,\|\,p(z)) \approx \frac1S\sum_s \big[\log q_\phi(z_s) - \log p(z_s)\big],

    with :math:`\log q_\phi(z)` from :func:`aggregated_log_prob`. ``mu`` and ``logvar`` ``(N, latent_dim)``
    are the encoder's outputs for the ``N`` data points (the components of :math:`q_\phi(z)`). Both
    estimates are unbiased, and :math:`0 \le I_q \le \log N`. Returns a :class:`KLPriorSplit`.
    """
    mu, logvar = _posteriors(mu, logvar)
    n_samples = V.integer("n_samples", n_samples, minimum=2)
    z, index = sample_aggregated(mu, logvar, n_samples, seed=seed, generator=generator)
    log_qn = P.gaussian_log_prob(z, mu[index], logvar[index])                     # log q(z_s | x_{n_s})
    log_qbar = aggregated_log_prob(z, mu, logvar)                                 # log q(z_s)
    log_p = P.gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))      # log p(z_s)
    mc = P.mean_and_stderr
    return KLPriorSplit(mc(log_qn - log_p), mc(log_qn - log_qbar), mc(log_qbar - log_p), mc(-log_p), mc(-log_qbar))


def mutual_information(mu: torch.Tensor, logvar: torch.Tensor, n_samples: int, *, seed: int | None = None,
                       generator: torch.Generator | None = None) -> P.MonteCarloEstimate:
    r"""The Monte Carlo estimate of :math:`I_q(x; z)` of Eq. ``kl-prior-split``: the ``mutual_information``
    of :func:`kl_prior_split` (same arguments)."""
    return kl_prior_split(mu, logvar, n_samples, seed=seed, generator=generator).mutual_information


def aggregated_kl(mu: torch.Tensor, logvar: torch.Tensor, n_samples: int, *, seed: int | None = None,
                  generator: torch.Generator | None = None) -> P.MonteCarloEstimate:
    r"""The Monte Carlo estimate of :math:`\mathrm{KL}(q_\phi(z)\,\|\,p(z))` of Eq. ``kl-prior-split``: the
    ``aggregated_kl`` of :func:`kl_prior_split` (same arguments)."""
    return kl_prior_split(mu, logvar, n_samples, seed=seed, generator=generator).aggregated_kl
