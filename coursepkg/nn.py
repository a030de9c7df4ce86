"""The small networks the book trains: an MLP, a conv encoder / decoder pair and an autoregressive decoder
(chapters 05-07), and the time-conditioned noise predictors of the diffusion chapters (09-10).

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
- :class:`SinusoidalEmbedding`, :class:`TimeMLP` and :class:`UNet`: networks ``forward(xt, t) -> eps`` that
  predict the noise of a diffusion step ``t`` (an int for the whole batch, or one step per row) with the
  shape of ``xt``: the sinusoidal embedding of ``t``, an MLP for vectors (the 2-D toys) and a small U-Net
  for images (the 8x8 digits, MNIST). They plug into :func:`coursepkg.diffusion.simplified_loss` and
  :func:`coursepkg.train.fit`. With ``num_classes`` both are class-conditional, ``forward(xt, t, y)``, through a
  :class:`ClassEmbedding` with a null token (``y = -1``, :data:`NULL_CLASS`) for classifier-free guidance
  (chapter 10, :mod:`coursepkg.diffusion.guidance`).

Layouts. The data sets of :mod:`coursepkg.data` are flat by default (``(N, H*W)``, for the MLPs) and
give images with ``flat=False``; the conv encoder takes either, so one data tensor serves both kinds of
model. Every network ends in a plain linear (or transposed-conv) layer, with no output activation: a
decoder returns logits (Bernoulli likelihood) or means (Gaussian), an encoder ``2 * latent_dim`` numbers
that the VAE splits into ``(mu, logvar)`` (:mod:`coursepkg.vae`).
"""

from __future__ import annotations

import math
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


# --------------------------------------------------------------------------------------------------
# time-conditioned networks (chapter 09): forward(xt, t) -> eps
# --------------------------------------------------------------------------------------------------
def _batch_steps(t, n: int, like: torch.Tensor) -> torch.Tensor:
    """``t`` as a 1-D tensor of ``n`` steps on ``like``'s device: an int (or a float, or a 0-d tensor) is
    broadcast to the batch, a tensor ``(n,)`` is taken as it is (integer or floating, one step per row)."""
    if isinstance(t, bool) or not isinstance(t, (int, float, torch.Tensor)):
        raise TypeError(f"t must be an int, a float or a tensor (N,) of steps, got {type(t).__name__}")
    t = torch.as_tensor(t, device=like.device)
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"t must hold integer or real steps, got dtype {t.dtype}")
    if t.dim() == 0:
        return t.expand(n)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"t must be one int for the whole batch or a tensor (N,) = ({n},), one step per row of "
                         f"xt; got shape {list(t.shape)}")
    return t


class SinusoidalEmbedding(nn.Module):
    r"""The sinusoidal embedding of a step ``t`` (Vaswani et al. 2017, used by Ho et al. 2020 for the
    diffusion step): ``dim`` features, half sines and half cosines of ``t`` at geometrically spaced
    frequencies,

    .. math:: e(t) = \big(\sin(\omega_0 t), \dots, \sin(\omega_{h-1} t),\ \cos(\omega_0 t), \dots,
              \cos(\omega_{h-1} t)\big), \qquad \omega_i = \mathrm{max\_period}^{-i/h}, \quad h = \mathrm{dim}/2.

    The fastest feature turns once every :math:`2\pi` steps, the slowest once every ``max_period``
    :math:`\cdot 2\pi`: nearby steps get similar embeddings and far ones different ones, with no parameter
    to learn. Concatenating the sines and the cosines, rather than interleaving them as the transformer
    paper writes it, only permutes the features. This is diffusers' ``get_timestep_embedding(t, dim,
    downscale_freq_shift=0)``; Ho et al.'s code divides by :math:`h - 1` instead of :math:`h`, so that its
    slowest frequency is exactly ``1 / max_period``.

    ``forward(t)``: ``t`` an int or a float (one step) or a tensor ``(N,)``, integer or floating (continuous
    time works too); returns ``(N, dim)`` (``(1, dim)`` for one step), in the dtype of the module (float32
    unless converted with ``.to``).
    """

    def __init__(self, dim: int, max_period: float = 10_000):
        super().__init__()
        self.dim = V.positive_int("dim", dim)
        if dim % 2:
            raise ValueError(f"dim must be even (half sines, half cosines), got {dim}")
        self.max_period = V.number("max_period", max_period, positive=True)
        half = dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", freqs.to(torch.get_default_dtype()), persistent=False)

    def forward(self, t) -> torch.Tensor:
        if isinstance(t, torch.Tensor) and t.dim() > 1:
            raise ValueError(f"t must be one step or a tensor (N,) of steps, got shape {list(t.shape)}")
        t = _batch_steps(t, t.shape[0] if isinstance(t, torch.Tensor) and t.dim() == 1 else 1, self.freqs)
        angles = t.to(self.freqs.dtype)[:, None] * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)


