"""The small networks the book trains (chapters 05-07): an MLP, a conv encoder / decoder pair, and an
autoregressive decoder.

- :class:`MLP`: ``Linear -> act -> ... -> Linear`` for vectors ``(..., in_dim) -> (..., out_dim)``.
- :class:`ConvEncoder`: images ``(N, C, H, W)`` -- or the same images flat, ``(N, C*H*W)`` -- to vectors
  ``(N, out_dim)``, through stride-2 convolutions that halve the image (``28 -> 14 -> 7``,
  ``16 -> 8 -> 4``, ``8 -> 4 -> 2``) and one linear layer.
- :class:`ConvDecoder`: its mirror image, vectors ``(N, in_dim)`` to images ``(N, C, H, W)`` (or
  ``(N, C*H*W)`` with ``flat=True``), through one linear layer and stride-2 transposed convolutions
  that grow the image back to exactly ``H x W``.
- :class:`AutoregressiveDecoder`: a decoder for binary vectors whose logit of pixel ``i`` depends on
  ``z`` and on the pixels before it, ``x_1 .. x_{i-1}`` (MADE with a direct connection; the fully visible
  sigmoid belief net when it has no hidden layer), built from :class:`MaskedLinear` layers. Chapter 05
  uses it to show posterior collapse: it can model the pixels well without ``z``.

Layouts. The data sets of :mod:`coursepkg.data` are flat by default (``(N, H*W)``, for the MLPs) and
give images with ``flat=False``; the conv encoder takes either, so one data tensor serves both kinds of
model. Every network ends in a plain linear (or transposed-conv) layer, with no output activation: a
decoder returns logits (Bernoulli likelihood) or means (Gaussian), an encoder ``2 * latent_dim`` numbers
that the VAE splits into ``(mu, logvar)`` (:mod:`coursepkg.vae`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from coursepkg import _validate as V


def _widths(name: str, value, *, empty: bool = True) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{name} must be a tuple of positive ints, e.g. (400,), got {type(value).__name__}")
    if not value and not empty:
        raise ValueError(f"{name} must name at least one layer, e.g. (32, 64); got {value!r}")
    return tuple(V.positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def _activation(value) -> type[nn.Module]:
    if not (isinstance(value, type) and issubclass(value, nn.Module)):
        raise TypeError(f"activation must be an nn.Module class such as nn.SiLU or nn.ReLU (not an instance), "
                        f"got {value!r}")
    return value


def _image_shape(name: str, value) -> tuple[int, int, int]:
    if not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{name} must be (channels, height, width), e.g. (1, 28, 28), got {value!r}")
    return tuple(V.positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))  # type: ignore[return-value]


def _halvings(size: int, times: int) -> list[int]:
    """Sizes after each stride-2 conv (kernel 3, padding 1): ``s -> ceil(s / 2)``, e.g. 28, 14, 7."""
    sizes = [size]
    for _ in range(times):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class MLP(nn.Module):
    """A multilayer perceptron: ``Linear(in_dim, h1) -> act -> ... -> Linear(h_last, out_dim)``.

    ``hidden`` gives the widths of the hidden layers (``(400,)``, ``(256, 256)``; ``()`` is a single
    linear map); ``activation`` is an ``nn.Module`` class, instantiated between layers. There is no
    activation after the last layer. Maps ``(..., in_dim)`` to ``(..., out_dim)``: any leading
    dimensions (a batch, or samples and a batch) pass through.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.in_dim, self.out_dim = V.positive_int("in_dim", in_dim), V.positive_int("out_dim", out_dim)
        self.hidden = _widths("hidden", hidden)
        act = _activation(activation)
        layers: list[nn.Module] = []
        width = in_dim
        for h in self.hidden:
            layers += [nn.Linear(width, h), act()]
            width = h
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.in_dim:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (..., {self.in_dim}), got {got}")
        return self.net(x)


