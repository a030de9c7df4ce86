"""The course's figure style and plotting helpers (coursepkg.plotting)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from coursepkg import config, plotting  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    with matplotlib.rc_context():
        yield
    plt.close("all")


def test_setup_applies_the_course_style(capsys):
    matplotlib.rcParams["font.size"] = 6
    config.setup(verbose=False)
    assert matplotlib.rcParams["font.size"] == plotting.STYLE["font.size"]
    assert matplotlib.rcParams["figure.dpi"] == 100


def test_text_is_at_least_body_size_once_shown_in_the_column():
    # body text of the site is about 15-16 px; at 100 dpi a point is 100/72 px
    px = {k: plotting.STYLE[k] * 100 / 72 for k in ("font.size", "axes.titlesize", "axes.labelsize")}
    assert min(px.values()) >= 15
    assert plotting.STYLE["xtick.labelsize"] * 100 / 72 >= 13.5


@pytest.mark.parametrize("ncols", [1, 2, 3])
def test_figures_fit_the_column(ncols):
    fig, axes = plotting.subplots(2, ncols)
    w, h = fig.get_size_inches()
    assert w * fig.dpi <= 680 + 1e-9 and h > 0
    assert (axes.shape if ncols > 1 else axes.shape[0]) in ((2, ncols), 2)


def test_rendered_png_is_no_wider_than_the_column(tmp_path):
    config.setup(verbose=False)
    fig, axes = plotting.subplots(1, 3)
    for ax in axes:
        ax.plot([0, 1], [0, 1], label="a")
        ax.set(title="a title", xlabel="x", ylabel="y")
        ax.legend()
    fig.savefig(tmp_path / "f.png", bbox_inches="tight")
    width = plt.imread(tmp_path / "f.png").shape[1]
    assert width <= 700


def test_too_many_columns_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="at most 3 panels"):
        plotting.figsize(4)
    with pytest.raises(ValueError, match="at most TEXT_WIDTH"):
        plotting.figsize(1, width=9)
    with pytest.raises(ValueError, match="positive"):
        plotting.figsize(2, aspect=0)
    with pytest.raises(TypeError, match="sets figsize itself"):
        plotting.subplots(1, 2, figsize=(14, 4))


def test_tile_places_every_image_and_pads_with_nan():
    images = torch.arange(5 * 4, dtype=torch.float64).reshape(5, 2, 2)
    out = plotting.tile(images, 3)
    assert out.shape == (2 * 2 + 1, 3 * 2 + 2)
    assert torch.equal(out[0:2, 3:5], images[1])
    assert torch.equal(out[3:5, 3:5], images[4])
    assert torch.isnan(out[3:5, 6:8]).all() and torch.isnan(out[2]).all()
    flat = plotting.tile(images.reshape(5, 4), 3, shape=(2, 2))
    assert torch.equal(flat.nan_to_num(-1), out.nan_to_num(-1))
    with pytest.raises(ValueError, match="does not match"):
        plotting.tile(images.reshape(5, 4), 3, shape=(3, 2))
    with pytest.raises(ValueError, match="must be"):
        plotting.tile(torch.zeros(3), 3)


def test_image_grid_scatter_and_density_grid_draw():
    ax = plotting.image_grid(torch.rand(6, 64), 3, shape=(8, 8), title="digits")
    assert ax.get_title() == "digits" and len(ax.images) == 1
    ax = plotting.scatter_2d(torch.randn(50, 2), label="data", lim=3)
    assert ax.get_xlim() == (-3, 3) and ax.get_xlabel() == "$x_1$"
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        plotting.scatter_2d(torch.randn(50, 3))
    X1, X2, lp = plotting.density_grid(lambda p: -0.5 * (p ** 2).sum(-1), 2.0, n=11)
    assert X1.shape == X2.shape == lp.shape == (11, 11)
    assert lp[5, 5] == pytest.approx(0.0) and lp[0, 0] == pytest.approx(-4.0)
    with pytest.raises(ValueError, match="returned shape"):
        plotting.density_grid(lambda p: p, 2.0, n=5)


def test_ellipse_params_trace_the_n_std_contour():
    import math

    cov = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    mean = torch.tensor([1.0, -1.0], dtype=torch.float64)
    centre, width, height, angle = plotting.ellipse_params(mean, cov, n_std=2.0)
    assert centre == [1.0, -1.0] and width >= height
    # the end of the larger axis lies on the contour (x - m)^T cov^-1 (x - m) = n_std^2
    a = math.radians(angle)
    tip = torch.tensor([math.cos(a), math.sin(a)], dtype=torch.float64) * width / 2
    assert float(tip @ torch.linalg.solve(cov, tip)) == pytest.approx(4.0)
    tip = torch.tensor([-math.sin(a), math.cos(a)], dtype=torch.float64) * height / 2
    assert float(tip @ torch.linalg.solve(cov, tip)) == pytest.approx(4.0)
    ax = plt.gca()
    patch = plotting.gaussian_ellipse(ax, mean, cov, color="C1")
    assert patch in ax.patches and not patch.get_fill()
    with pytest.raises(ValueError, match="positive definite"):
        plotting.ellipse_params(mean, torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        plotting.ellipse_params(torch.zeros(3), cov)