def _time_mlp(t_dim: int, out: int, act: type[nn.Module]) -> nn.Sequential:
    """``t -> act(Linear(e(t)))``, the learned map of the sinusoidal embedding shared by every layer."""
    return nn.Sequential(SinusoidalEmbedding(t_dim), nn.Linear(t_dim, out), act())


NULL_CLASS = -1
"""The label that means "no label" (the null token of classifier-free guidance, chapter 10)."""


def check_labels(y, n: int, num_classes: int, *, like: torch.Tensor | None = None, null: bool = True) -> torch.Tensor:
    """``y`` as a long tensor ``(n,)`` of classes ``0..num_classes-1`` (and :data:`NULL_CLASS` where ``null``);
    an int is broadcast to the batch, ``None`` means every row is null. Anything else is a clear error."""
    device = like.device if like is not None else None
    if y is None:
        if not null:
            raise ValueError("y is required here: give one class per row")
        return torch.full((n,), NULL_CLASS, dtype=torch.long, device=device)
    if isinstance(y, bool) or not isinstance(y, (int, torch.Tensor)):
        raise TypeError(f"y must be an int or a tensor (N,) of class labels, got {type(y).__name__}")
    y = torch.as_tensor(y, device=device)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.dim() == 0:
        y = y.expand(n)
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"y must be one label for the whole batch or a tensor (N,) = ({n},), one per row; "
                         f"got shape {list(y.shape)}")
    low = NULL_CLASS if null else 0
    bad = (y < low) | (y >= num_classes)
    if bad.any():
        allowed = f"0..{num_classes - 1}" + (f" or {NULL_CLASS} (no label)" if null else "")
        raise ValueError(f"y must hold classes {allowed}; got {y[bad][0].item()}")
    return y.long()