class ConvEncoder(nn.Module):
    """Images to vectors: ``len(channels)`` stride-2 convolutions (kernel 3, padding 1, each followed by
    ``activation``), then a linear layer to ``out_dim``.

    ``in_shape = (C, H, W)``. Each convolution halves the height and width (rounding up), so
    ``channels=(32, 64)`` takes 28x28 to 7x7, 16x16 to 4x4 and 8x8 to 2x2. The input is
    ``(N, C, H, W)`` or flat, ``(N, C*H*W)`` (the layout of :func:`coursepkg.data.digits`); the output is
    ``(N, out_dim)``.
    """

    def __init__(self, in_shape: Sequence[int], out_dim: int,
                 channels: Sequence[int] = (32, 64), activation: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.in_shape = _image_shape("in_shape", in_shape)
        self.out_dim = V.positive_int("out_dim", out_dim)
        self.channels = _widths("channels", channels, empty=False)
        act = _activation(activation)
        C, H, W = self.in_shape
        layers: list[nn.Module] = []
        width = C
        for c in self.channels:
            layers += [nn.Conv2d(width, c, kernel_size=3, stride=2, padding=1), act()]
            width = c
        h, w = _halvings(H, len(self.channels))[-1], _halvings(W, len(self.channels))[-1]
        self.conv = nn.Sequential(*layers)
        self.head = nn.Linear(width * h * w, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C, H, W = self.in_shape
        if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == C * H * W:
            x = x.reshape(-1, C, H, W)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, {C}, {H}, {W}) or (N, {C * H * W}), got {got}")
        return self.head(self.conv(x).flatten(1))


class ConvDecoder(nn.Module):
    """Vectors to images, the mirror of :class:`ConvEncoder`: a linear layer to ``channels[0]`` feature
    maps of the smallest size, then ``len(channels)`` stride-2 transposed convolutions (kernel 3), the last
    one to ``C`` channels with no activation after it.

    ``out_shape = (C, H, W)``; ``channels=(64, 32)`` mirrors the encoder's ``(32, 64)``. The transposed
    convolutions' ``output_padding`` is chosen so that the sizes retrace the encoder's exactly
    (7 -> 14 -> 28, 2 -> 4 -> 8, odd sizes too). Input ``(N, in_dim)``; output ``(N, C, H, W)``, or
    ``(N, C*H*W)`` when ``flat=True``: logits or means, whatever the likelihood reads.
    """

    def __init__(self, in_dim: int, out_shape: Sequence[int],
                 channels: Sequence[int] = (64, 32), activation: type[nn.Module] = nn.SiLU, flat: bool = False):
        super().__init__()
        self.in_dim = V.positive_int("in_dim", in_dim)
        self.out_shape = _image_shape("out_shape", out_shape)
        self.channels = _widths("channels", channels, empty=False)
        self.flat = bool(flat)
        act = _activation(activation)
        C, H, W = self.out_shape
        hs, ws = _halvings(H, len(self.channels))[::-1], _halvings(W, len(self.channels))[::-1]
        self.start = (self.channels[0], hs[0], ws[0])
        self.head = nn.Sequential(nn.Linear(in_dim, self.channels[0] * hs[0] * ws[0]), act())
        layers: list[nn.Module] = []
        outs = (*self.channels[1:], C)
        for i, (c_in, c_out) in enumerate(zip(self.channels, outs, strict=True)):
            # a transposed conv (kernel 3, stride 2, padding 1) maps s to 2s - 1 + output_padding
            pad = (hs[i + 1] - (2 * hs[i] - 1), ws[i + 1] - (2 * ws[i] - 1))
            layers.append(nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2, padding=1, output_padding=pad))
            if i < len(self.channels) - 1:
                layers.append(act())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        V.tensor("z", z, shape=("N", self.in_dim))
        x = self.deconv(self.head(z).reshape(-1, *self.start))
        return x.flatten(1) if self.flat else x


