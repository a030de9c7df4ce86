"""Sample-quality metrics (chapter 09; chapter 06's WAE reuses :func:`mmd`): how close a set of samples is to data.

Every metric compares two batch-first sets of points, ``x`` of shape ``(N, D)`` and ``y`` of shape ``(M, D)``
(float32 or float64, on any device, the same for both), and returns a 0-d tensor (``float(...)`` for a
number). The pairwise ones work through ``x`` in chunks of rows, so that 10 000 x 10 000 points never hold
more than a few tens of MB at once.

- :func:`chamfer`: the Chamfer distance as the KAIST CS492(D) diffusion assignments define it: the *sum* over
  both directions of the squared nearest-neighbour distances.
- :func:`mmd`: the unbiased estimator of the squared maximum mean discrepancy (Gretton et al., 2012), with an
  RBF or inverse multiquadric kernel; differentiable (the WAE's penalty).
- :func:`energy_distance`: ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Szekely & Rizzo), unbiased.
- :func:`sliced_wasserstein`: the p-Wasserstein distance of random 1-D projections, averaged over directions.
- :func:`frechet_distance` (between two Gaussians, in closed form) and :func:`frechet_distance_features`
  (between the Gaussians fitted to two sets of features): the squared Frechet distance FID reports.
- :func:`digit_classifier`, :func:`digit_features`, :func:`digit_frechet_distance`: a small classifier of
  scikit-learn's 8x8 digits, trained here deterministically in about a second (never downloaded), whose
  penultimate layer is the feature space of a Frechet distance for digits (an FID for 8x8 images).
- :func:`precision_recall`: improved precision and recall (Kynkaanniemi et al., 2019): the share of samples
  inside the data's k-NN manifold, and the share of data inside the samples'.

Every metric has a noise floor: its value between two independent draws of the data itself, which a
model cannot beat on average at that sample size; read a score beside it, never alone. The distances
are invariant to translation, so the pairwise ones first centre both sets on their pooled mean, which keeps
the ``|x|^2 + |y|^2 - 2 x.y`` expansion of the squared distances accurate in float32. Even so, float32
resolves a metric to about 1e-7 of its terms (the energy distance of 2-D data in [-4, 4]: to about 1e-6);
pass float64 to read the floor of a large sample.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from coursepkg import _validate as V

CHUNK_ELEMENTS = 2**21
"""How many pairwise distances a chunk holds at most (2M: 8 MB in float32, small enough to stay in cache)."""

KERNELS = ("rbf", "imq")


# --------------------------------------------------------------------------------------------------
# Pairwise distances, in chunks
# --------------------------------------------------------------------------------------------------

def _points(x, y, *, min_rows: int = 1, names: tuple[str, str] = ("x", "y")) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``y`` checked: floating tensors ``(N, D)`` and ``(M, D)``, finite, same dtype and device."""
    for name, value in zip(names, (x, y), strict=True):
        V.tensor(name, value, floating=True, expected="a floating-point tensor of points (N, D)")
        if value.dim() != 2:
            raise ValueError(f"{name} must be a floating-point tensor of points (N, D), got shape {list(value.shape)}")
        if len(value) < min_rows:
            points = f"{min_rows} point{'s' if min_rows > 1 else ''}"
            raise ValueError(f"{name} must hold at least {points}, got {len(value)}")
        V.tensor(name, value, finite=True)
    a, b = names
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{a} and {b} must have the same dimension D, got {a} {list(x.shape)} and {b} {list(y.shape)}")
    V.same_dtype_device(b, y, x, a)
    return x, y


