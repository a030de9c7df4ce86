"""coursepkg.metrics against closed forms and hand-computed answers; the KAIST swiss roll; the digit features."""

import math

import numpy as np
import pytest
import torch

from coursepkg import data
from coursepkg import metrics as M


def gaussians(n, d, mean, std, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.as_tensor(mean, dtype=dtype) + std * torch.randn(n, d, generator=g, dtype=dtype)


def replicate(metric, draw, reps):
    """Mean and standard error of ``metric`` over ``reps`` independent draws ``draw(seed) -> (x, y)``."""
    values = torch.tensor([float(metric(*draw(seed))) for seed in range(reps)], dtype=torch.float64)
    return values.mean().item(), (values.std() / math.sqrt(reps)).item(), values


# --------------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------------

def test_frechet_distance_diagonal_and_commuting_closed_form():
    # for commuting covariances (same eigenvectors) the trace term is sum (sqrt(a_k) - sqrt(b_k))^2
    a, b = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([9.0, 1.0, 0.25], dtype=torch.float64)
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    expected = 1 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0  # = 10
    assert float(M.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))) == pytest.approx(expected, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    c1, c2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    assert float(M.frechet_distance(mu1, c1, mu2, c2)) == pytest.approx(expected, abs=1e-10)
    assert float(M.frechet_distance(mu1, c1, mu1, c1)) == pytest.approx(0, abs=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_and_is_symmetric():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    c1, c2 = a @ a.T + 0.1 * torch.eye(5, dtype=torch.float64), b @ b.T  # do not commute
    mu1, mu2 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    s1, s2 = c1.numpy(), c2.numpy()
    expected = ((mu1 - mu2) ** 2).sum().item() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert float(M.frechet_distance(mu1, c1, mu2, c2)) == pytest.approx(expected, rel=1e-9)
    assert float(M.frechet_distance(mu2, c2, mu1, c1)) == pytest.approx(expected, rel=1e-9)
    # float32 inputs come back float32, computed in float64
    out = M.frechet_distance(mu1.float(), c1.float(), mu2.float(), c2.float())
    assert out.dtype == torch.float32 and float(out) == pytest.approx(expected, rel=1e-5)


def test_frechet_distance_features_approaches_the_closed_form():
    x = gaussians(50_000, 2, [0.0, 0.0], 1.0, 0)
    y = gaussians(50_000, 2, [1.0, 0.0], 2.0, 1)
    # |mu|^2 + 2 (1 - 2)^2 = 1 + 2
    assert float(M.frechet_distance_features(x, y)) == pytest.approx(3.0, abs=0.05)
    assert float(M.frechet_distance_features(x, x)) == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------------------------------
# MMD
# --------------------------------------------------------------------------------------------------

def rbf_mmd2_gaussians(m1, s1, m2, s2, h, d):
    """MMD^2 of exp(-r^2 / (2 h^2)) between N(m1, s1^2 I) and N(m2, s2^2 I) in d dimensions.

    For independent X ~ N(a, s_a^2 I), Y ~ N(b, s_b^2 I): X - Y ~ N(a - b, v I), v = s_a^2 + s_b^2, and
    E exp(-|Z|^2 / (2 h^2)) = (h^2 / (h^2 + v))^(d/2) exp(-|a - b|^2 / (2 (h^2 + v))) (a Gaussian integral)."""
    def e(delta2, v):
        return (h * h / (h * h + v)) ** (d / 2) * math.exp(-delta2 / (2 * (h * h + v)))
    delta2 = sum((a - b) ** 2 for a, b in zip(m1, m2, strict=True))
    return e(0, 2 * s1 * s1) + e(0, 2 * s2 * s2) - 2 * e(delta2, s1 * s1 + s2 * s2)


def test_mmd_rbf_matches_the_gaussian_closed_form():
    truth = rbf_mmd2_gaussians([0.0, 0.0], 1.0, [1.0, 0.0], 1.5, 1.0, 2)
    mean, se, _ = replicate(lambda x, y: M.mmd(x, y, bandwidth=1.0),
                            lambda s: (gaussians(1000, 2, [0.0, 0.0], 1.0, 2 * s),
                                       gaussians(1000, 2, [1.0, 0.0], 1.5, 2 * s + 1)), 10)
    assert truth > 0.05 and abs(mean - truth) < 4 * se + 1e-4, (mean, se, truth)


def test_mmd_is_unbiased_not_the_biased_v_statistic():
    # same distribution: the U-statistic averages to 0 and is often negative; the V-statistic is always > 0
    def draw(s):
        return gaussians(40, 2, [0.0, 0.0], 1.0, 2 * s), gaussians(40, 2, [0.0, 0.0], 1.0, 2 * s + 1)

    mean, se, values = replicate(lambda x, y: M.mmd(x, y, bandwidth=1.0), draw, 300)
    assert abs(mean) < 4 * se and (values < 0).sum() > 50
    x, y = draw(0)
    kern = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / 2)  # noqa: E731
    biased = kern(x, x).mean() + kern(y, y).mean() - 2 * kern(x, y).mean()
    n = len(x)
    unbiased = ((kern(x, x).sum() - n) / (n * (n - 1)) + (kern(y, y).sum() - n) / (n * (n - 1))
                - 2 * kern(x, y).mean())
    assert float(M.mmd(x, y, bandwidth=1.0)) == pytest.approx(float(unbiased), abs=1e-12)
    assert float(biased) > float(unbiased) + 1e-3


@pytest.mark.parametrize("kernel, k", [("rbf", lambda r2: math.exp(-r2 / 2)), ("imq", lambda r2: 1 / (1 + r2))])
def test_mmd_by_hand_on_four_points(kernel, k):
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[3.0], [5.0]], dtype=torch.float64)
    # within x: one pair at distance 1 (counted both ways, over n (n - 1) = 2); within y: distance 2;
    # across: distances 3, 5, 2, 4
    expected = k(1) + k(4) - 2 * (k(9) + k(25) + k(4) + k(16)) / 4
    assert float(M.mmd(x, y, kernel=kernel, bandwidth=1.0)) == pytest.approx(expected, abs=1e-12)
    # several bandwidths sum the kernels
    both = M.mmd(x, y, kernel=kernel, bandwidth=[1.0, 2.0])
    assert float(both) == pytest.approx(float(M.mmd(x, y, kernel=kernel, bandwidth=1.0))
                                        + float(M.mmd(x, y, kernel=kernel, bandwidth=2.0)), abs=1e-12)


