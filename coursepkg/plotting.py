"""The course's figures: one matplotlib style, sizes that fit the book's text column, small helpers.

The book is read in a text column about 700 px wide, and a figure is shown at 100 dpi, so a figure
:data:`TEXT_WIDTH` = 6.8 inches wide (700 px with the 0.1-inch margins Jupyter saves around it) is
shown at its natural size, and its text at the size it was set in. :data:`STYLE` sets that text no
smaller than the page's body text (11 pt at 100 dpi is 15 px; tick labels 10 pt, 14 px), and
:func:`coursepkg.config.setup` applies the style in every notebook.

The rules every chapter's figures follow (COURSE.md, "The book"):

- make them with :func:`subplots` (or at most :data:`TEXT_WIDTH` wide): at most three panels per
  row, grids otherwise;
- every panel has a title or the figure a caption, axes have labels, and a panel with more than
  one series has a legend;
- the plotting cell is tagged ``hide-input`` and carries the caption in its metadata
  (``{"mystnb": {"figure": {"caption": ..., "name": "fig-..."}}}``); the text refers to it with
  ``{numref}`` by its name.

Helpers for what several chapters draw: :func:`image_grid` (a mosaic of small images),
:func:`scatter_2d` (2-D samples on equal axes), :func:`density_grid` (a log-density on a grid,
for contour plots) and :func:`ellipse_params` / :func:`gaussian_ellipse` (the n-standard-deviation
ellipse of a 2-D Gaussian).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from coursepkg import _validate as V

TEXT_WIDTH = 6.8
"""Width in inches of a figure that fills the text column: 680 px at 100 dpi, 700 px once Jupyter's
inline backend has saved it with ``bbox_inches="tight"`` and its 0.1-inch padding."""

MAX_COLUMNS = 3
"""At most this many panels side by side: a fourth would make each panel narrower than 230 px."""

STYLE: dict[str, object] = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "figure.figsize": (5.6, 3.6),
    "figure.constrained_layout.use": True,
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.title_fontsize": 10,
    "figure.titlesize": 12,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.8,
    "image.cmap": "viridis",
    "savefig.format": "png",
}
"""The course's matplotlib rcParams (text sizes in points; at 100 dpi 1 pt is 1.39 px)."""


def use_style() -> None:
    """Apply :data:`STYLE` to matplotlib (called by :func:`coursepkg.config.setup`)."""
    import matplotlib

    matplotlib.rcParams.update(STYLE)


def figsize(ncols: int = 1, nrows: int = 1, *, aspect: float = 0.75, width: float | None = None
            ) -> tuple[float, float]:
    """``(width, height)`` in inches of a figure of ``nrows`` x ``ncols`` panels that fits the column.

    One panel is 5.6 inches wide (80 % of the column), two or three share :data:`TEXT_WIDTH`; each
    panel is ``aspect`` times as high as it is wide. ``width`` overrides the width (at most
    :data:`TEXT_WIDTH`).
    """
    ncols, nrows = V.positive_int("ncols", ncols), V.positive_int("nrows", nrows)
    aspect = V.number("aspect", aspect, positive=True)
    if ncols > MAX_COLUMNS:
        raise ValueError(f"ncols={ncols}: at most {MAX_COLUMNS} panels fit side by side in the text column; "
                         f"use a grid of {math.ceil(ncols / MAX_COLUMNS)} rows instead")
    if width is None:
        width = 5.6 if ncols == 1 else TEXT_WIDTH
    width = V.number("width", width, positive=True)
    if width > TEXT_WIDTH:
        raise ValueError(f"width={width} inches: a figure is at most TEXT_WIDTH={TEXT_WIDTH} inches wide")
    return width, width / ncols * aspect * nrows


def subplots(nrows: int = 1, ncols: int = 1, *, aspect: float = 0.75, width: float | None = None, **kwargs):
    """``plt.subplots`` with a size from :func:`figsize` and a constrained layout.

    Extra keyword arguments (``sharex``, ``sharey``, ``gridspec_kw``, ``subplot_kw``...) go to
    :func:`matplotlib.pyplot.subplots`; ``figsize`` and ``layout`` are set here.
    """
    import matplotlib.pyplot as plt

    for key in ("figsize", "layout"):
        if key in kwargs:
            raise TypeError(f"subplots() sets {key} itself; pass aspect= or width= instead")
    return plt.subplots(nrows, ncols, figsize=figsize(ncols, nrows, aspect=aspect, width=width),
                        layout="constrained", **kwargs)


def _as_images(images, shape: Sequence[int] | None) -> torch.Tensor:
    images = torch.as_tensor(images).detach().to("cpu", torch.float64)
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or math.prod(shape) != images.shape[-1]:
            raise ValueError(f"shape={shape} does not match images of {images.shape[-1]} values each")
        images = images.reshape(*images.shape[:-1], *shape)
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dim() != 3:
        raise ValueError(f"images must be (n, height, width), (n, 1, height, width) or (n, d) with shape=, "
                         f"got a tensor of shape {tuple(images.shape)}")
    return images