def _centred(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets shifted by their pooled mean (no distance changes; the float32 expansion stays accurate)."""
    centre = torch.cat([x, y]).mean(0).detach()
    return x - centre, y - centre


def _chunks(n: int, m: int):
    """Row slices of an ``(n, m)`` matrix holding at most :data:`CHUNK_ELEMENTS` entries each."""
    rows = max(1, CHUNK_ELEMENTS // max(m, 1))
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def _inner(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """``|b_j|^2 - 2 a_i.b_j`` for all pairs, one fused matmul: ``|a_i - b_j|^2`` less ``|a_i|^2``, which
    orders each row's neighbours as the distance does."""
    return torch.addmm(b_sq, a, b.T, alpha=-2)


def _sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """``|a_i - b_j|^2`` for all pairs, by the expansion ``|a|^2 + |b|^2 - 2 a.b``, clamped at 0 (in place
    when no gradient is wanted)."""
    d2, a_sq = _inner(a, b, b_sq), (a * a).sum(1, keepdim=True)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return (d2 + a_sq).clamp_min(0)
    return d2.add_(a_sq).clamp_min_(0)


def _pair_sum(a: torch.Tensor, b: torch.Tensor, fn) -> torch.Tensor:
    """``sum_{i, j} fn(|a_i - b_j|^2)`` over all pairs, in chunks of rows."""
    b_sq = (b * b).sum(1)
    return sum(fn(_sq_dists(a[rows], b, b_sq)).sum() for rows in _chunks(len(a), len(b)))


def _pair_sum_within(a: torch.Tensor, fn) -> torch.Tensor:
    """``sum_{i != j} fn(|a_i - a_j|^2)``, from the upper triangle alone (half the work).

    Each chunk of rows ``[s, e)`` meets the columns ``[s, N)``: its square block ``[s, e) x [s, e)`` counts
    once (it holds both orders of its pairs), the rest twice. The diagonal of the squared distances is set to
    exactly 0 and ``N fn(0)`` subtracted, so round-off in the expansion cannot leak into the result."""
    a_sq = (a * a).sum(1)
    total = a.new_zeros(())
    for rows in _chunks(len(a), len(a)):
        s, e = rows.start, rows.stop
        d2 = _sq_dists(a[rows], a[s:], a_sq[s:])
        i = torch.arange(e - s, device=a.device)
        f = fn(d2.index_put((i, i), d2.new_zeros(())))
        total = total + f[:, : e - s].sum() + 2 * f[:, e - s:].sum()
    return total - len(a) * fn(a.new_zeros(()))


def _nearest_sq(a: torch.Tensor, b: torch.Tensor, candidates: int = 4) -> torch.Tensor:
    """For each ``a_i``, the squared distance to its nearest ``b_j``, ``(N,)``.

    The expansion proposes the ``candidates`` nearest neighbours (its round-off, about 1e-7 of ``|b|^2`` in
    float32, can swap neighbours at nearly equal distances), then their distances are recomputed directly as
    ``|a_i - b_j|^2`` and the smallest kept: exact (0 for a point of ``b`` itself), and differentiable."""
    b_sq = (b * b).sum(1).detach()
    c = min(candidates, len(b))
    with torch.no_grad():
        index = torch.cat([_inner(a[rows], b, b_sq).topk(c, dim=1, largest=False).indices
                           for rows in _chunks(len(a), len(b))])
    return ((a[:, None, :] - b[index]) ** 2).sum(2).min(1).values


def _kth_nearest_sq(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """For each ``a_i``, the ``k``-th smallest of ``|a_i - b_j|^2`` over ``j`` (``k = 1``: the nearest)."""
    b_sq = (b * b).sum(1)
    kth = torch.cat([_inner(a[rows], b, b_sq).topk(k, dim=1, largest=False).values[:, -1]
                     for rows in _chunks(len(a), len(b))])
    return (kth + (a * a).sum(1)).clamp_min(0)


# --------------------------------------------------------------------------------------------------
# Point-set metrics
# --------------------------------------------------------------------------------------------------

def chamfer(x: torch.Tensor, y: torch.Tensor, *, reduction: str = "sum") -> torch.Tensor:
    """The Chamfer distance between two point sets, as the KAIST CS492(D) diffusion assignments define it.

    ``sum_i min_j |x_i - y_j|^2 + sum_j min_i |x_i - y_j|^2``: the squared distance from every point to its
    nearest neighbour in the other set, *summed* over both sets (``reduction="sum"``, the default; KAIST's
    ``2d_plot_diffusion_todo/chamferdist.py`` in Diffusion-Assignment1-DDPM, Fall 2024, whose full-marks bar
    is a distance below 20 with 2 048 samples against 2 048 data points). A sum, it grows in proportion to
    the number of points when the samples are off by a fixed amount; ``reduction="mean"`` averages over each
    set instead (``mean_i ... + mean_j ...``, the point-cloud convention). Not squared, or one direction only,
    is a different quantity: one direction alone is blind to a sampler that covers only part of the data.

    On :func:`coursepkg.data.kaist_swiss_roll` (2-D, where squared nearest-neighbour distances shrink as
    ``1 / N``, so the floor of the sum hardly depends on ``N``) two independent draws of 2 000 points score
    about 0.38: the noise floor. The roll blurred by Gaussian noise of standard deviation 0.1 per coordinate
    scores about 23, at the bar. The same draws unstandardised (scikit-learn's raw coordinates) score
    ``(6.77 / 2)^2``, about 11.4, times more: about 4.4.
    Differentiable in ``x`` and ``y`` (almost everywhere). Returns a 0-d tensor.
    """
    x, y = _points(x, y)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' (KAIST's definition) or 'mean', got {reduction!r}")
    x, y = _centred(x, y)
    reduce = torch.sum if reduction == "sum" else torch.mean
    return reduce(_nearest_sq(x, y)) + reduce(_nearest_sq(y, x))


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, *, max_points: int = 1000) -> torch.Tensor:
    """The median heuristic: the median Euclidean distance between distinct points of ``x`` and ``y`` pooled.

    Computed on at most ``max_points`` of the pooled points, taken evenly spaced (deterministic, no random
    draw), and detached: a bandwidth is a setting, not something to differentiate."""
    x, y = _points(x, y)
    pooled = torch.cat([x, y]).detach()
    pooled = pooled[:: max(1, math.ceil(len(pooled) / V.positive_int("max_points", max_points)))]
    if len(pooled) < 2:
        raise ValueError("the median heuristic needs at least two points in x and y together")
    pooled = pooled - pooled.mean(0)
    d2 = _sq_dists(pooled, pooled, (pooled * pooled).sum(1))
    i, j = torch.triu_indices(len(pooled), len(pooled), offset=1, device=pooled.device)
    return d2[i, j].median().sqrt()