def test_mmd_median_heuristic():
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[3.0]], dtype=torch.float64)
    assert float(M.median_bandwidth(x, y)) == pytest.approx(2.0)  # distances 1, 3, 2
    x, y = gaussians(300, 3, [0.0] * 3, 1.0, 0), gaussians(300, 3, [0.5] * 3, 1.0, 1)
    h = float(M.median_bandwidth(x, y))
    assert float(M.mmd(x, y)) == float(M.mmd(x, y, bandwidth=h))
    assert float(M.mmd(x, y, kernel="imq")) == float(M.mmd(x, y, kernel="imq", bandwidth=h))


def test_differentiable_and_the_mmd_gradient_pulls_samples_to_the_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 2, generator=g, dtype=torch.float64) + 1
    for kernel in M.KERNELS:
        assert torch.autograd.gradcheck(lambda a, kernel=kernel: M.mmd(a, y, kernel=kernel, bandwidth=1.3), (x,))
    assert torch.autograd.gradcheck(lambda a: M.energy_distance(a, y), (x,))
    assert torch.autograd.gradcheck(lambda a: M.sliced_wasserstein(a, y, n_projections=7, seed=0), (x,))
    z = (gaussians(200, 2, [3.0, 0.0], 1.0, 0)).requires_grad_(True)
    data_points = gaussians(200, 2, [0.0, 0.0], 1.0, 1)
    before = M.mmd(z, data_points, kernel="imq", bandwidth=2.0)
    before.backward()
    after = M.mmd(z.detach() - 20.0 * z.grad, data_points, kernel="imq", bandwidth=2.0)
    assert float(after) < float(before.detach())