def tile(images, ncols: int, *, shape: Sequence[int] | None = None, pad: int = 1) -> torch.Tensor:
    """One 2-D array holding ``images`` in rows of ``ncols``, separated by ``pad`` pixels of NaN.

    ``images`` is ``(n, h, w)``, ``(n, 1, h, w)``, or ``(n, h * w)`` with ``shape=(h, w)``. The
    NaN padding shows as the axes' background (``imshow`` leaves it blank).
    """
    images = _as_images(images, shape)
    ncols = V.positive_int("ncols", ncols)
    n, h, w = images.shape
    nrows = math.ceil(n / ncols)
    out = torch.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad), float("nan"), dtype=images.dtype)
    for i in range(n):
        r, c = divmod(i, ncols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = images[i]
    return out


def image_grid(images, ncols: int, *, ax=None, shape: Sequence[int] | None = None, title: str | None = None,
               vmin: float | None = 0.0, vmax: float | None = 1.0, cmap: str = "gray_r"):
    """Draw ``images`` as a mosaic of ``ncols`` columns on ``ax`` (a new axes if ``None``); returns ``ax``.

    Pixel values are shown between ``vmin`` and ``vmax`` (default: the unit interval of the digits);
    the axes' ticks are removed.
    """
    import matplotlib.pyplot as plt

    mosaic = tile(images, ncols, shape=shape)
    if ax is None:
        _, ax = plt.subplots(figsize=figsize(1, aspect=mosaic.shape[0] / mosaic.shape[1], width=4.0))
    ax.imshow(mosaic.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title is not None:
        ax.set_title(title)
    return ax


def scatter_2d(x, *, ax=None, label: str | None = None, title: str | None = None, s: float = 4,
               alpha: float = 0.5, lim: float | tuple[float, float] | None = None, **kwargs):
    """Scatter 2-D points ``x`` of shape ``(n, 2)`` on equal axes labelled $x_1$, $x_2$; returns ``ax``.

    ``lim`` sets both axes' limits (a number ``L`` means ``(-L, L)``).
    """
    import matplotlib.pyplot as plt

    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"x must be (n, 2) points, got a tensor of shape {tuple(x.shape)}")
    if ax is None:
        _, ax = plt.subplots(figsize=figsize(1, aspect=1.0, width=4.0))
    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=s, alpha=alpha, label=label, **kwargs)
    ax.set_aspect("equal")
    ax.set(xlabel="$x_1$", ylabel="$x_2$")
    if lim is not None:
        lo, hi = (-lim, lim) if isinstance(lim, (int, float)) else lim
        ax.set(xlim=(lo, hi), ylim=(lo, hi))
    if title is not None:
        ax.set_title(title)
    return ax


def density_grid(log_density: Callable[[torch.Tensor], torch.Tensor], lim: float | tuple[float, float],
                 n: int = 200, *, dtype: torch.dtype = torch.float64
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(X1, X2, log_p)`` on an ``n`` x ``n`` grid of the square ``lim``, for ``contour``/``contourf``.

    ``log_density`` maps points ``(m, 2)`` to log-densities ``(m,)``; it is called once on all the
    grid's points, without gradients.
    """
    V.function("log_density", log_density)
    n = V.positive_int("n", n)
    lo, hi = (-lim, lim) if isinstance(lim, (int, float)) else lim
    g = torch.linspace(float(lo), float(hi), n, dtype=dtype)
    X1, X2 = torch.meshgrid(g, g, indexing="xy")
    with torch.no_grad():
        out = log_density(torch.stack([X1, X2], -1).reshape(-1, 2))
    out = torch.as_tensor(out)
    if out.shape != (n * n,):
        raise ValueError(f"log_density returned shape {tuple(out.shape)} for {n * n} points; expected ({n * n},)")
    return X1, X2, out.reshape(n, n).detach().cpu()


def ellipse_params(mean, cov, n_std: float = 2.0) -> tuple[list[float], float, float, float]:
    """``(centre, width, height, angle)`` of the ``n_std``-standard-deviation ellipse of the 2-D Gaussian
    ``N(mean, cov)``, as :class:`matplotlib.patches.Ellipse` takes them (the angle in degrees).

    The axes are the eigenvectors of ``cov``, their half-lengths ``n_std`` times the square roots of
    its eigenvalues: the ellipse is the contour ``(x - mean)^T cov^{-1} (x - mean) = n_std^2``.
    """
    mean = torch.as_tensor(mean).detach().to("cpu", torch.float64)
    cov = torch.as_tensor(cov).detach().to("cpu", torch.float64)
    if mean.shape != (2,) or cov.shape != (2, 2):
        raise ValueError(f"mean must be (2,) and cov (2, 2), got {tuple(mean.shape)} and {tuple(cov.shape)}")
    n_std = V.number("n_std", n_std, positive=True)
    vals, vecs = torch.linalg.eigh(0.5 * (cov + cov.T))
    if not vals[0] > 0:
        raise ValueError(f"cov must be positive definite, its eigenvalues are {vals.tolist()}")
    angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))  # direction of the larger axis
    return mean.tolist(), 2 * n_std * vals[1].sqrt().item(), 2 * n_std * vals[0].sqrt().item(), angle


def gaussian_ellipse(ax, mean, cov, n_std: float = 2.0, **kwargs):
    """Draw the ``n_std``-standard-deviation ellipse of ``N(mean, cov)`` on ``ax`` (unfilled by
    default; ``kwargs`` go to :class:`matplotlib.patches.Ellipse`) and return the patch."""
    from matplotlib.patches import Ellipse

    centre, width, height, angle = ellipse_params(mean, cov, n_std)
    kwargs.setdefault("fill", False)
    return ax.add_patch(Ellipse(centre, width, height, angle=angle, **kwargs))