def _bandwidths(bandwidth, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    if bandwidth is None:
        h = float(median_bandwidth(x, y))
        if h == 0:
            raise ValueError("the median heuristic gives a bandwidth of 0 (most points coincide); pass bandwidth=")
        return [h]
    if isinstance(bandwidth, Sequence) and not isinstance(bandwidth, str):
        if not bandwidth:
            raise ValueError("bandwidth must be a positive number, a non-empty sequence of them, or None")
        return [V.number(f"bandwidth[{i}]", b, positive=True) for i, b in enumerate(bandwidth)]
    return [V.number("bandwidth", bandwidth, positive=True)]


def _kernel(kernel: str, bandwidths: list[float]):
    """``fn(d2)``: the kernel as a function of the squared distance, summed over the bandwidths."""
    if kernel == "rbf":
        return lambda d2: sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)
    if kernel == "imq":
        return lambda d2: sum(h * h / (h * h + d2) for h in bandwidths)
    raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")


def mmd(x: torch.Tensor, y: torch.Tensor, *, kernel: str = "rbf", bandwidth=None) -> torch.Tensor:
    """The unbiased estimate of the squared maximum mean discrepancy ``MMD^2(P, Q)`` (Gretton et al., 2012).

    The U-statistic ``1/(N(N-1)) sum_{i != i'} k(x_i, x_i') + 1/(M(M-1)) sum_{j != j'} k(y_j, y_j')
    - 2/(NM) sum_{i, j} k(x_i, y_j)``: its expectation is exactly ``MMD^2``, so it is near 0, and often
    negative, when ``x`` and ``y`` come from one distribution. Kernels of the distance ``r = |x - y|``:

    - ``"rbf"``: ``exp(-r^2 / (2 h^2))``;
    - ``"imq"`` (inverse multiquadric, the WAE's; Tolstikhin et al., 2018): ``h^2 / (h^2 + r^2)``, i.e.
      ``C / (C + r^2)`` with ``C = h^2``; for a prior ``N(0, I_d)`` the WAE's ``C = 2 d`` is ``h = sqrt(2 d)``.

    ``bandwidth``: ``h``, a positive number; a sequence of them sums the kernels (several scales at once);
    ``None`` (default) takes the median heuristic, :func:`median_bandwidth` of ``x`` and ``y`` pooled.
    Differentiable in ``x`` and ``y`` (the median bandwidth is held fixed). Each set needs two points.
    """
    x, y = _points(x, y, min_rows=2)
    fn = _kernel(kernel, _bandwidths(bandwidth, x, y))
    x, y = _centred(x, y)
    n, m = len(x), len(y)
    return (_pair_sum_within(x, fn) / (n * (n - 1)) + _pair_sum_within(y, fn) / (m * (m - 1))
            - 2 * _pair_sum(x, y, fn) / (n * m))