# --------------------------------------------------------------------------------------------------
# Energy distance
# --------------------------------------------------------------------------------------------------

def energy_1d_gaussians(m1, s1, m2, s2):
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| between N(m1, s1^2) and N(m2, s2^2).

    E|Z| for Z ~ N(mu, v): sqrt(2 v / pi) exp(-mu^2 / (2 v)) + mu (1 - 2 Phi(-mu / sqrt v)); X - X' ~ N(0, 2 s1^2)."""
    def abs_mean(mu, v):
        phi = 0.5 * (1 + math.erf(-mu / math.sqrt(2 * v)))
        return math.sqrt(2 * v / math.pi) * math.exp(-mu * mu / (2 * v)) + mu * (1 - 2 * phi)
    return 2 * abs_mean(m1 - m2, s1**2 + s2**2) - 2 * s1 / math.sqrt(math.pi) - 2 * s2 / math.sqrt(math.pi)


def test_energy_distance_matches_the_1d_gaussian_closed_form():
    truth = energy_1d_gaussians(0.0, 1.0, 1.0, 2.0)
    mean, se, _ = replicate(M.energy_distance, lambda s: (gaussians(1000, 1, [0.0], 1.0, 2 * s),
                                                          gaussians(1000, 1, [1.0], 2.0, 2 * s + 1)), 10)
    assert truth > 0.1 and abs(mean - truth) < 4 * se + 1e-4, (mean, se, truth)


def test_energy_distance_by_hand_and_unbiased():
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[3.0], [5.0]], dtype=torch.float64)
    assert float(M.energy_distance(x, y)) == pytest.approx(2 * 3.5 - 1 - 2)  # across: 3, 5, 2, 4
    mean, se, values = replicate(M.energy_distance, lambda s: (gaussians(30, 2, [0.0, 0.0], 1.0, 2 * s),
                                                               gaussians(30, 2, [0.0, 0.0], 1.0, 2 * s + 1)), 200)
    assert abs(mean) < 4 * se and (values < 0).sum() > 30


# --------------------------------------------------------------------------------------------------
# Chamfer
# --------------------------------------------------------------------------------------------------

def test_chamfer_known_answers():
    grid = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(4.0), indexing="ij"), -1).reshape(-1, 2)
    assert float(M.chamfer(grid, grid)) == 0.0
    shift = torch.tensor([0.3, -0.2])
    # each point's nearest neighbour is its own translate (the spacing is 1): 2 N |shift|^2
    assert float(M.chamfer(grid, grid + shift)) == pytest.approx(2 * len(grid) * 0.13, rel=1e-6)
    assert float(M.chamfer(grid, grid + shift, reduction="mean")) == pytest.approx(2 * 0.13, rel=1e-6)
    line = torch.arange(10.0)[:, None]
    evens = line[::2]
    # evens -> line: 0; line -> evens: the five odd points are each at distance 1
    assert float(M.chamfer(line, evens)) == pytest.approx(5.0) == float(M.chamfer(evens, line))
    assert float(M.chamfer(line, evens, reduction="mean")) == pytest.approx(5 / 10)
    # distances squared: a point 2 away counts 4, not 2
    assert float(M.chamfer(torch.tensor([[0.0]]), torch.tensor([[2.0]]))) == pytest.approx(8.0)


def test_chamfer_is_kaists_formula():
    distance = pytest.importorskip("scipy.spatial.distance")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 2, generator=g), torch.randn(200, 2, generator=g) + 0.5
    d = distance.cdist(x.double().numpy(), y.double().numpy())  # KAIST's chamferdist.py
    expected = (d.min(axis=1) ** 2).sum() + (d.min(axis=0) ** 2).sum()
    assert float(M.chamfer(x, y)) == pytest.approx(expected, rel=1e-5)