class ClassEmbedding(nn.Module):
    """A learned embedding of a class label with a null token (chapter 10): ``forward(y) -> (N, dim)``, one
    vector per class ``0..num_classes-1`` and one more, the null token, for :data:`NULL_CLASS` (``-1``): the
    "no label" input that classifier-free guidance trains with label dropout and samples with as its
    unconditional model. ``y`` is a long tensor ``(N,)``; labels outside ``-1..num_classes-1`` are refused."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes, self.dim = V.positive_int("num_classes", num_classes), V.positive_int("dim", dim)
        self.table = nn.Embedding(self.num_classes + 1, self.dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = check_labels(y, y.shape[0] if isinstance(y, torch.Tensor) and y.dim() == 1 else 1, self.num_classes,
                         like=self.table.weight)
        return self.table(torch.where(y == NULL_CLASS, self.num_classes, y))


def _conditioning(module: nn.Module, e: torch.Tensor, y) -> torch.Tensor:
    """The step embedding ``e``, plus the class embedding of ``y`` when the network is conditional."""
    if module.classes is None:
        if y is not None:
            raise ValueError(f"{type(module).__name__} was built without num_classes: it takes no labels y")
        return e
    y = check_labels(y, e.shape[0], module.num_classes, like=e)
    return e + module.classes(y)


class TimeMLP(nn.Module):
    r"""A noise predictor for vectors, ``forward(xt, t) -> eps`` with ``xt`` and ``eps`` ``(N, dim)``: an MLP
    whose hidden layers are told the step.

    The step goes through the sinusoidal embedding (:class:`SinusoidalEmbedding`, ``t_dim`` features) and one
    learned layer, :math:`e = \mathrm{act}(A\,\mathrm{emb}(t) + a)`; each hidden layer maps it to a scale and a
    shift of its pre-activations (FiLM, Perez et al. 2018),

    .. math:: (s_\ell, c_\ell) = U_\ell e + u_\ell, \qquad
              h_\ell = \mathrm{act}\big((1 + s_\ell) \odot (W_\ell h_{\ell-1} + b_\ell) + c_\ell\big), \qquad
              \varepsilon_\theta = W_{\mathrm{out}} h_L + b_{\mathrm{out}}.

    In a short comparison on the swiss roll (2,000 steps, four seeds) FiLM ended with a held-out simplified
    loss 0.002 below adding :math:`U_\ell e` alone (the shift, :math:`s_\ell = 0`) in every seed, and 0.02
    below concatenating :math:`e` to each layer's input; adding is the cheaper of the two (a quarter fewer
    parameters at the default widths).

    ``t`` is an int (broadcast to the batch) or a tensor ``(N,)``, one step per row; the network does not
    know ``T`` and accepts any steps (the schedule checks them). ``hidden`` gives the widths of the hidden
    layers (at least one).

    Chapter 10. With ``num_classes`` the network is conditional, ``forward(xt, t, y)``: a
    :class:`ClassEmbedding` of the label ``y`` (an int, a tensor ``(N,)``, ``-1`` or ``None`` for no label)
    is added to the step's embedding :math:`e`, so the label reaches every layer the way the step does.
    ``out_dim`` (default ``dim``) changes the output's width: ``TimeMLP(dim, out_dim=K)`` is a classifier of
    noised data, ``(xt, t) -> K`` logits.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (256, 256, 256), t_dim: int = 64,
                 activation: type[nn.Module] = nn.SiLU, *, num_classes: int | None = None,
                 out_dim: int | None = None):
        super().__init__()
        self.dim, self.t_dim = V.positive_int("dim", dim), V.positive_int("t_dim", t_dim)
        self.hidden = _widths("hidden", hidden, empty=False)
        self.out_dim = self.dim if out_dim is None else V.positive_int("out_dim", out_dim)
        self.num_classes = V.positive_int("num_classes", num_classes, none="unconditional")
        act = _activation(activation)
        self.time = _time_mlp(self.t_dim, self.t_dim, act)
        self.classes = None if num_classes is None else ClassEmbedding(self.num_classes, self.t_dim)
        widths = (self.dim, *self.hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.films = nn.ModuleList(nn.Linear(self.t_dim, 2 * h) for h in self.hidden)
        self.act = act()
        self.out = nn.Linear(widths[-1], self.out_dim)

    def forward(self, xt: torch.Tensor, t, y=None) -> torch.Tensor:
        if not isinstance(xt, torch.Tensor) or xt.dim() != 2 or xt.shape[1] != self.dim:
            got = list(xt.shape) if isinstance(xt, torch.Tensor) else type(xt).__name__
            raise ValueError(f"xt must have shape (N, {self.dim}), got {got}")
        e = _conditioning(self, self.time(_batch_steps(t, xt.shape[0], xt)), y)
        h = xt
        for layer, film in zip(self.layers, self.films, strict=True):
            scale, shift = film(e).chunk(2, dim=1)
            h = self.act((1 + scale) * layer(h) + shift)
        return self.out(h)


def _groups(channels: int, most: int = 8) -> int:
    """GroupNorm's number of groups: the largest divisor of ``channels`` up to ``most``."""
    return math.gcd(channels, most)


class ResBlock(nn.Module):
    r"""The U-Net's residual block, told the step (Ho et al. 2020, after the wide ResNet):

    .. math:: h = \mathrm{conv}(\mathrm{act}(\mathrm{GN}(x))) + U e, \qquad
              \mathrm{out} = \mathrm{conv}(\mathrm{act}(\mathrm{GN}(h))) + \mathrm{skip}(x),

    GN a GroupNorm (up to 8 groups), the convolutions 3x3 with padding 1 (the size is kept), ``U e`` the step
    embedding mapped to one number per channel and added at every pixel, ``skip`` a 1x1 convolution when the
    number of channels changes (else the identity). ``forward(x, e)``: ``x (N, c_in, H, W)``, ``e (N, t_dim)``.
    """

    def __init__(self, c_in: int, c_out: int, t_dim: int, activation: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.t_map = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = activation()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x))) + self.t_map(e)[:, :, None, None]
        return self.conv2(self.act(self.norm2(h))) + self.skip(x)