# --------------------------------------------------------------------------------------------------
# an autoregressive decoder
# --------------------------------------------------------------------------------------------------
class MaskedLinear(nn.Linear):
    """A linear layer with a fixed 0/1 connectivity ``mask`` of shape ``(out_features, in_features)``:
    ``y = x (mask * W)^T + b``. Masked weights get no gradient and never act; the mask is a buffer (it moves
    with the module, and is saved in its ``state_dict``)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor, bias: bool = True):
        super().__init__(V.positive_int("in_features", in_features), V.positive_int("out_features", out_features),
                         bias=bias)
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != (out_features, in_features):
            raise ValueError(f"mask must have shape (out_features, in_features) = ({out_features}, {in_features}), "
                             f"got {list(mask.shape)}")
        if not torch.all((mask == 0) | (mask == 1)):
            raise ValueError("mask must hold only zeros and ones")
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class AutoregressiveDecoder(nn.Module):
    r"""An autoregressive Bernoulli decoder :math:`p(x \mid z) = \prod_{i=1}^D p(x_i \mid x_{<i}, z)`
    for binary vectors ``x`` of length ``x_dim = D`` (pixels in raster order).

    ``forward(z, x)`` returns the ``D`` logits :math:`\ell_i(x_{<i}, z)`, all at once, from the pixels
    of ``x`` (teacher forcing): this is what the likelihood of a known ``x`` needs, in one pass. The logit
    of pixel ``i`` never depends on pixels ``i, i+1, ...`` (the autoregressive property).

    Architecture: MADE (Germain et al., 2015) conditioned on ``z``. Pixel ``d`` (1-based) has degree
    ``d``; hidden unit ``k`` of every hidden layer has degree ``m_k = 1 + (k mod (D - 1))``. A hidden unit
    sees the pixels and the hidden units of degree ``<= m_k``; logit ``i`` sees the hidden units of degree
    ``< i`` and, through a direct masked connection, the pixels ``< i``. ``z`` enters every hidden layer
    and the logits through plain (unmasked) linear maps. With ``hidden=()`` the decoder is the fully
    visible sigmoid belief net with a ``z``-dependent bias, :math:`\ell = L x + A z + b` with ``L``
    strictly lower triangular.

    :meth:`sample` generates pixel by pixel, ``D`` passes. Shapes: ``z (N, latent_dim)``, ``x (N, D)``.
    """

    autoregressive = True
    """Tells :class:`coursepkg.vae.VAE` to call ``decoder(z, x)`` and :meth:`sample`."""

    def __init__(self, latent_dim: int, x_dim: int, hidden: Sequence[int] = (), activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.latent_dim, self.x_dim = V.positive_int("latent_dim", latent_dim), V.positive_int("x_dim", x_dim)
        self.hidden = _widths("hidden", hidden)
        act = _activation(activation)
        D = self.x_dim
        in_deg = torch.arange(1, D + 1)                                      # pixel d has degree d
        deg, self.layers, self.z_maps, self.acts = in_deg, nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for h in self.hidden:
            hid_deg = 1 + torch.arange(h) % max(D - 1, 1)
            self.layers.append(MaskedLinear(len(deg), h, (hid_deg[:, None] >= deg[None, :]).long()))
            self.z_maps.append(nn.Linear(self.latent_dim, h, bias=False))
            self.acts.append(act())
            deg = hid_deg
        self.out = (MaskedLinear(len(deg), D, (in_deg[:, None] > deg[None, :]).long(), bias=False)
                    if self.hidden else None)
        self.direct = MaskedLinear(D, D, torch.tril(torch.ones(D, D, dtype=torch.long), diagonal=-1))
        self.z_out = nn.Linear(self.latent_dim, D, bias=False)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        V.tensor("z", z, shape=("N", self.latent_dim))
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or tuple(x.shape) != (z.shape[0], self.x_dim):
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, {self.x_dim}) = ({z.shape[0]}, {self.x_dim}) to match z, "
                             f"got {got}")
        h = x
        for layer, z_map, act in zip(self.layers, self.z_maps, self.acts, strict=True):
            h = act(layer(h) + z_map(z))
        logits = self.direct(x) + self.z_out(z)
        return logits + self.out(h) if self.out is not None else logits

    @torch.no_grad()
    def sample(self, z: torch.Tensor, *, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Draw ``x ~ p(x | z)`` one pixel at a time: pixel ``i`` from
        :math:`\mathrm{Bernoulli}(\sigma(\ell_i(x_{<i}, z)))` given the pixels drawn before it.

        Returns ``(x, probs)``, both ``(N, D)``: the binary sample, and each pixel's conditional probability
        :math:`p(x_i = 1 \mid x_{<i}, z)` along it (a less noisy picture of the same sample).

        This is a decoder's sampler of :math:`p(x \mid z)` for given latents, not a model's ``sample(n)``
        (:class:`coursepkg.models.Sample`): the model that owns the decoder, :meth:`coursepkg.vae.VAE.sample`,
        draws ``z`` from the prior, calls this, and returns ``Sample(x, z)``."""
        x = torch.zeros(z.shape[0], self.x_dim, dtype=z.dtype, device=z.device)
        probs = torch.zeros_like(x)
        for i in range(self.x_dim):
            probs[:, i] = torch.sigmoid(self(z, x)[:, i])
            u = torch.rand(z.shape[0], generator=generator, dtype=z.dtype,
                           device=generator.device if generator is not None else z.device).to(z.device)
            x[:, i] = (u < probs[:, i]).to(x.dtype)
        return x, probs