def test_chamfer_gradient():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    M.chamfer(x, y).backward()
    # x0 -> y0 (d^2 = 1), x1 -> y1 (1); y0 -> x0 (1), y1 -> x1 (1): the gradient of each term is 2 (x - y)
    assert torch.allclose(x.grad, torch.tensor([[-4.0, 0.0], [0.0, -4.0]]))


# --------------------------------------------------------------------------------------------------
# Sliced Wasserstein
# --------------------------------------------------------------------------------------------------

def test_sliced_wasserstein_of_a_shift():
    mu = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    truth = mu.norm().item() / 2  # |mu| / sqrt(D)
    x = gaussians(2000, 4, [0.0] * 4, 1.0, 0)
    # a shifted copy: W_p of every projection is exactly |theta . mu|; 1000 directions: about 1.6% error
    assert float(M.sliced_wasserstein(x, x + mu, n_projections=1000, seed=0)) == pytest.approx(truth, rel=0.05)
    assert float(M.sliced_wasserstein(x, x + mu, n_projections=1000, seed=0, p=1)) == pytest.approx(
        mu.norm().item() * math.gamma(2) / (math.sqrt(math.pi) * math.gamma(2.5)), rel=0.05)  # E|theta . mu|
    y = gaussians(2000, 4, mu.tolist(), 1.0, 1)  # an independent draw
    assert float(M.sliced_wasserstein(x, y, n_projections=1000, seed=0)) == pytest.approx(truth, rel=0.06)


def test_sliced_wasserstein_unequal_sizes_is_exact_in_1d():
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [0.5], [1.0]], dtype=torch.float64)
    # quantiles: x is 0 on (0, 1/2], 1 after; y is 0, 0.5, 1 on thirds: |diff| = 0.5 on (1/3, 2/3]
    assert float(M.sliced_wasserstein(x, y, n_projections=3, p=1, seed=0)) == pytest.approx(1 / 6)
    assert float(M.sliced_wasserstein(x, y, n_projections=3, p=2, seed=0)) == pytest.approx(math.sqrt(1 / 12))
    stats = pytest.importorskip("scipy.stats")
    a, b = gaussians(37, 1, [0.0], 1.0, 0), gaussians(53, 1, [0.4], 1.5, 1)
    expected = stats.wasserstein_distance(a[:, 0].numpy(), b[:, 0].numpy())
    assert float(M.sliced_wasserstein(a, b, n_projections=2, p=1, seed=0)) == pytest.approx(expected, rel=1e-10)


def test_sliced_wasserstein_seeding():
    x, y = gaussians(100, 3, [0.0] * 3, 1.0, 0), gaussians(100, 3, [1.0] * 3, 1.0, 1)
    a = M.sliced_wasserstein(x, y, n_projections=8, seed=5)
    assert float(a) == float(M.sliced_wasserstein(x, y, n_projections=8, generator=torch.Generator().manual_seed(5)))
    assert float(a) != float(M.sliced_wasserstein(x, y, n_projections=8, seed=6))
    torch.manual_seed(0)
    b = M.sliced_wasserstein(x, y, n_projections=8)
    torch.manual_seed(0)
    assert float(b) == float(M.sliced_wasserstein(x, y, n_projections=8))


# --------------------------------------------------------------------------------------------------
# Precision and recall
# --------------------------------------------------------------------------------------------------