class UNet(nn.Module):
    r"""A small U-Net noise predictor for images, ``forward(xt, t) -> eps`` shaped like ``xt``: ``(N, C, H, W)``
    with ``H = W = size``, or the same images flat, ``(N, C*H*W)`` (the layout of :func:`coursepkg.data.digits`;
    the output is then flat too).

    Architecture (Ho et al. 2020, cut down: one residual block per level, no attention):

    - a 3x3 convolution from ``channels`` to ``base`` channels;
    - down: for each ``m`` of ``mults``, a :class:`ResBlock` to ``base * m`` channels, whose output is kept
      for the skip connection, then a stride-2 3x3 convolution that halves the image;
    - middle: two residual blocks at the lowest resolution, ``size / 2**len(mults)``;
    - up, in reverse: a 2x2 transposed convolution with stride 2 to ``base * m`` channels (the size doubles;
      each pixel becomes a learned 2x2 patch, four times cheaper than upsampling then a 3x3 convolution at the
      larger size), the kept feature map of the same size concatenated, a residual block;
    - GroupNorm, the activation and a 3x3 convolution to ``channels``.

    The step enters every residual block, through :class:`SinusoidalEmbedding` (``t_dim`` features) and a
    learned layer to ``4 * base`` features. ``size`` must be divisible by ``2 ** len(mults)``: the default
    ``mults=(1, 2)`` halves twice, 8x8 (the digits) to 2x2 and 28x28 (MNIST) to 7x7. At ``base=32`` the
    network has about 0.6M parameters. ``t`` is an int (broadcast to the batch) or a tensor ``(N,)``.
    With ``num_classes`` it is conditional, ``forward(xt, t, y)``, the label's :class:`ClassEmbedding` added to
    the step's (chapter 10).
    """

    def __init__(self, channels: int = 1, size: int = 28, base: int = 32, mults: Sequence[int] = (1, 2),
                 t_dim: int = 64, activation: type[nn.Module] = nn.SiLU, *, num_classes: int | None = None):
        super().__init__()
        self.channels, self.size = V.positive_int("channels", channels), V.positive_int("size", size)
        self.base, self.t_dim = V.positive_int("base", base), V.positive_int("t_dim", t_dim)
        self.num_classes = V.positive_int("num_classes", num_classes, none="unconditional")
        self.mults = _widths("mults", mults, empty=False)
        if size % 2 ** len(self.mults):
            raise ValueError(f"size must be divisible by 2 ** len(mults) = {2 ** len(self.mults)} (the image is "
                             f"halved {len(self.mults)} times), got size={size}")
        act = _activation(activation)
        e_dim = 4 * self.base
        self.time = _time_mlp(self.t_dim, e_dim, act)
        self.classes = None if num_classes is None else ClassEmbedding(self.num_classes, e_dim)
        self.stem = nn.Conv2d(self.channels, self.base, 3, padding=1)
        widths = [self.base * m for m in self.mults]
        self.down, self.halve = nn.ModuleList(), nn.ModuleList()
        c = self.base
        for w in widths:
            self.down.append(ResBlock(c, w, e_dim, act))
            self.halve.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
            c = w
        self.middle = nn.ModuleList([ResBlock(c, c, e_dim, act), ResBlock(c, c, e_dim, act)])
        self.grow, self.up = nn.ModuleList(), nn.ModuleList()
        for w in reversed(widths):
            self.grow.append(nn.ConvTranspose2d(c, w, kernel_size=2, stride=2))
            self.up.append(ResBlock(2 * w, w, e_dim, act))
            c = w
        self.head = nn.Sequential(nn.GroupNorm(_groups(c), c), act(), nn.Conv2d(c, self.channels, 3, padding=1))

    def forward(self, xt: torch.Tensor, t, y=None) -> torch.Tensor:
        C, S = self.channels, self.size
        flat = isinstance(xt, torch.Tensor) and xt.dim() == 2 and xt.shape[1] == C * S * S
        x = xt.reshape(-1, C, S, S) if flat else xt
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (C, S, S):
            got = list(xt.shape) if isinstance(xt, torch.Tensor) else type(xt).__name__
            raise ValueError(f"xt must have shape (N, {C}, {S}, {S}) or (N, {C * S * S}) (channels={C}, size={S}), "
                             f"got {got}")
        e = _conditioning(self, self.time(_batch_steps(t, x.shape[0], x)), y)
        h = self.stem(x)
        kept = []
        for block, halve in zip(self.down, self.halve, strict=True):
            h = block(h, e)
            kept.append(h)
            h = halve(h)
        for block in self.middle:
            h = block(h, e)
        for grow, block in zip(self.grow, self.up, strict=True):
            h = block(torch.cat([grow(h), kept.pop()], dim=1), e)
        out = self.head(h)
        return out.flatten(1) if flat else out