def _safe_sqrt(d2: torch.Tensor) -> torch.Tensor:
    """``sqrt`` with a finite gradient at 0 (the gradient of a distance at a coincident pair is taken as 0)."""
    return torch.where(d2 > 0, d2.clamp_min(1e-30).sqrt(), d2.new_zeros(()))


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Szekely & Rizzo, 2004), estimated unbiasedly.

    The within-set terms average over the pairs ``i != i'`` (U-statistics), so the estimate is centred on the
    true value, 0 when both sets come from one distribution (and can be negative). The true value is
    ``>= 0``, with equality only for equal distributions; it is the MMD^2 of the kernel ``-|x - y|``.
    Euclidean distances (not squared). Differentiable. Each set needs two points."""
    x, y = _points(x, y, min_rows=2)
    x, y = _centred(x, y)
    n, m = len(x), len(y)
    return (2 * _pair_sum(x, y, _safe_sqrt) / (n * m) - _pair_sum_within(x, _safe_sqrt) / (n * (n - 1))
            - _pair_sum_within(y, _safe_sqrt) / (m * (m - 1)))


def _wasserstein_1d(a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:
    """``W_p^p`` between the empirical measures of the columns of ``a`` ``(N, L)`` and ``b`` ``(M, L)``, per column.

    Exact for any sizes: the quantile functions are step functions with steps at ``i / N`` and ``j / M``; on
    each interval between consecutive steps of either, both are constant (sorted values), and ``W_p^p`` is the
    sum over the intervals of their width times ``|Q_a - Q_b|^p``. Equal sizes reduce to the mean of
    ``|a_(i) - b_(i)|^p`` over the sorted values."""
    a, b = a.sort(0).values, b.sort(0).values
    n, m = len(a), len(b)
    if n == m:
        return (a - b).abs().pow(p).mean(0)
    # the steps, on the CPU in float64 (exact enough for the floors below; MPS has no float64)
    levels = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                        torch.arange(1, m + 1, dtype=torch.float64) / m]).sort().values
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    middle = levels - widths / 2
    ia = (middle * n).floor().long().clamp(0, n - 1).to(a.device)
    ib = (middle * m).floor().long().clamp(0, m - 1).to(a.device)
    widths = widths.to(a.device, a.dtype)
    return (widths[:, None] * (a[ia] - b[ib]).abs().pow(p)).sum(0)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, *, n_projections: int = 256, p: float = 2,
                       seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The sliced p-Wasserstein distance ``SW_p = (E_theta W_p^p(theta.X, theta.Y))^(1/p)`` (Bonneel et al., 2015).

    ``n_projections`` directions ``theta`` are drawn uniformly on the unit sphere (normalised Gaussians, from
    ``seed`` or ``generator``; with neither, from torch's global generator), both sets are projected on each,
    and ``W_p`` between the two 1-D empirical distributions is computed exactly from the sorted projections
    (any sizes ``N`` and ``M``: the quantile functions are matched on the union of their steps). Returns
    the distance, not its p-th power. Between ``N(mu_1, I)`` and ``N(mu_2, I)`` in ``D`` dimensions,
    ``SW_2 = |mu_1 - mu_2| / sqrt(D)``. Differentiable in ``x`` and ``y``.
    """
    x, y = _points(x, y)
    L = V.positive_int("n_projections", n_projections)
    p = V.number("p", p, positive=True)
    if p < 1:
        raise ValueError(f"p must be >= 1 (W_p is a distance for p >= 1), got {p}")
    g = V.generator(seed, generator)  # CPU, float64 (unless the caller's generator is elsewhere): same directions
    theta = torch.randn(x.shape[1], L, generator=g, device=g.device, dtype=torch.float64).to(x.device, x.dtype)
    theta = theta / theta.norm(dim=0, keepdim=True)
    return _wasserstein_1d(x @ theta, y @ theta, p).mean().pow(1 / p)