def test_precision_recall_identical_disjoint_and_mode_dropping():
    x = gaussians(400, 2, [0.0, 0.0], 1.0, 0)
    assert M.precision_recall(x, x) == (1.0, 1.0)
    assert M.precision_recall(x, x + 100.0) == (0.0, 0.0)
    # the data has two far-apart modes; the samples cover one of them: faithful but half as diverse
    real = torch.cat([gaussians(500, 2, [-10.0, 0.0], 1.0, 1), gaussians(500, 2, [10.0, 0.0], 1.0, 2)])
    fake = gaussians(500, 2, [-10.0, 0.0], 1.0, 3)
    precision, recall = M.precision_recall(real, fake)
    assert precision > 0.95 and 0.45 < recall < 0.55
    # too narrow samples: inside the data (high precision), covering little of it (low recall)
    precision, recall = M.precision_recall(real[:500], gaussians(500, 2, [-10.0, 0.0], 0.1, 4))
    assert precision > 0.95 and recall < 0.2


# --------------------------------------------------------------------------------------------------
# Chunking, dtypes, errors
# --------------------------------------------------------------------------------------------------

def test_chunked_equals_unchunked(monkeypatch):
    x, y = gaussians(90, 3, [0.0] * 3, 1.0, 0), gaussians(70, 3, [0.3] * 3, 1.2, 1)
    metrics = {"chamfer": lambda: M.chamfer(x, y), "mmd": lambda: M.mmd(x, y), "imq": lambda: M.mmd(x, y, kernel="imq"),
               "energy": lambda: M.energy_distance(x, y), "pr": lambda: M.precision_recall(x, y)}
    whole = {name: f() for name, f in metrics.items()}
    monkeypatch.setattr(M, "CHUNK_ELEMENTS", 97)  # one row, or a few, per chunk: every boundary case
    for name, f in metrics.items():
        got = f()
        if name == "pr":
            assert got == whole[name]
        else:
            assert float(got) == pytest.approx(float(whole[name]), rel=1e-10, abs=1e-14), name


def test_float32_agrees_with_float64():
    x, y = gaussians(2000, 2, [0.0, 0.0], 2.0, 0), gaussians(2000, 2, [0.2, 0.0], 2.0, 1)
    for f in (M.chamfer, M.mmd, M.energy_distance, lambda a, b: M.sliced_wasserstein(a, b, seed=0)):
        lo, hi = f(x.float(), y.float()), f(x, y)
        assert lo.dtype == torch.float32 and hi.dtype == torch.float64
        assert float(lo) == pytest.approx(float(hi), rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("call, error, message", [
    (lambda: M.chamfer([[0.0]], torch.zeros(2, 1)), TypeError, "x must be a floating-point tensor of points"),
    (lambda: M.chamfer(torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.long)), TypeError, "y must be"),
    (lambda: M.chamfer(torch.zeros(3), torch.zeros(2, 1)), ValueError, r"points \(N, D\), got shape \[3\]"),
    (lambda: M.chamfer(torch.zeros(2, 2), torch.zeros(2, 3)), ValueError, "same dimension D"),
    (lambda: M.chamfer(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.float64)), ValueError, "y is torch.float64"),
    (lambda: M.chamfer(torch.tensor([[math.nan]]), torch.zeros(2, 1)), ValueError, "x contains NaN"),
    (lambda: M.chamfer(torch.zeros(0, 2), torch.zeros(2, 2)), ValueError, "at least 1 point"),
    (lambda: M.chamfer(torch.zeros(2, 2), torch.zeros(2, 2), reduction="max"), ValueError, "reduction"),
    (lambda: M.mmd(torch.zeros(1, 2), torch.zeros(3, 2)), ValueError, "x must hold at least 2 points"),
    (lambda: M.mmd(torch.randn(3, 2), torch.randn(3, 2), kernel="laplace"), ValueError, "unknown kernel 'laplace'"),
    (lambda: M.mmd(torch.randn(3, 2), torch.randn(3, 2), bandwidth=-1), ValueError, "bandwidth must be a positive"),
    (lambda: M.mmd(torch.randn(3, 2), torch.randn(3, 2), bandwidth=[]), ValueError, "non-empty"),
    (lambda: M.mmd(torch.zeros(3, 2), torch.zeros(3, 2)), ValueError, "pass bandwidth="),
    (lambda: M.sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 2), p=0.5), ValueError, "p must be >= 1"),
    (lambda: M.sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 2), n_projections=0), ValueError, "positive int"),
    (lambda: M.sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 2), seed=1, generator=torch.Generator()),
     ValueError, "not both"),
    (lambda: M.precision_recall(torch.zeros(3, 2), torch.zeros(5, 2)), ValueError, "real must hold at least 4"),
    (lambda: M.precision_recall(torch.zeros(5, 2), torch.zeros(5, 2), k=0), ValueError, "k must be a positive int"),
    (lambda: M.frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2)), ValueError,
     r"cov1 must have shape \(2, 2\)"),
    (lambda: M.frechet_distance(torch.zeros(2), torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.zeros(2), torch.eye(2)),
     ValueError, "cov1 must be a symmetric"),
    (lambda: M.frechet_distance_features(torch.zeros(1, 3), torch.zeros(4, 3)), ValueError, "N >= 2"),
    (lambda: M.frechet_distance_features(torch.zeros(5, 3), torch.zeros(4, 2)), ValueError, "same feature dimension"),
    (lambda: M.digit_features(torch.zeros(5, 63)), ValueError, r"\(N, 64\) or \(N, 1, 8, 8\)"),
    (lambda: M.digit_features(torch.zeros(5, 64, dtype=torch.long)), TypeError, "batch of 8x8 digits"),
])
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --------------------------------------------------------------------------------------------------
# The KAIST swiss roll
# --------------------------------------------------------------------------------------------------

def test_kaist_swiss_roll_shape_seed_and_source():
    x = data.kaist_swiss_roll(500, seed=3)
    assert x.shape == (500, 2) and x.dtype == torch.float32
    assert torch.equal(x, data.kaist_swiss_roll(500, seed=3))
    assert not torch.equal(x, data.kaist_swiss_roll(500, seed=4))
    assert torch.equal(data.kaist_swiss_roll(50, generator=torch.Generator().manual_seed(3)),
                       data.kaist_swiss_roll(50, seed=3))
    torch.manual_seed(0)
    a = data.kaist_swiss_roll(50)
    torch.manual_seed(0)
    assert torch.equal(a, data.kaist_swiss_roll(50)) and not torch.equal(a, data.kaist_swiss_roll(50))
    assert data.kaist_swiss_roll(10, seed=0, dtype=torch.float64).dtype == torch.float64


def test_kaist_swiss_roll_is_standardised_overall_and_has_the_hole():
    from sklearn.datasets import make_swiss_roll

    x = data.kaist_swiss_roll(400_000, seed=0, dtype=torch.float64)
    # one mean and one standard deviation over both coordinates together (KAIST's ds.mean(), ds.std()), times 2
    assert abs(x.mean().item()) < 0.01 and x.std(unbiased=False).item() == pytest.approx(2.0, abs=0.005)
    assert x[:, 0].std().item() != pytest.approx(2.0, abs=0.05)  # not per coordinate
    mean, std = data._kaist_swiss_roll_moments()
    raw = make_swiss_roll(400_000, noise=0.0, hole=True, random_state=1)[0][:, [0, 2]]
    assert raw.mean() == pytest.approx(mean, abs=0.02) and raw.std() == pytest.approx(std, abs=0.02)
    # the hole: of the 9 cells of the (t, height) rectangle the middle one is missing, so the middle turn of
    # the spiral (t in [2.5 pi, 3.5 pi], t the radius) holds 2/8 of the points, not 1/3
    t = (x * std / 2 + mean).norm(dim=1)
    assert t.min() >= 1.5 * math.pi - 1e-6 and t.max() <= 4.5 * math.pi + 1e-6
    middle = ((t > 2.5 * math.pi) & (t < 3.5 * math.pi)).double().mean().item()
    assert middle == pytest.approx(0.25, abs=0.005)