# --------------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------------

def _sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clamped at 0)."""
    w, q = torch.linalg.eigh(s)
    return (q * w.clamp_min(0).sqrt()) @ q.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """The squared Frechet (2-Wasserstein) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``, as FID reports it.

    ``|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1^(1/2) cov2 cov1^(1/2))^(1/2))`` (Dowson & Landau, 1982). The
    trace of the matrix square root is the sum of the square roots of the eigenvalues of the symmetric
    positive semi-definite ``cov1^(1/2) cov2 cov1^(1/2)``, which has the eigenvalues of ``cov1 cov2``: no
    non-symmetric ``sqrtm`` and no complex round-off. Computed on the CPU in float64; returned on ``mu1``'s
    device in its dtype.
    ``mu1, mu2``: ``(D,)``; ``cov1, cov2``: symmetric positive semi-definite ``(D, D)``.
    """
    V.tensor("mu1", mu1, floating=True, finite=True)
    if mu1.dim() != 1:
        raise ValueError(f"mu1 must be a mean vector (D,), got shape {list(mu1.shape)}")
    d = len(mu1)
    V.tensor("mu2", mu2, shape=(d,), floating=True, finite=True)
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        V.tensor(name, c, shape=(d, d), floating=True, finite=True)
        if not torch.allclose(c, c.T, rtol=1e-5, atol=1e-6 * float(c.abs().max().clamp_min(1))):
            raise ValueError(f"{name} must be a symmetric covariance matrix")
    m1, c1, m2, c2 = (t.detach().to("cpu", torch.float64) for t in (mu1, cov1, mu2, cov2))
    c1, c2 = (c1 + c1.T) / 2, (c2 + c2.T) / 2
    r1 = _sqrtm_psd(c1)
    cross = torch.linalg.eigvalsh(r1 @ c2 @ r1).clamp_min(0).sqrt().sum()
    value = ((m1 - m2) ** 2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * cross
    return value.clamp_min(0).to(mu1.device, mu1.dtype)


def mean_cov(f: torch.Tensor, name: str = "f") -> tuple[torch.Tensor, torch.Tensor]:
    """The mean ``(D,)`` and the unbiased covariance ``(D, D)`` (divided by ``N - 1``) of features ``(N, D)``,
    on the CPU in float64 (what :func:`frechet_distance` computes with)."""
    V.tensor(name, f, floating=True, finite=True, expected="a floating-point tensor of features (N, D)")
    if f.dim() != 2 or len(f) < 2:
        raise ValueError(f"{name} must be features (N, D) with N >= 2, got shape {list(f.shape)}")
    f64 = f.detach().to("cpu", torch.float64)
    mu = f64.mean(0)
    centred = f64 - mu
    return mu, centred.T @ centred / (len(f) - 1)


def frechet_distance_features(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """:func:`frechet_distance` between the Gaussians fitted to two sets of features ``(N, D)`` and ``(M, D)``.

    Means and unbiased covariances (:func:`mean_cov`). Like FID, it is biased upwards at small sample sizes
    (the covariances are estimates): compare values computed at one size, beside the floor between two draws
    of the data."""
    V.tensor("f1", f1, floating=True)
    V.tensor("f2", f2, floating=True)
    if f1.dim() == 2 and f2.dim() == 2 and f1.shape[1] != f2.shape[1]:
        raise ValueError(f"f1 and f2 must have the same feature dimension, got {list(f1.shape)} and {list(f2.shape)}")
    (m1, c1), (m2, c2) = mean_cov(f1, "f1"), mean_cov(f2, "f2")
    return frechet_distance(m1, c1, m2, c2).to(f1.device, f1.dtype)


# --------------------------------------------------------------------------------------------------
# The digits' feature network
# --------------------------------------------------------------------------------------------------

DIGIT_RECIPE = {"version": 1, "hidden": (128, 64), "steps": 200, "lr": 1e-2, "weight_decay": 1e-4,
                "test_size": 360, "seed": 0}
"""How :func:`digit_classifier` is trained: an MLP ``64 -> 128 -> 64 -> 10`` (SiLU) on the 1 437 digits left
after holding out ``test_size`` of them (a fixed permutation from ``seed``), full-batch AdamW for ``steps``
steps. Changing it changes ``version``, which names the file of the disk cache."""

_DIGIT_CACHE: dict = {}


def digit_split() -> tuple[torch.Tensor, torch.Tensor]:
    """The indices ``(train, test)`` into :func:`coursepkg.data.digits` the classifier is trained and tested on."""
    from coursepkg.data import digits

    n = len(digits()[1])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(DIGIT_RECIPE["seed"]))
    return perm[DIGIT_RECIPE["test_size"]:], perm[:DIGIT_RECIPE["test_size"]]


def _train_digit_classifier() -> dict:
    """Train the classifier of :data:`DIGIT_RECIPE` and return its ``state_dict`` (float64, on the CPU).

    Deterministic: full-batch steps (no batch sampling), the initial weights from a fixed seed inside
    ``torch.random.fork_rng`` (torch's global generator is left as it was), float64 on one CPU thread; with
    gradients on even when called under ``torch.no_grad()`` (from :func:`digit_features`)."""
    from coursepkg.data import digits
    from coursepkg.nn import MLP

    r = DIGIT_RECIPE
    images, labels = digits(dtype=torch.float64)
    train, _ = digit_split()
    x, y = images[train], labels[train]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # a tiny problem: one thread is as fast, and independent of the machine's count
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(r["seed"])
            net = MLP(64, r["hidden"], 10, activation=nn.SiLU).double()
            opt = torch.optim.AdamW(net.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
            for _ in range(r["steps"]):
                opt.zero_grad()
                nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _digit_state(disk_cache: bool) -> dict:
    """The classifier's weights: from memory, else (``disk_cache``) from its file, else trained; with
    ``disk_cache``, the file is written when missing (to a temporary name first, then renamed)."""
    from coursepkg.data import data_root

    path = data_root() / "models" / f"digit_classifier_v{DIGIT_RECIPE['version']}.pt"
    if "state" not in _DIGIT_CACHE:
        if disk_cache and path.is_file():
            _DIGIT_CACHE["state"] = torch.load(path, map_location="cpu", weights_only=True)
        else:
            _DIGIT_CACHE["state"] = _train_digit_classifier()
    if disk_cache and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        torch.save(_DIGIT_CACHE["state"], tmp)
        os.replace(tmp, path)
    return _DIGIT_CACHE["state"]


def digit_classifier(*, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                     disk_cache: bool = False) -> nn.Module:
    """The small classifier of the 8x8 digits whose penultimate layer gives :func:`digit_features`.

    An MLP ``64 -> 128 -> 64 -> 10`` trained by :data:`DIGIT_RECIPE` (about a second on a CPU; about 97% on
    the held-out digits of :func:`digit_split`), never downloaded. It is trained once per process and kept
    in memory; ``disk_cache=True`` also keeps its weights in ``data_root() / "models"`` (``$COURSEPKG_DATA``,
    else ``~/.cache/coursepkg``; :func:`coursepkg.data.data_root`), read back by later processes. Returns
    the network in eval mode, without gradients, on ``device`` (default :func:`coursepkg.config.device`) in
    ``dtype``; its input is images scaled like :func:`coursepkg.data.digits`, in [0, 1], shape ``(N, 64)``.
    """
    from coursepkg import config
    from coursepkg.nn import MLP

    dev = torch.device(device) if device is not None else config.device()
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    key = (str(dev), dtype)
    if key not in _DIGIT_CACHE:
        with torch.random.fork_rng(devices=[]):  # its initial weights, replaced at once, draw from torch's generator
            net = MLP(64, DIGIT_RECIPE["hidden"], 10, activation=nn.SiLU)
        net.load_state_dict(_digit_state(disk_cache))
        _DIGIT_CACHE[key] = net.to(device=dev, dtype=dtype).eval().requires_grad_(False)
    elif disk_cache:
        _digit_state(disk_cache)
    return _DIGIT_CACHE[key]


def _digit_images(name: str, x) -> torch.Tensor:
    V.tensor(name, x, floating=True, finite=True,
             expected="a floating-point batch of 8x8 digits, (N, 64) or (N, 1, 8, 8), scaled to [0, 1]")
    if not (x.dim() == 2 and x.shape[1] == 64 or x.dim() == 4 and tuple(x.shape[1:]) == (1, 8, 8)):
        raise ValueError(f"{name} must be a batch of 8x8 digits, (N, 64) or (N, 1, 8, 8), like "
                         f"coursepkg.data.digits() returns them; got shape {list(x.shape)}")
    return x.reshape(len(x), 64)


@torch.no_grad()
def digit_features(x: torch.Tensor) -> torch.Tensor:
    """The 64 features of :func:`digit_classifier`'s penultimate layer (after its activation), ``(N, 64)``.

    ``x``: images like :func:`coursepkg.data.digits` returns them, ``(N, 64)`` (or ``(N, 1, 8, 8)``) scaled to
    [0, 1] (map samples of a model trained on ``2 x - 1`` back first). Computed on ``x``'s device in its dtype."""
    x = _digit_images("x", x)
    net = digit_classifier(device=x.device, dtype=x.dtype)
    return net.net[:-1](x)


def digit_frechet_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Frechet distance between two sets of 8x8 digits in the classifier's feature space (an FID for digits).

    :func:`frechet_distance_features` of :func:`digit_features`; ``x`` and ``y`` as :func:`digit_features`
    takes them (at least two images each). Read it beside the floor: the value between two halves of the
    data, at the same sample size."""
    return frechet_distance_features(digit_features(x), digit_features(y))


# --------------------------------------------------------------------------------------------------
# Precision and recall
# --------------------------------------------------------------------------------------------------

class PrecisionRecall(NamedTuple):
    precision: float
    """The share of the samples inside the data's manifold: how many samples look real (fidelity)."""
    recall: float
    """The share of the data inside the samples' manifold: how much of the data the samples cover (diversity)."""


def _manifold_share(points: torch.Tensor, support: torch.Tensor, radii_sq: torch.Tensor) -> float:
    """The share of ``points`` inside some ball ``|p - s_j|^2 <= radii_sq[j]`` around the ``support``:
    ``|s_j|^2 - r_j^2 - 2 p.s_j <= -|p|^2``, one fused matmul and a comparison per chunk."""
    shifted = (support * support).sum(1) - radii_sq
    p_sq = (points * points).sum(1, keepdim=True)
    inside = torch.cat([(_inner(points[rows], support, shifted) <= -p_sq[rows]).any(1)
                        for rows in _chunks(len(points), len(support))])
    return inside.double().mean().item()


@torch.no_grad()
def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al., 2019), in whatever space ``real`` and ``fake`` live.

    The data's manifold is the union of the balls around each real point reaching its ``k``-th nearest real
    neighbour (itself excluded; the paper's ``k = 3``); precision is the share of ``fake`` points inside it.
    Recall swaps the roles: the share of ``real`` points inside the union of the fake points' k-NN balls.
    Identical sets score ``(1, 1)``; disjoint ones ``(0, 0)``. Compute them on features
    (:func:`digit_features`) for images, on the points themselves for 2-D data; each set needs ``k + 1``
    points. Returns :class:`PrecisionRecall` (floats).
    """
    k = V.positive_int("k", k)
    real, fake = _points(real, fake, min_rows=k + 1, names=("real", "fake"))
    real, fake = _centred(real, fake)
    r_real = _kth_nearest_sq(real, real, k + 1)  # the smallest is the point itself
    r_fake = _kth_nearest_sq(fake, fake, k + 1)
    return PrecisionRecall(_manifold_share(fake, real, r_real), _manifold_share(real, fake, r_fake))