def test_kaist_chamfer_noise_floor():
    # two independent draws of 2 000 points: about 0.38 (KAIST's full-marks bar, 20, is some 50 times that)
    values = [float(M.chamfer(data.kaist_swiss_roll(2000, seed=2 * s), data.kaist_swiss_roll(2000, seed=2 * s + 1)))
              for s in range(5)]
    assert 0.3 < np.mean(values) < 0.5
    # unstandardised (sklearn's raw coordinates) the same draws score (std / 2)^2 ~ 11.4 times more: about 4
    _, std = data._kaist_swiss_roll_moments()
    assert (std / 2) ** 2 * np.mean(values) == pytest.approx(4.4, abs=0.8)


# --------------------------------------------------------------------------------------------------
# The digits' feature network
# --------------------------------------------------------------------------------------------------

def test_digit_classifier_accuracy_determinism_and_global_rng(monkeypatch, tmp_path):
    monkeypatch.setattr(M, "_DIGIT_CACHE", {})
    state = torch.random.get_rng_state()
    net = M.digit_classifier(device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())  # training left torch's generator alone
    images, labels = data.digits()
    train, test = M.digit_split()
    assert len(set(train.tolist()) | set(test.tolist())) == len(images) and not set(train.tolist()) & set(test.tolist())
    accuracy = (net(images[test]).argmax(1) == labels[test]).float().mean().item()
    print(f"digit classifier: held-out accuracy {accuracy:.4f}")
    assert accuracy > 0.95
    assert M.digit_classifier(device="cpu") is net  # cached in memory
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    again = M._train_digit_classifier()
    assert all(torch.equal(again[k], v) for k, v in M._DIGIT_CACHE["state"].items())  # deterministic
    # the disk cache: written under data_root(), read back by a fresh process (an empty memory cache)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    M.digit_classifier(device="cpu", disk_cache=True)
    files = list((tmp_path / "models").glob("*.pt"))
    assert [f.name for f in files] == [f"digit_classifier_v{M.DIGIT_RECIPE['version']}.pt"]
    monkeypatch.setattr(M, "_DIGIT_CACHE", {})
    monkeypatch.setattr(M, "_train_digit_classifier", lambda: pytest.fail("trained again despite the disk cache"))
    loaded = M.digit_classifier(device="cpu", dtype=torch.float64, disk_cache=True)
    assert loaded.net[0].weight.dtype == torch.float64
    assert torch.allclose(loaded(images[:5].double()).float(), net(images[:5]), atol=1e-5)


def test_digit_features_and_frechet_floor():
    images, labels = data.digits()
    f = M.digit_features(images[:10])
    assert f.shape == (10, 64) and f.dtype == torch.float32
    assert torch.allclose(M.digit_features(images[:10].reshape(10, 1, 8, 8)), f)
    assert M.digit_features(images[:10].double()).dtype == torch.float64
    half = len(images) // 2
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    first, second = images[perm[:half]], images[perm[half:]]
    noisy = (first + 0.3 * torch.randn(half, 64, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    ones = first[labels[perm[:half]] == 1]  # a sampler stuck on one class
    noise = torch.rand(half, 64, generator=torch.Generator().manual_seed(1))
    fd = {name: float(M.digit_frechet_distance(x, second))
          for name, x in (("floor", first), ("noisy digits", noisy), ("only ones", ones), ("uniform noise", noise))}
    print("digit Frechet distance against half of the digits:", ", ".join(f"{k} {v:.2f}" for k, v in fd.items()))
    assert fd["floor"] < fd["noisy digits"] < fd["uniform noise"] and fd["only ones"] > 5 * fd["floor"]
    p, r = M.precision_recall(M.digit_features(second), M.digit_features(ones))
    assert p > 0.8 and r < 0.3
    p, r = M.precision_recall(M.digit_features(second), M.digit_features(first))
    print(f"digit precision/recall between the halves: {p:.3f}, {r:.3f}")
    assert p > 0.8 and r > 0.8
